r"""
How much a region depends on the prompt at all, beside which words of the prompt it depends on most.

Shares of a method's scores add up to 100% in every box, so a box over empty background reads as firmly as a box
over the object the prompt asked for. The prompt dependence says how much of the box the prompt makes: the model
redraws the explained image from noised copies of it (levels 0.7, 0.8 and 0.9 of the schedule's noise, four seeded
noises each, as an existing image's explanation noises its image) twice, with the prompt and with the empty prompt,
and a pixel counts as changed in a redraw where one of its channels differs by more than `PIXEL_CHANGE` (a tenth of
the colour range) between the two. The prompt dependence of a box is the share of its pixels that change, averaged
over the redraws: "the share of this region the model redraws differently without the prompt". One threshold,
`DEPENDS_THRESHOLD`, the same for every model, prompt and image, reads it as "depends on the prompt" or "depends
little on the prompt".

Why redraws and not the image generated again without the prompt: the same noise with the empty prompt draws another
picture wherever the model draws something unprompted (the toy models put a random object there), so a box over empty
background came out "depending on the prompt" whenever that object fell into it; a redraw keeps the picture's layout
(the noised copy carries it) and asks only what the prompt adds to it, and one redraw of twelve inventing an object
moves the share by a twelfth. The same measure reads an image the user already has. Measured in
`benchmarks/prompt_dependence.py`; the redraws run in `tracing/redraw.py`.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .box import Box, box_mask

# The noise levels of the redraws (0 clean, 1 pure noise) and the seeded noises per level.
REDRAW_LEVELS: Tuple[float, ...] = (0.7, 0.8, 0.9)
REDRAWS_PER_LEVEL = 4
# A pixel changes in a redraw when a channel of it moves by more than this ([0, 1] colour range).
PIXEL_CHANGE = 0.1
# At or above this share a region "depends on the prompt"; below it, "depends little on the prompt". Chosen on the
# tuning scenes of `benchmarks/prompt_dependence.py` (seed 777) as the threshold that reads the most boxes right in
# the worst of the six toy conditions; held out (seed 999) it reads >= 96.6% of object and of empty boxes right.
DEPENDS_THRESHOLD = 0.22


def describe_dependence(share: Optional[float], whole_image: bool = False) -> str:
    r"""
    One sentence for a person: how much the region depends on the prompt.

    A box reads "depends on the prompt" at `DEPENDS_THRESHOLD` or more and "depends little" below it. The whole image
    only says its share: most of a picture is often background the prompt does not make, and a person asking about
    the whole picture does not ask whether it depends on the prompt.
    """
    if share is None:
        return ""
    percent = f"{100 * share:.0f}%"
    if whole_image:
        return f"The model redraws {percent} of the image differently without the prompt."
    if share >= DEPENDS_THRESHOLD:
        return f"Depends on the prompt: the model redraws {percent} of this region differently without it."
    return (
        f"Depends little on the prompt: the model redraws only {percent} of this region differently without it (a "
        "box drawn tight around one thing reads that thing alone)."
    )


def describe_control_dependence(share: Optional[float], whole_image: bool = False) -> str:
    r"""One sentence for a person: how much the region (or the whole image) depends on a ControlNet's control image,
    measured as the prompt dependence is, with the control switched off instead of the prompt."""
    if share is None:
        return ""
    where = "the image" if whole_image else "this region"
    return f"Without the control image the model redraws {100 * share:.0f}% of {where} differently."


def bar_opacity(share: Optional[float], whole_image: bool = False) -> float:
    r"""How opaque a region's bars are drawn: fully at `DEPENDS_THRESHOLD` or more (and for the whole image, or
    without a measure), fading to 0.25 as the region's dependence on the prompt falls to 0."""
    if share is None or whole_image:
        return 1.0
    return round(0.25 + 0.75 * min(1.0, share / DEPENDS_THRESHOLD), 3)


@dataclass(frozen=True)
class DependenceMap:
    r"""
    Where one image depends on its prompt.

    Args:
        changed (`np.ndarray`): (H, W), at each pixel the share of the redraws in which it changes without the prompt.
    """

    changed: np.ndarray

    def share(self, box: Optional[Box]) -> float:
        r"""The prompt dependence of `box` (the whole image for `None`): the mean of `changed` over its pixels."""
        height, width = self.changed.shape
        mask = box_mask(box, height, width).numpy().astype(bool)
        return float(self.changed[mask].mean()) if mask.any() else 0.0
