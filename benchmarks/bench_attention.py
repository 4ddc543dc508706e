r"""
Cost of recording cross-attention maps vs a plain generation, on the tiny offline pipeline (64x64 images, 10 steps,
CFG 7.5).

Plain `pipe()` calls and calls inside `record_cross_attention(pipe)` (building `recorder.maps` included) are
interleaved after one warm-up each; printed: the median seconds of each over `--repeats` runs and their ratio.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --repeats 15 --steps 10 --keep-per-step --size 32
"""

import argparse
import statistics
import time
import warnings

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--size", type=int, default=32, help="latent sample size of the tiny UNet (images 2x)")
    parser.add_argument("--keep-per-step", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers_interpret.attention import record_cross_attention
    from diffusers_interpret.testing import make_tiny_pipeline

    pipe = make_tiny_pipeline("text2img", sample_size=args.size)
    prompt = "a red circle on the left and a blue square on the right"
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)

    def plain():
        pipe(prompt, generator=torch.Generator().manual_seed(0), **common)

    def recorded():
        with record_cross_attention(pipe, keep_per_step=args.keep_per_step) as recorder:
            pipe(prompt, generator=torch.Generator().manual_seed(0), **common)
        return recorder.maps

    plain()
    maps = recorded()
    times = {"plain": [], "recorded": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("recorded", recorded)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t_plain, t_rec = statistics.median(times["plain"]), statistics.median(times["recorded"])
    print(
        f"image {tuple(maps.size)}, {args.steps} steps, CFG {args.guidance_scale}, {len(maps.layers)} cross-attention "
        f"layers, keep_per_step={args.keep_per_step}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"plain    {t_plain:.4f} s")
    print(f"recorded {t_rec:.4f} s")
    print(f"ratio    {t_rec / t_plain:.3f}x")


if __name__ == "__main__":
    main()
