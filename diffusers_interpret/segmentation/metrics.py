r"""
The numbers the field reports for word maps against masks, each as its protocol computes it (pooled over a data set).

- [`BinaryScores`]: Chefer et al.'s ImageNet-Segmentation protocol as ConceptAttention's experiments run it: one
  class's soft map and its mask per image; pixel accuracy and the two classes' IoU pooled over the data set, average
  precision per image. ConceptAttention's scripts feed the metric the stacked (background, foreground) indicator pair
  of both the prediction and the mask, which makes the IoU they publish equal `accuracy / (2 - accuracy)` for both
  classes: `miou_published` is that number, `miou` the usual foreground/background mean.
- [`MultiClassScores`]: semantic segmentation's mIoU over the classes (background included), pooled.
- [`PerWordScores`]: DAAM's IoU of each word's thresholded map with its mask, averaged over words.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np


def _bool_mask(mask, name: str, shape=None) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"`{name}` must be a (height, width) mask, got shape {mask.shape}.")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` is {mask.shape[1]}x{mask.shape[0]} but the map is {shape[1]}x{shape[0]}: resize one."
        )
    return mask.astype(bool)


def _soft_map(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"`{name}` must be a (height, width) map, got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    return values


def min_max(values: np.ndarray) -> np.ndarray:
    r"""`values` rescaled to [0, 1] (all zeros for a constant map)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    r"""
    Average precision of `scores` ranking the true `labels` first: the sum over score thresholds of the rise in recall
    times the precision there, ties taken together (scikit-learn's `average_precision_score`); 0 without a positive.
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).astype(bool).ravel()
    positives = int(labels.sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each run of equal scores
    true_positives = np.cumsum(labels)[distinct]
    predicted = distinct + 1
    precision = true_positives / predicted
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class BinaryScores:
    r"""Accumulates the binary protocol's numbers over images: `add` each image, then `result()`."""

    correct: int = 0
    labeled: int = 0
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2))
    precisions: List[float] = field(default_factory=list)

    def add(self, prediction, soft_map, mask) -> None:
        r"""
        One image: the predicted foreground (`prediction`, (H, W) bool), the soft map it was thresholded from (for
        average precision; any scale) and the true foreground `mask`, all of one size.
        """
        soft = _soft_map(soft_map, "soft_map")
        prediction = _bool_mask(prediction, "prediction", soft.shape)
        mask = _bool_mask(mask, "mask", soft.shape)
        self.correct += int((prediction == mask).sum())
        self.labeled += int(mask.size)
        for index, (p, m) in enumerate(((~prediction, ~mask), (prediction, mask))):  # background, foreground
            self.intersection[index] += (p & m).sum()
            self.union[index] += (p | m).sum()
        # As the published scripts: the stacked (1 - map, map) scores against the (background, foreground) labels.
        unit = min_max(soft)
        self.precisions.append(
            average_precision(np.r_[1 - unit.ravel(), unit.ravel()], np.r_[~mask.ravel(), mask.ravel()])
        )

    def result(self) -> Dict[str, float]:
        accuracy = self.correct / max(self.labeled, 1)
        iou = self.intersection / np.maximum(self.union, 1)
        return {
            "pixel_accuracy": 100 * accuracy,
            "miou": 100 * float(iou.mean()),
            "miou_published": 100 * accuracy / (2 - accuracy),
            "map": 100 * float(np.mean(self.precisions)) if self.precisions else 0.0,
            "images": len(self.precisions),
        }


@dataclass
class MultiClassScores:
    r"""
    Accumulates each class's intersection and union with its true pixels over images (pooled by class name, as
    semantic segmentation's mIoU pools by class), the background a class of its own; `ignore` marks pixels no class
    is scored on.
    """

    intersection: Dict[str, float] = field(default_factory=dict)
    union: Dict[str, float] = field(default_factory=dict)
    correct: int = 0
    scored: int = 0
    images: int = 0

    def add(self, prediction, truth, names: Sequence[str], ignore=None) -> None:
        r"""
        One image's predicted and true (H, W) labels: 0 is the background, `k` the class `names[k - 1]`.
        """
        prediction, truth = np.asarray(prediction), np.asarray(truth)
        if prediction.shape != truth.shape or prediction.ndim != 2:
            raise ValueError(f"`prediction` {prediction.shape} and `truth` {truth.shape} must be (H, W) of one size.")
        keep = np.ones(truth.shape, bool) if ignore is None else ~_bool_mask(ignore, "ignore", truth.shape)
        for name, labels in (("prediction", prediction), ("truth", truth)):
            if labels[keep].size and (labels[keep].min() < 0 or labels[keep].max() > len(names)):
                raise ValueError(f"`{name}` holds labels outside [0, {len(names)}].")
        for label, name in enumerate(["background", *names]):
            predicted, true = (prediction == label) & keep, (truth == label) & keep
            self.intersection[name] = self.intersection.get(name, 0.0) + float((predicted & true).sum())
            self.union[name] = self.union.get(name, 0.0) + float((predicted | true).sum())
        self.correct += int(((prediction == truth) & keep).sum())
        self.scored += int(keep.sum())
        self.images += 1

    def result(self) -> Dict[str, float]:
        ious = [self.intersection[name] / self.union[name] for name in self.union if self.union[name] > 0]
        return {
            "miou": 100 * float(np.mean(ious)) if ious else 0.0,
            "pixel_accuracy": 100 * self.correct / max(self.scored, 1),
            "classes": len(ious),
            "images": self.images,
        }


@dataclass
class PerWordScores:
    r"""Accumulates DAAM's per-word IoU: each word's map min-max normalised and thresholded, against its mask."""

    threshold: float = 0.4
    ious: List[float] = field(default_factory=list)

    def add(self, word_map, mask) -> None:
        soft = _soft_map(word_map, "word_map")
        mask = _bool_mask(mask, "mask", soft.shape)
        prediction = min_max(soft) >= self.threshold
        union = (prediction | mask).sum()
        self.ious.append(float((prediction & mask).sum() / union) if union else 1.0)

    def result(self) -> Dict[str, float]:
        return {"miou": 100 * float(np.mean(self.ious)) if self.ious else 0.0, "words": len(self.ious)}
