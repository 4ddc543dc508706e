"""Sana through the family seam: the states Sana keeps of Gemma 2's, the instruction never ranked, cross-attention."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from independent_gradients import central_difference, leaf_gradient
from shared_checks import layer_calls

from diffusers_interpret import SanaPipelineExplainer, explainer_for
from diffusers_interpret.testing.sana import TINY_SANA_CALL, make_tiny_sana_pipeline

PROMPT = "A cute corgi on the left"
SIZE, STEPS = 32, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, **TINY_SANA_CALL)
KEPT = TINY_SANA_CALL["max_sequence_length"]


@pytest.fixture(scope="module")
def sana():
    return make_tiny_sana_pipeline()


@pytest.fixture(scope="module")
def sana64():
    return make_tiny_sana_pipeline(dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def instructed_ids(pipe, prompt=PROMPT):
    # What the pipeline's own `_get_gemma_prompt_embeds` tokenizes: its instruction, then the prompt lower-cased,
    # padded on the right to the instruction's length + max_sequence_length - 2; it keeps the first position's states
    # and the last max_sequence_length - 1.
    lines = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    instruction = "\n".join(lines)
    length = len(pipe.tokenizer.encode(instruction)) + KEPT - 2
    text = instruction + prompt.lower()
    ids = pipe.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return text, instruction, ids, [0, *range(length - KEPT + 1, length)]


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "ablation"])
def test_image_is_the_pipelines_image(sana, method):
    # Guidance 4.5 (the default: [negative, prompt] rows in one call), 1 (the prompt's row alone), and no instruction.
    for seed, extra in ((1, {}), (2, {"guidance_scale": 1.0}), (3, {"complex_human_instruction": None})):
        expected = sana(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(sana, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 1e-3 * np.abs(scores).sum(), method
    assert isinstance(explainer_for(sana), SanaPipelineExplainer)


def test_the_prompts_tokens_are_attributed_at_the_rows_the_transformer_reads(sana):
    # The rows are the positions Sana keeps; the prompt's tokens are those of its characters after the instruction;
    # the instruction and the padding are never ranked; the words are shown as typed, a word in pieces one word.
    out = explain(sana)
    text, instruction, ids, kept = instructed_ids(sana)
    offsets = sana.tokenizer(text, return_offsets_mapping=True).offset_mapping
    start = len(instruction)
    inside = [p for p, (a, b) in enumerate(offsets) if b > a and b > start]
    assert list(out.token_positions) == [kept.index(p) for p in inside]
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    scores = out.token_attributions.scores
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)
    states, *_ = sana.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=KEPT)
    assert states.shape[1] == len(kept) == KEPT


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(sana64):
    # Gemma's token embedding output of the instructed prompt replaced by a leaf, the pipeline's own __call__ with
    # grad (guidance: the negative prompt's row left alone), the box sum differentiated; then the directional
    # derivative along that gradient by central differences. (The pipeline keeps its latents and the transformer's
    # output in float32 whatever the model's dtype: measured, the differences are within 1e-4 of the gradient's norm
    # at 1e-3, 8e-3 at 1e-5, where float32 rounding takes over.)
    pipe, box, eps = sana64, ((0, 0), (16, 32)), 1e-3
    out = explain(pipe, explanation_2d_bounding_box=box)
    _, _, tokens, kept = instructed_ids(pipe)
    ids = tokens.input_ids
    embed = pipe.text_encoder.get_input_embeddings()
    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **COMMON)
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    # The instruction's tokens, dropped or kept, carry gradient too (the LLM is causal): never rows of the prompt's.
    assert float(grad[0, 1 : kept[1]].abs().sum()) > 0
    difference = central_difference(pipe, embed, ids, grad, eps, box, prompt=PROMPT, **COMMON)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)


def test_cross_attention_maps_equal_an_independent_computation(sana):
    # Each block's cross-attention from its own projections, with the mask as the transformer makes it (padding at
    # -10000), softmax over the kept text positions; the prompt's row of the guided batch, heads and layers averaged.
    out = explain(sana, attribution_method="attention", output_type="np")
    maps = out.attention_maps.maps[0]
    assert maps.shape == (KEPT, SIZE, SIZE)
    layers = [block.attn2 for block in sana.transformer.transformer_blocks]
    captured = layer_calls(layers, lambda: sana(prompt=PROMPT, generator=seeded(0), output_type="np", **COMMON))
    per_call = []
    for attn, args, kwargs in captured:
        hidden = args[0] if args else kwargs["hidden_states"]
        text, mask = kwargs["encoder_hidden_states"], kwargs["attention_mask"]
        heads, d = attn.heads, attn.to_q.out_features // attn.heads
        q = attn.to_q(hidden[1:]).view(1, -1, heads, d).transpose(1, 2)
        k = attn.to_k(text[1:]).view(1, -1, heads, d).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)) / d**0.5 + mask[1:, None]).softmax(-1)
        per_call.append(probs.mean(1)[0])
    layers = len(sana.transformer.transformer_blocks)
    probs = torch.stack([torch.stack(per_call[i : i + layers]).mean(0) for i in range(0, len(per_call), layers)])
    grid = SIZE // sana.vae_scale_factor
    expected = F.interpolate(
        probs.mean(0).T.reshape(KEPT, grid, grid)[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_what_sana_cannot_explain_is_refused_with_what_to_do(sana):
    calls = []
    handle = sana.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="clean_caption"):
            explain(sana, clean_caption=True)
        # Resolution binning (the pipeline's default) would make 32x32 at a 1024-pixel bin and resize it.
        with pytest.raises(ValueError, match=r"explain it at `height=\d+, width=\d+`"):
            explain(sana, use_resolution_binning=True)
        assert not calls
    finally:
        handle.remove()


def test_each_image_of_a_batch_reads_its_own_prompts_tokens(sana):
    prompts = [PROMPT, "a dog"]
    expected = sana(prompt=prompts, generator=seeded(0), output_type="np", **COMMON).images
    outputs = SanaPipelineExplainer(sana, verbose=False)(
        prompts, generator=seeded(0), attribution_method="grad_x_input", output_type="np", **COMMON
    )
    for output, image in zip(outputs, expected):
        np.testing.assert_array_equal(output.image, image)
    assert [[w for w, _ in o.word_attributions] for o in outputs] == [PROMPT.split(), ["a", "dog"]]
