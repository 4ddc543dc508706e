r"""
Deterministic synthetic clips for the toy video model: one plain coloured shape moving left or right across a light
background, 9 frames of 32x32.

Every clip comes with its prompt and the exact boolean mask of the object in every frame, so the ground truth of
"which pixels of which frame belong to which word" is known. Prompts have exactly the form
`"a red circle moving right"`.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .detector import ImageLike, detect_objects, to_uint8_array
from .scenes import COLOR_RGB, COLORS, SHAPES, sample_background, shape_mask

CLIP_FRAMES = 9
CLIP_SIZE = 32
DIRECTIONS: Tuple[str, ...] = ("left", "right")
# Every word a clip prompt can contain (each is a single token of the toy's tokenizer).
CLIP_WORDS: Tuple[str, ...] = ("a", "moving") + DIRECTIONS + COLORS + SHAPES
MIN_SIZE, MAX_SIZE = 8, 10  # the object's box, in pixels
MIN_TRAVEL, MAX_TRAVEL = 12, 16  # how far it moves from the first frame to the last, in pixels


@dataclass(frozen=True)
class ClipSpec:
    r"""
    A clip's description: one object moving in a straight line along a row.

    Args:
        color (`str`): One of `COLORS`.
        shape (`str`): One of `SHAPES`.
        direction (`str`): `"left"` or `"right"`.
        size (`int`): Width and height of the object's bounding box in pixels.
        x_start (`int`): Column of the box's left edge in the first frame.
        x_end (`int`): ... in the last frame.
        y (`int`): Row of the box's top edge (the same in every frame).
        background (`Tuple[int, int, int]`): Light background RGB colour.
        frames (`int`, *optional*, defaults to 9): Frames of the clip.
        image_size (`int`, *optional*, defaults to 32): Height and width of each frame.
    """

    color: str
    shape: str
    direction: str
    size: int
    x_start: int
    x_end: int
    y: int
    background: Tuple[int, int, int]
    frames: int = CLIP_FRAMES
    image_size: int = CLIP_SIZE

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction}"

    def x_at(self, frame: int) -> int:
        r"""Column of the box's left edge in `frame`: the object moves evenly, `(x_end - x_start) / (frames - 1)`
        pixels a frame, rounded to whole pixels."""
        return int(round(self.x_start + (self.x_end - self.x_start) * frame / max(self.frames - 1, 1)))


@dataclass
class RenderedClip:
    r"""
    A rendered clip with its ground truth.

    Args:
        frames (`np.ndarray`): `uint8` array of shape `(frames, H, W, 3)`.
        masks (`np.ndarray`): Exact boolean `(frames, H, W)` mask of the object in each frame.
        spec (`ClipSpec`): The description the clip was rendered from.
    """

    frames: np.ndarray
    masks: np.ndarray
    spec: ClipSpec

    @property
    def prompt(self) -> str:
        return self.spec.prompt


def sample_clip_spec(
    rng: Union[np.random.Generator, int], frames: int = CLIP_FRAMES, image_size: int = CLIP_SIZE
) -> ClipSpec:
    r"""
    Draw a random clip description: colour, shape, direction, size, distance travelled, row and start, with a margin
    of one pixel to the borders in every frame.

    Args:
        rng (`np.random.Generator` or `int`): Random generator, or a seed for a new one.
        frames (`int`, *optional*, defaults to 9): Frames of the clip.
        image_size (`int`, *optional*, defaults to 32): Height and width of each frame.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    color = COLORS[rng.integers(len(COLORS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    travel = int(rng.integers(MIN_TRAVEL, MAX_TRAVEL + 1))
    left = int(rng.integers(1, image_size - size - travel))  # the leftmost column the box reaches
    y = int(rng.integers(1, image_size - size))
    x_start, x_end = (left, left + travel) if direction == "right" else (left + travel, left)
    return ClipSpec(color, shape, direction, size, x_start, x_end, y, sample_background(rng), frames, image_size)


def render_clip(spec: ClipSpec) -> RenderedClip:
    r"""
    Render a clip description to frames with the object's exact mask in each.

    Args:
        spec (`ClipSpec`): The clip's description.
    """
    size = spec.image_size
    frames = np.empty((spec.frames, size, size, 3), dtype=np.uint8)
    frames[:] = np.asarray(spec.background, dtype=np.uint8)
    masks = np.stack([shape_mask(spec.shape, spec.size, spec.x_at(f), spec.y, size) for f in range(spec.frames)])
    frames[masks] = np.asarray(COLOR_RGB[spec.color], dtype=np.uint8)
    return RenderedClip(frames=frames, masks=masks, spec=spec)


def generate_clips(num_clips: int, seed: int = 0) -> List[RenderedClip]:
    r"""
    Sample and render `num_clips` clips from one seeded generator (deterministic).

    Args:
        num_clips (`int`): How many clips.
        seed (`int`, *optional*, defaults to 0): Seed of the generator.
    """
    rng = np.random.default_rng(seed)
    return [render_clip(sample_clip_spec(rng)) for _ in range(num_clips)]


def parse_clip_prompt(prompt: str) -> Tuple[str, str, str]:
    r"""
    `(colour, shape, direction)` of a prompt `"a C S moving D"`; a `ValueError` for any other text.

    Args:
        prompt (`str`): A clip prompt, e.g. `"a red circle moving right"`.
    """
    words = prompt.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        raise ValueError(f"Not a toy clip prompt: {prompt!r}; expected e.g. 'a red circle moving right'.")
    color, shape, direction = words[1], words[2], words[4]
    if color not in COLORS or shape not in SHAPES or direction not in DIRECTIONS:
        raise ValueError(f"Not a toy clip prompt: {prompt!r}; its words must come from {CLIP_WORDS}.")
    return color, shape, direction


@dataclass
class ClipCheck:
    r"""
    How one clip follows its prompt, read frame by frame by the toy detector.

    Args:
        prompt (`str`): The prompt.
        masks (`List[Optional[np.ndarray]]`): Per frame, the mask of the largest blob of the named colour (`None`
            where there is none).
        color (`List[bool]`): Per frame: exactly one blob of the named colour is there, and none of another colour.
        shape (`List[bool]`): Per frame: ... and it has the named shape.
        direction (`bool`): The blob's centre moves at least 6 pixels from the first frame to the last, the named way.
    """

    prompt: str
    masks: List[Optional[np.ndarray]]
    color: List[bool]
    shape: List[bool]
    direction: bool

    @property
    def correct(self) -> bool:
        r"""The named colour in every frame, and it moves the named way."""
        return all(self.color) and self.direction

    def boxes(self) -> List[Optional[Tuple[Tuple[int, int], Tuple[int, int]]]]:
        r"""Per frame, the bounding box `((x0, y0), (x1, y1))` (x1, y1 exclusive) of the found blob, or `None`."""
        boxes = []
        for mask in self.masks:
            if mask is None:
                boxes.append(None)
                continue
            rows, cols = np.nonzero(mask)
            boxes.append(((int(cols.min()), int(rows.min())), (int(cols.max()) + 1, int(rows.max()) + 1)))
        return boxes


def check_clip(frames: Union[np.ndarray, Sequence[ImageLike]], prompt: str) -> ClipCheck:
    r"""
    Check a clip against its prompt with the toy detector, frame by frame.

    Args:
        frames (`np.ndarray` or a sequence of images): The clip: `(frames, H, W, 3)` (uint8, or float in [0, 1]), or
            one PIL image or array per frame.
        prompt (`str`): A clip prompt, e.g. `"a red circle moving right"`.
    """
    color, shape, direction = parse_clip_prompt(prompt)
    masks, color_ok, shape_ok, centres = [], [], [], []
    for frame in frames:
        detection = detect_objects(to_uint8_array(frame))
        found = [obj for obj in detection.objects.values() if obj is not None] + list(detection.strays)
        named = sorted((obj for obj in found if obj.color == color), key=lambda obj: -obj.area)
        others = [obj for obj in found if obj.color != color]
        best = named[0] if named else None
        masks.append(None if best is None else best.mask)
        color_ok.append(best is not None and not others and len(named) == 1)
        shape_ok.append(color_ok[-1] and best.shape == shape)
        centres.append(None if best is None else float(np.nonzero(best.mask)[1].mean()))
    moved = None if centres[0] is None or centres[-1] is None else centres[-1] - centres[0]
    moves_right = moved is not None and moved >= 6
    moves_left = moved is not None and moved <= -6
    return ClipCheck(prompt, masks, color_ok, shape_ok, moves_right if direction == "right" else moves_left)
