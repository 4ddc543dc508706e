"""The parts the tiny pipelines of every family share: tiny VAEs, text encoders and a scheduler, built from configs."""

from typing import Optional

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextConfig, T5Config, T5EncoderModel


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


def finished(pipe, dtype: Optional[torch.dtype] = None):
    r"""A tiny pipeline made ready: cast to `dtype` where given, its progress bar off."""
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def freeze(*models: torch.nn.Module) -> None:
    for model in models:
        model.eval().requires_grad_(False)
