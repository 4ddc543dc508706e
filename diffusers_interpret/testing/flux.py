"""Tiny, randomly initialised Flux pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextModel

from ..tokenizer import build_sentencepiece_tokenizer, build_word_tokenizer
from .components import finished, freeze, tiny_clip_config, tiny_flow_vae, tiny_t5

FLUX_PIPELINE_CLASSES = {"text2img": FluxPipeline, "img2img": FluxImg2ImgPipeline}
# The T5 sequence length of the tiny pipelines' calls (`max_sequence_length`); Flux's default is 512.
TINY_T5_LENGTH = 16
# The widths of diffusers' tiny Flux transformer (tests/pipelines/flux), shared by the tiny Flux, Fill and ControlNet.
TINY_FLUX_WIDTHS = dict(
    patch_size=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=[4, 4, 8],
)


def make_tiny_flux_components(seed: int = 0, guidance_embeds: bool = False, num_layers: int = 1) -> dict:
    r"""
    Components of a tiny Flux pipeline (random weights, frozen, eval mode): 16x16 images, 8x8 packed latent tokens.

    CLIP (`text_encoder`, hidden size 32) gives the pooled vector only; T5 (`text_encoder_2`, d_model 32, with a
    generated sentencepiece tokenizer that splits some words into pieces) gives the tokens of joint attention.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        guidance_embeds (`bool`, *optional*, defaults to `False`): A guidance-distilled transformer (Flux-dev).
        num_layers (`int`, *optional*, defaults to 1): Double-stream blocks (and as many single-stream blocks).
    """
    # Copied from diffusers' tests/pipelines/flux/test_pipeline_flux.py (FluxPipelineFastTests.get_dummy_components):
    # the transformer's config, with `num_layers` and `guidance_embeds` as arguments; the VAE's (`tiny_flow_vae`) at
    # half the sample size; the CLIP and T5 encoders and their tokenizers generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        in_channels=4,
        num_layers=num_layers,
        num_single_layers=num_layers,
        guidance_embeds=guidance_embeds,
        **TINY_FLUX_WIDTHS,
    )
    vae = tiny_flow_vae(seed, latent_channels=1)
    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer))
    tokenizer_2 = build_sentencepiece_tokenizer()
    text_encoder_2 = tiny_t5(tokenizer_2, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder, text_encoder_2)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_tiny_flux_pipeline(
    kind: str = "text2img",
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    guidance_embeds: bool = False,
    num_layers: int = 1,
):
    r"""
    A tiny offline Flux pipeline with random weights, for tests and benchmarks. Call it with
    `max_sequence_length=TINY_T5_LENGTH` (or less) and `height=width=16`.

    Args:
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"` or `"img2img"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        guidance_embeds (`bool`, *optional*, defaults to `False`): A guidance-distilled transformer (Flux-dev).
        num_layers (`int`, *optional*, defaults to 1): Double-stream blocks (and as many single-stream blocks).
    """
    if kind not in FLUX_PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(FLUX_PIPELINE_CLASSES)}, got {kind!r}.")
    pipe = FLUX_PIPELINE_CLASSES[kind](**make_tiny_flux_components(seed, guidance_embeds, num_layers))
    return finished(pipe, dtype)
