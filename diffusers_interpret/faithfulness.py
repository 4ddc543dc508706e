r"""
Does an explanation tell the truth? Metrics that check token attributions against what the model actually does.

- [`swapped_box_control`]: on a two-object scene, a box on object A must rank A's words above B's, and the ranking
  must flip when the box moves to B.
- [`ablation_effects`] and [`spearman`]: agreement of attributions with measured effects of removing each token.
- [`deletion_curve`] and [`deletion_auc_ratio`]: remove tokens in attribution order and watch the boxed region change;
  a faithful order changes it sooner than a random order.
- [`pixel_deletion_auc_ratio`]: the same for img2img / inpainting pixel attributions, removing patches of the input
  image.

The functions that generate take an explainer output of a single image (any method): it keeps what is needed to
generate the same image again from the same noise with some tokens replaced (`output.session.regeneration`).
"""

from typing import Optional, Sequence

import numpy as np
import torch

from .box import normalize_box
from .checks import finite_number, positive_int


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    r"""Spearman's rank correlation of two score vectors (ties get their average rank); NaN if either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Expected two vectors of the same length, got shapes {a.shape} and {b.shape}.")

    def ranks(values):
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values), dtype=np.float64)
        ranked[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def swapped_box_control(
    scores_box_a: Sequence[float], scores_box_b: Sequence[float], word_of_a: int, word_of_b: int
) -> dict:
    r"""
    The swapped-box control for one scene with objects A and B.

    Args:
        scores_box_a (`Sequence[float]`): Token scores for a box around object A.
        scores_box_b (`Sequence[float]`): Token scores for a box around object B (same image).
        word_of_a (`int`): Index (in the scores) of a word that describes only A (e.g. its colour).
        word_of_b (`int`): Index of the corresponding word of B.

    Returns:
        `dict` with `box_a` (A's word ranks above B's for A's box), `box_b` (the reverse for B's box) and `flip`
        (both: the control passes).
    """
    box_a = bool(scores_box_a[word_of_a] > scores_box_a[word_of_b])
    box_b = bool(scores_box_b[word_of_b] > scores_box_b[word_of_a])
    return {"box_a": box_a, "box_b": box_b, "flip": box_a and box_b}


def _context(output):
    if not hasattr(output, "session"):
        raise TypeError(
            f"`output` must be one explainer output, got {type(output).__name__} (pass one element of a list)."
        )
    context = output.session.regeneration if output.session is not None else None
    if context is None:
        raise ValueError("This output cannot be regenerated: explain one image per call (one prompt, one image).")
    return context


def _checked(output, box, batch_size):
    # The output's regeneration context and the region, checked before anything is generated.
    context = _context(output)
    positive_int(batch_size, "batch_size")
    box = box if box is not None else output.explanation_2d_bounding_box
    if context.size is not None:
        normalize_box(box, *context.size)
    return context, box


def _indices(values, count: int, name: str, what: str) -> list:
    values = list(values)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < count for v in values):
        raise ValueError(f"`{name}` must hold indices in [0, {count}) ({what}), got {values}.")
    return [int(v) for v in values]


def _changes(output, position_sets, box, baseline, batch_size) -> np.ndarray:
    if not position_sets:
        return np.zeros(0)
    context = _context(output)
    reference = output.session.reference_image()
    box = normalize_box(box, reference.shape[-2], reference.shape[-1]) if box is not None else None
    changes, _ = context.box_changes(context.replaced(position_sets, baseline), reference, box, batch_size)
    return changes.numpy()


def ablation_effects(
    output,
    explanation_2d_bounding_box=None,
    positions: Optional[Sequence[int]] = None,
    baseline="pad",
    batch_size: Optional[int] = 8,
) -> np.ndarray:
    r"""
    Measured effect of removing each token: the L2 change of the [0, 1] image inside the box when the token's
    embedding is replaced by the baseline's at the explained call's traced steps, generating from the same noise.

    Args:
        output: An explainer output of one image.
        explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The region; the output's box by default.
        positions (`Sequence[int]`, *optional*):
            Positions in the padded token sequence to ablate, one at a time; the attributed tokens by default.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What a token is replaced with.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.

    Returns:
        `np.ndarray` with one non-negative effect per position.
    """
    context, box = _checked(output, explanation_2d_bounding_box, batch_size)
    if positions is None:
        positions = context.positions
    else:
        positions = _indices(positions, int(context.inputs.shape[1]), "positions", "token positions")
    return _changes(output, [[p] for p in positions], box, baseline, batch_size)


def word_ablation_effects(
    output, explanation_2d_bounding_box=None, baseline="pad", batch_size: Optional[int] = 8
) -> np.ndarray:
    r"""
    As [`ablation_effects`], one word of the prompt at a time (`output.word_attributions`' words): every token of every
    tokenizer that falls in the word (T5's pieces, CLIP's token) replaced together.

    Returns:
        `np.ndarray` with one non-negative effect per word.
    """
    context, box = _checked(output, explanation_2d_bounding_box, batch_size)
    reference = output.session.reference_image()
    box = normalize_box(box, reference.shape[-2], reference.shape[-1]) if box is not None else None
    rows = context.replaced_units(context.tokens.word_units(), baseline)
    changes, _ = context.box_changes(rows, reference, box, batch_size)
    return changes.numpy()


def deletion_curve(
    output,
    order: Sequence[int],
    explanation_2d_bounding_box=None,
    baseline="pad",
    batch_size: Optional[int] = 8,
) -> np.ndarray:
    r"""
    The change inside the box after removing the first k attributed tokens of `order`, for k = 0 .. len(order).

    Args:
        output: An explainer output of one image.
        order (`Sequence[int]`): Indices into the attributed tokens (`output.token_attributions`), first removed first.
        explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The region; the output's box by default.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What removed tokens are replaced with.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.

    Returns:
        `np.ndarray` of `len(order) + 1` values, starting at 0.
    """
    context, box = _checked(output, explanation_2d_bounding_box, batch_size)
    order = _indices(order, len(context.positions), "order", "attributed tokens")
    positions = [context.positions[i] for i in order]
    sets = [positions[:k] for k in range(1, len(positions) + 1)]
    return np.concatenate([[0.0], _changes(output, sets, box, baseline, batch_size)])


def pixel_deletion_auc_ratio(
    output,
    patch_size: int = 8,
    explanation_2d_bounding_box=None,
    fill: float = 0.5,
    num_random_orders: int = 4,
    seed: int = 0,
    batch_size: Optional[int] = 8,
) -> float:
    r"""
    For img2img / inpainting outputs: replace patches of the input image, highest pixel attribution first, with a
    flat grey and generate again from the same noise; area under the curve of the change inside the box, divided by
    its mean over random patch orders (above 1: the pixel attributions find the pixels that matter sooner than chance).

    Args:
        output: An img2img or inpainting explainer output of one image, with `pixel_attributions`.
        patch_size (`int`, *optional*, defaults to 8): Patch side in pixels.
        explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The region; the output's box by default.
        fill (`float`, *optional*, defaults to 0.5): Value ([0, 1]) of the removed pixels.
        num_random_orders (`int`, *optional*, defaults to 4): Random orders to average.
        seed (`int`, *optional*, defaults to 0): Seed of the random orders.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """
    context, _ = _checked(output, explanation_2d_bounding_box, batch_size)
    positive_int(patch_size, "patch_size", allow_none=False)
    positive_int(num_random_orders, "num_random_orders", allow_none=False)
    finite_number(fill, "fill", 0.0, 1.0)
    if getattr(output, "pixel_attributions", None) is None:
        raise ValueError("This output has no pixel attributions (trace every step for img2img).")
    source = torch.from_numpy(np.asarray(output.input_image.convert("RGB"), dtype=np.float32) / 255.0)
    source = source.permute(2, 0, 1)[None]
    height, width = source.shape[-2:]
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    patches = [(r, c) for r in range(rows) for c in range(cols)]
    scores = np.asarray(output.pixel_attributions, dtype=np.float64)
    patch_scores = [
        scores[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size].sum() for r, c in patches
    ]
    box = (
        explanation_2d_bounding_box if explanation_2d_bounding_box is not None else output.explanation_2d_bounding_box
    )
    with torch.no_grad():
        reference = context.box_images(context.generate_from_images(source)).cpu()
    box = normalize_box(box, reference.shape[-2], reference.shape[-1]) if box is not None else None

    def curve(order):
        images = []
        current = source.clone()
        for index in order:
            r, c = patches[index]
            current[..., r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size] = fill
            images.append(current.clone())
        changes, _ = context.box_changes(
            torch.cat(images), reference, box, batch_size, generate=context.generate_from_images
        )
        return np.concatenate([[0.0], changes.numpy()]).mean()

    area = curve(list(np.argsort(-np.asarray(patch_scores), kind="mergesort")))
    rng = np.random.default_rng(seed)
    reference_area = float(np.mean([curve(list(rng.permutation(len(patches)))) for _ in range(num_random_orders)]))
    return float(area / reference_area) if reference_area > 0 else float("nan")


def deletion_auc_ratio(
    output,
    scores: Optional[Sequence[float]] = None,
    explanation_2d_bounding_box=None,
    num_random_orders: int = 4,
    seed: int = 0,
    baseline="pad",
    batch_size: Optional[int] = 8,
) -> float:
    r"""
    Area under the deletion curve in attribution order (highest score first) divided by its mean over random orders.
    Above 1: the attribution finds the tokens that matter for the box sooner than chance.

    Args:
        output: An explainer output of one image.
        scores (`Sequence[float]`, *optional*): Scores of the attributed tokens; the output's own by default.
        explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The region; the output's box by default.
        num_random_orders (`int`, *optional*, defaults to 4): Random orders to average.
        seed (`int`, *optional*, defaults to 0): Seed of the random orders.
        baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`): What removed tokens are replaced with.
        batch_size (`int`, *optional*, defaults to 8): Generations per batch.
    """
    context, _ = _checked(output, explanation_2d_bounding_box, batch_size)
    positive_int(num_random_orders, "num_random_orders", allow_none=False)
    scores = np.asarray(output.token_attributions.scores if scores is None else scores, dtype=np.float64)
    if scores.shape != (len(context.positions),) or not np.isfinite(scores).all():
        raise ValueError(
            f"`scores` must hold one finite score per attributed token ({len(context.positions)}), got shape "
            f"{scores.shape}."
        )
    order = list(np.argsort(-scores, kind="mergesort"))
    area = deletion_curve(output, order, explanation_2d_bounding_box, baseline, batch_size).mean()
    rng = np.random.default_rng(seed)
    random_areas = [
        deletion_curve(
            output, list(rng.permutation(len(scores))), explanation_2d_bounding_box, baseline, batch_size
        ).mean()
        for _ in range(num_random_orders)
    ]
    reference = float(np.mean(random_areas))
    return float(area / reference) if reference > 0 else float("nan")
