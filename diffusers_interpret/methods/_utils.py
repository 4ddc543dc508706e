"""Machinery shared by the methods: scoring units from gradients, and gradients of regenerated batches."""

from typing import Optional

import numpy as np
import torch

from ..attribution import aggregate
from ..progress import progress_bar
from ..regeneration import chunks


def score_units(gradient: torch.Tensor, inputs, image: int, units, aggregation) -> np.ndarray:
    r"""One score per unit: `aggregation` of the gradient over the unit's features at its position."""
    values = inputs.values[image]
    return np.array(
        [
            float(
                aggregate(
                    gradient[unit.position, inputs.unit_features(unit)],
                    values[unit.position, inputs.unit_features(unit)],
                    aggregation,
                    dim=-1,
                )
            )
            for unit in units
        ],
        dtype=np.float64,
    )


def regenerated_gradients(
    context, rows: torch.Tensor, target, batch_size, desc: str, reference=None, generate=None
) -> Optional[torch.Tensor]:
    r"""
    Gradient of each row's target with respect to that row, generating `batch_size` rows at a time with `generate`
    (`context.generate`, from embeddings, by default: there a missing graph is an error; with another `generate` it
    gives None). The target is the box's pixel sum, or with a `reference` image the L2 distance of the box's pixels
    from the reference's.
    """

    gradients = []
    pieces = chunks(rows.shape[0], batch_size)
    verbose = context.verbose and len(pieces) > 1
    for piece in progress_bar(pieces, desc, disable=not verbose):
        leaf = rows[piece.start : piece.stop].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            decoded = (generate or context.generate)(leaf)
            if not decoded.requires_grad:
                if generate is not None:
                    return None
                raise RuntimeError("No gradient reaches the prompt: trace at least one denoiser call.")
            if reference is None:
                gradient = target.gradients(decoded, {"rows": leaf})["rows"]
            else:
                images = target.image(decoded).float()
                difference = (images - reference.to(images.device)) * target.mask(images)
                distance = difference.flatten(1).pow(2).sum(1).add(1e-12).sqrt()
                gradient = torch.autograd.grad(distance.sum(), leaf)[0].float().cpu()
        gradients.append(gradient)
    return torch.cat(gradients)


def map_scores(maps: torch.Tensor, target) -> np.ndarray:
    r"""
    Scores of (words, H, W) maps for a target: for a box `B`, `mean_B(m) * sum_B(m) / sum(m)` (what the box reads of
    the word times the share of the word's map inside the box); for the whole image, the map's spatial standard
    deviation (words that shape where things go, not words every pixel reads alike).
    """
    flat = maps.flatten(1)
    if target.box is None:
        return flat.std(1).numpy()
    mask = target.mask(maps).flatten().bool().to(flat.device)
    inside = flat[:, mask]
    return (inside.mean(1) * inside.sum(1) / flat.sum(1).clamp_min(1e-30)).numpy()


def random_probes(count: int, shape, seed: int, device) -> torch.Tensor:
    r"""`count` standard Gaussian tensors of `shape`, stacked, drawn on the CPU from `seed` (alike on every device)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(count), *shape), generator=generator).to(device)
