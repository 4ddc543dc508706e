r"""diffusers-interpret: explain the images made by 🤗 diffusers pipelines."""

from .attribution import AttributionLevel, AttributionMethods
from .box import BOX_CONVENTION
from .explainer import BasePipelineExplainer, StableDiffusionPipelineExplainer
from .image_explainers import (
    PipelineImg2ImgExplainerOutput,
    PipelineInpaintExplainerOutput,
    StableDiffusionImg2ImgPipelineExplainer,
    StableDiffusionInpaintPipelineExplainer,
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
    PixelAttributions,
    TokenAttributions,
)
from .saliency import SaliencyMap
from .toy import load_toy_pipeline

__version__ = "0.6.0.dev0"

__all__ = [
    "AttentionScore",
    "AttributionLevel",
    "AttributionMethod",
    "AttributionMethods",
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
    "TokenAttributions",
    "load_toy_pipeline",
]
