r"""
An independent colour and shape detector for toy-model images, and a prompt-following check built on it.

It knows nothing of the model: per half of the image (left / right) it finds the dominant object colour (each pixel
goes to the nearest of the four reference colours or the background), the object's pixel mask (the largest connected
blob of that colour), and a shape guess (a triangle when the blob's top is much narrower than its bottom, else the
better match, by intersection over union, of an ideal circle or square drawn in the blob's bounding box; the fill
ratio of the box is reported too: square ~1, circle ~0.785, triangle ~0.5). Any other blob large enough to be seen is
reported as a stray object, except a small blob on the rim of a much larger one of another colour (a colour fringe).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .scenes import COLOR_RGB, COLORS, SIDES, parse_prompt, sample_scene_spec

ImageLike = Union[Image.Image, np.ndarray]
# A blob whose top third is narrower than this fraction of its bottom third is a triangle.
TRIANGLE_TAPER = 0.7


@dataclass
class DetectedObject:
    r"""
    One blob found by the detector.

    Args:
        color (`str`): Its colour, one of `COLORS`.
        shape (`str`): The shape guess, one of `SHAPES`.
        side (`str`): `"left"` or `"right"`, from the blob's centroid.
        mask (`np.ndarray`): Boolean `(H, W)` mask of the blob.
        area (`int`): Number of pixels.
        fill_ratio (`float`): Area over the area of the bounding box.
        bbox (`Tuple[int, int, int, int]`): `(top, left, bottom, right)`, bottom and right exclusive.
    """

    color: str
    shape: str
    side: str
    mask: np.ndarray = field(repr=False)
    area: int
    fill_ratio: float
    bbox: Tuple[int, int, int, int]


@dataclass
class Detection:
    r"""
    What the detector found in one image.

    Args:
        objects (`Dict[str, Optional[DetectedObject]]`): The main object of each side (`None` for an empty side).
        strays (`List[DetectedObject]`): Every other blob of at least `min_area` pixels, except fringes.
        background (`np.ndarray`): The estimated background RGB colour.
        fringes (`List[DetectedObject]`): Small blobs of another colour on the rim of a larger blob.
    """

    objects: Dict[str, Optional[DetectedObject]]
    strays: List[DetectedObject]
    background: np.ndarray = field(repr=False)
    fringes: List[DetectedObject] = field(default_factory=list)

    def describe(self) -> str:
        r"""A prompt-like description of the main objects, e.g. `"a red circle on the left"`."""
        return " and ".join(
            f"a {obj.color} {obj.shape} on the {side}" for side, obj in self.objects.items() if obj is not None
        )


def to_uint8_array(image: ImageLike) -> np.ndarray:
    r"""A PIL image, or an `(H, W, 3)` array (uint8, or float in [0, 1]), as a `uint8` `(H, W, 3)` array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected an (H, W, 3) image, got shape {array.shape}.")
    return array


def connected_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    r"""4-connected components of a boolean mask: a label array (0 = outside) and the number of components."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    height, width = mask.shape
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        stack = [start]
        while stack:
            r, c = stack.pop()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not labels[nr, nc]:
                    labels[nr, nc] = count
                    stack.append((nr, nc))
    return labels, count


def _template(shape: str, height: int, width: int) -> np.ndarray:
    # The ideal shape filling a height x width box (pixel centres inside the shape).
    v, u = np.mgrid[0:height, 0:width]
    u = (u + 0.5) / width
    v = (v + 0.5) / height
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    return np.abs(u - 0.5) <= v / 2  # triangle, apex at the top


def classify_shape(mask: np.ndarray) -> Tuple[str, float, Tuple[int, int, int, int]]:
    r"""
    The shape of a blob, its fill ratio and its bounding box `(top, left, bottom, right)`.

    A blob whose top third is much narrower than its bottom third is a triangle (this survives a blurred or cut-off
    apex); otherwise the better match, by intersection over union, of an ideal circle or square drawn in its bounding
    box.
    """
    rows, cols = np.nonzero(mask)
    top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    crop = mask[top:bottom, left:right]
    fill_ratio = float(crop.mean())
    bbox = (int(top), int(left), int(bottom), int(right))
    widths = crop.sum(axis=1).astype(np.float64)
    third = max(1, len(widths) // 3)
    if widths[:third].mean() < TRIANGLE_TAPER * widths[-third:].mean():
        return "triangle", fill_ratio, bbox
    ious = {}
    for shape in ("circle", "square"):
        template = _template(shape, *crop.shape)
        ious[shape] = (template & crop).sum() / max(1, (template | crop).sum())
    return max(ious, key=ious.get), fill_ratio, bbox


def estimate_background(image: np.ndarray) -> np.ndarray:
    r"""Median colour of the image border (objects never touch it)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border.astype(np.float64), axis=0)


def detect_objects(image: ImageLike, min_area: Optional[int] = None, fringe_ratio: float = 0.25) -> Detection:
    r"""
    Find the main object of each half of a toy image, and stray blobs.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`):
            The image: PIL, or an `(H, W, 3)` array (uint8, or float in [0, 1]).
        min_area (`int`, *optional*):
            Blobs with fewer pixels are ignored; defaults to 8 per 32x32 pixels of image (the smallest rendered object
            has 32 per 32x32).
        fringe_ratio (`float`, *optional*, defaults to 0.25):
            A blob touching a blob of another colour more than `1 / fringe_ratio` times its size is counted as that
            object's colour fringe (in `Detection.fringes`), not as a stray object.
    """
    array = to_uint8_array(image).astype(np.float64)
    if min_area is None:
        min_area = max(1, round(8 * array.shape[0] * array.shape[1] / 32**2))
    background = estimate_background(array)
    references = np.stack([background] + [np.asarray(COLOR_RGB[c], dtype=np.float64) for c in COLORS])
    distances = np.linalg.norm(array[:, :, None, :] - references[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)  # 0 = background, 1 + i = COLORS[i]
    width = array.shape[1]

    blobs: List[DetectedObject] = []
    for index, color in enumerate(COLORS, start=1):
        labels, count = connected_components(nearest == index)
        for label in range(1, count + 1):
            mask = labels == label
            area = int(mask.sum())
            if area < min_area:
                continue
            shape, fill_ratio, bbox = classify_shape(mask)
            side = "left" if np.nonzero(mask)[1].mean() < width / 2 else "right"
            blobs.append(DetectedObject(color, shape, side, mask, area, fill_ratio, bbox))

    # A small blob touching a much larger one of another colour is a colour fringe of that object (e.g. the orange
    # rim of a red shape read as yellow), not an object of its own.
    blobs.sort(key=lambda b: -b.area)
    kept: List[DetectedObject] = []
    fringes: List[DetectedObject] = []
    for blob in blobs:
        grown = _dilate(blob.mask)
        touches_larger = any(other.area * fringe_ratio > blob.area and (grown & other.mask).any() for other in kept)
        (fringes if touches_larger else kept).append(blob)

    objects: Dict[str, Optional[DetectedObject]] = {}
    strays: List[DetectedObject] = []
    for side in SIDES:
        on_side = [b for b in kept if b.side == side]
        objects[side] = on_side[0] if on_side else None
        strays.extend(on_side[1:])
    return Detection(objects=objects, strays=strays, background=background, fringes=fringes)


def object_boxes(image: ImageLike) -> List[Tuple[str, Tuple[Tuple[int, int], Tuple[int, int]]]]:
    r"""
    Boxes to ask a toy image about: `("object", box)` around each main object the detector finds (its bounding box,
    left side first), and `("empty", box)`, a box of the first object's size over empty background (overlapping no
    blob nor its one-pixel rim), where there is room. Boxes are `((x0, y0), (x1, y1))`, x1 and y1 exclusive.
    """
    array = to_uint8_array(image)
    detection = detect_objects(array)
    found = [obj for obj in detection.objects.values() if obj is not None]
    occupied = np.zeros(array.shape[:2], bool)
    for obj in found + detection.strays + detection.fringes:
        occupied |= obj.mask
    boxes = []
    for obj in found:
        top, left, bottom, right = obj.bbox
        boxes.append(("object", ((left, top), (right, bottom))))
    if found:
        top, left, bottom, right = found[0].bbox
        place = empty_box_like(occupied, bottom - top, right - left)
        if place is not None:
            y, x = place
            boxes.append(("empty", ((x, y), (x + right - left, y + bottom - top))))
    return boxes


def empty_box_like(occupied: np.ndarray, height: int, width: int) -> Optional[Tuple[int, int]]:
    r"""The `(top, left)` of the first `height` x `width` box (row by row) that overlaps no `occupied` pixel nor its
    one-pixel rim, or `None`."""
    rows, cols = occupied.shape
    for top in range(rows - height + 1):
        for left in range(cols - width + 1):
            rim = occupied[max(0, top - 1) : top + height + 1, max(0, left - 1) : left + width + 1]
            if not rim.any():
                return top, left
    return None


def _dilate(mask: np.ndarray) -> np.ndarray:
    # 8-neighbourhood dilation by one pixel.
    padded = np.pad(mask, 1)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            grown |= padded[dr : dr + height, dc : dc + width]
    return grown


@dataclass
class PromptCheck:
    r"""
    How one image follows its scene prompt.

    Args:
        prompt (`str`): The prompt.
        detection (`Detection`): What the detector found.
        color_side (`List[bool]`): Per named object: the object on its side has the named colour.
        shape (`List[bool]`): Per named object: ... and the named shape.
        extra_objects (`int`): Stray blobs plus objects on a side the prompt leaves empty.
    """

    prompt: str
    detection: Detection
    color_side: List[bool]
    shape: List[bool]
    extra_objects: int

    @property
    def correct(self) -> bool:
        r"""Every named object has the right colour on the right side, and nothing else is there."""
        return all(self.color_side) and self.extra_objects == 0


def check_prompt(image: ImageLike, prompt: str, min_area: Optional[int] = None) -> PromptCheck:
    r"""
    Check an image against a scene prompt with `detect_objects`.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): The image.
        prompt (`str`): A scene prompt, e.g. `"a red circle on the left and a blue square on the right"`.
        min_area (`int`, *optional*): Smallest blob counted (see [`detect_objects`]).
    """
    detection = detect_objects(image, min_area=min_area)
    named = parse_prompt(prompt)
    color_side, shape = [], []
    for color, shape_name, side in named:
        found = detection.objects[side]
        color_side.append(found is not None and found.color == color)
        shape.append(found is not None and found.color == color and found.shape == shape_name)
    named_sides = {side for _, _, side in named}
    extra = len(detection.strays) + sum(
        1 for side, obj in detection.objects.items() if obj is not None and side not in named_sides
    )
    return PromptCheck(prompt, detection, color_side, shape, extra)


def evaluate_prompt_following(
    pipe,
    num_prompts: int = 40,
    guidance_scale: float = 4.0,
    num_inference_steps: int = 20,
    seed: int = 12345,
    batch_size: int = 40,
    return_checks: bool = False,
    order: str = "left_first",
    pipeline_kwargs: Optional[Dict] = None,
) -> Dict[str, float]:
    r"""
    Generate images for fresh one-object and two-object scene prompts and measure prompt following.

    Args:
        pipe (`StableDiffusionPipeline`): The toy pipeline.
        num_prompts (`int`, *optional*, defaults to 40): Prompts of each kind (one object, two objects).
        guidance_scale (`float`, *optional*, defaults to 4.0): Classifier-free guidance scale.
        num_inference_steps (`int`, *optional*, defaults to 20): Denoising steps.
        seed (`int`, *optional*, defaults to 12345): Seed of the prompts and of the initial noise of each image.
        batch_size (`int`, *optional*, defaults to 40): Images per pipeline call.
        return_checks (`bool`, *optional*, defaults to `False`): Also return the `PromptCheck` of every image under
            the key `"checks"`.
        order (`str`, *optional*, defaults to `"left_first"`): Order of the objects in two-object prompts (see
            `scenes.sample_scene_spec`).
        pipeline_kwargs (`dict`, *optional*): More arguments of the pipeline's call (e.g. the Flux toy's
            `negative_prompt`, `true_cfg_scale`, `height`, `width`).

    Returns:
        `dict`: per kind (`one_object_`, `two_object_`): `color_side` (fraction of named objects with the right
        colour on the right side), `shape` (... and the right shape), `all_correct` (fraction of images whose every
        object is right with nothing extra), `extra_objects` (fraction of images with a stray or unrequested object).
    """
    import torch

    rng = np.random.default_rng(seed)
    prompts = [sample_scene_spec(rng, 1).prompt for _ in range(num_prompts)]
    prompts += [sample_scene_spec(rng, 2, order=order).prompt for _ in range(num_prompts)]
    checks: List[PromptCheck] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        images = pipe(
            batch,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generators,
            output_type="np",
            **(pipeline_kwargs or {}),
        ).images
        checks.extend(check_prompt(image, prompt) for image, prompt in zip(images, batch))
    results: Dict[str, float] = {}
    for kind, subset in (("one_object", checks[:num_prompts]), ("two_object", checks[num_prompts:])):
        results.update(_summarize(kind, subset))
    if return_checks:
        results["checks"] = checks  # type: ignore[assignment]
    return results


def _summarize(kind: str, checks: Sequence[PromptCheck]) -> Dict[str, float]:
    color_side = [x for c in checks for x in c.color_side]
    shape = [x for c in checks for x in c.shape]
    return {
        f"{kind}_color_side": float(np.mean(color_side)),
        f"{kind}_shape": float(np.mean(shape)),
        f"{kind}_all_correct": float(np.mean([c.correct for c in checks])),
        f"{kind}_extra_objects": float(np.mean([c.extra_objects > 0 for c in checks])),
    }
