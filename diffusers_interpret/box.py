"""Bounding boxes: one convention everywhere, checked, and drawn exactly where they explain."""

from typing import Optional, Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw

Box = Tuple[Tuple[int, int], Tuple[int, int]]
BoxLike = Union[Box, Sequence[int], Sequence[Sequence[int]]]

BOX_CONVENTION = (
    "((x0, y0), (x1, y1)) in pixels, PIL's convention: x is the column, y the row, (0, 0) the upper-left corner; "
    "x0, y0 inclusive and x1, y1 exclusive, so the box covers image[y0:y1, x0:x1]"
)


def normalize_box(box: Optional[BoxLike], height: int, width: int) -> Optional[Box]:
    r"""
    Check a bounding box against an image size and return it as `((x0, y0), (x1, y1))`.

    Args:
        box (`((x0, y0), (x1, y1))` or `(x0, y0, x1, y1)`, *optional*):
            The region to explain, in pixels: x is the column and y the row, `(x0, y0)` the upper-left corner
            (inclusive) and `(x1, y1)` the lower-right corner (exclusive). `None` means the whole image.
        height (`int`): Image height in pixels.
        width (`int`): Image width in pixels.

    Raises:
        `ValueError`: if the box is malformed, empty, inverted or reaches outside the image.
    """
    if box is None:
        return None
    try:
        if len(box) == 4:
            values = list(box)
        elif len(box) == 2 and len(box[0]) == 2 and len(box[1]) == 2:
            values = [*box[0], *box[1]]
        else:
            raise TypeError
        if any(isinstance(v, (bool, str)) for v in values):
            raise TypeError
        x0, y0, x1, y1 = (int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"`explanation_2d_bounding_box` must be ((x0, y0), (x1, y1)) or (x0, y0, x1, y1), got {box!r}."
        ) from None
    if any(float(v) != int(v) for v in values):
        raise ValueError(
            f"`explanation_2d_bounding_box` {box!r} has fractional coordinates: give whole pixels (round them as you "
            "mean them)."
        )
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"`explanation_2d_bounding_box` {((x0, y0), (x1, y1))} is empty or inverted: it needs x0 < x1 and y0 < y1 "
            f"(upper-left corner first; the box is {BOX_CONVENTION})."
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"`explanation_2d_bounding_box` {((x0, y0), (x1, y1))} reaches outside the {width}x{height} "
            f"(width x height) image: it needs 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}."
        )
    return ((x0, y0), (x1, y1))


def box_mask(box: Optional[Box], height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """An (height, width) mask that is 1 inside the box (or everywhere for `None`) and 0 outside."""
    mask = torch.zeros(height, width, device=device, dtype=dtype)
    if box is None:
        mask[:] = 1
    else:
        (x0, y0), (x1, y1) = box
        mask[y0:y1, x0:x1] = 1
    return mask


def mask_box(mask) -> Box:
    r"""The tight box of a mask's nonzero pixels ((H, W) array), in the box convention: `((x0, y0), (x1, y1))`, the
    lower-right corner exclusive (the inverse of `box_mask` for a rectangle)."""
    import numpy as np

    rows, cols = np.nonzero(np.asarray(mask))
    if not len(rows):
        raise ValueError("The mask is empty: it has no box.")
    return (int(cols.min()), int(rows.min())), (int(cols.max()) + 1, int(rows.max()) + 1)


def draw_box(image: Image.Image, box: Optional[Box], color: Tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    r"""
    A copy of `image` with the one-pixel outline of `box` drawn on the box's own border pixels.

    The outline runs along the first and last rows and columns that the box covers, so every drawn pixel lies inside
    the explained region and the red outline's extent is exactly that region.
    """
    image = image.copy()
    if box is not None:
        (x0, y0), (x1, y1) = box
        ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=1)
    return image
