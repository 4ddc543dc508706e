"""The attribution method interface: one class per method, one verb, declared needs."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch


@dataclass
class Scores:
    r"""
    What a method's `attribute` returns, one entry per image of the call.

    Args:
        tokens (`List[np.ndarray]`): Non-negative scores, one per scored unit (`PromptTokens.units`).
        pixels (`List[np.ndarray]`, *optional*): (H, W) scores of the input image's pixels (img2img, inpainting).
        pixel_gradients (`List[torch.Tensor]`, *optional*): Raw (3, H, W) gradients behind `pixels`.
        token_gradients (`List[torch.Tensor]`, *optional*): Raw (units, features) gradients behind `tokens`, at the
            attribution level, every text encoder's features side by side.
        token_embeddings (`List[torch.Tensor]`, *optional*): The embeddings those gradients were taken at.
        signed (`List[np.ndarray]`, *optional*): Signed scores, where the method has them.
        completeness (`List[float]`, *optional*): What the signed scores of every position add up to.
        pooled_share (`List[float]`, *optional*): The pooled text embedding's share of the gradient (SDXL).
        extras (`List[dict]`): Method-specific values per image.
    """

    tokens: List[np.ndarray]
    pixels: Optional[List[Optional[np.ndarray]]] = None
    pixel_gradients: Optional[List[Optional[torch.Tensor]]] = None
    token_gradients: Optional[List[torch.Tensor]] = None
    token_embeddings: Optional[List[torch.Tensor]] = None
    signed: Optional[List[np.ndarray]] = None
    completeness: Optional[List[float]] = None
    pooled_share: Optional[List[float]] = None
    extras: List[Dict[str, Any]] = field(default_factory=list)


class AttributionMethod:
    r"""
    Base of the attribution methods. A method scores the prompt's tokens (and, where it can, the input image's
    pixels) for a [`Target`] from a [`Trace`] with one verb, `attribute(trace, target) -> Scores`.

    Traits the explainer reads (it never checks a method's type):
        - `needs_graph`: the call's own graph back to the prompt (gradient methods).
        - `needs_attention_maps`: cross-attention maps recorded over the traced steps.
        - `needs_concept_maps`: concept-attention maps recorded over the traced steps (`concept_list(prompts)`
          names the concepts).
        - `one_image_per_call`: the method generates the image again (needs `trace.regeneration`).
        - `scores_pixels`: the method gives pixel scores itself; otherwise image explainers add the box-sum
          gradient x input of the pixels.
    """

    name: str = ""
    # One sentence: what the method's numbers mean (shown in reports).
    summary: str = ""
    needs_graph: bool = False
    needs_attention_maps: bool = False
    needs_concept_maps: bool = False
    one_image_per_call: bool = False
    scores_pixels: bool = False

    def attribute(self, trace, target) -> Scores:
        raise NotImplementedError
