"""Flux 2 [klein] through the family seam: a chat LLM's template left out, gradients through Qwen3, joint attention."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitFlux2Attention
from independent_gradients import central_difference, leaf_gradient
from shared_checks import every_row_mixing

from diffusers_interpret import Flux2KleinPipelineExplainer, explainer_for
from diffusers_interpret.testing.flux2 import TINY_FLUX2_CALL, make_tiny_flux2_klein_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 16, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, **TINY_FLUX2_CALL)
LENGTH = TINY_FLUX2_CALL["max_sequence_length"]


@pytest.fixture(scope="module")
def klein():
    return make_tiny_flux2_klein_pipeline()


@pytest.fixture(scope="module")
def klein64():
    return make_tiny_flux2_klein_pipeline(dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def templated_ids(pipe, prompt=PROMPT, length=LENGTH):
    # What the pipeline's own `_get_qwen3_prompt_embeds` tokenizes: the prompt inside the chat template, padded.
    messages = [{"role": "user", "content": prompt}]
    text = pipe.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    return text, pipe.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "concept_attention", "ablation"])
def test_image_is_the_pipelines_image(klein, method):
    # Guidance 4 (the default: a prompt call and a call for the empty prompt per step), 3, and 1 (one call a step).
    for seed, extra in (
        (1, {}),
        (2, {"guidance_scale": 3.0}),
        (3, {"guidance_scale": 1.0}),
    ):
        expected = klein(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(klein, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.any()
    assert isinstance(explainer_for(klein), Flux2KleinPipelineExplainer)


def test_only_the_prompts_own_tokens_are_attributed(klein):
    # The template (role markers, the empty thinking block) and the padding are never ranked; the prompt's tokens are
    # exactly those of its characters in the templated text, and a word split into pieces is one word.
    out = explain(klein)
    text, ids = templated_ids(klein)
    start = text.index(PROMPT)
    tokens = klein.tokenizer.convert_ids_to_tokens(ids.input_ids[0])
    offsets = klein.tokenizer(
        text, padding="max_length", max_length=LENGTH, truncation=True, return_offsets_mapping=True
    ).offset_mapping
    inside = [p for p, (a, b) in enumerate(offsets) if b > a and a < start + len(PROMPT) and b > start]
    assert list(out.token_positions) == inside and len(inside) == 7 < LENGTH
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    assert [tokens[p] for p in inside][2:4] == ["Ġcor", "gi"]
    scores = out.token_attributions.scores
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)
    # Asked for, the template's tokens are attributed too (the padding never).
    every = explain(klein, consider_special_tokens=True)
    pad = klein.tokenizer.pad_token_id
    assert list(every.token_positions) == [p for p, i in enumerate(ids.input_ids[0].tolist()) if i != pad]
    assert out.pooled_share is None


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(klein64):
    # The LLM's token embedding output of the templated prompt replaced by a leaf, the pipeline's own __call__ with
    # grad (with guidance: the empty prompt's call is left alone), the box sum differentiated; then the directional
    # derivative along that gradient by central differences.
    # The tiny LLM's embeddings are small (init std 0.02; 0.40 for the whole prompt) and its RMS norms scale them up:
    # the box sum bends within 1e-3 of them (measured: 21.0 at eps 1e-3, 186 at 1e-4, 679 at 1e-5, 762.8 at 1e-6,
    # 763.78 at 3e-7 for a gradient of norm 763.72).
    pipe, box, eps = klein64, ((0, 0), (8, 16)), 3e-7
    call = dict(guidance_scale=3.0)
    out = explain(pipe, explanation_2d_bounding_box=box, **call)
    ids = templated_ids(pipe)[1].input_ids
    embed = pipe.text_encoder.get_input_embeddings()
    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **COMMON, **call)
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    # The template's tokens carry gradient too (the LLM is causal, the transformer attends to every position): the
    # explanation leaves them out of its rows, it does not lose them from the model.
    template = [p for p in range(ids.shape[1]) if p not in {u.token_index for u in units}]
    assert float(grad[0, template].abs().sum()) > 0
    difference = central_difference(pipe, embed, ids, grad, eps, box, prompt=PROMPT, **COMMON, **call)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)


def test_joint_attention_maps_equal_an_independent_computation(klein):
    call = dict(guidance_scale=1.0)
    out = explain(klein, attribution_method="attention", output_type="np", **call)
    maps = out.attention_maps.maps[0]  # (template tokens, H, W)
    assert maps.shape == (LENGTH, SIZE, SIZE)
    processors = klein.transformer.attn_processors
    store = []
    klein.transformer.set_attn_processor({name: ExplicitFlux2Attention(store) for name in processors})
    try:
        replayed = klein(prompt=PROMPT, generator=seeded(0), output_type="np", **COMMON, **call).images[0]
    finally:
        klein.transformer.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)  # the independent processors are the model's math
    grid = SIZE // 2  # the tiny VAE keeps the size, the 2x2 patches halve it: 8x8 image tokens
    content = list(out.token_positions)
    image_to_text = [p[0, :, LENGTH:, :LENGTH] for p in store]
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[..., content] / (1 - p.sum(-1, keepdim=True) + p[..., content].sum(-1, keepdim=True)) for p in image_to_text
    ]

    def aggregate(per_layer):
        per_call = [torch.stack(per_layer[i : i + 2]).mean(0) for i in range(0, len(per_layer), 2)]
        probs = torch.stack(per_call).mean(0)
        grid_maps = probs.T.reshape(probs.shape[-1], grid, grid)
        return F.interpolate(grid_maps[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    expected = torch.zeros(LENGTH, SIZE, SIZE)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)
    assert 0.5 < out.attention_sink_share < 1  # the template and padding take most of the image's text attention


def test_a_reference_image_is_refused_with_what_to_do(klein):
    from PIL import Image

    with pytest.raises(ValueError, match="Reference images"):
        explain(klein, image=Image.new("RGB", (SIZE, SIZE)))


def test_record_cross_attention_leaves_out_the_empty_prompts_calls(klein):
    # With guidance the pipeline calls the transformer for the empty prompt after the prompt each step:
    # `record_cross_attention(pipe)`, which never sees the call's arguments, records the prompt's calls only.
    from diffusers_interpret.attention import record_cross_attention
    from diffusers_interpret.families import family_for
    from diffusers_interpret.tracing.attention import make_recorder
    from diffusers_interpret.tracing.steps import StepCounter

    family = family_for(klein)
    for guidance, steps, calls in ((4.0, [0, 2, 4], 2), (1.0, [0, 1, 2], 1)):
        with record_cross_attention(klein, keep_per_step=True) as recorder:
            klein(prompt=PROMPT, generator=seeded(0), guidance_scale=guidance, **COMMON)
        counter = StepCounter(klein, family.denoiser(klein), calls_per_step=calls)
        with counter, make_recorder(klein, family, keep_per_step=True, counter=counter) as told:
            klein(prompt=PROMPT, generator=seeded(0), guidance_scale=guidance, **COMMON)
        assert recorder.maps.steps == steps == told.maps.steps
        torch.testing.assert_close(recorder.maps.maps, told.maps.maps)


def test_word_attention_reads_the_causal_llm_only_up_to_the_prompts_last_token(klein, monkeypatch):
    # The maps read only the prompt's own positions, and a causal LLM's state there depends on the tokens up to it:
    # the hand-back of positions to words computes the columns up to the prompt's last token only (at the default
    # 512 tokens, 2.6 s instead of 157 s on this model), and gives what all the columns give.
    fast = explain(klein, attribution_method="word_attention", prompt_dependence=False)
    computed = every_row_mixing(monkeypatch)
    full = explain(klein, attribution_method="word_attention", prompt_dependence=False)
    assert computed and computed[0][1] == max(fast.token_positions) + 1 < LENGTH
    np.testing.assert_allclose(fast.token_attributions.scores, full.token_attributions.scores, rtol=1e-9, atol=0)


def test_each_image_of_a_batch_reads_its_own_prompts_tokens(klein):
    # Two prompts of different lengths inside the template, two images each, guidance (an empty-prompt call per
    # step): every image's words are its own prompt's, and its maps are of its own prompt's tokens only.
    explainer = Flux2KleinPipelineExplainer(klein, verbose=False)
    outputs = explainer(
        ["a cute corgi on the left", "a dog"],
        generator=seeded(0),
        attribution_method="attention",
        num_images_per_prompt=2,
        **COMMON,
    )
    assert [[w for w, _ in o.word_attributions] for o in outputs] == [PROMPT.split()] * 2 + [["a", "dog"]] * 2
    for index, output in enumerate(outputs):
        maps = output.attention_maps.maps[index]
        content = list(output.token_positions)
        others = [p for p in range(LENGTH) if p not in content]
        assert float(maps[content].sum(0).min()) > 0 and float(maps[content].sum(0).max()) < 1  # image keys' share
        assert float(maps[others].abs().max()) == 0
        assert 0 < output.attention_sink_share < 1


def test_a_length_that_cuts_into_the_prompt_says_which_words_and_none_is_refused(klein):
    # Truncation cuts the end of the templated text: the template's tokens after the prompt go first, then the
    # prompt's last words; a length that leaves no prompt token after the template's first tokens is refused.
    calls = []
    handle = klein.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.warns(UserWarning, match="'corgi on the left' are cut"):
            out = explain(klein, max_sequence_length=5, prompt_dependence=False)
        assert [s > 0 for _, s in out.word_attributions] == [True, True, False, False, False, False]
        calls.clear()
        with pytest.raises(ValueError, match="leaves no room for the prompt: the chat template takes 3 tokens"):
            explain(klein, max_sequence_length=3)
        assert not calls
    finally:
        handle.remove()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the template's suffix cut, the prompt whole: nothing to say
        explain(klein, max_sequence_length=12, prompt_dependence=False)
