"""Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G on the feature axis, then T5 on the sequence axis: joint attention."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import JointAttention, TextEncoderSlot, TransformerFamily
from .registry import register_family


class StableDiffusion3Family(TransformerFamily):
    r"""
    `StableDiffusion3Pipeline` and `StableDiffusion3Img2ImgPipeline`.

    `encode_prompt` takes CLIP-L's (`text_encoder`, on `prompt`) and CLIP-G's (`text_encoder_2`, on `prompt_2`)
    penultimate hidden states, concatenates them on the feature axis and zero-pads them to T5's width, then
    concatenates T5's states (`text_encoder_3`, on `prompt_3`, padded to `max_sequence_length`) on the sequence
    axis: the transformer's `encoder_hidden_states` are 77 + `max_sequence_length` tokens, and every word is there
    twice. The pooled CLIP-L + CLIP-G vector enters as `pooled_projections`. All three encoders are explained
    (CLIP-L and CLIP-G share their tokens' units when they read the same text). Rows are [negative, positive] with
    guidance. Joint attention runs on [image, text].

    `token_attributions` lists the CLIP tokens (one unit over CLIP-L's and CLIP-G's features when both read the same
    text), then T5's; `output.word_attributions` merges each word's CLIP token(s) and T5 pieces, and
    `output.encoder_token_attributions` gives each encoder's own scores. The pooled vector's share of the gradient is
    `output.pooled_share`. Skip-layer guidance is not supported yet.
    """

    name = "stable_diffusion_3"
    display_name = "Stable Diffusion 3"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    pipeline_class_names = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    joint_attention = JointAttention(text_first=False)

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        if pipeline_kwargs.get("skip_guidance_layers") is not None:
            raise ValueError(
                "Skip-layer guidance (`skip_guidance_layers`) is not supported by the explainer yet: its extra "
                "transformer pass sees a different batch. Explain the image without it."
            )

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        # The joint attention of every JointTransformerBlock (`attn`; `attn2`, SD3.5's dual attention, is image
        # self-attention and reads no text).
        return [
            (f"{name}.attn", block.attn)
            for name, block in denoiser.named_modules()
            if type(block).__name__ == "JointTransformerBlock"
        ]

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        widths = [int(pipe.text_encoder.config.hidden_size), int(pipe.text_encoder_2.config.hidden_size)]
        slots = [
            TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(0, widths[0]), 0, "CLIP-L"),
            TextEncoderSlot("tokenizer_2", "text_encoder_2", "prompt_2", slice(widths[0], sum(widths)), 0, "CLIP-G"),
        ]
        if getattr(pipe, "text_encoder_3", None) is not None:  # without T5 the pipeline feeds zeros in its place
            width = int(pipe.text_encoder_3.config.d_model)
            slots.append(TextEncoderSlot("tokenizer_3", "text_encoder_3", "prompt_3", slice(0, width), 1, "T5"))
        return slots

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        if slot.encoder == "text_encoder_3":
            return int(call_kwargs.get("max_sequence_length") or 256)
        return int(pipe.tokenizer_max_length)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            prompt_2=prompts.get("prompt_2"),
            prompt_3=prompts.get("prompt_3"),
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=call_kwargs.get("clip_skip"),
            max_sequence_length=int(call_kwargs.get("max_sequence_length") or 256),
            lora_scale=(call_kwargs.get("joint_attention_kwargs") or {}).get("scale"),
        )
        return {"encoder_hidden_states": embeddings, "pooled_projections": pooled}

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        return {
            "hidden_states": latents,
            "timestep": timestep.expand(latents.shape[0]),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "pooled_projections": conditioning["pooled_projections"],
            "joint_attention_kwargs": call_kwargs.get("joint_attention_kwargs"),
            "return_dict": False,
        }

    # -- images ---------------------------------------------------------------------------------------------------
    def decode(self, pipe, latents: torch.Tensor, generator=None, size: Optional[Tuple[int, int]] = None):
        vae = pipe.vae
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


STABLE_DIFFUSION_3 = register_family(StableDiffusion3Family())
