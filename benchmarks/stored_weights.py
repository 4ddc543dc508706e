r"""
What a traced call keeps for the backward pass when the transformer's weights are stored quantized or layerwise-cast,
at FLUX.1's real width, on the CPU.

A slice of FLUX.1-dev's transformer (its real config: width 3072 = 24 heads x 128, T5 width 4096, but 1 double- and
2 single-stream blocks of its 19 + 38, random weights) runs one forward pass with grad on its image and text inputs
(weights frozen), at 512 px (1024 image tokens, 512 T5 tokens; `--sizes 512 1024` for more, 1024 px needs more than
24 GB), and the bytes autograd keeps for the backward pass, besides the weights at rest, are counted:

- plain float32 weights;
- torchao int8 weight-only (`quantize_(model, Int8WeightOnlyConfig())`, what diffusers' `TorchAoConfig` applies):
  as the layers run, and with the explainer's `StoredWeightsRecomputed` scope (the layers recomputed in backward);
- layerwise casting (`enable_layerwise_casting(float8_e4m3fn storage, float32 compute)`): the same two ways.

    python benchmarks/stored_weights.py            # about 2 minutes, 12 GB of memory at most
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_table, next to this script

import torch  # noqa: E402

MB = 1024**2


def flux_slice():
    from diffusers import FluxTransformer2DModel
    from memory_table import FLUX_DEV_CONFIG

    torch.manual_seed(0)
    # FLUX.1-dev's config with 1 + 2 of its blocks, called without the guidance embedding (no guidance input).
    config = dict(FLUX_DEV_CONFIG, num_layers=1, num_single_layers=2, guidance_embeds=False)
    return FluxTransformer2DModel(**config).eval().requires_grad_(False)


def kept_bytes(model, image_tokens: int, text_tokens: int, recompute: bool) -> int:
    from diffusers_interpret.tracing.stored_weights import StoredWeightsRecomputed

    rest = {p.untyped_storage()._cdata for p in model.parameters() if type(p) is torch.nn.Parameter}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in rest:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    side = int(image_tokens**0.5)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, columns], -1)
    inputs = dict(
        hidden_states=torch.randn(1, image_tokens, 64, requires_grad=True),
        encoder_hidden_states=torch.randn(1, text_tokens, 4096, requires_grad=True),
        pooled_projections=torch.randn(1, 768),
        timestep=torch.tensor([0.5]),
        img_ids=image_ids.reshape(-1, 3).float(),
        txt_ids=torch.zeros(text_tokens, 3),
        return_dict=False,
    )
    scope = StoredWeightsRecomputed([model]) if recompute else None
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if scope is not None:
            with scope:
                output = model(**inputs)[0]
        else:
            output = model(**inputs)[0]
    del output
    return sum(saved.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    weights = sum(p.numel() for p in flux_slice().parameters()) * 4
    print(f"FLUX.1-dev slice (1 double + 2 single blocks at real width): {weights / MB:.0f} MB of float32 weights")
    rows = []
    for pixels in args.sizes:
        image_tokens = (pixels // 16) ** 2
        model = flux_slice()
        row = {"plain float32": kept_bytes(model, image_tokens, 512, recompute=False)}
        quantize_(model, Int8WeightOnlyConfig())
        row["torchao int8, as it runs"] = kept_bytes(model, image_tokens, 512, recompute=False)
        row["torchao int8, recomputed in backward"] = kept_bytes(model, image_tokens, 512, recompute=True)
        model = flux_slice()
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        row["layerwise fp8, as it runs"] = kept_bytes(model, image_tokens, 512, recompute=False)
        row["layerwise fp8, recomputed in backward"] = kept_bytes(model, image_tokens, 512, recompute=True)
        rows.append((pixels, row))
    for pixels, row in rows:
        plain = row["plain float32"]
        print(f"\n{pixels} px ({(pixels // 16) ** 2} image + 512 text tokens): kept for the backward pass")
        for name, value in row.items():
            print(f"  {name:40s} {value / MB:8.0f} MB  ({value / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
