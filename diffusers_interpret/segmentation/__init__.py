r"""
Measuring maps on images with true masks: the field's protocols (`benchmark`), their metrics (`metrics`) and the data
sets they run on (`datasets`: the toy models' rendered scenes, ImageNet-Segmentation, PASCAL VOC 2012).
"""

from .benchmark import (
    DEFAULT_BACKGROUND_CONCEPTS,
    MAP_METHODS,
    PROTOCOLS,
    ProtocolCard,
    SegmentationResults,
    segmentation_benchmark,
)
from .datasets import SegmentationSample, SegmentObject, imagenet_segmentation, pascal_voc, toy_scenes
from .metrics import BinaryScores, MultiClassScores, PerWordScores, average_precision, min_max

__all__ = [
    "DEFAULT_BACKGROUND_CONCEPTS",
    "MAP_METHODS",
    "PROTOCOLS",
    "BinaryScores",
    "MultiClassScores",
    "PerWordScores",
    "ProtocolCard",
    "SegmentObject",
    "SegmentationResults",
    "SegmentationSample",
    "average_precision",
    "imagenet_segmentation",
    "min_max",
    "pascal_voc",
    "segmentation_benchmark",
    "toy_scenes",
]
