r"""
Cross-attention maps of a UNet, recorded while the pipeline runs (DAAM-style): the recording processor and recorder.

Aggregation (all linear, so the order of the sums does not matter): the attention probabilities of a layer are
averaged over its heads, reshaped to the layer's grid (the latent grid downsampled by 2^k), upsampled bilinearly
(`align_corners=False`) to the image size, then averaged over the recorded layers and over the recorded steps.
Every map therefore stays a distribution over tokens at each pixel (`maps.maps.sum(1) == 1`), and the mean of the
per-step maps equals the aggregate. Only running sums at each layer's own resolution are kept (plus one map per step
with `keep_per_step=True`); upsampling happens once, when the maps are built.

The UNet output is bit-identical to the pipeline's own: the recording processor computes the layer output exactly as
the processor it replaces (`AttnProcessor2_0`'s scaled dot-product attention, or `AttnProcessor`'s explicit softmax)
from the same query, key and value tensors, and computes the probabilities on the side with `AttnProcessor`'s math
(`Attention.get_attention_scores`), detached from any autograd graph.
"""

import dataclasses
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ..checks import int_list, positive_int
from ..families import PipelineFamily
from .maps import AttentionMapsData
from .run import Recording, RunPlan
from .scoped import ScopedHooks, call_arguments
from .steps import StepCounter

_PROCESSOR_SUFFIX = ".processor"


def query_grid(query_length: int, latent_size: Tuple[int, int]) -> Tuple[int, int]:
    r"""The (height, width) grid of an attention layer's `query_length` image queries: the latent grid or one of its
    downsamplings (a UNet's lower levels, a DiT's patches)."""
    # The UNet halves its grid with stride-2 convolutions (padding 1): ceil(h / 2) at each level.
    height, width = latent_size
    while True:
        if height * width == query_length:
            return height, width
        if height == 1 and width == 1:
            break
        height, width = (height + 1) // 2, (width + 1) // 2
    raise RuntimeError(
        f"A cross-attention layer has {query_length} queries, which matches no downsampling of the latent grid "
        f"{tuple(latent_size)}."
    )


# Processors that compute the default attention math (in slices, with fused projections or LoRA-scaled layers): maps
# computed beside them are exactly theirs.
_SAME_MATH_PROCESSORS = {
    "SlicedAttnProcessor",
    "FusedAttnProcessor2_0",
    "AttnProcessor2_0",
    "AttnProcessor",
    "LoRAAttnProcessor2_0",
    "LoRAAttnProcessor",
    "XFormersAttnProcessor",
    "SanaAttnProcessor2_0",
}


@torch.no_grad()
def cross_attention_probabilities(
    attn: Attention,
    hidden_states: torch.Tensor,
    context: Optional[torch.Tensor],
    attention_mask,
    rows: slice,
    heads: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    r"""
    Head-averaged cross-attention probabilities (images, queries, tokens) of one layer for the batch rows `rows`,
    computed beside it with `AttnProcessor`'s math from the layer's own projections (`to_q`, `to_k`, their LoRA
    layers included), whatever processor computes the layer's output; averaged over `heads` only, where given.
    """
    hidden_states = hidden_states.detach()[rows]
    batch = hidden_states.shape[0]
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if context is None else context.detach()[rows]
    if attn.norm_cross and context is not hidden_states:
        context = attn.norm_encoder_hidden_states(context)
    query = _qk_normed(attn, attn.norm_q, attn.to_q(hidden_states))
    key = _qk_normed(attn, attn.norm_k, attn.to_k(context))
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask.detach()[rows], key.shape[1], batch)
    probs = attn.get_attention_scores(query, key, mask)
    return mean_over_heads(probs.view(batch, attn.heads, *probs.shape[1:]).float(), heads)


def _qk_normed(attn: Attention, norm, projected: torch.Tensor) -> torch.Tensor:
    # A layer's query or key (batch, tokens, heads x head_dim), its norm applied (over each head, or over all heads
    # together where the norm is that wide: Sana's "rms_norm_across_heads"), split into heads (batch x heads, ...).
    width = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    width = int(width[-1]) if isinstance(width, (tuple, list, torch.Size)) else width
    if norm is not None and width == projected.shape[-1]:
        return attn.head_to_batch_dim(norm(projected))
    split = attn.head_to_batch_dim(projected)
    return split if norm is None else norm(split)


def mean_over_heads(probs: torch.Tensor, heads: Optional[Sequence[int]]) -> torch.Tensor:
    r"""The mean over dimension 1 (heads) of `probs`, over `heads` only where given."""
    if heads is None:
        return probs.mean(dim=1)
    count = probs.shape[1]
    if any(h >= count or h < -count for h in heads):
        raise ValueError(f"`heads` {list(heads)} name a head this layer has not: it has {count} (0 to {count - 1}).")
    return probs[:, list(heads)].mean(dim=1)


class CrossAttentionRecordingProcessor:
    r"""
    Attention processor of one cross-attention layer that computes the layer's output exactly as `AttnProcessor2_0`
    (with `sdpa=True`) or `AttnProcessor` (with `sdpa=False`) and hands the head-averaged attention probabilities to
    its recorder. Replacing the default processors (rather than computing beside them, as the side hook does for any
    other processor) reuses the layer's own query and key: the maps cost no second projection.

    Args:
        recorder (`CrossAttentionRecorder`): Where the probabilities go.
        name (`str`): The layer's name in `unet.attn_processors`.
        sdpa (`bool`, *optional*, defaults to `True`): Compute the output with scaled dot-product attention.
    """

    def __init__(self, recorder: "CrossAttentionRecorder", name: str, sdpa: bool = True):
        self.recorder = recorder
        self.name = name
        self.sdpa = sdpa

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        # Copied from diffusers.models.attention_processor.AttnProcessor2_0.__call__ (and, for `sdpa=False`,
        # AttnProcessor.__call__), with the probabilities handed to the recorder where `recording` is true.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            if self.sdpa:
                attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        recording = self.recorder.recording_now()
        if self.sdpa:
            # As `AttnProcessor2_0`.
            head_dim = key.shape[-1] // attn.heads
            query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            if recording:
                self._record(attn, query, key, attention_mask, batch_size)
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
            hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states.to(query.dtype)
        else:
            # As `AttnProcessor`.
            query = attn.head_to_batch_dim(query)
            key = attn.head_to_batch_dim(key)
            value = attn.head_to_batch_dim(value)
            attention_probs = attn.get_attention_scores(query, key, attention_mask)
            if recording:
                probs = attention_probs.detach().view(batch_size, attn.heads, *attention_probs.shape[1:])
                self.recorder.add(self.name, probs[self.recorder.kept_rows(batch_size)].float().mean(dim=1))
            hidden_states = torch.bmm(attention_probs, value)
            hidden_states = attn.batch_to_head_dim(hidden_states)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    @torch.no_grad()
    def _record(self, attn: Attention, query, key, attention_mask, batch_size: int) -> None:
        # query/key: (batch, heads, length, head_dim). Only the kept rows (the conditional half with CFG) are
        # computed, with `AttnProcessor`'s math on the (batch * heads, length, head_dim) layout.
        rows = self.recorder.kept_rows(batch_size)
        query, key = query.detach()[rows], key.detach()[rows]
        kept, heads = query.shape[0], query.shape[1]
        mask = None
        if attention_mask is not None:
            mask = attention_mask.detach()[rows]
            mask = mask.expand(kept, heads, query.shape[2], key.shape[2]).reshape(kept * heads, *mask.shape[-2:])
        probs = attn.get_attention_scores(
            query.reshape(kept * heads, query.shape[2], query.shape[3]),
            key.reshape(kept * heads, key.shape[2], key.shape[3]),
            mask,
        )
        per_head = probs.view(kept, heads, *probs.shape[1:]).float()
        self.recorder.add(self.name, mean_over_heads(per_head, self.recorder.heads))


class CrossAttentionRecorder(ScopedHooks):
    r"""
    Records the cross-attention probabilities of a pipeline's UNet while the pipeline runs; see
    [`record_cross_attention`]. Use it as a context manager; after (or within) the block, `.maps` gives the maps, of
    `maps_class` ([`AttentionMapsData`] by default; `record_cross_attention` gives them their pictures).

    On entering, the UNet's processors (`unet.attn_processors`) are saved and the family's cross-attention layers get
    a [`CrossAttentionRecordingProcessor`]; on exiting, even after an exception, exactly the saved processors are set
    back. Denoiser calls are counted by `counter` (the explainer's shared one) or by a counter of the recorder's own.
    Set `enabled = False` to stop recording without leaving the block.
    """

    def __init__(
        self,
        pipe,
        steps: Optional[Iterable[int]] = None,
        keep_per_step: bool = False,
        layers: Optional[Iterable[str]] = None,
        family: Optional[PipelineFamily] = None,
        counter: Optional[StepCounter] = None,
        maps_class: type = AttentionMapsData,
        heads: Optional[Iterable[int]] = None,
        keep_per_layer: bool = False,
        max_record_bytes: int = 2 * 1024**3,
    ):
        super().__init__()
        if family is None:
            raise TypeError("Pass the pipeline's `family` (or use `record_cross_attention(pipe)`).")
        self.pipe = pipe
        self.maps_class = maps_class
        self.family = family
        self.unet = self.family.denoiser(pipe)
        self.steps = None if steps is None else int_list(steps, "steps")
        self.keep_per_step = keep_per_step
        self.layer_filter = None if layers is None else {self._layer_key(name) for name in layers}
        self.heads = None if heads is None else _head_list(heads)
        self.keep_per_layer = keep_per_layer
        positive_int(max_record_bytes, "max_record_bytes", allow_none=False)
        self.max_record_bytes = int(max_record_bytes)
        self.enabled = True
        self._own_counter = counter is None
        self.counter = counter or StepCounter(pipe, self.unet, self.family.calls_per_step(pipe))
        guided = {"true_cfg_scale": 2.0, "negative_prompt": "", "negative_prompt_embeds": None}
        self._separate_negative_calls = self.family.calls_per_step(pipe, guided) > 1
        self._saved: Optional[Dict] = None
        self._reset()

    @staticmethod
    def _layer_key(name: str) -> str:
        return name if name.endswith(_PROCESSOR_SUFFIX) else name + _PROCESSOR_SUFFIX

    def _reset(self) -> None:
        self._step_set: Optional[Set[int]] = None
        self._current_call: Optional[int] = None
        self._current_recorded = False
        self._latent_size: Optional[Tuple[int, int]] = None
        self._frames: Optional[int] = None
        self._rows: Optional[slice] = None
        self._text_length = 0
        self._text_columns: Optional[torch.Tensor] = None
        self._current: Dict[Tuple[int, int], torch.Tensor] = {}
        self._current_layers = 0
        self._total: Dict[Tuple[int, int], torch.Tensor] = {}
        self._per_step: List[Dict[Tuple[int, int], torch.Tensor]] = []
        self._layer_grids: Dict[str, torch.Tensor] = {}
        self._per_layer: List[Dict[str, torch.Tensor]] = []
        self._recorded_steps: List[int] = []
        self._layer_names: List[str] = []
        self._maps: Optional[AttentionMapsData] = None
        self._last_timestep: Optional[torch.Tensor] = None

    @property
    def calls(self) -> int:
        return self.counter.calls

    # -- scope ----------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        self._reset()
        saved = self.unet.attn_processors
        processors = {}
        kinds: Set[str] = set()
        for name, processor in saved.items():
            module = self.unet.get_submodule(name[: -len(_PROCESSOR_SUFFIX)])
            selected = self.layer_filter is None or name in self.layer_filter
            if not (getattr(module, "is_cross_attention", False) and selected):
                processors[name] = processor
                continue
            if type(processor) is AttnProcessor2_0:
                processors[name] = CrossAttentionRecordingProcessor(self, name, sdpa=True)
            elif type(processor) is AttnProcessor:
                processors[name] = CrossAttentionRecordingProcessor(self, name, sdpa=False)
            else:
                # Any other processor (sliced, fused, LoRA-scaled, custom) stays; the probabilities are computed
                # beside the layer from its own projections, the processor's output untouched.
                processors[name] = processor
                self.hook_forward_pre(module, self._side_hook(name))
                if type(processor).__name__ not in _SAME_MATH_PROCESSORS:
                    kinds.add(type(processor).__name__)
            self._layer_names.append(name)
        if self.layer_filter is not None:
            unknown = self.layer_filter - set(self._layer_names)
            if unknown:
                raise ValueError(f"Not cross-attention layers of this UNet: {sorted(unknown)}.")
        if not self._layer_names:
            raise ValueError("This UNet has no cross-attention layer to record.")
        if kinds:
            warnings.warn(
                f"Cross-attention maps are computed beside layers using {', '.join(sorted(kinds))} with the default "
                "attention math (their outputs are unchanged); maps may differ from what those processors attend.",
                stacklevel=4,
            )
        if self._own_counter:
            self.counter.__enter__()
        self._saved = saved
        self.unet.set_attn_processor(dict(processors))
        self.hook_forward_pre(self.unet, self._pre_hook)

    def _remove(self) -> None:
        if self._own_counter and self.counter.active:
            self.counter.__exit__(None, None, None)
        if self._saved is not None:
            # `set_attn_processor` pops from the dict it gets: hand it a copy.
            self.unet.set_attn_processor(dict(self._saved))
            self._saved = None
        self._finish_step()

    def _install_beside(self, layers, make_hook, kind: str) -> None:
        # Forward pre-hooks beside `layers` ((name, module) pairs, their processors untouched), the denoiser call's
        # own pre-hook and the counter: what every recorder that reads its layers' inputs installs.
        for name, module in layers:
            key = self._layer_key(name)
            if self.layer_filter is not None and key not in self.layer_filter:
                continue
            self.hook_forward_pre(module, make_hook(key))
            self._layer_names.append(key)
        if self.layer_filter is not None:
            unknown = self.layer_filter - set(self._layer_names)
            if unknown:
                raise ValueError(f"Not {kind} layers of this denoiser: {sorted(unknown)}.")
        if not self._layer_names:
            raise ValueError(f"This denoiser has no {kind} layer to record.")
        if self._own_counter:
            self.counter.__enter__()
        self.hook_forward_pre(self.unet, self._pre_hook)

    def _leave_counter(self) -> None:
        if self._own_counter and self.counter.active:
            self.counter.__exit__(None, None, None)

    def _side_hook(self, name: str):
        def hook(module, args, kwargs):
            if not self.recording_now():
                return None
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            rows = self.kept_rows(int(hidden_states.shape[0]))
            self.add(name, cross_attention_probabilities(module, hidden_states, context, mask, rows, self.heads))
            return None

        return hook

    # -- recording ------------------------------------------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        if not self.enabled or self.counter.is_recomputing:
            return None
        self._finish_step()
        index = self.counter.current
        if self._step_set is None:
            total = self.counter.total or 0
            self._step_set = set() if self.steps is None else {s + total if s < 0 else s for s in self.steps}
        sample = self.family.read_sample(args, kwargs)
        latent_size = self.family.attention_grid(args, kwargs)
        if self._latent_size is not None and latent_size != self._latent_size:
            raise RuntimeError(
                f"The latent size changed from {self._latent_size} to {latent_size} within one recording: record one "
                "pipeline call per `record_cross_attention` block."
            )
        self._latent_size = latent_size
        self._frames = self.family.attention_frames(args, kwargs)
        self._rows = self.family.positive_rows(self.pipe, int(sample.shape[0]))
        self._current_call = index
        prompt_call = self.family.is_prompt_call(self.pipe, index, self.counter.calls_per_step)
        if self._own_counter and self._separate_negative_calls:
            # Recording a call whose arguments it never saw (`record_cross_attention`), the recorder cannot know the
            # denoiser calls per step: in a family that may call the denoiser a second time per step for the negative
            # prompt (Flux's true CFG), a call at the timestep of the call before it is that second call.
            timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.detach().flatten()[:1].float().cpu()
                repeat = self._last_timestep is not None and torch.equal(timestep, self._last_timestep)
                prompt_call = prompt_call and not repeat
                self._last_timestep = timestep
        self._current_recorded = prompt_call and (self.steps is None or index in self._step_set)
        self._text_length = int(
            self.family.read_conditioning(self.pipe, args, kwargs)["encoder_hidden_states"].shape[1]
        )
        if self._current_recorded:
            self._text_columns = self.family.text_key_columns(self.pipe, args, kwargs)
        return None

    def recording_now(self) -> bool:
        return self.enabled and self._current_recorded and not self.counter.is_recomputing

    def kept_rows(self, batch_size: int) -> slice:
        # The prompt rows of the denoiser's batch (the positive half with classifier-free guidance).
        return self._rows if self._rows is not None else slice(0, batch_size)

    def layer_text_length(self, text: Optional[torch.Tensor]) -> int:
        r"""The length of the text a joint-attention layer reads beside the image (`text`, its `encoder_hidden_states`,
        `None` in a single-stream layer): the call's text, unless the family lays it out anew (`text_key_columns`;
        HunyuanVideo 1.5, which has dual-stream layers only)."""
        return int(text.shape[1]) if self._text_columns is not None and text is not None else self._text_length

    def layer_text_columns(self, rows: slice) -> Optional[torch.Tensor]:
        r"""Each of the call's text positions' place in the layers' text, at the kept `rows` (`None`: in order)."""
        return None if self._text_columns is None else self._text_columns[rows]

    def add(self, name: str, probs: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> None:
        # probs: (images, queries, tokens), averaged over heads; the queries on the latent grid (or on `grid`).
        height, width = query_grid(probs.shape[1], self._latent_size) if grid is None else grid
        grid = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], height, width)
        key = (height, width)
        if key in self._current:
            self._current[key] += grid
        else:
            self._current[key] = grid.clone()
        if self.keep_per_layer:
            self._layer_grids[name] = grid.detach().float().cpu().clone()
        self._current_layers += 1
        self._maps = None

    def _finish_step(self) -> None:
        if self._current_layers == 0:
            self._current = {}
            return
        step = {key: value / self._current_layers for key, value in self._current.items()}
        for key, value in step.items():
            if key in self._total:
                self._total[key] += value
            else:
                self._total[key] = value.clone()
        if self.keep_per_step:
            self._per_step.append(step)
        if self.keep_per_layer:
            self._keep_layer_grids()
        self._recorded_steps.append(self._current_call)
        self._current = {}
        self._current_layers = 0

    def _keep_layer_grids(self) -> None:
        # One step's per-layer grids; at the first, what the whole recording would hold is checked against the bound.
        if not self._per_layer:
            step_bytes = sum(grid.numel() * grid.element_size() for grid in self._layer_grids.values())
            total = self.counter.total or 0
            planned = len(self._step_set or ()) if self.steps is not None else total // self.counter.calls_per_step
            if step_bytes * max(planned, 1) > self.max_record_bytes:
                raise ValueError(
                    f"Keeping every layer's maps would hold about {step_bytes * max(planned, 1) / 1024**3:.2f} GiB "
                    f"({len(self._layer_grids)} layers x {max(planned, 1)} steps), over `max_record_bytes` "
                    f"({self.max_record_bytes / 1024**3:.2f} GiB): choose `layers=`, `steps=` or `heads=`, or raise "
                    "`max_record_bytes`."
                )
        self._per_layer.append(self._layer_grids)
        self._layer_grids = {}

    # -- result ---------------------------------------------------------------------------------------------------
    def image_size(self) -> Tuple[int, int]:
        r"""The image size `(height, width)`: the latent size times the VAE's scale factor."""
        if self._latent_size is None:
            raise RuntimeError("Nothing was recorded: run the pipeline inside the block.")
        return self.family.attention_image_size(self.pipe, self._latent_size, self._frames)

    def _upsample(self, sums: Dict[Tuple[int, int], torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        result = None
        for grid in sums.values():
            up = self.family.upsample_attention(self.pipe, grid, size, self._frames)
            result = up if result is None else result + up
        return result

    def result(self) -> AttentionMapsData:
        r"""The maps, as a run's recording."""
        return self.maps

    @property
    def maps(self) -> AttentionMapsData:
        r"""The maps of the steps recorded so far (built once, then cached), of `maps_class`."""
        if self._maps is not None:
            return self._maps
        self._finish_step()
        if not self._recorded_steps:
            raise RuntimeError("No step was recorded: run the pipeline inside the block (and check `steps`).")
        size = self.image_size()
        maps = (self._upsample(self._total, size) / len(self._recorded_steps)).cpu()
        per_step = None
        if self.keep_per_step:
            per_step = torch.stack([self._upsample(step, size).cpu() for step in self._per_step])
        finest = max(height for height, _ in self._total)
        cell_size = self.family.attention_grid_scale(self.pipe) * self._latent_size[0] / finest
        self._maps = self._make_maps(maps, per_step, cell_size=cell_size)
        if self.keep_per_layer:
            names = list(self._per_layer[0]) if self._per_layer else []
            tokens = self._maps.num_tokens  # the joint recorder's extra column (the left-out share) dropped
            per_layer = {name: torch.stack([step[name][:, :tokens] for step in self._per_layer]) for name in names}
            self._maps = dataclasses.replace(self._maps, per_layer=per_layer)
        return self._maps

    def _make_maps(self, maps: torch.Tensor, per_step: Optional[torch.Tensor], cell_size: float) -> AttentionMapsData:
        return self.maps_class(
            maps=maps,
            per_step=per_step,
            steps=list(self._recorded_steps),
            layers=list(self._layer_names),
            cell_size=cell_size,
        )


def joint_queries_keys(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: Optional[torch.Tensor],
    image_rotary_emb,
    text_first: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    r"""
    The queries and keys (batch, tokens, heads, head_dim) of a joint-attention layer's whole sequence, from its own
    projections, norms and rotary embedding (see [`joint_attention_probabilities`]), and the head size.
    """
    if hasattr(attn, "img_qkv_proj"):
        return _prx_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
    if _is_ltx_attention(attn):
        return _ltx_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
    if getattr(attn, "is_cross_attention", False) and not hasattr(attn, "add_q_proj"):
        return _cross_queries_keys(attn, hidden_states, encoder_hidden_states)
    if hasattr(attn, "cross_attention_dim_head"):  # Wan's self-attention over the video's tokens
        return _wan_self_queries_keys(attn, hidden_states, image_rotary_emb)
    heads = int(attn.heads)
    fused = getattr(attn, "fused_projections", False)
    shared = getattr(attn, "add_q_proj", None) is None and getattr(attn, "to_added_qkv", None) is None
    if encoder_hidden_states is not None and shared:
        # One set of projections for the text and the image (CogVideoX): the sequence joined first, as its
        # processor joins it.
        parts = [encoder_hidden_states, hidden_states] if text_first else [hidden_states, encoder_hidden_states]
        hidden_states, encoder_hidden_states = torch.cat(parts, dim=1), None
    if hasattr(attn, "to_qkv_mlp_proj"):  # Flux 2's single-stream layers: queries, keys, values and the MLP's input
        qkv = attn.to_qkv_mlp_proj(hidden_states)[..., : 3 * int(attn.inner_dim)]
        query, key, _ = qkv.chunk(3, dim=-1)
    elif fused:
        query, key, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
    head_dim = key.shape[-1] // heads

    def split(x, norm):
        x = x.unflatten(-1, (heads, head_dim))  # (batch, tokens, heads, head_dim)
        return x if norm is None else norm(x)

    query, key = split(query, getattr(attn, "norm_q", None)), split(key, getattr(attn, "norm_k", None))
    if encoder_hidden_states is not None:
        if fused and hasattr(attn, "to_added_qkv"):
            text_query, text_key, _ = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            text_query, text_key = attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states)
        text_query = split(text_query, getattr(attn, "norm_added_q", None))
        text_key = split(text_key, getattr(attn, "norm_added_k", None))
        pairs = ((text_query, query), (text_key, key)) if text_first else ((query, text_query), (key, text_key))
        query, key = torch.cat(pairs[0], dim=1), torch.cat(pairs[1], dim=1)
    if image_rotary_emb is None:
        return query, key, head_dim
    if isinstance(image_rotary_emb, torch.Tensor) and image_rotary_emb.is_complex():
        # Z-Image's: complex frequencies of each row's every position, (batch, tokens, head_dim / 2).
        def rotate(x):
            pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
            return torch.view_as_real(pairs * image_rotary_emb.unsqueeze(2)).flatten(3).type_as(x)

        return rotate(query), rotate(key), head_dim
    if isinstance(image_rotary_emb, (tuple, list)) and image_rotary_emb[0].is_complex():
        # Qwen-Image's: complex frequencies of the image's and of the text's positions, each stream rotated apart.
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        image_freqs, text_freqs = image_rotary_emb
        freqs = torch.cat([text_freqs, image_freqs] if text_first else [image_freqs, text_freqs])
        query = apply_rotary_emb_qwen(query, freqs, use_real=False)
        key = apply_rotary_emb_qwen(key, freqs, use_real=False)
        return query, key, head_dim
    from diffusers.models.embeddings import apply_rotary_emb

    rotated = int(image_rotary_emb[0].shape[0]) if isinstance(image_rotary_emb, (tuple, list)) else query.shape[1]
    if rotated < query.shape[1]:
        # A rotary embedding of the image's positions alone (CogVideoX's): the image's queries and keys rotated, the
        # text's left as they are.
        image = slice(query.shape[1] - rotated, None) if text_first else slice(0, rotated)
        query, key = query.clone(), key.clone()
        query[:, image] = apply_rotary_emb(query[:, image], image_rotary_emb, sequence_dim=1)
        key[:, image] = apply_rotary_emb(key[:, image], image_rotary_emb, sequence_dim=1)
        return query, key, head_dim
    query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
    key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, head_dim


def _prx_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    # PRX's layers: the image's queries over [text, image] keys (the text has keys and values, no queries: its rows
    # of the queries are zeros, never read), each head's query and key RMS-normed, the image's rotated.
    from diffusers.models.transformers.transformer_prx import apply_rope

    heads, head_dim = int(attn.heads), int(attn.head_dim)
    query, key, _ = attn.img_qkv_proj(hidden_states).unflatten(-1, (3, heads, head_dim)).unbind(2)
    query, key = attn.norm_q(query), attn.norm_k(key)  # (batch, tokens, heads, head_dim)
    if image_rotary_emb is not None:
        # (batch, 1, tokens, head_dim / 2, 2, 2), alike for every row (the image's positions): one row of it, moved to
        # the tokens-first layout (the recorders pass some rows of the batch only).
        rotary = image_rotary_emb[:1, 0, :, None]
        query, key = apply_rope(query, rotary), apply_rope(key, rotary)
    text_key = attn.norm_added_k(attn.txt_kv_proj(encoder_hidden_states).unflatten(-1, (2, heads, head_dim))[:, :, 0])
    query = torch.cat([torch.zeros_like(text_key), query], dim=1)
    return query, torch.cat([text_key, key], dim=1), head_dim


def _cross_queries_keys(attn, hidden_states, encoder_hidden_states):
    # A transformer's cross-attention layer (Wan's `attn2`): the image's queries over the text's keys alone, each
    # projection normed over all heads together ("rms_norm_across_heads") as its processor norms it. Laid out as a
    # joint sequence [text, image] whose text rows have no queries (zeros, never read) and whose keys are the text's.
    heads = int(attn.heads)
    if getattr(attn, "add_k_proj", None) is not None:
        # Wan image-to-video: the image encoder's tokens first, the text's last 512 (the processor's constant); the
        # image's tokens are a separate attention, the text's keys are these.
        encoder_hidden_states = encoder_hidden_states[:, encoder_hidden_states.shape[1] - 512 :]
    query = attn.to_q(hidden_states)
    if getattr(attn, "fused_projections", False):
        key = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)[0]
    else:
        key = attn.to_k(encoder_hidden_states)
    query, key = attn.norm_q(query), attn.norm_k(key)
    head_dim = key.shape[-1] // heads
    query, key = query.unflatten(-1, (heads, head_dim)), key.unflatten(-1, (heads, head_dim))
    return torch.cat([torch.zeros_like(key), query], dim=1), key, head_dim


def _is_ltx_attention(attn) -> bool:
    try:
        from diffusers.models.transformers.transformer_ltx import LTXAttention
    except ImportError:  # an older diffusers
        return False
    return isinstance(attn, LTXAttention)


def _ltx_queries_keys(attn, hidden_states, encoder_hidden_states, rotary):
    # LTX-Video's layers: `attn2` is a cross-attention over the text alone (as Wan's); `attn1` the video's tokens over
    # one another, its queries and keys normed over all heads together, then rotated over all heads at once by the
    # video's (frame, row, column) embedding ((cos, sin), each (batch, tokens, heads x head_dim), alike for every row).
    if encoder_hidden_states is not None:
        return _cross_queries_keys(attn, hidden_states, encoder_hidden_states)
    from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

    heads = int(attn.heads)
    query, key = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(hidden_states))
    if rotary is not None:
        freqs = (rotary[0][:1], rotary[1][:1])
        query, key = apply_rotary_emb(query, freqs), apply_rotary_emb(key, freqs)
    query, key = query.unflatten(-1, (heads, -1)), key.unflatten(-1, (heads, -1))
    return query, key, int(query.shape[-1])


def _wan_self_queries_keys(attn, hidden_states, rotary_emb):
    # Wan's self-attention (`attn1`): queries and keys normed over all heads together, then each head's rotated by the
    # video's (frame, row, column) rotary embedding as its processor rotates them ((cos, sin) of (1, tokens, 1, dim)).
    heads = int(attn.heads)
    if getattr(attn, "fused_projections", False):
        query, key, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
    query, key = attn.norm_q(query).unflatten(-1, (heads, -1)), attn.norm_k(key).unflatten(-1, (heads, -1))
    if rotary_emb is not None:
        cos, sin = rotary_emb[0][..., 0::2], rotary_emb[1][..., 1::2]

        def rotate(x):
            first, second = x.unflatten(-1, (-1, 2)).unbind(-1)
            return torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1).flatten(-2).type_as(x)

        query, key = rotate(query), rotate(key)
    return query, key, int(query.shape[-1])


def layer_rotary(arguments: Dict[str, Any], rows: slice):
    r"""A joint-attention layer's rotary embedding from its call's arguments (`image_rotary_emb`, Z-Image's
    `freqs_cis` or Wan's `rotary_emb`), at the batch rows `rows` where it has a row per image (Z-Image's, PRX's)."""
    rotary = arguments.get("image_rotary_emb", arguments.get("freqs_cis", arguments.get("rotary_emb")))
    batch = int(arguments["hidden_states"].shape[0])
    if isinstance(rotary, torch.Tensor) and rotary.dim() >= 3 and rotary.shape[0] == batch:
        return rotary[rows]
    return rotary


def layer_mask(arguments: Dict[str, Any], text_first: bool = True) -> Optional[torch.Tensor]:
    r"""
    A joint-attention layer's mask over its whole sequence, from its call's arguments: its `attention_mask` (over every
    key), or a mask over the text alone (an `encoder_hidden_states_mask`, as Qwen-Image's layers get it, or an
    `attention_mask` of the text's length, as PRX's do) extended as their processors extend it, every image token
    kept: (batch, keys) bool.
    """
    mask = arguments.get("attention_mask")
    if mask is not None and mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask[:, None]  # (batch, 1, keys): one bias over the keys for every query (LTX-Video's text mask)
    text = arguments.get("encoder_hidden_states")
    text_mask = arguments.get("encoder_hidden_states_mask")
    if mask is not None and mask.dim() == 2 and text is not None and mask.shape[1] == text.shape[1]:
        text_mask = mask.bool()
    elif mask is not None or text_mask is None:
        return mask
    image = torch.ones(text_mask.shape[0], arguments["hidden_states"].shape[1], dtype=torch.bool)
    parts = [text_mask.bool(), image.to(text_mask.device)]
    return torch.cat(parts if text_first else parts[::-1], dim=1)


def joint_scores(
    attn: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    head_dim: int,
    queries,
    attention_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""
    The scaled scores (batch, heads, queries, all keys) of the joint sequence's positions `queries` (a slice or
    indices) against every key, with the layer's `attention_mask` ((batch, keys) or (batch, 1, queries or 1, keys))
    applied as its attention kernel applies it: a boolean mask keeps the keys it marks, a floating one is added.
    """
    scale = getattr(attn, "scale", None) or head_dim**-0.5
    scores = query[:, queries].transpose(1, 2).float() @ key.transpose(1, 2).float().transpose(-1, -2) * scale
    if attention_mask is None:
        return scores
    if attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
    else:
        mask = attention_mask[:, :, queries] if attention_mask.shape[2] > 1 else attention_mask
    return scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()


@torch.no_grad()
def joint_attention_probabilities(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: Optional[torch.Tensor],
    image_rotary_emb,
    text_length: int,
    text_first: bool = True,
    chunk: int = 256,
    content: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    heads: Optional[Sequence[int]] = None,
    layout: Optional[Tuple[slice, slice]] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""
    Image-query x text-key attention probabilities of one joint-attention layer (Flux's `FluxAttention`, SD3's joint
    `Attention`), averaged over heads: (batch, image tokens, text tokens), and with `content`, the share left out.

    Computed from the layer's own projections and norms, beside the layer (its processor, whatever it is or whatever
    attention backend it dispatches to, is not touched): queries and keys of the joint sequence ([text, image] for
    Flux, `text_first`; [image, text] for SD3), where a double-stream layer projects the text with its `add_*_proj`
    and a single-stream layer gets text and image already concatenated; the rotary embedding where the model has
    one; then, for `chunk` image queries at a time, a softmax over ALL keys (text and image), of which the text
    columns are kept. The maps of all text tokens therefore sum to the share of attention the text gets, not to 1.

    With `content` ((batch, text tokens) bool: the prompt's own tokens), the other text columns (attention sinks:
    padding, end and template tokens) are taken out of each head's softmax, as if they were not in the sequence: the
    image's own keys still compete with the prompt's, so a token's map says how much of each image token's attention
    goes to it rather than to the image or to the other words (an object's pixels look to their words, the
    background's mostly to the image); the sink columns are zero. The second result is the share of each image token's
    attention to text that went to the sinks (averaged over heads). Adding or removing sink columns leaves the first
    result unchanged. (Renormalising each head's attention over the prompt's tokens alone, the earlier rule, gave every
    background pixel a full distribution over the words: on the toy Flux it halved the maps' best-threshold mIoU,
    docs/methods.md.) A layer whose keys are the text's alone (a cross-attention) has no image keys: there the
    prompt's tokens' attention sums to 1.

    `attention_mask` is the layer's own (as its processor gets it: (batch, keys) or (batch, 1, queries, keys)), applied
    as the attention kernel applies it: a boolean mask keeps the keys it marks, a floating one is added to the scores
    (Chroma's 0/1 mask is floating: diffusers adds it). With `heads`, only those heads are averaged. `layout` (the
    image queries' and the text's positions in the sequence) is for a sequence laid out otherwise than [text, image]
    or [image, text] (Z-Image pads each part, see the family's `joint_layout`).
    """
    selected = heads
    query, key, head_dim = joint_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_first)
    total = query.shape[1]
    image = slice(text_length, total) if text_first else slice(0, total - text_length)
    text = slice(0, text_length) if text_first else slice(total - text_length, total)
    if layout is not None:
        image, text = layout
    parts, left_out = [], []
    # (batch, 1, 1, text): the text columns that are not the prompt's own tokens
    outside = None if content is None else ~content.to(key.device, torch.bool)[:, None, None, :]
    for start in range(image.start, image.stop, chunk):
        scores = joint_scores(attn, query, key, head_dim, slice(start, min(start + chunk, image.stop)), attention_mask)
        if outside is None:
            parts.append(mean_over_heads(scores.softmax(dim=-1)[..., text], selected))
            continue
        # A softmax over every key but the sinks (their logits never enter it), and the share the sinks took of the
        # text's attention: 1 - exp(logsumexp(content) - logsumexp(text)).
        text_scores = scores[..., text]
        content_scores = text_scores.masked_fill(outside, float("-inf"))
        without_sinks = scores.clone()
        without_sinks[..., text] = content_scores
        parts.append(mean_over_heads(without_sinks.softmax(dim=-1)[..., text].nan_to_num(0.0), selected))
        kept = (content_scores.logsumexp(-1) - text_scores.logsumexp(-1)).exp()
        left_out.append(mean_over_heads(1 - kept, selected))
    return torch.cat(parts, dim=1), (torch.cat(left_out, dim=1) if left_out else None)


class JointAttentionRecorder(CrossAttentionRecorder):
    r"""
    Records the image-query x text-key attention of a transformer's joint-attention layers (Flux's double- and
    single-stream blocks) while the pipeline runs, into the same [`AttentionMaps`] as [`CrossAttentionRecorder`]
    (token axis: the text tokens of `encoder_hidden_states`; image axis: the packed latent grid, upsampled). The
    family's `joint_attention` says where the text sits in the joint sequence.

    The layers' processors stay as they are: a forward pre-hook on each layer (located by the family) computes the
    probabilities beside it with [`joint_attention_probabilities`], accumulated per step at the grid's resolution
    (never every layer x step held). The transformer's output is therefore bit-identical to the pipeline's own.
    """

    def __init__(self, pipe, *, content_positions: Optional[Sequence[Sequence[int]]] = None, **options):
        super().__init__(pipe, **options)
        self.content_positions = None if content_positions is None else [list(p) for p in content_positions]
        self._content: Optional[torch.Tensor] = None
        self._with_share = False  # the recorded grids carry the left-out share as one more token column

    def _install(self) -> None:
        self._reset()
        self._content, self._with_share = None, False
        self._install_beside(self.family.attention_layers(self.unet), self._layer_hook, "joint-attention")

    def _remove(self) -> None:
        self._leave_counter()

    def _layer_hook(self, name: str):
        def hook(module, args, kwargs):
            if not self.recording_now():
                return None
            arguments = call_arguments(module, args, kwargs)  # by name: the layers' signatures differ (Flux 2's)
            hidden_states = arguments["hidden_states"]
            encoder_hidden_states = arguments.get("encoder_hidden_states")
            rows = self.kept_rows(int(hidden_states.shape[0]))
            rotary = layer_rotary(arguments, rows)
            mask = layer_mask(arguments, self.family.joint_attention.text_first)
            text_length = self.layer_text_length(encoder_hidden_states)
            layout = self.family.joint_layout(self.unet, int(hidden_states.shape[1]), text_length, self._latent_size)
            content = self._content_mask(len(range(*rows.indices(int(hidden_states.shape[0])))))
            columns = self.layer_text_columns(rows)
            if columns is not None and content is not None:
                # The call's sinks at their places in the layer's text; the layer's other text (HunyuanVideo 1.5's
                # ByT5 glyphs and image tokens) stays in each softmax, as the image's keys do.
                content = torch.ones(len(columns), text_length, dtype=torch.bool).scatter(1, columns, content)
            probs, left_out = joint_attention_probabilities(
                module,
                hidden_states.detach()[rows],
                None if encoder_hidden_states is None else encoder_hidden_states.detach()[rows],
                rotary,
                text_length,
                text_first=self.family.joint_attention.text_first,
                content=content,
                attention_mask=None if mask is None else mask.detach()[rows],
                heads=self.heads,
                layout=layout,
            )
            if columns is not None:  # back to the call's text positions
                probs = probs.gather(-1, columns[:, None, :].to(probs.device).expand(-1, probs.shape[1], -1))
            if left_out is not None:  # carried as one more token column, split off again in `maps`
                probs = torch.cat([probs, left_out[..., None].to(probs.dtype)], dim=-1)
                self._with_share = True
            self.add(name, probs)
            return None

        return hook

    def _content_mask(self, rows: int) -> Optional[torch.Tensor]:
        # (rows, text tokens): the prompt's own tokens of each image's prompt, where the family leaves sinks out.
        if self.content_positions is None or not self.family.joint_attention.sinks_left_out:
            return None
        if len(self.content_positions) != rows:
            raise RuntimeError(
                f"Content positions were given for {len(self.content_positions)} images, the call has {rows}."
            )
        if self._content is None or self._content.shape != (rows, self._text_length):
            mask = torch.zeros(rows, self._text_length, dtype=torch.bool)
            for row, positions in enumerate(self.content_positions):
                mask[row, [p for p in positions if 0 <= p < self._text_length]] = True
            self._content = mask
        return self._content

    def _make_maps(self, maps: torch.Tensor, per_step: Optional[torch.Tensor], cell_size: float) -> AttentionMapsData:
        if not self._with_share:
            return super()._make_maps(maps, per_step, cell_size)
        # The last token column is the share the sinks took (see `_layer_hook`).
        result = super()._make_maps(maps[:, :-1], None if per_step is None else per_step[:, :, :-1], cell_size)
        return dataclasses.replace(result, excluded_share=maps[:, -1].clone())


def _head_list(heads: Iterable[int]) -> List[int]:
    chosen = list(heads)
    if not chosen or not all(isinstance(h, int) and not isinstance(h, bool) for h in chosen):
        raise ValueError(f"`heads` must be a non-empty list of head indices, got {heads!r}.")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"`heads` names a head more than once: {chosen}.")
    return chosen


def make_recorder(
    pipe, family: PipelineFamily, content_positions: Optional[Sequence[Sequence[int]]] = None, **options
) -> CrossAttentionRecorder:
    r"""The attention recorder of a family: cross-attention (UNet families) or joint attention (transformer ones,
    leaving out the text positions other than `content_positions`, each image's prompt tokens, where the family
    leaves its attention sinks out)."""
    if family.joint_attention is None:
        return CrossAttentionRecorder(pipe, family=family, **options)
    return JointAttentionRecorder(pipe, content_positions=content_positions, family=family, **options)


def attention_recording(traced_only: bool) -> Recording:
    r"""
    The attention maps of a run, as a [`Recording`] named `"attention_maps"`: over the traced steps' denoiser calls
    (`traced_only`, what the attention methods read; all of them when every step is traced), or over every call.
    """

    def recorder(plan: RunPlan, counter: StepCounter, call_kwargs) -> CrossAttentionRecorder:
        steps = plan.traced_calls_from_end(counter) if traced_only else None
        return make_recorder(
            plan.pipe, plan.family, content_positions=plan.text_positions, steps=steps, counter=counter
        )

    return Recording("attention_maps", recorder)
