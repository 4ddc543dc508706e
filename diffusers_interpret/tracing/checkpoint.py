"""Gradient checkpointing of a whole call: keep its inputs, recompute its activations in the backward pass."""

from typing import Callable

import torch


class _Recompute(torch.autograd.Function):
    # The forward result was computed without a graph; the backward runs the call again with grad on, from the saved
    # inputs, and back-propagates through that fresh graph alone. Memory per checkpointed call is its inputs.

    @staticmethod
    def forward(ctx, run, output, *inputs):
        ctx.run = run
        ctx.save_for_backward(*inputs)
        return output.detach()

    @staticmethod
    def backward(ctx, grad_output):
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        with torch.enable_grad():
            output = ctx.run(*inputs)
        needs = [x for x in inputs if x.requires_grad]
        grads = iter(torch.autograd.grad(output, needs, grad_output, allow_unused=True)) if needs else iter(())
        return (None, None, *(next(grads) if x.requires_grad else None for x in inputs))


def recompute_in_backward(run: Callable[..., torch.Tensor], output: torch.Tensor, *inputs: torch.Tensor):
    r"""`output` (computed by `run(*inputs)` without a graph) joined to `inputs` by a node that recomputes it."""
    return _Recompute.apply(run, output, *inputs)


def checkpointed(run: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    r"""
    `run(*inputs)` computed without keeping its activations; its backward recomputes them.

    `run` must be deterministic (models in eval mode, no dropout) and return one tensor.
    """
    with torch.no_grad():
        output = run(*inputs)
    if not any(x.requires_grad for x in inputs if isinstance(x, torch.Tensor)) or not torch.is_grad_enabled():
        return output
    return _Recompute.apply(run, output, *inputs)
