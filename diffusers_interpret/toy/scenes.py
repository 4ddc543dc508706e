r"""
Deterministic synthetic scenes for the toy model: one or two plain coloured shapes on a light background.

Every scene comes with its prompt and the exact boolean mask of every object, so the ground truth of "which pixels
belong to which word" is known. Prompts have exactly the forms

- `"a red circle on the left"`
- `"a yellow triangle on the right"`
- `"a red circle on the left and a blue square on the right"` (two objects: one per side, distinct colours; the left
  object named first, or either first with `order="random"`, the scenes of the 64x64 toy model, where the side words
  are then needed to draw the scene).

Object sizes scale with the image: 8-12 pixels at 32x32, 16-24 at 64x64.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
COLORS: Tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
SIDES: Tuple[str, ...] = ("left", "right")
# Reference RGB values of the object colours, also used by the detector.
COLOR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 205, 30),
}
# Object sizes at IMAGE_SIZE; other image sizes scale them.
MIN_OBJECT_SIZE = 8
MAX_OBJECT_SIZE = 12
ORDERS: Tuple[str, ...] = ("left_first", "random")
# Every word a scene prompt can contain (each is a single token of the toy tokenizer).
SCENE_WORDS: Tuple[str, ...] = ("a", "on", "the", "and") + SIDES + COLORS + SHAPES


@dataclass(frozen=True)
class SceneObject:
    r"""
    One object of a scene.

    Args:
        color (`str`): One of `COLORS`.
        shape (`str`): One of `SHAPES`.
        side (`str`): `"left"` or `"right"`: the half of the image the object lies in.
        size (`int`): Width and height of the object's bounding box in pixels.
        x (`int`): Column of the bounding box's left edge (in the full image).
        y (`int`): Row of the bounding box's top edge.
    """

    color: str
    shape: str
    side: str
    size: int
    x: int
    y: int

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.shape} on the {self.side}"


@dataclass(frozen=True)
class SceneSpec:
    r"""
    A full scene description: its objects (in prompt order) and its background colour.

    Args:
        objects (`Tuple[SceneObject, ...]`): One or two objects, in prompt order; with two, one per side and in
            distinct colours.
        background (`Tuple[int, int, int]`): Light background RGB colour.
        image_size (`int`, *optional*, defaults to 32): Height and width of the image in pixels.
    """

    objects: Tuple[SceneObject, ...]
    background: Tuple[int, int, int]
    image_size: int = IMAGE_SIZE

    @property
    def prompt(self) -> str:
        return " and ".join(obj.phrase for obj in self.objects)


@dataclass
class RenderedScene:
    r"""
    A rendered scene with its ground truth.

    Args:
        image (`np.ndarray`): `uint8` array of shape `(H, W, 3)`.
        prompt (`str`): The scene's prompt.
        objects (`List[SceneObject]`): The objects, in prompt order.
        masks (`List[np.ndarray]`): Exact boolean `(H, W)` mask of each object, in the order of `objects`.
        spec (`SceneSpec`): The description the scene was rendered from.
    """

    image: np.ndarray
    prompt: str
    objects: List[SceneObject]
    masks: List[np.ndarray]
    spec: SceneSpec
    extras: dict = field(default_factory=dict)

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def shape_mask(shape: str, size: int, x: int, y: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    r"""
    Exact boolean mask of a shape whose `size` x `size` bounding box has its top-left corner at column `x`, row `y`.

    A pixel belongs to the shape when its centre does. Circles fill ~78.5% of their box, squares 100% and triangles
    (base at the bottom, apex at the top centre) ~50%.
    """
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    u = cols + 0.5 - x  # pixel centre, relative to the box
    v = rows + 0.5 - y
    inside = (u >= 0) & (u <= size) & (v >= 0) & (v <= size)
    if shape == "square":
        return inside
    if shape == "circle":
        r = size / 2
        return (u - r) ** 2 + (v - r) ** 2 <= r**2
    if shape == "triangle":
        # Apex (size / 2, 0), base from (0, size) to (size, size): |u - size/2| <= v / 2.
        return inside & (np.abs(u - size / 2) <= v / 2)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def sample_object(
    rng: np.random.Generator,
    side: str,
    color: Optional[str] = None,
    shape: Optional[str] = None,
    image_size: int = IMAGE_SIZE,
) -> SceneObject:
    r"""
    Draw a random object in the given half of the image (a margin of 1 pixel per 32 of image size to the borders and
    the middle line).
    """
    color = color if color is not None else COLORS[rng.integers(len(COLORS))]
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    scale = max(1, image_size // IMAGE_SIZE)
    size = int(rng.integers(MIN_OBJECT_SIZE * scale, MAX_OBJECT_SIZE * scale + 1))
    half = image_size // 2
    x = int(rng.integers(scale, half - size)) + (half if side == "right" else 0)
    y = int(rng.integers(scale, image_size - size))
    return SceneObject(color=color, shape=shape, side=side, size=size, x=x, y=y)


def sample_background(rng: np.random.Generator) -> Tuple[int, int, int]:
    r"""A light, nearly grey background colour."""
    base = int(rng.integers(215, 246))
    return tuple(int(np.clip(base + rng.integers(-6, 7), 0, 255)) for _ in range(3))


def sample_scene_spec(
    rng: Union[np.random.Generator, int],
    num_objects: Optional[int] = None,
    image_size: int = IMAGE_SIZE,
    order: str = "left_first",
) -> SceneSpec:
    r"""
    Draw a random scene description.

    Args:
        rng (`np.random.Generator` or `int`):
            Random generator, or a seed for a new one; the same seed always gives the same scene.
        num_objects (`int`, *optional*):
            1 or 2; random (equal odds) when not given.
        image_size (`int`, *optional*, defaults to 32):
            Height and width of the image in pixels.
        order (`str`, *optional*, defaults to `"left_first"`):
            Which object of a two-object scene the prompt names first: `"left_first"`, or `"random"` (equal odds).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if num_objects is None:
        num_objects = int(rng.integers(1, 3))
    if num_objects == 1:
        side = SIDES[rng.integers(2)]
        objects = (sample_object(rng, side, image_size=image_size),)
    elif num_objects == 2:
        left_color, right_color = rng.choice(len(COLORS), size=2, replace=False)
        objects = (
            sample_object(rng, "left", color=COLORS[left_color], image_size=image_size),
            sample_object(rng, "right", color=COLORS[right_color], image_size=image_size),
        )
        if order == "random" and rng.integers(2):
            objects = objects[::-1]
    else:
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}.")
    return SceneSpec(objects=objects, background=sample_background(rng), image_size=image_size)


def render_scene(spec: SceneSpec) -> RenderedScene:
    r"""
    Render a scene description to an image with exact object masks.
    """
    size = spec.image_size
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = np.asarray(spec.background, dtype=np.uint8)
    masks = []
    for obj in spec.objects:
        mask = shape_mask(obj.shape, obj.size, obj.x, obj.y, size)
        image[mask] = np.asarray(COLOR_RGB[obj.color], dtype=np.uint8)
        masks.append(mask)
    return RenderedScene(image=image, prompt=spec.prompt, objects=list(spec.objects), masks=masks, spec=spec)


def generate_scene(
    seed: int, num_objects: Optional[int] = None, image_size: int = IMAGE_SIZE, order: str = "left_first"
) -> RenderedScene:
    r"""
    Sample and render one scene from a seed (deterministic).

    Args:
        seed (`int`): Seed of the scene.
        num_objects (`int`, *optional*): 1 or 2; random when not given.
        image_size (`int`, *optional*, defaults to 32): Height and width of the image in pixels.
        order (`str`, *optional*, defaults to `"left_first"`): See [`sample_scene_spec`].
    """
    return render_scene(sample_scene_spec(np.random.default_rng(seed), num_objects, image_size, order))


def generate_scenes(
    num_scenes: int,
    seed: int = 0,
    num_objects: Optional[int] = None,
    image_size: int = IMAGE_SIZE,
    order: str = "left_first",
) -> List[RenderedScene]:
    r"""
    Sample and render `num_scenes` scenes from one seeded generator (deterministic).
    """
    rng = np.random.default_rng(seed)
    return [render_scene(sample_scene_spec(rng, num_objects, image_size, order)) for _ in range(num_scenes)]


def parse_prompt(prompt: str) -> List[Tuple[str, str, str]]:
    r"""
    The `(color, shape, side)` triples named by a scene prompt, in order.

    Raises `ValueError` for a prompt that is not of the scene forms.
    """
    triples = []
    for phrase in prompt.strip().lower().split(" and "):
        words = phrase.split()
        if len(words) != 6 or words[0] != "a" or words[3:5] != ["on", "the"]:
            raise ValueError(f"Not a scene prompt: {prompt!r}")
        color, shape, side = words[1], words[2], words[5]
        if color not in COLORS or shape not in SHAPES or side not in SIDES:
            raise ValueError(f"Not a scene prompt: {prompt!r}")
        triples.append((color, shape, side))
    return triples
