"""Stable Diffusion 1.x / 2.x: one CLIP text encoder into the UNet's cross-attention."""

from typing import Any, Dict, List

import torch

from .base import PipelineFamily, TextEncoderSlot
from .registry import register_family


class StableDiffusionFamily(PipelineFamily):
    r"""
    `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`: CLIP's output
    states are the UNet's `encoder_hidden_states`; rows [negative, positive] with guidance; `vae.decode(latents /
    scaling_factor)`; the safety checker, where the pipeline has one, on the decoded image.

    Image inputs: img2img uses the input image only at the first denoising step (as the noised start latents), so
    pixel attributions need every step traced (`n_last_diffusion_steps_to_consider_for_attributions=None`, the
    default); with fewer, `pixel_attributions` is `None` (with a warning). Inpainting re-injects the image at every
    step (as masked-image latents for the 9-channel inpainting UNet, by blending for a plain 4-channel UNet), so any
    number of traced steps reaches it; with 9 channels the pipeline feeds the model `image * (mask < 0.5)`, so pixels
    inside the mask get exactly zero attribution unless the traced steps include the first one with `strength < 1`.
    """

    name = "stable_diffusion"
    display_name = "Stable Diffusion"
    pipeline_class_names = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    )

    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None))]

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            lora_scale=(call_kwargs.get("cross_attention_kwargs") or {}).get("scale"),
            clip_skip=call_kwargs.get("clip_skip"),
        )
        return {"encoder_hidden_states": embeddings}

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]

    def postprocess(self, pipe, decoded: torch.Tensor, output_type: str):
        dtype = getattr(pipe.text_encoder, "dtype", decoded.dtype)
        image, nsfw = pipe.run_safety_checker(decoded, decoded.device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), nsfw


STABLE_DIFFUSION = register_family(StableDiffusionFamily())
