r"""
Layers whose weights are stored in another form or place than they are computed in: recomputed in the backward pass.

A quantized layer (torchao, GGUF) dequantizes its weight and a layerwise-cast one (`enable_layerwise_casting`) casts
it up before its matmul; a group-offloaded block (`enable_group_offload`) brings its weights to the device. Autograd
keeps that computed copy for the backward pass (the gradient to the layer's input needs it), so a traced call would
hold a full-precision, on-device copy of every such weight until the backward pass, which undoes what the tool saves.
(bitsandbytes' layers need none of this: their own autograd functions keep the packed weight.)
In traced calls, and in their recomputation when the call is checkpointed, each such layer (the outermost one) runs
under `torch.utils.checkpoint`: the graph keeps its inputs, and the backward pass dequantizes, casts or brings back its
weights again and lets them go after it.
"""

from typing import Iterable, List, Optional

import torch
from torch.utils.checkpoint import checkpoint

from .scoped import ScopedHooks

# diffusers' hook names (diffusers/hooks/group_offloading.py, layerwise_casting.py).
_STORING_HOOKS = ("group_offloading", "layerwise_casting")


def _stored_differently(parameter: torch.Tensor) -> bool:
    # A tensor subclass (GGUFParameter, torchao's quantized tensors) or a storage dtype no matmul runs in.
    return type(parameter) not in (torch.nn.Parameter, torch.Tensor) or not parameter.dtype.is_floating_point


def _recomputes_its_own_weights(module: torch.nn.Module) -> bool:
    # bitsandbytes' layers run autograd functions that keep the packed weight and dequantize it again in the backward.
    return type(module).__module__.startswith("bitsandbytes.")


def _stores_weights(module: torch.nn.Module) -> bool:
    if _recomputes_its_own_weights(module):
        return False
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and any(registry.get_hook(name) is not None for name in _STORING_HOOKS):
        return True
    return any(_stored_differently(p) for p in module.parameters(recurse=False))


def stored_weight_layer_names(model: torch.nn.Module) -> List[str]:
    r"""
    The names of the outermost submodules of `model` whose weights are quantized, layerwise-cast or group-offloaded
    (the model itself is never one: checkpointing a whole call is the plan's choice, not this scope's).
    """
    chosen: List[str] = []
    for name, module in model.named_modules():
        if name and not any(name.startswith(prefix + ".") for prefix in chosen) and _stores_weights(module):
            chosen.append(name)
    return chosen


def stored_weight_layers(models: Iterable[torch.nn.Module]) -> List[torch.nn.Module]:
    r"""The [`stored_weight_layer_names`] layers of each of `models`."""
    return [model.get_submodule(name) for model in models for name in stored_weight_layer_names(model)]


class StoredWeightsRecomputed(ScopedHooks):
    r"""
    For the scope, every [`stored_weight_layers`] layer of `models` (or the `layers` given) runs under
    `torch.utils.checkpoint` when grad is enabled (the traced calls and their recomputation), and as before otherwise.

    Args:
        models (`Iterable[torch.nn.Module]`): The pipeline's models.
        layers (`List[torch.nn.Module]`, *optional*): The layers to recompute, instead of those found in `models`.
    """

    def __init__(self, models: Iterable[torch.nn.Module], layers: Optional[List[torch.nn.Module]] = None):
        super().__init__()
        self.models = list(models)
        self.given = layers
        self.layers: List[torch.nn.Module] = []

    def _install(self) -> None:
        self.layers = stored_weight_layers(self.models) if self.given is None else list(self.given)
        for layer in self.layers:
            self.override(layer, "forward", _recomputed(layer.forward))


def stored_weights_recomputed(pipe, layers: Optional[List[torch.nn.Module]] = None) -> StoredWeightsRecomputed:
    r"""A [`StoredWeightsRecomputed`] scope over `pipe`'s models (over `layers` where an earlier scope found them)."""
    return StoredWeightsRecomputed((c for c in pipe.components.values() if isinstance(c, torch.nn.Module)), layers)


def _recomputed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    return run
