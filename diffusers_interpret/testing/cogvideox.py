"""Tiny, randomly initialised CogVideoX pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
)

from ..tokenizer import build_sentencepiece_tokenizer
from .components import finished, freeze, tiny_t5

# The call settings of the tiny pipelines: 9 frames (3 latent frames) of 16x16, 24 T5 positions (CogVideoX's own
# default is 226, its transformer's `max_text_seq_length`).
TINY_COGVIDEOX_CALL = dict(height=16, width=16, num_frames=9, max_sequence_length=24)


def make_tiny_cogvideox_components(
    seed: int = 0, num_layers: int = 2, rotary: bool = True, image_to_video: bool = False
) -> dict:
    r"""
    Components of a tiny CogVideoX pipeline (random weights, frozen, eval mode): clips of 16x16 frames, latents of
    2x2 cells and a 4x temporal compression, a transformer of 2x2 patches with joint attention over [text, video];
    T5 (d_model 32) with a generated sentencepiece tokenizer.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
        rotary (`bool`, *optional*, defaults to `True`): The video's positions rotated in attention (CogVideoX 5B's
            3-D rotary embedding); `False`: added as fixed embeddings (2B's).
        image_to_video (`bool`, *optional*, defaults to `False`): CogVideoX image-to-video's: the transformer reads the
            input image's latents (its first latent frame, then zeros) beside the noised ones (8 channels).
    """
    # From diffusers' tests/pipelines/cogvideo/test_cogvideox.py (get_dummy_components): the transformer's and the
    # VAE's configs, with `num_layers` as an argument, 2 heads of 16 (its 4 of 8 cannot take the rotary embedding), a
    # text length of 24 and the text encoder and tokenizer generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # a 3-D rotary embedding splits a head 4 / 6 / 6 (each part even)
        in_channels=8 if image_to_video else 4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=num_layers,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TINY_COGVIDEOX_CALL["max_sequence_length"],
        use_rotary_positional_embeddings=rotary,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    tokenizer = build_sentencepiece_tokenizer()
    text_encoder = tiny_t5(tokenizer, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": DDIMScheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def make_tiny_cogvideox_pipeline(
    seed: int = 0, dtype: Optional[torch.dtype] = None, num_layers: int = 2, rotary: bool = True
) -> CogVideoXPipeline:
    r"""
    A tiny offline CogVideoX text-to-video pipeline with random weights, for tests and benchmarks. Call it with
    `**TINY_COGVIDEOX_CALL`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
        rotary (`bool`, *optional*, defaults to `True`): A rotary embedding of the video's positions (5B), or fixed
            positional embeddings (2B).
    """
    pipe = CogVideoXPipeline(**make_tiny_cogvideox_components(seed, num_layers, rotary))
    return finished(pipe, dtype)


def make_tiny_cogvideox_i2v_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None):
    r"""
    A tiny offline CogVideoX image-to-video pipeline with random weights (5B-style: a rotary embedding), for tests and
    benchmarks. Call it with an `image` and `**TINY_COGVIDEOX_CALL`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
    """
    pipe = CogVideoXImageToVideoPipeline(**make_tiny_cogvideox_components(seed, image_to_video=True))
    return finished(pipe, dtype)
