r"""
Token attributions against the toy model's ground truth: does explaining the left object, then the right object, move
the colour words' ranking? (The short version of `benchmarks/toy_explanation_truth.py`.)

The scenes are the benchmark's first three (prompt seed 31337, noise seeds 31337 + i), taken in order, not picked.
The setting is the benchmark's best: attribution level `token_embeddings`, `mean_grad`, all 20 steps traced, boxes
around the detector's object masks. It flips the colour ranking with the box on 32 of 39 scenes (82%), not on all of
them, and the second of these three scenes is one where it does not flip (the right box still ranks the left colour
word slightly higher, ratio 1.05). What held on each of the first eight scenes (the eight kept of the first nine) is
weaker, and is what is asserted here:

- the left box ranks the left colour word above the right one by a margin (ratio > 1.25; measured 1.39 to 2.84 on the
  first eight scenes);
- the box moves the ranking towards the boxed object: the left colour word's score over the right colour word's score
  is at least 1.5 times larger for the left box than for the right box (measured 1.67 to 4.4 on the first eight);
- the ranking flips outright on at least two of the three scenes (measured: the first and the third).

The library's default method (`word_attention`, chosen by `benchmarks/faithfulness.py`) must flip the ranking on all
three, and read right to a person: the boxed object's colour word first among all the prompt's words, its colour and
shape words the top two (on all boxes but at most one), and for the whole image the colour and shape words above every
function word (a, the, on, and), on these three scenes and three one-object ones.
"""

import numpy as np
import pytest
import torch

from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline, toy_model_available
from diffusers_interpret.toy.detector import check_prompt

pytestmark = pytest.mark.skipif(not toy_model_available(), reason="the shipped toy model's files are missing")

# The first three two-object scenes of `sample_scene_spec(np.random.default_rng(31337), 2)`, with their noise seeds.
SCENES = [
    ("a yellow triangle on the left and a green triangle on the right", 31337),
    ("a green triangle on the left and a blue square on the right", 31338),
    ("a yellow triangle on the left and a blue circle on the right", 31339),
]
LEFT_COLOR, RIGHT_COLOR = 1, 8  # positions of the colour words among the attributed tokens
LEFT_BOX_MARGIN = 1.25
SHIFT_MARGIN = 1.5


@pytest.fixture(scope="module")
def toy_pipe():
    return load_toy_pipeline()


def colour_ratios(pipe, prompt: str, seed: int, method="mean_grad"):
    # Score of the left colour word over the right colour word, for a box around each object.
    common = dict(guidance_scale=TOY_GUIDANCE_SCALE, num_inference_steps=TOY_NUM_INFERENCE_STEPS, output_type="np")
    image = pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).images[0]
    check = check_prompt(image, prompt)
    assert check.correct, (
        f"the toy model did not draw {prompt!r} (seed {seed}) correctly: {check.detection.describe()}"
    )
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    ratios = []
    for side in ("left", "right"):
        top, left, bottom, right = check.detection.objects[side].bbox
        output = explainer(
            prompt,
            generator=torch.Generator().manual_seed(seed),
            n_last_diffusion_steps_to_consider_for_attributions=None,  # all 20 steps
            explanation_2d_bounding_box=((left, top), (right, bottom)),
            attribution_level="token_embeddings",
            **({} if method is None else {"attribution_method": method}),
            get_images_for_all_inference_steps=False,
            **common,
        )
        np.testing.assert_array_equal(output.image, image)
        tokens = output.token_attributions.tokens
        assert tokens[LEFT_COLOR] == prompt.split()[1] and tokens[RIGHT_COLOR] == prompt.split()[8]
        scores = output.token_attributions.scores
        ratios.append(scores[LEFT_COLOR] / scores[RIGHT_COLOR])
    return ratios


def test_boxes_move_the_colour_ranking(toy_pipe, one_thread):
    flips = 0
    for prompt, seed in SCENES:
        left_ratio, right_ratio = colour_ratios(toy_pipe, prompt, seed)
        assert left_ratio > LEFT_BOX_MARGIN, (prompt, left_ratio, right_ratio)
        assert left_ratio > SHIFT_MARGIN * right_ratio, (prompt, left_ratio, right_ratio)
        flips += int(left_ratio > 1 > right_ratio)
    assert flips >= 2


def test_the_default_method_passes_the_swapped_box_control(toy_pipe, one_thread):
    # The library's default (no attribution_method given) ranks the boxed object's colour word first for both boxes
    # of each of the three scenes: the ranking flips with the box on every one.
    for prompt, seed in SCENES:
        left_ratio, right_ratio = colour_ratios(toy_pipe, prompt, seed, method=None)
        assert left_ratio > 1 > right_ratio, (prompt, left_ratio, right_ratio)


ONE_OBJECT_SCENES = [
    ("a red circle on the left", 7),
    ("a blue square on the right", 8),
    ("a green triangle on the left", 9),
]
FUNCTION_WORDS = {"a", "the", "on", "and"}


def test_the_default_method_puts_the_boxed_objects_words_on_top(toy_pipe, one_thread):
    # Unfiltered rankings: every prompt word competes, no word is hidden.
    explainer = StableDiffusionPipelineExplainer(toy_pipe, verbose=False)
    common = dict(guidance_scale=TOY_GUIDANCE_SCALE, num_inference_steps=TOY_NUM_INFERENCE_STEPS, output_type="np")
    boxes = top_two = 0
    for prompt, seed in SCENES + ONE_OBJECT_SCENES:
        words = prompt.split()
        image = toy_pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).images[0]
        check = check_prompt(image, prompt)
        assert check.correct, (prompt, check.detection.describe())
        whole = explainer(prompt, generator=torch.Generator().manual_seed(seed), **common).token_attributions
        assert whole.tokens == words
        content = [i for i, word in enumerate(words) if word in ("red", "green", "blue", "yellow") or i in (2, 9)]
        lowest_content = min(whole.scores[i] for i in content)
        assert all(whole.scores[i] < lowest_content for i, w in enumerate(words) if w in FUNCTION_WORDS), (
            prompt,
            whole.normalized,
        )
        for side, colour in zip(("left", "right"), (1, 8)):
            if side not in check.detection.objects or side not in words:
                continue
            colour = colour if len(words) > 6 else 1
            top, left, bottom, right = check.detection.objects[side].bbox
            output = explainer(
                prompt,
                generator=torch.Generator().manual_seed(seed),
                explanation_2d_bounding_box=((left, top), (right, bottom)),
                get_images_for_all_inference_steps=False,
                **common,
            )
            order = list(np.argsort(-output.token_attributions.scores))
            assert order[0] == colour, (prompt, side, output.token_attributions.normalized)
            boxes += 1
            top_two += int(set(order[:2]) == {colour, colour + 1})
    assert boxes == 9 and top_two >= boxes - 1


def test_linearized_ablation_ranks_words_as_measured_ablation_does(toy_pipe, one_thread):
    # The method's promise: the ranking ablation would give, without generating again. Rank correlation with the
    # measured word ablation inside each object's box (every word of the prompt), on the three scenes: median >= 0.8
    # (measured: median 0.92, 0.78 to 0.95; gradient x input, which also linearizes the text encoder, 0.62; the default
    # word_attention 0.52).
    from diffusers_interpret.faithfulness import spearman, word_ablation_effects

    explainer = StableDiffusionPipelineExplainer(toy_pipe, verbose=False)
    common = dict(guidance_scale=TOY_GUIDANCE_SCALE, num_inference_steps=TOY_NUM_INFERENCE_STEPS, output_type="np")
    correlations = []
    for prompt, seed in SCENES:
        image = toy_pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).images[0]
        check = check_prompt(image, prompt)
        assert check.correct, (prompt, check.detection.describe())
        for side in ("left", "right"):
            top, left, bottom, right = check.detection.objects[side].bbox
            output = explainer(
                prompt,
                generator=torch.Generator().manual_seed(seed),
                explanation_2d_bounding_box=((left, top), (right, bottom)),
                attribution_method="linearized_ablation",
                get_images_for_all_inference_steps=False,
                **common,
            )
            np.testing.assert_array_equal(output.image, image)
            correlations.append(spearman(output.token_attributions.scores, word_ablation_effects(output)))
    assert np.median(correlations) >= 0.8, correlations
