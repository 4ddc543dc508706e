r"""diffusers-interpret: explain the images made by 🤗 diffusers pipelines."""

from .attention import record_cross_attention
from .attribution import Aggregation, AttributionLevel
from .box import BOX_CONVENTION
from .explainer import BasePipelineExplainer
from .families import (
    FluxImg2ImgPipelineExplainer,
    FluxPipelineExplainer,
    StableDiffusion3Img2ImgPipelineExplainer,
    StableDiffusion3PipelineExplainer,
    StableDiffusionImg2ImgPipelineExplainer,
    StableDiffusionInpaintPipelineExplainer,
    StableDiffusionPipelineExplainer,
    StableDiffusionXLImg2ImgPipelineExplainer,
    StableDiffusionXLInpaintPipelineExplainer,
    StableDiffusionXLPipelineExplainer,
    explainer_for,
    supported_pipelines,
)
from .methods import (
    AttentionScore,
    AttributionMethod,
    GradientAggregation,
    IntegratedGradients,
    JacobianNorm,
    SmoothGrad,
    TokenAblation,
)
from .outputs import (
    BaseExplanationOutput,
    ExplanationOutputList,
    GeneratedImages,
    PipelineExplainerOutput,
    PipelineImg2ImgExplainerOutput,
    PipelineInpaintExplainerOutput,
    PixelAttributions,
    TokenAttributions,
)
from .toy import load_toy_pipeline
from .views.saliency import SaliencyMap

__version__ = "0.6.0.dev0"


def __getattr__(name: str):
    # `AttributionMethods`, the aggregation enum's earlier name, still works and says what to use instead.
    if name == "AttributionMethods":
        import warnings

        warnings.warn("`AttributionMethods` is renamed `Aggregation`.", DeprecationWarning, stacklevel=2)
        return Aggregation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Aggregation",
    "AttentionScore",
    "AttributionLevel",
    "AttributionMethod",
    "GradientAggregation",
    "IntegratedGradients",
    "JacobianNorm",
    "SmoothGrad",
    "TokenAblation",
    "BOX_CONVENTION",
    "BasePipelineExplainer",
    "BaseExplanationOutput",
    "ExplanationOutputList",
    "GeneratedImages",
    "PipelineExplainerOutput",
    "PipelineImg2ImgExplainerOutput",
    "PipelineInpaintExplainerOutput",
    "PixelAttributions",
    "SaliencyMap",
    "StableDiffusionImg2ImgPipelineExplainer",
    "StableDiffusionInpaintPipelineExplainer",
    "StableDiffusionPipelineExplainer",
    "StableDiffusionXLImg2ImgPipelineExplainer",
    "StableDiffusionXLInpaintPipelineExplainer",
    "StableDiffusionXLPipelineExplainer",
    "FluxImg2ImgPipelineExplainer",
    "FluxPipelineExplainer",
    "StableDiffusion3Img2ImgPipelineExplainer",
    "StableDiffusion3PipelineExplainer",
    "TokenAttributions",
    "explainer_for",
    "load_toy_pipeline",
    "record_cross_attention",
    "supported_pipelines",
]
