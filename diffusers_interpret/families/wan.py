"""Wan: UMT5 tokens read by each block's cross-attention; a 3-D video latent, its frames laid out top to bottom."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import JointAttention, TextEncoderSlot, call_argument
from .registry import register_family
from .video import VideoFamily


class WanFamily(VideoFamily):
    r"""
    `WanPipeline` (Wan 2.1 text-to-video, and Wan 2.2's 5B text-to-video model, whose transformer takes a timestep
    per token: `expand_timesteps=True`; Wan 2.2's second, low-noise transformer is refused).

    `encode_prompt` cleans the prompt (ftfy, HTML entities, runs of white space), runs UMT5 (`text_encoder`) on its
    tokens padded to `max_sequence_length` (512) and sets the states past the prompt's own tokens to zeros: the
    transformer reads them through the cross-attention (`attn2`) of each block, with no mask, so the zero padding
    takes attention without carrying a word (left out of the maps as an attention sink). Guidance is classifier-free
    in two separate transformer calls per step, the prompt's first (`guidance_scale` > 1, 5.0 by default).

    The clip is explained as one picture of its frames ([`VideoFamily`]). The transformer's tokens are patches of each
    latent frame (2x2 in Wan's checkpoints), and the VAE makes several frames of each latent frame after the first,
    which makes one (4 in Wan's checkpoints): a latent frame's maps are those of the frames it makes.
    """

    name = "wan"
    display_name = "Wan"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder", "video_processor")
    pipeline_class_names = ("WanPipeline",)
    denoiser_attribute = "transformer"
    sample_name = "hidden_states"
    # Cross-attention: the image's queries over the text's keys alone (the text has no queries of its own).
    joint_attention = JointAttention(text_first=True, text_queries=False)
    self_attention_reads_text = False  # `attn1`: the video's tokens alone

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        if getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError(
                "Wan 2.2's two transformers (`transformer_2`, switched at `boundary_ratio`) are not explained yet: "
                "explain a Wan 2.1 pipeline (one `transformer`), or load the pipeline with `transformer_2=None`."
            )

    def check_clip(self, pipe, prompts: List[str], pipeline_kwargs: Dict[str, Any]) -> None:
        frames = call_argument(pipe, pipeline_kwargs, "num_frames")
        temporal = int(pipe.vae_scale_factor_temporal)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or frames % temporal != 1:
            raise ValueError(
                f"`num_frames` must be {temporal} x k + 1 frames (the VAE makes {temporal} frames of each latent "
                f"frame after the first), got {frames!r}: the pipeline would round it and make another clip; pass "
                f"e.g. {max(1, (int(frames) // temporal) * temporal + 1) if isinstance(frames, int) else 81}."
            )
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        texts = [text for text in prompts if isinstance(text, str)]
        for text in texts:
            if prompt_clean(text) != text.strip():
                raise ValueError(
                    f"Wan's prompt cleaning rewrites the prompt {text!r} to {prompt_clean(text)!r}, so the words "
                    "explained would not be the ones the model read: pass the cleaned text as the prompt."
                )

    def size_multiple(self, pipe) -> Optional[int]:
        return int(pipe.vae_scale_factor_spatial) * int(self.denoiser(pipe).config.patch_size[1])

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        return 2 if float(call_argument(pipe, call_kwargs or {}, "guidance_scale")) > 1 else 1

    def is_prompt_call(self, pipe, call_index: int, calls_per_step: int) -> bool:
        # With guidance the pipeline calls the transformer for the prompt first, then for the negative prompt.
        return call_index % calls_per_step == 0

    def positive_rows(self, pipe, batch_size: int) -> slice:
        return slice(0, batch_size)

    def clip_frames(self, pipe, call_kwargs: Dict[str, Any]) -> int:
        return int(call_argument(pipe, call_kwargs, "num_frames"))

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"blocks.{index}.attn2", block.attn2) for index, block in enumerate(denoiser.blocks)]

    # -- text -----------------------------------------------------------------------------------------------------
    def self_attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"blocks.{index}.attn1", block.attn1) for index, block in enumerate(denoiser.blocks)]

    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        # UMT5 reads its mask, and the pipeline replaces the padding's states by zeros.
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None), label="UMT5", masked_padding=True)]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        # `prompt_clean` strips the outer white space (prompts it rewrites otherwise are refused in `check_request`).
        return text.strip(), -(len(text) - len(text.lstrip()))

    # -- the clip -------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        return int(call_argument(pipe, {}, "height")), int(call_argument(pipe, {}, "width"))

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # The pipeline's own decode (its latents' mean and deviation undone), the frames laid out top to bottom.
        vae = pipe.vae
        config = vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode((latents / std + mean).to(vae.dtype), return_dict=False)[0]  # (rows, 3, F, H, W)
        return video.flatten(2, 3)

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        # As the pipeline's video-to-video encodes a clip: the posterior's mode, less the latents' mean, over their
        # deviation.
        vae = pipe.vae
        config = vae.config
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        return (latents - mean) / std

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        if getattr(pipe.config, "expand_timesteps", False):
            # Wan 2.2's 5B model takes a timestep per token, as its pipeline makes them: one per 2x2 cell of each
            # latent frame (`mask[0][0][:, ::2, ::2] * t`, its mask all ones for text-to-video; the pipeline's stride
            # of 2, not the transformer's `patch_size`).
            frames, height, width = latents.shape[2:]
            cells = torch.ones(frames, (height + 1) // 2, (width + 1) // 2, device=latents.device)
            timestep = (cells * timestep).flatten()[None].expand(rows, -1)
        return {
            "hidden_states": latents,
            "timestep": timestep.expand(rows) if timestep.ndim < 2 else timestep,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }

    def latent_channels(self, pipe) -> int:
        return int(pipe.vae.config.z_dim)


class WanImageToVideoFamily(WanFamily):
    r"""
    `WanImageToVideoPipeline` (Wan 2.1 image-to-video): as [`WanFamily`], and the input image. The pipeline encodes
    it twice: its VAE encodes a clip of the image followed by empty frames, whose latents (with a mask of the first
    frame) the transformer reads beside the noised ones; a CLIP vision encoder reads it too, and its tokens sit before
    the text's in each cross-attention (split off by a text length of 512, the processor's constant: explain with
    `max_sequence_length=512`, the default). The input image's **pixel attributions** come through the VAE's path:
    CLIP's processor works on the image outside torch, so the image-token path carries no gradient to the pixels
    (the words' attributions include it: the image tokens are part of each traced call). The prompt dependence is
    not measured (the transformer reads the first frame's latents beside the noised ones, which a redraw of the clip
    alone does not have). A last frame (`last_image`), image embeddings given instead of the image
    (`image_embeds`) and Wan 2.2's expanded timesteps are refused.
    """

    name = "wan_i2v"
    display_name = "Wan image-to-video"
    required_components = (*WanFamily.required_components, "image_encoder", "image_processor")
    pipeline_class_names = ("WanImageToVideoPipeline",)

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        super().check_arguments(pipe, pipeline_kwargs)
        for name, why in (
            ("last_image", "a last frame to interpolate to is not explained yet: explain the first frame's clip"),
            ("image_embeds", "the image's pixels are attributed: pass `image=`, not its embeddings"),
        ):
            if pipeline_kwargs.get(name) is not None:
                raise ValueError(f"`{name}`: {why}.")
        if getattr(pipe.config, "expand_timesteps", False):
            raise ValueError(
                "Wan 2.2's expanded timesteps (`expand_timesteps=True`, the 5B text-and-image-to-video model) are not "
                "explained yet: explain a Wan 2.1 image-to-video pipeline."
            )

    def check_clip(self, pipe, prompts: List[str], pipeline_kwargs: Dict[str, Any]) -> None:
        super().check_clip(pipe, prompts, pipeline_kwargs)
        length = int(call_argument(pipe, pipeline_kwargs, "max_sequence_length"))
        if length != 512:
            raise ValueError(
                f"`max_sequence_length={length}`: Wan image-to-video's cross-attention takes the image's tokens to be "
                "all but the last 512 (its processor's constant), so another text length would mix them: leave "
                "`max_sequence_length` at 512."
            )


WAN = register_family(WanFamily())
WAN_I2V = register_family(WanImageToVideoFamily())
