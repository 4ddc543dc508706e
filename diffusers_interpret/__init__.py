r"""diffusers-interpret: explain the images made by 🤗 diffusers pipelines."""

import importlib

__version__ = "0.6.0.dev0"

# Public names and the module each lives in. They are imported on first use, so that `import diffusers_interpret`
# (and the command line's `--help`) does not import torch and diffusers until something needs them.
_EXPORTS = {
    "Aggregation": ".attribution",
    "AttentionScore": ".methods",
    "AttributionLevel": ".attribution",
    "AttributionMethod": ".methods",
    "GradientAggregation": ".methods",
    "IntegratedGradients": ".methods",
    "JacobianNorm": ".methods",
    "LinearizedAblation": ".methods",
    "SmoothGrad": ".methods",
    "TokenAblation": ".methods",
    "BOX_CONVENTION": ".box",
    "BasePipelineExplainer": ".explainer",
    "ExplainRequest": ".request",
    "ExplanationStats": ".outputs",
    "BaseExplanationOutput": ".outputs",
    "ExplanationOutputList": ".outputs",
    "GeneratedImages": ".outputs",
    "PipelineExplainerOutput": ".outputs",
    "PipelineControlNetExplainerOutput": ".outputs",
    "PipelineImg2ImgExplainerOutput": ".outputs",
    "PipelineVideoExplainerOutput": ".outputs",
    "PipelineImageToVideoExplainerOutput": ".outputs",
    "PipelineInpaintExplainerOutput": ".outputs",
    "PixelAttributions": ".outputs",
    "MemoryEstimate": ".memory",
    "NotEnoughMemoryError": ".memory",
    "SaliencyMap": ".views.saliency",
    "TokenAttributions": ".outputs",
    "edge_aware_maps": ".edge_aware",
    "explainer_for": ".explainers",
    "load_toy_pipeline": ".toy",
    "record_correspondence": ".attention",
    "record_cross_attention": ".attention",
    "record_self_attention": ".attention",
    "record_text_relations": ".attention",
    "supported_pipelines": ".explainers",
}


# The explainer classes of the 0.5.0 API and of every other supported pipeline (`StableDiffusionPipelineExplainer`,
# ...) are made from the registry of families by `explainers.py`.
_EXPLAINER_SUFFIX = "PipelineExplainer"


def __getattr__(name: str):
    if name in _EXPORTS or name.endswith(_EXPLAINER_SUFFIX):
        value = getattr(importlib.import_module(_EXPORTS.get(name, ".explainers"), __name__), name)
        globals()[name] = value
        return value
    # `AttributionMethods`, the aggregation enum's earlier name, still works and says what to use instead.
    if name == "AttributionMethods":
        import warnings

        warnings.warn("`AttributionMethods` is renamed `Aggregation`.", DeprecationWarning, stacklevel=2)
        return __getattr__("Aggregation")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)
