"""Chroma: Flux-shaped, T5 alone into joint attention (no pooled vector), padding weighted down by a mask, true CFG."""

from typing import Any, Dict, List, Optional

import torch
from diffusers import ChromaPipeline

from .base import TextEncoderSlot, call_argument
from .flux import FluxFamily
from .registry import register_family


class ChromaFamily(FluxFamily):
    r"""
    `ChromaPipeline` and `ChromaImg2ImgPipeline`.

    Chroma is FLUX.1-schnell's transformer pruned of CLIP: `encode_prompt` runs T5 (`text_encoder`) alone, with its
    attention mask, and its token states padded to `max_sequence_length` are the `encoder_hidden_states` of joint
    attention; there is no pooled vector (the modulation comes from the timestep alone). The transformer gets an
    `attention_mask` over [text, image] that keeps the prompt's tokens, the first padding token and the image (the
    pipeline's `_prepare_attention_mask`). Guidance is true classifier-free guidance: with `guidance_scale > 1` (5 by
    default) every step makes two transformer calls, the prompt's first, then the negative prompt's (`""` by
    default); the explanation traces both and attributes the prompt's. Latents are packed 2x2 as Flux's.

    `token_attributions` lists T5's tokens (a word split into pieces is one word in `output.word_attributions`).
    """

    name = "chroma"
    display_name = "Chroma"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("ChromaPipeline", "ChromaImg2ImgPipeline")
    conditioning_names = ("encoder_hidden_states",)
    pooled_name = None

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        if call_kwargs is None:  # a call not seen (`record_cross_attention`): its recorder tells the calls apart
            return 1
        scale = call_argument(pipe, call_kwargs, "guidance_scale")
        return 2 if float(scale) > 1 else 1

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None), sequence_group=0, label="T5")]

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(call_kwargs.get("max_sequence_length") or 512)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _, mask, *_ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=int(call_kwargs.get("max_sequence_length") or 512),
            lora_scale=(call_kwargs.get("joint_attention_kwargs") or {}).get("scale"),
        )
        # The mask is not a gradient path: it rides along for `denoiser_arguments` (an existing image's calls).
        return {"encoder_hidden_states": embeddings, "attention_mask": mask}

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        height, width = (2 * (int(side) // (pipe.vae_scale_factor * 2)) for side in size)
        rows, text_length = latents.shape[0], conditioning["encoder_hidden_states"].shape[1]
        mask = conditioning.get("attention_mask")
        if mask is not None:
            mask = mask.expand(rows, -1) if mask.shape[0] == 1 else mask
            mask = pipe._prepare_attention_mask(rows, latents.shape[1], latents.dtype, mask)
        return {
            "hidden_states": latents,
            "timestep": (timestep / 1000).expand(rows).to(latents.dtype),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "txt_ids": torch.zeros(text_length, 3, device=latents.device, dtype=latents.dtype),
            # ChromaPipeline's own (ChromaImg2ImgPipeline's takes no batch size; both make the same ids).
            "img_ids": ChromaPipeline._prepare_latent_image_ids(
                rows, height // 2, width // 2, latents.device, latents.dtype
            ),
            "attention_mask": mask,
            "joint_attention_kwargs": call_kwargs.get("joint_attention_kwargs"),
            "return_dict": False,
        }

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # The concept tokens take the text's place: the text's mask does not fit them (they are never padding).
        return {**super().concept_block_arguments(arguments, concepts, rows), "attention_mask": None}


CHROMA = register_family(ChromaFamily())
