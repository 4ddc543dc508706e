"""The attribution method interface: one class per method, one verb, declared needs."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..target import Target
from ..trace import Trace
from ..tracing.attention import attention_recording
from ..tracing.run import Recording


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
        pixel_completeness (`List[float]`, *optional*): What the pixels' signed contributions add up to.
        pooled_share (`List[float]`, *optional*): The pooled text embedding's share of the gradient (SDXL).
        word_maps (`List[np.ndarray]`, *optional*): (units, H, W) maps of where each unit is read in the image.
        cell_size (`float`, *optional*): Pixels per cell of the attention grid behind `word_maps`.
        concept_maps (`List[Dict[str, np.ndarray]]`, *optional*): (H, W) map of each concept.
        concept_scores (`List[Dict[str, float]]`, *optional*): Each concept's score for the target.
        ablated_images (`List[torch.Tensor]`, *optional*): (units, 3, H, W) images made with each unit removed.
        projections (`List[np.ndarray]`, *optional*): (probes, units) random projections behind the scores.
        extras (`List[dict]`): Values of methods defined outside the library, per image.
    """

    tokens: List[np.ndarray]
    pixels: Optional[List[Optional[np.ndarray]]] = None
    pixel_gradients: Optional[List[Optional[torch.Tensor]]] = None
    token_gradients: Optional[List[torch.Tensor]] = None
    token_embeddings: Optional[List[torch.Tensor]] = None
    signed: Optional[List[np.ndarray]] = None
    completeness: Optional[List[float]] = None
    pixel_completeness: Optional[List[float]] = None
    pooled_share: Optional[List[float]] = None
    word_maps: Optional[List[np.ndarray]] = None
    cell_size: Optional[float] = None
    concept_maps: Optional[List[Dict[str, np.ndarray]]] = None
    concept_scores: Optional[List[Dict[str, float]]] = None
    ablated_images: Optional[List[torch.Tensor]] = None
    projections: Optional[List[np.ndarray]] = None
    extras: List[Dict[str, Any]] = field(default_factory=list)


class AttributionMethod:
    r"""
    Base of the attribution methods. A method scores the prompt's tokens (and, where it can, the input image's
    pixels) for a [`Target`] from a [`Trace`] with one verb, `attribute(trace, target) -> Scores`.

    Traits the explainer reads (it never checks a method's type):
        - `needs_graph`: the call's own graph back to the prompt (gradient methods).
        - `needs_attention_maps`: cross-attention maps recorded over the traced steps (`trace.attention_maps`).
        - `needs_concept_maps`: concept-attention maps recorded over the traced steps (`trace.concept_maps`).
        - `one_image_per_call`: the method generates the image again (needs `trace.regeneration`).
        - `scores_pixels`: the method gives pixel scores itself; otherwise image explainers add the box-sum
          gradient x input of the pixels.
        - `word_merge`: how a word's tokens' scores make the word's (`PromptTokens.word_scores`): `"sum"` for
          additive attributions, `"max"` (a word's most-read piece under each encoder) for attention read off maps.

    What the traced run records for the method is `recordings(prompts)`: by default the attention maps where it
    needs them; a method that needs something else recorded supplies its own recording.
    """

    name: str = ""
    # One sentence: what the method's numbers mean (shown in reports).
    summary: str = ""
    needs_graph: bool = False
    needs_attention_maps: bool = False
    needs_concept_maps: bool = False
    one_image_per_call: bool = False
    scores_pixels: bool = False
    word_merge: str = "sum"

    def recordings(self, prompts: Sequence[str]) -> List[Recording]:
        r"""What the traced run records beside the pipeline's call for this method, for a call with `prompts`."""
        return [attention_recording(traced_only=True)] if self.needs_attention_maps else []

    def attribute(self, trace: Trace, target: Target) -> Scores:
        raise NotImplementedError
