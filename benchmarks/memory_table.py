r"""
Which card a gradient explanation fits, for real model sizes, from the memory guard's own estimate.

Each model's denoiser and VAE are built on the meta device from their real configs (written out below; nothing is
downloaded or allocated), their text encoders' sizes counted the same way, and the guard's estimate
([`MemoryEstimate`]: a traced call's saved activations counted on a shape-only copy, gradient checkpointing on, every
step traced, the decode's graph, the text encoders' graph at the `token_embeddings` level) is taken for the model's
usual call at 512 and 1024 px, in bfloat16. The device then holds the weights a tool leaves on it during a traced
step's backward pass, plus that estimate:

- `all on device`: every model;
- `model offload` (`enable_model_cpu_offload()`): the denoiser and the VAE (the text encoders have run);
- `... + 8-bit` / `... + 4-bit`: the same with the denoiser's weights at 1 / 0.56 bytes a parameter (torchao int8 or
  GGUF Q8_0; GGUF Q4_K or bitsandbytes NF4); their computed copies are not kept ([`StoredWeightsRecomputed`]);
- `group offload` (`enable_group_offload(..., "block_level")` on the denoiser, the rest offloaded as models): the
  denoiser's largest block, its parts outside the blocks, and the VAE.

Methods that keep no graph (`word_attention`, `attention`, the regeneration methods) need what `pipe()` needs under
the same tool: the weights on the device and one call's working memory (not estimated here).

    python benchmarks/memory_table.py             # about a minute
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import torch  # noqa: E402

GB = 1e9
CARDS = (12, 16, 24, 48, 80)
FLUX_DEV_CONFIG = dict(  # FLUX.1-dev's transformer
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
DTYPE = torch.bfloat16


def _meta(cls, **config):
    with torch.device("meta"):
        return cls(**config).to(DTYPE).eval().requires_grad_(False)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def clip_l():
    from transformers import CLIPTextConfig, CLIPTextModel

    return _meta(CLIPTextModel, config=CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                      num_attention_heads=12, max_position_embeddings=77))  # fmt: skip


def clip_g():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                            max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")  # fmt: skip
    return _meta(CLIPTextModelWithProjection, config=config)


def t5_xxl():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      feed_forward_proj="gated-gelu")  # fmt: skip
    return _meta(T5EncoderModel, config=config)


def qwen_vl_text():
    # Qwen2.5-VL-7B's language model (its vision tower, 0.7B more, reads no text prompt).
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4)  # fmt: skip
    return _meta(Qwen2Model, config=config)


def qwen3(hidden, intermediate):
    # Qwen3-4B (2560, 9728) and Qwen3-8B (4096, 12288): 36 layers, 32 query heads, 8 key-value heads of 128.
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128)  # fmt: skip
    return _meta(Qwen3Model, config=config)


def mistral_small():
    # Mistral-Small-3.2-24B's language model (FLUX.2 [dev]'s encoder; its vision tower reads no text prompt).
    from transformers import MistralConfig, MistralModel

    config = MistralConfig(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128)  # fmt: skip
    return _meta(MistralModel, config=config)


def sd_vae(latent_channels):
    from diffusers import AutoencoderKL

    return _meta(AutoencoderKL, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 latent_channels=latent_channels, norm_num_groups=32)  # fmt: skip


def models():
    from diffusers import (
        AutoencoderKLFlux2,
        AutoencoderKLQwenImage,
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_memory_real_size import sd15_unet_config, sdxl_unet_config

    def unet_inputs(width, pooled=False):
        def make(model_size):
            latent = model_size // 8
            inputs = dict(
                sample=torch.empty(2, 4, latent, latent, dtype=DTYPE),
                timestep=torch.tensor(500),
                encoder_hidden_states=torch.empty(2, 77, width, dtype=DTYPE),
            )
            if pooled:
                inputs["added_cond_kwargs"] = dict(
                    text_embeds=torch.empty(2, 1280, dtype=DTYPE), time_ids=torch.empty(2, 6, dtype=DTYPE)
                )
            return inputs

        return make

    def sd3_inputs(size):
        latent = size // 8
        return dict(hidden_states=torch.empty(2, 16, latent, latent, dtype=DTYPE), timestep=torch.tensor([500.0] * 2),
                    encoder_hidden_states=torch.empty(2, 77 + 256, 4096, dtype=DTYPE),
                    pooled_projections=torch.empty(2, 2048, dtype=DTYPE))  # fmt: skip

    def flux_inputs(size):
        tokens = (size // 16) ** 2
        return dict(hidden_states=torch.empty(1, tokens, 64, dtype=DTYPE), timestep=torch.tensor([0.5]),
                    guidance=torch.tensor([3.5]), pooled_projections=torch.empty(1, 768, dtype=DTYPE),
                    encoder_hidden_states=torch.empty(1, 512, 4096, dtype=DTYPE), txt_ids=torch.zeros(512, 3),
                    img_ids=torch.zeros(tokens, 3))  # fmt: skip

    def flux2_inputs(text_width, guidance):
        def make(size):
            tokens = (size // 16) ** 2
            inputs = dict(hidden_states=torch.empty(1, tokens, 128, dtype=DTYPE), timestep=torch.tensor([0.5]),
                          encoder_hidden_states=torch.empty(1, 512, text_width, dtype=DTYPE),
                          txt_ids=torch.zeros(1, 512, 4), img_ids=torch.zeros(1, tokens, 4))  # fmt: skip
            if guidance:
                inputs["guidance"] = torch.tensor([4.0])
            return inputs

        return make

    def qwen_inputs(size):
        side = size // 16
        return dict(hidden_states=torch.empty(1, side * side, 64, dtype=DTYPE), timestep=torch.tensor([0.5]),
                    encoder_hidden_states=torch.empty(1, 256, 3584, dtype=DTYPE),
                    encoder_hidden_states_mask=torch.ones(1, 256), img_shapes=[[(1, side, side)]])  # fmt: skip

    return {
        "SD 1.5": dict(
            denoiser=lambda: _meta(UNet2DConditionModel, **sd15_unet_config()),
            inputs=unet_inputs(768),
            encoders=[clip_l],
            text_lengths=[77],
            vae=lambda: sd_vae(4),
            steps=50,
            rows=2,
            blocks=("down_blocks", "mid_block", "up_blocks"),
        ),
        "SDXL": dict(
            denoiser=lambda: _meta(UNet2DConditionModel, **sdxl_unet_config()),
            inputs=unet_inputs(2048, pooled=True),
            encoders=[clip_l, clip_g],
            text_lengths=[77, 77],
            vae=lambda: sd_vae(4),
            steps=50,
            rows=2,
            blocks=("down_blocks", "mid_block", "up_blocks"),
        ),
        "SD3.5-large": dict(
            denoiser=lambda: _meta(
                SD3Transformer2DModel,
                sample_size=128,
                patch_size=2,
                in_channels=16,
                num_layers=38,
                attention_head_dim=64,
                num_attention_heads=38,
                joint_attention_dim=4096,
                caption_projection_dim=2432,
                pooled_projection_dim=2048,
                out_channels=16,
                pos_embed_max_size=192,
                qk_norm="rms_norm",
            ),
            inputs=sd3_inputs,
            encoders=[clip_l, clip_g, t5_xxl],
            text_lengths=[77, 77, 256],
            vae=lambda: sd_vae(16),
            steps=28,
            rows=2,
            blocks=("transformer_blocks",),
        ),  # fmt: skip
        "FLUX.1-dev": dict(
            denoiser=lambda: _meta(FluxTransformer2DModel, **FLUX_DEV_CONFIG),
            inputs=flux_inputs,
            encoders=[clip_l, t5_xxl],
            text_lengths=[77, 512],
            vae=lambda: sd_vae(16),
            steps=28,
            rows=1,
            blocks=("transformer_blocks", "single_transformer_blocks"),
        ),  # fmt: skip
        "FLUX.2 klein": dict(  # FLUX.2 [klein] 4B: step-distilled (4 steps), no guidance embedding
            denoiser=lambda: _meta(
                Flux2Transformer2DModel,
                num_layers=5,
                num_single_layers=20,
                num_attention_heads=24,
                joint_attention_dim=7680,
                guidance_embeds=False,
            ),  # fmt: skip
            inputs=flux2_inputs(7680, guidance=False),
            encoders=[lambda: qwen3(2560, 9728)],
            text_lengths=[512],
            vae=lambda: _meta(AutoencoderKLFlux2),
            steps=4,
            rows=1,
            blocks=("transformer_blocks", "single_transformer_blocks"),
        ),
        "FLUX.2 dev": dict(  # the transformer's defaults are FLUX.2 [dev]'s: 8 + 48 blocks, 48 heads, text 3 x 5120
            denoiser=lambda: _meta(Flux2Transformer2DModel),
            inputs=flux2_inputs(15360, guidance=True),
            encoders=[mistral_small],
            text_lengths=[512],
            vae=lambda: _meta(AutoencoderKLFlux2),
            steps=50,
            rows=1,
            blocks=("transformer_blocks", "single_transformer_blocks"),
        ),
        "Qwen-Image": dict(
            denoiser=lambda: _meta(QwenImageTransformer2DModel),
            inputs=qwen_inputs,
            encoders=[qwen_vl_text],
            text_lengths=[34 + 256],  # the describing template's 34 tokens (dropped after encoding) and the prompt's
            vae=lambda: _meta(AutoencoderKLQwenImage),
            steps=50,
            rows=1,
            blocks=("transformer_blocks",),
            qwen_vae=True,
        ),
    }


def estimate(spec, size):
    from diffusers_interpret.memory import MemoryEstimate
    from diffusers_interpret.tracing.estimate import encoder_graph_bytes, saved_activation_bytes

    denoiser, vae = spec["denoiser"](), spec["vae"]()
    inputs = spec["inputs"](size)
    # As the explainer recomputes a checkpointed call: with the denoiser's own block checkpointing; and without it.
    per_call = saved_activation_bytes(denoiser, lambda model, **kw: model(**kw), blocks_checkpointed=True, **inputs)
    whole_call = saved_activation_bytes(denoiser, lambda model, **kw: model(**kw), **inputs)
    latent = size // 8
    channels = vae.config.latent_channels if not spec.get("qwen_vae") else vae.config.z_dim
    shape = (1, channels, 1, latent, latent) if spec.get("qwen_vae") else (1, channels, latent, latent)
    decoder = saved_activation_bytes(
        vae, lambda model, z: model.decode(z).sample, torch.empty(shape, dtype=DTYPE), blocks_checkpointed=True
    )
    # The text encoders' graph back to the token embeddings (the token_embeddings level), once a run.
    text = sum(encoder_graph_bytes(make(), 1, length) for make, length in zip(spec["encoders"], spec["text_lengths"]))
    steps = spec["steps"]
    result = MemoryEstimate(
        per_call=per_call,
        call_inputs=sum(x.numel() * x.element_size() for x in inputs.values() if isinstance(x, torch.Tensor)),
        traced_calls=steps,
        checkpointed=True,
        decoder=decoder,
        encoder=0,
        text=text,
    )
    return denoiser, vae, result, whole_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    args = parser.parse_args()
    table = models()
    rows = []
    for name, spec in table.items():
        if args.models and name not in args.models:
            continue
        encoders = sum(_parameters(make()) for make in spec["encoders"]) * 2
        for size in args.sizes:
            denoiser, vae, est, whole_call = estimate(spec, size)
            parameters = _parameters(denoiser)
            weights, vae_bytes = parameters * 2, _parameters(vae) * 2
            blocks = [b for attr in spec["blocks"] for b in (getattr(denoiser, attr) if isinstance(
                getattr(denoiser, attr), torch.nn.ModuleList) else [getattr(denoiser, attr)])]  # fmt: skip
            in_blocks = sum(_parameters(b) for b in blocks) * 2
            largest = max(_parameters(b) for b in blocks) * 2
            device = {
                "all on device": weights + encoders + vae_bytes,
                "model offload": weights + vae_bytes,
                "model offload + 8-bit": parameters * 1 + vae_bytes,
                "model offload + 4-bit": int(parameters * 0.56) + vae_bytes,
                "group offload": (weights - in_blocks) + largest + vae_bytes,
            }
            rows.append((name, size, parameters, encoders, est, device, whole_call))
    print("bfloat16; gradient methods, every step traced, checkpointing on; GB = 1e9 bytes\n")
    print("per call: a traced call's recomputation in the backward pass, with the denoiser's own block checkpointing")
    print("(as the explainer runs it) and, in brackets, without it; decode: the same for the VAE's decode\n")
    print(f"{'model':12s} {'px':>5s} {'denoiser':>9s} {'encoders':>9s} {'per call':>17s} {'decode':>8s} "
          f"{'text':>7s} {'graph':>7s} {'peak':>7s}")  # fmt: skip
    for name, size, parameters, encoders, est, _, whole in rows:
        print(
            f"{name:12s} {size:5d} {parameters * 2 / GB:8.1f}G {encoders / GB:8.1f}G {est.per_call / GB:6.2f}G "
            f"({whole / GB:6.2f}G) {est.decoder / GB:7.2f}G {est.text / GB:6.2f}G {est.graph / GB:6.2f}G "
            f"{est.peak / GB:6.2f}G"
        )
    print("\n(text: the text encoders' graph back to the prompt's token embeddings, kept once a run at the")
    print("token_embeddings level; attribution_level='text_encoder_output' keeps none of it)")
    print("\nsmallest card (of " + ", ".join(f"{c}" for c in CARDS) + " GB) that holds the device's weights + peak:\n")
    tools = list(rows[0][5])
    print(f"{'model':12s} {'px':>5s} " + " ".join(f"{t:>22s}" for t in tools))
    for name, size, _, _, est, device, _ in rows:
        cells = []
        for tool in tools:
            need = (device[tool] + est.peak) / GB
            card = next((c for c in CARDS if need <= c * 1.0737), None)  # a "24 GB" card holds 24 GiB
            cells.append(f"{need:6.1f} GB -> {card or '>80':>3}")
        print(f"{name:12s} {size:5d} " + " ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
