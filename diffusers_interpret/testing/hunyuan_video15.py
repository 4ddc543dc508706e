"""Tiny, randomly initialised HunyuanVideo 1.5 pipelines built offline from configs (as diffusers' own tests do)."""

import re
from typing import Optional

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

from ..tokenizer import CHAT_SPLIT_WORDS, DEFAULT_WORDS, build_chat_tokenizer
from .components import finished, freeze, tiny_t5

# The call settings of the tiny pipelines: 9 frames (5 latent frames) of 16x16.
TINY_HUNYUAN_VIDEO15_CALL = dict(height=16, width=16, num_frames=9)
# The lengths the tiny pipelines pad to (the pipeline's attributes, 1000 Qwen positions after the template, 256 ByT5
# bytes and 729 image tokens otherwise; a saved and reloaded tiny pipeline pads to those).
TINY_HUNYUAN_VIDEO15_LENGTHS = dict(tokenizer_max_length=24, tokenizer_2_max_length=16, vision_num_semantic_tokens=8)

# A run of eight spaces, one token, as Qwen's tokenizer reads the system message's indentation.
_INDENT = " " * 8


def _system_message_tokenizer():
    # A generated Qwen-style chat tokenizer that knows the pipeline's system message's words, so that the system
    # message and the user's role marker make the 108 tokens the pipeline crops (`prompt_template_encode_start_idx`),
    # as Qwen2.5-VL's own tokenizer makes them.
    system = HunyuanVideo15Pipeline._get_mllm_prompt_embeds.__defaults__[-2]
    words = re.findall(r"[A-Za-z]+", system)
    return build_chat_tokenizer(
        words=[*DEFAULT_WORDS, *words, _INDENT], split_words={**CHAT_SPLIT_WORDS, _INDENT: ("Ġ" * 8,)}
    )


def make_tiny_hunyuan_video15_components(seed: int = 0, num_layers: int = 1, guidance_scale: float = 1.0) -> dict:
    r"""
    Components of a tiny HunyuanVideo 1.5 text-to-video pipeline (random weights, frozen, eval mode): clips of 16x16
    frames, latents of 4x4 cells and a 2x temporal compression, a transformer of 1x1 patches with `num_layers`
    dual-stream blocks; a 3-layer Qwen2.5-VL text model (hidden size 16; the pipeline reads the states 2 layers before
    the last) with a generated chat tokenizer whose system message is the pipeline's 108 tokens, a ByT5 encoder
    (d_model 32) for quoted text, and classifier-free guidance by the pipeline's guider.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        num_layers (`int`, *optional*, defaults to 1): Dual-stream blocks.
        guidance_scale (`float`, *optional*, defaults to 1.0): The guider's scale (1: one transformer call a step;
            more: a second call a step, for the negative prompt).
    """
    # From diffusers' tests/pipelines/hunyuan_video1_5/test_hunyuan_1_5.py (get_dummy_components): the transformer's,
    # the VAE's and the Qwen config (one more layer), with the tokenizers generated here instead of downloaded.
    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        text_embed_2_dim=32,
        image_embed_dim=12,
        rope_axes_dim=(2, 2, 4),
        target_size=16,
        task_type="t2v",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16),
        layers_per_block=1,
        spatial_compression_ratio=4,
        temporal_compression_ratio=2,
        downsample_match_channel=False,
        upsample_match_channel=False,
    )
    tokenizer = _system_message_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5(tokenizer_2, d_model=32, seed=seed)
    freeze(transformer, vae, text_encoder, text_encoder_2)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "guider": ClassifierFreeGuidance(guidance_scale=guidance_scale),
    }


def make_tiny_hunyuan_video15_pipeline(
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    num_layers: int = 1,
    guidance_scale: float = 1.0,
    kind: str = "text2video",
):
    r"""
    A tiny offline HunyuanVideo 1.5 pipeline with random weights, for tests and benchmarks. Call it with
    `**TINY_HUNYUAN_VIDEO15_CALL` (text-to-video) or with a 16x16 PIL image and `num_frames=9` (image-to-video). It
    pads the prompt to `TINY_HUNYUAN_VIDEO15_LENGTHS` (the pipeline's attributes).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        num_layers (`int`, *optional*, defaults to 1): Dual-stream blocks.
        guidance_scale (`float`, *optional*, defaults to 1.0): The guider's scale.
        kind (`str`, *optional*, defaults to `"text2video"`): `"text2video"` (`HunyuanVideo15Pipeline`) or
            `"image2video"` (`HunyuanVideo15ImageToVideoPipeline`: the same components, a SigLIP vision model of 16
            tokens of width 12 and its image processor besides).
    """
    components = make_tiny_hunyuan_video15_components(seed, num_layers, guidance_scale)
    if kind == "image2video":
        from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(seed)
        config = SiglipVisionConfig(
            hidden_size=12, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=4,
        )  # fmt: skip
        components["image_encoder"] = SiglipVisionModel(config).eval().requires_grad_(False)
        components["feature_extractor"] = SiglipImageProcessorPil(size={"height": 16, "width": 16})
        pipe = HunyuanVideo15ImageToVideoPipeline(**components)
    elif kind == "text2video":
        pipe = HunyuanVideo15Pipeline(**components)
    else:
        raise ValueError(f"`kind` must be 'text2video' or 'image2video', got {kind!r}.")
    for name, value in TINY_HUNYUAN_VIDEO15_LENGTHS.items():
        setattr(pipe, name, value)
    return finished(pipe, dtype)
