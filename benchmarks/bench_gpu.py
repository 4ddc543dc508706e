r"""
What only a GPU shows: half-precision attributions against float32, and time and peak CUDA memory at real model size.

1. Precision (`--part precision`): on the shipped toys (the 32x32 SD toy and the toy Flux), on `--device`, the
   explainer's image must equal `pipe(...)`'s in the same dtype, and its token scores (box around the left half) in
   float16 and bfloat16 are compared with float32's: finite, Spearman rank correlation, and whether the top word is
   the same. Methods: grad_x_input and word_attention (SD), grad_x_input and concept_attention (Flux).
2. Real size (`--part size`): a UNet of Stable Diffusion 1.5's size (860M parameters, random weights, as
   `bench_memory_real_size.py` builds it) in float16 on `--device`, 512x512, `--steps` DDIM steps, CFG 7.5: plain
   `pipe()` against the explainer (grad_x_input with 1 and with every step traced, each without and with gradient
   checkpointing; word_attention). Median seconds over `--repeats` and peak CUDA memory
   (`torch.cuda.max_memory_allocated`, reset before each case), both as ratios to the plain call, in one process.

    python benchmarks/bench_gpu.py --device cuda                 # both parts (about 4 minutes on one H100)
    python benchmarks/bench_gpu.py --device cpu --quick          # a check of the script itself, on the CPU
"""

import argparse
import contextlib
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT_SD = "a red circle on the left and a blue square on the right"
PROMPT_FLUX = "a green triangle on the left"
BOX = ((0, 0), (16, 32))


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(x, dtype=np.float64))) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def explain_beside_pipe(explainer, prompt, device, call, **explain_kwargs):
    r"""The explainer's word scores (float64) for one call, and whether its image equals `pipe(...)`'s with the same
    seed."""

    def generator():
        return torch.Generator(device).manual_seed(0)

    expected = explainer.pipe(prompt, generator=generator(), output_type="np", **call).images[0]
    out = explainer(prompt, generator=generator(), output_type="np", **explain_kwargs, **call)
    if out.word_attributions is None:
        raise RuntimeError("no attributions")
    scores = np.array([s for _, s in out.word_attributions], dtype=np.float64)
    return out.word_attributions, scores, bool(np.array_equal(out.image, expected))


def precision(args) -> None:
    import diffusers_interpret
    from diffusers_interpret.toy import TOY_FLUX_CALL, load_toy_flux_pipeline, load_toy_pipeline

    cases = [
        (
            "SD toy 32x32",
            load_toy_pipeline,
            PROMPT_SD,
            {"num_inference_steps": 20, "guidance_scale": 4.0},
            BOX,
            ["grad_x_input", "word_attention"],
        ),
        (
            "Flux toy 64x64",
            lambda: load_toy_flux_pipeline(),
            PROMPT_FLUX,
            dict(TOY_FLUX_CALL),
            ((0, 0), (32, 64)),
            ["grad_x_input", "concept_attention"],
        ),
    ]
    print("\n| toy | method | dtype | image == pipe() | finite | Spearman vs fp32 | same top word | top words |")
    print("|---|---|---|---|---|---|---|---|")
    for label, load, prompt, call, box, methods in cases:
        if args.quick:
            call = {**call, "num_inference_steps": 4}
        base = load().to(args.device)
        base.set_progress_bar_config(disable=True)
        reference = {}
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            pipe = base.to(dtype=dtype)
            for method in methods:
                try:
                    explainer = diffusers_interpret.explainer_for(pipe, verbose=False)
                    words, scores, same = explain_beside_pipe(
                        explainer,
                        prompt,
                        args.device,
                        call,
                        attribution_method=method,
                        explanation_2d_bounding_box=box,
                    )
                    if dtype is torch.float32:
                        reference[method] = scores
                    rho = spearman(scores, reference[method])
                    top = [w for w, _ in sorted(words, key=lambda x: -x[1])[:3]]
                    top_ref = int(np.argmax(reference[method]))
                    finite = bool(np.isfinite(scores).all())
                    print(
                        f"| {label} | {method} | {str(dtype).split('.')[-1]} | {same} | {finite}"
                        f" | {rho:.3f} | {int(np.argmax(scores)) == top_ref} | {', '.join(top)} |",
                        flush=True,
                    )
                except Exception as error:  # noqa: BLE001 - a report, not a test
                    print(f"| {label} | {method} | {dtype} | FAILED: {type(error).__name__}: {error} |", flush=True)
                    traceback.print_exc()
        del base, pipe
        if args.device == "cuda":
            torch.cuda.empty_cache()


def flux_half(args) -> None:
    r"""Where half-precision Flux gradients stop being finite: traced steps x dtype x attention kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import diffusers_interpret
    from diffusers_interpret.toy import TOY_FLUX_CALL, load_toy_flux_pipeline

    base = load_toy_flux_pipeline().to(args.device)
    base.set_progress_bar_config(disable=True)
    print("\n| Flux toy grad_x_input | dtype | attention kernel | traced steps | finite | top words |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pipe = base.to(dtype=dtype)
        explainer = diffusers_interpret.explainer_for(pipe, verbose=False)
        for kernel in ("default", "math"):
            for traced in (1, 5, None):
                try:
                    with sdpa_kernel([SDPBackend.MATH]) if kernel == "math" else contextlib.nullcontext():
                        out = explainer(
                            PROMPT_FLUX,
                            generator=torch.Generator(args.device).manual_seed(0),
                            attribution_method="grad_x_input",
                            explanation_2d_bounding_box=((0, 0), (32, 64)),
                            n_last_diffusion_steps_to_consider_for_attributions=traced,
                            **TOY_FLUX_CALL,
                        )
                    top = [w for w, _ in sorted(out.word_attributions, key=lambda x: -x[1])[:3]]
                    result = f"True | {', '.join(top)}"
                except FloatingPointError:
                    result = "False | -"
                except Exception as error:  # noqa: BLE001 - a report, not a test
                    result = f"FAILED: {type(error).__name__}: {str(error)[:150]} | -"
                print(f"| | {str(dtype).split('.')[-1]} | {kernel} | {traced or 20} | {result} |", flush=True)


def real_size_precision(args) -> None:
    r"""fp16 and bf16 against fp32 at 512 px on the SD 1.5-size UNet (random weights): finite, ranked alike."""
    from bench_memory_real_size import build_pipeline

    import diffusers_interpret

    size = 128 if args.quick else 512
    call = dict(num_inference_steps=2 if args.quick else 20, height=size, width=size, guidance_scale=7.5)
    print(f"\n| SD 1.5-size UNet, {size}x{size} | method | dtype | image == pipe() | finite | Spearman vs fp32 |")
    print("|---|---|---|---|---|---|")
    reference = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pipe = build_pipeline("sd").to(args.device, dtype=dtype)  # the same float32 weights, cast once
        for method, traced in (("grad_x_input", 2), ("word_attention", 2)):
            try:
                explainer = diffusers_interpret.StableDiffusionPipelineExplainer(pipe, verbose=False)
                _, scores, same = explain_beside_pipe(
                    explainer,
                    PROMPT_SD,
                    args.device,
                    call,
                    attribution_method=method,
                    n_last_diffusion_steps_to_consider_for_attributions=traced,
                    explanation_2d_bounding_box=((0, 0), (size // 2, size)),
                )
                reference.setdefault(method, scores)
                print(
                    f"| | {method} (N={traced}) | {str(dtype).split('.')[-1]} | {same} "
                    f"| {bool(np.isfinite(scores).all())} | {spearman(scores, reference[method]):.3f} |",
                    flush=True,
                )
            except Exception as error:  # noqa: BLE001 - a report, not a test
                print(f"| | {method} | {dtype} | FAILED: {type(error).__name__}: {str(error)[:150]} |", flush=True)


def real_size(args) -> None:
    from bench_memory_real_size import build_pipeline

    import diffusers_interpret

    size = 128 if args.quick else 512
    steps = 2 if args.quick else args.steps
    pipe = build_pipeline("sd").to(args.device, dtype=torch.float16 if args.device == "cuda" else torch.float32)
    call = dict(num_inference_steps=steps, height=size, width=size, guidance_scale=7.5, output_type="np")
    cuda = args.device == "cuda"

    def measure(run):
        times, peak = [], 0
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            started = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
                peak = max(peak, torch.cuda.max_memory_allocated() - before)
            times.append(time.perf_counter() - started)
        return statistics.median(times), peak / 1024**3

    def plain():
        pipe(PROMPT_SD, generator=torch.Generator(args.device).manual_seed(0), **call)

    def explain(method, traced, checkpointing):
        explainer = diffusers_interpret.StableDiffusionPipelineExplainer(
            pipe, verbose=False, gradient_checkpointing=checkpointing
        )

        def run():
            explainer(
                PROMPT_SD,
                generator=torch.Generator(args.device).manual_seed(0),
                attribution_method=method,
                n_last_diffusion_steps_to_consider_for_attributions=traced,
                get_images_for_all_inference_steps=False,
                explanation_2d_bounding_box=((0, 0), (size // 2, size)),
                **call,
            )

        return run

    plain()  # warm-up (kernels, allocator)
    base_seconds, base_gb = measure(plain)
    weights_gb = torch.cuda.memory_allocated() / 1024**3 if cuda else float("nan")
    print(
        f"\nSD 1.5-size UNet (860M, random weights), {pipe.unet.dtype}, {size}x{size}, {steps} steps, CFG 7.5, "
        f"on {torch.cuda.get_device_name() if cuda else 'cpu'}; weights resident {weights_gb:.2f} GiB\n"
    )
    print("| case | median s | x plain | peak GiB over resident | x plain |")
    print("|---|---|---|---|---|")
    print(f"| plain pipe() | {base_seconds:.2f} | 1.00 | {base_gb:.2f} | 1.00 |", flush=True)
    cases = [
        ("grad_x_input, N = 1", "grad_x_input", 1, False),
        ("grad_x_input, N = 1, checkpointing", "grad_x_input", 1, True),
        (f"grad_x_input, N = all ({steps})", "grad_x_input", None, False),
        (f"grad_x_input, N = all ({steps}), checkpointing", "grad_x_input", None, True),
        ("word_attention (N = 1)", "word_attention", 1, False),
    ]
    for label, method, traced, checkpointing in cases:
        try:
            seconds, gb = measure(explain(method, traced, checkpointing))
            print(
                f"| {label} | {seconds:.2f} | {seconds / base_seconds:.2f} | {gb:.2f} | "
                f"{gb / base_gb if base_gb else float('nan'):.2f} |",
                flush=True,
            )
        except Exception as error:  # noqa: BLE001 - a report, not a test
            print(f"| {label} | FAILED: {type(error).__name__}: {str(error)[:200]} |", flush=True)
            traceback.print_exc()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--part", choices=["precision", "flux-half", "size", "size-precision", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer steps and a small image (checks the script)")
    args = parser.parse_args()
    if args.part in ("precision", "all"):
        precision(args)
    if args.part in ("flux-half", "all"):
        flux_half(args)
    if args.part in ("size", "all"):
        real_size(args)
    if args.part in ("size-precision", "all"):
        real_size_precision(args)


if __name__ == "__main__":
    main()
