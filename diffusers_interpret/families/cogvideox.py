"""CogVideoX: T5 tokens and the video's patches in one joint attention; latents (frames, channels) per clip."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import PipelineFamily, TextEncoderSlot
from .registry import register_family
from .video import VideoFamily


class CogVideoXFamily(VideoFamily):
    r"""
    `CogVideoXPipeline` (CogVideoX 2B and 5B; CogVideoX 1.5's temporal patches are refused).

    `encode_prompt` runs T5 (`text_encoder`) on the prompt's tokens padded to `max_sequence_length` (226); each block's
    attention reads [text, video] in one softmax with one set of projections (the text's queries and keys are the same
    layer's), the video's positions rotated (3-D rotary embedding, 5B) or embedded. Guidance is classifier-free in one
    batched call ([negative, prompt] rows, `guidance_scale` > 1; 6 by default), `use_dynamic_cfg` included. The
    latents are (frames, channels, height, width) per clip; the VAE decodes its latent frames two at a time, the
    first batch taking the odd one out: in a batch of an odd number the first latent frame makes one frame and each
    other four, in an even one each makes four (13 latent frames make 49 frames).

    The clip is explained as one picture of its frames ([`VideoFamily`]); the text's padding tokens are left out of
    the maps as attention sinks.
    """

    name = "cogvideox"
    display_name = "CogVideoX"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder", "video_processor")
    pipeline_class_names = ("CogVideoXPipeline",)
    frames_axis = 1

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_clip(self, pipe, prompts: List[str], pipeline_kwargs: Dict[str, Any]) -> None:
        if self.denoiser(pipe).config.patch_size_t is not None:
            raise ValueError(
                "CogVideoX 1.5's temporal patches (`patch_size_t`) pad the latent frames and drop the padding before "
                "the decode; they are not explained yet: explain a CogVideoX 2B or 5B pipeline."
            )
        asked = pipeline_kwargs.get("num_frames")
        asked = int(self.denoiser(pipe).config.sample_frames) if asked is None else asked
        if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1:
            made = self.clip_frames(pipe, pipeline_kwargs)
        else:
            made = 0
        self.check_clip_frames(pipe, asked, made)

    def size_multiple(self, pipe) -> Optional[int]:
        return int(pipe.vae_scale_factor_spatial) * int(self.denoiser(pipe).config.patch_size)

    def positive_rows(self, pipe, batch_size: int) -> slice:
        # [negative, prompt] rows with guidance (the pipeline keeps no flag for it: its guidance scale says).
        if float(getattr(pipe, "_guidance_scale", 1.0)) > 1 and batch_size % 2 == 0:
            return slice(batch_size // 2, batch_size)
        return slice(0, batch_size)

    def clip_frames(self, pipe, call_kwargs: Dict[str, Any]) -> int:
        asked = call_kwargs.get("num_frames") or int(self.denoiser(pipe).config.sample_frames)
        latent_frames = (int(asked) - 1) // int(pipe.vae_scale_factor_temporal) + 1
        return len(self.latent_frame_of(pipe, latent_frames))

    def latent_frame_of(self, pipe, latent_frames: int) -> torch.Tensor:
        # The VAE's decode in batches of `num_latent_frames_batch_size` (2) latent frames, the first batch taking the
        # remainder: in a batch of an odd number its first latent frame makes one frame, every other latent frame
        # `vae_scale_factor_temporal` (4).
        temporal = int(pipe.vae_scale_factor_temporal)
        batch = int(getattr(pipe.vae, "num_latent_frames_batch_size", 2))
        latent_frames = int(latent_frames)
        first = latent_frames if latent_frames < batch else batch + latent_frames % batch
        sizes = [first] + [batch] * ((latent_frames - first) // batch)
        made, start = [], 0
        for size in sizes:
            for index in range(size):
                made += [start + index] * (1 if size % 2 == 1 and index == 0 else temporal)
            start += size
        return torch.tensor(made)

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"transformer_blocks.{k}.attn1", block.attn1) for k, block in enumerate(denoiser.transformer_blocks)]

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None), label="T5")]

    # -- the clip -------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        config, factor = self.denoiser(pipe).config, int(pipe.vae_scale_factor_spatial)
        return int(config.sample_height) * factor, int(config.sample_width) * factor

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # The pipeline's `decode_latents`, the frames laid out top to bottom.
        vae = pipe.vae
        latents = 1 / pipe.vae_scaling_factor_image * latents.permute(0, 2, 1, 3, 4)  # (rows, C, F, H, W)
        return vae.decode(latents).sample.flatten(2, 3)

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
        return latents.permute(0, 2, 1, 3, 4)

    def noised(self, pipe, latents, noise, level):
        return PipelineFamily.noised(self, pipe, latents, noise, level)  # a denoising-diffusion schedule (DDIM)

    def predicted_clean(self, pipe, noised, prediction, level):
        return PipelineFamily.predicted_clean(self, pipe, noised, prediction, level)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rotary = None
        if self.denoiser(pipe).config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(*size, latents.size(1), latents.device)
        return {
            "hidden_states": latents,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "timestep": timestep.expand(latents.shape[0]),
            "image_rotary_emb": rotary,
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }


class CogVideoXImageToVideoFamily(CogVideoXFamily):
    r"""
    `CogVideoXImageToVideoPipeline`: as [`CogVideoXFamily`], and the input image, which the pipeline encodes with its
    VAE as the clip's first latent frame (zeros after it) and the transformer reads beside the noised latents (on the
    channel axis). Its **pixel attributions** come through that encoding (the VAE's sampled posterior, from the call's
    generator, as the pipeline draws it). The prompt dependence is not measured (a redraw of the clip alone would not
    have the image's latents beside it).
    """

    name = "cogvideox_i2v"
    display_name = "CogVideoX image-to-video"
    pipeline_class_names = ("CogVideoXImageToVideoPipeline",)


COGVIDEOX = register_family(CogVideoXFamily())
COGVIDEOX_I2V = register_family(CogVideoXImageToVideoFamily())
