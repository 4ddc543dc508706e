"""Tiny, randomly initialised Stable Diffusion XL pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from ..tokenizer import build_word_tokenizer
from .components import finished, freeze, tiny_clip_config, tiny_scheduler, tiny_vae

SDXL_PIPELINE_CLASSES = {
    "text2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}

# SDXL's micro-conditioning: `time_ids` holds 6 numbers (original size, crop top-left, target size), each embedded in
# `ADDITION_TIME_EMBED_DIM` dimensions and concatenated with the pooled embedding of `text_encoder_2`.
TEXT_HIDDEN_SIZE = 32
PROJECTION_DIM = 32
ADDITION_TIME_EMBED_DIM = 8


def make_tiny_sdxl_components(
    seed: int = 0, unet_in_channels: int = 4, sample_size: int = 16, layers_per_block: int = 1
) -> dict:
    r"""
    Components of a tiny Stable Diffusion XL pipeline (random weights, frozen, eval mode): 32x32 images by default.

    The UNet has SDXL's added conditioning (`addition_embed_type="text_time"`) and cross-attends to the concatenated
    hidden states of both text encoders (32 + 32 = 64). The scheduler is a `DDIMScheduler`, whose `step` keeps the
    sample's dtype (float64 pipelines stay float64), and the VAE has `force_upcast=False` so that img2img and inpaint
    do not encode the image in float32.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        unet_in_channels (`int`, *optional*, defaults to 4): 9 for an inpainting UNet.
        sample_size (`int`, *optional*, defaults to 16): Latent size; images are twice as large.
        layers_per_block (`int`, *optional*, defaults to 1): UNet layers per block.
    """
    # Adapted from diffusers' tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py
    # (StableDiffusionXLPipelineFastTests.get_dummy_components): SDXL's added conditioning (`addition_embed_type=
    # "text_time"`, time ids embedded in 8 dimensions) and both CLIP encoders' widths, on the smaller UNet of the
    # Stable Diffusion tests; the tokenizers generated here instead of downloaded.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        sample_size=sample_size,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
    )
    vae = tiny_vae(seed, sample_size, force_upcast=False)
    tokenizer = build_word_tokenizer()
    tokenizer_2 = build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(tokenizer_2, projection_dim=PROJECTION_DIM))
    scheduler = tiny_scheduler()
    freeze(unet, vae, text_encoder, text_encoder_2)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_tiny_sdxl_pipeline(
    kind: str = "text2img",
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    unet_in_channels: Optional[int] = None,
    sample_size: int = 16,
    layers_per_block: int = 1,
):
    r"""
    A tiny offline Stable Diffusion XL pipeline with random weights, for tests and benchmarks.

    No invisible watermark is applied (`add_watermarker=False`) and img2img/inpaint use `target_size` rather than an
    aesthetic score in `time_ids` (`requires_aesthetics_score=False`).

    Args:
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"`, `"img2img"` or `"inpaint"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline (e.g. `torch.float64` for finite-difference tests).
        unet_in_channels (`int`, *optional*): UNet input channels; 9 for `"inpaint"` and 4 otherwise by default
            (pass 4 with `"inpaint"` for the legacy blending path).
        sample_size (`int`, *optional*, defaults to 16): Latent size; images are twice as large (32x32 by default).
        layers_per_block (`int`, *optional*, defaults to 1): UNet layers per block.
    """
    if kind not in SDXL_PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(SDXL_PIPELINE_CLASSES)}, got {kind!r}.")
    if unet_in_channels is None:
        unet_in_channels = 9 if kind == "inpaint" else 4
    components = make_tiny_sdxl_components(
        seed=seed, unet_in_channels=unet_in_channels, sample_size=sample_size, layers_per_block=layers_per_block
    )
    options = {"add_watermarker": False}
    if kind != "text2img":
        options["requires_aesthetics_score"] = False
    pipe = SDXL_PIPELINE_CLASSES[kind](**components, **options)
    return finished(pipe, dtype)
