"""Bounding boxes: one convention everywhere, checked, and drawn exactly where they explain."""

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw

Box = Tuple[Tuple[int, int], Tuple[int, int]]
BoxLike = Union[Box, Sequence[int], Sequence[Sequence[int]]]
# A region made of several boxes (a box over a span of a clip's frames, laid out top to bottom): their union.
Region = Union[Box, Tuple[Box, ...]]

BOX_CONVENTION = (
    "((x0, y0), (x1, y1)) in pixels, PIL's convention: x is the column, y the row, (0, 0) the upper-left corner; "
    "x0, y0 inclusive and x1, y1 exclusive, so the box covers image[y0:y1, x0:x1]"
)


def normalize_box(box: Optional[BoxLike], height: int, width: int) -> Optional[Region]:
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
    if isinstance(box, (tuple, list)) and box and _is_box_list(box):
        # A region of several boxes (a box over a span of a clip's frames): each box checked.
        boxes = tuple(normalize_box(one, height, width) for one in box)
        return boxes[0] if len(boxes) == 1 else boxes
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


def _is_box_list(box) -> bool:
    # Boxes ((x0, y0), (x1, y1)) inside: a list of boxes, not one box (whose parts are corners or numbers).
    try:
        return all(len(one) == 2 and len(one[0]) == 2 and isinstance(one[0][0], numbers.Real) for one in box)
    except TypeError:
        return False


def boxes_of(region: Optional[Region]) -> Tuple[Box, ...]:
    r"""The boxes a region is made of (one for a box, none for `None`)."""
    if region is None:
        return ()
    return (region,) if isinstance(region[0][0], int) else tuple(region)


def bounding_box(region: Optional[Region]) -> Optional[Box]:
    r"""The smallest box around every box of a region (the box itself for a box)."""
    boxes = boxes_of(region)
    if not boxes:
        return None
    return (
        (min(b[0][0] for b in boxes), min(b[0][1] for b in boxes)),
        (max(b[1][0] for b in boxes), max(b[1][1] for b in boxes)),
    )


def box_mask(box: Optional[Region], height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """An (height, width) mask that is 1 inside the box (or the region's boxes; everywhere for `None`), 0 outside."""
    mask = torch.zeros(height, width, device=device, dtype=dtype)
    if box is None:
        mask[:] = 1
    for (x0, y0), (x1, y1) in boxes_of(box):
        mask[y0:y1, x0:x1] = 1
    return mask


def frame_region(
    box: Optional[BoxLike], frames: Optional[Sequence[int]], height: int, width: int, num_frames: int
) -> Optional[Region]:
    r"""
    The region of a clip's picture (its `num_frames` frames of `height` x `width` laid out top to bottom) that a box
    on the frames and a span of frames make: the box on each frame of the span, moved down to that frame.

    Args:
        box (`((x0, y0), (x1, y1))`, *optional*): The region of each frame, in the frame's pixels (see
            `BOX_CONVENTION`); `None` for whole frames.
        frames (`(start, stop)`, *optional*): The frames `start` to `stop - 1` (as a slice, counted from 0); `None`
            for every frame.
        height (`int`), width (`int`): A frame's size in pixels.
        num_frames (`int`): The clip's frames.

    Returns:
        `None` for the whole clip, one box where the region is one rectangle of the picture (one frame, or boxes as
        tall as the frames on frames in a row), else one box per frame.

    Raises:
        `ValueError`: for a malformed box or span, or one outside the frames or the clip.
    """
    box = normalize_box(box, height, width)
    start, stop = _frame_span(frames, num_frames)
    if box is None:
        if (start, stop) == (0, num_frames):
            return None
        return ((0, start * height), (width, stop * height))
    (x0, y0), (x1, y1) = box
    if (y0, y1) == (0, height):  # whole-height boxes of frames in a row touch: one box of the picture
        return ((x0, start * height), (x1, stop * height))
    boxes = tuple(((x0, y0 + k * height), (x1, y1 + k * height)) for k in range(start, stop))
    return boxes[0] if len(boxes) == 1 else boxes


def clip_box(
    box: Optional[BoxLike], frames: Optional[Sequence[int]], height: int, width: int, num_frames: int
) -> Tuple[Optional[Box], Optional[Tuple[int, int]], Optional[Region]]:
    r"""
    A clip's explained region as an output holds it, checked: the box in a frame's pixels (`normalize_box`), the span
    of frames `(start, stop)` (`None`: every frame) and the region of the clip's picture they make (`frame_region`).
    """
    box = normalize_box(box, height, width)
    span = None if frames is None else _frame_span(frames, num_frames)
    return box, span, frame_region(box, span, height, width, num_frames)


def _frame_span(frames: Optional[Sequence[int]], num_frames: int) -> Tuple[int, int]:
    if frames is None:
        return 0, num_frames
    try:
        start, stop = frames
        if any(isinstance(v, (bool, str, float)) for v in (start, stop)):
            raise TypeError
        start, stop = int(start), int(stop)
    except (TypeError, ValueError):
        raise ValueError(
            "`explanation_frames` must be (start, stop): the frames start to stop - 1, counted from 0, got "
            f"{frames!r}."
        ) from None
    if not 0 <= start < stop <= num_frames:
        raise ValueError(
            f"`explanation_frames` {(start, stop)} is not a span of the clip's {num_frames} frames: it needs "
            f"0 <= start < stop <= {num_frames} (the frames start to stop - 1)."
        )
    return start, stop


def mask_box(mask) -> Box:
    r"""The tight box of a mask's nonzero pixels ((H, W) array), in the box convention: `((x0, y0), (x1, y1))`, the
    lower-right corner exclusive (the inverse of `box_mask` for a rectangle)."""
    import numpy as np

    rows, cols = np.nonzero(np.asarray(mask))
    if not len(rows):
        raise ValueError("The mask is empty: it has no box.")
    return (int(cols.min()), int(rows.min())), (int(cols.max()) + 1, int(rows.max()) + 1)


def draw_box(image: Image.Image, box: Optional[Region], color: Tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    r"""
    A copy of `image` with the one-pixel outline of `box` drawn on the box's own border pixels.

    The outline runs along the first and last rows and columns that the box covers, so every drawn pixel lies inside
    the explained region and the red outline's extent is exactly that region.
    """
    image = image.copy()
    for (x0, y0), (x1, y1) in boxes_of(box):
        ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=1)
    return image
