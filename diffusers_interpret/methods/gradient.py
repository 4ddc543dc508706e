"""The original 0.5.0's methods: one backward pass of the box's pixel sum, gradients reduced per token."""

from dataclasses import dataclass
from typing import Union

from ..attribution import Aggregation, aggregate, parse_attribution_method
from ..target import Target
from ..trace import Trace
from ._utils import score_units
from .base import AttributionMethod, Scores


@dataclass
class GradientAggregation(AttributionMethod):
    r"""
    One backward pass of the box's pixel sum to the prompt (and the input image), gradients reduced per token (and per
    pixel over channels).

    Args:
        aggregation (`str`, *optional*, defaults to `"grad_x_input"`): `"grad_x_input"`, `"max_grad"`, `"mean_grad"`
            or `"min_grad"` (see [`Aggregation`]).
    """

    aggregation: Union[str, Aggregation] = Aggregation.GRAD_X_INPUT
    needs_graph = True
    scores_pixels = True
    summary = "How much the region's pixel sum changes with each token's embedding (reduced per token)."

    def __post_init__(self):
        self.aggregation = parse_attribution_method(self.aggregation)

    @property
    def name(self) -> str:
        return self.aggregation.value

    def attribute(self, trace: Trace, target: Target) -> Scores:
        gradients = trace.gradients(target)
        inputs = trace.text_inputs() if gradients.text is not None else None
        scores = Scores(tokens=[], token_gradients=[], token_embeddings=[], pooled_share=gradients.pooled_share)
        for image, tokens in enumerate(trace.prompt_tokens):
            if inputs is None:
                scores.tokens.append(None)
                continue
            positions = tokens.positions
            scores.tokens.append(score_units(gradients.text[image], inputs, image, tokens.units, self.aggregation))
            scores.token_gradients.append(gradients.text[image, positions])
            scores.token_embeddings.append(inputs.values[image, positions])
        self._add_pixels(trace, gradients, scores)
        return scores

    def attribute_pixels(self, trace, target, scores: Scores) -> None:
        r"""Add the pixel scores of `target`'s box-sum gradient to `scores` (one backward pass, pixels only)."""
        self._add_pixels(trace, trace.gradients(target, text=False), scores)

    def _add_pixels(self, trace, gradients, scores: Scores) -> None:
        if gradients.pixels is None:
            return
        values = trace.pixels.detach().float().cpu()
        rows = range(len(trace.prompt_tokens))
        scores.pixel_gradients = [gradients.pixels[i if gradients.pixels.shape[0] > 1 else 0] for i in rows]
        scores.pixels = [
            aggregate(gradient, values[i if values.shape[0] > 1 else 0], self.aggregation, dim=0).numpy()
            for i, gradient in zip(rows, scores.pixel_gradients)
        ]
