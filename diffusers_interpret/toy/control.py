r"""
A toy ControlNet for the shipped 32x32 toy Stable Diffusion model, whose control image is the scene's outlines only.

The control image of a scene (`outline_image`) is a white one-pixel boundary of every object's mask on black: it
carries each object's shape and position but no colour. The ControlNet (`diffusers.ControlNetModel`, made from the
toy UNet by `ControlNetModel.from_unet`) was trained by `scripts/train_toy_controlnet.py` with the toy's UNet, VAE and
text encoder frozen, with 30% of the prompts naming colours only (or nothing), so that the shapes and positions come
from the control image. Since the scenes are rendered from known descriptions, which control pixels an object's
pixels should depend on (its own outline) is known: see `benchmarks/toy_control_truth.py`.

```python
from diffusers_interpret.toy.control import TOY_CONTROL_CALL, load_toy_controlnet_pipeline, outline_image
from diffusers_interpret.toy.scenes import generate_scene

pipe = load_toy_controlnet_pipeline()
scene = generate_scene(4, num_objects=2)
image = pipe("a red object on the left and a blue object on the right", image=outline_image(scene),
             **TOY_CONTROL_CALL).images[0]
```
"""

import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from .detector import ImageLike, detect_objects
from .scenes import RenderedScene, SceneSpec, render_scene

TOY_CONTROLNET_DIR = Path(__file__).resolve().parent / "model_controlnet"
# Guidance 2, not the toy's 4: classifier-free guidance amplifies, through its unconditional branch (the empty prompt
# with the same control), how much one object depends on the other object's outline. On the 40 object boxes of
# `benchmarks/toy_control_truth.py`, the median share of a box's control attribution on its own outline is 83% at
# guidance 2 and 79% at 4 (on its first 10 scenes: 85.5% at 1, 73% at 7); the training check draws 92.5% / 85% of
# held-out scenes right with full / colour-only prompts at 2, 95% / 77.5% at 4.
TOY_CONTROL_CALL = dict(guidance_scale=2.0, num_inference_steps=20)
# An object's detected mask must overlap its scene mask by this IoU for its position to count as drawn.
POSITION_IOU = 0.5

__all__ = [
    "TOY_CONTROL_CALL",
    "TOY_CONTROLNET_DIR",
    "color_only_prompt",
    "load_toy_controlnet_pipeline",
    "matches_scene",
    "outline_band",
    "outline_image",
    "outline_mask",
]


def _neighbours_all(mask: np.ndarray, pad_value: bool) -> np.ndarray:
    # Whether each pixel's four neighbours are all in `mask` (pixels beyond the border count as `pad_value`).
    padded = np.pad(mask, 1, constant_values=pad_value)
    return padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def outline_mask(mask: np.ndarray) -> np.ndarray:
    r"""
    The one-pixel inner boundary of a boolean mask: its pixels with at least one of their four neighbours outside it
    (the image's border counts as outside).

    Args:
        mask (`np.ndarray`): Boolean `(H, W)` mask of one object.
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~_neighbours_all(mask, pad_value=False)


def outline_band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    r"""
    The pixels within `width` pixels (8-neighbourhood, i.e. Chebyshev distance) of a mask's outline.

    Args:
        mask (`np.ndarray`): Boolean `(H, W)` mask of one object.
        width (`int`, *optional*, defaults to 2): How far the band reaches on either side of the outline.
    """
    band = outline_mask(mask)
    height, cols = band.shape
    for _ in range(width):
        padded = np.pad(band, 1)
        grown = np.zeros_like(band)
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                grown |= padded[dr : dr + height, dc : dc + cols]
        band = grown
    return band


def outline_image(scene: Union[SceneSpec, RenderedScene]) -> Image.Image:
    r"""
    The control image of a scene: a white one-pixel outline of every object's mask on black, with no colour.

    Args:
        scene (`SceneSpec` or `RenderedScene`): The scene (a description is rendered first).

    Returns:
        `PIL.Image.Image`: An RGB image of the scene's size.
    """
    if isinstance(scene, SceneSpec):
        scene = render_scene(scene)
    lines = np.zeros(scene.image.shape[:2], dtype=bool)
    for mask in scene.masks:
        lines |= outline_mask(mask)
    return Image.fromarray(np.repeat(lines[:, :, None] * np.uint8(255), 3, axis=2))


def color_only_prompt(scene: Union[SceneSpec, RenderedScene]) -> str:
    r"""
    The scene's prompt with every shape word replaced by "object", e.g. `"a red object on the left and a blue object
    on the right"`: it names colours and sides, and leaves the shapes to the control image.

    Args:
        scene (`SceneSpec` or `RenderedScene`): The scene.
    """
    return " and ".join(f"a {obj.color} object on the {obj.side}" for obj in scene.objects)


def matches_scene(image: ImageLike, scene: RenderedScene, with_color: bool = True) -> bool:
    r"""
    Whether the detector finds every object of the scene in `image`, on its side, with its shape (and its colour
    when `with_color`), at its position (a mask IoU of at least `POSITION_IOU` with the scene's mask), and nothing
    else.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): A generated image.
        scene (`RenderedScene`): The scene whose outlines were the control image.
        with_color (`bool`, *optional*, defaults to `True`): Also require each object's colour.
    """
    detection = detect_objects(image)
    sides = {obj.side for obj in scene.objects}
    if detection.strays or any(found is not None and side not in sides for side, found in detection.objects.items()):
        return False
    for obj, mask in zip(scene.objects, scene.masks):
        found = detection.objects[obj.side]
        if found is None or found.shape != obj.shape or (with_color and found.color != obj.color):
            return False
        if (found.mask & mask).sum() / (found.mask | mask).sum() < POSITION_IOU:
            return False
    return True


def load_toy_controlnet_pipeline(torch_dtype=None, device: Union[str, "torch.device"] = "cpu"):  # noqa: F821
    r"""
    Load the toy `StableDiffusionControlNetPipeline` offline: the shipped 32x32 toy pipeline's components plus the
    shipped outline ControlNet, every model frozen and in eval mode, no safety checker.

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Dtype of the loaded weights (they are stored in fp16; fp32 is recommended on CPU).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Device to move the pipeline to.

    Returns:
        `StableDiffusionControlNetPipeline`: The pipeline, progress bar disabled. Generate with an `outline_image`
        as `image` and `**TOY_CONTROL_CALL`.
    """
    import torch

    from . import load_toy_pipeline, quiet_loading

    if not (TOY_CONTROLNET_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"The toy ControlNet's files are missing from {TOY_CONTROLNET_DIR}. Reinstall diffusers-interpret, or "
            "train it with `python scripts/train_toy_controlnet.py`."
        )
    dtype = torch.float32 if torch_dtype is None else torch_dtype
    base = load_toy_pipeline(dtype, device)
    with warnings.catch_warnings(), quiet_loading():
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        controlnet = ControlNetModel.from_pretrained(str(TOY_CONTROLNET_DIR), torch_dtype=dtype)
        pipe = StableDiffusionControlNetPipeline(
            **{name: getattr(base, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
            controlnet=controlnet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe = pipe.to(device)
    pipe.controlnet.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
