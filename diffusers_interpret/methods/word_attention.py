"""Cross-attention carried back through the text encoders to the prompt's own words."""

from dataclasses import dataclass

import numpy as np
import torch

from ..target import Target
from ..trace import Trace
from ._utils import map_scores
from .base import AttributionMethod, Scores


@dataclass
class WordAttention(AttributionMethod):
    r"""
    The denoiser's cross-attention maps, handed back to the words that made each attended position.

    The UNet does not attend to words but to the text encoder's output positions, and CLIP's encoder is causal: the
    states at "on" and "the" in "a red circle on the left" largely carry "circle" and "red" on (and the end and padding
    positions, which draw much attention, carry the whole prompt). So the attention a box pays to a position is split
    among the input tokens that feed it, in proportion to `||(d h_j / d e_i) e_i||` (each token's first-order
    contribution to the position, by forward-mode differentiation through the pipeline's own `encode_prompt`; every
    text encoder at once). Each word gets a map `m_i(x) = sum_j M_j(x) W[j, i]` from the recorded maps `M_j`
    (heads, layers and the traced steps averaged).

    - For a box `B`: `mean_B(m_i) * sum_B(m_i) / sum(m_i)`, what the box reads of the word times the share of the
      word's map that falls inside the box.
    - For the whole image: the spatial standard deviation of `m_i`: words that shape where things go, not words that
      every pixel reads alike.

    No word list is involved: function words rank low because their maps are flat and small once the words they carry
    on are credited. A word a tokenizer splits into pieces (T5's "▁tri" + "angle") scores its most-read piece under
    each encoder, not the pieces' sum: two positions are not twice the meaning (on the toy Flux, summed pieces put
    "triangle" above its colour in every triangle's box, where ablation never did; docs/methods.md).

    The word maps are in `output.word_maps` ((tokens, H, W), aligned with the tokens), the attention grid's cell in
    pixels in `output.word_map_cell_size`; `edge_aware_maps(maps, output.image, cell_size)` gives them the image's own
    outlines (docs/explore.md).

    Cost: one generation recording cross-attention (as `"attention"`), plus one forward pass through the text
    encoders per token position (in batches), no backward pass. Benchmark: docs/methods.md.
    """

    name = "word_attention"
    summary = (
        "How much the region's pixels attend to each word, the attention to each text-encoder position handed back "
        "to the words that feed it; for the whole image, how unevenly each word's attention is spread."
    )
    needs_attention_maps = True
    word_merge = "max"

    def attribute(self, trace: Trace, target: Target) -> Scores:
        tokens, word_maps = [], []
        for index, prompt in enumerate(trace.prompt_tokens):
            mixing = trace.token_mixing(index)
            columns = [mixing.column(unit) for unit in prompt.units]
            maps = trace.attention_maps.maps[index].double()  # (positions, H, W)
            words = torch.einsum("jhw,jc->chw", maps, mixing.weights[:, columns])
            tokens.append(self.scores_from_word_maps(words, target))
            word_maps.append(words.float().numpy())
        return Scores(tokens=tokens, word_maps=word_maps, cell_size=trace.attention_maps.cell_size)

    @staticmethod
    def scores_from_word_maps(words: torch.Tensor, target) -> np.ndarray:
        r"""The method's scores of (words, H, W) maps for a target (see the class docstring)."""
        return map_scores(words, target)
