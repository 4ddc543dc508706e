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
    if without is None:  # one batch of two rows: the prompt and the empty prompt
        variants = [{name: [values[0], ""] for name, values in prompts.items()}]
    else:
        texts = {name: values[:1] for name, values in prompts.items()}
        variants = [texts, {**texts, **without}]
    with torch.no_grad():
        latents = family.encode_image(pipe, pixels)
    changed = 0.0
    count = 0
    for level in levels:
        for _ in range(per_level):
            denoising = ImageDenoising(pipe, family, latents, [level], count, size)
            plan = RunPlan(pipe=pipe, family=family, size=size, graph=False, check_memory=False, call=denoising)
            predicted = torch.cat([run(plan, {**kwargs, **variant}).output.images for variant in variants])
            with torch.no_grad():
                redrawn = family.unit_image(pipe, family.decode(pipe, predicted, None, size)).float().cpu()
            changed = changed + ((redrawn[0] - redrawn[1]).abs().amax(0) > PIXEL_CHANGE).float()
            count += 1
    return DependenceMap((changed / count).numpy())
