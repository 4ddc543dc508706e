"""PRX through the family seam: an encoder run without a graph by the pipeline, cleaned prompts, image queries."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitPRXAttention

from diffusers_interpret import PRXPipelineExplainer, explainer_for
from diffusers_interpret.testing.prx import TINY_PRX_CALL, make_tiny_prx_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 16, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, **TINY_PRX_CALL)


@pytest.fixture(scope="module")
def prx():
    return make_tiny_prx_pipeline()


@pytest.fixture(scope="module")
def prx64():
    return make_tiny_prx_pipeline(dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    (x0, y0), (x1, y1) = box
    return images[0, :, y0:y1, x0:x1].sum()


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "ablation"])
def test_image_is_the_pipelines_image(prx, method):
    # Guidance 4 (the default: [negative, prompt] rows in one call), 1 (the prompt's row alone), and the light
    # cleaning.
    for seed, extra in ((1, {}), (2, {"guidance_scale": 1.0}), (3, {"skip_text_cleaning": True})):
        expected = prx(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(prx, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 1e-3 * np.abs(scores).sum(), method
    assert isinstance(explainer_for(prx), PRXPipelineExplainer)


def test_the_prompts_tokens_are_attributed_and_its_words_shown_as_typed(prx):
    # The cleaning lower-cases the prompt: the tokens are the lower-cased text's, the words the prompt's as typed, a
    # word split into pieces one word; the end token and the padding are never ranked.
    out = explain(prx, prompt="A Cute corgi on the LEFT")
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    assert [w for w, _ in out.word_attributions] == ["A", "Cute", "corgi", "on", "the", "LEFT"]
    scores = out.token_attributions.scores
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)
    assert list(out.token_positions) == list(range(7))
    assert out.pooled_share is None


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(prx64):
    # The pipeline encodes the prompt without a graph; independently: the encoder run by hand from a leaf of its
    # token embeddings, its states given to the pipeline's own __call__ with grad as `prompt_embeds`, the box sum
    # differentiated back to the leaf. Then the directional derivative along that gradient by central differences of
    # the pipeline's own images.
    # (The transformer's rotary embedding computes in float32 whatever the model's dtype: measured, the differences
    # are within 3e-4 of the gradient's norm at 1e-3, 0.6% at 1e-4, 10% at 1e-5, where float32 rounding swamps them.)
    pipe, box, eps = prx64, ((0, 0), (8, 16)), 1e-3
    call = dict(guidance_scale=1.0)
    out = explain(pipe, explanation_2d_bounding_box=box, **call)
    tokens = pipe.tokenizer(PROMPT.lower(), padding="max_length", max_length=24, return_tensors="pt")
    embed = pipe.text_encoder.get_input_embeddings()
    with torch.enable_grad():
        leaf = embed(tokens.input_ids).detach().requires_grad_(True)
        handle = embed.register_forward_hook(lambda module, args, output: leaf)
        try:
            states = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask.bool())
        finally:
            handle.remove()
        run = type(pipe).__call__.__wrapped__
        images = run(
            pipe,
            prompt_embeds=states["last_hidden_state"],
            prompt_attention_mask=tokens.attention_mask.bool(),
            generator=seeded(0),
            output_type="pt",
            **COMMON,
            **call,
        ).images
        grad = torch.autograd.grad(box_sum(images, box), leaf)[0]
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    norm = float(grad.norm())

    def shifted(sign):
        def add(module, args, output):
            return output + sign * eps * grad / norm if torch.equal(args[0], tokens.input_ids) else output

        handle = embed.register_forward_hook(add)
        try:
            images = pipe(prompt=PROMPT, generator=seeded(0), output_type="pt", **COMMON, **call).images
            return float(box_sum(images, box))
        finally:
            handle.remove()

    assert (shifted(1) - shifted(-1)) / (2 * eps) == pytest.approx(norm, rel=2e-3)


def test_attention_maps_equal_an_independent_computation(prx):
    out = explain(prx, attribution_method="attention", output_type="np")
    maps = out.attention_maps.maps[0]  # (text tokens, H, W)
    assert maps.shape == (24, SIZE, SIZE)
    processors = prx.transformer.attn_processors
    store = []
    prx.transformer.set_attn_processor({name: ExplicitPRXAttention(store) for name in processors})
    try:
        replayed = prx(prompt=PROMPT, generator=seeded(0), output_type="np", **COMMON).images[0]
    finally:
        prx.transformer.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)  # the independent processors are the model's math
    content = list(out.token_positions)
    # Guidance: [negative, prompt] rows; the prompt's row, its image queries over the text keys.
    image_to_text = [p[1, :, :, :24] for p in store]
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[..., content] / (1 - p.sum(-1, keepdim=True) + p[..., content].sum(-1, keepdim=True)) for p in image_to_text
    ]
    layers = len(prx.transformer.blocks)

    def aggregate(per_layer):
        per_call = [torch.stack(per_layer[i : i + layers]).mean(0) for i in range(0, len(per_layer), layers)]
        probs = torch.stack(per_call).mean(0)
        grid_maps = probs.T.reshape(probs.shape[-1], SIZE, SIZE)  # one image token per latent pixel
        return F.interpolate(grid_maps[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    expected = torch.zeros(24, SIZE, SIZE)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)


def test_what_prx_cannot_explain_is_refused_with_what_to_do(prx):
    calls = []
    handle = prx.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        # The cleaning would rewrite the prompt (a web address removed): the words typed are not the words read.
        with pytest.raises(ValueError, match="rewrites the prompt"):
            explain(prx, prompt="a corgi from www.example.com")
        # The pipeline itself fails on more than one image per call with guidance.
        with pytest.raises(ValueError, match="one image per call"):
            explain(prx, prompt=[PROMPT, "a dog"])
        with pytest.raises(ValueError, match="one image per call"):
            explain(prx, num_images_per_prompt=2)
        # No text stream: no concept tokens, no text relations.
        with pytest.raises(ValueError, match="text stream"):
            explain(prx, attribution_method="concept_attention")
        from diffusers_interpret.attention import record_text_relations

        with pytest.raises(ValueError, match="no text-to-text attention"):
            with record_text_relations(prx):
                prx(prompt=PROMPT, **COMMON)
        assert not calls
    finally:
        handle.remove()
    # Without guidance a batch is one call of the pipeline's own.
    prompts = [PROMPT, "a dog"]
    expected = prx(prompt=prompts, generator=seeded(0), guidance_scale=1.0, output_type="np", **COMMON).images
    outputs = explain(prx, prompt=prompts, guidance_scale=1.0, output_type="np")
    for output, image in zip(outputs, expected):
        np.testing.assert_array_equal(output.image, image)


def test_a_size_resolution_binning_would_change_is_refused():
    # A pipeline with bins (default size 256): 16x24 would be made at another size and resized: refused, naming it.
    pipe = make_tiny_prx_pipeline(default_sample_size=256)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"explain it at `height=\d+, width=\d+`"):
            explainer_for(pipe, verbose=False)(PROMPT, height=16, width=24, num_inference_steps=1)
    finally:
        handle.remove()
    assert not calls
    family = explainer_for(pipe).family
    family.check_arguments(pipe, {"prompt": PROMPT, "height": 256, "width": 256})  # its own bin: made as asked
