r"""
How much each input token feeds each position of the conditioning (the text encoders' mixing, by forward-mode
differentiation), and concepts encoded on their own: what the attention methods hand back to the words.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..attribution import AttributionLevel
from ..families import PipelineFamily
from ..tracing.leaves import EagerAttention, Float32Compute
from .encoding import encode_replaced, token_embedding_values
from .layout import token_blocks
from .tokens import PromptTokens, TokenUnit, tokenize


@dataclass
class TokenMixing:
    r"""
    How much each input token feeds each position of the conditioning the denoiser reads.

    Args:
        weights (`torch.Tensor`): (positions, columns): `weights[j, c]` is the share of conditioning position `j` that
            column `c`'s input token makes, `||(d h_j / d e_c) e_c||` normalised over the columns of row `j`.
        columns (`List[Tuple[Tuple[int, ...], int]]`): Each column's (text encoders, token position). For a causal
            encoder whose positions are read only at the prompt's own tokens (a family that leaves its attention
            sinks out), the columns stop at the prompt's last token: the rows after it are not complete, and never
            read.
    """

    weights: torch.Tensor
    columns: List[Tuple[Tuple[int, ...], int]]

    def column(self, unit: TokenUnit) -> int:
        return self.columns.index((unit.encoders, unit.position))


def token_mixing(
    family: PipelineFamily,
    pipe,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    tokens: PromptTokens,
    chunk: int = 32,
) -> TokenMixing:
    r"""
    The text encoders' mixing of one prompt's tokens: for every input token (every text encoder's, together where the
    units are shared), the norm of its first-order contribution `(d h_j / d e_i) e_i` to every position `j` of the
    denoiser's `encoder_hidden_states`, by forward-mode differentiation through the pipeline's own `encode_prompt`
    (`chunk` tokens per pass; no backward pass). CLIP is causal: a position after a word (and the end and padding
    positions) carries that word on, and this says how much.
    """
    import torch.autograd.forward_ad as forward_ad

    slots = family.text_encoders(pipe)
    blocks = token_blocks(family, pipe, tokens.ids, call_kwargs)
    groups = list(dict.fromkeys(unit.encoders for unit in tokens.units))
    columns = [
        (group, row) for group in groups for row in range(*_feeding_rows(family, pipe, slots, blocks, group, tokens))
    ]
    values = token_embedding_values(family, pipe, tokens.ids, call_kwargs)
    parts = []
    encoders = [getattr(pipe, slot.encoder) for slot in slots]
    with torch.no_grad(), EagerAttention(encoders), Float32Compute(encoders):
        for start in range(0, len(columns), chunk):
            piece = columns[start : start + chunk]
            tangents = torch.zeros((len(piece), *values.shape[1:]), device=values.device, dtype=values.dtype)
            for row, (group, position) in enumerate(piece):
                for k in group:
                    tangents[row, position, blocks[k].features] = values[0, position, blocks[k].features]
            with forward_ad.dual_level():
                dual = forward_ad.make_dual(values.expand(len(piece), -1, -1).clone(), tangents)
                made = encode_replaced(family, pipe, prompts, call_kwargs, dual, blocks)["encoder_hidden_states"]
                tangent = forward_ad.unpack_dual(made).tangent
            parts.append(tangent.double().norm(dim=-1).T.cpu())  # (positions, columns of this piece)
    weights = torch.cat(parts, 1)
    total = weights.sum(1, keepdim=True)
    empty = (total[:, 0] <= 1e-12).nonzero()[:, 0]
    for position in empty.tolist():  # a position no token feeds keeps its own share (if it is a token's row)
        own = [c for c, (_, row) in enumerate(columns) if row == position]
        if own:
            weights[position, own[0]] = 1.0
    return TokenMixing(weights / weights.sum(1, keepdim=True).clamp_min(1e-30), columns)


def _feeding_rows(family: PipelineFamily, pipe, slots, blocks, group, tokens: PromptTokens) -> Tuple[int, int]:
    # The rows of `group`'s encoders whose tokens can feed a position the explanation reads. Where a family's maps
    # leave out every position but the prompt's own tokens (its attention sinks), only those positions are read, and a
    # causal encoder's position depends on the tokens up to it: the tokens after the prompt's last one feed none of
    # them (for an LLM at 512 tokens, 20-odd forward passes become one). Otherwise every row.
    rows = blocks[group[0]].rows
    if all(slots[k].masked_padding for k in group):
        # The padding feeds nothing (masked in the encoder, its states dropped): the rows end at the last token kept.
        pad = getattr(family.tokenizer(pipe, slots[group[0]]), "pad_token_id", None)
        kept = sum(1 for token in tokens.ids[group[0]] if token != pad)
        return rows.start, min(rows.start + max(kept, 1), rows.stop)
    joint = family.joint_attention
    if joint is None or not joint.sinks_left_out or not all(slots[k].causal for k in group):
        return rows.start, rows.stop
    last = max((unit.position for unit in tokens.units if unit.encoders == group), default=rows.start)
    return rows.start, min(last + 1, rows.stop)


def concept_states(
    family: PipelineFamily, pipe, concepts: Sequence[str], call_kwargs: Dict[str, Any], device
) -> torch.Tensor:
    r"""
    Each concept encoded on its own by the pipeline's own `encode_prompt`: the mean of its tokens' states (start, end
    and padding left out, and a bare word-start piece, sentencepiece's "▁" before a word it spells out) in the
    denoiser's `encoder_hidden_states`, (concepts, features).
    """
    prompts = {"prompt": list(concepts)}
    with torch.no_grad():
        states = family.encode(pipe, prompts, call_kwargs, device)["encoder_hidden_states"]
    tokens = tokenize(family, pipe, prompts, False, True, call_kwargs, AttributionLevel.TEXT_ENCODER_OUTPUT)
    rows = []
    for index, (concept, prompt) in enumerate(zip(concepts, tokens)):
        positions = sorted(set(prompt.positions))
        if not positions:
            raise ValueError(f"The concept {concept!r} has no token of its own: name concepts with words.")
        rows.append(states[index, positions].float().mean(0))
    return torch.stack(rows)
