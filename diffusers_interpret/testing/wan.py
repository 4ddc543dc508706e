"""Tiny, randomly initialised Wan text-to-video pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..tokenizer import build_sentencepiece_tokenizer
from .components import finished, freeze, tiny_t5

# The call settings of the tiny pipelines: 9 frames (3 latent frames: the VAE compresses time 4x after the first
# frame) of 16x16, 24 T5 positions (Wan's own default is 512).
TINY_WAN_CALL = dict(height=16, width=16, num_frames=9, max_sequence_length=24)


# The image-to-video pipelines' call: its cross-attention splits the image's tokens from the text's by a text length of
# 512 (its processor's constant), so the text is padded to 512.
TINY_WAN_I2V_CALL = dict(height=16, width=16, num_frames=9, max_sequence_length=512)


def make_tiny_wan_components(seed: int = 0, num_layers: int = 2, image_to_video: bool = False) -> dict:
    r"""
    Components of a tiny Wan 2.1 pipeline (random weights, frozen, eval mode): clips of 16x16 frames, latents of
    8x8 cells and a 4x temporal compression, a transformer of 2x2 patches; T5 (d_model 32) with a generated
    sentencepiece tokenizer in place of UMT5.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
        image_to_video (`bool`, *optional*, defaults to `False`): Wan 2.1 image-to-video's: the transformer reads the
            first frame's latents and a mask beside the video's (36 channels) and a CLIP vision encoder's 65 tokens of
            the image (32x32, 4x4 patches) beside the text's.
    """
    # From diffusers' tests/pipelines/wan/test_wan.py and test_wan_image_to_video.py (get_dummy_components): the VAE's,
    # the transformer's and the image encoder's configs, with `num_layers` as an argument, 4x4 image patches (not 1x1:
    # 65 image tokens, not 1025) and the text encoder and tokenizer generated here instead of downloaded.
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if image_to_video else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4 if image_to_video else None,
        added_kv_proj_dim=24 if image_to_video else None,  # the image tokens' own keys and values in `attn2`
    )
    tokenizer = build_sentencepiece_tokenizer()
    text_encoder = tiny_t5(tokenizer, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder)
    components = {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer_2": None,
    }
    if image_to_video:
        torch.manual_seed(seed)
        config = CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=4,
        )  # fmt: skip
        components["image_encoder"] = CLIPVisionModelWithProjection(config)
        components["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
        freeze(components["image_encoder"])
    return components


def make_tiny_wan_i2v_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None) -> WanImageToVideoPipeline:
    r"""
    A tiny offline Wan 2.1 image-to-video pipeline with random weights, for tests and benchmarks. Call it with an
    `image` and `**TINY_WAN_I2V_CALL`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
    """
    pipe = WanImageToVideoPipeline(**make_tiny_wan_components(seed, image_to_video=True))
    return finished(pipe, dtype)


# The tiny Wan 2.2 5B pipeline's call: its VAE makes 16x16 cells (2x2 patches of 8x8 in the VAE itself), so 64x64
# frames make 4x4 latents, 2x2 tokens per latent frame.
TINY_WAN22_CALL = dict(height=64, width=64, num_frames=9, max_sequence_length=24)


def make_tiny_wan22_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None) -> WanPipeline:
    r"""
    A tiny offline Wan 2.2 5B text-to-video pipeline (`expand_timesteps=True`: a timestep per token) with random
    weights: Wan 2.2's VAE (residual blocks, 2x2 patches inside the VAE, 48 latent channels, 16x spatial and 4x
    temporal compression) and the tiny Wan transformer on its latents. Call it with `**TINY_WAN22_CALL`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
    """
    components = make_tiny_wan_components(seed)
    torch.manual_seed(seed)
    # From diffusers' tests/pipelines/wan/test_wan_22.py (the 5B model's dummy components): the VAE's config.
    components["vae"] = AutoencoderKLWan(
        base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    )  # fmt: skip
    torch.manual_seed(seed)
    components["transformer"] = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    freeze(components["vae"], components["transformer"])
    return finished(WanPipeline(**components, expand_timesteps=True), dtype)


def make_tiny_wan_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None, num_layers: int = 2) -> WanPipeline:
    r"""
    A tiny offline Wan text-to-video pipeline with random weights, for tests and benchmarks. Call it with
    `**TINY_WAN_CALL`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
    """
    pipe = WanPipeline(**make_tiny_wan_components(seed, num_layers))
    return finished(pipe, dtype)
