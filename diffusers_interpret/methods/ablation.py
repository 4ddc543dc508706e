"""Occlusion of one token at a time."""

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..target import Target
from ..trace import Trace
from .base import AttributionMethod, Scores


@dataclass
class TokenAblation(AttributionMethod):
    r"""
    Occlusion of one token at a time: the attributed token is replaced by the baseline's (the padding token's by
    default) and the image generated again from the same noise; the score is the L2 norm of the change of the [0, 1]
    image inside the box (all pixels and channels). A change of colour counts as much as a change of brightness.

    Cost: one generation per attributed token (no backward pass), `batch_size` at a time.

    Args:
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What a token is replaced with.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """

    baseline: Union[str, torch.Tensor] = "pad"
    batch_size: Optional[int] = 8
    name = "ablation"
    summary = "How much the region changes when each token is replaced by padding and the image made again."
    one_image_per_call = True

    def attribute(self, trace: Trace, target: Target) -> Scores:
        context = trace.regeneration
        image = target.image(trace.decoded.detach())[:1]
        rows = context.replaced_units([[index] for index in range(len(context.units))], self.baseline)
        changes, images = context.box_changes(rows, image, target.box, self.batch_size, desc="Ablation")
        return Scores(tokens=[changes.numpy()], ablated_images=[images])
