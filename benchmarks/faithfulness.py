r"""
Which attribution method tells the truth, and at what cost? Every method and level on the shipped toy model.

For each fresh two-object prompt ("a red circle on the left and a blue square on the right", seeds not used in
training) whose image the independent detector finds drawn correctly, every method explains a box around the left
object and a box around the right object (boxes: the detector's object masks' bounding boxes). Printed per method:

- control: the swapped-box control (`faithfulness.swapped_box_control`), colour words: left box ranks the left colour
  above the right colour, right box the reverse; pass = both. Shape words likewise where the two shapes differ.
- spearman: median over boxes of the rank correlation of the method's scores with measured ablation effects inside
  the box (`faithfulness.ablation_effects`, token-embedding level; 1 by construction for `ablation` itself).
- deletion: median over boxes of `faithfulness.deletion_auc_ratio` (area under the deletion curve in attribution
  order / random orders; > 1 is better), on the first `--deletion-scenes` scenes.
- time: median seconds per explainer call and its ratio to a plain `pipe()` call measured in the same run.

`--part cost` instead measures time and peak RSS relative to plain generation on the tiny random pipeline (64x64,
10 steps, CFG 7.5), each method in a fresh subprocess.

    python benchmarks/faithfulness.py                                 # toy model, 30 prompts, all methods
    python benchmarks/faithfulness.py --num-scenes 10 --methods ablation attention
    python benchmarks/faithfulness.py --part cost
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402

# name -> (attribution_method, attribution_level); aggregations of one gradient share a call.
METHODS = {
    "grad_x_input": ("grad_x_input", "token_embeddings"),
    "mean_grad": ("mean_grad", "token_embeddings"),
    "max_grad": ("max_grad", "token_embeddings"),
    "min_grad": ("min_grad", "token_embeddings"),
    "grad_x_input@output (original)": ("grad_x_input", "text_encoder_output"),
    "mean_grad@output": ("mean_grad", "text_encoder_output"),
    "integrated_gradients": ("integrated_gradients", "token_embeddings"),
    "integrated_gradients@output": ("integrated_gradients", "text_encoder_output"),
    "integrated_gradients_change": ("integrated_gradients:change", "token_embeddings"),
    "smoothgrad": ("smoothgrad", "token_embeddings"),
    "ablation": ("ablation", "token_embeddings"),
    "ablation@output": ("ablation", "text_encoder_output"),
    "jacobian_norm": ("jacobian_norm", "token_embeddings"),
    "jacobian_norm@output": ("jacobian_norm", "text_encoder_output"),
    "attention": ("attention", "token_embeddings"),
    "attention_probability": ("attention:probability", "token_embeddings"),
}


def method_object(method: str):
    from diffusers_interpret.methods import AttentionScore, IntegratedGradients

    if method == "integrated_gradients:change":
        return IntegratedGradients(target="change")
    return AttentionScore(normalization="probability") if method == "attention:probability" else method


# Positions of the words among the attributed tokens of "a C1 S1 on the left and a C2 S2 on the right".
LEFT_COLOR, LEFT_SHAPE, RIGHT_COLOR, RIGHT_SHAPE = 1, 2, 8, 9


def object_boxes(check):
    boxes = []
    for side in ("left", "right"):
        top, left, bottom, right = check.detection.objects[side].bbox
        boxes.append(((left, top), (right, bottom)))
    return boxes


def run_toy(args):
    from diffusers_interpret import StableDiffusionPipelineExplainer
    from diffusers_interpret.faithfulness import (
        ablation_effects,
        deletion_auc_ratio,
        spearman,
        swapped_box_control,
    )
    from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    pipe = load_toy_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    steps, guidance = TOY_NUM_INFERENCE_STEPS, TOY_GUIDANCE_SCALE
    rng = np.random.default_rng(args.seed)
    prompts = [sample_scene_spec(rng, 2).prompt for _ in range(args.num_scenes)]
    common = dict(num_inference_steps=steps, guidance_scale=guidance)
    results = defaultdict(lambda: defaultdict(list))
    plain_times = []
    kept = 0
    for index, prompt in enumerate(prompts):
        seed = args.seed + index
        started = time.perf_counter()
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        plain_times.append(time.perf_counter() - started)
        check = check_prompt(image, prompt)
        if not check.correct:
            continue
        kept += 1
        words = prompt.split()
        shapes_differ = all(check.shape) and words[2] != words[9]
        boxes = object_boxes(check)
        truth = {}
        for name in args.methods:
            method, level = METHODS[name]
            scores = []
            for side, box in zip(("left", "right"), boxes):
                started = time.perf_counter()
                output = explainer(
                    prompt,
                    generator=torch.Generator().manual_seed(seed),
                    explanation_2d_bounding_box=box,
                    attribution_method=method_object(method),
                    attribution_level=level,
                    n_last_diffusion_steps_to_consider_for_attributions=args.traced,
                    get_images_for_all_inference_steps=False,
                    output_type="np",
                    **common,
                )
                results[name]["seconds"].append(time.perf_counter() - started)
                if np.abs(output.image - image).max() > 1e-5:
                    results[name]["image_mismatch"].append(1)
                values = output.token_attributions.scores
                scores.append(values)
                if side not in truth:
                    truth[side] = ablation_effects(output, box)
                    truth[side + "_output"] = output
                results[name]["spearman"].append(spearman(values, truth[side]))
                if index < args.deletion_scenes:
                    ratio = deletion_auc_ratio(truth[side + "_output"], values, box, num_random_orders=2)
                    results[name]["deletion"].append(ratio)
            colour = swapped_box_control(scores[0], scores[1], LEFT_COLOR, RIGHT_COLOR)
            results[name]["colour_left"].append(colour["box_a"])
            results[name]["colour_right"].append(colour["box_b"])
            results[name]["colour_flip"].append(colour["flip"])
            if shapes_differ:
                shape = swapped_box_control(scores[0], scores[1], LEFT_SHAPE, RIGHT_SHAPE)
                results[name]["shape_flip"].append(shape["flip"])
        print(f"scene {index + 1}/{len(prompts)} done ({kept} correct)", file=sys.stderr, flush=True)

    plain = statistics.median(plain_times)
    print(
        f"\n{kept} of {len(prompts)} scenes drawn correctly; plain pipe() median {plain:.3f} s; traced: "
        f"{'all' if args.traced is None else args.traced} of {steps} steps\n"
    )
    print(
        "| method | level | colour L / R / flip (%) | shape flip (%) | Spearman vs ablation | deletion AUC / random "
        "| s per call | x plain |"
    )
    print("|" + "---|" * 8)
    for name in args.methods:
        r = results[name]
        method, level = METHODS[name]

        def pct(key, r=r):
            values = r[key]
            return f"{100 * np.mean(values):.0f}" if values else "-"

        spear = np.nanmedian(r["spearman"]) if r["spearman"] else float("nan")
        deletion = np.nanmedian(r["deletion"]) if r["deletion"] else float("nan")
        seconds = statistics.median(r["seconds"])
        print(
            f"| {name.split('@')[0].split(' ')[0]} | {level} | {pct('colour_left')} / {pct('colour_right')} / "
            f"**{pct('colour_flip')}** | {pct('shape_flip')} | {spear:.2f} | {deletion:.2f} | {seconds:.2f} | "
            f"{seconds / plain:.1f} |" + (" image differs!" if r["image_mismatch"] else "")
        )


COST_SCRIPT = r"""
import json, resource, statistics, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads({threads})
from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.testing import make_tiny_pipeline
pipe = make_tiny_pipeline("text2img")
prompt = "a red circle on the left and a blue square on the right"
common = dict(num_inference_steps={steps}, guidance_scale=7.5)
method, level, n = {method!r}, {level!r}, {traced!r}
if method == "attention:probability":
    from diffusers_interpret.methods import AttentionScore
    method = AttentionScore(normalization="probability")
if method == "integrated_gradients:change":
    from diffusers_interpret.methods import IntegratedGradients
    method = IntegratedGradients(target="change")
explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
def call():
    if method is None:
        pipe(prompt, generator=torch.Generator().manual_seed(0), **common)
    else:
        explainer(prompt, generator=torch.Generator().manual_seed(0), attribution_method=method,
                  attribution_level=level, n_last_diffusion_steps_to_consider_for_attributions=n,
                  get_images_for_all_inference_steps=False,
                  explanation_2d_bounding_box=((0, 0), (32, 64)), **common)
call()
times = []
for _ in range({repeats}):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
print(json.dumps(dict(seconds=statistics.median(times),
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_cost(args):
    def case(method, level):
        script = COST_SCRIPT.format(
            threads=args.threads, steps=10, method=method, level=level, traced=args.traced, repeats=args.repeats
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain = case(None, None)
    print(
        f"tiny pipeline, 64x64, 10 steps, traced {args.traced}: plain {plain['seconds']:.3f} s, "
        f"{plain['peak_rss_mb']:.0f} MB\n"
    )
    print("| method | level | s per call | x plain | peak RSS MB | x plain RSS |")
    print("|---|---|---|---|---|---|")
    for name in args.methods:
        method, level = METHODS[name]
        r = case(method, level)
        print(
            f"| {name.split('@')[0].split(' ')[0]} | {level} | {r['seconds']:.3f} | "
            f"{r['seconds'] / plain['seconds']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / plain['peak_rss_mb']:.2f} |",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["toy", "cost"], default="toy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num-scenes", type=int, default=30)
    parser.add_argument("--deletion-scenes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--traced", type=int, default=None, help="traced steps (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_toy(args) if args.part == "toy" else run_cost(args)


if __name__ == "__main__":
    main()
