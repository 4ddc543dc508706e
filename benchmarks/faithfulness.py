r"""
Which attribution method tells the truth, and at what cost? Every method and level on the shipped toy model.

Fresh prompts and seeds are drawn from `--seed` (seeds not used in training). Every word of a prompt is ranked: no
word is ever dropped or filtered (issue #11's "unfiltered rankings"); `a`, `the`, `on` and `and` are named function
words only to score the rankings.

Two-object prompts (`--num-scenes`, "a red circle on the left and a blue square on the right") whose image the
independent detector finds drawn correctly: every method explains a box around the left object and a box around the
right object (the detector's object masks' bounding boxes), and the whole image (no box). One-object prompts
(`--one-object-scenes`, "a red circle on the left") drawn correctly: every method explains the whole image. Printed
per method and level, one markdown row each:

- colour first: % of object boxes whose object's colour word has the highest score among all the prompt's words
  (ties count as not first).
- colour+shape top 2: % of object boxes whose object's colour and shape words are the two highest (either order,
  strictly above every other word).
- control L / R / both: the swapped-box control (`faithfulness.swapped_box_control`) on the colour words: the left box
  ranks the left colour above the right colour (L), the right box the reverse (R), both (the control passes).
  shape both: the same for the shape words, on scenes whose two shapes differ.
- whole image, two-object prompts: d = % of prompts where every content word (colour, shape and side words: left,
  right) scores above every function word (a, the, on, and), exactly as stated; d' = the same with only the colour and
  shape words as content. Side words barely change a two-object image (each object's side follows from the word order),
  so d is out of reach of a faithful method there. d1 = d on the one-object prompts (colour, shape and side words above
  a, on, the), where the side word does matter.
- Spearman vs ablation: median over boxes of the rank correlation of the method's scores with measured ablation
  effects inside the box (`faithfulness.ablation_effects`, token-embedding level; 1 by construction for `ablation`).
- deletion AUC / random: median over boxes of `faithfulness.deletion_auc_ratio` (area under the deletion curve in
  attribution order / its mean over 2 random orders; > 1 is better), on the first `--deletion-scenes` two-object
  scenes. The same numbers, with each curve generated once per box and shared by the methods whose order it is.
- mIoU @0.4 / best (threshold): the method's per-word maps of the colour and shape words of both objects, min-max
  normalized and thresholded, against the detector's pixel mask of the object each word names (as
  `benchmarks/toy_localization.py` does; x100, mean over words and scenes), at DAAM's threshold 0.4 and at the best
  single threshold over 0.1 .. 0.9 (chosen on these same scenes, so optimistic). Maps: `output.word_maps`
  where the method gives it (tokens, H, W, aligned with `token_attributions`), else the recorded cross-attention maps
  (`output.attention_maps`, the attention methods); "-" for methods without maps.
- the objects' own masks at the maps' grid (printed below the table): each object's detector mask averaged over the
  cells of the grid the maps are made at and upsampled as they are, scored the same way: what a map that knew the
  object would score at that grid, so that maps that miss the object can be told from a grid too coarse for it.
- mIoU given the image's edges: the same maps through `edge_aware_maps` (a joint bilateral filter guided by
  the generated image, spatial sigma one attention cell, colour sigma 0.1, 2 passes: the package's defaults), then
  scored the same way.
- time: median seconds per explainer box call and its ratio to a plain `pipe()` call (median over the two-object
  prompts) measured in the same run.

A method whose name the installed package rejects (a `ValueError` from the explainer) is skipped with a note.
`--json PATH` also writes every number as JSON.

`--part cost` instead measures time and peak RSS relative to plain generation on the tiny random pipeline (64x64,
10 steps, CFG 7.5), each method in a fresh subprocess.

    python benchmarks/faithfulness.py                                 # toy model, 30 prompts, all methods
    python benchmarks/faithfulness.py --num-scenes 10 --methods ablation attention --json /tmp/faithfulness.json
    python benchmarks/faithfulness.py --num-scenes 40 --deletion-scenes 6 --one-object-scenes 20 --seed 4242
    python benchmarks/faithfulness.py --part cost
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # toy_localization, next to this script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from toy_localization import THRESHOLDS, iou, normalize  # noqa: E402

# name -> (attribution_method, attribution_level); aggregations of one gradient share a call.
METHODS = {
    "word_attention": ("word_attention", "token_embeddings"),
    "concept_attention": ("concept_attention", "token_embeddings"),
    "concept_attention_raw": ("concept_attention:raw", "token_embeddings"),  # without the softmax across concepts
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
    "linearized_ablation": ("linearized_ablation", "token_embeddings"),
    "jacobian_norm": ("jacobian_norm", "token_embeddings"),
    "jacobian_norm@output": ("jacobian_norm", "text_encoder_output"),
    "attention": ("attention", "token_embeddings"),
    "attention_probability": ("attention:probability", "token_embeddings"),
}

# Words of the scene prompts that only score the rankings (every word is ranked).
FUNCTION_WORDS = ("a", "the", "on", "and")


def method_object(method: str):
    from diffusers_interpret.methods import AttentionScore, ConceptAttention, IntegratedGradients

    if method == "concept_attention:raw":
        return ConceptAttention(softmax=False)
    if method == "integrated_gradients:change":
        return IntegratedGradients(target="change")
    return AttentionScore(normalization="probability") if method == "attention:probability" else method


def object_words(prompt):
    # Side -> positions of its object's (colour, shape) words among the attributed tokens of a two-object prompt,
    # "a C1 S1 on the SIDE1 and a C2 S2 on the SIDE2" (the 64x64 toy names either side first).
    first_side = prompt.split()[5]
    second_side = "right" if first_side == "left" else "left"
    return {first_side: (1, 2), second_side: (8, 9)}


def object_boxes(check):
    boxes = {}
    for side in ("left", "right"):
        top, left, bottom, right = check.detection.objects[side].bbox
        boxes[side] = ((left, top), (right, bottom))
    return boxes


def ranked_first(scores, index) -> bool:
    return bool(np.all(np.delete(scores, index) < scores[index]))


def first_word(scores, words, colour, shape) -> str:
    # What ranks first in a box: "colour" or "shape" (the boxed object's), else the word itself.
    first = int(np.argmax(scores))
    return "colour" if first == colour else "shape" if first == shape else words[first]


def ranked_above(scores, high, low) -> bool:
    # Every word of `high` strictly above every word of `low`.
    return bool(min(scores[i] for i in high) > max(scores[i] for i in low))


def whole_image_metrics(scores, words):
    from diffusers_interpret.toy.scenes import COLORS, SHAPES, SIDES

    function = [i for i, w in enumerate(words) if w in FUNCTION_WORDS]
    content = [i for i, w in enumerate(words) if w in COLORS + SHAPES + SIDES]
    colour_shape = [i for i, w in enumerate(words) if w in COLORS + SHAPES]
    return ranked_above(scores, content, function), ranked_above(scores, colour_shape, function)


def word_units(output):
    # For each word of the prompt, the indices of its units (tokens of every tokenizer).
    return output.session.trace.prompt_tokens[output.image_index].word_units()


def word_scores(output):
    # One score per word of the prompt (every word ranked; T5's pieces and CLIP's token of a word merged).
    if output.word_attributions is not None:
        return output.word_attributions.scores
    return output.token_attributions.scores


def word_maps(output):
    # (words, H, W) maps at the image's size (each word's units' maps summed), or None for a method without maps.
    if output.word_maps is not None:
        maps = torch.as_tensor(np.asarray(output.word_maps))
    elif output.attention_maps is not None:
        maps = output.attention_maps.rows(output.image_index, list(output.token_positions))
    else:
        return None
    maps = torch.stack([maps[group].sum(0) for group in word_units(output)])
    size = np.asarray(output.image).shape[:2]
    maps = maps.detach().float().cpu()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return maps.numpy()


def map_cell_size(output):
    # Pixels per cell of the grid the output's maps were made at (for edge-aware filtering), or None.
    if output.word_map_cell_size is not None:
        return float(output.word_map_cell_size)
    return getattr(output.attention_maps, "cell_size", None)


def oracle_map(mask: np.ndarray, cell_size: float) -> np.ndarray:
    # A map that knows the object, at the maps' grid: each cell the share of it the object covers, upsampled as the
    # maps are.
    grid = tuple(max(1, round(side / cell_size)) for side in mask.shape)
    cells = F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], grid)
    return F.interpolate(cells, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def deletion_ratio(output, scores, box, curves, num_random_orders=2, seed=0) -> float:
    # `faithfulness.deletion_auc_ratio(output, scores, box, num_random_orders, seed)`, with each order's curve
    # generated once per box: `curves` (order -> area) is shared by every method explaining this box.
    from diffusers_interpret.faithfulness import deletion_curve

    def area(order):
        key = tuple(int(i) for i in order)
        if key not in curves:
            curves[key] = float(deletion_curve(output, list(key), box).mean())
        return curves[key]

    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reference = float(np.mean([area(rng.permutation(len(scores))) for _ in range(num_random_orders)]))
    ordered = area(np.argsort(-scores, kind="mergesort"))
    return float(ordered / reference) if reference > 0 else float("nan")


TRANSFORMER_TOYS = {"flux": "toy-flux", "sd3": "toy-sd3"}  # --family -> the shipped toy's name (64x64 scenes)


class Rejected(Exception):
    """The installed package does not know this method (or level)."""


class ToyRun:
    r"""The toy model, its explainer and every number recorded so far, method by method."""

    def __init__(self, args):
        from diffusers_interpret import StableDiffusionPipelineExplainer
        from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline

        self.args = args
        if args.family in TRANSFORMER_TOYS:
            from diffusers_interpret import explainer_for
            from diffusers_interpret.toy import TOY_MODELS

            toy = TOY_MODELS[TRANSFORMER_TOYS[args.family]]
            if args.model is None:
                self.pipe = toy.load()
            else:  # another run of the toy's training script, saved as a pipeline folder
                from diffusers_interpret.loading import load_pipeline

                self.pipe = load_pipeline(args.model, device="cpu")
                self.pipe.set_progress_bar_config(disable=True)
            self.explainer = explainer_for(self.pipe, verbose=False)
            self.steps = toy.call["num_inference_steps"]
            self.common = dict(toy.call, output_type="np")
        else:
            self.pipe = load_toy_pipeline(resolution=args.resolution)
            self.explainer = StableDiffusionPipelineExplainer(self.pipe, verbose=False)
            self.steps = TOY_NUM_INFERENCE_STEPS
            self.common = dict(num_inference_steps=self.steps, guidance_scale=TOY_GUIDANCE_SCALE, output_type="np")
        self.methods = list(args.methods)
        self.skipped = {}
        self.results = defaultdict(lambda: defaultdict(list))  # method -> metric -> values
        self.ious = defaultdict(lambda: defaultdict(list))  # method -> threshold -> IoUs
        self.edge_ious = defaultdict(lambda: defaultdict(list))  # the same for the maps given the image's edges
        # cell size -> threshold -> IoUs of the objects' own masks at the grid of the maps of that cell size
        self.oracle_ious = defaultdict(lambda: defaultdict(list))
        # cell size -> the scene (its check) whose masks were scored last
        self.oracle_scenes = defaultdict(lambda: None)
        # method (and the truth) -> the boxed object's shape -> what ranks first in its box -> boxes
        self.first_by_shape = defaultdict(lambda: defaultdict(Counter))

    def plain(self, prompt, seed):
        started = time.perf_counter()
        image = self.pipe(prompt, generator=torch.Generator().manual_seed(seed), **self.common).images[0]
        return image, time.perf_counter() - started

    def explain(self, name, prompt, seed, box, image):
        method, level = METHODS[name]
        try:
            output = self.explainer(
                prompt,
                generator=torch.Generator().manual_seed(seed),
                explanation_2d_bounding_box=box,
                attribution_method=method_object(method),
                attribution_level=level,
                n_last_diffusion_steps_to_consider_for_attributions=self.args.traced,
                get_images_for_all_inference_steps=False,
                **self.common,
            )
        except ValueError as error:
            if self.results[name]["calls"]:  # it ran before: a real failure, not an unknown method
                raise
            raise Rejected(str(error)) from error
        self.results[name]["calls"].append(1)
        if np.abs(output.image - image).max() > 1e-5:
            self.results[name]["image_mismatch"].append(1)
        return output

    def skip(self, name, error):
        self.skipped[name] = str(error)
        self.methods.remove(name)
        print(f"note: skipping {name!r}, the package rejects it: {error}", file=sys.stderr, flush=True)

    def two_object_scene(self, index, prompt, seed, image, check):
        from diffusers_interpret.faithfulness import spearman, swapped_box_control, word_ablation_effects

        words = prompt.split()
        positions = object_words(prompt)
        boxes = object_boxes(check)
        truth, truth_outputs, curves = {}, {}, {side: {} for side in boxes}
        for name in list(self.methods):
            r = self.results[name]
            scores = {}
            try:
                for side, box in boxes.items():
                    started = time.perf_counter()
                    output = self.explain(name, prompt, seed, box, image)
                    r["seconds"].append(time.perf_counter() - started)
                    values = scores[side] = word_scores(output)
                    colour, shape = positions[side]
                    others = [i for i in range(len(values)) if i not in (colour, shape)]
                    r["colour_first"].append(ranked_first(values, colour))
                    self.first_by_shape[name][words[shape]][first_word(values, words, colour, shape)] += 1
                    r["colour_shape_top2"].append(ranked_above(values, [colour, shape], others))
                    if side not in truth:  # measured once per box, with the first method's output
                        truth[side], truth_outputs[side] = word_ablation_effects(output, box), output
                        kind = first_word(truth[side], words, colour, shape)
                        self.first_by_shape["each word left out (truth)"][words[shape]][kind] += 1
                    r["spearman"].append(spearman(values, truth[side]))
                    # deletion, in token order (the SD toys)
                    if index < self.args.deletion_scenes and self.args.family == "stable_diffusion":
                        r["deletion"].append(deletion_ratio(truth_outputs[side], values, box, curves[side]))
                    if side == "left":  # the maps do not depend on the box
                        self.record_ious(name, output, check, positions)
                whole = word_scores(self.explain(name, prompt, seed, None, image))
            except Rejected as error:
                self.skip(name, error)
                continue
            d, d_colour_shape = whole_image_metrics(whole, words)
            r["d"].append(d)
            r["d_colour_shape"].append(d_colour_shape)
            (left_colour, left_shape), (right_colour, right_shape) = positions["left"], positions["right"]
            colour = swapped_box_control(scores["left"], scores["right"], left_colour, right_colour)
            r["colour_left"].append(colour["box_a"])
            r["colour_right"].append(colour["box_b"])
            r["colour_both"].append(colour["flip"])
            if words[left_shape] != words[right_shape]:
                shape = swapped_box_control(scores["left"], scores["right"], left_shape, right_shape)
                r["shape_both"].append(shape["flip"])
        for output in truth_outputs.values():
            output.release()

    def record_ious(self, name, output, check, object_positions):
        from diffusers_interpret import edge_aware_maps

        maps = word_maps(output)
        if maps is None:
            return
        words = [position for positions in object_positions.values() for position in positions]
        cell_size = map_cell_size(output)
        edge_aware = None if cell_size is None else edge_aware_maps(maps[words], output.image, cell_size)

        def add(ious, values, mask):
            normalized = normalize(values)
            for threshold in THRESHOLDS:
                ious[float(threshold)].append(iou(normalized >= threshold, mask))

        for side, positions in object_positions.items():
            mask = check.detection.objects[side].mask
            if cell_size is not None and check is not self.oracle_scenes[cell_size]:
                add(self.oracle_ious[cell_size], oracle_map(mask, cell_size), mask)
            for position in positions:
                add(self.ious[name], maps[position], mask)
                if edge_aware is not None:
                    add(self.edge_ious[name], edge_aware[words.index(position)], mask)

        if cell_size is not None:
            self.oracle_scenes[cell_size] = check

    def one_object_scene(self, prompt, seed, image):
        for name in list(self.methods):
            try:
                whole = word_scores(self.explain(name, prompt, seed, None, image))
            except Rejected as error:
                self.skip(name, error)
                continue
            self.results[name]["d1"].append(whole_image_metrics(whole, prompt.split())[0])

    def summary(self, plain_seconds):
        summary = {}
        for name in self.methods:
            r = self.results[name]
            row = {key: 100 * float(np.mean(r[key])) if r[key] else None for key in PERCENTAGES}
            for key in ("spearman", "deletion", "seconds"):
                values = [v for v in r[key] if not math.isnan(v)]
                row[key] = float(np.median(values)) if values else None
            row["x_plain"] = row["seconds"] / plain_seconds if row["seconds"] is not None else None
            row.update(method=METHODS[name][0], level=METHODS[name][1], image_differs=bool(r["image_mismatch"]))
            row.update(boxes=len(r["colour_first"]), deletion_boxes=len(r["deletion"]), one_object=len(r["d1"]))
            for prefix, ious in (("miou", self.ious[name]), ("edge_miou", self.edge_ious[name])):
                if ious:
                    means = {t: 100 * float(np.mean(v)) for t, v in ious.items()}
                    best = max(means, key=means.get)
                    row.update({f"{prefix}_04": means[0.4], f"{prefix}_best": means[best]})
                    row[f"{prefix}_best_threshold"] = best
            summary[name] = row
        return summary


PERCENTAGES = (
    "colour_first",
    "colour_shape_top2",
    "colour_left",
    "colour_right",
    "colour_both",
    "shape_both",
    "d",
    "d_colour_shape",
    "d1",
)
HEADER = (
    "method",
    "level",
    "colour first (%)",
    "colour+shape top 2 (%)",
    "control colour L / R / both (%)",
    "control shape both (%)",
    "whole image, 2 objects: d content > function / d' colour+shape > function (%)",
    "whole image, 1 object: d1 content > function (%)",
    "Spearman vs ablation",
    "deletion AUC / random",
    "mIoU @0.4 / best (threshold)",
    "mIoU given the image's edges, @0.4 / best (threshold)",
    "s per call",
    "x plain",
)


def print_first_by_shape(first_by_shape) -> None:
    # Per method and for the truth: what ranks first in the boxes of each shape (colour, shape, side words, others).
    if not first_by_shape:
        return
    print("\nwhat ranks first in an object's box, by the object's shape: colour / shape / a side word / another word")
    shapes = sorted({shape for counts in first_by_shape.values() for shape in counts})
    print("| method | " + " | ".join(shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    for name, counts in first_by_shape.items():
        cells = []
        for shape in shapes:
            c = counts[shape]
            side, other = c["left"] + c["right"], sum(c.values()) - c["colour"] - c["shape"] - c["left"] - c["right"]
            cells.append(f"{c['colour']} / {c['shape']} / {side} / {other}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def table_row(name, row) -> str:
    def fmt(key, digits=0):
        return "-" if row.get(key) is None else f"{row[key]:.{digits}f}"

    def miou(prefix):
        if f"{prefix}_04" not in row:
            return "-"
        return f"{row[prefix + '_04']:.1f} / {row[prefix + '_best']:.1f} ({row[prefix + '_best_threshold']:.2f})"

    cells = (
        name.split("@")[0].split(" ")[0],
        row["level"],
        fmt("colour_first"),
        fmt("colour_shape_top2"),
        f"{fmt('colour_left')} / {fmt('colour_right')} / **{fmt('colour_both')}**",
        fmt("shape_both"),
        f"{fmt('d')} / {fmt('d_colour_shape')}",
        fmt("d1"),
        fmt("spearman", 2),
        fmt("deletion", 2),
        miou("miou"),
        miou("edge_miou"),
        fmt("seconds", 2),
        fmt("x_plain", 1),
    )
    return "| " + " | ".join(cells) + " |" + (" image differs!" if row["image_differs"] else "")


def run_toy(args):
    from diffusers_interpret.toy import TOY_PROMPT_ORDERS
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    run = ToyRun(args)
    rng = np.random.default_rng(args.seed)
    order = "random" if args.family in TRANSFORMER_TOYS else TOY_PROMPT_ORDERS[args.resolution]
    prompts = [sample_scene_spec(rng, 2, order=order).prompt for _ in range(args.num_scenes)]
    rng = np.random.default_rng([args.seed, 1])
    one_object_prompts = [sample_scene_spec(rng, 1).prompt for _ in range(args.one_object_scenes)]
    plain_times = []
    kept = kept_one = 0
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        seed = args.seed + index
        image, seconds = run.plain(prompt, seed)
        plain_times.append(seconds)
        check = check_prompt(image, prompt)
        if check.correct:
            kept += 1
            run.two_object_scene(index, prompt, seed, image, check)
        print(
            f"two-object scene {index + 1}/{len(prompts)} {'done' if check.correct else 'drawn wrong, skipped'} "
            f"({kept} correct, {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    for index, prompt in enumerate(one_object_prompts):
        seed = args.seed + 100_000 + index
        image, _ = run.plain(prompt, seed)
        correct = check_prompt(image, prompt).correct
        if correct:
            kept_one += 1
            run.one_object_scene(prompt, seed, image)
        print(
            f"one-object scene {index + 1}/{len(one_object_prompts)} {'done' if correct else 'drawn wrong, skipped'} "
            f"({kept_one} correct, {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    plain_seconds = statistics.median(plain_times)
    summary = run.summary(plain_seconds)
    wall = time.perf_counter() - started
    print(
        f"\n{TRANSFORMER_TOYS.get(args.family, f'{args.resolution}x{args.resolution} SD')} toy, "
        f"seed {args.seed}: {kept} of {len(prompts)} two-object and "
        f"{kept_one} of {len(one_object_prompts)} "
        f"one-object scenes drawn correctly; plain pipe() median {plain_seconds:.3f} s; traced: "
        f"{'all' if args.traced is None else args.traced} of {run.steps} steps; deletion on the first "
        f"{min(args.deletion_scenes, len(prompts))} two-object scenes; {wall:.0f} s\n"
    )
    for name, error in run.skipped.items():
        print(f"skipped {name}: {error}\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for name, row in summary.items():
        print(table_row(name, row))
    print_first_by_shape(run.first_by_shape)
    oracle = {}
    for cell_size, ious in run.oracle_ious.items():
        means = {t: 100 * float(np.mean(v)) for t, v in ious.items()}
        best = max(means, key=means.get)
        oracle[str(cell_size)] = dict(miou_04=means[0.4], miou_best=means[best], miou_best_threshold=best)
        print(
            f"\nthe objects' own masks at the maps' grid of {cell_size:g} px cells (each cell the share of it the "
            f"object covers, upsampled as the maps are), a map that knew the object: mIoU @0.4 {means[0.4]:.1f} / "
            f"best {means[best]:.1f} ({best:.2f})"
        )
    if args.json:
        info = dict(
            resolution=args.resolution,
            seed=args.seed,
            kept_two_object=kept,
            num_two_object=len(prompts),
            kept_one_object=kept_one,
            num_one_object=len(one_object_prompts),
            deletion_scenes=args.deletion_scenes,
            traced=args.traced,
            plain_seconds=plain_seconds,
            wall_seconds=wall,
            skipped=run.skipped,
            methods=summary,
            oracle_at_the_maps_grid=oracle,
            first_by_shape={
                name: {k: dict(v) for k, v in shapes.items()} for name, shapes in run.first_by_shape.items()
            },
        )
        Path(args.json).write_text(json.dumps(info, indent=1))
        print(f"\nwrote {args.json}")


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
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            if method is not None and lines and lines[-1].startswith("ValueError"):
                raise Rejected(lines[-1])
            raise RuntimeError(f"{method} @ {level} failed:\n{out.stderr}")
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
        try:
            r = case(method, level)
        except Rejected as error:
            print(f"note: skipping {name!r}, the package rejects it: {error}", file=sys.stderr, flush=True)
            continue
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
    parser.add_argument("--one-object-scenes", type=int, default=20, help="one-object prompts (whole-image d1)")
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument(
        "--resolution", type=int, choices=[32, 64], default=32, help="which shipped SD toy model (image size)"
    )
    parser.add_argument(
        "--family",
        choices=["stable_diffusion", *TRANSFORMER_TOYS],
        default="stable_diffusion",
        help="the SD toys, the Flux toy or the SD3 toy",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a saved pipeline folder to measure in place of the shipped Flux or SD3 toy (a training run's output)",
    )
    parser.add_argument("--traced", type=int, default=None, help="traced steps (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every number of --part toy to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_toy(args) if args.part == "toy" else run_cost(args)


if __name__ == "__main__":
    main()
