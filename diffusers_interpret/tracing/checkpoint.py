"""Gradient checkpointing of a whole call (keep its inputs, recompute it in backward), and of a model's blocks."""

import contextlib
from typing import Callable, ContextManager, Optional, Sequence, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from .scoped import ScopedHooks


class _Recompute(torch.autograd.Function):
    # The forward results were computed without a graph; the backward runs the call again with grad on, from the saved
    # inputs, and back-propagates through that fresh graph alone. Memory per checkpointed call is its inputs. The
    # recomputation and its backward pass both run under `under()`, so that checkpoints nested in the recomputation
    # (the model's own blocks, quantized layers) recompute what they saved under the same settings.

    @staticmethod
    def forward(ctx, run, under, n_outputs, *tensors):
        ctx.run, ctx.under = run, under
        ctx.save_for_backward(*tensors[n_outputs:])
        return tuple(output.detach() for output in tensors[:n_outputs])

    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        needs = [x for x in inputs if x.requires_grad]
        with ctx.under(), torch.enable_grad():
            outputs = ctx.run(*inputs)
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad and g is not None]
            grads = iter(())
            if needs and pairs:
                grads = iter(
                    torch.autograd.grad([o for o, _ in pairs], needs, [g for _, g in pairs], allow_unused=True)
                )
        outputs_none = (None,) * len(grad_outputs)  # the computed outputs given to `forward` take no gradient
        return (None, None, None, *outputs_none, *(next(grads, None) if x.requires_grad else None for x in inputs))


Scope = Callable[[], ContextManager]


def recompute_in_backward(
    run: Callable[..., torch.Tensor], output: torch.Tensor, *inputs: torch.Tensor, under: Optional[Scope] = None
):
    r"""`output` (computed by `run(*inputs)` without a graph) joined to `inputs` by a node that recomputes it, under
    the scope `under()` makes (none by default)."""
    return _Recompute.apply(run, under or contextlib.nullcontext, 1, output, *inputs)[0]


def recompute_many_in_backward(
    run: Callable[..., Sequence[torch.Tensor]],
    outputs: Sequence[torch.Tensor],
    *inputs: torch.Tensor,
    under: Optional[Scope] = None,
) -> Tuple[torch.Tensor, ...]:
    r"""`outputs` (the tensors `run(*inputs)` returns, computed without a graph) joined to `inputs` by one node that
    recomputes them all in the backward pass (a ControlNet's residuals)."""
    return _Recompute.apply(run, under or contextlib.nullcontext, len(outputs), *outputs, *inputs)


def checkpointed(
    run: Callable[..., torch.Tensor], *inputs: torch.Tensor, under: Optional[Scope] = None
) -> torch.Tensor:
    r"""
    `run(*inputs)` computed without keeping its activations; its backward recomputes them (under the scope `under()`
    makes).

    `run` must be deterministic (models in eval mode, no dropout) and return one tensor.
    """
    with torch.no_grad():
        output = run(*inputs)
    if not any(x.requires_grad for x in inputs if isinstance(x, torch.Tensor)) or not torch.is_grad_enabled():
        return output
    return recompute_in_backward(run, output, *inputs, under=under)


class BlockCheckpointing(ScopedHooks):
    r"""
    For the scope, a diffusers model's own gradient checkpointing is on (the `gradient_checkpointing` flag of each of
    its modules that has one, with a non-reentrant `torch.utils.checkpoint`): a call with grad keeps its blocks'
    inputs, and its backward pass recomputes one block at a time, instead of holding every block's activations (the
    VAE's decoder at full image size). The model's own setting is put back on exit.

    Args:
        model (`torch.nn.Module`): A diffusers model (e.g. the pipeline's VAE).
        checkpoint_call (`Callable`, *optional*): `checkpoint_call(block, *args)` runs a block in place of
            `torch.utils.checkpoint` (the memory estimate counts with it).
    """

    def __init__(self, model: torch.nn.Module, checkpoint_call: Optional[Callable] = None):
        super().__init__()
        self.model = model
        self.checkpoint_call = checkpoint_call or _checkpoint_call

    def _install(self) -> None:
        for module in self.model.modules():
            if hasattr(module, "gradient_checkpointing"):
                self.override(module, "_gradient_checkpointing_func", self.checkpoint_call)
                self.override(module, "gradient_checkpointing", True)


def _checkpoint_call(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=False)
