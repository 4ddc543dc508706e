"""Tiny, randomly initialised Sana pipelines built offline from configs (as diffusers' own tests do)."""

import inspect
from typing import Optional

import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
from transformers import Gemma2Config, Gemma2Model

from ..tokenizer import DEFAULT_WORDS, build_sentencepiece_tokenizer
from .components import finished, freeze

# The call settings of the tiny pipelines: no resolution binning (a 32x32 image has no bin, as in diffusers' tests) and
# 24 kept positions of the prompt's states (the pipeline's own 300 otherwise).
TINY_SANA_CALL = dict(use_resolution_binning=False, max_sequence_length=24)


def _instruction_words() -> list:
    # The words of the pipeline's default `complex_human_instruction`, one piece each in the generated tokenizer.
    lines = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return [word.strip(".,:'-") for word in " ".join(lines).lower().split() if word.strip(".,:'-").isalpha()]


def make_tiny_sana_components(seed: int = 0, num_layers: int = 2) -> dict:
    r"""
    Components of a tiny Sana pipeline (random weights, frozen, eval mode): 32x32 images, 16x16 latents (a two-block
    `AutoencoderDC`); a one-layer Gemma 2 (hidden size 8) with a generated Gemma-style tokenizer that knows the words
    of the pipeline's default instruction.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
    """
    # From diffusers' tests/pipelines/sana/test_sana.py (get_dummy_components): the transformer's, the VAE's and the
    # Gemma 2 configs, with the generated tokenizer's vocabulary instead of a downloaded tokenizer.
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=[1, 1],
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    tokenizer = build_sentencepiece_tokenizer(
        words=[*DEFAULT_WORDS, *_instruction_words()], model_max_length=512, style="gemma"
    )
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=8,
            # Wider than the default 0.02, for tokens whose states differ (as in testing/prx.py).
            initializer_range=0.3,
            intermediate_size=64,
            max_position_embeddings=8192,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            attn_implementation="eager",
        )
    )
    freeze(transformer, vae, text_encoder)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def make_tiny_sana_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None, num_layers: int = 2):
    r"""
    A tiny offline Sana pipeline with random weights, for tests and benchmarks. Call it with `**TINY_SANA_CALL` and
    `height=width=32`.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 2): Transformer blocks.
    """
    pipe = SanaPipeline(**make_tiny_sana_components(seed, num_layers))
    return finished(pipe, dtype)
