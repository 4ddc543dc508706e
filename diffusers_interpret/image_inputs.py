"""The input images of img2img, inpainting and ControlNet calls, as per-call objects (explainers hold no per-call
state)."""

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .tracing.leaves import LeafPreprocessedImage
from .tracing.run import Recording


def image_size(image) -> Optional[Tuple[int, int]]:
    r"""(height, width) of a PIL image, an (H, W[, C]) array or a ([B, ]C, H, W) tensor; None for other inputs."""
    from PIL import Image

    if isinstance(image, list):
        image = image[0] if image else None
    if isinstance(image, Image.Image):
        return (image.size[1], image.size[0])
    if isinstance(image, np.ndarray):
        return (
            tuple(image.shape[-3:-1]) if image.ndim >= 3 and image.shape[-1] in (1, 3, 4) else tuple(image.shape[:2])
        )
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:])
    return None


def as_input_image(image, name: str, mask: bool = False):
    r"""
    An input image as the pipeline's preprocessing reads it: a path is opened; a PIL image is made RGB (a mask: L);
    an array's alpha channel is dropped and a grey one made RGB. Arrays of floats must hold [0, 1] values.

    Raises:
        `FileNotFoundError`: for a path that does not exist.
        `TypeError`: for something that is not an image, an array, a tensor or a path.
        `ValueError`: for an empty, non-finite or oddly shaped array, or a float array outside [0, 1].
    """
    from pathlib import Path

    from PIL import Image

    if isinstance(image, list):
        if not image:
            raise ValueError(f"`{name}` is an empty list: pass an image.")
        return [as_input_image(item, name, mask) for item in image]
    if not isinstance(image, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        raise TypeError(
            f"`{name}` must be a PIL image, a numpy array, a torch tensor or the path of an image file, got "
            f"{type(image).__name__}."
        )
    if isinstance(image, (np.ndarray, torch.Tensor)):
        _check_array(image, name, mask)

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`{name}` {str(image)!r} is not a file: pass an image, or the path of one.")
        with Image.open(path) as opened:
            image = opened.copy()
    if isinstance(image, Image.Image):
        wanted = "L" if mask else "RGB"
        if image.mode != wanted and not (mask and image.mode in ("1", "RGB")):
            _note(name, f"a {image.mode} image", wanted)
        return image if image.mode == wanted else image.convert(wanted)
    if isinstance(image, np.ndarray):
        if image.dtype.kind == "f" and image.size and (float(image.max()) > 1.0 or float(image.min()) < 0.0):
            raise ValueError(
                f"`{name}` is a float array with values in [{float(image.min()):g}, {float(image.max()):g}]: give "
                "floats in [0, 1] (or uint8 values in [0, 255])."
            )
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        if image.ndim == 3 and image.shape[-1] == 4:
            _note(name, "an array with an alpha channel", "RGB (alpha dropped)")
            image = image[..., :3]
        if not mask and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1)):
            _note(name, "a one-channel array", "RGB")
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        return image
    return image


def _note(name: str, what: str, made: str) -> None:
    warnings.warn(f"`{name}` is {what}: converted to {made}, as the pipeline reads it.", stacklevel=5)


def _check_array(image, name: str, mask: bool) -> None:
    shape = tuple(image.shape)
    if isinstance(image, np.ndarray):
        channels_ok = len(shape) == 2 or (len(shape) in (3, 4) and shape[-1] in (1, 3, 4))
        layout = "(height, width) or (height, width, channels) with 1, 3 or 4 channels"
    else:
        channels_ok = len(shape) == 2 or (len(shape) in (3, 4) and shape[-3] in (1, 3, 4))
        layout = "(channels, height, width) or (batch, channels, height, width) with 1, 3 or 4 channels"
    if not channels_ok:
        raise ValueError(f"`{name}` has shape {shape}: give {layout}.")
    if 0 in shape:
        raise ValueError(f"`{name}` has shape {shape}: it is empty.")
    if isinstance(image, np.ndarray):
        finite = image.dtype.kind != "f" or bool(np.isfinite(image).all())
    else:
        finite = not image.is_floating_point() or bool(torch.isfinite(image).all())
    if not finite:
        raise ValueError(f"`{name}` holds NaN or infinite values.")


@dataclass
class ImageInput:
    r"""
    One call's input image (and inpainting mask), at the size the pipeline's own preprocessing gives it.

    Args:
        pipe: The pipeline.
        image: The input image as the user gave it.
        mask_image: The inpainting mask (white where repainted), or `None` for img2img.
        height (`int`): The processing height.
        width (`int`): The processing width.
        argument (`str`, *optional*, defaults to `"image"`): The pipeline call's argument that takes it (a Flux
            ControlNet's `"control_image"`).
        processor (`str`, *optional*, defaults to `"image_processor"`): The pipeline's attribute of the image
            processor that preprocesses it (a ControlNet's `"control_image_processor"`, which keeps [0, 1] values).
        reads_reference (`bool`, *optional*, defaults to `False`): The denoiser reads the image's tokens in its
            sequence (Flux Kontext's reference image: its family's `reads_reference`).
    """

    pipe: Any
    image: Any
    mask_image: Any
    height: int
    width: int
    argument: str = "image"
    processor: str = "image_processor"
    reads_reference: bool = False

    @classmethod
    def make(
        cls,
        pipe,
        image,
        mask_image,
        height: Optional[int],
        width: Optional[int],
        argument: str = "image",
        processor: str = "image_processor",
        reads_reference: bool = False,
    ) -> "ImageInput":
        image = as_input_image(image, argument)
        if mask_image is not None:
            mask_image = as_input_image(mask_image, "mask_image", mask=True)
        processed = getattr(pipe, processor).preprocess(image, height=height, width=width)
        size = int(processed.shape[-2]), int(processed.shape[-1])
        made = cls(pipe, image, mask_image, *size, argument, processor, reads_reference)
        if mask_image is not None:
            image_hw, mask_hw = image_size(image), image_size(mask_image)
            if image_hw is not None and mask_hw is not None and image_hw != mask_hw:
                raise ValueError(
                    f"`mask_image` is {mask_hw[1]}x{mask_hw[0]} (width x height) but the image is "
                    f"{image_hw[1]}x{image_hw[0]}: give a mask of the image's size."
                )
        return made

    def pipeline_kwargs(self) -> Dict[str, Any]:
        r"""The pipeline call's image arguments (and the size, where the pipeline's call takes one)."""
        kwargs: Dict[str, Any] = {self.argument: self.image}
        if self.mask_image is not None:
            kwargs["mask_image"] = self.mask_image
        if "height" in inspect.signature(type(self.pipe).__call__).parameters:
            kwargs.update(height=self.height, width=self.width)
        return kwargs

    def pixel_recording(self) -> Recording:
        r"""The input image's [0, 1] pixels as a leaf of the run's graph, as a [`Recording`] named `"pixels"`: the
        pipeline's own preprocessing gives them, with a zero-valued term that carries their gradient."""
        name = self.processor
        return Recording("pixels", lambda plan, counter, call_kwargs: LeafPreprocessedImage(getattr(plan.pipe, name)))

    @property
    def image_processor(self):
        return getattr(self.pipe, self.processor)

    def _processed(self) -> torch.Tensor:
        image = self.image[0] if isinstance(self.image, list) else self.image
        return self.image_processor.preprocess(image, height=self.height, width=self.width)[:1].float()

    def pixels(self) -> torch.Tensor:
        r"""The processed input image's [0, 1] pixels, (1, 3, H, W)."""
        processed = self._processed()
        if self.image_processor.config.do_normalize:
            processed = (processed + 1) / 2
        return processed.clamp(0, 1)

    def picture(self):
        r"""The processed input image as a PIL image."""
        return self.image_processor.postprocess(self._processed(), output_type="pil")[0]

    def mask(self) -> Optional[np.ndarray]:
        r"""The inpainting mask at the processing size, (H, W) bool, True where repainted."""
        if self.mask_image is None:
            return None
        mask = self.pipe.mask_processor.preprocess(self.mask_image, height=self.height, width=self.width)
        return (mask[0, 0] >= 0.5).numpy()


def _check_color_image(image, name: str) -> None:
    # An explained image must be a colour picture as given: transparency and single channels are not guessed at.
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode not in ("RGB",):
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            raise ValueError(f"`{name}` has an alpha channel: flatten it first, e.g. `{name}.convert('RGB')`.")
        if image.mode in ("L", "1", "I", "I;16", "F"):
            raise ValueError(f"`{name}` has one channel: give a colour image, e.g. `{name}.convert('RGB')`.")
    if isinstance(image, np.ndarray) and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 4))):
        raise ValueError(f"`{name}` has shape {image.shape}: give (height, width, 3) RGB values.")
    if isinstance(image, torch.Tensor) and (image.ndim < 3 or image.shape[-3] in (1, 4)):
        raise ValueError(f"`{name}` has shape {tuple(image.shape)}: give (3, height, width) or (1, 3, height, width).")


@dataclass
class ExistingImage:
    r"""
    An image the user already has, explained instead of a generated one: as the pipeline's own image processor makes
    it (resized to a size its VAE takes), and where its explanation noises it.

    Args:
        pixels (`torch.Tensor`): (1, 3, H, W) in [-1, 1], the pipeline's preprocessing of the image.
        levels (`Tuple[float, ...]`): The noise levels it is denoised at (0 clean, 1 pure noise).
        seed (`int`): Seed of the noise.
        given_size (`Tuple[int, int]`, *optional*): The (height, width) it was given at, where that differs.
    """

    pixels: torch.Tensor
    levels: Tuple[float, ...]
    seed: int
    given_size: Optional[Tuple[int, int]] = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[-1])

    @classmethod
    def make(cls, pipe, image, height: Optional[int], width: Optional[int], levels, seed) -> "ExistingImage":
        r"""
        Check and preprocess an explained image (before any model runs).

        Raises:
            `ValueError` / `TypeError`: for something that is not a colour image, one the VAE cannot take, or noise
                levels outside (0, 1).
        """
        if isinstance(image, list):
            raise TypeError("`image` must be one image: explain images one at a time.")
        _check_color_image(image, "image")
        image = as_input_image(image, "image")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`noise_seed` must be an integer, got {seed!r}.")
        levels = tuple(levels) if isinstance(levels, (list, tuple)) else None
        if not levels or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < float(v) < 1 for v in levels
        ):
            raise ValueError(
                f"`noise_levels` must be a non-empty list of numbers in (0, 1) (0 is the clean image, 1 pure "
                f"noise), e.g. [0.3, 0.5, 0.7]; got {levels!r}."
            )
        given = image_size(image)
        processor = pipe.image_processor
        factor = int(processor.config.vae_scale_factor)
        size = (height or given[0], width or given[1])
        if min(size) < factor:
            raise ValueError(
                f"`image` is {given[1]}x{given[0]} (width x height): the VAE takes sides of at least {factor} pixels "
                "(a multiple of it): give a larger image."
            )
        pixels = processor.preprocess(image, height=height, width=width)[:1].float()
        made = tuple(int(side) for side in pixels.shape[-2:])
        if made != tuple(given):
            warnings.warn(
                f"`image` is {given[1]}x{given[0]} (width x height): resized to {made[1]}x{made[0]}, as the "
                "pipeline's image processor does (a multiple of its VAE's cell).",
                stacklevel=5,
            )
        return cls(pixels, tuple(float(v) for v in levels), int(seed), given_size=tuple(given))

    def picture(self, pipe, output_type: str = "pil"):
        r"""The image as the pipeline processed it, in `output_type`."""
        return pipe.image_processor.postprocess(self.pixels, output_type=output_type)[0]
