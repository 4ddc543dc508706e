r"""
Does normalising the word maps across words at each pixel sharpen them? mIoU of `word_attention`'s maps against the
toy's true object masks, per word (as `faithfulness.py` scores them) and renormalised: each word's share of the pixel's
total, its share among the object words, and a softmax across words at three temperatures. Runs `faithfulness.py`'s
toy benchmark for `word_attention` (its table is printed first), then one line per normalisation.

    python benchmarks/word_map_normalisations.py --num-scenes 20 --seed 4242
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faithfulness as fb  # noqa: E402
import numpy as np  # noqa: E402

variants = {}


def record_ious(self, name, output, check, object_positions):
    maps = fb.word_maps(output)
    if maps is None:
        return
    eps = 1e-12
    share = maps / (maps.sum(0, keepdims=True) + eps)
    content = sorted({p for ps in object_positions.values() for p in ps})
    content_share = maps[content] / (maps[content].sum(0, keepdims=True) + eps)
    softmax = {}
    for temperature in (0.5, 1.0, 2.0):
        z = maps / (maps.std() + eps) / temperature
        e = np.exp(z - z.max(0, keepdims=True))
        softmax[temperature] = e / e.sum(0, keepdims=True)
    for side, positions in object_positions.items():
        mask = check.detection.objects[side].mask
        for position in positions:
            candidates = {
                "per word": maps[position],
                "share": share[position],
                "object-word share": content_share[content.index(position)],
            }
            for temperature, values in softmax.items():
                candidates[f"softmax T={temperature}"] = values[position]
            for key, values in candidates.items():
                normalized = fb.normalize(values)
                for threshold in fb.THRESHOLDS:
                    ious = variants.setdefault(key, {}).setdefault(float(threshold), [])
                    ious.append(fb.iou(normalized >= threshold, mask))


def main():
    fb.ToyRun.record_ious = record_ious
    fixed = ["--methods", "word_attention", "--deletion-scenes", "0", "--one-object-scenes", "0", "--threads", "1"]
    sys.argv = [sys.argv[0], *fixed, *sys.argv[1:]]
    fb.main()
    for key, by_threshold in variants.items():
        means = {t: 100 * np.mean(v) for t, v in by_threshold.items()}
        best = max(means, key=means.get)
        print(f"{key:18s} mIoU @0.4 {means[0.4]:.1f}  best {means[best]:.1f} ({best})  words={len(by_threshold[0.4])}")


if __name__ == "__main__":
    main()
