r"""
Are a clip's word maps and word rankings true? The toy Wan video model against its known ground truth.

The toy Wan (`load_toy_wan_pipeline`, `scripts/train_toy_wan.py`) draws one coloured shape moving left or right
across 9 frames of 32x32 ("a red circle moving right"). For each clip drawn at `--seed` (not a training seed; its
prompt, of the 24 there are, was seen in training), generated from its own noise seed, the clip is explained with
the default method (`word_attention`) over the whole clip, and the independent detector (`toy.clips.check_clip`)
finds the object in every frame. Only clips it finds drawn as prompted are scored:

- **maps, per frame**: the colour and shape words' maps (`word_maps`, and raw cross-attention `attention_maps`),
  and two maps of no word: the share of each pixel's attention that reads the prompt rather than the padding and
  end token (`1 - attention_maps.excluded_share`, whose mean on the object and off it is printed too) and how much
  each pixel depends on the prompt at all (`prompt_dependence_map`, from the redraws), split into frames
  (`frame_maps`). Object / background: the median
  over frames of the map's mean on the object over its mean elsewhere. Pointing game: the frame's hottest pixel
  lies on the object's box (grown by one pixel). IoU: the frame's map min-max normalised and thresholded, against
  the object's mask, at DAAM's 0.4 and at the best single threshold over 0.1 .. 0.9 (chosen on these same clips, so
  optimistic), x100.
- **tracking**: the map's centre (weights: the frame's map above its median) column by column follows the object's:
  the mean distance in pixels, and the share of clips whose map moves the object's way by at least 4 pixels from
  the first frame to the last.
- **rankings**: the object's box on frames 0, 4 and 8 explained again (`output.explain(box, explanation_frames=...)`)
  by each method: the colour word first among all words, colour + shape the top two, and (with `--ablation`) the
  Spearman correlation with each word left out (the prompt without the word, the clip made again from the same
  noise: the mean change of the box on that frame), whose own rankings are the last row. With them, how much the
  object's box and an empty box of its size (above or below the object's row) depend on the prompt at all
  (`prompt_dependence`), and how often each reads "depends on the prompt".

    python benchmarks/toy_video_truth.py                              # 24 prompts, the default method
    python benchmarks/toy_video_truth.py --num-clips 40 --methods word_attention attention grad_x_input --ablation
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
from toy_localization import iou  # noqa: E402  (beside this script)

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.dependence import DEPENDS_THRESHOLD  # noqa: E402
from diffusers_interpret.faithfulness import spearman  # noqa: E402
from diffusers_interpret.segmentation.metrics import min_max  # noqa: E402
from diffusers_interpret.toy import TOY_WAN_CALL, load_toy_wan_pipeline  # noqa: E402
from diffusers_interpret.toy.clips import check_clip, generate_clips, parse_clip_prompt  # noqa: E402

THRESHOLDS = np.round(np.arange(0.1, 0.95, 0.05), 2)
RANKED_FRAMES = (0, 4, 8)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--num-clips", type=int, default=24)
    parser.add_argument("--seed", type=int, default=4242, help="seed of the clips (the toy trained on others)")
    parser.add_argument("--methods", nargs="+", default=["word_attention"], help="methods ranked on the boxes")
    parser.add_argument("--ablation", action="store_true", help="also word ablation of each box (slower)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def grown_box_mask(mask: np.ndarray, grow: int = 1) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[max(rows.min() - grow, 0) : rows.max() + grow + 1, max(cols.min() - grow, 0) : cols.max() + grow + 1] = True
    return box


def centre_column(values: np.ndarray) -> float:
    weights = np.clip(values - np.median(values), 0, None)
    if weights.sum() <= 0:
        return float("nan")
    return float((weights.sum(axis=0) * np.arange(values.shape[1])).sum() / weights.sum())


def frame_scores(frames: np.ndarray, masks) -> dict:
    r"""Pointing, IoU per threshold and the centre's track of one word's (frames, H, W) maps against the object's
    per-frame masks."""
    pointing, ious, map_centres, object_centres = [], [], [], []
    for values, mask in zip(frames, masks):
        peak = np.unravel_index(np.argmax(values), values.shape)
        pointing.append(bool(grown_box_mask(mask)[peak]))
        scaled = min_max(values)
        ious.append([iou(scaled >= threshold, mask) for threshold in THRESHOLDS])
        map_centres.append(centre_column(values))
        object_centres.append(float(np.nonzero(mask)[1].mean()))
    return dict(pointing=pointing, ious=np.asarray(ious), map_centres=map_centres, object_centres=object_centres)


def empty_box_beside_row(box, size: int = 32):
    r"""A box of `box`'s size in the rows above the object's box or below it, the same columns, a pixel apart (the
    object moves along its row, so the box is over background on every frame), or `None` where neither fits."""
    (x0, y0), (x1, y1) = box
    height = y1 - y0
    for top in (0, size - height):
        if top + height <= y0 - 1 or top >= y1 + 1:
            return (x0, top), (x1, top + height)
    return None


def without_each_word(pipe, prompt: str, seed: int) -> np.ndarray:
    r"""(words, frames, H, W, 3): the clip made again from the same noise with each word of the prompt left out."""
    words = prompt.split()
    clips = []
    for index in range(len(words)):
        text = " ".join(words[:index] + words[index + 1 :])
        generator = torch.Generator().manual_seed(seed)
        clips.append(pipe(text, generator=generator, output_type="np", **TOY_WAN_CALL).frames[0])
    return np.stack(clips)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_toy_wan_pipeline()
    explainer = explainer_for(pipe)
    maps = defaultdict(lambda: defaultdict(list))  # map kind -> measure -> values
    ranks = defaultdict(lambda: defaultdict(list))  # method -> measure -> values
    dependence = defaultdict(list)  # "object" / "empty" -> the boxes' prompt dependence
    sinks = defaultdict(list)  # "object" / "background" -> per clip, the attention share of the padding and end token
    # Gradient methods explain another box from the kept graph; the attention methods from the recorded maps.
    keep = {} if set(args.methods) <= {"word_attention", "attention"} else {"keep_for_reexplanation": "graph"}
    drawn, started = 0, time.time()
    clips = generate_clips(args.num_clips, seed=args.seed)
    for index, clip in enumerate(clips):
        generator = torch.Generator().manual_seed(index)
        output = explainer(
            clip.prompt, generator=generator, attention_maps=True, output_type="np", **keep, **TOY_WAN_CALL
        )
        frames = np.stack([np.asarray(frame) for frame in output.frames])  # (frames, H, W, 3) in [0, 1]
        check = check_clip(frames, clip.prompt)
        if not (check.correct and all(mask is not None for mask in check.masks)):
            continue
        drawn += 1
        color, shape, direction = parse_clip_prompt(clip.prompt)
        words = output.word_attributions.tokens
        kinds = {}
        for word in (color, shape):
            token = output.word_tokens[words.index(word)][0]
            kinds.setdefault("word_attention", []).append(output.frame_maps(output.word_maps[token]))
            position = output.token_positions[token]
            kinds.setdefault("attention", []).append(output.frame_maps(output.attention_maps.for_token(position)))
        # Maps of no word: how much each pixel reads the prompt rather than the padding, and how much it depends on
        # the prompt at all (the redraws).
        excluded = output.frame_maps(output.attention_maps.excluded_share[0].numpy())
        on_object = np.stack(check.masks)
        sinks["object"].append(float(excluded[on_object].mean()))
        sinks["background"].append(float(excluded[~on_object].mean()))
        kinds["prompt share"] = [1 - excluded]
        kinds["prompt dependence"] = [output.frame_maps(output.prompt_dependence_map)]
        for kind, word_maps in kinds.items():
            for values in word_maps:
                scores = frame_scores(values, check.masks)
                maps[kind]["pointing"].extend(scores["pointing"])
                maps[kind]["ious"].extend(scores["ious"])
                error = np.abs(np.asarray(scores["map_centres"]) - np.asarray(scores["object_centres"]))
                maps[kind]["centre_error"].append(float(np.nanmean(error)))
                moved = scores["map_centres"][-1] - scores["map_centres"][0]
                maps[kind]["tracks"].append(bool(moved >= 4 if direction == "right" else moved <= -4))
                inside = [float(v[m].mean() / max(v[~m].mean(), 1e-12)) for v, m in zip(values, check.masks)]
                maps[kind]["contrast"].append(float(np.median(inside)))
        boxes = check.boxes()
        removed = without_each_word(pipe, clip.prompt, index) if args.ablation else None
        for frame in RANKED_FRAMES:
            (x0, y0), (x1, y1) = box = boxes[frame]
            ablation = None
            if removed is not None:  # how much the box changes on the frame when the word is left out
                ablation = np.abs(removed[:, frame, y0:y1, x0:x1] - frames[frame, y0:y1, x0:x1]).mean(axis=(1, 2, 3))
            dependence["object"].append(output.explain(box, explanation_frames=(frame, frame + 1)).prompt_dependence)
            empty = empty_box_beside_row(box)
            if empty is not None:
                explained = output.explain(empty, explanation_frames=(frame, frame + 1))
                dependence["empty"].append(explained.prompt_dependence)
            for method in args.methods:
                boxed = output.explain(box, attribution_method=method, explanation_frames=(frame, frame + 1))
                scores = boxed.word_attributions.scores
                order = [boxed.word_attributions.tokens[i] for i in np.argsort(-scores)]
                ranks[method]["colour_first"].append(order[0] == color)
                ranks[method]["top_two"].append(set(order[:2]) == {color, shape})
                ranks[method]["direction_rank"].append(order.index(direction) + 1)
                if ablation is not None:
                    ranks[method]["spearman"].append(spearman(scores, ablation))
            if ablation is not None:
                order = [words[i] for i in np.argsort(-ablation)]
                ranks["word left out"]["colour_first"].append(order[0] == color)
                ranks["word left out"]["top_two"].append(set(order[:2]) == {color, shape})
                ranks["word left out"]["direction_rank"].append(order.index(direction) + 1)
        output.release()
        print(f"clip {index + 1}/{len(clips)}: {clip.prompt!r} drawn as prompted", flush=True)

    print(f"\n{drawn} of {len(clips)} clips drawn as prompted ({time.time() - started:.0f} s)")
    print("\nmaps of the colour and shape words, per frame (x100)")
    print("| map | pointing | mIoU @0.4 | best mIoU (threshold) | object / background | centre error px | tracks it |")
    print("|---|---|---|---|---|---|---|")
    for kind, measures in maps.items():
        ious = np.asarray(measures["ious"]).mean(axis=0)
        best = int(np.argmax(ious))
        at_04 = ious[int(np.argmin(np.abs(THRESHOLDS - 0.4)))]
        print(
            f"| {kind} | {100 * np.mean(measures['pointing']):.0f} | {100 * at_04:.1f} | "
            f"{100 * ious[best]:.1f} ({THRESHOLDS[best]:.2f}) | {np.median(measures['contrast']):.2f} | "
            f"{np.mean(measures['centre_error']):.2f} | "
            f"{100 * np.mean(measures['tracks']):.0f} |"
        )
    print(
        "\nattention to the padding and end token (excluded_share), mean over clips: "
        f"on the object {100 * np.mean(sinks['object']):.0f}%, off it {100 * np.mean(sinks['background']):.0f}%"
    )
    print("\nhow much the object's box and an empty box of its size on those frames depend on the prompt")
    print("| box | boxes | min | median | max | read 'depends on the prompt' |")
    print("|---|---|---|---|---|---|")
    for kind, values in dependence.items():
        values = np.asarray(values)
        print(
            f"| {kind} | {len(values)} | {values.min():.3f} | {np.median(values):.3f} | {values.max():.3f} | "
            f"{100 * np.mean(values >= DEPENDS_THRESHOLD):.0f}% |"
        )
    print(f"\nrankings of the object's box on frames {RANKED_FRAMES} (%)")
    print("| method | colour first | colour + shape top two | direction word's mean rank | Spearman vs ablation |")
    print("|---|---|---|---|---|")
    for method, measures in ranks.items():
        rho = f"{np.nanmean(measures['spearman']):.2f}" if measures.get("spearman") else "-"
        print(
            f"| {method} | {100 * np.mean(measures['colour_first']):.0f} | {100 * np.mean(measures['top_two']):.0f} | "
            f"{np.mean(measures['direction_rank']):.1f} | {rho} |"
        )


if __name__ == "__main__":
    main()
