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

from typing import Union

from ..attribution import Aggregation
from .ablation import TokenAblation
from .attention_score import AttentionScore
from .base import AttributionMethod, Scores
from .concept_attention import ConceptAttention
from .gradient import GradientAggregation
from .integrated_gradients import IntegratedGradients
from .jacobian_norm import JacobianNorm
from .linearized_ablation import LinearizedAblation
from .smoothgrad import SmoothGrad
from .word_attention import WordAttention

_BY_NAME = {
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "ablation": TokenAblation,
    "attention": AttentionScore,
    "jacobian_norm": JacobianNorm,
    "linearized_ablation": LinearizedAblation,
    "word_attention": WordAttention,
    "concept_attention": ConceptAttention,
}


def parse_method(method: Union[str, Aggregation, AttributionMethod]) -> AttributionMethod:
    r"""A method object from a name (`"grad_x_input"`, ..., `"integrated_gradients"`, `"smoothgrad"`,
    `"ablation"`, `"linearized_ablation"`, `"attention"`, `"jacobian_norm"`, `"word_attention"`,
    `"concept_attention"`) or a method object."""
    if isinstance(method, AttributionMethod):
        return method
    if isinstance(method, Aggregation):
        return GradientAggregation(method)
    name = str(method).lower()
    if name in _BY_NAME:
        return _BY_NAME[name]()
    try:
        return GradientAggregation(name)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Aggregation) + ", " + ", ".join(repr(n) for n in _BY_NAME)
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
    "parse_method",
]
