r"""
Concept attention (ConceptAttention, Helbling et al., 2025) recorded while a DiT pipeline (SD3, Flux) runs.

Concept tokens (the prompt's words, each encoded on its own, and any concepts the user names) are carried through the
dual-stream blocks as a second text stream: at each block the block itself is called on [concepts, image] with the
text-stream weights (so every attention backend and processor works), the concepts attend to the image tokens and to
one another, and the image never attends to them (that call's image output is discarded; the pipeline's own call is
untouched, so the image stays bit-identical to `pipe(...)`'s). The map of a concept is the dot product of its
attention output with each image token's attention output (both before the output projection), averaged over the
blocks and the recorded steps, then a softmax across concepts at each image token.
"""

from typing import Iterable, List, Optional, Tuple

import torch

from ..checks import int_list
from ..families import TransformerFamily
from .attention import query_grid
from .maps import ConceptMaps
from .scoped import ScopedHooks, call_arguments
from .steps import StepCounter


class ConceptAttentionRecorder(ScopedHooks):
    r"""
    Records concept-attention maps of a transformer's dual-stream blocks (located by the family's `concept_blocks`)
    while the pipeline runs; see the module's docstring. Use it as a context manager; `.maps` gives the
    [`ConceptMaps`].

    Args:
        pipe: The pipeline.
        family (`TransformerFamily`): Its family.
        concepts (`List[str]`): The concepts' names.
        concept_states (`torch.Tensor`): (concepts, features): each concept's text-encoder states, in the space of
            the transformer's `encoder_hidden_states` (before the family's `text_embedder`).
        steps (`Iterable[int]`, *optional*): Denoiser calls to record (negative: from the end); all by default.
        counter (`StepCounter`, *optional*): The explainer's shared call counter.
        softmax (`bool`, *optional*, defaults to `True`): A softmax across the concepts at each image token (the
            published method); `False`: the dot products themselves, less their least value over the concepts and
            image tokens.
    """

    def __init__(
        self,
        pipe,
        family: TransformerFamily,
        concepts: List[str],
        concept_states: torch.Tensor,
        steps: Optional[Iterable[int]] = None,
        counter: Optional[StepCounter] = None,
        softmax: bool = True,
    ):
        super().__init__()
        self.softmax = softmax
        self.pipe = pipe
        self.family = family
        self.transformer = family.denoiser(pipe)
        self.concepts = list(concepts)
        self.concept_states = concept_states
        self.steps = None if steps is None else int_list(steps, "steps")
        self._own_counter = counter is None
        self.counter = counter or StepCounter(pipe, self.transformer, family.calls_per_step(pipe))
        self._reset()

    def _reset(self) -> None:
        self._recording = False
        self._current_call = -1
        self._in_concept_call = False
        self._rows: Optional[slice] = None
        self._grid: Optional[Tuple[int, int]] = None
        self._frames: Optional[int] = None
        self._concepts: Optional[torch.Tensor] = None
        self._image_output: Optional[torch.Tensor] = None
        self._concept_output: Optional[torch.Tensor] = None
        self._sum: Optional[torch.Tensor] = None
        self._layers_this_call = 0
        self._step_sums: List[torch.Tensor] = []
        self._recorded_steps: List[int] = []
        self._layer_names: List[str] = []
        self._maps: Optional[ConceptMaps] = None

    # -- scope ----------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        self._reset()
        blocks = self.family.concept_blocks(self.transformer)
        if not blocks:
            raise ValueError("This transformer has no dual-stream block to carry concept tokens through.")
        for name, block in blocks:
            image_projection, text_projection = self.family.attention_output_projections(block)
            self.hook_forward_pre(image_projection, self._capture_image)
            self.hook_forward_pre(text_projection, self._capture_concepts)
            self.hook_forward(block, self._block_hook)
            self._layer_names.append(name)
        if self._own_counter:
            self.counter.__enter__()
        self.hook_forward_pre(self.transformer, self._pre_hook)

    def _remove(self) -> None:
        if self._own_counter and self.counter.active:
            self.counter.__exit__(None, None, None)
        self._finish_call()

    # -- recording ------------------------------------------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        if self.counter.is_recomputing:
            return None
        self._finish_call()
        index = self.counter.current
        total = self.counter.total or 0
        wanted = None if self.steps is None else {s + total if s < 0 else s for s in self.steps}
        prompt_call = self.family.is_prompt_call(self.pipe, index, self.counter.calls_per_step)
        self._recording = prompt_call and (wanted is None or index in wanted)
        if not self._recording:
            return None
        self._grid = self.family.attention_grid(args, kwargs)
        self._frames = self.family.attention_frames(args, kwargs)
        sample = self.family.read_sample(args, kwargs)
        self._rows = self.family.positive_rows(self.pipe, int(sample.shape[0]))
        images = len(range(*self._rows.indices(int(sample.shape[0]))))
        with torch.no_grad():
            states = self.concept_states.to(device=sample.device)
            concepts = self.family.concept_embeddings(self.transformer, states, args, kwargs)
            self._concepts = concepts.unsqueeze(0).expand(images, -1, -1)
        self._current_call = index
        return None

    def _capture_image(self, module, args, kwargs):
        if self._recording and not self._in_concept_call and not self.counter.is_recomputing:
            self._image_output = args[0].detach()
        return None

    def _capture_concepts(self, module, args, kwargs):
        if self._in_concept_call:
            self._concept_output = args[0].detach()
        return None

    def _block_hook(self, module, args, kwargs, output):
        if not self._recording or self._in_concept_call or self.counter.is_recomputing:
            return None
        arguments = call_arguments(module, args, kwargs)
        concept_arguments = self.family.concept_block_arguments(arguments, self._concepts, self._rows)
        self._in_concept_call = True
        try:
            # The block's own text stream on the concepts: neither the layer's output nor any other recorder sees it.
            with torch.no_grad(), self.counter.recomputing():
                concepts = self.family.concept_stream(module(**concept_arguments))
        finally:
            self._in_concept_call = False
        image = self._image_output[self._rows].float()  # (images, image tokens, heads x head_dim)
        scores = torch.einsum("bcd,bnd->bcn", self._concept_output.float(), image)
        self._sum = scores if self._sum is None else self._sum + scores
        self._layers_this_call += 1
        self._concepts = concepts
        self._image_output = self._concept_output = None
        self._maps = None
        return None

    def _finish_call(self) -> None:
        if self._layers_this_call:
            self._step_sums.append(self._sum / self._layers_this_call)
            self._recorded_steps.append(self._current_call)
        self._sum, self._layers_this_call, self._concepts, self._recording = None, 0, None, False

    # -- result ---------------------------------------------------------------------------------------------------
    def result(self) -> ConceptMaps:
        r"""The maps, as a run's recording."""
        return self.maps

    @property
    def maps(self) -> ConceptMaps:
        r"""The [`ConceptMaps`] of the calls recorded so far."""
        if self._maps is not None:
            return self._maps
        self._finish_call()
        if not self._recorded_steps:
            raise RuntimeError("No step was recorded: run the pipeline inside the block (and check `steps`).")
        scores = torch.stack(self._step_sums).mean(0)  # (images, concepts, image tokens)
        generated = self._grid[0] * self._grid[1]
        if scores.shape[-1] > generated:  # a reference image's tokens after the generated ones (Flux Kontext)
            scores = scores[..., :generated]
        height, width = query_grid(scores.shape[-1], self._grid)
        if self.softmax:
            scores = scores.softmax(dim=1)
        else:  # each concept's own similarity, shifted so that the least similar pixel of any concept is 0
            scores = scores - scores.amin(dim=(1, 2), keepdim=True)
        grid = scores.reshape(scores.shape[0], scores.shape[1], height, width)
        # As the attention maps are upsampled: a video's latent frames each to a frame, shown on the frames made of it.
        size = self.family.attention_image_size(self.pipe, self._grid, self._frames)
        maps = self.family.upsample_attention(self.pipe, grid, size, self._frames)
        cell_size = self.family.attention_grid_scale(self.pipe) * self._grid[1] / width
        self._maps = ConceptMaps(
            self.concepts, maps.cpu(), list(self._recorded_steps), list(self._layer_names), cell_size=cell_size
        )
        return self._maps
