"""How much memory a traced call will hold ([`MemoryEstimate`], counted in `tracing/estimate.py`); how much is free."""

import os
from dataclasses import dataclass
from typing import Optional

import torch

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
        weights_arriving (`int`, *optional*, defaults to 0): Bytes of weights that model CPU offload will bring to the
            device during the run, less those it will take away (the denoiser and the VAE, both on the device in the
            backward pass, in place of the text encoders); 0 without it.
        text (`int`, *optional*, defaults to 0): Bytes of activations the text encoders keep for the gradient to the
            prompt's token embeddings (the `token_embeddings` level; once a run, whatever the traced calls).
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
    weights_arriving: int = 0
    text: int = 0

    @property
    def graph(self) -> int:
        r"""Bytes the graph holds when the backward pass starts."""
        if self.checkpointed:
            return self.traced_calls * self.call_inputs + self.encoder + self.text
        return self.traced_calls * self.per_call + self.decoder + self.encoder + self.text

    @property
    def peak(self) -> int:
        r"""
        Estimated peak bytes over what is on the device now: the graph, the backward pass's working memory, and the
        weights model offload brings.
        """
        largest = max(self.per_call, self.decoder)
        recomputed = largest if self.checkpointed else 0
        working = recomputed + BACKWARD_WORKING_SHARE * largest + RUNTIME_OVERHEAD
        return int(self.graph + working + self.weights_arriving)

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
        if self.weights_arriving:
            ways.append("group offloading (`enable_group_offload(...)`: the denoiser's weights a block at a time)")
        if self.text > 0.1 * self.peak:
            ways.append(
                f"no gradient through the text encoders (`attribution_level='text_encoder_output'`): saves "
                f"{_gib(self.text)}"
            )
        ways.append("a smaller image (`height=`, `width=`), or a method that keeps no graph (`'word_attention'`)")
        ways.append("`check_memory=False` to go on anyway")
        brought = ""
        if self.weights_arriving:
            brought = f", and {_gib(self.weights_arriving)} of weights model offload brings"
        return (
            f"This explanation would need about {_gib(self.peak)} on {self.device} beyond the loaded model "
            f"({self.traced_calls} traced denoiser calls of {_gib(self.per_call)} each"
            f"{', checkpointed' if self.checkpointed else ''}"
            f"{f', the text encoders {_gib(self.text)}' if self.text else ''}"
            f"{brought}"
            f"), and {_gib(self.available or 0)} is free. Ways out: " + "; ".join(ways) + "."
        )


def _gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB"


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


def memory_check_disabled() -> bool:
    r"""`DIFFUSERS_INTERPRET_NO_MEMORY_CHECK=1` in the environment turns the guard off everywhere."""
    return os.environ.get("DIFFUSERS_INTERPRET_NO_MEMORY_CHECK", "") not in ("", "0")
