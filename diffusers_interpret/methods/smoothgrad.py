"""SmoothGrad: a gradient method's gradient averaged over noisy copies of the prompt's embeddings."""

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..attribution import Aggregation, parse_attribution_method
from ..target import Target
from ..trace import Trace
from ._utils import regenerated_gradients, score_units
from .base import AttributionMethod, Scores
from .gradient import GradientAggregation


@dataclass
class SmoothGrad(AttributionMethod):
    r"""
    SmoothGrad (Smilkov et al., 2017): the gradient averaged over copies of the prompt's embeddings with Gaussian noise
    added to the attributed tokens, then reduced per token like the gradient method it wraps (as captum's
    `NoiseTunnel` wraps a method). Zero noise gives the plain gradient.

    Cost: `n_samples` generations with the traced calls' graph and their backward passes, `batch_size` at a time.

    Args:
        n_samples (`int`, *optional*, defaults to 8): Noisy copies.
        noise_level (`float`, *optional*, defaults to 0.1):
            Noise standard deviation as a fraction of the attributed embeddings' value range (max - min).
        aggregation (`str` or `GradientAggregation`, *optional*, defaults to `"grad_x_input"`): The gradient method
            whose mean gradient becomes the score.
        seed (`int`, *optional*, defaults to 0): Seed of the noise.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """

    n_samples: int = 8
    noise_level: float = 0.1
    aggregation: Union[str, Aggregation, GradientAggregation] = Aggregation.GRAD_X_INPUT
    seed: int = 0
    batch_size: Optional[int] = 8
    name = "smoothgrad"
    summary = "The gradient method's token scores averaged over noisy copies of the prompt's embeddings."
    one_image_per_call = True

    def __post_init__(self):
        if isinstance(self.aggregation, GradientAggregation):
            self.aggregation = self.aggregation.aggregation
        self.aggregation = parse_attribution_method(self.aggregation)
        if int(self.n_samples) < 1 or self.noise_level < 0:
            raise ValueError("`n_samples` must be >= 1 and `noise_level` >= 0.")

    def attribute(self, trace: Trace, target: Target) -> Scores:
        context = trace.regeneration
        inputs, text = context.inputs, context.text_inputs
        positions = context.positions
        attributed = inputs[0, positions]
        sigma = self.noise_level * float(attributed.max() - attributed.min())
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.n_samples, len(positions), inputs.shape[-1]), generator=generator) * sigma
        rows = inputs.repeat(self.n_samples, 1, 1)
        for k, unit in enumerate(context.units):
            features = text.unit_features(unit)
            rows[:, unit.position, features] += noise[:, k, features].to(rows.device, rows.dtype)
        gradients = regenerated_gradients(context, rows, target, self.batch_size, "SmoothGrad")
        mean = gradients.mean(0)
        tokens = score_units(mean, text, 0, context.units, self.aggregation)
        return Scores(tokens=[tokens], token_gradients=[mean[positions]])
