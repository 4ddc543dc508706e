r"""
Token attribution methods, selectable with `attribution_method=` as a name or as an object with parameters.

| method | name | cost (one image, N traced denoiser calls) |
|---|---|---|
| [`WordAttention`] (default) | `"word_attention"` | 1 recording generation + text-encoder forward passes |
| [`AttentionScore`] | `"attention"` | 1 generation recording cross-attention (about 1.03x a plain one) |
| [`GradientAggregation`] | `"grad_x_input"`, `"max_grad"`, `"mean_grad"`, `"min_grad"` | 1 generation, 1 backward |
| [`IntegratedGradients`] | `"integrated_gradients"` | 1 generation + `n_steps` with N traced, `n_steps` backward |
| [`SmoothGrad`] | `"smoothgrad"` | 1 generation + `n_samples` with N traced, `n_samples` backward |
| [`TokenAblation`] | `"ablation"` | 1 + (number of tokens) generations, no backward |
| [`LinearizedAblation`] | `"linearized_ablation"` | 1 generation with N traced, `n_probes` backward, no regeneration |
| [`ConceptAttention`] (SD3, Flux) | `"concept_attention"` | 1 generation + 1 more call of each dual-stream block |
| [`JacobianNorm`] | `"jacobian_norm"` | 1 generation with N traced calls, `n_probes` backward passes |

The perturbation methods (integrated gradients, SmoothGrad, ablation) regenerate from the explained call's own noise in
batches of `batch_size` images, changing the prompt's embeddings at the traced denoiser calls only (all of them with
`n_last_diffusion_steps_to_consider_for_attributions=None`), and explain one image per call. How truthful each is on
the shipped toy model, and what it costs: docs/methods.md (`benchmarks/faithfulness.py`).
"""

import importlib
from typing import TYPE_CHECKING, Tuple

from ..attribution import Aggregation

if TYPE_CHECKING:
    from .base import AttributionMethod

# The one registry of methods: name -> (module of this package, class). A method's module, and with it torch, is
# imported when the method is first made, so that the command line's `--help` (which lists the names) stays fast.
# The gradient aggregations (`Aggregation`'s names) are `GradientAggregation`s.
_METHODS = {
    "integrated_gradients": ("integrated_gradients", "IntegratedGradients"),
    "smoothgrad": ("smoothgrad", "SmoothGrad"),
    "ablation": ("ablation", "TokenAblation"),
    "linearized_ablation": ("linearized_ablation", "LinearizedAblation"),
    "attention": ("attention_score", "AttentionScore"),
    "jacobian_norm": ("jacobian_norm", "JacobianNorm"),
    "word_attention": ("word_attention", "WordAttention"),
    "concept_attention": ("concept_attention", "ConceptAttention"),
}
_CLASSES = {
    **{class_name: module for module, class_name in _METHODS.values()},
    "AttributionMethod": "base",
    "Scores": "base",
    "GradientAggregation": "gradient",
}


def __getattr__(name: str):
    if name in _CLASSES:
        value = getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def method_names() -> Tuple[str, ...]:
    r"""Every method's name, as `attribution_method=` and the command line's `--method` take it."""
    return tuple(aggregation.value for aggregation in Aggregation) + tuple(_METHODS)


def parse_method(method) -> "AttributionMethod":
    r"""A method object from a name (see [`method_names`]), an [`Aggregation`] or a method object."""
    from .base import AttributionMethod
    from .gradient import GradientAggregation

    if isinstance(method, AttributionMethod):
        return method
    if isinstance(method, Aggregation):
        return GradientAggregation(method)
    name = str(method).lower()
    if name in _METHODS:
        module, class_name = _METHODS[name]
        return getattr(importlib.import_module(f".{module}", __name__), class_name)()
    try:
        return GradientAggregation(name)
    except ValueError:
        choices = ", ".join(repr(m) for m in method_names())
        raise ValueError(
            f"`attribution_method` must be one of {choices} or a method object, got {method!r}."
        ) from None


__all__ = [
    "AttentionScore",
    "AttributionMethod",
    "ConceptAttention",
    "GradientAggregation",
    "IntegratedGradients",
    "JacobianNorm",
    "LinearizedAblation",
    "Scores",
    "SmoothGrad",
    "TokenAblation",
    "WordAttention",
    "method_names",
    "parse_method",
]
