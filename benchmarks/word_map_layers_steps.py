r"""
Which cross-attention layers and which denoising steps make `"word_attention"`'s word maps find the objects?

For fresh two-object prompts that the toy model draws correctly (the independent detector says so), each object word
(colour and shape of each object) gets a word map as `"word_attention"` makes it (each text-encoder position's
cross-attention handed back to the words that feed it), but from one layer at a time (`record_cross_attention(pipe,
layers=[...], keep_per_step=True)`) and from subsets of the steps; mIoU (x100) against the detector's pixel masks at
DAAM's threshold 0.4 and at the best single threshold (chosen on these same scenes, so optimistic). The first row,
"explainer", is the explainer's own maps (every layer, every step): the per-layer sum over all layers and steps must
reproduce it.

    python benchmarks/word_map_layers_steps.py --resolution 64 --num-scenes 12
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # faithfulness, toy_localization

import numpy as np  # noqa: E402
import torch  # noqa: E402
from faithfulness import object_words, word_units  # noqa: E402
from toy_localization import THRESHOLDS, iou, normalize  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, choices=(32, 64), default=64)
    parser.add_argument("--num-scenes", type=int, default=12, help="correctly drawn scenes to use")
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_interpret import StableDiffusionPipelineExplainer, record_cross_attention
    from diffusers_interpret.toy import (
        TOY_GUIDANCE_SCALE,
        TOY_NUM_INFERENCE_STEPS,
        TOY_PROMPT_ORDERS,
        load_toy_pipeline,
    )
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    pipe = load_toy_pipeline(resolution=args.resolution)
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    common = dict(num_inference_steps=TOY_NUM_INFERENCE_STEPS, guidance_scale=TOY_GUIDANCE_SCALE, output_type="np")
    layers = [name[: -len(".processor")] for name in pipe.unet.attn_processors if name.endswith("attn2.processor")]
    steps = TOY_NUM_INFERENCE_STEPS
    step_sets = {
        "all steps": range(steps),
        "first half": range(steps // 2),
        "second half": range(steps // 2, steps),
        "last quarter": range(3 * steps // 4, steps),
    }
    layer_sets = {"all layers": layers, **{name: [name] for name in layers}}
    ious = {}

    def add(key, maps, masks):
        for values, mask in zip(maps, masks):
            values = normalize(np.asarray(values))
            for threshold in THRESHOLDS:
                ious.setdefault(key, {}).setdefault(float(threshold), []).append(iou(values >= threshold, mask))

    rng = np.random.default_rng(args.seed)
    kept, tried, started = 0, 0, time.perf_counter()
    while kept < args.num_scenes and tried < 20 * args.num_scenes:
        prompt = sample_scene_spec(rng, 2, order=TOY_PROMPT_ORDERS[args.resolution]).prompt
        seed = args.seed + tried
        tried += 1
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).images[0]
        check = check_prompt(image, prompt)
        if not check.correct:
            continue
        kept += 1
        output = explainer(
            prompt,
            generator=torch.Generator().manual_seed(seed),
            attribution_method="word_attention",
            get_images_for_all_inference_steps=False,
            **common,
        )
        trace = output.session.trace
        mixing = trace.token_mixing(0)
        weights = mixing.weights[:, [mixing.column(unit) for unit in trace.prompt_tokens[0].units]].double()
        groups = word_units(output)
        words, masks = [], []
        for side, positions in object_words(prompt).items():
            for position in positions:
                words.append(position)
                masks.append(check.detection.objects[side].mask)
        explained = np.asarray(output.word_maps)
        add(("explainer", "all steps"), [explained[groups[w]].sum(0) for w in words], masks)
        per_layer = {}
        for name in layers:
            with record_cross_attention(pipe, layers=[name], keep_per_step=True) as recorder:
                pipe(prompt, generator=torch.Generator().manual_seed(seed), **common)
            per_step = recorder.maps.per_step[:, 0].double()  # (steps, positions, H, W)
            unit_maps = torch.einsum("sjhw,jc->schw", per_step, weights)
            per_layer[name] = torch.stack([unit_maps[:, group].sum(1) for group in groups], 1)  # steps, words, H, W
        combinations = itertools.product(layer_sets.items(), step_sets.items())
        for (layer_name, chosen), (step_name, chosen_steps) in combinations:
            if step_name != "all steps" and layer_name != "all layers":
                continue
            maps = sum(per_layer[name][list(chosen_steps)].mean(0) for name in chosen) / len(chosen)
            add((layer_name, step_name), [maps[w].numpy() for w in words], masks)
        print(f"scene {kept}: {prompt!r} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    print(
        f"\n{args.resolution}x{args.resolution} toy, seed {args.seed}: {kept} of {tried} two-object scenes drawn "
        f"correctly, {4 * kept} object words; {time.perf_counter() - started:.0f} s\n"
    )
    print("| layers | steps | mIoU @0.4 | best mIoU (threshold) |")
    print("|---|---|---|---|")
    rows = []
    for key, by_threshold in ious.items():
        best = max(by_threshold, key=lambda t: np.mean(by_threshold[t]))
        rows.append((np.mean(by_threshold[best]), key, np.mean(by_threshold[0.4]), best))
    for best_iou, (layer_name, step_name), at_04, threshold in sorted(rows, reverse=True):
        print(f"| {layer_name} | {step_name} | {100 * at_04:.1f} | {100 * best_iou:.1f} ({threshold:.2f}) |")


if __name__ == "__main__":
    main()
