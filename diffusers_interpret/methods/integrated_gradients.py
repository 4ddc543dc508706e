"""Integrated gradients of the prompt's embeddings (and of the input image's pixels)."""

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..target import Target
from ..trace import Trace
from ._utils import regenerated_gradients
from .base import AttributionMethod, Scores


@dataclass
class IntegratedGradients(AttributionMethod):
    r"""
    Integrated gradients (Sundararajan et al., 2017) of a target along the straight path from a baseline to the
    prompt's embeddings (midpoint rule): a token's score is the absolute value of its signed contribution
    `sum_features((x - baseline) * mean_path_gradient)`. The signed contributions, over every position, add up to the
    target's change from the baseline to the prompt (completeness), up to the rule's O(1 / n_steps^2) error; they are
    in `output.signed_scores` and `output.completeness`.

    Cost: `n_steps` generations with the traced calls' graph and their backward passes, `batch_size` at a time (and
    one more generation without a graph for `target="change"`).

    Args:
        n_steps (`int`, *optional*, defaults to 16): Points on the path.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`):
            `"pad"` (attributed tokens replaced by the padding token), `"empty"` (the empty prompt) or a tensor at the
            attribution level.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch; lower it to bound memory.
        target (`str`, *optional*, defaults to `"sum"`):
            `"sum"`: the box's pixel sum (as the gradient methods). `"change"`: the L2 distance of the box's [0, 1]
            pixels from the baseline's image (generated from the same noise), so that contributions add up to how far
            the prompt moved the box, in any colour direction.
        pixel_baseline (`str` or `float`, *optional*, defaults to `"blur"`):
            For img2img / inpainting explainers, input-image pixel attributions are integrated gradients too, along
            the path from a baseline image to the input image, with the prompt unchanged (`n_steps` more
            generations); their completeness is in `output.pixel_completeness`. `"blur"`: the input image
            box-blurred (twice, kernel 1/8 of its size); a float: a flat image of that value in [0, 1]. Flat images
            make a poor baseline for Stable Diffusion's VAE: its group normalizations amplify the tiny variations of
            a nearly flat image, so the path starts with a jump the integral misses.
    """

    n_steps: int = 16
    baseline: Union[str, torch.Tensor] = "pad"
    batch_size: Optional[int] = 8
    target: str = "sum"
    pixel_baseline: Union[str, float] = "blur"
    name = "integrated_gradients"
    summary = "Each token's contribution to the region, integrated from a baseline prompt (contributions add up)."
    one_image_per_call = True
    scores_pixels = True

    def __post_init__(self):
        if int(self.n_steps) < 1:
            raise ValueError(f"`n_steps` must be >= 1, got {self.n_steps}.")
        if self.target not in ("sum", "change"):
            raise ValueError(f"`target` must be 'sum' or 'change', got {self.target!r}.")

    def attribute(self, trace: Trace, target: Target) -> Scores:
        context = trace.regeneration
        inputs, reference = context.inputs, context.baseline(self.baseline)
        alphas = (torch.arange(self.n_steps, dtype=torch.float32, device=inputs.device) + 0.5) / self.n_steps
        path = reference + alphas.to(inputs.dtype)[:, None, None] * (inputs - reference)
        scores = Scores(tokens=[])
        if context.input_pixels is not None:
            pixel_result = self._pixels(context, target, context.input_pixels)
            if pixel_result is not None:
                pixels, pixel_completeness = pixel_result
                scores.pixels, scores.pixel_completeness = [pixels], [pixel_completeness]
        baseline_image = None
        if self.target == "change":
            with torch.no_grad():
                baseline_image = context.box_images(context.generate(reference)).float()
        gradients = regenerated_gradients(
            context, path, target, self.batch_size, "Integrated gradients", reference=baseline_image
        )
        contributions = (inputs - reference)[0].float().cpu() * gradients.mean(0)
        text = context.text_inputs
        signed = np.array([float(contributions[u.position, text.unit_features(u)].sum()) for u in context.units])
        scores.tokens.append(np.abs(signed))
        scores.signed, scores.completeness = [signed], [float(contributions.sum())]
        return scores

    def _pixels(self, context, target, pixels: torch.Tensor):
        # (H, W) absolute channel-summed contributions and their signed total, or None if no gradient reaches them.
        if self.pixel_baseline == "blur":
            kernel = max(3, (max(pixels.shape[-2:]) // 8) | 1)
            reference = pixels
            for _ in range(2):
                reference = torch.nn.functional.avg_pool2d(
                    reference, kernel, stride=1, padding=kernel // 2, count_include_pad=False
                )
        else:
            reference = torch.full_like(pixels, float(self.pixel_baseline))
        alphas = (torch.arange(self.n_steps, dtype=torch.float32, device=pixels.device) + 0.5) / self.n_steps
        path = reference + alphas.to(pixels.dtype)[:, None, None, None] * (pixels - reference)
        gradients = regenerated_gradients(
            context, path, target, self.batch_size, "Pixel IG", generate=context.generate_from_images
        )
        if gradients is None:
            return None
        contributions = (pixels - reference)[0].float().cpu() * gradients.mean(0)
        return contributions.sum(0).abs().numpy(), float(contributions.sum())
