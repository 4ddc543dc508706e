r"""
The call of an existing image's explanation: instead of the pipeline's own loop, the denoiser on the image's latents
noised to a few levels of the schedule (seeded noise), with the prompt's conditioning as the pipeline's own
`encode_prompt` makes it and without guidance, one denoiser call per level. It returns the clean latents the denoiser
predicts, averaged over the levels: decoded, the image the model makes of the noised picture given the prompt. The
prompt dependence's redraws ([`~tracing.redraw`]) run the same call with several noised copies per level, each kept.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
        levels (`Sequence[float]`): Noise levels in (0, 1) (the share of the schedule's noise).
        seed (`int`): Seed of the noise: copy `k` of level `i` draws its noise from
            `torch.Generator().manual_seed(seed + i * copies + k)` on the CPU (alike on every device).
        size (`Tuple[int, int]`): The image's (height, width).
        copies (`int`, *optional*, defaults to 1): Noised copies of the image per level, each with its own noise.
        copies_per_call (`int`, *optional*): Copies denoised in one denoiser call (their rows side by side; a
            divisor of `copies`, which it defaults to): more rows per call, fewer calls.
        average (`bool`, *optional*, defaults to `True`): Return the predictions averaged over levels and copies
            (prompt rows, ...); `False`: each of them, (levels x copies x prompt rows, ...) in that order.
    """

    def __init__(
        self,
        pipe,
        family: PipelineFamily,
        latents: torch.Tensor,
        levels: Sequence[float],
        seed: int,
        size,
        copies: int = 1,
        copies_per_call: Optional[int] = None,
        average: bool = True,
    ):
        copies_per_call = copies if copies_per_call is None else int(copies_per_call)
        if copies < 1 or copies_per_call < 1 or copies % copies_per_call:
            raise ValueError(f"`copies_per_call` ({copies_per_call}) must divide `copies` ({copies}).")
        self.pipe = pipe
        self.family = family
        self.latents = latents
        self.levels = [float(level) for level in levels]
        self.size: Tuple[int, int] = tuple(size)
        self.seed, self.copies, self.copies_per_call, self.average = int(seed), int(copies), copies_per_call, average

    def noised(self, level_index: int, copy: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The image's latents noised to level `level_index` (its noised copy `copy`), and the denoiser's timestep
        there. The noise is drawn again at each call (the same from its seed): none is held between calls."""
        generator = torch.Generator().manual_seed(self.seed + level_index * self.copies + copy)
        noise = self.family.draw_noise(self.pipe, self.latents, generator, self.size)
        return self.family.noised(self.pipe, self.latents, noise, self.levels[level_index])

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
        # Copies side by side in one call: the prompt rows, encoded once, repeated once per copy (copy-major).
        batch = self.copies_per_call
        denoiser = family.denoiser(pipe)
        predictions = []
        with _CallState(pipe, len(self.levels) * self.copies // batch):
            with torch.no_grad():
                conditioning = _repeated(family.encode(pipe, prompts, call_kwargs, self.latents.device), rows, batch)
            for index, level in enumerate(self.levels):
                for first in range(0, self.copies, batch):
                    copies = [self.noised(index, copy) for copy in range(first, first + batch)]
                    timestep = copies[0][1]
                    sample = torch.cat([noised.expand(rows, *noised.shape[1:]) for noised, _ in copies])
                    arguments = family.denoiser_arguments(pipe, sample, timestep, conditioning, self.size, call_kwargs)
                    prediction = family.denoiser_output(denoiser(**arguments))
                    clean = family.predicted_clean(pipe, sample, prediction, level)
                    # Kept apart, the predictions wait on the CPU (a real clip's latents are large).
                    predictions.append(clean if self.average else clean.cpu())
        if not self.average:
            return DenoisedLatents(torch.cat(predictions))
        return DenoisedLatents(torch.cat(predictions).unflatten(0, (-1, rows)).mean(0))


def _repeated(conditioning: Dict[str, Any], rows: int, times: int) -> Dict[str, Any]:
    # Each entry's `rows` prompt rows repeated `times` times (copy-major), as the texts repeated would have been
    # encoded; an entry without a row per prompt (none today) is left as it is.
    if times == 1:
        return conditioning
    repeated = {}
    for name, value in conditioning.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            value = torch.cat([value] * times)
        elif isinstance(value, (list, tuple)) and len(value) == rows:
            value = type(value)(list(value) * times)
        repeated[name] = value
    return repeated
