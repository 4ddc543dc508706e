r"""
diffusers' memory tools under the explainer, on the tiny SD pipeline (64x64, 3 steps), on the CPU: for each tool,
whether the explainer runs with `word_attention` and `grad_x_input`, whether the image equals `pipe()`'s under the same
tool, how far the scores are from those without the tool, and the time of the explanation over the same explanation
without the tool (the second of two runs each: the tools' own overhead on a tiny model, not their savings on a large
one).

`--part transfers` counts what group offloading moves: the denoiser's weights brought to the device (every group's
`onload_`, in bytes) per denoising step, for `pipe()` and for explanations with `grad_x_input` (every step traced),
with gradient checkpointing (the default) and without it.

    python benchmarks/memory_tools.py                 # about 30 s
    python benchmarks/memory_tools.py --no-compile
    python benchmarks/memory_tools.py --part transfers
    python benchmarks/memory_tools.py --part decoder      # a few minutes, up to 8 GB

`--part decoder` measures the decode's backward pass at real size: SD's VAE (its real config, random weights, float32)
decodes 512 px and 1024 px latents with grad and back-propagates a sum, each case in a fresh subprocess, which reports
its peak RSS over the loaded VAE: the plain decode, and the decode under `BlockCheckpointing` (the VAE's own gradient
checkpointing, which the explainer's decode turns on). 1024 px without it is left out (over 20 GB here).
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.testing import make_tiny_pipeline  # noqa: E402

CPU = torch.device("cpu")
PROMPT = "a red circle on the left and a blue square on the right"
CALL = dict(num_inference_steps=3, output_type="np", height=64, width=64, get_images_for_all_inference_steps=False)


def tools(compile_denoiser: bool):
    yield "none", lambda pipe: None
    yield (
        "vae.enable_tiling() (tiles of 32 px)",
        lambda pipe: (
            pipe.vae.enable_tiling(),
            setattr(pipe.vae, "tile_sample_min_size", 32),
            setattr(pipe.vae, "tile_latent_min_size", 32 // pipe.vae_scale_factor),
        ),
    )
    yield "vae.enable_slicing()", lambda pipe: pipe.vae.enable_slicing()
    yield "enable_model_cpu_offload()", lambda pipe: pipe.enable_model_cpu_offload(device="cpu")
    yield "enable_sequential_cpu_offload()", lambda pipe: pipe.enable_sequential_cpu_offload(device="cpu")
    yield (
        "unet.enable_group_offload(block_level)",
        lambda pipe: pipe.unet.enable_group_offload(
            onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
        ),
    )
    yield (
        "unet.enable_layerwise_casting(bfloat16)",
        lambda pipe: pipe.unet.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32),
    )
    if compile_denoiser:
        yield "torch.compile(unet)", lambda pipe: setattr(pipe, "unet", torch.compile(pipe.unet))


def transfers():
    from diffusers.hooks.group_offloading import ModuleGroup

    moved = []
    onload = ModuleGroup.onload_

    def counted(group):
        moved.append(sum(p.numel() * p.element_size() for m in group.modules for p in m.parameters()))
        return onload(group)

    ModuleGroup.onload_ = counted
    try:
        pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
        weights = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
        pipe.unet.enable_group_offload(
            onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
        )
        steps = CALL["num_inference_steps"]
        runs = {"pipe()": lambda: pipe(PROMPT, generator=torch.Generator().manual_seed(0), **CALL)}
        for checkpointing in (True, False):
            explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=checkpointing)
            runs[f"explain, grad_x_input, checkpointing {'on' if checkpointing else 'off'}"] = lambda e=explainer: e(
                PROMPT, generator=torch.Generator().manual_seed(0), attribution_method="grad_x_input",
                prompt_dependence=False, **CALL,
            )  # fmt: skip
        for name, call in runs.items():
            moved.clear()
            call()
            print(f"{name:50s} the UNet's weights moved to the device {sum(moved) / weights / steps:.2f} times a step")
    finally:
        ModuleGroup.onload_ = onload


DECODER_CASE = """
import contextlib, resource, sys, time, torch
sys.path.insert(0, {root!r})
from diffusers import AutoencoderKL
from diffusers_interpret.tracing.checkpoint import BlockCheckpointing
torch.set_num_threads(2)
torch.manual_seed(0)
vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4).eval()
vae.requires_grad_(False)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
z = torch.randn(1, 4, {size} // 8, {size} // 8, requires_grad=True)
started = time.perf_counter()
with BlockCheckpointing(vae) if {checkpointed} else contextlib.nullcontext():
    image = vae.decode(z).sample
image.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded) / 1024**2, time.perf_counter() - started)
"""


def decoder():
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    for size, checkpointed in ((512, False), (512, True), (1024, True)):
        code = DECODER_CASE.format(root=root, size=size, checkpointed=checkpointed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        gib, seconds = map(float, out.split()[-2:])
        name = "checkpointed by block" if checkpointed else "plain"
        print(
            f"SD VAE decode + backward, {size} px, {name:22s} peak over the loaded VAE {gib:5.2f} GiB, "
            f"{seconds:5.1f} s"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--part", choices=["tools", "transfers", "decoder"], default="tools")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    if args.part == "transfers":
        transfers()
        return
    if args.part == "decoder":
        decoder()
        return
    reference, seconds = {}, {}
    for name, apply in tools(not args.no_compile):
        pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
        apply(pipe)
        try:
            expected = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **{**CALL, "output_type": "np"}).images
        except Exception as error:  # noqa: BLE001 (reported, the next tool runs)
            print(f"{name:42s} pipe() itself fails: {type(error).__name__}: {str(error)[:90]}")
            continue
        explainer = explainer_for(pipe, verbose=False)
        for method in ("word_attention", "grad_x_input"):
            try:
                for _ in range(2):  # the second run is timed (the first compiles, warms caches)
                    started = time.perf_counter()
                    output = explainer(
                        PROMPT, generator=torch.Generator().manual_seed(0), attribution_method=method,
                        prompt_dependence=False, **CALL,
                    )  # fmt: skip
                    took = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001
                print(f"{name:42s} {method:15s} fails: {type(error).__name__}: {str(error)[:90]}")
                continue
            scores = output.token_attributions.scores
            if name == "none":
                reference[method], seconds[method] = scores, took
            relative = float(np.max(np.abs(scores - reference[method]) / np.abs(reference[method])))
            print(
                f"{name:42s} {method:15s} image == pipe(): {np.array_equal(output.image, expected[0])}; "
                f"scores vs no tool: max relative difference {relative:.1e}; time {took / seconds[method]:.2f}x"
            )


if __name__ == "__main__":
    main()
