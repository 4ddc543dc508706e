"""SmoothGrad: any method's scores averaged over noisy copies of the prompt's embeddings (captum's NoiseTunnel)."""

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..attribution import Aggregation
from ..progress import progress_bar
from ..target import Target
from ..text import call_texts
from ..trace import Trace, TracedGraph
from ._utils import regenerated_gradients, score_units
from .base import AttributionMethod, Scores
from .gradient import GradientAggregation


@dataclass
class SmoothGrad(AttributionMethod):
    r"""
    SmoothGrad (Smilkov et al., 2017), wrapping another method as captum's `NoiseTunnel` does: the prompt's embeddings
    get Gaussian noise on the attributed tokens, `n_samples` times, and the wrapped method's token scores are averaged
    over the noisy copies (each copy's image made again from the call's noise, the method reading its trace). For a
    gradient aggregation (the default, `"grad_x_input"`), SmoothGrad's own definition: the gradient is averaged over
    the copies, then reduced per token at the prompt's embeddings. Zero noise gives the wrapped method's scores.

    Cost: `n_samples` generations with the traced calls' graph (or the recording the wrapped method needs) and their
    backward passes; for a gradient aggregation `batch_size` at a time, otherwise one at a time, times the wrapped
    method's own cost.

    Args:
        n_samples (`int`, *optional*, defaults to 8): Noisy copies.
        noise_level (`float`, *optional*, defaults to 0.1):
            Noise standard deviation as a fraction of the attributed embeddings' value range (max - min).
        aggregation (`str` or `GradientAggregation`, *optional*): A gradient aggregation to wrap (the earlier
            argument; `method` takes any method).
        seed (`int`, *optional*, defaults to 0): Seed of the noise.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch (gradient aggregations).
        method (`str` or `AttributionMethod`, *optional*): The method to wrap, by name or as an object; a gradient
            aggregation (`"grad_x_input"`) when neither it nor `aggregation` is given.
    """

    n_samples: int = 8
    noise_level: float = 0.1
    aggregation: Union[str, Aggregation, GradientAggregation, None] = None
    seed: int = 0
    batch_size: Optional[int] = 8
    method: Union[str, Aggregation, AttributionMethod, None] = None
    name = "smoothgrad"
    summary = "The wrapped method's token scores averaged over noisy copies of the prompt's embeddings."
    one_image_per_call = True

    def __post_init__(self):
        from . import parse_method

        if self.method is not None and self.aggregation is not None:
            raise ValueError("Pass `method` (any method) or `aggregation` (a gradient aggregation), not both.")
        if int(self.n_samples) < 1 or self.noise_level < 0:
            raise ValueError("`n_samples` must be >= 1 and `noise_level` >= 0.")
        if self.aggregation is not None:
            self.method = GradientAggregation(getattr(self.aggregation, "aggregation", self.aggregation))
        self.method = parse_method(Aggregation.GRAD_X_INPUT if self.method is None else self.method)
        if isinstance(self.method, SmoothGrad):
            raise ValueError("SmoothGrad wraps another method, not a SmoothGrad: raise `n_samples` instead.")
        self.aggregation = getattr(self.method, "aggregation", None)

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
        if isinstance(self.method, GradientAggregation):
            gradients = regenerated_gradients(context, rows, target, self.batch_size, "SmoothGrad")
            mean = gradients.mean(0)
            tokens = score_units(mean, text, 0, context.units, self.aggregation)
            return Scores(tokens=[tokens], token_gradients=[mean[positions]])
        samples = []
        for k in progress_bar(range(len(rows)), "SmoothGrad", disable=not (context.verbose and len(rows) > 1)):
            with torch.enable_grad():  # the wrapped method's backward passes, where it takes any
                samples.append(self.method.attribute(self._noisy_trace(trace, rows[k : k + 1]), target).tokens[0])
        return Scores(tokens=[np.mean([np.asarray(tokens) for tokens in samples], axis=0)])

    def _noisy_trace(self, trace: Trace, embeddings: torch.Tensor) -> Trace:
        # The call's image made again from the noisy embeddings: a trace of it, as the wrapped method reads one.
        context = trace.regeneration
        leaves = context.leaves(embeddings)
        method = self.method
        recordings = method.recordings(call_texts(context.prompts))
        decoded, result = context.traced_run(leaves, recordings, method.needs_graph)
        return Trace(
            trace.family,
            trace.pipe,
            trace.level,
            trace.prompt_tokens[:1],
            graph=TracedGraph(decoded, leaves.conditioning, leaves.encoding),
            prompts=context.prompts,
            call_kwargs=context.call_kwargs,
            attention_maps=result.recordings.get("attention_maps"),
            concept_maps=result.recordings.get("concept_maps"),
            regeneration=context.with_inputs(embeddings),
            verbose=trace.verbose,
        )
