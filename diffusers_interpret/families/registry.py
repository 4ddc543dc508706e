"""The one registry of supported pipelines: a pipeline class -> its family, what it starts from, its explainer."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from .base import InputKind, PipelineFamily

_FAMILIES: List[PipelineFamily] = []


def register_family(family: PipelineFamily) -> PipelineFamily:
    r"""Add a family's adapter to the registry (each family file registers its own); returns it."""
    _FAMILIES.append(family)
    return family


@dataclass(frozen=True)
class SupportedPipeline:
    r"""
    One supported pipeline class.

    Args:
        class_name (`str`): The diffusers pipeline class (e.g. `"StableDiffusionImg2ImgPipeline"`).
        family (`PipelineFamily`): The adapter of its family.
        input_kind (`InputKind`, *optional*): What it starts from besides the prompt (read from its call's signature
            by the family); `None` for text-to-image.
    """

    class_name: str
    family: PipelineFamily
    input_kind: Optional[InputKind]

    @property
    def explainer_name(self) -> str:
        r"""The name of its explainer class (`"<pipeline class>Explainer"`, as in diffusers-interpret 0.5.0)."""
        return f"{self.class_name}Explainer"


def _family_named(class_name: str) -> Optional[PipelineFamily]:
    return next((family for family in _FAMILIES if class_name in family.pipeline_class_names), None)


def _unsupported(what: str) -> TypeError:
    supported = ", ".join(supported_pipelines())
    return TypeError(
        f"{what} is not a supported pipeline. Supported: {supported}; see docs/architecture.md for adding a "
        "pipeline family."
    )


def supported_pipeline(pipe_or_class: Union[object, type]) -> SupportedPipeline:
    r"""
    The registry's entry of a pipeline (or pipeline class): its own class if registered, else its nearest registered
    base class; the input kind is read from the pipeline's own class.

    Raises:
        `TypeError`: for a pipeline of no supported family, naming the supported pipeline classes.
    """
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    for base in cls.__mro__:
        family = _family_named(base.__name__)
        if family is not None:
            return SupportedPipeline(base.__name__, family, family.input_kind(cls))
    raise _unsupported(cls.__name__)


def supported_pipeline_named(class_name: str) -> SupportedPipeline:
    r"""The registry's entry of a diffusers pipeline class by name (the class is read from diffusers for its call's
    signature)."""
    family = _family_named(class_name)
    if family is None:
        raise _unsupported(class_name)
    import diffusers

    return SupportedPipeline(class_name, family, family.input_kind(getattr(diffusers, class_name)))


def family_for(pipe) -> PipelineFamily:
    r"""
    The family of a pipeline, by its class (or a base class), most specific first.

    Raises:
        `TypeError`: for a pipeline of no supported family, naming the supported pipeline classes.
    """
    return supported_pipeline(pipe).family


def supported_pipelines() -> Sequence[str]:
    r"""The names of the supported pipeline classes, sorted."""
    return sorted(name for family in _FAMILIES for name in family.pipeline_class_names)
