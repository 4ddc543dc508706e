"""LTX-Video: T5 tokens read by each block's cross-attention; the video's latents packed into one token sequence."""

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import JointAttention, TextEncoderSlot, call_argument
from .registry import register_family
from .video import VideoFamily


class LTXFamily(VideoFamily):
    r"""
    `LTXPipeline` (LTX-Video 0.9.x text-to-video).

    `encode_prompt` runs T5 (`text_encoder`) on the prompt's tokens padded to `max_sequence_length` (128) and hands the
    transformer T5's mask, which each block's cross-attention (`attn2`) adds as a bias: the padding takes no
    attention. Guidance is classifier-free in one batched call ([negative, prompt] rows, `guidance_scale` > 1; 3 by
    default). The latents are packed: (frame, row, column) tokens of one sequence per clip, the transformer told the
    latent frames, rows and columns; the VAE makes one frame of the first latent frame, then
    `vae_temporal_compression_ratio` (8) of each. A VAE whose decode is conditioned on a timestep (0.9.1 and later)
    is explained at `decode_timestep=0` with no decode noise (the pipeline's default): the noise the pipeline would mix
    into the latents before decoding is drawn after the denoising loop.

    The clip is explained as one picture of its frames ([`VideoFamily`]).
    """

    name = "ltx"
    display_name = "LTX-Video"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder", "video_processor")
    pipeline_class_names = ("LTXPipeline",)
    # Cross-attention: the video's queries over the text's keys alone (the text has no queries of its own).
    joint_attention = JointAttention(text_first=True, text_queries=False)
    self_attention_reads_text = False  # `attn1`: the video's tokens alone

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        config = self.denoiser(pipe).config
        if int(config.patch_size) != 1 or int(config.patch_size_t) != 1:
            raise ValueError(
                f"An LTX transformer with patches of {config.patch_size_t}x{config.patch_size}x{config.patch_size} "
                "latent cells is not explained yet: explain an LTX-Video 0.9 pipeline (patches of one cell)."
            )
        timestep = pipeline_kwargs.get("decode_timestep", 0.0)
        noise = pipeline_kwargs.get("decode_noise_scale")
        noise = timestep if noise is None else noise
        if any(float(value) != 0 for value in _listed(noise)) or (
            pipe.vae.config.timestep_conditioning and any(float(value) != 0 for value in _listed(timestep))
        ):
            raise ValueError(
                "`decode_timestep` and `decode_noise_scale` other than 0 are not explained yet (the pipeline draws "
                "the decode's noise after the denoising loop): leave them at 0, the pipeline's default."
            )

    def size_multiple(self, pipe) -> Optional[int]:
        # The pipeline asks for sides that are multiples of 32; the latents for multiples of the VAE's factor.
        return math.lcm(32, int(pipe.vae_spatial_compression_ratio) * int(self.denoiser(pipe).config.patch_size))

    def positive_rows(self, pipe, batch_size: int) -> slice:
        # [negative, prompt] rows with guidance (the pipeline's flag is its guidance scale).
        if float(getattr(pipe, "_guidance_scale", 1.0)) > 1 and batch_size % 2 == 0:
            return slice(batch_size // 2, batch_size)
        return slice(0, batch_size)

    def temporal_factor(self, pipe) -> int:
        return int(pipe.vae_temporal_compression_ratio)  # one frame of the first latent frame, then 8 of each

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"transformer_blocks.{k}.attn2", block.attn2) for k, block in enumerate(denoiser.transformer_blocks)]

    def self_attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"transformer_blocks.{k}.attn1", block.attn1) for k, block in enumerate(denoiser.transformer_blocks)]

    # -- maps: the packed tokens are (frame, row, column), the transformer told their counts ---------------------
    def attention_frames(self, args: tuple, kwargs: dict) -> Optional[int]:
        return int(kwargs["num_frames"])

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        return int(kwargs["num_frames"]) * int(kwargs["height"]), int(kwargs["width"])

    def attention_grid_scale(self, pipe) -> int:
        return int(pipe.vae_spatial_compression_ratio)

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None), label="T5")]

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, mask, _, _ = pipe.encode_prompt(
            prompts["prompt"],
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=int(call_argument(pipe, call_kwargs, "max_sequence_length")),
            device=device,
        )
        # The mask is not a gradient path: it rides along for `denoiser_arguments`.
        return {"encoder_hidden_states": embeddings, "encoder_attention_mask": mask}

    # -- the clip -------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        return int(call_argument(pipe, {}, "height")), int(call_argument(pipe, {}, "width"))

    def _latent_grid(self, pipe, tokens: int, size: Tuple[int, int]) -> Tuple[int, int, int]:
        # (latent frames, rows, columns) of a clip of `size` frames packed into `tokens` tokens.
        factor = int(pipe.vae_spatial_compression_ratio)
        height, width = int(size[0]) // factor, int(size[1]) // factor
        return int(tokens) // (height * width), height, width

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # The pipeline's own decode: unpacked, their mean and deviation undone, the VAE told the decode timestep (0);
        # the frames laid out top to bottom.
        if latents.dim() == 3:
            frames, height, width = self._latent_grid(pipe, latents.shape[1], size or self.default_size(pipe))
            latents = pipe._unpack_latents(latents, frames, height, width)
        vae = pipe.vae
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        timestep = None
        if vae.config.timestep_conditioning:
            timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=latents.dtype)
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        return video.flatten(2, 3)

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        # As the pipeline's image-to-video encodes its image: the posterior's mode, normalised, packed.
        vae = pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        latents = pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        return pipe._pack_latents(latents)

    def draw_noise(self, pipe, latents: torch.Tensor, generator: torch.Generator, size: Tuple[int, int]):
        # As `prepare_latents` draws it: (rows, channels, frames, rows, columns), then packed.
        frames, height, width = self._latent_grid(pipe, latents.shape[1], size)
        noise = torch.randn((latents.shape[0], latents.shape[2], frames, height, width), generator=generator)
        return pipe._pack_latents(noise).to(latents.device, latents.dtype)

    def vae_shapes(self, pipe, images: int, size: Tuple[int, int], sample=None):
        frames, height, width = self._latent_grid(pipe, sample.shape[1], size)
        latents = (images, self.latent_channels(pipe), frames, height, width)
        return latents, (images, 3, len(self.latent_frame_of(pipe, frames)), *size)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        frames, height, width = self._latent_grid(pipe, latents.shape[1], size)
        mask = conditioning.get("encoder_attention_mask")
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand(rows, -1)
        temporal, spatial = int(pipe.vae_temporal_compression_ratio), int(pipe.vae_spatial_compression_ratio)
        frame_rate = call_argument(pipe, call_kwargs, "frame_rate")
        return {
            "hidden_states": latents,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "timestep": timestep.expand(rows),
            "encoder_attention_mask": mask,
            "num_frames": frames,
            "height": height,
            "width": width,
            "rope_interpolation_scale": (temporal / frame_rate, spatial, spatial),
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class LTXImageToVideoFamily(LTXFamily):
    r"""
    `LTXImageToVideoPipeline` (LTX-Video 0.9.x image-to-video): as [`LTXFamily`], and the input image, which the VAE
    encodes (a sample of its posterior, from the call's generator) as the clip's first latent frame: those tokens
    start as the image's latents instead of noise, and the transformer is told timestep 0 for them (a timestep per
    token). The input image's **pixel attributions** come through that path. The prompt dependence is not measured
    (a redraw of the clip alone would not hold the image's first frame).
    """

    name = "ltx_i2v"
    display_name = "LTX-Video image-to-video"
    pipeline_class_names = ("LTXImageToVideoPipeline",)

    def denoiser_reads_mask(self, pipe) -> bool:
        # The denoiser reads the image's first latent frame among its tokens (told timestep 0 there): it cannot
        # redraw a clip alone.
        return True


LTX = register_family(LTXFamily())
LTX_I2V = register_family(LTXImageToVideoFamily())
