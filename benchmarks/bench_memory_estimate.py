r"""
The memory guard's estimate against the measured peak, on the CPU: is the estimate within 30%?

Each case runs in its own fresh subprocess (one at a time): it builds the pipeline, makes one plain `pipe(...)` call
at the case's size (so that lazy allocations of the libraries are made), resets the process's peak RSS
(`/proc/self/clear_refs`), runs the explanation with `attribution_method="grad_x_input"`, every step traced, and
reports the peak RSS over the RSS before the call beside the guard's estimate (`output.stats.memory_estimate`).

Pipelines: the tests' tiny SD pipeline (64x64), the shipped toy (32x32) and an SD 1.5-size UNet with random weights
and SD's VAE (from `bench_memory_real_size.py`, 256x256 by default), each without and with gradient checkpointing.

    python benchmarks/bench_memory_estimate.py                 # every pipeline
    python benchmarks/bench_memory_estimate.py --only tiny toy # the small ones (about a minute)
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

MiB = 1024**2
PROMPT = "a red circle on the left and a blue square on the right"


def _rss(field: str) -> int:
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(name: str):
    if name == "tiny":
        from diffusers_interpret.testing import make_tiny_pipeline

        return make_tiny_pipeline(), 64, 4, 7.5
    if name == "toy":
        from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_IMAGE_SIZE, load_toy_pipeline

        return load_toy_pipeline(), TOY_IMAGE_SIZE, 10, TOY_GUIDANCE_SCALE
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_memory_real_size import build_pipeline

    return build_pipeline("sd"), 256, 3, 7.5


def run_case(args) -> None:
    import torch

    from diffusers_interpret import explainer_for

    torch.set_num_threads(args.threads)
    pipe, size, steps, guidance = build(args.pipeline)
    size = args.size or size
    call = dict(num_inference_steps=steps, height=size, width=size, guidance_scale=guidance)
    pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **dict(call, num_inference_steps=1))
    explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=args.checkpointing)
    gc.collect()
    before = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from the current RSS
    started = time.perf_counter()
    output = explainer(
        PROMPT,
        attribution_method="grad_x_input",
        generator=torch.Generator().manual_seed(0),
        get_images_for_all_inference_steps=False,
        check_memory=False,
        **call,
    )
    seconds = time.perf_counter() - started
    peak = _rss("VmHWM") - before
    estimate = output.stats.memory_estimate
    result = dict(measured=peak, estimate=estimate.peak, traced=estimate.traced_calls, seconds=seconds, size=size)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--only", nargs="+", choices=["tiny", "toy", "sd15"], default=["tiny", "toy", "sd15"])
    parser.add_argument("--size", type=int, default=None, help="image size (default: the pipeline's case size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline:
        return run_case(args)
    print(
        f"{'pipeline':<8} {'size':>5} {'traced':>6} {'ckpt':>5} {'estimate MiB':>13} {'measured MiB':>13} {'ratio':>6}"
    )
    worst = 0.0
    for name in args.only:
        for checkpointing in (False, True):
            command = [sys.executable, __file__, "--pipeline", name, "--threads", str(args.threads)]
            command += ["--checkpointing"] if checkpointing else []
            command += ["--size", str(args.size)] if args.size else []
            env = dict(os.environ, HF_HUB_OFFLINE="1")
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{name:<8} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(lines[-1][7:])
            ratio = r["estimate"] / max(r["measured"], 1)
            worst = max(worst, abs(ratio - 1))
            print(
                f"{name:<8} {r['size']:>5} {r['traced']:>6} {'yes' if checkpointing else 'no':>5} "
                f"{r['estimate'] / MiB:>13.1f} {r['measured'] / MiB:>13.1f} {ratio:>6.2f}",
                flush=True,
            )
    print(f"\nlargest relative error: {worst:.0%} (target: within 30%)")


if __name__ == "__main__":
    main()
