"""Tiny, randomly initialised Chroma pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import ChromaImg2ImgPipeline, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

from ..tokenizer import build_sentencepiece_tokenizer
from .components import finished, freeze, tiny_flow_vae, tiny_t5

CHROMA_PIPELINE_CLASSES = {"text2img": ChromaPipeline, "img2img": ChromaImg2ImgPipeline}
# The T5 sequence length of the tiny pipelines' calls (`max_sequence_length`); Chroma's default is 512.
TINY_CHROMA_T5_LENGTH = 16


def make_tiny_chroma_components(seed: int = 0, num_layers: int = 1) -> dict:
    r"""
    Components of a tiny Chroma pipeline (random weights, frozen, eval mode): 16x16 images, 8x8 packed latent tokens;
    T5 (d_model 32) with a generated sentencepiece tokenizer that splits some words into pieces.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 1): Double-stream blocks (and as many single-stream blocks).
    """
    # Copied from diffusers' tests/pipelines/chroma/test_pipeline_chroma.py (get_dummy_components): the transformer's
    # config with `num_layers` as an argument; the VAE (`tiny_flow_vae`); T5 and its tokenizer generated here.
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=num_layers,
        num_single_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    vae = tiny_flow_vae(seed, latent_channels=1)
    tokenizer = build_sentencepiece_tokenizer()
    text_encoder = tiny_t5(tokenizer, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_tiny_chroma_pipeline(
    kind: str = "text2img", seed: int = 0, dtype: Optional[torch.dtype] = None, num_layers: int = 1
):
    r"""
    A tiny offline Chroma pipeline with random weights, for tests and benchmarks. Call it with
    `max_sequence_length=TINY_CHROMA_T5_LENGTH` (or less) and `height=width=16`.

    Args:
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"` or `"img2img"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 1): Double-stream blocks (and as many single-stream blocks).
    """
    if kind not in CHROMA_PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(CHROMA_PIPELINE_CLASSES)}, got {kind!r}.")
    pipe = CHROMA_PIPELINE_CLASSES[kind](**make_tiny_chroma_components(seed, num_layers))
    return finished(pipe, dtype)
