"""The one base of every scoped change to a pipeline: installed on enter, removed on exit, also after an exception."""

import contextlib
import inspect
import logging
import threading
import weakref
from typing import Any, Callable, Dict, List, Tuple

import torch


class ScopedHooks:
    r"""
    A context manager that changes a pipeline's modules for the length of a `with` block.

    Subclasses install their changes in `_install()` with `hook_forward_pre`, `hook_forward` and `override`; every
    hook handle and attribute override taken that way is removed on exit, in reverse order, even when the block (or
    `_install` itself) raises. `_remove()` runs first, for state of the subclass's own. One scope is active at a time.
    """

    def __init__(self):
        self._handles: List[Any] = []
        self._overrides: List[Tuple[Any, str, bool, Any]] = []
        self._active = False

    @property
    def active(self) -> bool:
        r"""Whether the scope is entered (and not yet exited)."""
        return self._active

    # -- what subclasses use --------------------------------------------------------------------------------------
    def hook_forward_pre(self, module: torch.nn.Module, hook: Callable, prepend: bool = False) -> None:
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend))

    def hook_forward(self, module: torch.nn.Module, hook: Callable, with_kwargs: bool = True) -> None:
        self._handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))

    def override(self, owner: Any, name: str, value: Any) -> Any:
        r"""Set `owner.name = value` on the instance for the scope; returns what `owner.name` was (`None` where the
        owner had no such attribute: it is deleted again on exit)."""
        original = getattr(owner, name, None)
        self._overrides.append((owner, name, name in vars(owner), original))
        setattr(owner, name, value)
        return original

    def _install(self) -> None:
        pass

    def _remove(self) -> None:
        pass

    # -- scope ----------------------------------------------------------------------------------------------------
    def __enter__(self):
        if self._active:
            raise RuntimeError(f"This {type(self).__name__} is already active: use a new one per pipeline call.")
        self._active = True
        try:
            self._install()
        except BaseException:
            self._exit()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._exit()
        return False

    def _exit(self) -> None:
        try:
            self._remove()
        finally:
            for handle in reversed(self._handles):
                handle.remove()
            for owner, name, had_instance_attribute, original in reversed(self._overrides):
                if had_instance_attribute:
                    setattr(owner, name, original)
                else:
                    delattr(owner, name)
            self._handles, self._overrides = [], []
            self._active = False


@contextlib.contextmanager
def progress_bar_disabled(pipe, disable: bool):
    """Disable the pipeline's progress bar within the block and restore the pipeline's own config after it."""
    had_config = hasattr(pipe, "_progress_bar_config")
    # A shallow copy: the config may hold a file object (`file=sys.stderr`), which cannot be deep-copied.
    saved = dict(pipe._progress_bar_config) if had_config else None
    if disable:
        pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if had_config:
            pipe._progress_bar_config = saved
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config


_TRUNCATION_NOTE = "The following part of your input was truncated"


class _OnceFilter(logging.Filter):
    # Lets the first truncation note through, drops the repeats (one per text-encoder pass of the same prompt).
    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.getMessage()).startswith(_TRUNCATION_NOTE):
            return True
        first, self.seen = not self.seen, True
        return first


@contextlib.contextmanager
def truncation_noted_once(pipe):
    r"""Within the block, diffusers' note that a prompt was truncated is printed once, not once per text-encoder pass
    (an explanation encodes the prompt many times: forward-mode passes, regenerations, redraws)."""
    once = _OnceFilter()
    loggers = [
        logging.getLogger(cls.__module__) for cls in type(pipe).__mro__ if cls.__module__.startswith("diffusers.")
    ]
    for logger in loggers:
        logger.addFilter(once)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(once)


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def pipeline_lock(pipe) -> threading.RLock:
    r"""
    The one lock of `pipe`'s scoped changes. Hooks on a module are seen by every thread, so two threads explaining
    with one pipeline take turns (the same thread may enter again, e.g. a re-explanation inside a call).
    """
    with _LOCKS_LOCK:
        lock = _LOCKS.get(pipe)
        if lock is None:
            lock = _LOCKS[pipe] = threading.RLock()
        return lock


def call_arguments(module: torch.nn.Module, args: tuple, kwargs: dict) -> Dict[str, object]:
    r"""A module call's arguments by name (positional ones included, those its `**kwargs` took among them), defaults
    left out."""
    signature = inspect.signature(module.forward)
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:  # e.g. `Attention`'s `**cross_attention_kwargs`
            arguments.update(arguments.pop(name, {}))
    return arguments
