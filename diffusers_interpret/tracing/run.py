r"""
The one way this library runs a pipeline: its own `__call__`, unwrapped from `@torch.no_grad()`, under scopes. A
[`RunPlan`] says how (which steps are traced, checkpointing, the memory check); [`run`] builds the scopes the plan
and the caller's recordings need and runs the call; [`decode`] turns its latents into the image, with the graph.
The explainer's call and every regeneration of the image run this way.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..families import PipelineFamily
from ..memory import MemoryEstimate
from .checkpoint import BlockCheckpointing, checkpointed
from .guard import MemoryGuard
from .replay import UntracedDenoiserCache
from .scoped import ScopedHooks, progress_bar_disabled
from .steps import StepCounter
from .stored_weights import stored_weights_recomputed
from .tracer import DenoiserTracer

# Given the prompt rows of the denoiser's conditioning tensors (by name), the tensors the traced calls take (see
# `DenoiserTracer`).
Conditioning = Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class RunPlan:
    r"""
    How one pipeline call is run.

    Args:
        pipe: The pipeline.
        family (`PipelineFamily`): Its family.
        size (`Tuple[int, int]`): The image's (height, width).
        n_traced (`int`, *optional*): Last denoising steps traced, every denoiser call of each; `None` for all, 0 for
            none.
        checkpoint (`bool`, *optional*, defaults to `False`): Recompute the traced calls (and the decode) in the
            backward pass instead of keeping their activations.
        graph (`bool`, *optional*, defaults to `True`): Build the traced calls' graph; `False` only gives them the
            conditioning's values (a perturbed prompt generated without gradients).
        replace (`bool`, *optional*, defaults to `False`): The traced calls see the values the run's `conditioning`
            returns (perturbed embeddings) instead of the pipeline's own plus a zero-valued, gradient-carrying term.
        pixels (`bool`, *optional*, defaults to `False`): Gradients reach the input image's pixels: grad mode stays on
            before the denoising loop (the image's encoding), and the memory estimate counts the VAE's encoder.
        check_memory (`bool`, *optional*, defaults to `True`): Refuse a traced run whose estimated peak memory the
            device has not free (`NotEnoughMemoryError`), before its first denoiser call.
        quiet (`bool`, *optional*, defaults to `True`): Hide the pipeline's own progress bar.
        call (`Callable`, *optional*): What runs instead of the pipeline's own `__call__` (with the same arguments):
            the denoiser on an existing image ([`ImageDenoising`]).
        text_positions (`Tuple[Tuple[int, ...], ...]`, *optional*): For each image, the positions of its prompt's own
            tokens in the denoiser's text sequence: where a family leaves its attention sinks out (padding, end and
            template tokens), the attention recorders keep only these.
        text_lengths (`Tuple[int, ...]`, *optional*): Each text encoder's padded token length, where the traced calls
            keep the text encoders' graph (attribution at the `token_embeddings` level): the memory guard counts it.
    """

    pipe: Any
    family: PipelineFamily
    size: Tuple[int, int]
    n_traced: Optional[int] = None
    checkpoint: bool = False
    graph: bool = True
    replace: bool = False
    pixels: bool = False
    check_memory: bool = True
    quiet: bool = True
    call: Optional[Callable[..., Any]] = None
    text_positions: Optional[Tuple[Tuple[int, ...], ...]] = None
    text_lengths: Optional[Tuple[int, ...]] = None

    def traced_calls_from_end(self, counter: StepCounter) -> Optional[List[int]]:
        r"""The denoiser calls of the traced steps, counted from the end (`None`: all of them), for recorders."""
        if not self.n_traced:
            return None
        return list(range(-self.n_traced * counter.calls_per_step, 0))


@dataclass(frozen=True)
class Recording:
    r"""
    Something recorded beside a run (attention maps, concept maps, the input image's pixels as a leaf), asked for by
    a method or by the call.

    Args:
        name (`str`): Where its result lands in [`RunResult.recordings`].
        recorder (`Callable`): `recorder(plan, counter, call_kwargs)` makes the scope that records, sharing the run's
            count of denoiser calls; its `result()` is read after the run.
    """

    name: str
    recorder: Callable[[RunPlan, StepCounter, Dict[str, Any]], ScopedHooks]


@dataclass(frozen=True)
class RunResult:
    r"""
    What one run left.

    Args:
        output: What the pipeline's call returned.
        traced_calls (`int`): Denoiser calls traced.
        denoiser_calls (`int`): Denoiser calls made.
        memory_estimate (`MemoryEstimate`, *optional*): The memory guard's estimate (runs that build a graph).
        recordings (`Dict[str, Any]`): Each recording's result, by its name.
        untraced_outputs (`UntracedDenoiserCache`, *optional*): The untraced calls' outputs (`keep_untraced=True`).
    """

    output: Any
    traced_calls: int = 0
    denoiser_calls: int = 0
    memory_estimate: Optional[MemoryEstimate] = None
    recordings: Dict[str, Any] = field(default_factory=dict)
    untraced_outputs: Optional[UntracedDenoiserCache] = None


def run(
    plan: RunPlan,
    call_kwargs: Dict[str, Any],
    conditioning: Optional[Conditioning] = None,
    recordings: Sequence[Recording] = (),
    keep_untraced: bool = False,
    replay: Optional[UntracedDenoiserCache] = None,
) -> RunResult:
    r"""
    Run `type(pipe).__call__.__wrapped__(pipe, **call_kwargs)` (or the plan's `call`) under the plan's scopes: the
    count of denoiser calls; with `conditioning`, the tracer of the last `n_traced` steps (and the memory guard, when
    it builds a graph); the untraced calls' outputs kept (`keep_untraced`) or replayed from an earlier run
    (`replay`); then each recording's recorder. Scopes are entered in that order and exited in reverse, also after an
    exception; grad mode and the pipeline's progress-bar config are restored.

    Args:
        plan (`RunPlan`): How to run.
        call_kwargs (`dict`): The pipeline call's arguments.
        conditioning (`Callable`, *optional*): What the traced calls take for the prompt's conditioning (see
            [`DenoiserTracer`]); without it no step is traced.
        recordings (`Sequence[Recording]`, *optional*): What to record beside the call.
        keep_untraced (`bool`, *optional*, defaults to `False`): Keep the untraced denoiser calls' outputs.
        replay (`UntracedDenoiserCache`, *optional*): Replay the untraced calls from these outputs.
    """
    pipe, family = plan.pipe, plan.family
    counter = StepCounter(pipe, family.denoiser(pipe), family.calls_per_step(pipe, call_kwargs))
    scopes: List[ScopedHooks] = [counter]
    tracer = guard = untraced = stored = None

    def recomputation():
        # A checkpointed traced call's recomputation, in the backward pass: the stored-weight layers the run's scope
        # found, block checkpointing where the guard asked for it.
        blocks = guard is not None and guard.blocks
        return _recomputation(pipe, family.denoiser(pipe), blocks, stored.layers if stored is not None else None)

    if conditioning is not None:
        tracer = DenoiserTracer(
            pipe,
            family,
            counter,
            plan.n_traced,
            conditioning,
            checkpoint=plan.checkpoint,
            replace=plan.replace,
            grad=plan.graph,
            recompute_under=recomputation,
        )
        scopes.append(tracer)
        if replay is not None:
            scopes.append(replay.replaying(tracer))
        elif keep_untraced:
            untraced = UntracedDenoiserCache()
            scopes.append(untraced.recording(tracer))
        if plan.graph:
            stored = stored_weights_recomputed(pipe)
            scopes.append(stored)
            guard = MemoryGuard(
                pipe,
                family,
                counter,
                plan.n_traced,
                plan.checkpoint,
                plan.size,
                pixels=plan.pixels,
                enforce=plan.check_memory,
                text_lengths=plan.text_lengths,
            )
            scopes.append(guard)
    recorders = {recording.name: recording.recorder(plan, counter, call_kwargs) for recording in recordings}
    scopes.extend(recorders.values())
    grad_before_loop = tracer is not None and plan.graph and plan.pixels
    with progress_bar_disabled(pipe, plan.quiet), torch.no_grad(), contextlib.ExitStack() as stack:
        with torch.set_grad_enabled(grad_before_loop):
            for scope in scopes:
                stack.enter_context(scope)
            # Lists handed over as copies: a pipeline may rewrite them in place (Z-Image templates its prompts).
            call_kwargs = {
                name: list(value) if isinstance(value, list) else value for name, value in call_kwargs.items()
            }
            if plan.call is not None:
                output = plan.call(**call_kwargs)
            else:
                output = type(pipe).__call__.__wrapped__(pipe, **call_kwargs)
    return RunResult(
        output=output,
        traced_calls=tracer.traced_calls if tracer is not None else 0,
        denoiser_calls=counter.calls,
        memory_estimate=guard.estimate if guard is not None else None,
        recordings={name: recorder.result() for name, recorder in recorders.items()},
        untraced_outputs=untraced,
    )


@contextlib.contextmanager
def _recomputation(pipe, model: torch.nn.Module, blocks: bool = True, layers=None):
    # A checkpointed call's recomputation in the backward pass (a traced denoiser call, the decode): quantized and
    # offloaded layers recomputed (`layers`, where already found); with `blocks`, the model's own gradient
    # checkpointing on (it then keeps its blocks' inputs, and the backward pass recomputes one block at a time).
    with stored_weights_recomputed(pipe, layers), BlockCheckpointing(model) if blocks else contextlib.nullcontext():
        yield


def decode(plan: RunPlan, latents: torch.Tensor, generator=None) -> torch.Tensor:
    r"""
    The family's decode of a run's final latents to [-1, 1] images, with the graph back through the traced calls where
    the plan builds one (checkpointed with the plan's checkpointing).
    """

    def run_decode(z: torch.Tensor) -> torch.Tensor:
        return plan.family.decode(plan.pipe, z, generator, plan.size)

    with torch.set_grad_enabled(plan.graph and latents.requires_grad):
        if plan.checkpoint and torch.is_grad_enabled():
            return checkpointed(run_decode, latents, under=lambda: _recomputation(plan.pipe, plan.pipe.vae))
        with stored_weights_recomputed(plan.pipe):
            return run_decode(latents)
