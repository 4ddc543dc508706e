r"""
How well the shipped toy model follows its prompts, measured by the independent detector.

Fresh prompts (drawn from `--seed`, not from the training seeds) of one object ("a red circle on the left") and of two
objects ("a red circle on the left and a blue square on the right") are generated with the recommended guidance scale
and number of steps, and every image is checked with `diffusers_interpret.toy.detector`:

- colour + side: the object on the named side has the named colour (per named object);
- shape: ... and the named shape;
- all correct: every named object right and nothing else in the image;
- extra objects: images with a stray blob or an object on a side the prompt leaves empty.

Usage:

```bash
python benchmarks/toy_prompt_following.py                       # 100 prompts of each kind, recommended settings
python benchmarks/toy_prompt_following.py --num-prompts 40 --guidance-scale 3 5 7.5 --seed 1
```
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import torch  # noqa: E402

from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline  # noqa: E402
from diffusers_interpret.toy.detector import evaluate_prompt_following  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="Prompt following of the shipped toy model.")
    parser.add_argument("--num-prompts", type=int, default=100, help="prompts of each kind (one / two objects)")
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[TOY_GUIDANCE_SCALE])
    parser.add_argument("--num-inference-steps", type=int, default=TOY_NUM_INFERENCE_STEPS)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the prompts and the initial noise")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load_toy_pipeline()
    print(
        f"{args.num_prompts} fresh prompts of each kind, seed {args.seed}, {args.num_inference_steps} steps "
        f"(DPMSolverMultistep), fp32 on CPU"
    )
    columns = ("guidance", "kind", "colour+side", "shape", "all correct", "extra obj")
    widths = (8, 10, 11, 6, 11, 9)
    header = " | ".join(f"{c:>{w}}" for c, w in zip(columns, widths))
    print(header)
    print("-" * len(header))
    for guidance_scale in args.guidance_scale:
        start = time.time()
        results = evaluate_prompt_following(
            pipe,
            num_prompts=args.num_prompts,
            guidance_scale=guidance_scale,
            num_inference_steps=args.num_inference_steps,
            seed=args.seed,
        )
        for kind in ("one_object", "two_object"):
            print(
                f"{guidance_scale:>8g} | {kind:>10} | {results[f'{kind}_color_side']:>11.1%} | "
                f"{results[f'{kind}_shape']:>6.1%} | {results[f'{kind}_all_correct']:>11.1%} | "
                f"{results[f'{kind}_extra_objects']:>9.1%}"
            )
        print(f"{'':>8}   ({2 * args.num_prompts} images in {time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
