"""Explainers of pipelines that start from an input image: img2img and inpainting, with pixel attributions."""

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from .attribution import aggregate
from .explainer import BasePipelineExplainer
from .hooks import leaf_preprocessed_image
from .outputs import BaseExplanationOutput, PixelAttributions
from .saliency import SaliencyMap


@dataclass
class PipelineImg2ImgExplainerOutput(BaseExplanationOutput):
    r"""
    The explanation of an image made from an input image. Everything of [`BaseExplanationOutput`], and:

    Args:
        pixel_attributions (`PixelAttributions`, *optional*):
            (H, W) scores of the input image's pixels (at the pipeline's processing size), aggregated over channels
            with the attribution method; `.normalized` in percent. `None` where the traced steps do not reach the
            image (img2img with fewer traced steps than steps).
        input_saliency_map (`SaliencyMap`, *optional*): The pixel attributions as pictures (`.show()`, `.overlay()`).
        pixel_gradients (`torch.Tensor`, *optional*): Raw (3, H, W) gradient w.r.t. the [0, 1] input pixels.
        input_image (`PIL.Image.Image`, *optional*): The input image as the pipeline processed it.
    """

    pixel_attributions: Optional[PixelAttributions] = None
    input_saliency_map: Optional[SaliencyMap] = None
    pixel_gradients: Optional[torch.Tensor] = None
    input_image: Any = None


@dataclass
class PipelineInpaintExplainerOutput(PipelineImg2ImgExplainerOutput):
    r"""As [`PipelineImg2ImgExplainerOutput`], plus the inpainting `mask` ((H, W) bool, True where repainted)."""

    mask: Optional[np.ndarray] = None


def _size(image) -> Optional[tuple]:
    # (height, width) of a PIL image, an (H, W[, C]) array or a ([B, ]C, H, W) tensor; None for other inputs.
    if isinstance(image, list):
        image = image[0] if image else None
    if hasattr(image, "size") and not callable(image.size):
        return (image.size[1], image.size[0])
    if isinstance(image, np.ndarray):
        return (
            tuple(image.shape[-3:-1]) if image.ndim >= 3 and image.shape[-1] in (1, 3, 4) else tuple(image.shape[:2])
        )
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:])
    return None


class _InputImageExplainer(BasePipelineExplainer):
    output_class = PipelineImg2ImgExplainerOutput
    grad_before_loop = True

    def __call__(self, prompt, *args, init_image=None, image=None, **kwargs):
        r"""
        Generate from an input image and explain the result: token attributions as for text-to-image, plus pixel
        attributions of the input image.

        Args:
            prompt (`str` or `List[str]`): The prompt(s).
            init_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                The input image (the original 0.5.0's name); `image=` (diffusers' name) is the same. Give one of them.
            kwargs: As for [`StableDiffusionPipelineExplainer.__call__`], and every other argument of the pipeline
                (`strength`, `mask_image`, `guidance_scale`, ...).
        """
        if init_image is not None and image is not None:
            raise ValueError("Pass the input image once: as `image=` (or as the legacy `init_image=`), not both.")
        if init_image is None and image is None:
            raise ValueError(f"{type(self.pipe).__name__} needs an input image: pass `image=` (or `init_image=`).")
        self._image = init_image if init_image is not None else image
        try:
            return super().__call__(prompt, *args, image=self._image, **kwargs)
        finally:
            self._image = None

    def _image_size(self, height, width, pipeline_kwargs):
        # The size the pipeline will process the image at: its own preprocessing decides.
        processed = self.pipe.image_processor.preprocess(pipeline_kwargs["image"], height=height, width=width)
        return int(processed.shape[-2]), int(processed.shape[-1])

    def _input_leaves(self, leaves):
        return leaf_preprocessed_image(self.pipe.image_processor, leaves, "pixels")

    def _step_images(self, step_latents, generator):
        sequences = super()._step_images(step_latents, generator)
        start = self._processed_input_image()
        for sequence in sequences:
            sequence.insert(0, start)
        return sequences

    def _processed_input_image(self):
        image = self._image if not isinstance(self._image, list) else self._image[0]
        processed = self.pipe.image_processor.preprocess(image, height=self._height, width=self._width)
        return self.pipe.image_processor.postprocess(processed[:1].float(), output_type="pil")[0]

    def _prepare_pipeline_kwargs(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        self._height, self._width = kwargs.pop("height"), kwargs.pop("width")
        if "height" in self._call_parameters():
            kwargs.update(height=self._height, width=self._width)
        return kwargs

    def _call_parameters(self):
        import inspect

        return inspect.signature(type(self.pipe).__call__).parameters

    def _mask(self) -> Optional[np.ndarray]:
        return None

    def _input_pixels(self) -> Optional[torch.Tensor]:
        image = self._image if not isinstance(self._image, list) else self._image[0]
        processed = self.pipe.image_processor.preprocess(image, height=self._height, width=self._width)
        return ((processed[:1].float() + 1) / 2).clamp(0, 1)

    def _finish_output(self, output, index: int, gradients: Dict[str, torch.Tensor], method) -> None:
        if output.input_image is None:
            output.input_image = self._processed_input_image()
        pixel_scores = output.extras.pop("pixel_scores", None)
        if pixel_scores is not None:  # the method's own pixel attributions (integrated gradients)
            output.pixel_attributions = PixelAttributions(pixel_scores)
            mask = getattr(output, "mask", None)
            output.input_saliency_map = SaliencyMap(
                output.input_image, pixel_scores, self._mask() if mask is None else mask
            )
            return
        if "pixels" not in gradients:
            if output.token_attributions is not None:
                warnings.warn(
                    "The traced steps do not reach the input image's pixels (img2img uses the image only at the first "
                    "step: trace all steps with n_last_diffusion_steps_to_consider_for_attributions=None): "
                    "pixel_attributions is None.",
                    stacklevel=3,
                )
            return
        grad = gradients["pixels"]
        pixels = gradients["pixels_input"]
        row = index if grad.shape[0] > 1 else 0
        output.pixel_gradients = grad[row]
        scores = aggregate(grad[row], pixels[row], method, dim=0).numpy()
        output.pixel_attributions = PixelAttributions(scores)
        mask = getattr(output, "mask", None)
        output.input_saliency_map = SaliencyMap(output.input_image, scores, self._mask() if mask is None else mask)


class StableDiffusionImg2ImgPipelineExplainer(_InputImageExplainer):
    r"""
    Explains images made by a `StableDiffusionImg2ImgPipeline`: token attributions and pixel attributions of the init
    image.

    The input image enters img2img only at the first denoising step (as the noised start latents), so pixel
    attributions need every step traced (`n_last_diffusion_steps_to_consider_for_attributions=None`, the default).
    With fewer traced steps, token attributions are computed and `pixel_attributions` is `None` (with a warning).

    Example:
        ```py
        >>> explainer = StableDiffusionImg2ImgPipelineExplainer(pipe)
        >>> output = explainer(prompt="a fantasy landscape", init_image=image, strength=0.75)
        >>> output.input_saliency_map.show()
        ```
    """


class StableDiffusionInpaintPipelineExplainer(_InputImageExplainer):
    r"""
    Explains images made by a `StableDiffusionInpaintPipeline`, with the 9-channel inpainting UNet or a plain
    4-channel UNet (the pipeline's blending path).

    The input image is re-injected at every step (as masked-image latents for 9 channels, by blending for 4), so pixel
    attributions are available with any number of traced steps. With a 9-channel UNet the pipeline feeds the model
    `image * (mask < 0.5)`: pixels inside the mask get exactly zero attribution unless the traced steps include the
    first one with `strength < 1` (where the noised image itself starts the loop).

    Example:
        ```py
        >>> explainer = StableDiffusionInpaintPipelineExplainer(pipe)
        >>> output = explainer(prompt="a cat sitting on a bench", init_image=image, mask_image=mask, strength=0.75)
        >>> output.input_saliency_map.show()
        ```
    """

    output_class = PipelineInpaintExplainerOutput

    def __call__(self, prompt, *args, mask_image=None, **kwargs):
        r"""
        As [`StableDiffusionImg2ImgPipelineExplainer.__call__`], plus the inpainting mask.

        Args:
            mask_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                White (1) where the image is repainted, black (0) where it is kept; the size of the image.
        """
        if mask_image is None:
            raise ValueError("StableDiffusionInpaintPipeline needs `mask_image=` (white where to repaint).")
        self._mask_image = mask_image
        try:
            return super().__call__(prompt, *args, mask_image=mask_image, **kwargs)
        finally:
            self._mask_image = None

    def _prepare_pipeline_kwargs(self, kwargs):
        kwargs = super()._prepare_pipeline_kwargs(kwargs)
        image_size, mask_size = _size(kwargs["image"]), _size(kwargs["mask_image"])
        if image_size is not None and mask_size is not None and image_size != mask_size:
            raise ValueError(
                f"`mask_image` is {mask_size[1]}x{mask_size[0]} (width x height) but the image is "
                f"{image_size[1]}x{image_size[0]}: give a mask of the image's size."
            )
        return kwargs

    def _mask(self) -> Optional[np.ndarray]:
        mask = self.pipe.mask_processor.preprocess(self._mask_image, height=self._height, width=self._width)
        return (mask[0, 0] >= 0.5).numpy()

    def _finish_output(self, output, index, gradients, method):
        if output.mask is None:
            output.mask = self._mask()
        super()._finish_output(output, index, gradients, method)
