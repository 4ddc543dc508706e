"""One adapter per pipeline family: the only code that knows a pipeline's shape. `family_for(pipe)` picks one."""

from .base import PipelineFamily, TextEncoderSlot, explainer_class_for, family_for, supported_pipelines
from .flux import FLUX, FluxImg2ImgPipelineExplainer, FluxPipelineExplainer
from .stable_diffusion import (
    STABLE_DIFFUSION,
    StableDiffusionImg2ImgPipelineExplainer,
    StableDiffusionInpaintPipelineExplainer,
    StableDiffusionPipelineExplainer,
)
from .stable_diffusion_3 import (
    STABLE_DIFFUSION_3,
    StableDiffusion3Img2ImgPipelineExplainer,
    StableDiffusion3PipelineExplainer,
)
from .stable_diffusion_xl import (
    STABLE_DIFFUSION_XL,
    StableDiffusionXLImg2ImgPipelineExplainer,
    StableDiffusionXLInpaintPipelineExplainer,
    StableDiffusionXLPipelineExplainer,
)


def explainer_for(pipe, **options):
    r"""
    The explainer for a pipeline's class (text-to-image, img2img or inpainting, of any supported family).

    Args:
        pipe (`DiffusionPipeline`): A loaded pipeline.
        options: The explainer's arguments (`verbose`, `gradient_checkpointing`).

    Raises:
        `TypeError`: for an unsupported pipeline, naming the supported ones.
    """
    return explainer_class_for(pipe)(pipe, **options)


__all__ = [
    "FLUX",
    "FluxImg2ImgPipelineExplainer",
    "FluxPipelineExplainer",
    "STABLE_DIFFUSION",
    "STABLE_DIFFUSION_3",
    "STABLE_DIFFUSION_XL",
    "StableDiffusion3Img2ImgPipelineExplainer",
    "StableDiffusion3PipelineExplainer",
    "PipelineFamily",
    "StableDiffusionImg2ImgPipelineExplainer",
    "StableDiffusionInpaintPipelineExplainer",
    "StableDiffusionPipelineExplainer",
    "StableDiffusionXLImg2ImgPipelineExplainer",
    "StableDiffusionXLInpaintPipelineExplainer",
    "StableDiffusionXLPipelineExplainer",
    "TextEncoderSlot",
    "explainer_class_for",
    "explainer_for",
    "family_for",
    "supported_pipelines",
]
