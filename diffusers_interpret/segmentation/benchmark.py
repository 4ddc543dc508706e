r"""
How well an explainer's maps find the objects of images it is given (`explain_image`), by the field's protocols, each
printed with its card (what was asked, how maps became masks) so that numbers can be compared.

- `"binary"` (Chefer et al.'s ImageNet-Segmentation protocol, as ConceptAttention runs it): one class's map per
  image (a sample with several classes counts each), thresholded at its own mean; pixel accuracy, mIoU (foreground,
  background) and mAP; `miou_published` is the figure ConceptAttention's scripts report (`accuracy / (2 - accuracy)`).
- `"open_vocabulary"` (multi-class): every class map min-max normalised, each pixel given the class whose map is
  highest there, or background where no class map reaches `threshold` (or where a background concept is highest,
  for concept attention); mIoU over the classes and background.
- `"per_word"` (DAAM): each word of each class, its map min-max normalised and thresholded at `threshold`, against
  the class's mask; mean IoU over words.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..defaults import DEFAULT_NOISE_LEVELS
from ..edge_aware import edge_aware_maps, region_maps
from ..progress import progress_bar
from .datasets import SegmentationSample
from .metrics import BinaryScores, MultiClassScores, PerWordScores, min_max

# The map methods: a kind of map (the explanation it is read from), as made, given the image's edges
# (`edge_aware_maps`) or given its regions (`region_maps`).
MAP_SOURCES = ("word_attention", "attention", "concept_attention")
MAP_METHODS = tuple(f"{source}{suffix}" for source in MAP_SOURCES for suffix in ("", "_edges", "_regions"))
PROTOCOLS = ("binary", "open_vocabulary", "per_word")
# ConceptAttention's background concepts on ImageNet-Segmentation (its experiments' default).
DEFAULT_BACKGROUND_CONCEPTS = ("background", "floor", "tree", "person", "grass", "face")


@dataclass(frozen=True)
class ProtocolCard:
    r"""What a benchmark number was measured with: printed beside it and written with it."""

    protocol: str
    method: str
    model: str
    prompt: str
    concepts: str
    noise_levels: Tuple[float, ...]
    noise_seed: int
    layers: str
    threshold: str
    image_size: str
    mask_size: str
    samples: int


@dataclass
class SegmentationResults:
    r"""
    The benchmark's numbers: `scores[method][protocol]` (percentages; see each protocol), their cards, and the cost
    of each map method per image.
    """

    scores: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    cards: Dict[str, Dict[str, ProtocolCard]] = field(default_factory=dict)
    seconds_per_image: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "scores": self.scores,
            "cards": {m: {p: asdict(card) for p, card in cards.items()} for m, cards in self.cards.items()},
            "seconds_per_image": self.seconds_per_image,
        }

    def to_json(self, path: Union[str, Path]) -> Path:
        r"""Write the numbers and their cards as JSON at `path`."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    def table(self) -> str:
        r"""A markdown table of every method and protocol with its rule, then the cards' common fields."""
        rows = ["| method | protocol | numbers | how maps became masks |", "|---|---|---|---|"]
        first = None
        for method, by_protocol in self.scores.items():
            for protocol, numbers in by_protocol.items():
                card = first = self.cards[method][protocol]
                shown = ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in numbers.items()
                    if k not in ("images", "words", "classes")
                )
                rows.append(f"| {method} | {protocol} | {shown} | {card.threshold} |")
        if first is not None:
            rows.append(
                f"\ncard: model {first.model}; {first.samples} images at {first.image_size}, scored at "
                f"{first.mask_size} size; prompt: {first.prompt}; concepts: the class's words in the prompt "
                "(concept attention: the prompt's words and the background concepts, softmax across them); noise "
                f"levels {', '.join(f'{v:g}' for v in first.noise_levels)} (seed {first.noise_seed}); layers: "
                f"{first.layers}."
            )
        return "\n".join(rows)


def _resize(values: np.ndarray, size: Optional[Tuple[int, int]], nearest: bool = True) -> np.ndarray:
    if size is None or tuple(values.shape) == tuple(size):
        return values
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    mode = "nearest" if nearest else "bilinear"
    return torch.nn.functional.interpolate(tensor, size=size, mode=mode)[0, 0].numpy()


class _Maps:
    # One sample's maps from one explanation: each class's map, each word's map, background concepts' maps.
    def __init__(self, classes: List[np.ndarray], words: List[List[np.ndarray]], background: List[np.ndarray]):
        self.classes, self.words, self.background = classes, words, background


def _explain(explainer, sample: SegmentationSample, source: str, background: Sequence[str], options: Dict[str, Any]):
    if source == "concept_attention":
        return explainer.explain_image(sample.image, sample.prompt, concepts=list(background), **options)
    return explainer.explain_image(sample.image, sample.prompt, attribution_method=source, **options)


def _source(method: str) -> str:
    return next(source for source in MAP_SOURCES if method in (source, f"{source}_edges", f"{source}_regions"))


def _maps(method: str, output, sample: SegmentationSample, background: Sequence[str]) -> _Maps:
    words: List[np.ndarray]
    source = _source(method)
    if source == "concept_attention":
        from ..text import concept_name

        maps = {name: np.asarray(m, np.float64) for name, m in output.concept_maps.items()}
        words = [maps[concept_name(word)] for word in sample.words]
        extra = [maps[name] for name in background if name in maps and name not in map(concept_name, sample.words)]
    elif source == "attention":
        tokens = [
            output.attention_maps.rows(0, [output.token_positions[i] for i in t]).sum(0) for t in output.word_tokens
        ]
        words, extra = [t.double().numpy() for t in tokens], []
    else:
        unit_maps = np.asarray(output.word_maps, np.float64)
        words, extra = [unit_maps[t].sum(0) if t else np.zeros(unit_maps.shape[1:]) for t in output.word_tokens], []
    classes = [sum(words[i] for i in item.words) for item in sample.objects]
    per_word = [[words[i] for i in item.words] for item in sample.objects]
    if method.endswith(("_edges", "_regions")):
        # Every map given the image: each class's map, each word's map, each background concept's.
        flat = classes + [m for group in per_word for m in group] + extra
        if method.endswith("_edges"):
            cell = output.word_map_cell_size or output.attention_maps.cell_size
            flat = list(np.asarray(edge_aware_maps(np.stack(flat), output.image, cell)))
        else:
            flat = list(np.asarray(region_maps(np.stack(flat), output.image)))
        classes, rest = flat[: len(classes)], flat[len(classes) :]
        per_word = [[rest.pop(0) for _ in group] for group in per_word]
        extra = rest
    return _Maps(classes, per_word, extra)


def _label_map(maps: _Maps, threshold: float) -> np.ndarray:
    # Open vocabulary: each pixel the class whose min-max normalised map is highest; background where none reaches the
    # threshold, or where a background concept's (normalised) map is higher.
    stack = np.stack([min_max(m) for m in maps.classes])
    best, label = stack.max(0), stack.argmax(0) + 1
    floor = np.full(best.shape, threshold)
    if maps.background:
        floor = np.maximum(floor, np.stack([min_max(m) for m in maps.background]).max(0))
    return np.where(best >= floor, label, 0)


def segmentation_benchmark(
    explainer,
    samples: Iterable[SegmentationSample],
    methods: Sequence[str] = ("word_attention", "word_attention_edges", "word_attention_regions", "attention"),
    protocols: Sequence[str] = PROTOCOLS,
    noise_levels: Optional[Sequence[float]] = None,
    noise_seed: int = 0,
    background_concepts: Sequence[str] = DEFAULT_BACKGROUND_CONCEPTS,
    threshold: float = 0.4,
    mask_size: Optional[Tuple[int, int]] = None,
    model: str = "",
    verbose: bool = True,
    **pipeline_kwargs,
) -> SegmentationResults:
    r"""
    Explain every sample's image with its prompt and score each map method's maps against the true masks.

    Args:
        explainer (`BasePipelineExplainer`): The explainer (its pipeline's family decides which methods exist:
            `"concept_attention"` is for SD3 and Flux).
        samples (`Iterable[SegmentationSample]`): From [`toy_scenes`], [`imagenet_segmentation`], [`pascal_voc`] or
            your own.
        methods (`Sequence[str]`, *optional*): Of `MAP_METHODS`: a kind of map, `"word_attention"` (its word maps),
            `"attention"` (raw cross-/joint-attention to each word's tokens) or `"concept_attention"` (SD3, Flux), as
            made, or with `"_edges"` given the image's edges ([`edge_aware_maps`]), or with `"_regions"` given its
            regions of like colour ([`region_maps`]).
        protocols (`Sequence[str]`, *optional*): Of `"binary"`, `"open_vocabulary"`, `"per_word"`.
        noise_levels (`Sequence[float]`, *optional*): Where the images are noised (`explain_image`'s default).
        noise_seed (`int`, *optional*, defaults to 0): The noise's seed.
        background_concepts (`Sequence[str]`, *optional*): Concept attention's concepts beside the prompt's words
            (ConceptAttention's six by default).
        threshold (`float`, *optional*, defaults to 0.4): DAAM's threshold of min-max normalised maps (per-word
            protocol), and the background floor of the open-vocabulary protocol.
        mask_size (`(int, int)`, *optional*): Score at this (height, width) (maps and masks resized, nearest), as
            ConceptAttention's 224x224; the image's size by default.
        model (`str`, *optional*): The model's name, for the cards.
        pipeline_kwargs: Passed to `explain_image` (`max_sequence_length`, ...).
    """
    unknown = sorted(set(methods) - set(MAP_METHODS)) + sorted(set(protocols) - set(PROTOCOLS))
    if unknown or not methods or not protocols:
        raise ValueError(
            f"`methods` must be of {MAP_METHODS} and `protocols` of {PROTOCOLS} (neither empty), got {unknown}."
        )
    other_texts = sorted(name for name in pipeline_kwargs if name in ("prompt_2", "prompt_3"))
    if other_texts:  # the samples' words are their prompts' words: every encoder must read the sample's prompt
        raise ValueError(
            f"The benchmark explains each sample with its own prompt: leave {', '.join(other_texts)} out."
        )
    levels = tuple(DEFAULT_NOISE_LEVELS if noise_levels is None else noise_levels)
    options = dict(noise_levels=levels, noise_seed=noise_seed, **pipeline_kwargs)
    binary = {m: BinaryScores() for m in methods}
    multi = {m: MultiClassScores() for m in methods}
    per_word = {m: PerWordScores(threshold) for m in methods}
    seconds = {m: 0.0 for m in methods}
    count, image_size = 0, None
    for sample in progress_bar(list(samples), "Segmentation", disable=not verbose):
        count += 1
        image_size = f"{sample.image.width}x{sample.image.height}"
        size = mask_size or (sample.image.height, sample.image.width)
        masks = [_resize(item.mask.astype(np.float32), size) > 0.5 for item in sample.objects]
        ignore = None if sample.ignore is None else _resize(sample.ignore.astype(np.float32), size) > 0.5
        truth = np.zeros(size, np.int64)
        for index, mask in enumerate(masks):
            truth[mask] = index + 1
        outputs: Dict[str, Any] = {}
        for method in methods:
            source = _source(method)
            if source not in outputs:  # methods reading one explanation share it (and its cost)
                started = time.perf_counter()
                outputs[source] = _explain(explainer, sample, source, background_concepts, options)
                seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - started
            maps = _maps(method, outputs[source], sample, background_concepts)
            classes = [_resize(min_max(m), size) for m in maps.classes]
            for soft, mask in zip(classes, masks):
                binary[method].add(soft > soft.mean(), soft, mask)
            sized = _Maps(classes, [], [_resize(min_max(m), size) for m in maps.background])
            multi[method].add(_label_map(sized, threshold), truth, [item.name for item in sample.objects], ignore)
            for word_maps, mask in zip(maps.words, masks):
                for word_map in word_maps:
                    per_word[method].add(_resize(min_max(word_map), size), mask)
    results = SegmentationResults()
    for method in methods:
        found = {
            "binary": binary[method].result(),
            "open_vocabulary": multi[method].result(),
            "per_word": per_word[method].result(),
        }
        results.scores[method] = {p: found[p] for p in protocols}
        results.cards[method] = {
            p: _card(
                p, method, model, levels, noise_seed, background_concepts, threshold, image_size, mask_size, count
            )
            for p in protocols
        }
        results.seconds_per_image[method] = seconds[method] / max(count, 1)
    return results


def _card(protocol, method, model, levels, seed, background, threshold, image_size, mask_size, count) -> ProtocolCard:
    concepts = "the class's words in the prompt"
    if method.startswith("concept_attention"):
        concepts = f"the prompt's words + background concepts {list(background)} (softmax across them)"
    rule = {
        "binary": "class map > its mean (per image)",
        "open_vocabulary": f"argmax of min-max class maps; background below {threshold:g}"
        + (" or under a background concept" if method.startswith("concept_attention") else ""),
        "per_word": f"min-max word map >= {threshold:g}",
    }[protocol]
    return ProtocolCard(
        protocol=protocol,
        method=method,
        model=model,
        prompt="the sample's prompt (toy: the scene's; ImageNet-Seg: 'a {class}'; VOC: 'a {c1} and a {c2} ...')",
        concepts=concepts,
        noise_levels=tuple(levels),
        noise_seed=seed,
        layers="every cross-attention (UNet) / joint-attention (DiT) layer, heads averaged"
        if not method.startswith("concept_attention")
        else "every dual-stream block",
        threshold=rule,
        image_size=image_size or "",
        mask_size=f"{mask_size[1]}x{mask_size[0]}" if mask_size else "the image's",
        samples=count,
    )
