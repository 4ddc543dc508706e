r"""
InstructPix2Pix: an instruction ("make it red") edits an input image. The UNet reads the input image's latents beside
the noised ones at every step, so the input image's pixels get attributions from any traced step, and the
instruction's words are attributed as a prompt's.
"""

from typing import Any, Dict, List

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from .registry import register_family
from .stable_diffusion import StableDiffusionFamily


class InstructPix2PixFamily(StableDiffusionFamily):
    r"""
    `StableDiffusionInstructPix2PixPipeline`: CLIP's states of the instruction are the UNet's `encoder_hidden_states`;
    the input image (`image=`) is preprocessed by the pipeline's `image_processor`, encoded by the VAE (the posterior's
    mode, unscaled) and concatenated to the noised latents on the channel axis. With guidance (`guidance_scale > 1`
    and `image_guidance_scale >= 1`) the batch has three row groups, [instruction + image, empty + image, empty + no
    image]: the instruction's rows are the first third.
    """

    name = "instruct_pix2pix"
    display_name = "InstructPix2Pix"
    pipeline_class_names = ("StableDiffusionInstructPix2PixPipeline",)
    required_components = ("unet", "vae", "tokenizer", "text_encoder", "_encode_prompt")
    reads_input_image_latents = True

    def positive_rows(self, pipe, batch_size: int) -> slice:
        if getattr(pipe, "do_classifier_free_guidance", False) and batch_size % 3 == 0:
            return slice(0, batch_size // 3)
        return slice(0, batch_size)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings = pipe._encode_prompt(prompts["prompt"], device, 1, False)
        return {"encoder_hidden_states": embeddings}

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        # The redraws: the noised latents beside the input image's, as the pipeline's loop concatenates them.
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        image = pipe.image_processor.preprocess(call_kwargs["image"])[:1].to(latents.device, pipe.vae.dtype)
        with torch.no_grad():
            image_latents = retrieve_latents(pipe.vae.encode(image), sample_mode="argmax")
        image_latents = image_latents.to(latents.dtype).expand(latents.shape[0], -1, -1, -1)
        return {**arguments, "sample": torch.cat([latents, image_latents], dim=1)}


INSTRUCT_PIX2PIX = register_family(InstructPix2PixFamily())
