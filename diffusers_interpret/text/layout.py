r"""
Where every text encoder's tokens sit: one layout of rows (token positions) and features, an `EncoderBlock` per
encoder. Encoders of one `sequence_group` share rows and sit side by side on the feature axis (SDXL's and SD3's CLIP-L
and CLIP-G); groups follow one another on the rows (SD3's T5 after CLIP; Flux's pooled-only CLIP after T5).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
        positions (`Tuple[int, ...]`, *optional*): Each row's position in the encoder's token sequence, where the
            pipeline keeps some positions' states only (Qwen-Image drops its template's prefix, Sana keeps the first
            position and the last ones); `None`: row `rows.start + r` is position `r`.
    """

    rows: slice
    features: slice
    positions: Optional[Tuple[int, ...]] = None

    def row_of(self, position: int) -> Optional[int]:
        r"""The layout row of the encoder's token `position` (`None` for a position the pipeline drops)."""
        if self.positions is None:
            return self.rows.start + position
        index = {p: r for r, p in enumerate(self.positions)}.get(position)
        return None if index is None else self.rows.start + index

    def of_rows(self, part: torch.Tensor) -> torch.Tensor:
        r"""An encoder's (..., length, width) tensor at the positions of this block's rows."""
        return part if self.positions is None else part[..., list(self.positions), :]


def text_layout(
    family: PipelineFamily,
    pipe,
    lengths: Sequence[int],
    level: AttributionLevel,
    call_kwargs: Optional[Dict[str, Any]],
) -> List[Optional[EncoderBlock]]:
    r"""
    Each text encoder's block in the layout at `level`, given its padded token length: at the token level, encoders of
    a sequence group side by side on the features of shared rows, groups one after the other on the rows; at the
    text-encoder-output level, the rows and features its output occupies in the denoiser's `encoder_hidden_states`
    (`None` for an encoder that conditions through a pooled vector only). At both levels a row is a position of the
    denoiser's text: the positions whose states the pipeline drops (see `family.kept_positions`, for a call with
    `call_kwargs`) are in no row.
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
        kept = family.kept_positions(pipe, slot, length, call_kwargs or {})
        kept = None if kept is None else tuple(int(p) for p in kept)
        length = length if kept is None else len(kept)
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
        blocks.append(EncoderBlock(group_rows[group], features, kept))
    return blocks


def layout_shape(blocks: Sequence[Optional[EncoderBlock]]) -> Tuple[int, int]:
    r"""(rows, features) of a token-level layout."""
    present = [b for b in blocks if b is not None]
    return max(b.rows.stop for b in present), max(b.features.stop for b in present)


def place(parts: Sequence[Optional[torch.Tensor]], blocks: Sequence[Optional[EncoderBlock]]) -> torch.Tensor:
    r"""Each encoder's (..., length, width) tensor in its block of one (..., rows, features) tensor (zeros elsewhere),
    at its rows' positions. With one block at the origin, the tensor itself."""
    present = [(part, block) for part, block in zip(parts, blocks) if block is not None and part is not None]
    present = [(block.of_rows(part), block) for part, block in present]
    rows, width = layout_shape(blocks)
    if len(present) == 1 and tuple(present[0][0].shape[-2:]) == (rows, width):
        return present[0][0]
    lead = present[0][0].shape[:-2]
    out = torch.zeros((*lead, rows, width), dtype=present[0][0].dtype, device=present[0][0].device)
    for part, block in present:
        out[..., block.rows, block.features] = part
    return out


def token_blocks(
    family: PipelineFamily, pipe, ids: Sequence[Sequence[int]], call_kwargs: Optional[Dict[str, Any]]
) -> List[EncoderBlock]:
    r"""Each text encoder's block in the token-level layout, for its padded token ids (one row per encoder) in a call
    with `call_kwargs`."""
    return text_layout(family, pipe, [len(row) for row in ids], AttributionLevel.TOKEN_EMBEDDINGS, call_kwargs)
