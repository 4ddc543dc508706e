r"""
The call of an existing image's explanation: instead of the pipeline's own loop, the denoiser on the image's latents
noised to a few levels of the schedule (seeded noise), with the prompt's conditioning as the pipeline's own
`encode_prompt` makes it and without guidance, one call per level. It returns the clean latents the denoiser
predicts, averaged over the levels: decoded, the image the model makes of the noised picture given the prompt.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..families import PipelineFamily
from .scoped import ScopedHooks


@dataclass
class DenoisedLatents:
    r"""What a run of [`ImageDenoising`] returns, as a pipeline's latent output: `images`, the predicted clean
    latents (rows, ...)."""

    images: torch.Tensor


class _CallState(ScopedHooks):
    # What the pipeline's own `__call__` sets on itself before its loop, and the shared code reads during it: no
    # guidance (every row of the denoiser's batch is a prompt row) and the number of denoiser calls.
    def __init__(self, pipe, calls: int):
        super().__init__()
        self.pipe, self.calls = pipe, calls

    def _install(self) -> None:
        self.override(self.pipe, "_guidance_scale", 1.0)
        self.override(self.pipe, "_num_timesteps", self.calls)


class ImageDenoising:
    r"""
    The denoiser on an existing image, noised at each of `levels`, as the call of a run (`RunPlan.call`).

    Args:
        pipe: The pipeline.
        family (`PipelineFamily`): Its family.
        latents (`torch.Tensor`): The image's latents as the denoiser reads them (`family.encode_image`), one row.
        levels (`Sequence[float]`): Noise levels in (0, 1) (the share of the schedule's noise), one denoiser call each.
        seed (`int`): Seed of the noise: level `k` draws its noise from `torch.Generator().manual_seed(seed + k)` on
            the CPU (alike on every device).
        size (`Tuple[int, int]`): The image's (height, width).
    """

    def __init__(self, pipe, family: PipelineFamily, latents: torch.Tensor, levels: Sequence[float], seed: int, size):
        self.pipe = pipe
        self.family = family
        self.latents = latents
        self.levels = [float(level) for level in levels]
        self.size: Tuple[int, int] = tuple(size)
        self.noises: List[torch.Tensor] = [
            family.draw_noise(pipe, latents, torch.Generator().manual_seed(int(seed) + k), self.size)
            for k in range(len(self.levels))
        ]

    def noised(self, level_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The image's latents noised to level `level_index`, and the denoiser's timestep there."""
        return self.family.noised(self.pipe, self.latents, self.noises[level_index], self.levels[level_index])

    def __call__(self, prompt, **call_kwargs: Any) -> DenoisedLatents:
        r"""The denoiser calls for `prompt` (a text, or one per row: every row sees the same noised image) with the
        pipeline arguments that shape the conditioning (`prompt_2`, `max_sequence_length`, `clip_skip`, ...)."""
        pipe, family = self.pipe, self.family
        prompts: Dict[str, List[str]] = {"prompt": [prompt] if isinstance(prompt, str) else list(prompt)}
        rows = len(prompts["prompt"])
        for name in family.prompt_arguments(pipe)[1:]:
            if call_kwargs.get(name) is not None:
                texts = call_kwargs[name]
                prompts[name] = [texts] * rows if isinstance(texts, str) else list(texts)
        denoiser = family.denoiser(pipe)
        predictions = []
        with _CallState(pipe, len(self.levels)):
            with torch.no_grad():
                conditioning = family.encode(pipe, prompts, call_kwargs, self.latents.device)
            for index, level in enumerate(self.levels):
                noised, timestep = self.noised(index)
                noised = noised.expand(rows, *noised.shape[1:])
                arguments = family.denoiser_arguments(pipe, noised, timestep, conditioning, self.size, call_kwargs)
                prediction = family.denoiser_output(denoiser(**arguments))
                predictions.append(family.predicted_clean(pipe, noised, prediction, level))
        return DenoisedLatents(torch.stack(predictions).mean(0))
