r"""
Does the ControlNet explanation point at the right control pixels? A ground-truth check on the toy ControlNet.

The toy ControlNet (`diffusers_interpret.toy.control`) draws the 32x32 toy's scenes from their outlines (white
one-pixel boundaries on black, no colour). Held-out two-object scenes (seeded, no training seed) are generated with
their outline control and full prompt; scenes the independent detector does not find drawn right (shapes, colours,
sides and positions) are dropped. On each kept scene:

(a) for a tight box around each object (the bounding box of its scene mask), the share of the box's control pixel
    attribution (`control_pixel_attributions`, `grad_x_input`, all 20 steps traced) inside a 2-pixel band around
    that object's own outline, against the share inside the other object's band and the band's share of the image
    (chance for an attribution spread evenly);
(b) the prompt/control split of the same boxes: `control_dependence` and `prompt_dependence` when the prompt names
    colour, shape and side, and when it names colours and sides only ("a red object on the left and a blue object on
    the right", a fresh image of the same scene and seed): with no shape named, the box should depend more on the
    control image.

Usage:

```bash
python benchmarks/toy_control_truth.py --scenes 20 --seed 999              # add --per-scene for every box's shares
```

Measured on a shared 2-core CPU (fp32, 1 thread, `TOY_CONTROL_CALL`: guidance 2, 20 steps), 44 s: 20 of 21 scenes
drawn right, 40 object boxes.

| | median | mean |
|---|---|---|
| (a) attribution in the box's own outline band | 0.831 | 0.790 |
| (a) in the other object's band | 0.169 | 0.210 |
| (a) the band's share of the image (chance) | 0.156 | 0.155 |
| (b) control dependence, colour+shape+side prompts | 0.881 | 0.846 |
| (b) control dependence, colour-only prompts | 0.910 | 0.871 |
| (b) prompt dependence, colour+shape+side prompts | 0.772 | 0.764 |
| (b) prompt dependence, colour-only prompts | 0.785 | 0.773 |

Every control attribution lies on outline pixels (`grad_x_input` multiplies by the pixel, and the control is black
elsewhere), so the own and other shares add up to 1. 55% of the boxes have 80% or more on their own outline, the
lowest 51%; the left object's box leaks more to the right object's outline than the other way round. At guidance 4
(the toy's own) the own-band share is lower: median 0.787, mean 0.758.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.box import mask_box  # noqa: E402
from diffusers_interpret.dependence import DependenceMap  # noqa: E402
from diffusers_interpret.toy.control import (  # noqa: E402
    TOY_CONTROL_CALL,
    color_only_prompt,
    load_toy_controlnet_pipeline,
    matches_scene,
    outline_band,
    outline_image,
)
from diffusers_interpret.toy.scenes import RenderedScene, render_scene, sample_scene_spec  # noqa: E402

BAND_WIDTH = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--scenes", type=int, default=20, help="two-object scenes drawn right to explain")
    parser.add_argument("--seed", type=int, default=999, help="seed of the scenes; image i is generated with seed + i")
    parser.add_argument("--max-tried", type=int, default=60, help="scenes generated at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-scene", action="store_true", help="also print each scene's readings")
    return parser.parse_args()


def band_shares(attributions, scene: RenderedScene, index: int) -> Dict[str, float]:
    r"""Shares of the attribution inside object `index`'s outline band and inside the other object's."""
    scores = np.abs(np.asarray(attributions, dtype=np.float64))
    total = scores.sum()
    own = outline_band(scene.masks[index], BAND_WIDTH)
    other = outline_band(scene.masks[1 - index], BAND_WIDTH)
    return {
        "own": float(scores[own].sum() / total),
        "other": float(scores[other].sum() / total),
        "chance": float(own.mean()),
    }


def explain_boxes(explainer, prompt: str, scene: RenderedScene, seed: int, attributions: bool):
    r"""
    Explain a box around each object of the scene from one call. Returns the image and, per box, its dependences and,
    with `attributions`, its band shares (the other boxes re-explained from the call's kept graph).
    """
    boxes = [mask_box(mask) for mask in scene.masks]
    out = explainer(
        prompt,
        image=outline_image(scene),
        generator=torch.Generator().manual_seed(seed),
        explanation_2d_bounding_box=boxes[0],
        attribution_method="grad_x_input",
        n_last_diffusion_steps_to_consider_for_attributions=None if attributions else 0,
        keep_for_reexplanation="graph" if attributions else None,
        output_type="np",
        **TOY_CONTROL_CALL,
    )
    readings = []
    for index, box in enumerate(boxes):
        reading = {
            "control": DependenceMap(out.control_dependence_map).share(box),
            "prompt": DependenceMap(out.prompt_dependence_map).share(box),
        }
        if attributions:
            boxed = out if index == 0 else out.explain(explanation_2d_bounding_box=box)
            reading.update(band_shares(boxed.control_pixel_attributions, scene, index))
        readings.append(reading)
    if attributions:
        out.release()
    return out.image, readings


def summary(name: str, values: List[float]) -> str:
    return f"{name}: median {np.median(values):.3f}, mean {np.mean(values):.3f} (n={len(values)})"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    print("command: python " + " ".join(sys.argv))
    pipe = load_toy_controlnet_pipeline()
    explainer = explainer_for(pipe, verbose=False)
    rng = np.random.default_rng(args.seed)
    full, color_only, tried, color_only_right = [], [], 0, 0
    while len(full) < 2 * args.scenes and tried < args.max_tried:
        scene, seed = render_scene(sample_scene_spec(rng, 2)), args.seed + tried
        tried += 1
        generator = torch.Generator().manual_seed(seed)
        call = dict(image=outline_image(scene), generator=generator, output_type="np", **TOY_CONTROL_CALL)
        image = pipe(scene.prompt, **call).images[0]
        if not matches_scene(image, scene):
            continue
        _, readings = explain_boxes(explainer, scene.prompt, scene, seed, attributions=True)
        full += readings
        image, color_readings = explain_boxes(explainer, color_only_prompt(scene), scene, seed, attributions=False)
        color_only += color_readings
        color_only_right += matches_scene(image, scene)
        if args.per_scene:
            shares = ", ".join(f"{r['own']:.3f} own / {r['other']:.3f} other" for r in readings)
            print(f"scene {tried - 1} (noise seed {seed}) {scene.prompt!r}: {shares}")
    kept = len(full) // 2
    print(f"{kept} of {tried} held-out two-object scenes drawn right (seed {args.seed}); {len(full)} object boxes")
    print(f"colour-only prompts drew {color_only_right} of these {kept} scenes right too")
    print(f"(a) control pixel attribution (grad_x_input, all steps) of a tight object box, {BAND_WIDTH}-pixel bands:")
    for key, name in (("own", "own outline band"), ("other", "other object's band"), ("chance", "band's image area")):
        print("    " + summary(name, [r[key] for r in full]))
    print(f"    boxes with >= 80% in their own band: {np.mean([r['own'] >= 0.8 for r in full]):.0%}")
    print(f"    lowest own-band share: {min(r['own'] for r in full):.3f}")
    print("(b) dependence of object boxes:")
    for label, readings in (("colour+shape+side prompts", full), ("colour-only prompts", color_only)):
        print(f"    {label}:")
        print("        " + summary("control_dependence", [r["control"] for r in readings]))
        print("        " + summary("prompt_dependence", [r["prompt"] for r in readings]))
    print(f"time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
