r"""
Do attention maps and gradient maps find the objects a word names? mIoU against the toy model's true object masks.

For each fresh two-object prompt ("a red circle on the left and a blue square on the right", seeds not used in
training) whose image the independent detector finds drawn correctly, each object word (colour and shape of the left
and of the right object) gets a map over the image, min-max normalized to [0, 1] and thresholded; its IoU with the
detector's pixel mask of the object the word names is averaged over words and scenes (x100, as DAAM reports it:
58.8-64.8 mIoU on generated COCO scenes). Maps:

- attention: the word's cross-attention map from `attention_maps=True` (mean over heads, layers and all steps,
  upsampled bilinearly to the image), DAAM's heat map.
- gradient (grad_x_input): per cell of a `--cell` pixel grid (`output.region_grid`), the word's score for that cell,
  the gradient of the cell's pixel sum (all steps traced), upsampled bilinearly.
- attention / gradient, given the image's edges: the same maps through `edge_aware_maps` (a joint bilateral filter
  guided by the generated image; spatial sigma one attention cell, or one gradient cell; the package's defaults).
- the true mask on the attention grid: the detector's mask averaged over the finest attention grid's cells and
  upsampled as the attention maps are, what a perfect attention map would score (the grid's own limit).
- ablation difference: per pixel, the absolute change of the image (summed over colours) when the word is replaced
  by the padding token and the image generated again from the same noise (`faithfulness`' counterfactual), at full
  resolution.

Printed per map: mIoU at DAAM's threshold 0.4 and at the best single threshold over 0.1 .. 0.9 (chosen on these same
scenes, so optimistic).

    python benchmarks/toy_localization.py                     # 20 prompts
    python benchmarks/toy_localization.py --num-scenes 40 --cell 2
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Positions of the words in the padded tokens of "a C1 S1 on the left and a C2 S2 on the right" (0 is the start token).
WORDS = {("left", "colour"): 2, ("left", "shape"): 3, ("right", "colour"): 9, ("right", "shape"): 10}
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def normalize(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def grid_map(grid: np.ndarray, token: int, aggregation: str, size) -> np.ndarray:
    # grid: (rows, cols, tokens, hidden) gradient x input per cell (region_grid).
    values = grid[:, :, token]
    if aggregation == "grad_x_input":
        cells = np.linalg.norm(values, axis=-1)
    else:
        raise ValueError(aggregation)
    tensor = torch.from_numpy(cells)[None, None].float()
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def ablation_maps(output, positions):
    # Per word: |image - image regenerated from the same noise with the word replaced by padding|, summed over colours.
    context = output.session.regeneration
    with torch.no_grad():
        reference = context.box_images(context.generate(context.inputs))
        ablated = context.box_images(context.generate(context.replaced([[p] for p in positions])))
    differences = (ablated - reference).abs().sum(1).numpy()
    return dict(zip(positions, differences))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--cell", type=int, default=4, help="grid cell size in pixels for gradient maps")
    parser.add_argument("--traced", type=int, default=None, help="traced steps for gradient maps (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_interpret import StableDiffusionPipelineExplainer, edge_aware_maps
    from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    pipe = load_toy_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    rng = np.random.default_rng(args.seed)
    prompts = [sample_scene_spec(rng, 2).prompt for _ in range(args.num_scenes)]
    common = dict(num_inference_steps=TOY_NUM_INFERENCE_STEPS, guidance_scale=TOY_GUIDANCE_SCALE)
    ious = defaultdict(lambda: defaultdict(list))  # map kind -> threshold -> IoUs
    kept, started = 0, time.perf_counter()
    for index, prompt in enumerate(prompts):
        seed = args.seed + index
        output = explainer(
            prompt,
            generator=torch.Generator().manual_seed(seed),
            attention_maps=True,
            keep_for_reexplanation="graph",
            attribution_method="grad_x_input",
            n_last_diffusion_steps_to_consider_for_attributions=args.traced,
            get_images_for_all_inference_steps=False,
            output_type="np",
            **common,
        )
        check = check_prompt(output.image, prompt)
        if not check.correct:
            output.release()
            continue
        kept += 1
        size = output.image.shape[:2]
        grid = output.region_grid(args.cell)  # (rows, cols, attributed tokens, hidden); token i is position i + 1
        ablation = ablation_maps(output, list(WORDS.values()))
        for (side, word), position in WORDS.items():
            truth = check.detection.objects[side].mask
            maps = {
                "attention": output.attention_maps.maps[0, position].numpy(),
                "gradient grad_x_input": grid_map(grid, position - 1, "grad_x_input", size),
                "ablation difference": ablation[position],
            }
            cell = round(output.attention_maps.cell_size)  # a whole number of pixels on the toy (4)
            on_grid = F.avg_pool2d(torch.from_numpy(truth.astype(np.float32))[None, None], cell)
            maps["the true mask on the attention grid (a perfect attention map)"] = F.interpolate(
                on_grid, size=size, mode="bilinear", align_corners=False
            )[0, 0].numpy()
            maps["attention, given the image's edges"] = edge_aware_maps(
                maps["attention"], output.image, output.attention_maps.cell_size
            )
            maps["gradient grad_x_input, given the image's edges"] = edge_aware_maps(
                maps["gradient grad_x_input"], output.image, float(args.cell)
            )
            for kind, values in maps.items():
                normalized = normalize(values)
                for threshold in THRESHOLDS:
                    value = iou(normalized >= threshold, truth)
                    ious[kind][threshold].append(value)
                    ious[f"{kind}, {word} words"][threshold].append(value)
        output.release()
        print(f"scene {index + 1}/{len(prompts)} ({kept} correct)", file=sys.stderr, flush=True)

    print(
        f"\n{kept} of {len(prompts)} scenes drawn correctly, 4 object words each; "
        f"{time.perf_counter() - started:.0f} s; gradient cells {args.cell} px, traced "
        f"{'all' if args.traced is None else args.traced} of {TOY_NUM_INFERENCE_STEPS} steps\n"
    )
    print("| map | mIoU at 0.4 | best mIoU (threshold) |")
    print("|---|---|---|")
    for kind, by_threshold in sorted(ious.items()):
        means = {t: 100 * np.mean(v) for t, v in by_threshold.items()}
        best = max(means, key=means.get)
        print(f"| {kind} | {means[0.4]:.1f} | {means[best]:.1f} ({best}) |")


if __name__ == "__main__":
    main()
