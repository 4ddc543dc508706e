r"""
How much memory a traced call will hold, counted before it grows its graph on shape-only copies of the pipeline's
models (fake tensors: nothing is computed or allocated), with the same layers recomputed in the backward pass as the
run's own scopes recompute. The guard (`guard.py`) compares the [`MemoryEstimate`] with the memory free.
"""

import contextlib
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .. import memory
from ..families import PipelineFamily
from ..memory import MemoryEstimate
from .checkpoint import BlockCheckpointing
from .leaves import input_embeddings
from .stored_weights import StoredWeightsRecomputed, stored_weight_layer_names

_MODELS: Dict[Tuple[Any, ...], Any] = {}
_COUNTS: Dict[Tuple[Any, ...], int] = {}


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _config_key(module: torch.nn.Module) -> Tuple[Any, ...]:
    config = module.config
    if hasattr(config, "to_json_string"):  # a transformers model's
        return (type(module), config.to_json_string(use_diff=False), module.dtype)
    return (type(module), repr(sorted(dict(config).items())), module.dtype)


def _fake_model(module: torch.nn.Module):
    # The module's class built from its config with fake (shape-only) float32 weights: no memory, and none of the
    # hooks or processors the explainer sets on the real one. Kept with its fake-tensor mode, per config.
    key = _config_key(module)
    if key not in _MODELS:
        mode = _fake_mode()
        with mode:
            kind = type(module)
            fake = kind.from_config(module.config) if hasattr(kind, "from_config") else kind(module.config)
            fake = fake.eval().requires_grad_(False)
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
        # A mask is no gradient path, though a pipeline may hand it over as floats (HunyuanVideo's text mask).
        fake_kwargs = {name: _fake_like(value, grad="mask" not in name) for name, value in kwargs.items()}
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


def _fake_like(value, grad: bool = True):
    # Inside the fake mode: an uninitialised tensor of the same shape and dtype on the CPU (floating ones requiring
    # grad where `grad`, as a traced call's sample and conditioning do), recursing into dicts and lists.
    if isinstance(value, torch.Tensor):
        dtype = torch.float32 if value.is_floating_point() else value.dtype
        tensor = torch.empty(value.shape, dtype=dtype)
        return tensor.requires_grad_(True) if grad and tensor.is_floating_point() else tensor
    if isinstance(value, dict):
        return {k: _fake_like(v, grad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fake_like(v, grad) for v in value)
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


def _encode_text(encoder, ids):
    # A text encoder's forward pass from its token embeddings made leaves (as `tracing.leaves` makes them).
    layer = input_embeddings(encoder)
    handle = layer.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
    try:
        return encoder(input_ids=ids)
    finally:
        handle.remove()


def text_encoder_bytes(pipe, family: PipelineFamily, rows: int, lengths: Sequence[int]) -> int:
    r"""
    Bytes of activations the text encoders keep for the backward pass to the prompt's token embeddings (attribution
    at the `token_embeddings` level), each encoder run on `rows` prompts of its padded length in `lengths`: what a
    gradient through a large LLM encoder costs.
    """
    total = 0
    for slot, length in zip(family.text_encoders(pipe), lengths):
        encoder = getattr(pipe, slot.encoder, None)
        if encoder is None:
            continue
        total += encoder_graph_bytes(encoder, rows, int(length))
    return total


def encoder_graph_bytes(encoder: torch.nn.Module, rows: int, length: int) -> int:
    r"""Bytes of activations one text encoder keeps for the backward pass to its token embeddings, run on `rows`
    prompts of `length` tokens (counted on a shape-only copy: the encoder may live on the meta device)."""
    ids = torch.zeros((rows, length), dtype=torch.long, device="meta")
    return saved_activation_bytes(encoder, _encode_text, ids)


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
    text_lengths: Optional[Sequence[int]] = None,
    controls: Sequence[Tuple[torch.nn.Module, tuple, dict]] = (),
) -> MemoryEstimate:
    r"""
    The [`MemoryEstimate`] of a traced run of `family`'s `pipe` whose denoiser is called with `args`, `kwargs`;
    with `blocks`, a checkpointed call's recomputation runs with the denoiser's own block checkpointing; with
    `text_lengths` (each text encoder's padded length), the run keeps the text encoders' graph too; `controls`, the
    control models (ControlNets) called before the denoiser in a step with their arguments, are traced with it.
    """
    per_call = saved_activation_bytes(denoiser, _call_module, *args, blocks_checkpointed=blocks, **kwargs)
    inputs = _tensor_bytes(args) + _tensor_bytes(kwargs)
    for control, control_args, control_kwargs in controls:
        per_call += saved_activation_bytes(
            control, _call_module, *control_args, blocks_checkpointed=blocks, **control_kwargs
        )
        inputs += _tensor_bytes(control_args) + _tensor_bytes(control_kwargs)
    # The decode sees the images alone: the prompt's rows of the denoiser's batch (not classifier-free guidance's).
    rows = family.positive_rows(pipe, int(family.read_sample(args, kwargs).shape[0]))
    vae = pipe.vae
    sample = family.read_sample(args, kwargs)
    latent_shape, pixel_shape = family.vae_shapes(pipe, rows.stop - rows.start, size, sample)
    latents = torch.empty(latent_shape, dtype=vae.dtype, device="meta")
    decoder = saved_activation_bytes(vae, _decode, latents, blocks_checkpointed=checkpoint)  # as `tracing.decode` does
    encoder = 0
    if pixels:
        images = torch.empty(pixel_shape, dtype=vae.dtype, device="meta")
        encoder = saved_activation_bytes(vae, _encode, images)
    text = 0 if text_lengths is None else text_encoder_bytes(pipe, family, rows.stop - rows.start, text_lengths)
    device = getattr(pipe, "_execution_device", None) or denoiser.device
    return MemoryEstimate(
        per_call=per_call,
        call_inputs=inputs,
        traced_calls=traced_calls,
        checkpointed=checkpoint,
        decoder=decoder,
        encoder=encoder,
        device=str(device),
        available=memory.available_memory(device),  # read through the module: tests set it there
        blocks=blocks,
        weights_arriving=weights_arriving(pipe, [denoiser, vae, *(c for c, _, _ in controls)], torch.device(device)),
        text=text,
    )


def weights_arriving(pipe, needed, device: torch.device) -> int:
    r"""
    Under model CPU offload (accelerate's `CpuOffload` hooks, `enable_model_cpu_offload()`): the bytes of the `needed`
    models' weights not on `device` now, less those of the other offloaded models on it, which leave as they arrive.
    At the denoiser's first call its own weights are still off the device (the guard runs before the offload hook
    brings them), and the VAE's come for the decode; both are on the device through the backward pass. 0 without
    model offload, and where the offload device is the device itself.
    """
    offloaded = [
        c
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module) and type(getattr(c, "_hf_hook", None)).__name__ == "CpuOffload"
    ]
    arriving = sum(_weight_bytes(m) for m in offloaded if m in needed and not _on(m, device))
    leaving = sum(_weight_bytes(m) for m in offloaded if m not in needed and _on(m, device))
    return max(arriving - leaving, 0)


def _on(model: torch.nn.Module, device: torch.device) -> bool:
    parameter = next(model.parameters(), None)
    return parameter is not None and _same_device(parameter.device, device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _call_module(model, *args, **kwargs):
    return model(*args, **kwargs)
