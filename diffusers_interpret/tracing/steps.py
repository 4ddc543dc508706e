"""One count of the denoiser's calls per pipeline run, shared by the tracer, the replay cache and the recorder."""

import contextlib
from typing import Optional

import torch

from .scoped import ScopedHooks


class StepCounter(ScopedHooks):
    r"""
    Counts the denoiser's calls during one pipeline run with one pre-hook (run before every other hook on it).

    `current` is the index of the call in progress (from 0), `total` the number of calls the run makes: the
    pipeline's `num_timesteps` (its real loop length: strength, second-order schedulers) times the family's denoiser
    calls per step, read at the first call. Calls made while `recomputing()` (a checkpointed step's backward pass)
    are not counted.

    Args:
        pipe: The pipeline being run.
        denoiser (`torch.nn.Module`): Its denoiser (UNet or transformer).
        calls_per_step (`int`, *optional*, defaults to 1): Denoiser calls per denoising step.
    """

    def __init__(self, pipe, denoiser: torch.nn.Module, calls_per_step: int = 1):
        super().__init__()
        self.pipe = pipe
        self.denoiser = denoiser
        self.calls_per_step = calls_per_step
        self.calls = 0
        self.total: Optional[int] = None
        self.is_recomputing = False

    def _install(self) -> None:
        self.calls, self.total, self.is_recomputing = 0, None, False
        self.hook_forward_pre(self.denoiser, self._count, prepend=True)

    def _count(self, module, args, kwargs):
        if self.is_recomputing:
            return None
        if self.calls == 0:
            self.total = self._planned_calls()
        self.calls += 1
        return None

    @property
    def current(self) -> int:
        r"""Index of the denoiser call in progress (or of the last one, after the run)."""
        return self.calls - 1

    def _planned_calls(self) -> int:
        return int(getattr(self.pipe, "num_timesteps", 0) or 0) * self.calls_per_step

    def first_of_last(self, n_steps: Optional[int], starting: bool = False) -> Optional[int]:
        r"""Index of the first denoiser call of the last `n_steps` denoising steps (`None`: all of them; every call
        of a step, e.g. both of Flux's true-CFG calls); `None` when `n_steps` is 0. `starting`: asked before the first
        denoiser call (by a ControlNet's call in the first step), from the pipeline's loop length."""
        total = (self._planned_calls() if starting and self.total is None else self.total) or 0
        count = total if n_steps is None else min(n_steps * self.calls_per_step, total)
        return total - count if count > 0 else None

    @contextlib.contextmanager
    def recomputing(self):
        r"""Within the block, denoiser calls are recomputations of counted ones."""
        previous, self.is_recomputing = self.is_recomputing, True
        try:
            yield
        finally:
            self.is_recomputing = previous


class SchedulerSteps(ScopedHooks):
    r"""
    Keeps every denoising step's latents from the scheduler's `step` (its `prev_sample`, detached) for the length of a
    `with` block: for a pipeline whose `__call__` takes no `callback_on_step_end` (HunyuanVideo 1.5), what its step
    callback would have handed over.

    Args:
        pipe: The pipeline being run.
        step_latents (`List[torch.Tensor]`): Where each step's latents are appended.
    """

    def __init__(self, pipe, step_latents):
        super().__init__()
        self.pipe = pipe
        self.step_latents = step_latents

    def _install(self) -> None:
        scheduler = self.pipe.scheduler
        step = scheduler.step

        def recorded_step(*args, **kwargs):
            output = step(*args, **kwargs)
            latents = output[0] if isinstance(output, tuple) else output.prev_sample
            self.step_latents.append(latents.detach())
            return output

        self.override(scheduler, "step", recorded_step)
