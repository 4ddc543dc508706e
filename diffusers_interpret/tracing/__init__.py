r"""
Scoped hooks on a pipeline's own modules, on one base ([`ScopedHooks`]: installed on enter, removed on exit, also
after an exception), sharing one count of denoiser calls ([`StepCounter`]); gradient checkpointing; the one unwrapped
pipeline run.
"""

from .attention import CrossAttentionRecorder
from .run import run_pipeline
from .scoped import ScopedHooks, progress_bar_disabled
from .steps import StepCounter
from .tracer import DenoiserTracer

__all__ = [
    "CrossAttentionRecorder",
    "DenoiserTracer",
    "ScopedHooks",
    "StepCounter",
    "progress_bar_disabled",
    "run_pipeline",
]
