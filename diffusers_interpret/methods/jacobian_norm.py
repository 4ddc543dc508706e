"""How strongly the box's pixels depend on each token, in any direction."""

from dataclasses import dataclass

import numpy as np

from ..target import Target
from ..trace import Trace
from ._utils import random_probes
from .base import AttributionMethod, Scores


@dataclass
class JacobianNorm(AttributionMethod):
    r"""
    The Frobenius norm of the Jacobian of the box's [0, 1] pixels (all channels) with respect to the token's embedding,
    estimated from `n_probes` backward passes of random Gaussian projections of the box (Hutchinson's estimator,
    unbiased for the squared norm). Unlike the gradient of the box's pixel sum, a token that changes the box's colour
    without changing its brightness scores high.

    Cost: one generation with the traced calls' graph and `n_probes` backward passes.

    Args:
        n_probes (`int`, *optional*, defaults to 4): Random projections; the estimate's relative spread is about
            `1 / sqrt(2 * n_probes)`.
        seed (`int`, *optional*, defaults to 0): Seed of the projections.
    """

    n_probes: int = 4
    seed: int = 0
    name = "jacobian_norm"
    summary = "How strongly the region's pixels depend on each token's embedding, in any colour direction."
    needs_graph = True

    def __post_init__(self):
        if int(self.n_probes) < 1:
            raise ValueError(f"`n_probes` must be >= 1, got {self.n_probes}.")

    def attribute(self, trace: Trace, target: Target) -> Scores:
        image = target.image(trace.decoded)
        probes = random_probes(self.n_probes, tuple(image.shape), self.seed, image.device) * target.mask(image)
        gradients = trace.vector_jacobian_products(target, probes)  # (probes, images, length, features)
        inputs = trace.text_inputs()
        tokens = []
        for index, prompt in enumerate(trace.prompt_tokens):
            squared = gradients[:, index].pow(2)
            tokens.append(
                np.array(
                    [
                        float(squared[:, u.position, inputs.unit_features(u)].sum(-1).mean(0).sqrt())
                        for u in prompt.units
                    ]
                )
            )
        return Scores(tokens=tokens)
