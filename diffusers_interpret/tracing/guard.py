"""Before a traced call grows its graph: estimate the memory it will hold, and refuse what the device cannot hold."""

import warnings
from typing import Optional, Tuple

from .. import memory
from ..families import PipelineFamily
from .estimate import estimate_memory
from .scoped import ScopedHooks
from .steps import StepCounter


class MemoryGuard(ScopedHooks):
    r"""
    At the first denoiser call of a traced pipeline run, before it runs: estimate the call's peak memory from the
    denoiser's actual inputs (see [`MemoryEstimate`]) and raise [`NotEnoughMemoryError`] if it is more than the
    device has free. A checkpointed run whose calls' recomputation would not fit whole is estimated again with the
    denoiser's own block checkpointing in that recomputation, and `blocks` says to use it (it costs time: the blocks
    run once more). `estimate` holds the estimate afterwards.

    Args:
        pipe: The pipeline being run.
        family (`PipelineFamily`): Its family.
        counter (`StepCounter`): The run's shared count of denoiser calls (entered before this guard).
        n_traced (`int`, *optional*): Last denoising steps traced (`None`: all).
        checkpoint (`bool`): Whether the traced calls and the decode are checkpointed.
        size (`Tuple[int, int]`): The image's (height, width).
        pixels (`bool`, *optional*, defaults to `False`): The input image's encoding is traced too.
        text_lengths (`Tuple[int, ...]`, *optional*): Each text encoder's padded token length where the run keeps the
            text encoders' graph (attribution at the `token_embeddings` level); `None` where it does not.
        enforce (`bool`, *optional*, defaults to `True`): Raise when it does not fit; `False` only estimates.
    """

    def __init__(
        self,
        pipe,
        family: PipelineFamily,
        counter: StepCounter,
        n_traced: Optional[int],
        checkpoint: bool,
        size: Tuple[int, int],
        pixels: bool = False,
        enforce: bool = True,
        text_lengths: Optional[Tuple[int, ...]] = None,
    ):
        super().__init__()
        self.pipe = pipe
        self.family = family
        self.counter = counter
        self.n_traced = n_traced
        self.checkpoint = checkpoint
        self.size = size
        self.pixels = pixels
        self.enforce = enforce
        self.text_lengths = text_lengths
        self.estimate: Optional[memory.MemoryEstimate] = None
        self.blocks = False

    def _install(self) -> None:
        self.estimate, self.blocks, self._controls = None, False, []
        self.hook_forward_pre(self.family.denoiser(self.pipe), self._check)
        for control in self.family.control_models(self.pipe):
            self.hook_forward_pre(control, self._capture_control)

    def _capture_control(self, module, args, kwargs):
        # A control model's first call (before the denoiser's first): counted with it, one more traced call a step.
        if not self.counter.is_recomputing and self.counter.calls == 0:
            self._controls.append((module, args, kwargs))
        return None

    def _check(self, module, args, kwargs):
        if self.counter.is_recomputing or self.counter.calls != 1:  # the run's first call only
            return None
        first = self.counter.first_of_last(self.n_traced)
        traced = 0 if first is None else (self.counter.total or 0) - first
        try:
            arguments = (self.pipe, self.family, module, args, kwargs, traced, self.checkpoint, self.size, self.pixels)
            options = dict(text_lengths=self.text_lengths, controls=self._controls)
            self.estimate = estimate_memory(*arguments, **options)
            if self.checkpoint and not self.estimate.fits:
                self.estimate = estimate_memory(*arguments, blocks=True, **options)
                self.blocks = True
        except Exception as error:  # a model the shape-only copy cannot be built for: explain without a guard
            why = str(error)
            if type(error).__name__ in ("DataDependentOutputException", "DynamicOutputShapeException"):
                # HunyuanVideo 1.5's transformer lays out its text by its masks' values.
                why = f"{type(module).__name__}'s forward depends on its inputs' values, which shape-only copies lack"
            warnings.warn(f"The explanation's memory could not be estimated ({why}); it is not checked.", stacklevel=2)
            return None
        if self.enforce and not self.estimate.fits:
            raise memory.NotEnoughMemoryError(self.estimate.message())
        return None
