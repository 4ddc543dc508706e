"""Scoped hooks on the denoiser that give the last N calls of the pipeline's own loop a graph back to the prompt."""

from typing import Callable, ContextManager, Dict, Optional

import torch

from ..families import PipelineFamily
from .checkpoint import recompute_in_backward
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
        self.first_traced: Optional[int] = None
        self._swapped: Optional[Dict[str, torch.Tensor]] = None
        self._saved = None

    def _install(self) -> None:
        self.first_traced, self._swapped, self._saved = None, None, None
        self.hook_forward_pre(self.denoiser, self._pre_hook)
        self.hook_forward(self.denoiser, self._post_hook)

    def _remove(self) -> None:
        self._saved = None

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
            args, kwargs = self.family.write_conditioning(self.pipe, args, kwargs, self._swap(present))
        if self.checkpoint and self.grad:
            self._saved = (args, kwargs)
            torch.set_grad_enabled(False)
        return args, kwargs

    def _swap(self, present: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # The conditioning the traced call sees. The swapped-in terms are made once, at the first traced call.
        if self._swapped is None:
            batch = next(iter(present.values())).shape[0]
            rows = self.family.positive_rows(self.pipe, batch)
            prompt_rows = {name: tensor[rows].detach() for name, tensor in present.items()}
            made = self.conditioning(prompt_rows)
            for name, tensor in prompt_rows.items():
                if made[name].shape != tensor.shape:
                    raise RuntimeError(
                        f"The explained `{name}` has shape {tuple(made[name].shape)} but the pipeline's denoiser "
                        f"receives {tuple(tensor.shape)}: this pipeline builds its conditioning in a way the "
                        "explainer does not support."
                    )
            if self.replace:
                self._swapped = {name: _with_rows(present[name], rows, made[name]) for name in present}
            else:
                self._swapped = {
                    name: _with_rows(torch.zeros_like(present[name]), rows, made[name] - made[name].detach())
                    for name in present
                }
        if self.replace:
            return self._swapped
        return {name: present[name] + self._swapped[name].to(present[name].dtype) for name in present}

    def _post_hook(self, module, args, kwargs, output):
        if self.counter.is_recomputing or not self.checkpoint or self._saved is None:
            return None
        torch.set_grad_enabled(True)
        saved_args, saved_kwargs = self._saved
        self._saved = None
        family = self.family
        sample = family.read_sample(saved_args, saved_kwargs)
        conditioning = family.read_conditioning(self.pipe, saved_args, saved_kwargs)
        names = list(conditioning)

        def run(sample_, *conditioning_):
            call_args, call_kwargs = family.write_sample(saved_args, saved_kwargs, sample_)
            call_args, call_kwargs = family.write_conditioning(
                self.pipe, call_args, call_kwargs, dict(zip(names, conditioning_))
            )
            with self.counter.recomputing():
                return family.denoiser_output(module(*call_args, **call_kwargs))

        inputs = [sample, *conditioning.values()]
        if not any(x.requires_grad for x in inputs):
            return None
        noise = recompute_in_backward(run, family.denoiser_output(output), *inputs, under=self.recompute_under)
        return family.with_denoiser_output(output, noise)
