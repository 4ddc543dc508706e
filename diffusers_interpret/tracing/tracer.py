"""Scoped hooks on the denoiser that give the last N calls of the pipeline's own loop a graph back to the prompt."""

from typing import Callable, ContextManager, Dict, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..families import PipelineFamily
from .checkpoint import recompute_many_in_backward
from .scoped import ScopedHooks
from .steps import StepCounter


def _with_rows(full: torch.Tensor, rows: slice, middle: torch.Tensor) -> torch.Tensor:
    # `full` with its rows `rows` replaced by `middle` (concatenation keeps the graph of `middle`).
    return torch.cat([full[: rows.start], middle.to(full.dtype), full[rows.stop :]])


class DenoiserTracer(ScopedHooks):
    r"""
    Scoped hooks on a pipeline's denoiser for one explainer call.

    The pipeline's own loop is run under `torch.no_grad()`. At the first denoiser call of the last `n_traced` steps
    (counted by the shared `counter`), the pre-hook turns grad mode on (the enclosing `no_grad` context restores it
    when the pipeline returns or raises), so the last `n_traced` steps, scheduler updates included, keep their graph.
    On every traced call, each conditioning tensor the family names (e.g. `encoder_hidden_states`, SDXL's pooled
    `text_embeds`) gets, on its prompt rows (the positive half with classifier-free guidance), a zero-valued,
    gradient-carrying term from `conditioning()`: the values the denoiser sees stay bit-identical to the pipeline's
    own, and gradients reach the explained conditioning. With `checkpoint=True`, each traced call runs without keeping
    activations and is recomputed during the backward pass.

    Args:
        pipe: The pipeline whose denoiser is hooked.
        family (`PipelineFamily`): Where the denoiser call carries its sample and conditioning.
        counter (`StepCounter`): The run's shared count of denoiser calls (entered before this tracer).
        n_traced (`int`, *optional*): Number of last denoising steps to trace (every denoiser call of each); `None`
            for all.
        conditioning (`Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]`):
            Given the prompt rows of the denoiser's conditioning tensors (detached), returns the tensors to take
            gradients through, with the same values (up to float rounding) and shapes.
        checkpoint (`bool`, *optional*, defaults to `False`): Recompute each traced call in the backward pass.
        replace (`bool`, *optional*, defaults to `False`):
            Make the traced calls see the values `conditioning()` returns (which may differ from the pipeline's, e.g.
            interpolated or ablated embeddings) instead of adding a zero-valued term.
        grad (`bool`, *optional*, defaults to `True`): Build the traced calls' graph; `False` only swaps values.
        recompute_under (`Callable[[], ContextManager]`, *optional*): With `checkpoint=True`, a scope each call's
            recomputation and its backward pass run under (they run after this scope has exited).
    """

    def __init__(
        self,
        pipe,
        family: PipelineFamily,
        counter: StepCounter,
        n_traced: Optional[int],
        conditioning: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]],
        checkpoint: bool = False,
        replace: bool = False,
        grad: bool = True,
        recompute_under: Optional[Callable[[], ContextManager]] = None,
    ):
        super().__init__()
        self.pipe = pipe
        self.family = family
        self.counter = counter
        self.denoiser = family.denoiser(pipe)
        self.n_traced = n_traced
        self.conditioning = conditioning
        self.checkpoint = checkpoint
        self.replace = replace
        self.grad = grad
        self.recompute_under = recompute_under
        self.controls = family.control_models(pipe)
        self.first_traced: Optional[int] = None
        self._made: Optional[Dict[str, torch.Tensor]] = None
        self._saved: Dict[int, tuple] = {}

    def _install(self) -> None:
        self.first_traced, self._made, self._saved = None, None, {}
        self.hook_forward_pre(self.denoiser, self._pre_hook)
        self.hook_forward(self.denoiser, self._post_hook)
        for control in self.controls:
            self.hook_forward_pre(control, self._control_pre_hook)
            self.hook_forward(control, self._post_hook)

    def _remove(self) -> None:
        self._saved = {}

    @property
    def calls(self) -> int:
        return self.counter.calls

    @property
    def traced_calls(self) -> int:
        return 0 if self.first_traced is None else max(0, self.counter.calls - self.first_traced)

    def is_traced(self, call_index: int) -> bool:
        return self.first_traced is not None and call_index >= self.first_traced

    def _pre_hook(self, module, args, kwargs):
        if self.counter.is_recomputing:
            return None
        index = self.counter.current
        if index == 0:
            self.first_traced = self.counter.first_of_last(self.n_traced)
        if not self.is_traced(index):
            # Untraced steps keep no graph, whatever ran before the loop (e.g. an init image's encoding with grad).
            torch.set_grad_enabled(False)
            return None
        torch.set_grad_enabled(self.grad)
        if self.family.is_prompt_call(
            self.pipe, index, self.counter.calls_per_step
        ):  # not, e.g., true CFG's separate negative-prompt call
            present = self.family.read_conditioning(self.pipe, args, kwargs)
            batch = next(iter(present.values())).shape[0]
            rows = self.family.positive_rows(self.pipe, batch)
            args, kwargs = self.family.write_conditioning(self.pipe, args, kwargs, self._swap(present, rows))
        return self._checkpointing(module, args, kwargs)

    def _control_pre_hook(self, module, args, kwargs):
        # A control model (a ControlNet) runs before the denoiser call it conditions, in the same step: it is traced
        # with that call, reads the same prompt conditioning (gradients reach the prompt through it too), and its
        # outputs carry the graph into the denoiser call.
        if self.counter.is_recomputing:
            return None
        index = self.counter.calls  # the denoiser call this one precedes
        if index == 0 and self.first_traced is None:
            self.first_traced = self.counter.first_of_last(self.n_traced, starting=True)
        if not self.is_traced(index):
            torch.set_grad_enabled(False)
            return None
        torch.set_grad_enabled(self.grad)
        present = self.family.read_conditioning(self.pipe, args, kwargs)
        rows = self.family.control_rows(self.pipe, next(iter(present.values())).shape[0], kwargs)
        args, kwargs = self.family.write_conditioning(self.pipe, args, kwargs, self._swap(present, rows))
        return self._checkpointing(module, args, kwargs)

    def _checkpointing(self, module, args, kwargs):
        if self.checkpoint and self.grad:
            self._saved[id(module)] = (args, kwargs)
            torch.set_grad_enabled(False)
        return args, kwargs

    def _swap(self, present: Dict[str, torch.Tensor], rows: slice) -> Dict[str, torch.Tensor]:
        # The conditioning a traced call sees. The explained prompt rows are made once, at the first traced call, and
        # shared by every traced call (the denoiser's and a control model's).
        if self._made is None:
            prompt_rows = {name: tensor[rows].detach() for name, tensor in present.items()}
            made = self.conditioning(prompt_rows)
            for name, tensor in prompt_rows.items():
                if made[name].shape != tensor.shape:
                    raise RuntimeError(
                        f"The explained `{name}` has shape {tuple(made[name].shape)} but the pipeline's denoiser "
                        f"receives {tuple(tensor.shape)}: this pipeline builds its conditioning in a way the "
                        "explainer does not support."
                    )
            self._made = made
        made = self._made
        if self.replace:
            return {name: _with_rows(present[name], rows, made[name]) for name in present}
        return {
            name: present[name]
            + _with_rows(torch.zeros_like(present[name]), rows, made[name] - made[name].detach()).to(
                present[name].dtype
            )
            for name in present
        }

    def _post_hook(self, module, args, kwargs, output):
        saved = self._saved.pop(id(module), None)
        if self.counter.is_recomputing or not self.checkpoint or saved is None:
            return None
        torch.set_grad_enabled(True)
        # Every tensor of the call's arguments that carries the graph (the sample, the conditioning, a ControlNet's
        # residuals or control image) is an input of the recomputation.
        leaves, spec = tree_flatten(saved)
        positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
        if not positions:
            return None
        family = self.family
        is_denoiser = module is self.denoiser
        outputs = [family.denoiser_output(output)] if is_denoiser else _tensors(output)

        def run(*inputs):
            replaced = list(leaves)
            for position, tensor in zip(positions, inputs):
                replaced[position] = tensor
            call_args, call_kwargs = tree_unflatten(replaced, spec)
            with self.counter.recomputing():
                made = module(*call_args, **call_kwargs)
            return [family.denoiser_output(made)] if is_denoiser else _tensors(made)

        inputs = [leaves[i] for i in positions]
        joined = recompute_many_in_backward(run, outputs, *inputs, under=self.recompute_under)
        if is_denoiser:
            return family.with_denoiser_output(output, joined[0])
        return _with_tensors(output, iter(joined))


def _tensors(output) -> list:
    # The tensors of a control model's output (a tuple of residuals, lists of them), in order.
    return [x for x in tree_flatten(output)[0] if isinstance(x, torch.Tensor)]


def _with_tensors(output, tensors):
    leaves, spec = tree_flatten(output)
    return tree_unflatten([next(tensors) if isinstance(x, torch.Tensor) else x for x in leaves], spec)
