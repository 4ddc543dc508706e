"""Z-Image through the family seam: lists of latents and captions, Qwen3's chat template, one padded stream."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitZImageAttention
from independent_gradients import central_difference, leaf_gradient

from diffusers_interpret import ZImagePipelineExplainer, explainer_for
from diffusers_interpret.testing.z_image import TINY_Z_IMAGE_CALL, make_tiny_z_image_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 32, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, **TINY_Z_IMAGE_CALL)
LENGTH = TINY_Z_IMAGE_CALL["max_sequence_length"]


@pytest.fixture(scope="module")
def zimage():
    return make_tiny_z_image_pipeline()


@pytest.fixture(scope="module")
def zimage64():
    return make_tiny_z_image_pipeline(dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def templated_ids(pipe, prompt=PROMPT):
    # What the pipeline's own `_encode_prompt` tokenizes: the prompt in the chat template (thinking on), padded.
    messages = [{"role": "user", "content": prompt}]
    text = pipe.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return text, pipe.tokenizer(text, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")


def processors(pipe):
    # Every attention layer of the transformer and its processor, by name.
    from diffusers.models.attention_processor import Attention

    modules = pipe.transformer.named_modules()
    return {name: (module, module.processor) for name, module in modules if isinstance(module, Attention)}


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "ablation"])
def test_image_is_the_pipelines_image(zimage, method):
    # Guidance 5 (the default: the prompt's caption and the negative prompt's in one call) and 0 (Turbo's: one row).
    for seed, extra in ((1, {}), (2, {"guidance_scale": 0.0}), (3, {"negative_prompt": "a blurry photo of a cat"})):
        expected = zimage(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(zimage, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.any()
    assert isinstance(explainer_for(zimage), ZImagePipelineExplainer)


def test_only_the_prompts_own_tokens_are_attributed(zimage):
    # The template's tokens (role markers) and the padding are never ranked: the prompt's tokens are those of its
    # characters in the templated text, at their positions in the caption; a word split into pieces is one word.
    out = explain(zimage)
    text, ids = templated_ids(zimage)
    start = text.index(PROMPT)
    offsets = zimage.tokenizer(text, return_offsets_mapping=True).offset_mapping
    inside = [p for p, (a, b) in enumerate(offsets) if b > a and a < start + len(PROMPT) and b > start]
    assert list(out.token_positions) == inside
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    scores = out.token_attributions.scores
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)
    # The caption is the template's tokens, not its padding: as long as the templated prompt.
    captions, _ = zimage.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=LENGTH)
    assert captions[0].shape[0] == int(ids.attention_mask.sum()) == len(offsets)


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(zimage64):
    # The LLM's token embedding output of the templated prompt replaced by a leaf, the pipeline's own __call__ with
    # grad (guidance: the negative prompt's caption left alone), the box sum differentiated; then the directional
    # derivative along that gradient by central differences. (The pipeline keeps its latents in float32 whatever the
    # model's dtype, and asserts it: the step is one float32 rounding does not swamp.)
    pipe, box, eps = zimage64, ((0, 0), (16, 32)), 1e-3
    out = explain(pipe, explanation_2d_bounding_box=box)
    ids = templated_ids(pipe)[1].input_ids
    embed = pipe.text_encoder.get_input_embeddings()
    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **COMMON)
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-4, atol=1e-6 * float(grad.abs().max())
        )
    template = [
        p for p in range(int(ids.ne(pipe.tokenizer.pad_token_id).sum())) if p not in {u.token_index for u in units}
    ]
    assert float(grad[0, template].abs().sum()) > 0  # the template's tokens reach the image too: never ranked
    difference = central_difference(pipe, embed, ids, grad, eps, box, prompt=PROMPT, **COMMON)
    assert difference == pytest.approx(float(grad.norm()), rel=2e-3)


@pytest.mark.parametrize("size", [32, 40])
def test_attention_maps_equal_an_independent_computation(zimage, size):
    # The main layers' image queries over the caption's keys, in the stream of [image tokens, caption tokens] each
    # padded to 32 (at 40x40, 100 image tokens padded to 128); the caption's padding, the template and the image's
    # keys in the softmax; the prompt's row.
    out = explain(zimage, attribution_method="attention", output_type="np", height=size, width=size)
    maps = out.attention_maps.maps[0]
    length = maps.shape[0]
    attentions = processors(zimage)  # (the transformer has no `set_attn_processor`: each layer's is set)
    store = []
    main = {name for name in attentions if name.startswith("layers.")}
    for name, (module, _) in attentions.items():
        module.set_processor(ExplicitZImageAttention(store if name in main else []))
    try:
        call = {**COMMON, "height": size, "width": size}
        replayed = zimage(prompt=PROMPT, generator=seeded(0), output_type="np", **call).images[0]
    finally:
        for module, processor in attentions.values():
            module.set_processor(processor)
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)  # the independent processors are the model's math
    grid = size // zimage.vae_scale_factor // 2
    image, start = grid * grid, -(-grid * grid // 32) * 32  # the image's own tokens, where the caption starts
    content = list(out.token_positions)
    image_to_text = [p[0, :, :image, start : start + length] for p in store]  # the prompt's row (first)
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[..., content] / (1 - p.sum(-1, keepdim=True) + p[..., content].sum(-1, keepdim=True)) for p in image_to_text
    ]
    layers = len(main)

    def aggregate(per_layer):
        per_call = [torch.stack(per_layer[i : i + layers]).mean(0) for i in range(0, len(per_layer), layers)]
        probs = torch.stack(per_call).mean(0)
        grid_maps = probs.T.reshape(probs.shape[-1], grid, grid)
        return F.interpolate(grid_maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]

    expected = torch.zeros(length, size, size)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    # The share left out: of the caption's attention, what its template tokens took.
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)
    assert 0 < out.attention_sink_share < 1


def test_each_image_of_a_batch_reads_its_own_prompts_tokens(zimage):
    # Two prompts of different lengths, guidance with a negative prompt of another length: the captions are lists of
    # their own lengths. The images are the pipeline's; every image's words are its own prompt's.
    prompts = [PROMPT, "a dog"]
    call = dict(negative_prompt=["a blurry low quality photo", "red"], **COMMON)
    # (The pipeline writes the templated prompts into the lists it is given: it is given copies.)
    expected = zimage(
        prompt=list(prompts),
        generator=seeded(0),
        output_type="np",
        **{**call, "negative_prompt": list(call["negative_prompt"])},
    ).images
    explainer = ZImagePipelineExplainer(zimage, verbose=False)
    for method in ("grad_x_input", "attention"):
        outputs = explainer(prompts, generator=seeded(0), attribution_method=method, output_type="np", **call)
        for output, image in zip(outputs, expected):
            np.testing.assert_array_equal(output.image, image)
        assert [[w for w, _ in o.word_attributions] for o in outputs] == [PROMPT.split(), ["a", "dog"]]
        assert all(np.isfinite(o.token_attributions.scores).all() for o in outputs)


def test_guidance_switched_off_for_the_last_steps_is_refused(zimage):
    calls = []
    handle = zimage.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="cfg_truncation"):
            explain(zimage, cfg_truncation=0.5)
        with pytest.raises(ValueError, match="text stream"):
            explain(zimage, attribution_method="concept_attention")
        assert not calls
    finally:
        handle.remove()
    explain(zimage, cfg_truncation=0.5, guidance_scale=0.0)  # without guidance there is nothing to switch off
