"""Tiny, randomly initialised Stable Diffusion pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from ..tokenizer import build_word_tokenizer
from .components import finished, freeze, tiny_clip_config, tiny_scheduler, tiny_vae

PIPELINE_CLASSES = {
    "text2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
    "instruct_pix2pix": StableDiffusionInstructPix2PixPipeline,
}


def make_tiny_components(
    seed: int = 0, unet_in_channels: int = 4, sample_size: int = 32, layers_per_block: int = 2
) -> dict:
    r"""
    Components of a tiny Stable Diffusion pipeline (random weights, frozen, eval mode): 64x64 images by default.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        unet_in_channels (`int`, *optional*, defaults to 4): 9 for an inpainting UNet.
        sample_size (`int`, *optional*, defaults to 32): Latent size; images are twice as large.
        layers_per_block (`int`, *optional*, defaults to 2): UNet layers per block (1 for a faster pipeline).
    """
    # Copied from diffusers' tests/pipelines/stable_diffusion/test_stable_diffusion.py
    # (StableDiffusionPipelineFastTests.get_dummy_components): the UNet, VAE (`tiny_vae`) and CLIP (`tiny_clip_config`)
    # configs, with `sample_size`, `layers_per_block` and `in_channels` as arguments, the tokenizer generated here
    # instead of downloaded, and `steps_offset=1` in the scheduler (`tiny_scheduler`).
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        sample_size=sample_size,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = tiny_vae(seed, sample_size)
    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer))
    scheduler = tiny_scheduler()
    freeze(unet, vae, text_encoder)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def make_tiny_pipeline(
    kind: str = "text2img",
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    unet_in_channels: Optional[int] = None,
    sample_size: int = 32,
    layers_per_block: int = 2,
):
    r"""
    A tiny offline Stable Diffusion pipeline with random weights, for tests and benchmarks.

    Args:
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"`, `"img2img"`, `"inpaint"` or
            `"instruct_pix2pix"` (a UNet reading 8 channels: the noised latents and the input image's, as in
            diffusers' InstructPix2Pix tests).
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline (e.g. `torch.float64` for finite-difference tests).
        unet_in_channels (`int`, *optional*): UNet input channels; 9 for `"inpaint"`, 8 for `"instruct_pix2pix"` and 4
            otherwise by default
            (pass 4 with `"inpaint"` for the legacy blending path).
        sample_size (`int`, *optional*, defaults to 32): Latent size; images are twice as large (64x64 by default).
        layers_per_block (`int`, *optional*, defaults to 2): UNet layers per block.
    """
    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(PIPELINE_CLASSES)}, got {kind!r}.")
    if unet_in_channels is None:
        unet_in_channels = {"inpaint": 9, "instruct_pix2pix": 8}.get(kind, 4)
    components = make_tiny_components(
        seed=seed, unet_in_channels=unet_in_channels, sample_size=sample_size, layers_per_block=layers_per_block
    )
    pipe = PIPELINE_CLASSES[kind](**components, requires_safety_checker=False)
    return finished(pipe, dtype)
