"""FLUX.2 [dev] through the family seam: Mistral 3 behind a system message, the system message never attributed."""

import numpy as np
import pytest
import torch
from conftest import seeded
from explicit_attention import ExplicitFlux2Attention
from independent_gradients import central_difference, leaf_gradient

from diffusers_interpret import Flux2PipelineExplainer, explainer_for
from diffusers_interpret.testing.flux2 import TINY_FLUX2_DEV_LENGTH, make_tiny_flux2_dev_pipeline

PROMPT = "a cute corgi on the left"
SIZE = 16
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=3, max_sequence_length=TINY_FLUX2_DEV_LENGTH)


@pytest.fixture(scope="module")
def dev():
    return make_tiny_flux2_dev_pipeline()


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def templated_ids(pipe, prompt=PROMPT):
    # What the pipeline's own `_get_mistral_3_small_prompt_embeds` tokenizes: system message and prompt, padded.
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    messages = format_input(prompts=[prompt], system_message=pipe.system_message)
    inputs = pipe.tokenizer.apply_chat_template(
        messages, add_generation_prompt=False, tokenize=True, return_dict=True, return_tensors="pt",
        padding="max_length", truncation=True, max_length=TINY_FLUX2_DEV_LENGTH,
    )  # fmt: skip
    return inputs["input_ids"]


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "concept_attention", "ablation"])
def test_image_is_the_pipelines_image(dev, method):
    for seed, extra in ((1, {}), (2, {"guidance_scale": 2.5})):
        expected = dev(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(dev, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.any()
    assert isinstance(explainer_for(dev), Flux2PipelineExplainer)


def test_the_system_message_is_never_attributed(dev):
    out = explain(dev, attribution_method="attention")
    ids = templated_ids(dev)[0].tolist()
    tokens = dev.tokenizer.convert_ids_to_tokens(ids)
    start, end = tokens.index("[INST]") + 1, tokens.index("[/INST]")
    assert list(out.token_positions) == list(range(start, end)) and start > 30  # after the 33-token system message
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    assert 0.5 < out.attention_sink_share < 1


def test_token_gradients_equal_an_independent_autograd_and_finite_differences():
    # Measured along the gradient (norm 1.0041): 0.9446 at eps 1e-2, 1.0031 at 1e-3, 1.0045 at 1e-4, then the
    # scheduler's float32 steps' rounding (0.997 at 1e-5, 1.029 at 1e-6).
    pipe = make_tiny_flux2_dev_pipeline(dtype=torch.float64)
    box, eps = ((0, 0), (8, 16)), 1e-4
    out = explain(pipe, explanation_2d_bounding_box=box)
    ids = templated_ids(pipe)
    embed = pipe.text_encoder.get_input_embeddings()
    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **COMMON)
    for row, unit in enumerate(out.session.trace.prompt_tokens[0].units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    difference = central_difference(pipe, embed, ids, grad, eps, box, prompt=PROMPT, **COMMON)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)


def test_joint_attention_maps_equal_an_independent_computation(dev):
    out = explain(dev, attribution_method="attention", output_type="np")
    processors = dev.transformer.attn_processors
    store = []
    dev.transformer.set_attn_processor({name: ExplicitFlux2Attention(store) for name in processors})
    try:
        replayed = dev(prompt=PROMPT, generator=seeded(0), output_type="np", **COMMON).images[0]
    finally:
        dev.transformer.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)
    content, length = list(out.token_positions), TINY_FLUX2_DEV_LENGTH
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[0, :, length:, content]
        / (1 - p[0, :, length:, :length].sum(-1, keepdim=True) + p[0, :, length:, content].sum(-1, keepdim=True))
        for p in store
    ]
    per_call = [torch.stack(kept[i : i + 2]).mean(0).mean(0) for i in range(0, len(kept), 2)]  # layers, then heads
    probs = torch.stack(per_call).mean(0)  # steps: (image tokens, content)
    grid = SIZE // 2
    expected = torch.nn.functional.interpolate(
        probs.T.reshape(len(content), grid, grid)[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(out.attention_maps.maps[0][content], expected, atol=1e-5)


def test_caption_upsampling_and_reference_images_are_refused(dev):
    from PIL import Image

    with pytest.raises(ValueError, match="Caption upsampling"):
        explain(dev, caption_upsample_temperature=0.15)
    with pytest.raises(ValueError, match="Reference images"):
        explain(dev, image=Image.new("RGB", (SIZE, SIZE)))


def test_a_length_shorter_than_the_system_message_is_refused(dev):
    with pytest.raises(ValueError, match=r"the chat template takes 38 tokens before it. Use at least 45"):
        explain(dev, max_sequence_length=30)
