r"""
The images of every denoising step, decoded on demand: an explainer call keeps each step's latents (small) and
decodes them, all images of the call at once, the first time any of its `all_images_during_generation` is looked at
(the slider, the GIF, the report).
"""

from typing import List, Optional, Sequence, Tuple

import torch

from .outputs import GeneratedImages
from .progress import progress_bar
from .tracing.scoped import pipeline_lock


class StepImageDecoder:
    r"""
    Decodes a call's step latents with the pipeline's own decode and post-processing, once.

    Args:
        pipe: The pipeline.
        family (`PipelineFamily`): Its family.
        step_latents (`Sequence[torch.Tensor]`): Every step's latents, (images, ...), detached.
        size (`Tuple[int, int]`): The image's (height, width).
        generator (*optional*): The call's generator (for decoders that draw noise).
        start (`PIL.Image.Image`, *optional*): An input image shown before the first step (img2img, inpainting).
        verbose (`bool`, *optional*, defaults to `True`): A progress bar while decoding.
    """

    def __init__(self, pipe, family, step_latents: Sequence[torch.Tensor], size: Tuple[int, int], generator=None,
                 start=None, verbose: bool = True):  # fmt: skip
        self.pipe, self.family, self.size, self.generator = pipe, family, size, generator
        self.step_latents: Optional[List[torch.Tensor]] = [latents.detach() for latents in step_latents]
        self.start = start
        self.verbose = verbose
        self._images: Optional[List[list]] = None

    @property
    def num_images(self) -> int:
        return int(self.step_latents[0].shape[0]) if self.step_latents else 0

    def sequences(self) -> List[GeneratedImages]:
        r"""One lazy [`GeneratedImages`] per image of the call."""
        length = len(self.step_latents) + (self.start is not None)
        return [
            GeneratedImages(source=lambda index=index: self.images(index), length=length)
            for index in range(self.num_images)
        ]

    def images(self, index: int) -> list:
        r"""The step images of image `index` (every image of the call decoded on the first request)."""
        if self._images is None:
            self._images = self._decode()
            self.step_latents = None  # decoded: the latents are no longer needed
        return self._images[index]

    def _decode(self) -> List[list]:
        per_image: List[list] = [[] for _ in range(self.num_images)]
        with pipeline_lock(self.pipe), torch.no_grad():
            for latents in progress_bar(self.step_latents, "Decoding step images", disable=not self.verbose):
                decoded = self.family.decode(self.pipe, latents, self.generator, self.size)
                for sequence, picture in zip(
                    per_image, self.family.image_processor(self.pipe).postprocess(decoded, "pil")
                ):
                    sequence.append(picture)
        if self.start is not None:
            for sequence in per_image:
                sequence.insert(0, self.start)
        return per_image
