"""Tiny, randomly initialised PRX pipelines built offline from configs (as diffusers' own tests do)."""

from typing import Optional

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, PRXPipeline, PRXTransformer2DModel

from ..tokenizer import build_sentencepiece_tokenizer
from .components import finished, freeze

# The call settings of the tiny pipelines: no resolution binning (a 16x16 image has no bin, as in diffusers' tests) and
# the tokenizer's 24 tokens.
TINY_PRX_CALL = dict(use_resolution_binning=False)


def make_tiny_prx_components(seed: int = 0, depth: int = 2, default_sample_size: int = 16) -> dict:
    r"""
    Components of a tiny PRX pipeline (random weights, frozen, eval mode): 16x16 images and latents (a one-block VAE),
    one image token per latent pixel; a one-layer T5Gemma encoder (hidden size 8) with a generated sentencepiece-style
    tokenizer padding to 24 tokens.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        depth (`int`, *optional*, defaults to 2): Transformer blocks.
        default_sample_size (`int`, *optional*, defaults to 16): The pipeline's default image size (resolution binning
            has bins for 256, 512 and 1024).
    """
    # From diffusers' tests/pipelines/prx/test_pipeline_prx.py (get_dummy_components): the transformer's, the VAE's
    # and the T5Gemma encoder's configs, with the generated tokenizer's vocabulary instead of a downloaded one.
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig, T5GemmaModuleConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

    torch.manual_seed(seed)
    transformer = PRXTransformer2DModel(
        patch_size=1,
        in_channels=4,
        context_in_dim=8,
        hidden_size=8,
        mlp_ratio=2.0,
        num_heads=2,
        depth=depth,
        axes_dim=[2, 2],
    )
    # PRX initialises each block's modulation at zero (AdaLN-zero): the gates are shut, the blocks pass the image
    # through and the text never reaches it. A trained model's are open: drawn here like the other weights.
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if ".modulation." in name and not parameter.any():
                parameter.normal_(0.0, 0.5)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    tokenizer = build_sentencepiece_tokenizer(model_max_length=24)
    encoder = {
        "vocab_size": len(tokenizer),
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "max_position_embeddings": 64,
        "layer_types": ["full_attention"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dropout_rate": 0.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-06,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 4,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        # Wider than the default 0.02: at this width the default initialisation gives every token nearly the same
        # state (spread 0.07 across tokens against 0.72 here), and the words would barely differ.
        "initializer_range": 0.3,
    }
    config = T5GemmaConfig(encoder=T5GemmaModuleConfig(**encoder), is_encoder_decoder=False, **encoder)
    torch.manual_seed(seed)
    text_encoder = T5GemmaEncoder(config.encoder)
    freeze(transformer, vae, text_encoder)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "default_sample_size": default_sample_size,
    }


def make_tiny_prx_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None, depth: int = 2, **components):
    r"""
    A tiny offline PRX pipeline with random weights, for tests and benchmarks. Call it with `**TINY_PRX_CALL` (16x16
    by default).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
        depth (`int`, *optional*, defaults to 2): Transformer blocks.
        components: Overrides of `make_tiny_prx_components`' arguments (e.g. `default_sample_size=256`).
    """
    pipe = PRXPipeline(**make_tiny_prx_components(seed, depth, **components))
    return finished(pipe, dtype)
