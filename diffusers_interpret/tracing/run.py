"""The one way this library runs a pipeline: its own `__call__`, unwrapped from `@torch.no_grad()`, under scopes."""

import contextlib
from typing import Any, Dict, Sequence

import torch

from .scoped import progress_bar_disabled


def run_pipeline(pipe, call_kwargs: Dict[str, Any], scopes: Sequence = (), grad_before_loop: bool = False, quiet=True):
    r"""
    Run `type(pipe).__call__.__wrapped__(pipe, **call_kwargs)` inside `scopes` (entered in order, exited in reverse,
    also after an exception), with grad mode off, or on until the denoiser hooks switch it per call when
    `grad_before_loop` (to keep the graph of an input image's encoding). The pipeline's progress bar is disabled when
    `quiet`; its config, grad mode and every scope are restored on exit.

    Returns:
        What the pipeline's call returns.
    """
    with progress_bar_disabled(pipe, quiet), torch.no_grad(), contextlib.ExitStack() as stack:
        with torch.set_grad_enabled(grad_before_loop):
            for scope in scopes:
                stack.enter_context(scope)
            return type(pipe).__call__.__wrapped__(pipe, **call_kwargs)
