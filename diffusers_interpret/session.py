r"""
What one explainer call kept, behind its outputs' `explain(box)`, `region_grid()`, `interactive_view()` and
`release()`: the graph (`keep_for_reexplanation="graph"`), the untraced steps' denoiser outputs (`"latents"`), or
only the attention maps (the `"attention"` method, which needs nothing kept).
"""

import dataclasses
import warnings
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from . import checks
from .assembly import fill_dependence, reexplained
from .box import clip_box, normalize_box
from .methods import GradientAggregation, WordAttention, parse_method
from .progress import progress_bar
from .regeneration import Regeneration
from .request import CheckedRequest
from .trace import CallRecord, Trace
from .tracing.scoped import pipeline_lock
from .views.interactive import InteractiveView
from .views.summary import prompt_in_words, what_was_explained

# The most values a view's reference panel embeds (4 bytes each, base64): 32 MB.
_MAX_REFERENCE_VALUES = 1 << 23


class Session:
    r"""
    Shared by the outputs of one explainer call. `release()` drops what it kept (so does garbage collection of the
    outputs).

    Args:
        explainer (`BasePipelineExplainer`): The explainer of the call.
        trace (`Trace`): What the traced run left.
        request (`CheckedRequest`): The call's checked inputs.
        images (`list`): The call's images, without the box drawn.
        record (`CallRecord`): What the call's run left for the session (the untraced outputs, the generators).
    """

    CELLS_PER_BATCH = 8

    def __init__(self, explainer, trace: Trace, request: CheckedRequest, images, record: CallRecord):
        self.explainer = explainer
        self.trace = trace
        self.request = request
        self.images = images
        self.record = record
        self.released = False
        self._grids: Dict[Tuple[int, int], np.ndarray] = {}
        self._reference: Optional[torch.Tensor] = None

    @property
    def regeneration(self) -> Optional[Regeneration]:
        r"""How to generate the image again with the prompt changed (single-image calls), for the faithfulness
        metrics."""
        return self.trace.regeneration

    def reference_image(self) -> torch.Tensor:
        r"""The explained image in [0, 1] as the pipeline made it, generated again from the same noise with nothing
        replaced (once; the faithfulness metrics compare their regenerated images with it)."""
        if self._reference is None:
            context = self.regeneration
            with torch.no_grad():
                self._reference = context.box_images(context.generate(context.inputs)).cpu()
        return self._reference

    def finish(self) -> None:
        r"""After the call: keep the graph only where `keep_for_reexplanation="graph"` asked for it."""
        if self.request.keep != "graph":
            self.trace.release()

    def clear_grids(self) -> None:
        r"""Forget the region grids computed so far (they are cached per cell size)."""
        self._grids = {}

    def release(self) -> None:
        self.trace.release()
        self.record = dataclasses.replace(self.record, untraced_outputs=None)
        self._grids = {}
        self.released = True

    # -- another box ----------------------------------------------------------------------------------------------
    def explain(self, output, explanation_2d_bounding_box, attribution_method=None, explanation_frames=None):
        frames = self.request.num_frames
        if frames is None:
            return self._explain(output, explanation_2d_bounding_box, attribution_method)
        # A clip: the box of each frame over a span of frames, a region of the clip's picture.
        request = self.request
        box, span, region = clip_box(
            explanation_2d_bounding_box, explanation_frames, request.height, request.width, frames
        )
        new = self._explain(output, region, attribution_method, (box, span))
        return dataclasses.replace(
            new, explanation_2d_bounding_box=box, explanation_frames=span, explained_region=region
        )

    def _explain(self, output, explanation_2d_bounding_box, attribution_method=None, clip_box=None):
        method = parse_method(attribution_method) if attribution_method is not None else self.request.method
        if method.needs_attention_maps and self.trace.attention_maps is not None:
            height, width = self.trace.attention_maps.size
            return self._reexplain(output, explanation_2d_bounding_box, method, height, width)
        if method.needs_concept_maps and self.trace.concept_maps is not None:
            height, width = self.trace.concept_maps.maps.shape[-2:]
            return self._reexplain(output, explanation_2d_bounding_box, method, height, width)
        if self.request.keep is None:
            raise RuntimeError(
                "Nothing was kept to explain another region: call the explainer with keep_for_reexplanation='graph' "
                "(or 'latents')."
            )
        if self.released:
            raise RuntimeError("What this explanation kept was released: call the explainer again.")
        if self.request.keep == "latents":
            return self._replay(output, explanation_2d_bounding_box, attribution_method, clip_box)
        height, width = self.trace.decoded.shape[-2:]
        return self._reexplain(output, explanation_2d_bounding_box, method, height, width)

    def _reexplain(self, output, box, method, height: int, width: int):
        box = normalize_box(box, height, width)
        trace, target = self.trace, self.trace.target(box)
        grad = torch.enable_grad() if trace.has_graph else torch.no_grad()
        with pipeline_lock(self.explainer.pipe), grad:  # a checkpointed backward runs the denoiser again
            scores = method.attribute(trace, target)
            if not method.scores_pixels and trace.has_graph and trace.pixels is not None:
                GradientAggregation().attribute_pixels(trace, target, scores)
        image_input = self.request.image_input
        clean = self.images[output.image_index]
        input_image = getattr(output, "input_image", None)
        mask = getattr(output, "mask", None) if image_input is not None else None
        new = reexplained(output, trace, scores, box, method, clean, input_image, mask)
        return new

    def _replay(self, output, box, attribution_method, clip_box=None):
        # The same call again with another box: the untraced steps replayed from the kept denoiser outputs (a clip's
        # box and span of frames, `clip_box`, as the call takes them).
        request = self.request.request
        frames = None
        if clip_box is not None:
            box, frames = clip_box
        request = dataclasses.replace(
            request,
            attribution_method=request.attribution_method if attribution_method is None else attribution_method,
            explanation_2d_bounding_box=box,
            explanation_frames=frames,
            get_images_for_all_inference_steps=False,
            keep_for_reexplanation=None,
            prompt_dependence=False,  # the call's map serves every box
            pipeline_kwargs={**request.pipeline_kwargs, "generator": self.record.fresh_generators()},
        )
        outputs = self.explainer.explain(request, replay=self.record.untraced_outputs)
        new = outputs[output.image_index] if isinstance(outputs, list) else outputs
        new.all_images_during_generation = output.all_images_during_generation
        new.attention_maps = output.attention_maps
        new.prompt_dependence_map = output.prompt_dependence_map
        if hasattr(output, "control_dependence_map"):
            new.control_dependence_map = output.control_dependence_map
        fill_dependence(new)
        new.session = self
        return new

    # -- regions --------------------------------------------------------------------------------------------------
    def region_grid(self, index: int, cell_size: Union[int, Tuple[int, int]]) -> np.ndarray:
        r"""
        Per-cell gradient x input of the attributed tokens, (rows, cols, tokens, features): the cells'
        vector-Jacobian products, `CELLS_PER_BATCH` at a time in one batched backward pass where autograd can.
        """
        if self.request.keep != "graph":
            raise RuntimeError(
                "A region grid needs the graph: call the explainer with keep_for_reexplanation='graph'."
            )
        if self.released:
            raise RuntimeError("This explanation's graph was released: call the explainer again.")
        height, width = self.trace.decoded.shape[-2:]
        cell_h, cell_w = checks.cell_size(cell_size, height, width)
        key = (cell_h, cell_w)
        if key not in self._grids:
            with pipeline_lock(self.explainer.pipe):
                self._grids[key] = self._grid(cell_h, cell_w, height, width)
        return self._grids[key][index]

    def _grid(self, cell_h: int, cell_w: int, height: int, width: int) -> np.ndarray:
        trace = self.trace
        inputs = trace.text_inputs()
        positions = [tokens.positions for tokens in trace.prompt_tokens]
        rows, cols = -(-height // cell_h), -(-width // cell_w)
        longest = max(len(p) for p in positions)
        grid = np.zeros((len(positions), rows, cols, longest, inputs.values.shape[-1]), np.float32)
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        batches = [cells[i : i + self.CELLS_PER_BATCH] for i in range(0, len(cells), self.CELLS_PER_BATCH)]
        target = trace.target(None)
        with torch.enable_grad():
            shape = target.image(trace.decoded).shape
        for batch in progress_bar(batches, "Region grid", disable=not self.explainer.verbose):
            masks = torch.zeros((len(batch), *shape), device=trace.decoded.device, dtype=torch.float32)
            for k, (r, c) in enumerate(batch):
                masks[k, ..., r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] = 1
            with torch.enable_grad():
                gradients = trace.vector_jacobian_products(target, masks)
            for (r, c), gradient in zip(batch, gradients):
                values = gradient * inputs.values
                for i, image_positions in enumerate(positions):
                    grid[i, r, c, : len(image_positions)] = values[i][image_positions].numpy()
        return grid

    def interactive_view(self, output, cell_size, title: Optional[str] = None, edge_aware: bool = False):
        r"""
        The interactive view of `output`, scored by the call's own method: from its word maps where it has them
        (`word_attention`, `concept_attention`: per-cell sums; the whole image as the method scores it), otherwise,
        with the graph kept, from per-cell gradient x input.
        """
        checks.optional_str(title, "title")
        if not isinstance(edge_aware, bool):
            raise TypeError(f"`edge_aware` must be True or False, got {edge_aware!r}.")
        if edge_aware and output.attention_maps is None:
            raise ValueError("`edge_aware=True` needs attention maps: explain with `attention_maps=True`.")
        cell = checks.cell_size(cell_size, self.request.height, self.request.width)
        score, whole = "grad_x_input", None
        if output.word_maps is not None:  # the call's own method (word or concept maps), even with a graph kept
            score, grid, whole = output.attribution_method, *self._word_cells(output, cell)
        else:
            grid = self.region_grid(output.image_index, cell)
        base = self.images[output.image_index]
        if not isinstance(base, Image.Image):
            base = Image.fromarray((np.asarray(base) * 255).round().astype(np.uint8))
        # The words once, each encoder's tokens one click away, where the tokens are not the words themselves.
        tokens, word_scores = output.token_attributions, output.word_attributions
        words = None
        if word_scores and (tokens.encoders is not None or tokens.tokens != word_scores.tokens):
            words = list(zip(word_scores.labels, output.word_tokens))
        maps = word_maps = None
        if output.attention_maps is not None:
            positions, index = output.token_positions, output.image_index
            attention = output.attention_maps
            inside = attention.num_tokens  # tokens past the maps (Flux's CLIP: its pooled vector only) have none
            if edge_aware:  # this image's maps only, given its edges
                attention = attention.of_image(index).edge_aware(base, positions=[p for p in positions if p < inside])
                index = 0
            maps = [attention.for_token(p, image_index=index) if p < inside else None for p in positions]
            if words is not None:
                word_maps = [
                    attention.for_tokens([positions[t] for t in group if positions[t] < inside], image_index=index)
                    if group
                    else None
                    for _, group in words
                ]
        return InteractiveView(
            base,
            list(output.all_images_during_generation or []),
            tokens.labels,
            cell,
            grid,
            attention_maps=maps,
            title=title or prompt_in_words(output),
            score=score,
            whole_image_scores=whole,
            words=words,
            word_attention_maps=word_maps,
            dependence_map=output.prompt_dependence_map,
            method_description=what_was_explained(output),
            reference=self._reference_image(output, cell),
            frames=None if self.request.num_frames is None else (self.request.num_frames, self.request.height),
            word_merge=self._word_merge(score),
            token_encoders=tokens.encoders,
        )

    def _word_merge(self, score: str) -> str:
        # How the view's scoring method merges a word's tokens (its `word_merge` trait): the call's own method object
        # where it is the one, else the method of that name (gradient x input sums).
        from .methods import parse_method

        method = self.request.method
        if score == method.name:
            return method.word_merge
        try:
            return parse_method(score).word_merge
        except ValueError:
            return "sum"

    def _reference_image(self, output, cell: Tuple[int, int]):
        # Flux Kontext's reference image and where each view cell looks in it, for the view's second image.
        correspondence = getattr(output, "correspondence", None)
        if correspondence is None or output.input_image is None:
            return None
        rows, columns = -(-self.request.height // cell[0]), -(-self.request.width // cell[1])
        values = rows * columns * int(correspondence.matrix.shape[2])
        if values > _MAX_REFERENCE_VALUES:
            warnings.warn(
                f"The reference image's panel would hold {values} values ({rows}x{columns} cells x "
                f"{correspondence.matrix.shape[2]} reference tokens): left out of the view. Use a larger `cell_size`.",
                stacklevel=4,
            )
            return None
        sums, counts = correspondence.cell_sums(cell, output.image_index)
        return output.input_image, sums, counts, correspondence.reference_grid

    def _word_cells(self, output, cell: Tuple[int, int]):
        # Each word map's sum over each grid cell, (rows, cols, tokens, 1), and the whole image's scores.
        maps = torch.from_numpy(np.asarray(output.word_maps, dtype=np.float64))
        tokens, height, width = maps.shape
        rows, cols = -(-height // cell[0]), -(-width // cell[1])
        padded = torch.zeros(tokens, rows * cell[0], cols * cell[1], dtype=maps.dtype)
        padded[:, :height, :width] = maps
        sums = padded.view(tokens, rows, cell[0], cols, cell[1]).sum((2, 4)).permute(1, 2, 0)[..., None]
        whole = WordAttention.scores_from_word_maps(maps, self.trace.target(None))
        return sums.numpy(), whole
