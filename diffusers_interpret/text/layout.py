r"""
Where every text encoder's tokens sit: one layout of rows (token positions) and features, an `EncoderBlock` per
encoder. Encoders of one `sequence_group` share rows and sit side by side on the feature axis (SDXL's and SD3's CLIP-L
and CLIP-G); groups follow one another on the rows (SD3's T5 after CLIP; Flux's pooled-only CLIP after T5).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..attribution import AttributionLevel
from ..families import PipelineFamily
from ..tracing.leaves import input_embeddings


@dataclass(frozen=True)
class EncoderBlock:
    r"""
    Where one text encoder's tokens sit in the layout of every encoder's tokens.

    Args:
        rows (`slice`): Its token positions (rows of the layout's sequence axis).
        features (`slice`): Its features (of the layout's feature axis).
        skip (`int`, *optional*, defaults to 0): The encoder's first positions that are in no row: the pipeline drops
            their states before the denoiser reads the rest (Qwen-Image's template prefix). Its position `skip + r`
            is row `rows.start + r`.
    """

    rows: slice
    features: slice
    skip: int = 0


def text_layout(
    family: PipelineFamily, pipe, lengths: Sequence[int], level: AttributionLevel
) -> List[Optional[EncoderBlock]]:
    r"""
    Each text encoder's block in the layout at `level`, given its padded token length: at the token level, encoders of
    a sequence group side by side on the features of shared rows, groups one after the other on the rows; at the
    text-encoder-output level, the rows and features its output occupies in the denoiser's `encoder_hidden_states`
    (`None` for an encoder that conditions through a pooled vector only). At both levels a row is a position of the
    denoiser's text: the positions whose states the pipeline drops (`family.dropped_positions`) are in no row.
    """
    output = AttributionLevel(level) is AttributionLevel.TEXT_ENCODER_OUTPUT
    blocks: List[Optional[EncoderBlock]] = []
    group_rows: Dict[int, slice] = {}
    group_width: Dict[int, int] = {}
    next_row = 0
    for slot, length in zip(family.text_encoders(pipe), lengths):
        if output and slot.feature_slice is None:
            blocks.append(None)
            continue
        group = slot.sequence_group
        skip = family.dropped_positions(pipe, slot)
        length -= skip
        if group not in group_rows:
            group_rows[group], group_width[group] = slice(next_row, next_row + length), 0
            next_row += length
        elif group_rows[group].stop - group_rows[group].start != length:
            raise RuntimeError(f"Text encoders of sequence group {group} made token sequences of different lengths.")
        if output:
            features = slot.feature_slice
        else:
            width = int(input_embeddings(getattr(pipe, slot.encoder)).weight.shape[-1])
            features = slice(group_width[group], group_width[group] + width)
            group_width[group] += width
        blocks.append(EncoderBlock(group_rows[group], features, skip))
    return blocks


def layout_shape(blocks: Sequence[Optional[EncoderBlock]]) -> Tuple[int, int]:
    r"""(rows, features) of a token-level layout."""
    present = [b for b in blocks if b is not None]
    return max(b.rows.stop for b in present), max(b.features.stop for b in present)


def place(parts: Sequence[Optional[torch.Tensor]], blocks: Sequence[Optional[EncoderBlock]]) -> torch.Tensor:
    r"""Each encoder's (..., length, width) tensor in its block of one (..., rows, features) tensor (zeros elsewhere),
    its first `block.skip` positions left out. With one block at the origin, the tensor itself."""
    present = [(part, block) for part, block in zip(parts, blocks) if block is not None and part is not None]
    present = [(part[..., block.skip :, :] if block.skip else part, block) for part, block in present]
    rows, width = layout_shape(blocks)
    if len(present) == 1 and tuple(present[0][0].shape[-2:]) == (rows, width):
        return present[0][0]
    lead = present[0][0].shape[:-2]
    out = torch.zeros((*lead, rows, width), dtype=present[0][0].dtype, device=present[0][0].device)
    for part, block in present:
        out[..., block.rows, block.features] = part
    return out


def token_blocks(family: PipelineFamily, pipe, ids: Sequence[Sequence[int]]) -> List[EncoderBlock]:
    r"""Each text encoder's block in the token-level layout, for its padded token ids (one row per encoder)."""
    return text_layout(family, pipe, [len(row) for row in ids], AttributionLevel.TOKEN_EMBEDDINGS)
