r"""
Does `output.prompt_dependence` tell a box around an object from a box of the same size over empty background, on
every toy model, for generated and for rendered (existing) images, with one threshold?

For each scene (`sample_scene_spec`, seeds from `--seed`): the toy generates it (`gen`; noise seed `--seed + i`) or
the scene is rendered and explained as an existing image (`rendered`). The independent detector finds the objects;
each object's bounding box is paired with the box of the same size that overlaps no object (nor its one-pixel rim)
where there is one. For both boxes it prints what a reader would compare:

- `prompt_dependence` (the share of the box the model redraws differently without the prompt);
- the raw total of the default method's scores over the box's area (the floor the issue names).

Per model and kind: the AUROC of each (object boxes high), and with `DEPENDS_THRESHOLD` the share of object boxes read
"depends on the prompt" and of empty boxes read "depends little"; for one-object scenes the same for the two halves of
the image. With `--thresholds` the best single threshold over all conditions.

    python benchmarks/prompt_dependence.py                   # tuning scenes (seed 777), about 6 minutes
    python benchmarks/prompt_dependence.py --seed 999        # held-out scenes
    python benchmarks/prompt_dependence.py --part cost       # what the measure adds to an explanation

`--part attention-mass` tests the cheap candidate the issue names on the toy Flux (generated scenes, seed 777): the
share of a box's attention that goes to the prompt's words rather than to the attention sinks (one minus
`attention_maps.excluded_share`, averaged over the box), its AUROC and its Spearman correlation with the exact measure.

`--part cost` times the default explanation of a two-object prompt with and without `prompt_dependence` (and a plain
generation) on each toy, interleaved, median of 7, and prints the ratios.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.dependence import DEPENDS_THRESHOLD  # noqa: E402
from diffusers_interpret.toy import TOY_MODELS  # noqa: E402
from diffusers_interpret.toy.detector import detect_objects, empty_box_like  # noqa: E402
from diffusers_interpret.toy.scenes import render_scene, sample_scene_spec  # noqa: E402


def auroc(positives, negatives) -> float:
    p, n = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None]
    return float(((p > n) + 0.5 * (p == n)).mean())


def scene_boxes(image: np.ndarray):
    r"""(kind, box) pairs of one image: `obj`/`empty` boxes of the same size, `half_obj`/`half_empty` halves."""
    size = image.shape[0]
    detection = detect_objects(image)
    found = {side: obj for side, obj in detection.objects.items() if obj is not None}
    occupied = np.zeros((size, size), bool)
    for obj in list(found.values()) + detection.strays:
        occupied |= obj.mask
    boxes = []
    for obj in found.values():
        top, left, bottom, right = obj.bbox
        boxes.append(("obj", ((left, top), (right, bottom))))
        place = empty_box_like(occupied, bottom - top, right - left)
        if place is not None:
            y, x = place
            boxes.append(("empty", ((x, y), (x + right - left, y + bottom - top))))
    if len(found) == 1:
        side = next(iter(found))
        halves = {"left": ((0, 0), (size // 2, size)), "right": ((size // 2, 0), (size, size))}
        other = "right" if side == "left" else "left"
        (x0, _), (x1, _) = halves[other]
        if not occupied[:, x0:x1].any():
            boxes += [("half_obj", halves[side]), ("half_empty", halves[other])]
    return boxes


def measure(name: str, kind: str, num_scenes: int, seed: int):
    toy = TOY_MODELS[name]
    pipe = toy.load()
    call = dict(toy.call)
    size = call["height"]
    explainer = explainer_for(pipe, verbose=False)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_scenes):
        spec = sample_scene_spec(rng, image_size=size, order="random" if size == 64 else "left_first")
        if kind == "gen":
            generator = torch.Generator().manual_seed(seed + i)
            output = explainer(
                spec.prompt, generator=generator, get_images_for_all_inference_steps=False, output_type="np", **call
            )
            image = (output.image * 255).round().astype(np.uint8)
        else:
            image = render_scene(spec).image
            extra = {k: v for k, v in call.items() if k == "max_sequence_length"}
            output = explainer.explain_image(image, spec.prompt, output_type="np", **extra)
        for box_kind, box in scene_boxes(image):
            explained = output.explain(box)
            (x0, y0), (x1, y1) = box
            raw = float(np.sum(explained.token_attributions.scores)) / ((x1 - x0) * (y1 - y0))
            rows.append(dict(kind=box_kind, dependence=explained.prompt_dependence, raw=raw))
    return rows


def report(condition: str, rows, threshold: float) -> None:
    def values(kind, key):
        return [row[key] for row in rows if row["kind"] == kind]

    for positive, negative in (("obj", "empty"), ("half_obj", "half_empty")):
        p, n = values(positive, "dependence"), values(negative, "dependence")
        if not p or not n:
            continue
        raw = auroc(values(positive, "raw"), values(negative, "raw"))
        print(
            f"{condition:22s} {positive:>8s} vs {negative:10s} n={len(p):2d}/{len(n):2d}  AUROC dependence "
            f"{auroc(p, n):.3f} (raw total / area {raw:.3f})  read right at {threshold:.2f}: "
            f"{100 * np.mean(np.asarray(p) >= threshold):.1f}% / {100 * np.mean(np.asarray(n) < threshold):.1f}%  "
            f"medians {np.median(p):.2f} / {np.median(n):.2f}"
        )


def cost(models) -> None:
    import statistics
    import time

    prompt = "a red circle on the left and a blue square on the right"
    for name in models:
        toy = TOY_MODELS[name]
        pipe = toy.load()
        call = dict(toy.call)
        explainer = explainer_for(pipe, verbose=False)
        runs = {
            "plain generation": (pipe, {}),
            "explanation": (explainer, {}),
            "explanation without prompt dependence": (explainer, {"prompt_dependence": False}),
        }
        times = {key: [] for key in runs}
        for _ in range(7):
            for key, (function, options) in runs.items():
                started = time.perf_counter()
                function(prompt, generator=torch.Generator().manual_seed(0), **options, **call)
                times[key].append(time.perf_counter() - started)
        medians = {key: statistics.median(values) for key, values in times.items()}
        base = medians["plain generation"]
        print(
            f"{name:9s} " + ", ".join(f"{key} {value:.3f} s ({value / base:.2f}x)" for key, value in medians.items())
        )


def attention_mass(num_scenes: int, seed: int) -> None:
    from diffusers_interpret.faithfulness import spearman

    toy = TOY_MODELS["toy-flux"]
    pipe = toy.load()
    call = dict(toy.call)
    explainer = explainer_for(pipe, verbose=False)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_scenes):
        spec = sample_scene_spec(rng, image_size=64, order="random")
        output = explainer(
            spec.prompt, generator=torch.Generator().manual_seed(seed + i), output_type="np", attention_maps=True,
            get_images_for_all_inference_steps=False, **call,
        )  # fmt: skip
        image = (output.image * 255).round().astype(np.uint8)
        to_words = 1 - output.attention_maps.excluded_share[0].detach().float().numpy()
        for kind, box in scene_boxes(image):
            (x0, y0), (x1, y1) = box
            rows.append((kind, output.explain(box).prompt_dependence, float(to_words[y0:y1, x0:x1].mean())))
    for positive, negative in (("obj", "empty"), ("half_obj", "half_empty")):
        p = [row for row in rows if row[0] == positive]
        n = [row for row in rows if row[0] == negative]
        print(
            f"toy Flux {positive} vs {negative} (n={len(p)}/{len(n)}): AUROC prompt dependence "
            f"{auroc([r[1] for r in p], [r[1] for r in n]):.3f}, attention mass to the words "
            f"{auroc([r[2] for r in p], [r[2] for r in n]):.3f}"
        )
    agreement = spearman([r[2] for r in rows], [r[1] for r in rows])
    print(f"Spearman(attention mass to the words, prompt dependence), all boxes: {agreement:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["separation", "attention-mass", "cost"], default="separation")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--num-scenes", type=int, default=None, help="per model (default: 40 for 32x32, 20 for 64)")
    parser.add_argument("--models", nargs="+", default=["toy", "toy-64", "toy-flux"])
    parser.add_argument("--kinds", nargs="+", default=["gen", "rendered"])
    parser.add_argument("--thresholds", action="store_true", help="also print the best single threshold")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.part == "cost":
        cost(args.models)
        return
    if args.part == "attention-mass":
        attention_mass(args.num_scenes or 20, args.seed)
        return
    measured = {}
    for name in args.models:
        for kind in args.kinds:
            count = args.num_scenes or (40 if name == "toy" else 20)
            measured[f"{name} {kind}"] = rows = measure(name, kind, count, args.seed)
            report(f"{name} {kind}", rows, DEPENDS_THRESHOLD)
    if args.thresholds:

        def worst(threshold):
            return min(
                min(
                    np.mean([r["dependence"] >= threshold for r in rows if r["kind"] == "obj"]),
                    np.mean([r["dependence"] < threshold for r in rows if r["kind"] == "empty"]),
                )
                for rows in measured.values()
            )

        best = max(np.arange(0.05, 0.6, 0.01), key=worst)
        print(f"best single threshold {best:.2f}: every condition reads >= {100 * worst(best):.1f}% of boxes right")


if __name__ == "__main__":
    main()
