"""Tiny, randomly initialised LTX-Video pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)

from ..tokenizer import build_sentencepiece_tokenizer
from .components import finished, freeze, tiny_t5

# The call settings of the tiny pipelines: 9 frames (3 latent frames) of 32x32 (the pipeline asks for multiples of
# 32), 24 T5 positions (LTX-Video's own default is 128).
TINY_LTX_CALL = dict(height=32, width=32, num_frames=9, max_sequence_length=24)


def make_tiny_ltx_components(seed: int = 0, num_layers: int = 2, timestep_conditioning: bool = False) -> dict:
    r"""
    Components of a tiny LTX-Video pipeline (random weights, frozen, eval mode): clips of 32x32 frames, latents of
    8x8 cells and a 4x temporal compression, a transformer of one-cell patches with a cross-attention to T5 in each
    block; T5 (d_model 32) with a generated sentencepiece tokenizer.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
        timestep_conditioning (`bool`, *optional*, defaults to `False`): A VAE whose decode reads a timestep
            (LTX-Video 0.9.1 and later).
    """
    # From diffusers' tests/pipelines/ltx/test_ltx.py (get_dummy_components): the transformer's and the VAE's configs,
    # with `num_layers` as an argument and the text encoder and tokenizer generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=num_layers,
        caption_channels=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        decoder_inject_noise=(False,) * 5,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        timestep_conditioning=timestep_conditioning,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    tokenizer = build_sentencepiece_tokenizer()
    text_encoder = tiny_t5(tokenizer, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def make_tiny_ltx_pipeline(
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    num_layers: int = 2,
    timestep_conditioning: bool = False,
    kind: str = "text2video",
):
    r"""
    A tiny offline LTX-Video pipeline with random weights, for tests and benchmarks. Call it with `**TINY_LTX_CALL`
    (and, for image-to-video, an `image`).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
        timestep_conditioning (`bool`, *optional*, defaults to `False`): A VAE whose decode reads a timestep.
        kind (`str`, *optional*, defaults to `"text2video"`): `"text2video"` (`LTXPipeline`) or `"image2video"`
            (`LTXImageToVideoPipeline`, the same components).
    """
    classes = {"text2video": LTXPipeline, "image2video": LTXImageToVideoPipeline}
    if kind not in classes:
        raise ValueError(f"`kind` must be 'text2video' or 'image2video', got {kind!r}.")
    pipe = classes[kind](**make_tiny_ltx_components(seed, num_layers, timestep_conditioning))
    return finished(pipe, dtype)
