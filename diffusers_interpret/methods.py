r"""
Token attribution methods, selectable with `attribution_method=` as a name or as an object with parameters.

| method | name | cost (one image, N traced denoiser calls) |
|---|---|---|
| [`AttentionScore`] (default) | `"attention"` | 1 generation recording cross-attention (about 1.03x a plain one) |
| [`GradientAggregation`] | `"grad_x_input"`, `"max_grad"`, `"mean_grad"`, `"min_grad"` | 1 generation, 1 backward |
| [`IntegratedGradients`] | `"integrated_gradients"` | 1 generation + `n_steps` with N traced, `n_steps` backward |
| [`SmoothGrad`] | `"smoothgrad"` | 1 generation + `n_samples` with N traced, `n_samples` backward |
| [`TokenAblation`] | `"ablation"` | 1 + (number of tokens) generations, no backward |
| [`JacobianNorm`] | `"jacobian_norm"` | 1 generation with N traced calls, `n_probes` backward passes |

The perturbation methods (integrated gradients, SmoothGrad, ablation) regenerate from the explained call's own noise in
batches of `batch_size` images, changing the prompt's embeddings at the traced denoiser calls only (all of them with
`n_last_diffusion_steps_to_consider_for_attributions=None`), and explain one image per call. How truthful each is on
the shipped toy model, and what it costs: docs/methods.md (`benchmarks/faithfulness.py`).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .attribution import AttributionMethods, aggregate, parse_attribution_method
from .perturbation import PerturbationContext, chunks


class AttributionMethod:
    r"""Base of the method objects. `name` is what outputs report as `attribution_method`."""

    name: str = ""
    # True: the scores come from the explained call's own gradient (one backward pass); False: from `token_scores`.
    uses_call_gradient: bool = False
    # True: needs a `PerturbationContext` (regenerations from the same noise), hence one image per call.
    regenerates: bool = True

    def token_scores(self, context: PerturbationContext, box, image: torch.Tensor) -> Tuple[np.ndarray, Dict]:
        r"""
        Scores of the attributed tokens (`context.positions`) for the region `box` of `image`.

        Args:
            context (`PerturbationContext`): How to generate the explained image again with other embeddings.
            box: The normalized box `((x0, y0), (x1, y1))` or `None` for the whole image.
            image (`torch.Tensor`): The explained image, (1, 3, H, W) in [0, 1].

        Returns:
            `(scores, extras)`: non-negative scores, one per attributed token, and method-specific extras.
        """
        raise NotImplementedError


@dataclass
class GradientAggregation(AttributionMethod):
    r"""
    The original 0.5.0's methods: one backward pass of the box's pixel sum, gradients reduced per token.

    Args:
        aggregation (`str`, *optional*, defaults to `"grad_x_input"`): `"grad_x_input"`, `"max_grad"`, `"mean_grad"`
            or `"min_grad"` (see [`AttributionMethods`]).
    """

    aggregation: Union[str, AttributionMethods] = AttributionMethods.GRAD_X_INPUT
    uses_call_gradient = True
    regenerates = False

    def __post_init__(self):
        self.aggregation = parse_attribution_method(self.aggregation)

    @property
    def name(self) -> str:
        return self.aggregation.value


def _batched_gradients(
    context: PerturbationContext, rows: torch.Tensor, box, batch_size, desc: str, reference=None, generate=None
) -> Optional[torch.Tensor]:
    # Gradient of each row's target with respect to that row, generating `batch_size` rows at a time with `generate`
    # (`context.generate`, from embeddings, by default: there a missing graph is an error; with another `generate`
    # it gives None). The target is the box's pixel sum, or with a `reference` image the L2 distance of the box's
    # pixels from the reference's.
    from tqdm.auto import tqdm

    from .box import box_mask

    gradients = []
    pieces = chunks(rows.shape[0], batch_size)
    verbose = context.explainer.verbose and len(pieces) > 1
    for piece in tqdm(pieces, desc=desc, disable=not verbose, leave=False):
        leaf = rows[piece.start : piece.stop].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            decoded = (generate or context.generate)(leaf)
            if not decoded.requires_grad:
                if generate is not None:
                    return None
                raise RuntimeError("No gradient reaches the prompt: trace at least one denoiser call.")
            if reference is None:
                gradient = context.explainer._backward(decoded, box, {"rows": leaf})["rows"]
            else:
                images = context.box_images(decoded).float()
                mask = box_mask(box, images.shape[-2], images.shape[-1], device=images.device)
                distance = ((images - reference.to(images.device)) * mask).flatten(1).pow(2).sum(1).add(1e-12).sqrt()
                gradient = torch.autograd.grad(distance.sum(), leaf)[0].float().cpu()
        gradients.append(gradient)
    return torch.cat(gradients)


@dataclass
class IntegratedGradients(AttributionMethod):
    r"""
    Integrated gradients (Sundararajan et al., 2017) of a target along the straight path from a baseline to the
    prompt's embeddings (midpoint rule): a token's score is the absolute value of its signed contribution
    `sum_hidden((x - baseline) * mean_path_gradient)`. The signed contributions, over every position, add up to the
    target's change from the baseline to the prompt (completeness), up to the rule's O(1 / n_steps^2) error; they are
    in `output.extras["signed_scores"]` and `output.extras["completeness"]`.

    Cost: `n_steps` generations with the traced calls' graph and their backward passes, `batch_size` at a time (and
    one more generation without a graph for `target="change"`).

    Args:
        n_steps (`int`, *optional*, defaults to 16): Points on the path.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`):
            `"pad"` (attributed tokens replaced by the padding token), `"empty"` (the empty prompt) or a tensor at the
            attribution level.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch; lower it to bound memory.
        pixel_baseline (`str` or `float`, *optional*, defaults to `"blur"`):
            For img2img / inpainting explainers, input-image pixel attributions are integrated gradients too, along
            the path from a baseline image to the input image, with the prompt unchanged (`n_steps` more
            generations); their completeness is in `extras["pixel_completeness"]`. `"blur"`: the input image
            box-blurred (twice, kernel 1/8 of its size); a float: a flat image of that value in [0, 1]. Flat images
            make a poor baseline for Stable Diffusion's VAE: its group normalizations amplify the tiny variations of
            a nearly flat image, so the path starts with a jump the integral misses.
        target (`str`, *optional*, defaults to `"sum"`):
            `"sum"`: the box's pixel sum (as the gradient methods). `"change"`: the L2 distance of the box's [0, 1]
            pixels from the baseline's image (generated from the same noise), so that contributions add up to how far
            the prompt moved the box, in any colour direction.
    """

    n_steps: int = 16
    baseline: Union[str, torch.Tensor] = "pad"
    batch_size: Optional[int] = 8
    target: str = "sum"
    pixel_baseline: Union[str, float] = "blur"
    name = "integrated_gradients"

    def __post_init__(self):
        if int(self.n_steps) < 1:
            raise ValueError(f"`n_steps` must be >= 1, got {self.n_steps}.")
        if self.target not in ("sum", "change"):
            raise ValueError(f"`target` must be 'sum' or 'change', got {self.target!r}.")

    def token_scores(self, context, box, image):
        inputs, reference = context.inputs, context.baseline(self.baseline)
        alphas = (torch.arange(self.n_steps, dtype=torch.float32, device=inputs.device) + 0.5) / self.n_steps
        path = reference + alphas.to(inputs.dtype)[:, None, None] * (inputs - reference)
        baseline_image = None
        extras = {}
        if getattr(context, "input_pixels", None) is not None:
            pixel_result = _integrated_pixel_gradients(self, context, box, context.input_pixels)
            if pixel_result is not None:
                extras["pixel_scores"], extras["pixel_completeness"] = pixel_result
        if self.target == "change":
            with torch.no_grad():
                baseline_image = context.box_images(context.generate(reference)).float()
        gradients = _batched_gradients(
            context, path, box, self.batch_size, "Integrated gradients", reference=baseline_image
        )
        contributions = ((inputs - reference)[0].float().cpu() * gradients.mean(0)).sum(-1)
        signed = contributions[context.positions]
        extras.update(signed_scores=signed.numpy(), completeness=float(contributions.sum()))
        return signed.abs().numpy(), extras


def _integrated_pixel_gradients(method: "IntegratedGradients", context, box, pixels: torch.Tensor):
    # (H, W) absolute channel-summed contributions and their signed total, or None if no gradient reaches the pixels.
    if method.pixel_baseline == "blur":
        kernel = max(3, (max(pixels.shape[-2:]) // 8) | 1)
        reference = pixels
        for _ in range(2):
            reference = torch.nn.functional.avg_pool2d(
                reference, kernel, stride=1, padding=kernel // 2, count_include_pad=False
            )
    else:
        reference = torch.full_like(pixels, float(method.pixel_baseline))
    alphas = (torch.arange(method.n_steps, dtype=torch.float32) + 0.5) / method.n_steps
    path = reference + alphas.to(pixels.dtype)[:, None, None, None] * (pixels - reference)
    gradients = _batched_gradients(
        context, path, box, method.batch_size, "Pixel IG", generate=context.generate_from_images
    )
    if gradients is None:
        return None
    contributions = (pixels - reference)[0].float().cpu() * gradients.mean(0)
    return contributions.sum(0).abs().numpy(), float(contributions.sum())


@dataclass
class SmoothGrad(AttributionMethod):
    r"""
    SmoothGrad (Smilkov et al., 2017): the gradient averaged over copies of the prompt's embeddings with Gaussian noise
    added to the attributed tokens, then reduced per token like the gradient methods. Zero noise gives the plain
    gradient.

    Cost: `n_samples` generations with the traced calls' graph and their backward passes, `batch_size` at a time.

    Args:
        n_samples (`int`, *optional*, defaults to 8): Noisy copies.
        noise_level (`float`, *optional*, defaults to 0.1):
            Noise standard deviation as a fraction of the attributed embeddings' value range (max - min).
        aggregation (`str`, *optional*, defaults to `"grad_x_input"`): How the mean gradient becomes a score.
        seed (`int`, *optional*, defaults to 0): Seed of the noise.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """

    n_samples: int = 8
    noise_level: float = 0.1
    aggregation: Union[str, AttributionMethods] = AttributionMethods.GRAD_X_INPUT
    seed: int = 0
    batch_size: Optional[int] = 8
    name = "smoothgrad"

    def __post_init__(self):
        self.aggregation = parse_attribution_method(self.aggregation)
        if int(self.n_samples) < 1 or self.noise_level < 0:
            raise ValueError("`n_samples` must be >= 1 and `noise_level` >= 0.")

    def token_scores(self, context, box, image):
        inputs = context.inputs
        positions = context.positions
        attributed = inputs[0, positions]
        sigma = self.noise_level * float(attributed.max() - attributed.min())
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.n_samples, len(positions), inputs.shape[-1]), generator=generator) * sigma
        rows = inputs.repeat(self.n_samples, 1, 1)
        rows[:, positions] += noise.to(rows.device, rows.dtype)
        gradients = _batched_gradients(context, rows, box, self.batch_size, "SmoothGrad")
        mean = gradients.mean(0)[positions]
        scores = aggregate(mean, inputs[0, positions].float().cpu(), self.aggregation, dim=-1)
        return scores.numpy(), {"token_gradients": mean}


@dataclass
class TokenAblation(AttributionMethod):
    r"""
    Occlusion of one token at a time: the attributed token is replaced by the baseline's (the padding token's by
    default) and the image generated again from the same noise; the score is the L2 norm of the change of the [0, 1]
    image inside the box (all pixels and channels). A change of colour counts as much as a change of brightness.

    Cost: one generation per attributed token (no backward pass), `batch_size` at a time.

    Args:
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What a token is replaced with.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """

    baseline: Union[str, torch.Tensor] = "pad"
    batch_size: Optional[int] = 8
    name = "ablation"

    def token_scores(self, context, box, image):
        rows = context.replaced([[position] for position in context.positions], self.baseline)
        changes, images = context.box_changes(rows, image, box, self.batch_size, desc="Ablation")
        return changes.numpy(), {"ablated_images": images}


@dataclass
class AttentionScore(AttributionMethod):
    r"""
    Cross-attention between the box's pixels and each token, from the token's attention probability averaged over the
    heads and layers and over the last `n_last_diffusion_steps_to_consider_for_attributions` denoiser calls (all with
    `None`), maps upsampled to the image size. Ignores the attribution level.

    Cost: one generation with a recording attention processor (about 1.03x a plain one), no backward pass.

    Args:
        normalization (`str`, *optional*, defaults to `"token_share"`):
            `"token_share"`: the share of the token's attention (summed over the image) that falls inside the box:
            where in the image the token is used (without a box every share is 1, so the whole image falls back to
            `"probability"`). `"probability"`: the mean attention probability of the token over the box's pixels:
            what the box's pixels read.
    """

    normalization: str = "token_share"
    name = "attention"
    regenerates = False

    def __post_init__(self):
        if self.normalization not in ("token_share", "probability"):
            raise ValueError(f"`normalization` must be 'token_share' or 'probability', got {self.normalization!r}.")

    def scores_from_maps(self, maps: torch.Tensor, box) -> np.ndarray:
        r"""Scores from (tokens, H, W) attention maps of the attributed tokens."""
        from .box import box_mask

        values = maps.float()
        mask = box_mask(box, values.shape[-2], values.shape[-1], device=values.device, dtype=torch.float32)
        inside = (values * mask).flatten(1).sum(1)
        if self.normalization == "probability" or box is None:
            return (inside / mask.sum()).numpy()
        return (inside / values.flatten(1).sum(1).clamp_min(1e-12)).numpy()


@dataclass
class JacobianNorm(AttributionMethod):
    r"""
    How strongly the box's pixels depend on each token, in any direction: the Frobenius norm of the Jacobian of the
    box's [0, 1] pixels (all channels) with respect to the token's embedding, estimated from `n_probes` backward
    passes of random Gaussian projections of the box (Hutchinson's estimator, unbiased for the squared norm). Unlike
    the gradient of the box's pixel sum, a token that changes the box's colour without changing its brightness scores
    high.

    Cost: one generation with the traced calls' graph and `n_probes` backward passes.

    Args:
        n_probes (`int`, *optional*, defaults to 4): Random projections; the estimate's relative spread is about
            `1 / sqrt(2 * n_probes)`.
        seed (`int`, *optional*, defaults to 0): Seed of the projections.
    """

    n_probes: int = 4
    seed: int = 0
    name = "jacobian_norm"
    uses_call_gradient = True
    regenerates = False

    def __post_init__(self):
        if int(self.n_probes) < 1:
            raise ValueError(f"`n_probes` must be >= 1, got {self.n_probes}.")

    def probes(self, shape, device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((self.n_probes, *shape), generator=generator).to(device)


_BY_NAME = {
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "ablation": TokenAblation,
    "attention": AttentionScore,
    "jacobian_norm": JacobianNorm,
}


def parse_method(method: Union[str, AttributionMethods, AttributionMethod]) -> AttributionMethod:
    r"""A method object from a name (`"grad_x_input"`, ..., `"integrated_gradients"`, `"smoothgrad"`,
    `"ablation"`, `"attention"`) or a method object."""
    if isinstance(method, AttributionMethod):
        return method
    if isinstance(method, AttributionMethods):
        return GradientAggregation(method)
    name = str(method).lower()
    if name in _BY_NAME:
        return _BY_NAME[name]()
    try:
        return GradientAggregation(name)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in AttributionMethods) + ", " + ", ".join(repr(n) for n in _BY_NAME)
        raise ValueError(
            f"`attribution_method` must be one of {choices} or a method object, got {method!r}."
        ) from None
