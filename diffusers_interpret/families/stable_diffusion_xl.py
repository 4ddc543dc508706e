"""Stable Diffusion XL: two CLIP text encoders on the feature axis, and the pooled embedding as micro-conditioning."""

import copy
import inspect
from typing import Any, Dict, List, Tuple

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from .base import PipelineFamily, TextEncoderSlot
from .registry import register_family


class StableDiffusionXLFamily(PipelineFamily):
    r"""
    `StableDiffusionXLPipeline`, `StableDiffusionXLImg2ImgPipeline` and `StableDiffusionXLInpaintPipeline`.

    `encode_prompt` runs CLIP-L (`text_encoder`, on `prompt`) and CLIP-G (`text_encoder_2`, on `prompt_2`, which
    defaults to `prompt`), takes the penultimate hidden state of each and concatenates them on the feature axis into
    the UNet's `encoder_hidden_states`; CLIP-G's projected pooled output enters as `added_cond_kwargs["text_embeds"]`.
    Both are explained. Rows are [negative, positive] with guidance; `add_time_ids` (micro-conditioning) pass through.
    Decoding mirrors the pipeline's (`latents_mean`/`latents_std` where the VAE has them, a float32 VAE where the
    pipeline upcasts), and the watermark, where the pipeline has one, is applied to the detached image.

    When `prompt_2` is unset (or tokenizes like `prompt`), a token's embedding is the concatenation of its CLIP-L and
    CLIP-G embeddings and it gets one score over both (for `grad_x_input`, the L2 norm of gradient x input over the
    concatenation: the square root of the sum of the two encoders' squared scores); each encoder's own scores are in
    `output.encoder_token_attributions`. When `prompt_2` differs, `token_attributions` lists `prompt`'s tokens
    (CLIP-L) and then `prompt_2`'s (CLIP-G). The pooled CLIP-G embedding's share of the gradient is
    `output.pooled_share`. Micro-conditioning, `denoising_start` / `denoising_end` and every other argument pass
    through to the pipeline.
    """

    name = "stable_diffusion_xl"
    display_name = "Stable Diffusion XL"
    required_components = ("unet", "vae", "tokenizer_2", "text_encoder_2", "encode_prompt")
    pipeline_class_names = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )
    conditioning_names = ("encoder_hidden_states", "text_embeds")
    pooled_name = "text_embeds"

    def read_conditioning(self, pipe, args: tuple, kwargs: dict) -> Dict[str, torch.Tensor]:
        values = super().read_conditioning(pipe, args, kwargs)
        values["text_embeds"] = kwargs["added_cond_kwargs"]["text_embeds"]
        return values

    def write_conditioning(
        self, pipe, args: tuple, kwargs: dict, values: Dict[str, torch.Tensor]
    ) -> Tuple[tuple, dict]:
        args, kwargs = super().write_conditioning(pipe, args, kwargs, values)
        added = {**kwargs["added_cond_kwargs"], "text_embeds": values["text_embeds"]}
        return args, {**kwargs, "added_cond_kwargs": added}

    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        slots, start = [], 0
        for tokenizer, encoder, argument, label in (
            ("tokenizer", "text_encoder", "prompt", "CLIP-L"),
            ("tokenizer_2", "text_encoder_2", "prompt_2", "CLIP-G"),
        ):
            module = getattr(pipe, encoder, None)
            if module is None:  # the refiner has CLIP-G only
                continue
            width = int(module.config.hidden_size)
            slots.append(TextEncoderSlot(tokenizer, encoder, argument, slice(start, start + width), label=label))
            start += width
        return slots

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts.get("prompt") or prompts["prompt_2"],
            prompt_2=prompts.get("prompt_2"),
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            lora_scale=(call_kwargs.get("cross_attention_kwargs") or {}).get("scale"),
            clip_skip=call_kwargs.get("clip_skip"),
        )
        return {"encoder_hidden_states": embeddings, "text_embeds": pooled}

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:
            # The pipeline upcasts its VAE in place for the decode; a float32 copy leaves the pipeline as it is.
            vae = copy.deepcopy(vae).float()
            latents = latents.float()
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:
            # The pipeline upcasts its VAE in place for the encode; a float32 copy leaves the pipeline as it is.
            vae = copy.deepcopy(vae).float()
        latents = retrieve_latents(vae.encode(pixels.to(vae.device, vae.dtype)), sample_mode="argmax")
        latents = latents.to(pipe.vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            return (latents - mean) * vae.config.scaling_factor / std
        return latents * vae.config.scaling_factor

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        pooled = conditioning["text_embeds"]
        if pipe.text_encoder_2 is None:
            projection = int(pooled.shape[-1])
        else:
            projection = pipe.text_encoder_2.config.projection_dim
        if "aesthetic_score" in inspect.signature(pipe._get_add_time_ids).parameters:
            # The img2img and inpainting pipelines' own, with their call's default aesthetic scores: the prompt's row.
            time_ids = pipe._get_add_time_ids(
                size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, dtype=pooled.dtype,
                text_encoder_projection_dim=projection,
            )[0]  # fmt: skip
        else:
            time_ids = pipe._get_add_time_ids(
                size, (0, 0), size, dtype=pooled.dtype, text_encoder_projection_dim=projection
            )
        time_ids = time_ids.to(latents.device).repeat(latents.shape[0], 1)
        return {**arguments, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def postprocess(self, pipe, decoded: torch.Tensor, output_type: str):
        if getattr(pipe, "watermark", None) is not None:
            decoded = pipe.watermark.apply_watermark(decoded)
        return pipe.image_processor.postprocess(decoded, output_type=output_type), None


STABLE_DIFFUSION_XL = register_family(StableDiffusionXLFamily())
