r"""
Cross-attention maps of a Stable Diffusion UNet, recorded while the pipeline runs (DAAM-style).

```python
from diffusers_interpret.attention import record_cross_attention

with record_cross_attention(pipe) as recorder:
    image = pipe(prompt, height=512, width=768).images[0]
maps = recorder.maps  # an `AttentionMaps`, `maps.maps` of shape (num_images, num_tokens, 512, 768)
maps.overlay(image, position=2)  # the third token of the padded sequence (position 0 is the start token)
```

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

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from PIL import Image

_PROCESSOR_SUFFIX = ".processor"


def _normalize01(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return (array - low) / (high - low)


def colorize(values: np.ndarray, cmap: str = "jet") -> Image.Image:
    r"""
    An RGB image of a 2D array in [0, 1] through a matplotlib colormap.

    Args:
        values (`np.ndarray`): (H, W) array with values in [0, 1].
        cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
    """
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(values, 0.0, 1.0))
    return Image.fromarray((rgba[..., :3] * 255.0 + 0.5).astype(np.uint8), mode="RGB")


@dataclass
class AttentionMaps:
    r"""
    Cross-attention maps of generated images, one per image and token.

    Args:
        maps (`torch.Tensor`):
            Float32 tensor of shape (num_images, num_tokens, H, W): attention probabilities averaged over heads, the
            recorded layers (each upsampled bilinearly to the image size) and the recorded steps. At each pixel the
            maps of all tokens sum to 1. `num_tokens` is the text encoder's sequence length (77 for CLIP), padding
            included; position 0 is the start token.
        per_step (`torch.Tensor`, *optional*):
            Float32 tensor of shape (num_steps, num_images, num_tokens, H, W), the same maps for each recorded step
            (only with `keep_per_step=True`); `per_step.mean(0)` equals `maps`.
        steps (`List[int]`): Indices of the recorded denoiser calls, in order.
        layers (`List[str]`): Names of the recorded cross-attention layers (as in `unet.attn_processors`).
    """

    maps: torch.Tensor
    per_step: Optional[torch.Tensor] = None
    steps: Optional[List[int]] = None
    layers: Optional[List[str]] = None

    @property
    def num_images(self) -> int:
        return int(self.maps.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.maps.shape[1])

    @property
    def size(self) -> Tuple[int, int]:
        r"""The image size `(height, width)` of the maps."""
        return int(self.maps.shape[2]), int(self.maps.shape[3])

    def _check(self, position: int, image_index: int) -> None:
        if not -self.num_tokens <= position < self.num_tokens:
            raise IndexError(f"Token position {position} is out of range for {self.num_tokens} tokens.")
        if not -self.num_images <= image_index < self.num_images:
            raise IndexError(f"Image index {image_index} is out of range for {self.num_images} images.")

    def for_token(self, position: int, image_index: int = 0) -> np.ndarray:
        r"""
        The map of one token, min-max normalized to [0, 1] (all zeros for a constant map).

        Args:
            position (`int`): Index of the token in the padded token sequence (0 is the start token).
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.

        Returns:
            `np.ndarray` of shape (H, W), float32.
        """
        self._check(position, image_index)
        return _normalize01(self.maps[image_index, position].detach().cpu().float().numpy())

    def heatmap(self, position: int, image_index: int = 0, cmap: str = "jet") -> Image.Image:
        r"""
        The normalized map of one token as an RGB image of the image's size.

        Args:
            position (`int`): Index of the token in the padded token sequence.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
        """
        return colorize(self.for_token(position, image_index), cmap=cmap)

    def overlay(
        self, image: Image.Image, position: int, image_index: int = 0, alpha: float = 0.5, cmap: str = "jet"
    ) -> Image.Image:
        r"""
        The heatmap of one token blended over `image`.

        Args:
            image (`PIL.Image.Image`): The generated image (resized to the maps' size if it differs).
            position (`int`): Index of the token in the padded token sequence.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            alpha (`float`, *optional*, defaults to 0.5): Weight of the heatmap (0 shows only the image).
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
        """
        height, width = self.size
        base = image.convert("RGB")
        if base.size != (width, height):
            base = base.resize((width, height), Image.BILINEAR)
        return Image.blend(base, self.heatmap(position, image_index, cmap=cmap), float(alpha))

    def plot(
        self,
        image: Image.Image,
        positions: Sequence[int],
        labels: Optional[Sequence[str]] = None,
        image_index: int = 0,
        alpha: float = 0.5,
        cmap: str = "jet",
    ):
        r"""
        One panel per token: the image, then each token's map overlaid on it.

        Args:
            image (`PIL.Image.Image`): The generated image.
            positions (`Sequence[int]`): Token positions in the padded token sequence.
            labels (`Sequence[str]`, *optional*): Panel titles, one per position; `"token {position}"` otherwise.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            alpha (`float`, *optional*, defaults to 0.5): Weight of the heatmaps.
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.

        Returns:
            The `matplotlib.figure.Figure`.
        """
        import matplotlib.pyplot as plt

        positions = list(positions)
        labels = list(labels) if labels is not None else [f"token {p}" for p in positions]
        if len(labels) != len(positions):
            raise ValueError(f"Got {len(labels)} labels for {len(positions)} positions.")
        fig, axes = plt.subplots(1, len(positions) + 1, figsize=(2.2 * (len(positions) + 1), 2.6), squeeze=False)
        axes = axes[0]
        axes[0].imshow(image)
        axes[0].set_title("image")
        for ax, position, label in zip(axes[1:], positions, labels):
            ax.imshow(self.overlay(image, position, image_index=image_index, alpha=alpha, cmap=cmap))
            ax.set_title(str(label))
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig


def _grid_shape(query_length: int, latent_size: Tuple[int, int]) -> Tuple[int, int]:
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


class CrossAttentionRecordingProcessor:
    r"""
    Attention processor of one cross-attention layer that computes the layer's output exactly as `AttnProcessor2_0`
    (with `sdpa=True`) or `AttnProcessor` (with `sdpa=False`) and hands the head-averaged attention probabilities to
    its recorder.

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

        recording = self.recorder._recording_now()
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
                self.recorder._add(self.name, probs[self.recorder._kept_rows(batch_size)].float().mean(dim=1))
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
        rows = self.recorder._kept_rows(batch_size)
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
        self.recorder._add(self.name, probs.view(kept, heads, *probs.shape[1:]).float().mean(dim=1))


class CrossAttentionRecorder:
    r"""
    Records the cross-attention probabilities of a pipeline's UNet while the pipeline runs; see
    [`record_cross_attention`]. Use it as a context manager; after (or within) the block, `.maps` gives the
    [`AttentionMaps`].

    On entering, the UNet's processors (`unet.attn_processors`) are saved and the selected cross-attention layers get
    a [`CrossAttentionRecordingProcessor`]; on exiting, even after an exception, exactly the saved processors are set
    back, and the counting hook on the UNet is removed. Set `enabled = False` to stop recording without leaving the
    block (e.g. before a backward pass that recomputes UNet calls for gradient checkpointing).
    """

    def __init__(
        self,
        pipe,
        steps: Optional[Iterable[int]] = None,
        keep_per_step: bool = False,
        layers: Optional[Iterable[str]] = None,
    ):
        self.pipe = pipe
        self.unet = pipe.unet
        self.steps = None if steps is None else [int(s) for s in steps]
        self.keep_per_step = keep_per_step
        self.layer_filter = None if layers is None else {self._layer_key(name) for name in layers}
        self.enabled = True
        self.calls = 0
        self._saved: Optional[Dict] = None
        self._handle = None
        self._reset()

    @staticmethod
    def _layer_key(name: str) -> str:
        return name if name.endswith(_PROCESSOR_SUFFIX) else name + _PROCESSOR_SUFFIX

    def _reset(self) -> None:
        self.calls = 0
        self._step_set: Optional[Set[int]] = None
        self._current_call: Optional[int] = None
        self._current_recorded = False
        self._latent_size: Optional[Tuple[int, int]] = None
        self._cfg = False
        self._current: Dict[Tuple[int, int], torch.Tensor] = {}
        self._current_layers = 0
        self._total: Dict[Tuple[int, int], torch.Tensor] = {}
        self._per_step: List[Dict[Tuple[int, int], torch.Tensor]] = []
        self._recorded_steps: List[int] = []
        self._layer_names: List[str] = []
        self._maps: Optional[AttentionMaps] = None

    # -- scope ----------------------------------------------------------------------------------------------------
    def __enter__(self) -> "CrossAttentionRecorder":
        if self._saved is not None:
            raise RuntimeError("This recorder is already active.")
        self._reset()
        saved = self.unet.attn_processors
        processors = {}
        for name, processor in saved.items():
            module = self.unet.get_submodule(name[: -len(_PROCESSOR_SUFFIX)])
            selected = self.layer_filter is None or name in self.layer_filter
            if not (getattr(module, "is_cross_attention", False) and selected):
                processors[name] = processor
                continue
            if isinstance(processor, AttnProcessor2_0):
                processors[name] = CrossAttentionRecordingProcessor(self, name, sdpa=True)
            elif type(processor) is AttnProcessor:
                processors[name] = CrossAttentionRecordingProcessor(self, name, sdpa=False)
            else:
                raise TypeError(
                    f"Cross-attention layer {name!r} uses {type(processor).__name__}; recording supports the default "
                    "`AttnProcessor2_0` and `AttnProcessor` (call `pipe.unet.set_default_attn_processor()` first)."
                )
            self._layer_names.append(name)
        if self.layer_filter is not None:
            unknown = self.layer_filter - set(self._layer_names)
            if unknown:
                raise ValueError(f"Not cross-attention layers of this UNet: {sorted(unknown)}.")
        if not self._layer_names:
            raise ValueError("This UNet has no cross-attention layer to record.")
        self._saved = saved
        self.unet.set_attn_processor(dict(processors))
        try:
            self._handle = self.unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _restore(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._saved is not None:
            # `set_attn_processor` pops from the dict it gets: hand it a copy.
            self.unet.set_attn_processor(dict(self._saved))
            self._saved = None
        self._finish_step()

    # -- recording ------------------------------------------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        if not self.enabled:
            return None
        self._finish_step()
        index = self.calls
        self.calls += 1
        if self._step_set is None:
            total = int(getattr(self.pipe, "num_timesteps", 0) or 0)
            steps = self.steps
            if steps is None:
                self._step_set = set()
            else:
                self._step_set = {s + total if s < 0 else s for s in steps}
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self._latent_size is not None and latent_size != self._latent_size:
            raise RuntimeError(
                f"The latent size changed from {self._latent_size} to {latent_size} within one recording: record one "
                "pipeline call per `record_cross_attention` block."
            )
        self._latent_size = latent_size
        self._cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        self._current_call = index
        self._current_recorded = self.steps is None or index in self._step_set
        return None

    def _recording_now(self) -> bool:
        return self.enabled and self._current_recorded

    def _kept_rows(self, batch_size: int) -> slice:
        # With classifier-free guidance the batch is [negative, positive]: keep the positive half.
        if self._cfg and batch_size % 2 == 0:
            return slice(batch_size // 2, batch_size)
        return slice(0, batch_size)

    def _add(self, name: str, probs: torch.Tensor) -> None:
        # probs: (images, queries, tokens), averaged over heads.
        height, width = _grid_shape(probs.shape[1], self._latent_size)
        grid = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], height, width)
        key = (height, width)
        if key in self._current:
            self._current[key] += grid
        else:
            self._current[key] = grid.clone()
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
        self._recorded_steps.append(self._current_call)
        self._current = {}
        self._current_layers = 0

    # -- result ---------------------------------------------------------------------------------------------------
    def image_size(self) -> Tuple[int, int]:
        r"""The image size `(height, width)`: the latent size times the VAE's scale factor."""
        if self._latent_size is None:
            raise RuntimeError("Nothing was recorded: run the pipeline inside the block.")
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        return self._latent_size[0] * factor, self._latent_size[1] * factor

    def _upsample(self, sums: Dict[Tuple[int, int], torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        result = None
        for grid in sums.values():
            up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            result = up if result is None else result + up
        return result

    @property
    def maps(self) -> AttentionMaps:
        r"""The [`AttentionMaps`] of the steps recorded so far (built once, then cached)."""
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
        self._maps = AttentionMaps(
            maps=maps, per_step=per_step, steps=list(self._recorded_steps), layers=list(self._layer_names)
        )
        return self._maps


def record_cross_attention(
    pipe,
    steps: Optional[Iterable[int]] = None,
    keep_per_step: bool = False,
    layers: Optional[Iterable[str]] = None,
) -> CrossAttentionRecorder:
    r"""
    Record the cross-attention maps of the pipeline calls made inside a `with` block.

    ```python
    with record_cross_attention(pipe) as recorder:
        image = pipe(prompt).images[0]
    recorder.maps.overlay(image, position=1)
    ```

    Args:
        pipe (`DiffusionPipeline`): A Stable Diffusion pipeline (with a `unet` using the default attention processors).
        steps (`Iterable[int]`, *optional*, defaults to `None`):
            Indices of the denoiser calls to record, counted from 0 (negative ones count from the end of the
            pipeline's schedule, `pipe.num_timesteps`). `None` records every call.
        keep_per_step (`bool`, *optional*, defaults to `False`):
            Also keep one map per recorded step (`AttentionMaps.per_step`, of size steps x images x tokens x H x W
            float32 once built).
        layers (`Iterable[str]`, *optional*, defaults to `None`):
            Names of the cross-attention layers to record, as in `pipe.unet.attn_processors` (the `.processor`
            suffix may be left out). `None` records all of them.

    Returns:
        A [`CrossAttentionRecorder`] to enter; `.maps` gives the [`AttentionMaps`]. Record one pipeline call per block.
        With classifier-free guidance (`pipe.do_classifier_free_guidance` at call time) only the conditional half of
        the UNet batch is recorded.
    """
    return CrossAttentionRecorder(pipe, steps=steps, keep_per_step=keep_per_step, layers=layers)
