r"""
Where a region of the image looks in the image: the image-to-image (self-attention) relation map of a query region,
recorded beside the denoiser's own layers (a UNet's self-attention `attn1`, a DiT's joint attention's image-to-image
block), with the cross-attention recorder's counting of steps, rows and grids.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from diffusers.models.attention_processor import Attention

from ..box import boxes_of, normalize_box
from .attention import (
    CrossAttentionRecorder,
    joint_queries_keys,
    joint_scores,
    layer_mask,
    layer_rotary,
    mean_over_heads,
    query_grid,
)
from .run import Recording
from .scoped import call_arguments

_UNBOUNDED = 1 << 30


def region_cells(box, grid: Tuple[int, int], image_size: Tuple[int, int]) -> List[int]:
    r"""
    The cells (flat indices) of an attention grid whose centres fall in `box` ((x0, y0), (x1, y1)) pixels of an image
    of `image_size` (H, W); the cell under the box's centre where no centre does (a box smaller than a cell).
    """
    (x0, y0), (x1, y1) = box
    rows, columns = grid
    height, width = image_size
    cells = [
        r * columns + c
        for r in range(rows)
        for c in range(columns)
        if y0 <= (r + 0.5) * height / rows < y1 and x0 <= (c + 0.5) * width / columns < x1
    ]
    if cells:
        return cells
    r = min(int((y0 + y1) / 2 * rows / height), rows - 1)
    c = min(int((x0 + x1) / 2 * columns / width), columns - 1)
    return [r * columns + c]


def clip_region_cells(
    region, grid: Tuple[int, int], made_of: torch.Tensor, picture_size: Tuple[int, int]
) -> List[int]:
    r"""
    The cells of a video's attention grid (its latent frames' grids top to bottom) that a region of the clip's
    picture (its frames top to bottom, `made_of[t]` the latent frame frame `t` is made of) covers: on each frame the
    region reaches, the cells of that frame's latent frame whose centres fall in the region's part on the frame.
    """
    frames, latent_frames = len(made_of), int(made_of.max()) + 1
    frame_height, width = picture_size[0] // frames, picture_size[1]
    rows, columns = grid[0] // latent_frames, grid[1]
    cells = set()
    for (x0, y0), (x1, y1) in boxes_of(region):
        for frame in range(y0 // frame_height, (y1 - 1) // frame_height + 1):
            top = frame * frame_height
            part = ((x0, max(y0, top) - top), (x1, min(y1, top + frame_height) - top))
            offset = int(made_of[frame]) * rows * columns
            cells.update(offset + cell for cell in region_cells(part, (rows, columns), (frame_height, width)))
    return sorted(cells)


@torch.no_grad()
def self_attention_region(
    attn: Attention, hidden_states: torch.Tensor, queries: Sequence[int], heads: Optional[Sequence[int]] = None
) -> torch.Tensor:
    r"""
    A UNet self-attention layer's attention from the image tokens `queries` to every image token, averaged over the
    queries and the heads (`heads` only, where given): (batch, image tokens). `AttnProcessor`'s math from the layer's
    own projections, beside the layer.
    """
    batch = hidden_states.shape[0]
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states[:, list(queries)]))
    key = attn.head_to_batch_dim(attn.to_k(hidden_states))
    probs = attn.get_attention_scores(query, key, None)
    return mean_over_heads(probs.view(batch, attn.heads, *probs.shape[1:]).float(), heads).mean(dim=1)


@torch.no_grad()
def joint_self_attention_region(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: Optional[torch.Tensor],
    image_rotary_emb,
    text_length: int,
    queries: Sequence[int],
    text_first: bool = True,
    attention_mask: Optional[torch.Tensor] = None,
    heads: Optional[Sequence[int]] = None,
    layout: Optional[Tuple[slice, slice]] = None,
    keys: Optional[slice] = None,
) -> torch.Tensor:
    r"""
    A joint-attention layer's attention from the image tokens `queries` (indices among the image tokens) to the image
    tokens: the softmax over ALL keys (text and image, the layer's mask applied as its kernel applies it), of which
    the image columns are kept (the columns `keys` instead, where given: a reference image's tokens), averaged over
    the queries and the heads: (batch, image tokens). `layout`: as
    [`~tracing.attention.joint_attention_probabilities`]'.
    """
    query, key, head_dim = joint_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_first)
    total = query.shape[1]
    image = slice(text_length, total) if text_first else slice(0, total - text_length)
    image = image if layout is None else layout[0]
    picked = torch.arange(total)[image][list(queries)]
    scores = joint_scores(attn, query, key, head_dim, picked, attention_mask)
    probs = scores.softmax(dim=-1)[..., image if keys is None else keys]  # (batch, heads, queries, image tokens)
    return mean_over_heads(probs, heads).mean(dim=1)


class SelfAttentionRecorder(CrossAttentionRecorder):
    r"""
    Records where the image tokens of `box` attend among the image tokens, at every self-attention layer (UNet
    families: the transformer blocks' `attn1`; DiT families: the joint-attention layers' image-to-image block), while
    the pipeline runs: one map per image, averaged over the region's queries, the heads (or `heads`), the layers and
    the recorded steps, in the maps' single token row. The layers' processors stay as they are (forward pre-hooks
    compute the probabilities beside them): the image is the pipeline's own. See [`record_self_attention`].

    Args:
        box (`((x0, y0), (x1, y1))`): The query region, in pixels of the generated image.
        (the other arguments as [`CrossAttentionRecorder`]'s)
    """

    def __init__(self, pipe, box, **options):
        super().__init__(pipe, **options)
        self.box = normalize_box(box, _UNBOUNDED, _UNBOUNDED)  # malformed, empty or inverted: refused now
        if self.box is None:
            raise ValueError("`box` must be the query region ((x0, y0), (x1, y1)) in pixels, not None.")
        self._checked = False

    def _pre_hook(self, module, args, kwargs):
        result = super()._pre_hook(module, args, kwargs)
        if not self._checked and self._latent_size is not None:
            self.box = normalize_box(self.box, *self.query_image_size())  # inside the image: checked at the first call
            self._checked = True
        return result

    def _install(self) -> None:
        self._reset()
        self._install_beside(self._layers(), self._region_hook, "self-attention")

    def _remove(self) -> None:
        self._leave_counter()
        self._finish_step()

    def _layers(self) -> List[Tuple[str, torch.nn.Module]]:
        if self.family.joint_attention is not None:
            return self.family.self_attention_layers(self.unet)
        return [
            (name, module)
            for name, module in self.unet.named_modules()
            if isinstance(module, Attention) and not module.is_cross_attention and name.endswith("attn1")
        ]

    def query_image_size(self) -> Tuple[int, int]:
        r"""The (height, width) of the image the query region is a box of: the generated image."""
        return self.image_size()

    def _cells(self, image_tokens: int) -> List[int]:
        grid = query_grid(image_tokens, self._latent_size)
        if self._frames is None:
            return region_cells(self.box, grid, self.query_image_size())
        made_of = self.family.latent_frame_of(self.pipe, self._frames)
        return clip_region_cells(self.box, grid, made_of, self.query_image_size())

    def _region_hook(self, name: str):
        def hook(module, args, kwargs):
            if not self.recording_now():
                return None
            arguments = call_arguments(module, args, kwargs)
            hidden_states = arguments["hidden_states"]
            rows = self.kept_rows(int(hidden_states.shape[0]))
            if self.family.joint_attention is None:
                tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states[0, 0].numel()
                probs = self_attention_region(module, hidden_states.detach()[rows], self._cells(tokens), self.heads)
            else:
                text = arguments.get("encoder_hidden_states")
                mask = layer_mask(arguments, self.family.joint_attention.text_first)
                text_length = self.layer_text_length(text) if self.family.self_attention_reads_text else 0
                layout = self.family.joint_layout(
                    self.unet, int(hidden_states.shape[1]), text_length, self._latent_size
                )
                image_tokens = int(hidden_states.shape[1]) - (0 if text is not None else text_length)
                if layout is not None:
                    image_tokens = len(range(*layout[0].indices(int(hidden_states.shape[1]))))
                probs = joint_self_attention_region(
                    module,
                    hidden_states.detach()[rows],
                    None if text is None else text.detach()[rows],
                    layer_rotary(arguments, rows),
                    text_length,
                    self._cells(image_tokens),
                    text_first=self.family.joint_attention.text_first,
                    attention_mask=None if mask is None else mask.detach()[rows],
                    heads=self.heads,
                    layout=layout,
                    keys=self._keys(),
                )
            self._add_map(name, probs)
            return None

        return hook

    def _keys(self) -> Optional[slice]:
        return None  # the image's own tokens

    def _add_map(self, name: str, probs: torch.Tensor) -> None:
        self.add(name, probs[:, :, None])  # the image tokens as the grid, one "token" row: the map


class CorrespondenceRecorder(SelfAttentionRecorder):
    r"""
    Records where the generated image's tokens in `box` attend among a reference image's tokens that sit in the same
    joint-attention sequence (Flux Kontext), at every joint-attention layer, while the pipeline runs: the softmax over
    ALL keys, of which the reference's columns are kept, averaged over the region's queries, the heads (or `heads`),
    the layers and the recorded steps. The maps are at the reference image's size, as the pipeline processed it.
    See [`record_correspondence`].
    """

    def __init__(self, pipe, box, **options):
        super().__init__(pipe, box, **options)
        if not self.family.reads_reference:
            raise ValueError(
                f"{self.family.display_name} pipelines have no reference image among the denoiser's tokens: "
                "correspondence maps are for Flux Kontext (use `record_self_attention` for where a region looks in "
                "the image itself)."
            )
        self._reference_grid: Optional[Tuple[int, int]] = None

    def _pre_hook(self, module, args, kwargs):
        if self.enabled and not self.counter.is_recomputing:
            grid = self.family.reference_grid(kwargs)
            if grid is None:
                raise ValueError(
                    "This call has no reference image: pass `image=` to the pipeline (correspondence maps show where "
                    "a region looks in it)."
                )
            self._reference_grid = grid
        return super()._pre_hook(module, args, kwargs)

    def query_image_size(self) -> Tuple[int, int]:
        return super().image_size()

    def image_size(self) -> Tuple[int, int]:
        r"""The reference image's (height, width), as the pipeline processed it."""
        if self._reference_grid is None:
            raise RuntimeError("Nothing was recorded: run the pipeline inside the block.")
        factor = self.family.attention_grid_scale(self.pipe)
        return self._reference_grid[0] * factor, self._reference_grid[1] * factor

    def _keys(self) -> Optional[slice]:
        return self.family.reference_positions(self._text_length, self._latent_size)

    def _add_map(self, name: str, probs: torch.Tensor) -> None:
        self.add(name, probs[:, :, None], grid=self._reference_grid)


class _MatrixRecorder(CrossAttentionRecorder):
    # A recorder that keeps one matrix per image from the joint-attention layers, averaged over the layers of a step
    # and then over the recorded steps (text relations, the correspondence matrix).

    def _install_matrix(self, hook) -> None:
        self._reset()
        self._sum: Optional[torch.Tensor] = None
        self._matrix_steps = 0
        self._install_beside(self.family.attention_layers(self.unet), lambda name: hook, "joint-attention")

    def _remove(self) -> None:
        self._leave_counter()
        self._finish_step()

    def _joint_inputs(self, module, args, kwargs):
        # A joint-attention layer's inputs at the prompt's rows, detached: (hidden states, text states or None,
        # rotary embedding, mask or None).
        arguments = call_arguments(module, args, kwargs)
        hidden_states = arguments["hidden_states"]
        text = arguments.get("encoder_hidden_states")
        mask = layer_mask(arguments, self.family.joint_attention.text_first)
        rows = self.kept_rows(int(hidden_states.shape[0]))
        return (
            hidden_states.detach()[rows],
            None if text is None else text.detach()[rows],
            layer_rotary(arguments, rows),
            None if mask is None else mask.detach()[rows],
        )

    def _add_layer(self, matrix: torch.Tensor) -> None:
        self._step_sum = matrix if self._current_layers == 0 else self._step_sum + matrix
        self._current_layers += 1

    def _finish_step(self) -> None:
        if self._current_layers:
            step = self._step_sum / self._current_layers
            self._sum = step if self._sum is None else self._sum + step
            self._matrix_steps += 1
            self._recorded_steps.append(self._current_call)
        self._current_layers = 0

    def _mean(self) -> torch.Tensor:
        self._finish_step()
        if not self._matrix_steps:
            raise RuntimeError("No step was recorded: run the pipeline inside the block (and check `steps`).")
        return self._sum / self._matrix_steps


@dataclass
class Correspondence:
    r"""
    Where every token of the generated image looks among a reference image's tokens (Flux Kontext): the softmax over
    every key of the joint attention, the reference's columns kept, averaged over the layers, the heads and the
    recorded steps.

    Args:
        matrix (`np.ndarray`): (images, generated tokens, reference tokens), the generated tokens row by row on
            `grid`, the reference's on `reference_grid`.
        grid (`Tuple[int, int]`): The generated image's token grid (rows, columns).
        reference_grid (`Tuple[int, int]`): The reference image's token grid.
        cell (`int`): Pixels per token on each side (of both images).
    """

    matrix: np.ndarray
    grid: Tuple[int, int]
    reference_grid: Tuple[int, int]
    cell: int

    def for_box(self, box, image_index: int = 0) -> np.ndarray:
        r"""Where the tokens of `box` ((x0, y0), (x1, y1) pixels of the generated image) look in the reference: the
        mean of their rows, (reference rows, reference columns) on the reference's token grid."""
        size = (self.grid[0] * self.cell, self.grid[1] * self.cell)
        box = normalize_box(box, *size)
        cells = region_cells(box, self.grid, size) if box is not None else list(range(self.matrix.shape[1]))
        return self.matrix[image_index, cells].mean(0).reshape(self.reference_grid)

    def cell_sums(self, cell_size: Tuple[int, int], image_index: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        r"""For a view's grid of `cell_size` pixels: each view cell's sum of its tokens' rows, (rows, columns,
        reference tokens), and how many tokens each sums, (rows, columns). A cell-aligned box's map is its cells'
        sums over their counts."""
        height, width = self.grid[0] * self.cell, self.grid[1] * self.cell
        rows, columns = -(-height // cell_size[0]), -(-width // cell_size[1])
        sums = np.zeros((rows, columns, self.matrix.shape[2]), dtype=np.float64)
        counts = np.zeros((rows, columns), dtype=np.int64)
        for index, row in enumerate(self.matrix[image_index]):
            r, c = divmod(index, self.grid[1])
            y, x = (r + 0.5) * self.cell, (c + 0.5) * self.cell  # the token's centre decides its view cell
            sums[int(y // cell_size[0]), int(x // cell_size[1])] += row
            counts[int(y // cell_size[0]), int(x // cell_size[1])] += 1
        return sums, counts


class CorrespondenceMatrixRecorder(_MatrixRecorder):
    r"""
    Records, for every token of the generated image, where it looks among a reference image's tokens (Flux Kontext)
    while the pipeline runs: [`Correspondence`], the whole matrix (every region's correspondence map at once, what the
    interactive view shows beside the result). Queries are taken `chunk` at a time: one layer's scores are never held
    for every query at once.
    """

    def __init__(self, pipe, chunk: int = 256, **options):
        super().__init__(pipe, **options)
        if not self.family.reads_reference:
            raise ValueError(
                f"{self.family.display_name} pipelines have no reference image among the denoiser's tokens."
            )
        self.chunk = int(chunk)
        self._reference_grid: Optional[Tuple[int, int]] = None

    def _install(self) -> None:
        self._install_matrix(self._matrix_hook)

    def _pre_hook(self, module, args, kwargs):
        if self.enabled and not self.counter.is_recomputing:
            self._reference_grid = self.family.reference_grid(kwargs)
        return super()._pre_hook(module, args, kwargs)

    def _matrix_hook(self, module, args, kwargs):
        if not self.recording_now() or self._reference_grid is None:
            return None
        hidden_states, text, rotary, mask = self._joint_inputs(module, args, kwargs)
        text_first = self.family.joint_attention.text_first
        query, key, head_dim = joint_queries_keys(module, hidden_states, text, rotary, text_first)
        generated = self.family.joint_layout(self.unet, int(query.shape[1]), self._text_length, self._latent_size)[0]
        reference = self.family.reference_positions(self._text_length, self._latent_size)
        positions = torch.arange(int(query.shape[1]))[generated]
        parts = []
        for start in range(0, len(positions), self.chunk):
            scores = joint_scores(module, query, key, head_dim, positions[start : start + self.chunk], mask)
            parts.append(mean_over_heads(scores.softmax(dim=-1)[..., reference], self.heads).cpu())
        self._add_layer(torch.cat(parts, dim=1))  # (images, generated tokens, reference tokens)
        return None

    def result(self) -> Correspondence:
        return Correspondence(
            self._mean().numpy(),
            tuple(self._latent_size),
            tuple(self._reference_grid),
            self.family.attention_grid_scale(self.pipe),
        )


def correspondence_recording() -> Recording:
    r"""The correspondence matrix of a run (every step), as a [`Recording`] named `"correspondence"`."""

    def recorder(plan, counter, call_kwargs) -> CorrespondenceMatrixRecorder:
        return CorrespondenceMatrixRecorder(plan.pipe, family=plan.family, counter=counter)

    return Recording("correspondence", recorder)


@torch.no_grad()
def joint_text_relations(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: Optional[torch.Tensor],
    image_rotary_emb,
    text_length: int,
    text_first: bool = True,
    attention_mask: Optional[torch.Tensor] = None,
    heads: Optional[Sequence[int]] = None,
    layout: Optional[Tuple[slice, slice]] = None,
) -> torch.Tensor:
    r"""
    A joint-attention layer's text-to-text block: each text token's attention to each text token, the softmax over
    ALL keys (text and image, the layer's mask applied as its kernel applies it), averaged over the heads: (batch,
    text tokens, text tokens). `layout`: as [`~tracing.attention.joint_attention_probabilities`]'.
    """
    query, key, head_dim = joint_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_first)
    total = query.shape[1]
    text = slice(0, text_length) if text_first else slice(total - text_length, total)
    text = text if layout is None else layout[1]
    scores = joint_scores(attn, query, key, head_dim, text, attention_mask)
    return mean_over_heads(scores.softmax(dim=-1)[..., text], heads)


class TextRelationRecorder(_MatrixRecorder):
    r"""
    Records how the prompt's tokens attend to one another inside a transformer's joint attention (its text-to-text
    block) while the pipeline runs: (images, text tokens, text tokens), averaged over the heads (or `heads`), the
    layers and the recorded steps; `relations` gives it. The layers' processors stay as they are. A UNet family has no
    such block (its text tokens meet only in the text encoder): refused. See [`record_text_relations`].
    """

    def _install(self) -> None:
        if self.family.joint_attention is not None and not self.family.joint_attention.text_queries:
            raise ValueError(
                f"{self.family.display_name}'s prompt tokens have no queries in the denoiser (only the image's tokens "
                "attend to them): it has no text-to-text attention to record."
            )
        if self.family.joint_attention is None:
            raise ValueError(
                f"{self.family.display_name} pipelines have no text-to-text attention in the denoiser (the prompt's "
                "tokens meet only in the text encoder): text relations are for the transformer families."
            )
        self._install_matrix(self._relation_hook)

    def _relation_hook(self, module, args, kwargs):
        if not self.recording_now():
            return None
        hidden_states, text, rotary, mask = self._joint_inputs(module, args, kwargs)
        text_length = self.layer_text_length(text)
        relations = joint_text_relations(
            module,
            hidden_states,
            text,
            rotary,
            text_length,
            text_first=self.family.joint_attention.text_first,
            attention_mask=mask,
            heads=self.heads,
            layout=self.family.joint_layout(self.unet, int(hidden_states.shape[1]), text_length, self._latent_size),
        ).cpu()
        batch = int(call_arguments(module, args, kwargs)["hidden_states"].shape[0])
        columns = self.layer_text_columns(self.kept_rows(batch))
        if columns is not None:  # both axes back to the call's text positions
            index = columns[:, :, None].expand(-1, -1, relations.shape[2])
            relations = relations.gather(1, index).gather(2, columns[:, None, :].expand(-1, columns.shape[1], -1))
        self._add_layer(relations)
        return None

    @property
    def relations(self) -> torch.Tensor:
        r"""(images, text tokens, text tokens): row `i` is where text token `i` looks among the text tokens."""
        return self._mean()

    def result(self) -> torch.Tensor:
        return self.relations
