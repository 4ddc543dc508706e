"""Tiny, randomly initialised Stable Diffusion 3 pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection

from ..tokenizer import build_sentencepiece_tokenizer, build_word_tokenizer
from .components import finished, freeze, tiny_clip_config, tiny_flow_vae, tiny_t5

SD3_PIPELINE_CLASSES = {"text2img": StableDiffusion3Pipeline, "img2img": StableDiffusion3Img2ImgPipeline}
# The T5 sequence length of the tiny pipelines' calls (`max_sequence_length`); SD3's default is 256.
TINY_SD3_T5_LENGTH = 16
CLIP_WIDTH = 32  # each CLIP encoder's width; together 64 = T5's width, so SD3's zero padding adds nothing


def make_tiny_sd3_components(seed: int = 0) -> dict:
    r"""
    Components of a tiny Stable Diffusion 3 pipeline (random weights, frozen, eval mode): 16x16 images, 8x8 patches
    of 2x2 latents.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
    """
    # Adapted from diffusers' tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py
    # (StableDiffusion3PipelineFastTests.get_dummy_components), with 2x2 patches, two blocks and CLIP encoders whose
    # widths add up to T5's (so that every text encoder's tokens are explained through the same joint attention), and
    # tokenizers generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=2 * CLIP_WIDTH,
        pooled_projection_dim=2 * CLIP_WIDTH,
        out_channels=4,
    )
    vae = tiny_flow_vae(seed, latent_channels=4)
    components = {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler()}
    for index, suffix in enumerate(("", "_2")):
        tokenizer = build_word_tokenizer()
        torch.manual_seed(seed + index)
        encoder = CLIPTextModelWithProjection(tiny_clip_config(tokenizer, projection_dim=CLIP_WIDTH))
        components["tokenizer" + suffix], components["text_encoder" + suffix] = tokenizer, encoder
    tokenizer_3 = build_sentencepiece_tokenizer()
    text_encoder_3 = tiny_t5(tokenizer_3, d_model=2 * CLIP_WIDTH, seed=seed)
    components.update(
        tokenizer_3=tokenizer_3, text_encoder_3=text_encoder_3, image_encoder=None, feature_extractor=None
    )
    freeze(transformer, vae, components["text_encoder"], components["text_encoder_2"], text_encoder_3)
    return components


def make_tiny_sd3_pipeline(kind: str = "text2img", seed: int = 0, dtype: Optional[torch.dtype] = None):
    r"""
    A tiny offline Stable Diffusion 3 pipeline with random weights, for tests and benchmarks. Call it with
    `max_sequence_length=TINY_SD3_T5_LENGTH` and `height=width=16`.

    Args:
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"` or `"img2img"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
    """
    if kind not in SD3_PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(SD3_PIPELINE_CLASSES)}, got {kind!r}.")
    pipe = SD3_PIPELINE_CLASSES[kind](**make_tiny_sd3_components(seed))
    return finished(pipe, dtype)
