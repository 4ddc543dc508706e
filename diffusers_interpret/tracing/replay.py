"""Keep the denoiser's outputs at the untraced calls of a run, to run the same call again without them."""

import torch

from .scoped import ScopedHooks


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detached(item) for item in output)
    if hasattr(output, "sample"):
        return type(output)(sample=output.sample.detach())
    return output


class UntracedDenoiserCache:
    r"""
    The denoiser's outputs at the untraced calls of one explainer call.

    Inside `recording(tracer)` the untraced calls run and their outputs are kept (detached; latent-sized, a few
    hundred kilobytes per step for Stable Diffusion at 512x512). Inside `replaying(tracer)` the untraced calls return
    the kept outputs without running the denoiser; traced calls run as usual. With the same initial noise, the loop
    then reaches the traced steps with exactly the latents of the first call, having run only the traced steps.
    """

    def __init__(self):
        self.outputs: dict = {}

    def recording(self, tracer) -> "_DenoiserOverride":
        return _DenoiserOverride(self, tracer, replay=False)

    def replaying(self, tracer) -> "_DenoiserOverride":
        return _DenoiserOverride(self, tracer, replay=True)


class _DenoiserOverride(ScopedHooks):
    # The denoiser's `forward`, overridden on the instance for the scope: untraced calls are recorded or replayed.

    def __init__(self, cache: UntracedDenoiserCache, tracer, replay: bool):
        super().__init__()
        self.cache = cache
        self.tracer = tracer
        self.replay = replay

    def _install(self) -> None:
        denoiser, tracer, outputs = self.tracer.denoiser, self.tracer, self.cache.outputs
        original = denoiser.forward

        def forward(*args, **kwargs):
            index = tracer.counter.current  # the counter's pre-hook has counted this call
            if tracer.counter.is_recomputing or tracer.is_traced(index):
                return original(*args, **kwargs)
            if self.replay:
                if index not in outputs:
                    raise RuntimeError("The call being replayed makes more denoiser calls than the one recorded.")
                return outputs[index]
            output = original(*args, **kwargs)
            outputs[index] = _detached(output)
            return output

        self.override(denoiser, "forward", forward)
