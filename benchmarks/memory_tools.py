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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--part", choices=["tools", "transfers"], default="tools")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    if args.part == "transfers":
        transfers()
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
