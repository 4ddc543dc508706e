"""Qwen-Image: Qwen2.5-VL reads the prompt in a describing template whose prefix it drops; one MMDiT stream each."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import TextEncoderSlot, call_argument
from .flux import FluxFamily
from .registry import register_family


class QwenImageFamily(FluxFamily):
    r"""
    `QwenImagePipeline` (Qwen-Image).

    `encode_prompt` formats the prompt into the pipeline's describing template (`prompt_template_encode`: a system
    message asking for the image's colours, shapes, sizes, textures, quantities, text and spatial relationships, then
    the prompt as the user's message), runs the causal LLM (`text_encoder`, `Qwen2_5_VLForConditionalGeneration`) over
    it (a batch padded to its longest prompt), takes the last layer's states, drops the template's first
    `prompt_template_encode_start_idx` positions (34: the system message and the user's role marker) and keeps at most
    `max_sequence_length` of the rest, which are the transformer's `encoder_hidden_states` (with a mask where a batch's
    prompts differ in length). There is no pooled vector and no CLIP. The transformer's 60 dual-stream blocks (Qwen's
    MMDiT) attend over [text, image] with their own complex rotary embedding of the text's and the image's positions.
    Guidance is true classifier-free guidance: with `true_cfg_scale > 1` (4 by default) and a negative prompt, every
    step makes a second transformer call for the negative prompt (then rescales the combined prediction to the
    prompt's norm); the explanation traces both and attributes the prompt's. Latents are 2x2 patches packed into
    tokens, normalised by the VAE's `latents_mean` / `latents_std`; the VAE is a video VAE decoding one frame.

    Only the tokens of the prompt's own characters are attributed and shown: the dropped prefix never reaches the
    transformer (no row); the template's end (`<|im_end|>`, the assistant's role marker) does, and is left out of
    rankings and word maps, the attention it takes reported (`output.attention_sink_share`). The LLM is causal: a
    token's state carries the words before it, which `word_attention` hands back to the words.
    """

    name = "qwenimage"
    display_name = "Qwen-Image"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("QwenImagePipeline", "QwenImageImg2ImgPipeline")
    conditioning_names = ("encoder_hidden_states",)
    pooled_name = None

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        if call_kwargs is None:  # a call not seen (`record_cross_attention`): its recorder tells the calls apart
            return 1
        scale = call_argument(pipe, call_kwargs, "true_cfg_scale")
        negative = call_kwargs.get("negative_prompt") is not None or (
            call_kwargs.get("negative_prompt_embeds") is not None
        )
        return 2 if float(scale) > 1 and negative else 1

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        # The packed latent grid: the call's `img_shapes`, [[(frames, rows, columns)]] per image.
        _, rows, columns = kwargs["img_shapes"][0][0]
        return int(rows), int(columns)

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

        return [
            (f"{name}.attn", module.attn)
            for name, module in denoiser.named_modules()
            if isinstance(module, QwenImageTransformerBlock)
        ]

    def text_embedder(self, denoiser) -> torch.nn.Module:
        return torch.nn.Sequential(denoiser.txt_norm, denoiser.txt_in)  # the transformer's own, in its order

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # The concept tokens take the text's place at its first position's rotary frequencies (as Flux's concepts
        # take its text's); the text's mask does not fit them (they are never padding).
        result = {
            **arguments,
            "hidden_states": arguments["hidden_states"][rows],
            "encoder_hidden_states": concepts,
            "encoder_hidden_states_mask": None,
            "temb": arguments["temb"][rows],
        }
        rotary = arguments.get("image_rotary_emb")
        if rotary is not None:
            image_freqs, text_freqs = rotary
            result["image_rotary_emb"] = (image_freqs, text_freqs[:1].expand(int(concepts.shape[1]), -1))
        return result

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot(
                "tokenizer",
                "text_encoder",
                "prompt",
                slice(None),
                label="Qwen2.5-VL",
                template=True,
                causal=True,
                pad_to_longest=True,
            )
        ]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        template = pipe.prompt_template_encode
        return template.format(text), template.index("{}")

    def kept_positions(self, pipe, slot: TextEncoderSlot, length: int, call_kwargs: Dict[str, Any]) -> List[int]:
        return list(range(int(pipe.prompt_template_encode_start_idx), length))

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(pipe.tokenizer_max_length) + int(pipe.prompt_template_encode_start_idx)

    def text_rows_kept(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> Optional[int]:
        return _max_sequence_length(pipe, call_kwargs)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, mask = pipe.encode_prompt(
            prompt=prompts["prompt"],
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=_max_sequence_length(pipe, call_kwargs),
        )
        # The mask is not a gradient path: it rides along for `denoiser_arguments` (an existing image's calls).
        return {"encoder_hidden_states": embeddings, "encoder_hidden_states_mask": mask}

    # -- an image the user already has ------------------------------------------------------------------------------
    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        # As QwenImageImg2ImgPipeline's `_encode_vae_image` (one frame, the posterior's mode), then packed.
        vae = pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)[:, :, None]).latent_dist.mode()
        mean, inverse_std = _latent_statistics(vae, latents)
        latents = (latents - mean) * inverse_std
        batch, channels, _, height, width = latents.shape
        return pipe._pack_latents(latents, batch, channels, height, width)

    def draw_noise(self, pipe, latents: torch.Tensor, generator: torch.Generator, size: Tuple[int, int]):
        # As the pipeline: drawn as one frame on the latent grid, then packed into 2x2 patches.
        height, width = (2 * (int(side) // (pipe.vae_scale_factor * 2)) for side in size)
        channels = latents.shape[-1] // 4
        noise = torch.randn((latents.shape[0], 1, channels, height, width), generator=generator)
        return pipe._pack_latents(noise, latents.shape[0], channels, height, width).to(latents.device, latents.dtype)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        height, width = (int(side) // pipe.vae_scale_factor // 2 for side in size)
        mask = conditioning.get("encoder_hidden_states_mask")
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand(rows, -1)
        guidance = None
        if self.denoiser(pipe).config.guidance_embeds:
            guidance = torch.full([rows], float(call_kwargs.get("guidance_scale") or 1.0), device=latents.device)
        return {
            "hidden_states": latents,
            "timestep": (timestep / 1000).expand(rows).to(latents.dtype),
            "guidance": guidance,
            "encoder_hidden_states_mask": mask,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "img_shapes": [[(1, height, width)]] * rows,
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }

    def vae_shapes(self, pipe, images: int, size: Tuple[int, int], sample=None):
        latents, pixels = super().vae_shapes(pipe, images, size, sample)
        return (*latents[:2], 1, *latents[2:]), (*pixels[:2], 1, *pixels[2:])  # a video VAE: one frame

    def latent_channels(self, pipe) -> int:
        return int(pipe.vae.config.z_dim)

    def denoiser_in_channels(self, pipe) -> int:
        return int(self.denoiser(pipe).config.in_channels)  # one token is a 2x2 patch of latents

    # -- images ---------------------------------------------------------------------------------------------------
    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        if latents.dim() == 3:  # packed (images, tokens, channels x 2 x 2)
            height, width = size if size is not None else self.default_size(pipe)
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents.to(vae.dtype)
        mean, inverse_std = _latent_statistics(vae, latents)
        return vae.decode(latents / inverse_std + mean, return_dict=False)[0][:, :, 0]  # the pipeline's own rounding


def _latent_statistics(vae, latents: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    # The VAE's per-channel latent mean and 1 / standard deviation, as the pipelines make them, shaped for (images,
    # channels, frames, rows, columns).
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    return mean, inverse_std


def _max_sequence_length(pipe, call_kwargs: Dict[str, Any]) -> int:
    length = call_argument(pipe, call_kwargs, "max_sequence_length")
    return int(length)


QWEN_IMAGE = register_family(QwenImageFamily())
