"""Scoped hooks on the pipeline's own modules. Every one is removed (and every state restored) on exit."""

import contextlib
import copy
from typing import Callable, List, Optional, Sequence

import torch


class _Recompute(torch.autograd.Function):
    # Gradient checkpointing of a whole call: the forward result was computed without a graph; the backward runs the
    # call again with grad on, from the saved inputs, and back-propagates through that fresh graph alone. Memory per
    # checkpointed call is its inputs, not its activations.

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


@contextlib.contextmanager
def leaf_input_embeddings(text_encoder: torch.nn.Module, store: List[torch.Tensor]):
    r"""
    Within the block, every output of the text encoder's input (token) embedding layer is replaced by a leaf tensor
    that requires grad, appended to `store`; the text encoder then runs on from it, keeping its graph.
    """

    def hook(module, args, output):
        leaf = output.detach().requires_grad_(True)
        store.append(leaf)
        return leaf

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def leaf_preprocessed_image(image_processor, store: dict, key: str = "pixels"):
    r"""
    Within the block, the image processor's `preprocess` returns its usual tensor (bit-identical values) plus a
    zero-valued term that carries the gradient to a leaf: the [0, 1] pixels of the preprocessed image, stored in
    `store[key]` (first call only). The override is an instance attribute, deleted on exit.
    """
    original = image_processor.preprocess
    had_instance_attribute = "preprocess" in vars(image_processor)

    def preprocess(*args, **kwargs):
        processed = original(*args, **kwargs)
        if key in store or processed.shape[1] != 3:
            return processed
        with torch.enable_grad():
            pixels = ((processed.detach().float() + 1) / 2).requires_grad_(True)
            store[key] = pixels
            normalized = pixels * 2 - 1
            return processed + (normalized - normalized.detach()).to(processed.dtype)

    image_processor.preprocess = preprocess
    try:
        yield store
    finally:
        if had_instance_attribute:
            image_processor.preprocess = original
        else:
            del image_processor.preprocess


@contextlib.contextmanager
def progress_bar_disabled(pipe, disable: bool):
    """Disable the pipeline's progress bar within the block and restore the pipeline's own config after it."""
    had_config = hasattr(pipe, "_progress_bar_config")
    saved = copy.deepcopy(getattr(pipe, "_progress_bar_config", None))
    if disable:
        pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if had_config:
            pipe._progress_bar_config = saved
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config


class DenoiserTracer:
    r"""
    Scoped forward hooks on a pipeline's denoiser (UNet) for one explainer call.

    The pipeline's own loop is run under `torch.no_grad()`. At the first of the last `n_traced` denoiser calls, the
    pre-hook turns grad mode on (the enclosing `no_grad` context restores it when the pipeline returns or raises), so
    the last `n_traced` steps, scheduler updates included, keep their graph. On every traced call the prompt's
    positive half of `encoder_hidden_states` gets a zero-valued, gradient-carrying term added from
    `positive_embeddings()`: the values the UNet sees stay bit-identical to the pipeline's own, and gradients reach
    the explained embeddings. With `checkpoint=True`, each traced call runs without keeping activations and is
    recomputed during the backward pass.

    Args:
        pipe: The pipeline whose `unet` is hooked; `pipe.num_timesteps` gives the number of denoiser calls.
        n_traced (`int`, *optional*): Number of last denoiser calls to trace; `None` for all.
        positive_embeddings (`Callable[[torch.Tensor], torch.Tensor]`):
            Given the positive half of the pipeline's `encoder_hidden_states` (detached), returns the tensor to take
            gradients through, with the same values (up to float rounding) and shape.
        checkpoint (`bool`, *optional*, defaults to `False`): Recompute each traced call in the backward pass.
        replace (`bool`, *optional*, defaults to `False`):
            Make the traced calls see the values `positive_embeddings()` returns (which may differ from the
            pipeline's, e.g. interpolated or ablated embeddings) instead of adding a zero-valued term.
        grad (`bool`, *optional*, defaults to `True`): Build the traced calls' graph; `False` only swaps values.
    """

    def __init__(
        self,
        pipe,
        n_traced: Optional[int],
        positive_embeddings: Callable,
        checkpoint: bool = False,
        replace: bool = False,
        grad: bool = True,
    ):
        self.pipe = pipe
        self.replace = replace
        self.grad = grad
        self.unet = pipe.unet
        self.n_traced = n_traced
        self.positive_embeddings = positive_embeddings
        self.checkpoint = checkpoint
        self.calls = 0
        self.first_traced: Optional[int] = None
        self.total_calls: Optional[int] = None
        self._delta: Optional[torch.Tensor] = None
        self._saved = None
        self._recomputing = False
        self._handles: Sequence = ()

    def __enter__(self):
        self._handles = (
            self.unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            self.unet.register_forward_hook(self._post_hook, with_kwargs=True),
        )
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = ()
        self._saved = None
        return False

    @property
    def traced_calls(self) -> int:
        return 0 if self.first_traced is None else max(0, self.calls - self.first_traced)

    def _is_traced(self, call_index: int) -> bool:
        return self.first_traced is not None and call_index >= self.first_traced

    def _pre_hook(self, module, args, kwargs):
        if self._recomputing:
            return None
        index = self.calls
        self.calls += 1
        if index == 0:
            total = int(getattr(self.pipe, "num_timesteps", 0) or 0)
            self.total_calls = total
            n = total if self.n_traced is None else min(self.n_traced, total)
            self.first_traced = total - n if n > 0 else None
        if not self._is_traced(index):
            # Untraced steps keep no graph, whatever ran before the loop (e.g. an init image's encoding with grad).
            torch.set_grad_enabled(False)
            return None

        torch.set_grad_enabled(self.grad)
        if "encoder_hidden_states" in kwargs:
            hidden = kwargs["encoder_hidden_states"]
        else:
            hidden = args[2]
        hidden = self._with_gradient_path(hidden)
        if "encoder_hidden_states" in kwargs:
            kwargs = {**kwargs, "encoder_hidden_states": hidden}
        else:
            args = (*args[:2], hidden, *args[3:])

        if self.checkpoint and self.grad:
            self._saved = (args, kwargs)
            torch.set_grad_enabled(False)
        return args, kwargs

    def _with_gradient_path(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._delta is None:
            positive = self._positive_half(hidden)
            graph = self.positive_embeddings(positive.detach())
            if graph.shape != positive.shape:
                raise RuntimeError(
                    f"The explained prompt embeddings have shape {tuple(graph.shape)} but the pipeline's denoiser "
                    f"receives {tuple(positive.shape)}: this pipeline builds its conditioning in a way the explainer "
                    "does not support."
                )
            if self.replace:
                if hidden.shape[0] != positive.shape[0]:
                    graph = torch.cat([hidden.chunk(2)[0], graph.to(hidden.dtype)])
                self._delta = graph.to(hidden.dtype)
                return self._delta
            delta = graph - graph.detach()
            if hidden.shape[0] != positive.shape[0]:
                delta = torch.cat([torch.zeros_like(positive), delta])
            self._delta = delta.to(hidden.dtype)
        return self._delta if self.replace else hidden + self._delta

    def _positive_half(self, hidden: torch.Tensor) -> torch.Tensor:
        # With classifier-free guidance the pipelines concatenate [negative, positive] along the batch.
        if getattr(self.pipe, "do_classifier_free_guidance", False):
            return hidden.chunk(2)[1]
        return hidden

    def _post_hook(self, module, args, kwargs, output):
        if self._recomputing or not self.checkpoint or self._saved is None:
            return None
        torch.set_grad_enabled(True)
        saved_args, saved_kwargs = self._saved
        self._saved = None
        sample = saved_kwargs["sample"] if "sample" in saved_kwargs else saved_args[0]
        hidden = saved_kwargs["encoder_hidden_states"] if "encoder_hidden_states" in saved_kwargs else saved_args[2]

        def run(sample_, hidden_):
            call_args, call_kwargs = list(saved_args), dict(saved_kwargs)
            if "sample" in call_kwargs:
                call_kwargs["sample"] = sample_
            else:
                call_args[0] = sample_
            if "encoder_hidden_states" in call_kwargs:
                call_kwargs["encoder_hidden_states"] = hidden_
            else:
                call_args[2] = hidden_
            self._recomputing = True
            try:
                result = module(*call_args, **call_kwargs)
            finally:
                self._recomputing = False
            return result[0] if isinstance(result, tuple) else result.sample

        noise = output[0] if isinstance(output, tuple) else output.sample
        if not (sample.requires_grad or hidden.requires_grad):
            return None
        noise = _Recompute.apply(run, noise, sample, hidden)
        if isinstance(output, tuple):
            return (noise, *output[1:])
        output.sample = noise
        return output


class UntracedDenoiserCache:
    r"""
    The denoiser's outputs at the untraced calls of one explainer call, to run the same call again without them.

    Inside `recording(tracer)` the untraced calls run and their outputs are kept (detached; latent-sized, a few
    hundred kilobytes per step for Stable Diffusion at 512x512). Inside `replaying(tracer)` the untraced calls return
    the kept outputs without running the denoiser; traced calls run as usual. With the same initial noise, the loop
    then reaches the traced steps with exactly the latents of the first call, having run only the traced steps. Both
    override the denoiser's `forward` on the instance only, and delete the override on exit.
    """

    def __init__(self):
        self.outputs: dict = {}

    @contextlib.contextmanager
    def _override(self, tracer: "DenoiserTracer", replay: bool):
        unet = tracer.unet
        original = unet.forward
        had_instance_attribute = "forward" in vars(unet)

        def forward(*args, **kwargs):
            index = tracer.calls - 1  # the tracer's pre-hook has counted this call
            if tracer._recomputing or tracer._is_traced(index):
                return original(*args, **kwargs)
            if replay:
                if index not in self.outputs:
                    raise RuntimeError("The call being replayed makes more denoiser calls than the one recorded.")
                return self.outputs[index]
            output = original(*args, **kwargs)
            self.outputs[index] = _detached(output)
            return output

        unet.forward = forward
        try:
            yield self
        finally:
            if had_instance_attribute:
                unet.forward = original
            else:
                del unet.forward

    def recording(self, tracer: "DenoiserTracer"):
        return self._override(tracer, replay=False)

    def replaying(self, tracer: "DenoiserTracer"):
        return self._override(tracer, replay=True)


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detached(item) for item in output)
    if hasattr(output, "sample"):
        return type(output)(sample=output.sample.detach())
    return output
