r"""
Scoped hooks on a pipeline's own modules, on one base ([`ScopedHooks`]: installed on enter, removed on exit, also
after an exception), sharing one count of denoiser calls ([`StepCounter`]); the one way a pipeline is run under them
([`RunPlan`], [`run`]); what the recorders record ([`AttentionMapsData`], [`ConceptMaps`]).
"""

from .attention import CrossAttentionRecorder, JointAttentionRecorder, attention_recording
from .maps import AttentionMapsData, ConceptMaps
from .run import Recording, RunPlan, RunResult, decode, run
from .scoped import ScopedHooks, progress_bar_disabled
from .steps import StepCounter
from .tracer import DenoiserTracer

__all__ = [
    "AttentionMapsData",
    "ConceptMaps",
    "CrossAttentionRecorder",
    "DenoiserTracer",
    "JointAttentionRecorder",
    "Recording",
    "RunPlan",
    "RunResult",
    "ScopedHooks",
    "StepCounter",
    "attention_recording",
    "decode",
    "progress_bar_disabled",
    "run",
]
