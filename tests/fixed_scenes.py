r"""What the default method reads on fixed two-object scenes of a 64x64 toy (for the toy Flux and toy SD3 tests)."""

from dataclasses import dataclass

import numpy as np
from conftest import seeded

from diffusers_interpret.toy.detector import check_prompt
from diffusers_interpret.toy.scenes import COLORS, SHAPES, sample_scene_spec


def object_words(prompt: str, side: str):
    # "a C1 S1 on the SIDE1 and a C2 S2 on the SIDE2": the colour and shape words of the object on `side`.
    words = prompt.split()
    first = 0 if words[5] == side else 7
    return words[first + 1], words[first + 2]


@dataclass
class Readings:
    scenes: int  # two-object scenes drawn right and explained
    controls: int  # scenes whose two object boxes each rank their own colour above the other object's
    both_on_top: int  # object boxes whose top two words are their object's colour and shape


def read_fixed_scenes(pipe, explainer, call, seed: int, num_scenes: int, max_tried: int) -> Readings:
    r"""
    The first two-object prompts of `seed`, in order, each generated with seed `seed + i`; a scene the independent
    detector finds drawn wrong is passed over, never one the explanation gets wrong. On each scene the explained image
    is asserted to be `pipe()`'s and the whole image to rank every colour and shape word above every function word;
    a box around each object is read from the same call's maps.
    """
    rng = np.random.default_rng(seed)
    readings, tried = Readings(0, 0, 0), 0
    while readings.scenes < num_scenes:
        assert tried < max_tried, f"the toy drew only {readings.scenes} of {tried} two-object scenes right"
        prompt, image_seed = sample_scene_spec(rng, 2, 64, order="random").prompt, seed + tried
        tried += 1
        image = pipe(prompt, generator=seeded(image_seed), output_type="np", **call).images[0]
        check = check_prompt(image, prompt)
        if not check.correct:
            continue
        readings.scenes += 1
        whole = explainer(prompt, generator=seeded(image_seed), output_type="np", **call)
        np.testing.assert_array_equal(whole.image, image)
        words = dict(whole.word_attributions)
        content = [w for w in prompt.split() if w in COLORS + SHAPES]
        assert min(words[w] for w in content) > max(words[w] for w in ("a", "the", "on", "and")), (prompt, words)
        scores = {}
        for side in ("left", "right"):
            top, left, bottom, right = check.detection.objects[side].bbox
            scores[side] = dict(whole.explain(((left, top), (right, bottom))).word_attributions)
            ranked = sorted(scores[side], key=lambda word: -scores[side][word])
            readings.both_on_top += set(ranked[:2]) == set(object_words(prompt, side))
        left_colour, right_colour = object_words(prompt, "left")[0], object_words(prompt, "right")[0]
        readings.controls += (
            scores["left"][left_colour] > scores["left"][right_colour]
            and scores["right"][right_colour] > scores["right"][left_colour]
        )
    return readings
