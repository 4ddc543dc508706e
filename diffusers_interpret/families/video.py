r"""What the text-to-video families share: a clip explained as one picture of its frames laid out top to bottom."""

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .base import PipelineFamily, TextEncoderSlot, TransformerFamily, call_argument


class VideoFamily(TransformerFamily):
    r"""
    A video pipeline's family: the clip is explained as one **picture**, its frames laid out top to bottom (the
    decode lays them out so), so that every box, mask, map and target of the image families serves a clip; a box on
    frame `k` is the frame's box moved down `k` frames (`box.frame_region`). The denoiser's tokens are patches of each
    latent frame, (latent frame, row, column) in order: the attention grid is the latent frames' grids top to bottom,
    each latent frame's maps upsampled to a frame and shown on every frame the VAE makes of it (`latent_frame_of`).

    A pipeline whose call takes an `image` is image-to-video (the input kind read off its signature, as for the image
    families), its image preprocessed by its video processor. A subclass says where the latent frames sit in the
    denoiser's sample (`frames_axis`), how many frames its VAE makes of them (`latent_frame_of`), and how many frames
    a call makes (`clip_frames`).
    """

    images_per_prompt_argument = "num_videos_per_prompt"
    video = True
    pooled_name = None
    conditioning_names = ("encoder_hidden_states",)
    # The axis of the latent frames in the denoiser's sample and in the final latents (Wan: (rows, C, F, H, W)).
    frames_axis: int = 2

    def input_image(self, pipe) -> Tuple[str, str]:
        # An image-to-video pipeline (its call takes an `image`) preprocesses the image with its video processor.
        return "image", "video_processor"

    def temporal_factor(self, pipe) -> int:
        r"""The frames the VAE makes of each latent frame after the first."""
        return int(pipe.vae_scale_factor_temporal)

    def clip_frames(self, pipe, call_kwargs: Dict[str, Any]) -> int:
        r"""The frames of the clip a call with `call_kwargs` makes: as many as its latent frames make."""
        asked = int(call_argument(pipe, call_kwargs, "num_frames"))
        return len(self.latent_frame_of(pipe, (asked - 1) // self.temporal_factor(pipe) + 1))

    def latent_frame_of(self, pipe, latent_frames: int) -> torch.Tensor:
        r"""For each frame the VAE makes of `latent_frames` latent frames, the latent frame it is made of: one frame of
        the first, then `temporal_factor` of each (a causal video VAE's)."""
        temporal = self.temporal_factor(pipe)
        return (torch.arange((int(latent_frames) - 1) * temporal + 1) + temporal - 1) // temporal

    def concept_blocks(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return PipelineFamily.concept_blocks(self, denoiser)  # no text stream of its own: refused, saying what to use

    def check_request(
        self,
        pipe,
        prompts: List[str],
        size: Tuple[Optional[int], Optional[int]],
        pipeline_kwargs: Dict[str, Any],
        generating: bool = True,
    ) -> None:
        if not generating:
            raise ValueError(
                f"Explaining a clip the user already has is not supported for {self.display_name} yet: explain a "
                "generated clip."
            )
        self.check_clip(pipe, prompts, pipeline_kwargs)

    def check_clip(self, pipe, prompts: List[str], pipeline_kwargs: Dict[str, Any]) -> None:
        r"""Raise a `ValueError` for a generating call whose clip this family cannot explain (see `check_request`): by
        default, a frame count the pipeline would not make as asked."""
        asked = call_argument(pipe, pipeline_kwargs, "num_frames")
        made = self.clip_frames(pipe, pipeline_kwargs) if isinstance(asked, int) and asked >= 1 else 0
        self.check_clip_frames(pipe, asked, made)

    # -- text: one T5-like encoder whose `encode_prompt` the Wan and CogVideoX pipelines share ---------------------
    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(call_argument(pipe, call_kwargs, "max_sequence_length"))

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _ = pipe.encode_prompt(
            prompts["prompt"],
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=int(call_argument(pipe, call_kwargs, "max_sequence_length")),
            device=device,
        )
        return {"encoder_hidden_states": embeddings}

    # -- maps -----------------------------------------------------------------------------------------------------
    def attention_frames(self, args: tuple, kwargs: dict) -> Optional[int]:
        return int(self.read_sample(args, kwargs).shape[self.frames_axis])

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        # The latent frames' grids top to bottom; the tokens are 2x2 patches of it, which is its rows and columns
        # halved (the recorders find the patch grid as a downsampling of this one).
        sample = self.read_sample(args, kwargs)
        height, width = sample.shape[-2:]
        return int(sample.shape[self.frames_axis]) * int(height), int(width)

    def attention_grid_scale(self, pipe) -> int:
        return int(pipe.vae_scale_factor_spatial)

    def attention_image_size(self, pipe, grid: Tuple[int, int], frames: Optional[int]) -> Tuple[int, int]:
        scale = self.attention_grid_scale(pipe)
        count = len(self.latent_frame_of(pipe, frames))
        return count * (grid[0] // frames) * scale, grid[1] * scale

    def upsample_attention(
        self, pipe, grids: torch.Tensor, size: Tuple[int, int], frames: Optional[int]
    ) -> torch.Tensor:
        # Each latent frame's grid upsampled bilinearly to a frame, then shown on every frame the VAE makes of it.
        made_of = self.latent_frame_of(pipe, frames)
        frame_height = size[0] // len(made_of)
        rows, tokens = grids.shape[:2]
        per_frame = grids.reshape(rows * tokens, frames, grids.shape[-2] // frames, grids.shape[-1]).transpose(0, 1)
        upsampled = torch.stack(
            [
                F.interpolate(grid[:, None], size=(frame_height, size[1]), mode="bilinear", align_corners=False)[:, 0]
                for grid in per_frame
            ]
        )  # (latent frames, rows x tokens, H, W)
        made = upsampled[made_of]  # (frames, rows x tokens, H, W)
        return made.transpose(0, 1).reshape(rows, tokens, len(made_of) * frame_height, size[1])

    # -- the clip -------------------------------------------------------------------------------------------------
    def output_latents(self, output) -> torch.Tensor:
        return output.frames

    def image_processor(self, pipe):
        return pipe.video_processor  # the frames' post-processing, alike for the picture of all of them

    def clip_pixels(self, pipe, pictures: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        frames = pictures.shape[-2] // size[0]
        return pictures.unflatten(-2, (frames, size[0]))

    def vae_shapes(self, pipe, images: int, size: Tuple[int, int], sample=None):
        frames = int(sample.shape[self.frames_axis])  # the denoiser's latents are the VAE's
        latents = (images, self.latent_channels(pipe), frames, *sample.shape[-2:])
        return latents, (images, 3, len(self.latent_frame_of(pipe, frames)), *size)

    def check_clip_frames(self, pipe, asked: Any, made: int) -> None:
        r"""Refuse a frame count the pipeline would not make as asked (it rounds it, or its VAE makes another)."""
        if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1 or asked != made:
            raise ValueError(
                f"`num_frames={asked!r}` is not a clip this {self.display_name} pipeline makes (it would make "
                f"{made} frames): pass a frame count it makes, e.g. {made if made > 0 else 1}."
            )
