"""How much memory a traced call will hold, estimated before it grows its graph (`tracing/guard.py` refuses it)."""

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from .families import PipelineFamily

GiB = 1024**3

# What the backward pass holds beside the saved activations (the gradients in flight), as a share of the largest piece
# it works through at once, and what a traced call holds whatever its size (the autograd engine's thread, the
# allocator's slack). Fitted to peak RSS on the tiny, toy and SD 1.5-size pipelines, which the estimate then meets
# within 22% (`python benchmarks/bench_memory_estimate.py`).
BACKWARD_WORKING_SHARE = 0.25
RUNTIME_OVERHEAD = 16 * 1024**2


class NotEnoughMemoryError(MemoryError):
    r"""An explanation's estimated peak memory is more than the device has free."""


@dataclass
class MemoryEstimate:
    r"""
    The memory one explainer call holds beyond what is loaded, estimated before its first denoising step.

    Args:
        per_call (`int`): Bytes of activations one traced denoiser call keeps for the backward pass.
        call_inputs (`int`): Bytes a checkpointed denoiser call keeps instead (its inputs).
        traced_calls (`int`): Denoiser calls traced.
        checkpointed (`bool`): Whether the traced calls (and the decode) are recomputed in the backward pass.
        blocks (`bool`, *optional*, defaults to `False`): Whether that recomputation runs with the denoiser's own block
            checkpointing (`per_call` is then one recomputation's blocks' inputs and largest block).
        decoder (`int`): Bytes of activations the VAE's decode keeps (the box's pixels back to the latents).
        encoder (`int`): Bytes of activations the VAE's encode keeps (pixel attributions of an input image).
        device (`str`): The device the call runs on.
        available (`int`, *optional*): Bytes free on that device when the estimate was made (`None`: unknown).
    """

    per_call: int
    call_inputs: int
    traced_calls: int
    checkpointed: bool
    decoder: int
    encoder: int
    device: str = "cpu"
    available: Optional[int] = None
    blocks: bool = False

    @property
    def graph(self) -> int:
        r"""Bytes the graph holds when the backward pass starts."""
        if self.checkpointed:
            return self.traced_calls * self.call_inputs + self.encoder
        return self.traced_calls * self.per_call + self.decoder + self.encoder

    @property
    def peak(self) -> int:
        r"""Estimated peak bytes over what is loaded: the graph, and the backward pass's working memory."""
        largest = max(self.per_call, self.decoder)
        recomputed = largest if self.checkpointed else 0
        return int(self.graph + recomputed + BACKWARD_WORKING_SHARE * largest + RUNTIME_OVERHEAD)

    def replace(self, **changes) -> "MemoryEstimate":
        return MemoryEstimate(**dict(vars(self), **changes))

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak <= self.available

    def message(self) -> str:
        r"""Why the call is refused, and the ways out, each with its own estimate."""
        ways = []
        if not self.checkpointed and self.traced_calls > 1:
            ways.append(
                f"gradient checkpointing (`explainer_for(pipe, gradient_checkpointing=True)`): "
                f"{_gib(self.replace(checkpointed=True).peak)}"
            )
        if self.traced_calls > 1:
            one = self.replace(traced_calls=1)
            ways.append(
                f"fewer traced steps (`n_last_diffusion_steps_to_consider_for_attributions=1`): {_gib(one.peak)}"
            )
        ways.append("a smaller image (`height=`, `width=`), or a method that keeps no graph (`'word_attention'`)")
        ways.append("`check_memory=False` to go on anyway")
        return (
            f"This explanation would need about {_gib(self.peak)} on {self.device} beyond the loaded model "
            f"({self.traced_calls} traced denoiser calls of {_gib(self.per_call)} each"
            f"{', checkpointed' if self.checkpointed else ''}), and {_gib(self.available or 0)} is free. Ways out: "
            + "; ".join(ways)
            + "."
        )


def _gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB"


# -- activations, counted without computing them ------------------------------------------------------------------
_MODELS: Dict[Tuple[Any, ...], Any] = {}
_COUNTS: Dict[Tuple[Any, ...], int] = {}


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _config_key(module: torch.nn.Module) -> Tuple[Any, ...]:
    return (type(module), repr(sorted(dict(module.config).items())), module.dtype)


def _fake_model(module: torch.nn.Module):
    # The module's class built from its config with fake (shape-only) float32 weights: no memory, and none of the
    # hooks or processors the explainer sets on the real one. Kept with its fake-tensor mode, per config.
    key = _config_key(module)
    if key not in _MODELS:
        mode = _fake_mode()
        with mode:
            fake = type(module).from_config(module.config).eval().requires_grad_(False)
        _MODELS[key] = (mode, fake)
    return _MODELS[key]


def saved_activation_bytes(
    module: torch.nn.Module, call, *inputs: torch.Tensor, blocks_checkpointed: bool = False, **kwargs
) -> int:
    r"""
    Bytes of the tensors autograd saves for the backward pass of `call(module_like, *inputs, **kwargs)`, with every
    floating input requiring grad, counted on a shape-only copy of `module` (fake tensors: nothing is computed or
    allocated). The module's own weights are not counted.

    Args:
        module (`torch.nn.Module`): A diffusers model (`ConfigMixin`): UNet, transformer or VAE.
        call (`Callable`): `call(model, *inputs, **kwargs)` runs the forward pass to count.
        blocks_checkpointed (`bool`, *optional*, defaults to `False`): With the model's own gradient checkpointing on
            ([`BlockCheckpointing`]): the checkpointed blocks' inputs, what runs outside them, and the largest block's
            own saved tensors, which its backward pass recomputes and holds.
    """
    from .tracing.checkpoint import BlockCheckpointing
    from .tracing.stored_weights import StoredWeightsRecomputed, stored_weight_layer_names

    shapes = tuple(_shape_key(x) for x in (*inputs, *kwargs.values()))
    # Quantized, layerwise-cast and group-offloaded layers are recomputed in the backward pass: they keep their inputs.
    recomputed = tuple(stored_weight_layer_names(module))
    key = (
        _config_key(module), getattr(call, "__name__", repr(call)), shapes, tuple(kwargs), recomputed,
        blocks_checkpointed,
    )  # fmt: skip
    if key in _COUNTS:
        return _COUNTS[key]
    mode, fake = _fake_model(module)
    # Counted in float32 (a fake model cannot change dtype), scaled to the module's floating dtype.
    scale = torch.empty((), dtype=module.dtype).element_size() / 4
    weights = {p.untyped_storage()._cdata for p in fake.parameters()} | {
        b.untyped_storage()._cdata for b in fake.buffers()
    }
    saved: Dict[int, int] = {}
    largest_block = [0]

    def packer(into: Dict[int, int]):
        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage._cdata not in weights:
                into[storage._cdata] = int(storage.nbytes() * (scale if tensor.is_floating_point() else 1))
            return tensor

        return pack

    def counted_block(block, *args):
        # What a checkpointed block keeps (its tensor inputs) and what its recomputation holds (its own saved tensors).
        for arg in args:
            if isinstance(arg, torch.Tensor):
                packer(saved)(arg)
        inner: Dict[int, int] = {}
        with torch.autograd.graph.saved_tensors_hooks(packer(inner), lambda tensor: tensor):
            output = block(*args)
        largest_block[0] = max(largest_block[0], sum(inner.values()))
        return output

    layers = [fake.get_submodule(name) for name in recomputed]
    blocks = BlockCheckpointing(fake, counted_block) if blocks_checkpointed else contextlib.nullcontext()
    with mode, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(packer(saved), lambda tensor: tensor):
        fake_inputs = [_fake_like(x) for x in inputs]
        fake_kwargs = {name: _fake_like(value) for name, value in kwargs.items()}
        with StoredWeightsRecomputed([fake], layers), blocks:
            call(fake, *fake_inputs, **fake_kwargs)
    _COUNTS[key] = sum(saved.values()) + largest_block[0]
    return _COUNTS[key]


def _shape_key(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return tuple((k, _shape_key(v)) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_shape_key(v) for v in value)
    return repr(value)


def _fake_like(value):
    # Inside the fake mode: an uninitialised tensor of the same shape and dtype on the CPU (floating ones requiring
    # grad, as a traced call's sample and conditioning do), recursing into dicts and lists.
    if isinstance(value, torch.Tensor):
        dtype = torch.float32 if value.is_floating_point() else value.dtype
        tensor = torch.empty(value.shape, dtype=dtype)
        return tensor.requires_grad_(True) if tensor.is_floating_point() else tensor
    if isinstance(value, dict):
        return {k: _fake_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fake_like(v) for v in value)
    return value


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _decode(vae, latents):
    return vae.decode(latents).sample


def _encode(vae, pixels):
    return vae.encode(pixels).latent_dist.mean


# -- free memory ----------------------------------------------------------------------------------------------------
def available_memory(device: torch.device) -> Optional[int]:
    r"""
    Bytes the process may still take on `device`: CUDA's free memory plus what its allocator holds unused; on the
    CPU, the system's available memory (Linux `MemAvailable`), bounded by the cgroup's limit where one is set.
    `None` where unknown (then nothing is refused).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_room() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max") as limit_file, open("/sys/fs/cgroup/memory.current") as current_file:
            limit, current = limit_file.read().strip(), current_file.read().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(int(limit) - int(current), 0)


def estimate_memory(
    pipe,
    family: PipelineFamily,
    denoiser: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    traced_calls: int,
    checkpoint: bool,
    size: Tuple[int, int],
    pixels: bool = False,
    blocks: bool = False,
) -> MemoryEstimate:
    r"""
    The [`MemoryEstimate`] of a traced run of `family`'s `pipe` whose denoiser is called with `args`, `kwargs`;
    with `blocks`, a checkpointed call's recomputation runs with the denoiser's own block checkpointing.
    """
    per_call = saved_activation_bytes(denoiser, _call_module, *args, blocks_checkpointed=blocks, **kwargs)
    # The decode sees the images alone: the prompt's rows of the denoiser's batch (not classifier-free guidance's).
    rows = family.positive_rows(pipe, int(family.read_sample(args, kwargs).shape[0]))
    vae = pipe.vae
    factor = getattr(pipe, "vae_scale_factor", 8)
    height, width = size
    latents = torch.empty(
        (rows.stop - rows.start, vae.config.latent_channels, height // factor, width // factor),
        dtype=vae.dtype,
        device="meta",
    )
    decoder = saved_activation_bytes(vae, _decode, latents, blocks_checkpointed=checkpoint)  # as `tracing.decode` does
    encoder = 0
    if pixels:
        images = torch.empty((latents.shape[0], 3, height, width), dtype=vae.dtype, device="meta")
        encoder = saved_activation_bytes(vae, _encode, images)
    device = getattr(pipe, "_execution_device", None) or denoiser.device
    return MemoryEstimate(
        per_call=per_call,
        call_inputs=_tensor_bytes(args) + _tensor_bytes(kwargs),
        traced_calls=traced_calls,
        checkpointed=checkpoint,
        decoder=decoder,
        encoder=encoder,
        device=str(device),
        available=available_memory(device),
        blocks=blocks,
    )


def _call_module(model, *args, **kwargs):
    return model(*args, **kwargs)


def memory_check_disabled() -> bool:
    r"""`DIFFUSERS_INTERPRET_NO_MEMORY_CHECK=1` in the environment turns the guard off everywhere."""
    return os.environ.get("DIFFUSERS_INTERPRET_NO_MEMORY_CHECK", "") not in ("", "0")
