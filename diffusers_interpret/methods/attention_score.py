"""Scores from the cross-attention maps recorded while the image was made."""

from dataclasses import dataclass

import numpy as np
import torch

from ..box import box_mask
from ..target import Target
from ..trace import Trace
from .base import AttributionMethod, Scores


@dataclass
class AttentionScore(AttributionMethod):
    r"""
    Cross-attention between the box's pixels and each token, from the token's attention probability averaged over the
    heads and layers and over the last `n_last_diffusion_steps_to_consider_for_attributions` denoiser calls (all with
    `None`), maps upsampled to the image size. Ignores the attribution level. Where a family's text encoders read
    different prompts (SDXL's `prompt_2`), a key position carries both encoders' tokens: each gets that position's
    score.

    Cost: one generation with a recording attention processor (about 1.03x a plain one), no backward pass.

    Args:
        normalization (`str`, *optional*, defaults to `"token_share"`):
            `"token_share"`: the share of the token's attention (summed over the image) that falls inside the box:
            where in the image the token is used (without a box every share is 1, so the whole image falls back to
            `"probability"`). `"probability"`: the mean attention probability of the token over the box's pixels:
            what the box's pixels read.
    """

    normalization: str = "token_share"
    name = "attention"
    summary = "The share of each token position's cross-attention that falls inside the region."
    needs_attention_maps = True
    word_merge = "max"  # a word's most-read piece: more pieces are not more attention

    def __post_init__(self):
        if self.normalization not in ("token_share", "probability"):
            raise ValueError(f"`normalization` must be 'token_share' or 'probability', got {self.normalization!r}.")

    def scores_from_maps(self, maps: torch.Tensor, box) -> np.ndarray:
        r"""Scores from (tokens, H, W) attention maps of the attributed tokens."""
        values = maps.float()
        mask = box_mask(box, values.shape[-2], values.shape[-1], device=values.device, dtype=torch.float32)
        inside = (values * mask).flatten(1).sum(1)
        if self.normalization == "probability" or box is None:
            return (inside / mask.sum()).numpy()
        return (inside / values.flatten(1).sum(1).clamp_min(1e-12)).numpy()

    def attribute(self, trace: Trace, target: Target) -> Scores:
        return Scores(
            tokens=[
                self.scores_from_maps(trace.attention_maps.rows(i, tokens.positions), target.box)
                for i, tokens in enumerate(trace.prompt_tokens)
            ]
        )
