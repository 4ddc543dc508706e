r"""
Why ConceptAttention finds the objects worse than raw attention on the toy Flux: each dual-stream block's concept maps
on their own, with and without the softmax across concepts, against the true masks of rendered toy scenes.

For each scene (`segmentation.datasets.toy_scenes(count, seed, resolution=64)`: flat shapes, exact masks, the
scene's own prompt) the toy Flux explains the rendered image (`explain_image`, the default noise levels, T5 length
16) with `ConceptAttention()`; the concept x image-token dot products of every dual-stream block are kept as the
library's recorder computes them (its block hook, wrapped). An object's map is the mean of its colour and shape
words' maps; it is scored by average precision against the object's mask (threshold-free; chance is the mask's
share of the image, about 0.1). For comparison, the same objects' maps of the library's `concept_attention`
(softmax across the concepts, all blocks), `word_attention` (the default) and raw `attention`.

    python benchmarks/concept_attention_blocks.py            # 20 scenes, about 10 s
"""

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.methods import ConceptAttention  # noqa: E402
from diffusers_interpret.segmentation.datasets import toy_scenes  # noqa: E402
from diffusers_interpret.segmentation.metrics import average_precision  # noqa: E402
from diffusers_interpret.toy import TOY_MODELS  # noqa: E402
from diffusers_interpret.tracing.concepts import ConceptAttentionRecorder  # noqa: E402

FUNCTION_WORDS = {"a", "the", "on", "and", "left", "right"}


def keep_block_scores(kept):
    r"""Wrap the recorder's block hook so that every block's concept x image dot products land in `kept`."""
    original = ConceptAttentionRecorder._block_hook

    def hook(self, module, args, kwargs, output):
        before = None if self._sum is None else self._sum.clone()
        block = self._layers_this_call
        result = original(self, module, args, kwargs, output)
        if self._sum is not None and self._layers_this_call == block + 1:
            scores = self._sum if before is None else self._sum - before
            kept.append((block, self._grid, scores[0].clone()))
        return result

    ConceptAttentionRecorder._block_hook = hook
    return original


def upsampled(scores: torch.Tensor, grid, index: int, size: int, softmax: bool) -> np.ndarray:
    values = scores.softmax(0) if softmax else scores
    plane = values[index].reshape(1, 1, *grid).float()
    return F.interpolate(plane, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    toy = TOY_MODELS["toy-flux"]
    pipe = toy.load()
    explainer = explainer_for(pipe, verbose=False)
    options = dict(prompt_dependence=False, max_sequence_length=16)
    kept = []
    keep_block_scores(kept)
    precision = collections.defaultdict(list)
    for sample in toy_scenes(args.num_scenes, seed=args.seed, resolution=64):
        words = sample.prompt.split()
        kept.clear()
        method = ConceptAttention()
        names = method.concept_list([sample.prompt])
        concept = explainer.explain_image(sample.image, sample.prompt, attribution_method=method, **options)
        default = explainer.explain_image(sample.image, sample.prompt, **options)
        attention = explainer.explain_image(sample.image, sample.prompt, attribution_method="attention", **options)
        blocks = collections.defaultdict(list)
        for block, _, scores in kept:
            blocks[block].append(scores)
        grid = kept[0][1]
        every = torch.stack([s for block in blocks.values() for s in block]).mean(0)
        content = [k for k, name in enumerate(names) if name not in FUNCTION_WORDS]
        inside = attention.attention_maps.num_tokens
        for obj in sample.objects:
            own = [names.index(words[i]) for i in obj.words]
            size = obj.mask.shape[0]

            def score(label, scores, indices, softmax, grid=grid, size=size, mask=obj.mask):
                plane = np.mean([upsampled(scores, grid, k, size, softmax) for k in indices], 0)
                precision[label].append(average_precision(plane.ravel(), mask.ravel()))

            for block, entries in sorted(blocks.items()):
                mean = torch.stack(entries).mean(0)
                score(f"block {block}, softmax across concepts", mean, own, True)
                score(f"block {block}, dot products (no softmax)", mean, own, False)
            score("all blocks, softmax across concepts", every, own, True)
            score(
                "all blocks, softmax across the content words only",
                every[content],
                [content.index(k) for k in own],
                True,
            )
            score("all blocks, dot products (no softmax)", every, own, False)
            library = np.mean([concept.concept_maps[names[k]] for k in own], 0)
            precision["library concept_attention (all blocks, softmax)"].append(
                average_precision(library.ravel(), obj.mask.ravel())
            )
            groups = default.word_tokens
            word_indices = [default.word_attributions.tokens.index(w) for w in obj.name.split()]
            word_map = np.mean([default.word_maps[groups[w]].sum(0) for w in word_indices], 0)
            precision["word_attention (default)"].append(average_precision(word_map.ravel(), obj.mask.ravel()))
            raw = np.mean(
                [
                    attention.attention_maps.for_tokens(
                        [attention.token_positions[t] for t in groups[w] if attention.token_positions[t] < inside]
                    )
                    for w in word_indices
                ],
                0,
            )
            precision["attention (raw, all layers)"].append(average_precision(raw.ravel(), obj.mask.ravel()))
            precision["chance (the mask's share of the image)"].append(float(obj.mask.mean()))
    print(f"toy Flux, {args.num_scenes} rendered scenes from seed {args.seed}: mean average precision per object map")
    for label, values in precision.items():
        print(f"  {label:52s} {np.mean(values):.3f}  (n={len(values)})")


if __name__ == "__main__":
    main()
