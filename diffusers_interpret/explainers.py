r"""
The explainer classes by pipeline class, as diffusers-interpret 0.5.0 named them: `StableDiffusionPipelineExplainer`,
`StableDiffusionImg2ImgPipelineExplainer`, `StableDiffusionInpaintPipelineExplainer`, and one for every other
supported pipeline (`<pipeline class>Explainer`). Each is a [`BasePipelineExplainer`] bound to its pipeline class; it
is made, once, the first time its name is asked for, from the registry of `families/` (so a new family needs no line
here). `explainer_for(pipe)` gives the right one for a loaded pipeline.
"""

from typing import Dict, List, Union

from .explainer import BasePipelineExplainer
from .families import InputKind, SupportedPipeline, supported_pipeline, supported_pipeline_named, supported_pipelines

_SUFFIX = "Explainer"
_CLASSES: Dict[str, type] = {}


def explainer_class(pipeline: Union[str, SupportedPipeline]) -> type:
    r"""
    The explainer class of a supported pipeline class, by the pipeline class's name (a diffusers class) or by its
    registry entry.

    Raises:
        `TypeError`: for a pipeline class of no supported family, naming the supported ones.
    """
    supported = supported_pipeline_named(pipeline) if isinstance(pipeline, str) else pipeline
    name = supported.class_name
    if name not in _CLASSES:
        starts = {
            None: "a prompt",
            InputKind.IMAGE: "a prompt and an input image",
            InputKind.INPAINT: "a prompt, an image and a mask",
            InputKind.CONTROL: "a prompt and a control image (read by a ControlNet)",
        }
        what = "clips" if supported.family.video else "images"
        doc = (
            f"Explains the {what} a `{name}` makes from {starts[supported.input_kind]}: every argument of its call "
            f"passes through (see [`BasePipelineExplainer.__call__`]).\n\n    {supported.family.display_name}: "
            f"[`{type(supported.family).__name__}`] says how its pipelines are read."
        )
        _CLASSES[name] = type(
            supported.explainer_name,
            (BasePipelineExplainer,),
            {"supported": supported, "__doc__": doc, "__module__": __name__},
        )
    return _CLASSES[name]


def explainer_for(pipe, **options) -> BasePipelineExplainer:
    r"""
    The explainer for a pipeline's class (text-to-image, img2img or inpainting, of any supported family).

    Args:
        pipe (`DiffusionPipeline`): A loaded pipeline.
        options: The explainer's arguments (`verbose`, `gradient_checkpointing`).

    Raises:
        `TypeError`: for an unsupported pipeline, naming the supported ones.
    """
    return explainer_class(supported_pipeline(pipe))(pipe, **options)


def __getattr__(name: str):
    if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)] in supported_pipelines():
        return explainer_class(name[: -len(_SUFFIX)])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | {f"{name}{_SUFFIX}" for name in supported_pipelines()})


__all__ = ["BasePipelineExplainer", "explainer_class", "explainer_for", "supported_pipelines"]
