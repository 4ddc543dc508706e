"""Tiny, randomly initialised HunyuanVideo pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from transformers import CLIPTextModel, LlamaConfig, LlamaModel

from ..tokenizer import build_sentencepiece_tokenizer, build_word_tokenizer
from .components import finished, freeze, tiny_clip_config

# The tiny pipelines' prompt template: a few words before the prompt, cropped as the pipeline crops its own (its
# default, 95 tokens of Llama 3's, fits no generated tokenizer). The generated tokenizer reads "<bos> the video:" as
# 9 pieces ("video" spelt out); the first 5 are cropped, so the template's last 4 ("d", "e", "o", ":") stay before
# the prompt, read by the transformer and never attributed.
TINY_HUNYUAN_TEMPLATE = {"template": "the video: {}", "crop_start": 5}
# The call settings of the tiny pipelines: 9 frames (3 latent frames) of 16x16, 24 Llama positions after the crop.
TINY_HUNYUAN_VIDEO_CALL = dict(
    height=16, width=16, num_frames=9, max_sequence_length=24, prompt_template=TINY_HUNYUAN_TEMPLATE
)


def make_tiny_hunyuan_video_components(seed: int = 0, num_layers: int = 1) -> dict:
    r"""
    Components of a tiny HunyuanVideo pipeline (random weights, frozen, eval mode): clips of 16x16 frames, latents of
    2x2 cells and a 4x temporal compression, a transformer of 1x1 patches with `num_layers` dual-stream and as many
    single-stream blocks, a guidance embedding; a 2-layer Llama (hidden size 16) with a generated sentencepiece
    tokenizer (`<bos>` first) for the tokens, a CLIP text model (hidden size 8) for the pooled vector.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 1): Dual-stream blocks (and as many single-stream blocks).
    """
    # From diffusers' tests/pipelines/hunyuan_video/test_hunyuan_video.py (get_dummy_components): the transformer's,
    # the VAE's and the Llama config, with the tokenizers generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=num_layers,
        num_single_layers=num_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    tokenizer = build_sentencepiece_tokenizer(style="gemma", model_max_length=64)
    torch.manual_seed(seed)
    text_encoder = LlamaModel(
        LlamaConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=16,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=3,  # the pipeline reads the states 2 layers before the last
            vocab_size=len(tokenizer),
            hidden_act="gelu",
        )
    )
    tokenizer_2 = build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModel(tiny_clip_config(tokenizer_2, hidden_size=8, projection_dim=8))
    freeze(transformer, vae, text_encoder, text_encoder_2)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
    }


def make_tiny_hunyuan_video_pipeline(
    seed: int = 0, dtype: Optional[torch.dtype] = None, num_layers: int = 1
) -> HunyuanVideoPipeline:
    r"""
    A tiny offline HunyuanVideo text-to-video pipeline with random weights, for tests and benchmarks. Call it with
    `**TINY_HUNYUAN_VIDEO_CALL` (its prompt template included).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 1): Dual-stream blocks (and as many single-stream blocks).
    """
    pipe = HunyuanVideoPipeline(**make_tiny_hunyuan_video_components(seed, num_layers))
    return finished(pipe, dtype)
