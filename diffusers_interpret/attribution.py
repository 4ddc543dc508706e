"""How raw gradients become one score per token (or per pixel): the original's four aggregations."""

import warnings
from enum import Enum
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # torch is imported by `aggregate` itself: the names here serve the command line's `--help`
    import torch


class Aggregation(str, Enum):
    r"""
    Gradient aggregations over the hidden dimension of a token embedding (or the channels of a pixel).

    - `grad_x_input`: L2 norm of gradient * input (the original 0.5.0's default).
    - `max_grad`: largest absolute gradient.
    - `mean_grad`: mean absolute gradient.
    - `min_grad`: smallest absolute gradient.

    Each costs one backward pass of the explained region's sum, whatever the region's size.
    """

    GRAD_X_INPUT = "grad_x_input"
    MAX_GRAD = "max_grad"
    MEAN_GRAD = "mean_grad"
    MIN_GRAD = "min_grad"


class AttributionLevel(str, Enum):
    r"""
    Where in the text encoder the prompt's tokens are attributed.

    - `token_embeddings`: the input token embeddings; the gradient also flows back through the text encoder. CLIP's
      encoder is causal, so this is the level where a token's score is its own and not mixed with the words before it.
    - `text_encoder_output`: the text encoder's output states, which the UNet reads (the original 0.5.0's level).
      Each position there already mixes in every earlier word.
    """

    TOKEN_EMBEDDINGS = "token_embeddings"
    TEXT_ENCODER_OUTPUT = "text_encoder_output"


def _parse_enum(enum_cls, value, argument: str):
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(str(value).lower())
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"`{argument}` must be one of {choices}, got {value!r}.") from None


def parse_attribution_method(method: Union[str, Aggregation]) -> Aggregation:
    return _parse_enum(Aggregation, method, "attribution_method")


def parse_attribution_level(level: Union[str, AttributionLevel]) -> AttributionLevel:
    return _parse_enum(AttributionLevel, level, "attribution_level")


def aggregate(
    gradient: "torch.Tensor", inputs: "torch.Tensor", method: Union[str, Aggregation], dim: int = -1
) -> "torch.Tensor":
    r"""
    Reduce gradients to one non-negative score per position.

    Args:
        gradient (`torch.Tensor`): Gradient of the explained target with respect to `inputs`.
        inputs (`torch.Tensor`): The inputs the gradient was taken at (same shape as `gradient`).
        method (`str` or `Aggregation`): The aggregation, see [`Aggregation`].
        dim (`int`, *optional*, defaults to -1): The dimension to reduce (hidden size for tokens, channels for pixels).
    """
    import torch

    method = parse_attribution_method(method)
    gradient = gradient.float()
    if method is Aggregation.GRAD_X_INPUT:
        return torch.linalg.vector_norm(gradient * inputs.float(), dim=dim)
    if method is Aggregation.MAX_GRAD:
        return gradient.abs().amax(dim=dim)
    if method is Aggregation.MEAN_GRAD:
        return gradient.abs().mean(dim=dim)
    return gradient.abs().amin(dim=dim)


def __getattr__(name: str):
    # `AttributionMethods`, the enum's earlier name, still works and says what to use instead.
    if name == "AttributionMethods":
        warnings.warn("`AttributionMethods` is renamed `Aggregation`.", DeprecationWarning, stacklevel=2)
        return Aggregation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
