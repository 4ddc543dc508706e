r"""
Flux's image-conditioned pipelines: Fill (an image and a mask, the masked image's latents beside the noised ones on
the channel axis) and Kontext (a reference image whose latent tokens follow the generated ones in the sequence).
"""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import InputKind, call_argument
from .flux import FluxFamily
from .registry import register_family


class FluxFillFamily(FluxFamily):
    r"""
    `FluxFillPipeline` (FLUX.1 Fill): inpainting with a transformer that reads, beside the packed noised latents, the
    packed latents of the masked image and the mask (`hidden_states` of `in_channels` = 3 x the latents' or more). The
    image (`image=`) and the mask (`mask_image=`, white where repainted) are preprocessed by the pipeline's own
    processors; the image's pixels reach the result at every step through the masked image's latents (and the start
    latents where `strength < 1`), so any traced step gives them attributions. The prompt is explained as FLUX.1's.
    """

    name = "flux_fill"
    display_name = "Flux Fill"
    pipeline_class_names = ("FluxFillPipeline",)


class FluxKontextFamily(FluxFamily):
    r"""
    `FluxKontextPipeline` (FLUX.1 Kontext): an instruction edits a reference image (`image=`). The pipeline resizes
    the reference (to a preferred Kontext resolution unless `_auto_resize=False`), encodes it, and appends its packed
    latent tokens to the generated ones in the transformer's sequence, with position ids whose first coordinate is 1;
    the transformer's output for them is dropped. The joint attention's image queries are the generated tokens alone
    (the reference's are left out of the word maps); where a box of the result looks in the reference is its
    correspondence map (`record_correspondence`). The reference's pixels are attributed through the sequence at every
    traced step.
    """

    name = "flux_kontext"
    display_name = "Flux Kontext"
    pipeline_class_names = ("FluxKontextPipeline",)
    reads_reference = True

    def input_kind(self, pipeline_class: type) -> Optional[InputKind]:
        return InputKind.IMAGE

    def check_request(
        self,
        pipe,
        prompts: List[str],
        size: Tuple[Optional[int], Optional[int]],
        pipeline_kwargs: Dict[str, Any],
        generating: bool = True,
    ) -> None:
        # The pipeline makes the image at the size of `max_area` pixels with the aspect ratio asked for.
        if not generating:
            return
        asked = tuple(int(side or default) for side, default in zip(size, self.default_size(pipe)))
        area = int(call_argument(pipe, pipeline_kwargs, "max_area"))
        multiple = 2 * int(pipe.vae_scale_factor)
        ratio = asked[1] / asked[0]
        made = tuple(round((area * r) ** 0.5) // multiple * multiple for r in (1 / ratio, ratio))
        if made != asked:
            raise ValueError(
                f"{self.display_name} makes a {asked[0]}x{asked[1]} (height x width) image at {made[0]}x{made[1]}: "
                f"its size comes from `max_area` ({area} pixels) and the aspect ratio. Explain it at "
                f"`height={made[0]}, width={made[1]}`, or pass `max_area={asked[0] * asked[1]}`."
            )

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        return _token_grid(kwargs, 0)  # the reference image's tokens have first coordinate 1

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        # The redraws read the reference image as the pipeline's loop does: its packed latents after the noised ones.
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        if call_kwargs.get("image") is None:  # an existing image explained: Kontext without a reference, as FLUX.1
            return arguments
        reference = self.reference_pixels(pipe, call_kwargs["image"], call_kwargs)
        channels = int(self.denoiser(pipe).config.in_channels) // 4
        _, reference, _, ids = pipe.prepare_latents(
            reference, latents.shape[0], channels, *size, latents.dtype, latents.device, None, latents
        )
        return {
            **arguments,
            "hidden_states": torch.cat([latents, reference], dim=1),
            "img_ids": torch.cat([arguments["img_ids"], ids], dim=0),
        }

    def predicted_clean(self, pipe, noised: torch.Tensor, prediction: torch.Tensor, level: float) -> torch.Tensor:
        # The transformer's output for the reference's tokens is dropped, as the pipeline drops it.
        return super().predicted_clean(pipe, noised, prediction[:, : noised.shape[1]], level)

    def reference_pixels(self, pipe, image, call_kwargs: Dict[str, Any]) -> torch.Tensor:
        r"""The reference image as the pipeline preprocesses it, (1, 3, H, W) in [-1, 1]."""
        # The lines of `FluxKontextPipeline.__call__`'s step 3 (the reference's size is chosen in the call itself,
        # with no method of the pipeline's to ask).
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        processor = pipe.image_processor
        first = image[0] if isinstance(image, list) else image
        height, width = processor.get_default_height_width(first)
        if call_argument(pipe, call_kwargs, "_auto_resize"):
            _, width, height = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        multiple = 2 * int(pipe.vae_scale_factor)
        height, width = height // multiple * multiple, width // multiple * multiple
        return processor.preprocess(processor.resize(first, height, width), height, width)[:1]

    def reference_grid(self, kwargs: dict) -> Optional[Tuple[int, int]]:
        r"""The (rows, columns) grid of the reference image's tokens in a transformer call (`None` without one)."""
        return _token_grid(kwargs, 1)

    def joint_layout(
        self, denoiser, tokens: int, text_length: int, latent_size: Optional[Tuple[int, int]]
    ) -> Optional[Tuple[slice, slice]]:
        # [text, generated image, reference image]: the image queries are the generated tokens.
        if latent_size is None:
            return None
        generated = int(latent_size[0]) * int(latent_size[1])
        return slice(text_length, text_length + generated), slice(0, text_length)

    def reference_positions(self, text_length: int, latent_size: Tuple[int, int]) -> slice:
        r"""The reference image's tokens in a joint-attention layer's [text, generated, reference] sequence."""
        return slice(text_length + int(latent_size[0]) * int(latent_size[1]), None)


def _token_grid(kwargs: dict, first: int) -> Optional[Tuple[int, int]]:
    # The (rows, columns) grid of a transformer call's image tokens whose position ids start with `first` (Kontext: 0
    # for the generated image, 1 for the reference); `None` where there are none.
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.dim() == 3 else ids
    chosen = ids[ids[:, 0] == first]
    if not len(chosen):
        return None
    return int(chosen[:, 1].max().item()) + 1, int(chosen[:, 2].max().item()) + 1


FLUX_FILL = register_family(FluxFillFamily())
FLUX_KONTEXT = register_family(FluxKontextFamily())
