r"""
What a gradient through a text encoder costs in memory, from the memory guard's own estimate on the real configs.

At the `token_embeddings` attribution level (the default for the gradient methods), a traced run keeps the text
encoders' graph from the prompt's token embeddings to the conditioning, once a run, whatever the traced steps. For
a 24B chat LLM that is the user's choice to make, and the guard says its cost before the run starts. This script
builds each encoder on the meta device from its published configuration (values written below, from the models'
`config.json`), and counts on shape-only (fake tensor) copies what its forward pass from leaf token embeddings keeps,
in bfloat16, for one prompt at the given token lengths. `attribution_level="text_encoder_output"` keeps none of it.

    python benchmarks/text_encoder_memory.py
    python benchmarks/text_encoder_memory.py --tokens 256 512
"""

import argparse
import time

import torch
from transformers import (
    MistralConfig,
    MistralModel,
    Qwen2Config,
    Qwen2Model,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
)

from diffusers_interpret.tracing.estimate import encoder_graph_bytes

GB = 1e9

# (model, its text encoder, the module the gradient runs through, its configuration)
ENCODERS = [
    (
        "FLUX.1-dev, SD3.5 (T5)",
        "T5-v1.1-XXL encoder",
        T5EncoderModel,
        T5Config(
            d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        ),
    ),
    (
        "FLUX.2 [klein] 4B",
        "Qwen3-4B",
        Qwen3Model,
        Qwen3Config(
            hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ),
    ),
    (
        "FLUX.2 [klein] 9B",
        "Qwen3-8B",
        Qwen3Model,
        Qwen3Config(
            hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ),
    ),
    (
        "Qwen-Image",
        "Qwen2.5-VL-7B (language model)",
        Qwen2Model,
        Qwen2Config(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064,
        ),
    ),
    (
        "FLUX.2 [dev]",
        "Mistral-Small-3.2-24B (language model)",
        MistralModel,
        MistralConfig(
            hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=131072,
        ),
    ),
]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    started = time.time()
    header = f"{'model':<26} {'text encoder':<40} {'weights GB':>10}" + "".join(
        f" {f'graph @{n} GB':>14}" for n in args.tokens
    )
    print("bfloat16, one prompt; 'graph': what the gradient to the token embeddings keeps (the guard's estimate)\n")
    print(header)
    print("-" * len(header))
    for model, name, kind, config in ENCODERS:
        with torch.device("meta"):
            encoder = kind(config).to(torch.bfloat16)
        weights = sum(p.numel() for p in encoder.parameters()) * 2
        cells = []
        for tokens in args.tokens:
            cells.append(encoder_graph_bytes(encoder, 1, tokens))
        print(f"{model:<26} {name:<40} {weights / GB:>10.1f}" + "".join(f" {c / GB:>14.2f}" for c in cells))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
