"""Occlusion of one token at a time, exact through the text encoders and first-order through the denoising."""

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..checks import positive_int
from ..regeneration import chunks
from ..target import Target
from ..trace import Trace
from ._utils import random_probes
from .base import AttributionMethod, Scores


@dataclass
class LinearizedAblation(AttributionMethod):
    r"""
    What [`TokenAblation`] measures, without generating the image again: each attributed token is replaced by the
    baseline's (the padding token's by default) and the text encoders run on the result, giving the exact change
    `Δc_i` of the conditioning the denoiser reads; the change of the box's [0, 1] pixels is then taken to first
    order, `J Δc_i`, with `J` the Jacobian of the box's pixels (all channels) with respect to the conditioning through
    the traced denoiser calls. The score is the L2 norm `‖J Δc_i‖`, estimated from `n_probes` random Gaussian
    projections of the box in one batched backward pass (`E[(rᵀ J Δc_i)²] = ‖J Δc_i‖²`).

    Why it works: the text encoders are where removing a word is far from linear (a causal transformer rewrites
    every later position); the denoising responds to the conditioning's change nearly linearly. On the toy model the
    scores' rank correlation with measured ablation is about 0.9, against about 0.7 for gradient x input, which
    linearizes the text encoders too (docs/methods.md). The first-order error is largest where the effects are (a
    colour word repaints its object): between two objects' colour words it picks the boxed object's less often than
    ablation does.

    Cost: one generation with the traced calls' graph, `n_probes` backward passes (batched), and one text-encoder
    forward pass per attributed token (`batch_size` at a time); no generation again.

    Args:
        n_probes (`int`, *optional*, defaults to 4): Random projections; the estimate's relative spread is about
            `1 / sqrt(2 * n_probes)`.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What a token is replaced with (as
            [`TokenAblation`]'s).
        batch_size (`int`, *optional*, defaults to 16): Prompts per text-encoder pass.
        seed (`int`, *optional*, defaults to 0): Seed of the projections.
    """

    n_probes: int = 4
    baseline: Union[str, torch.Tensor] = "pad"
    batch_size: Optional[int] = 16
    seed: int = 0
    name = "linearized_ablation"
    summary = (
        "How much the region would change if each token were replaced by padding: exact through the text encoder, "
        "to first order through the denoising."
    )
    needs_graph = True
    one_image_per_call = True

    def __post_init__(self):
        positive_int(self.n_probes, "n_probes", allow_none=False)
        positive_int(self.batch_size, "batch_size")

    def attribute(self, trace: Trace, target: Target) -> Scores:
        context = trace.regeneration
        image = target.image(trace.decoded)
        probes = random_probes(self.n_probes, tuple(image.shape), self.seed, image.device) * target.mask(image)
        gradients = trace.conditioning_vector_jacobian_products(target, probes)  # name -> (probes, 1, ...)
        rows = context.replaced_units([[index] for index in range(len(context.units))], self.baseline)
        with torch.no_grad():
            # The prompt's own conditioning made by the same path as the replaced rows', so that what a replacement
            # leaves unchanged cancels exactly.
            prompt = context.conditioning(context.inputs)
            projections = []
            for piece in chunks(rows.shape[0], self.batch_size):
                replaced = context.conditioning(rows[piece.start : piece.stop])
                total = torch.zeros(len(probes), len(piece))
                for name, gradient in gradients.items():
                    if name in replaced:  # else unchanged by the replacement (the pooled vector at the output level)
                        change = (replaced[name].float() - prompt[name].float()).cpu()
                        total += torch.einsum("kx,rx->kr", gradient[:, 0].flatten(1), change.flatten(1))
                projections.append(total)
            projections = torch.cat(projections, dim=1)  # (probes, units)
        scores = projections.pow(2).mean(0).sqrt().double().numpy()
        return Scores(tokens=[scores], projections=[projections.numpy()])
