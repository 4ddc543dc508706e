"""Flux.1: T5 tokens into joint attention, CLIP's pooled vector into the modulation, packed 2x2 latents."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import TextEncoderSlot, TransformerFamily
from .registry import register_family


class FluxFamily(TransformerFamily):
    r"""
    `FluxPipeline` and `FluxImg2ImgPipeline`.

    `encode_prompt` runs CLIP-L (`text_encoder`, on `prompt`) for its pooled output only, which enters the transformer
    as `pooled_projections`, and T5 (`text_encoder_2`, on `prompt_2`, which defaults to `prompt`), whose token states,
    padded to `max_sequence_length`, are the `encoder_hidden_states` of joint attention. Both are explained: T5's
    tokens sit at rows 0.. of the token layout, CLIP's after them (they reach the image through the pooled vector
    alone). Flux-dev is guidance-distilled (one transformer call per step, one row per image); with
    `true_cfg_scale > 1` and a negative prompt the pipeline makes a second, separate call per step for the negative
    prompt, which the explanation traces through but does not attribute. Latents are packed 2x2 and decoded with
    `latents / scaling_factor + shift_factor`.

    `token_attributions` lists T5's tokens, then CLIP's (at the `text_encoder_output` level, T5's only: CLIP reaches
    the transformer as one pooled vector, whose share of the gradient is `output.pooled_share`). T5 splits words into
    pieces; `output.word_attributions` merges every tokenizer's pieces of each word of the prompt.
    """

    name = "flux"
    display_name = "Flux"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    pipeline_class_names = ("FluxPipeline", "FluxImg2ImgPipeline")
    # The default is the package's (word_attention), chosen again on the retrained toy Flux (issue #25), whose words
    # reach the image through T5 in joint attention: within 2x a plain generation it ranks best (colour+shape top two
    # 68%, Spearman 0.85 with ablation); grad_x_input, the earlier default, costs 3.4x and ranks worse (50%):
    # `benchmarks/faithfulness.py --family flux`, docs/methods.md.

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        kwargs = call_kwargs or {}
        negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
        return 2 if (kwargs.get("true_cfg_scale") or 1.0) > 1 and negative else 1

    def is_prompt_call(self, pipe, call_index: int, calls_per_step: int) -> bool:
        # With true CFG the pipeline calls the transformer for the prompt first, then for the negative prompt.
        return call_index % calls_per_step == 0

    def positive_rows(self, pipe, batch_size: int) -> slice:
        return slice(0, batch_size)

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        # The packed latent grid, from the image tokens' (0, row, column) ids.
        ids = kwargs["img_ids"]
        ids = ids[0] if ids.dim() == 3 else ids
        return int(ids[:, 1].max().item()) + 1, int(ids[:, 2].max().item()) + 1

    def attention_grid_scale(self, pipe) -> int:
        return 2 * int(pipe.vae_scale_factor)  # one image token is a 2x2 patch of latents

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        # Located by module type and role, not by processor class (whose names diffusers has changed).
        from diffusers.models.transformers.transformer_flux import FluxAttention

        return [(name, module) for name, module in denoiser.named_modules() if isinstance(module, FluxAttention)]

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # The rotary embedding covers [text, image] positions; the concept tokens take the text's position (Flux's
        # text ids are all zeros, so one text row serves every concept).
        result = super().concept_block_arguments(arguments, concepts, rows)
        rotary = arguments.get("image_rotary_emb")
        if rotary is not None:
            text_length = int(arguments["encoder_hidden_states"].shape[1])
            count = int(concepts.shape[1])
            result["image_rotary_emb"] = tuple(
                torch.cat([part[:1].expand(count, *part.shape[1:]), part[text_length:]]) for part in rotary
            )
        return result

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot("tokenizer_2", "text_encoder_2", "prompt_2", slice(None), sequence_group=0, label="T5"),
            TextEncoderSlot("tokenizer", "text_encoder", "prompt", None, sequence_group=1, label="CLIP"),
        ]

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        if slot.encoder == "text_encoder_2":
            return int(call_kwargs.get("max_sequence_length") or 512)
        return int(pipe.tokenizer_max_length)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, pooled, _ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            prompt_2=prompts.get("prompt_2"),
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=int(call_kwargs.get("max_sequence_length") or 512),
            lora_scale=(call_kwargs.get("joint_attention_kwargs") or {}).get("scale"),
        )
        return {"encoder_hidden_states": embeddings, "pooled_projections": pooled}

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        height, width = (2 * (int(side) // (pipe.vae_scale_factor * 2)) for side in size)
        rows, text_length = latents.shape[0], conditioning["encoder_hidden_states"].shape[1]
        guidance = None
        if self.denoiser(pipe).config.guidance_embeds:
            scale = call_kwargs.get("guidance_scale")
            guidance = torch.full([rows], 3.5 if scale is None else float(scale), device=latents.device)
        return {
            "hidden_states": latents,
            "timestep": (timestep / 1000).expand(rows).to(latents.dtype),
            "guidance": guidance,
            "pooled_projections": conditioning["pooled_projections"],
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "txt_ids": torch.zeros(text_length, 3, device=latents.device, dtype=latents.dtype),
            "img_ids": pipe._prepare_latent_image_ids(rows, height // 2, width // 2, latents.device, latents.dtype),
            "joint_attention_kwargs": call_kwargs.get("joint_attention_kwargs"),
            "return_dict": False,
        }

    def draw_noise(self, pipe, latents: torch.Tensor, generator: torch.Generator, size: Tuple[int, int]):
        # As the pipeline: drawn on the latent grid, then packed into 2x2 patches.
        height, width = (2 * (int(side) // (pipe.vae_scale_factor * 2)) for side in size)
        channels = latents.shape[-1] // 4
        noise = torch.randn((latents.shape[0], channels, height, width), generator=generator)
        return pipe._pack_latents(noise, latents.shape[0], channels, height, width).to(latents.device, latents.dtype)

    def denoiser_in_channels(self, pipe) -> int:
        return 4 * self.latent_channels(pipe)  # one token is a 2x2 patch of latents

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        latents = super().encode_image(pipe, pixels)
        return pipe._pack_latents(latents, *latents.shape)

    # -- images ---------------------------------------------------------------------------------------------------
    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        if latents.dim() == 3:  # packed (images, tokens, channels x 2 x 2)
            height, width = size if size is not None else self.default_size(pipe)
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        vae = pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents, return_dict=False)[0]


FLUX = register_family(FluxFamily())
