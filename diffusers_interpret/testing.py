"""Tiny, randomly initialised Stable Diffusion pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from .tokenizer import build_word_tokenizer

PIPELINE_CLASSES = {
    "text2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}


def tiny_vae(seed: int, sample_size: int, **config) -> AutoencoderKL:
    r"""A tiny `AutoencoderKL` (factor 2) for latents of `sample_size`; `config` overrides its arguments."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        **{
            "block_out_channels": [32, 64],
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 4,
            "sample_size": sample_size * 2,
            **config,
        }
    )


def tiny_clip_config(tokenizer, **config) -> CLIPTextConfig:
    r"""A tiny CLIP text encoder's config (hidden size 32, 5 layers) for `tokenizer`; `config` overrides it."""
    return CLIPTextConfig(
        **{
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_size": 32,
            "intermediate_size": 37,
            "layer_norm_eps": 1e-05,
            "num_attention_heads": 4,
            "num_hidden_layers": 5,
            "vocab_size": len(tokenizer),
            **config,
        }
    )


def tiny_flow_vae(seed: int, latent_channels: int) -> AutoencoderKL:
    r"""The one-block `AutoencoderKL` (factor 1, no quant convs, a `shift_factor` as SD3 and Flux have) of diffusers'
    own SD3 and Flux tests, with `latent_channels` channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_t5(tokenizer, d_model: int, seed: int = 0) -> T5EncoderModel:
    r"""A tiny `T5EncoderModel` (2 layers, 4 heads) for a generated sentencepiece `tokenizer`."""
    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_scheduler() -> DDIMScheduler:
    r"""A DDIM scheduler with SD's betas: its `step` keeps the sample's dtype (float64 pipelines stay float64)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def freeze(*models: torch.nn.Module) -> None:
    for model in models:
        model.eval().requires_grad_(False)


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
        kind (`str`, *optional*, defaults to `"text2img"`): `"text2img"`, `"img2img"` or `"inpaint"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline (e.g. `torch.float64` for finite-difference tests).
        unet_in_channels (`int`, *optional*): UNet input channels; 9 for `"inpaint"` and 4 otherwise by default
            (pass 4 with `"inpaint"` for the legacy blending path).
        sample_size (`int`, *optional*, defaults to 32): Latent size; images are twice as large (64x64 by default).
        layers_per_block (`int`, *optional*, defaults to 2): UNet layers per block.
    """
    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"`kind` must be one of {sorted(PIPELINE_CLASSES)}, got {kind!r}.")
    if unet_in_channels is None:
        unet_in_channels = 9 if kind == "inpaint" else 4
    components = make_tiny_components(
        seed=seed, unet_in_channels=unet_in_channels, sample_size=sample_size, layers_per_block=layers_per_block
    )
    pipe = PIPELINE_CLASSES[kind](**components, requires_safety_checker=False)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
