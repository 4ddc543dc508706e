r"""
The redraws behind the prompt dependence ([`~dependence`]): an image encoded by the pipeline's VAE, noised at each
level with seeded noise and denoised once with its prompt and once with the empty prompt ([`ImageDenoising`]), both
predictions decoded and compared pixel by pixel.
"""

from typing import Any, Dict, List, Optional, Sequence

import torch

from ..dependence import PIXEL_CHANGE, REDRAW_LEVELS, REDRAWS_PER_LEVEL, DependenceMap
from ..families import PipelineFamily
from .denoising import ImageDenoising
from .run import RunPlan, run

# The most pixels the redraws put in one denoiser call or one decode: two 512x512 images, as a guided pipeline call of
# that size holds. Larger images are redrawn one pair at a time.
REDRAW_BATCH_PIXELS = 2 * 512 * 512


def redraw_changes(
    pipe,
    family: PipelineFamily,
    pixels: torch.Tensor,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    levels: Sequence[float] = REDRAW_LEVELS,
    per_level: int = REDRAWS_PER_LEVEL,
    without: Optional[Dict[str, Any]] = None,
) -> DependenceMap:
    r"""
    The [`DependenceMap`] of one image: redrawn from its noised copies with its prompt and with the empty prompt (or,
    with `without`, twice with its prompt: as called, and with the call arguments `without` on top).

    Small images are redrawn several copies to a denoiser call and their pictures decoded together, up to
    `REDRAW_BATCH_PIXELS` a call; each run encodes its prompt once. Redraw `r` (level `r // per_level`) draws its noise
    from seed `r` wherever its rows sit.

    Args:
        pipe: The pipeline.
        family (`PipelineFamily`): Its family.
        pixels (`torch.Tensor`): (1, 3, H, W) in [-1, 1], the image as the pipeline's image processor makes it.
        prompts (`Dict[str, List[str]]`): The image's texts by call argument, one each (`"prompt"`, `"prompt_2"`).
        call_kwargs (`dict`): The pipeline arguments that shape the conditioning (`max_sequence_length`, ...).
        levels (`Sequence[float]`, *optional*): The noise levels of the redraws.
        per_level (`int`, *optional*): Seeded noises per level.
        without (`dict`, *optional*): The call arguments that take away what is measured instead of the prompt
            (a ControlNet's `controlnet_conditioning_scale=0.0`).
    """
    size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    kwargs = {name: value for name, value in call_kwargs.items() if name not in prompts}
    if without is None:  # one run of two rows a copy: the prompt and the empty prompt
        variants = [{name: [values[0], ""] for name, values in prompts.items()}]
    else:
        texts = {name: values[:1] for name, values in prompts.items()}
        variants = [texts, {**texts, **without}]
    with torch.no_grad():
        latents = family.encode_image(pipe, pixels)
    picture = pixels[0].numel() // 3  # the pixels of one picture (a clip's frames included)
    per_call = copies_per_call(per_level, (2 // len(variants)) * picture)
    denoising = ImageDenoising(pipe, family, latents, levels, 0, size, per_level, per_call, average=False)
    plan = RunPlan(pipe=pipe, family=family, size=size, graph=False, check_memory=False, call=denoising)
    predicted = [run(plan, {**kwargs, **variant}).output.images for variant in variants]
    # Rows in pairs: each redraw with and without what is measured.
    predicted = predicted[0] if len(predicted) == 1 else torch.stack(predicted, 1).flatten(0, 1)
    changed = changed_pixels(pipe, family, predicted, size, max(1, REDRAW_BATCH_PIXELS // (2 * picture)))
    return DependenceMap((changed / (len(levels) * per_level)).numpy())


def copies_per_call(copies: int, pixels_per_copy: int) -> int:
    r"""The most noised copies of a level (a divisor of `copies`) whose rows of `pixels_per_copy` pixels fit in
    `REDRAW_BATCH_PIXELS`; at least one."""
    fits = [d for d in range(2, copies + 1) if copies % d == 0 and d * pixels_per_copy <= REDRAW_BATCH_PIXELS]
    return max(fits, default=1)


def changed_pixels(pipe, family: PipelineFamily, predicted: torch.Tensor, size, pairs: int) -> torch.Tensor:
    r"""For each pixel, in how many pairs of `predicted` latents (rows 2r and 2r + 1) it changes by more than
    `PIXEL_CHANGE` once decoded, `pairs` pairs decoded at a time."""
    device = pipe._execution_device  # the predictions wait on the CPU
    changed = torch.zeros(())
    for first in range(0, predicted.shape[0], 2 * pairs):
        with torch.no_grad():
            decoded = family.decode(pipe, predicted[first : first + 2 * pairs].to(device), None, size)
            redrawn = family.unit_image(pipe, decoded).float().cpu()
        changed = changed + ((redrawn[0::2] - redrawn[1::2]).abs().amax(1) > PIXEL_CHANGE).float().sum(0)
    return changed
