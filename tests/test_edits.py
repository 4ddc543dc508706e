"""Instruction editors and fill models: identity with the pipelines, input-image pixel gradients against finite
differences, the instruction's gradients against an independent autograd, refusals."""

import numpy as np
import pytest
import torch
from conftest import SIZE, TINY, seeded
from independent_gradients import box_sum, leaf_gradient
from PIL import Image
from pipeline_state import pipeline_state

from diffusers_interpret import (
    PipelineImg2ImgExplainerOutput,
    StableDiffusionInstructPix2PixPipelineExplainer,
    explainer_for,
)
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH
from diffusers_interpret.testing.flux_edits import make_tiny_flux_fill_pipeline, make_tiny_flux_kontext_pipeline
from diffusers_interpret.tracing.self_attention import region_cells

INSTRUCTION = "make the circle red"


def input_image(size=SIZE, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pix2pix():
    return make_tiny_pipeline("instruct_pix2pix", **TINY)


GUIDED = [dict(guidance_scale=5.0, image_guidance_scale=1.5), dict(guidance_scale=1.0)]


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "ablation"])
def test_pix2pix_image_identical_to_the_pipeline(pix2pix, method):
    for call in GUIDED:
        kwargs = dict(image=input_image(), num_inference_steps=3, **call)
        expected = pix2pix(INSTRUCTION, generator=seeded(1), output_type="np", **kwargs).images[0]
        out = explainer_for(pix2pix, verbose=False)(
            INSTRUCTION, generator=seeded(1), output_type="np", attribution_method=method, **kwargs
        )
        assert isinstance(out, PipelineImg2ImgExplainerOutput)
        np.testing.assert_array_equal(out.image, expected)
        assert out.pixel_attributions.shape == (SIZE, SIZE) and float(np.asarray(out.pixel_attributions).max()) > 0
        assert 0.0 <= out.prompt_dependence <= 1.0  # the redraws read the input image's latents too


def test_pix2pix_pixel_gradients_equal_finite_differences():
    pipe = make_tiny_pipeline("instruct_pix2pix", dtype=torch.float64, **TINY)
    x = 0.1 + 0.8 * torch.from_numpy(np.asarray(input_image(), dtype=np.float64) / 255).permute(2, 0, 1)[None]
    box, kwargs = ((2, 4), (30, 26)), dict(num_inference_steps=3, **GUIDED[0])
    out = StableDiffusionInstructPix2PixPipelineExplainer(pipe, verbose=False)(
        INSTRUCTION, image=x, generator=seeded(0), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **kwargs,
    )  # fmt: skip
    grad = out.pixel_gradients

    def f(image):
        images = pipe(INSTRUCTION, image=image, generator=seeded(0), output_type="pt", **kwargs).images
        return float(box_sum(images, box))

    eps = 1e-4
    direction = torch.randn(x.shape, generator=seeded(3), dtype=torch.float64)
    directional = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    assert float((grad * direction[0]).sum()) == pytest.approx(directional, rel=1e-5)
    flat = grad.abs().flatten()
    for index in flat.topk(2).indices.tolist():
        c, y, xx = np.unravel_index(index, grad.shape)
        step = torch.zeros_like(x)
        step[0, c, y, xx] = eps
        assert float(grad[c, y, xx]) == pytest.approx((f(x + step) - f(x - step)) / (2 * eps), rel=1e-5)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_pix2pix_instruction_gradients_equal_an_independent_autograd(pix2pix, checkpointing):
    # The instruction's rows are the first third of the guided batch: gradients taken at any other rows differ.
    box = ((0, 0), (16, 32))
    kwargs = dict(image=input_image(), num_inference_steps=3, **GUIDED[0])
    out = explainer_for(pix2pix, verbose=False, gradient_checkpointing=checkpointing)(
        INSTRUCTION, generator=seeded(0), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **kwargs,
    )  # fmt: skip
    tokenizer = pix2pix.tokenizer
    ids = torch.tensor([tokenizer(INSTRUCTION, padding="max_length", max_length=tokenizer.model_max_length).input_ids])
    grad = leaf_gradient(pix2pix, pix2pix.text_encoder.get_input_embeddings(), ids, box, prompt=INSTRUCTION, **kwargs)
    units = out.session.trace.prompt_tokens[0].units
    scale = float(grad.abs().max())
    for row, unit in enumerate(units):
        np.testing.assert_allclose(out.token_gradients[row], grad[0, unit.token_index], rtol=1e-4, atol=1e-6 * scale)


def test_pix2pix_refusals(pix2pix, tiny_pipe):
    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        StableDiffusionInstructPix2PixPipelineExplainer(tiny_pipe)
    explainer = explainer_for(pix2pix, verbose=False)
    with pytest.raises(ValueError, match="needs an input image"):
        explainer(INSTRUCTION, num_inference_steps=2)
    with pytest.raises(ValueError, match="edits an input image"):
        explainer.explain_image(input_image(), INSTRUCTION)


# -- Flux Fill and Flux Kontext --------------------------------------------------------------------------------------
FLUX_CALL = dict(height=16, width=16, max_sequence_length=TINY_T5_LENGTH, num_inference_steps=3)
KONTEXT_CALL = dict(FLUX_CALL, _auto_resize=False, max_area=256)


def reference_image():
    return input_image(16).resize((32, 16))  # another size than the result's: the pipeline keeps its own


def fill_mask():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 2:10] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def flux_fill():
    return make_tiny_flux_fill_pipeline()


@pytest.fixture(scope="module")
def kontext():
    return make_tiny_flux_kontext_pipeline()


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "concept_attention"])
def test_flux_fill_and_kontext_images_identical_to_the_pipelines(flux_fill, kontext, method):
    cases = [
        (flux_fill, dict(image=input_image(16), mask_image=fill_mask(), guidance_scale=3.0, **FLUX_CALL), (16, 16)),
        (kontext, dict(image=reference_image(), **KONTEXT_CALL), (16, 32)),
        (
            kontext,
            dict(image=reference_image(), negative_prompt="a dog", true_cfg_scale=2.0, **KONTEXT_CALL),
            (16, 32),
        ),
    ]
    for pipe, kwargs, pixels in cases:
        expected = pipe(prompt=INSTRUCTION, generator=seeded(1), output_type="np", **kwargs).images[0]
        out = explainer_for(pipe, verbose=False)(
            INSTRUCTION, generator=seeded(1), output_type="np", attribution_method=method, **kwargs
        )
        np.testing.assert_array_equal(out.image, expected)
        assert out.pixel_attributions.shape == pixels and out.input_image.size == pixels[::-1]
        if method == "word_attention":
            assert out.word_maps.shape[-2:] == (16, 16)  # the generated image's grid, not the reference's


@pytest.mark.parametrize("family", ["fill", "kontext"])
def test_flux_edit_pixel_gradients_equal_finite_differences(family):
    make = make_tiny_flux_fill_pipeline if family == "fill" else make_tiny_flux_kontext_pipeline
    pipe = make(dtype=torch.float64)
    source = input_image(16) if family == "fill" else reference_image()
    # float64 arrays keep their precision; Kontext sizes an array by its (batch, height, width, channels) shape.
    x = 0.1 + 0.8 * np.asarray(source, dtype=np.float64)[None] / 255
    kwargs = dict(mask_image=fill_mask(), **FLUX_CALL) if family == "fill" else dict(KONTEXT_CALL)
    box = ((2, 4), (14, 12))
    out = explainer_for(pipe, verbose=False)(
        INSTRUCTION, image=x, generator=seeded(0), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **kwargs,
    )  # fmt: skip
    grad = out.pixel_gradients.permute(1, 2, 0).numpy()[None]  # (1, H, W, 3) as the array

    def f(image):
        images = pipe(prompt=INSTRUCTION, image=image, generator=seeded(0), output_type="pt", **kwargs).images
        return float(box_sum(images, box))

    # Flux's rotary embedding is float32, and Kontext's resize of an array goes through float32: steps of 1e-3 and 3e-3
    # balance that rounding against the differences' own error (measured: within 8e-5 and 1.5e-4 of the gradient;
    # 1.2e-3 and 2.8e-2 at a step of 1e-4).
    eps = 1e-3 if family == "fill" else 3e-3
    direction = np.random.default_rng(3).standard_normal(x.shape)
    directional = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(directional, rel=3e-4)


def test_kontext_redraws_and_word_maps_read_the_reference(kontext):
    # Every transformer call of the explanation, the prompt-dependence redraws' included, reads the generated tokens
    # and the reference's (8x8 + 8x16 tokens at 16x16 and 16x32).
    lengths = []
    handle = kontext.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(int(kwargs["hidden_states"].shape[1])), with_kwargs=True
    )
    try:
        out = explainer_for(kontext, verbose=False)(INSTRUCTION, image=reference_image(), generator=seeded(0),
                                                    **KONTEXT_CALL)  # fmt: skip
    finally:
        handle.remove()
    assert out.prompt_dependence is not None and set(lengths) == {64 + 128}


def explicit_reference_map(kontext, call, box):
    # Where the box's generated tokens look among the reference's, from an explicit-softmax processor run of the same
    # call: the reference's columns of the softmax over all keys, the box's queries, heads, the two layers and the
    # steps averaged, on the reference's 8x16 token grid.
    from explicit_attention import ExplicitJointAttention

    processors = kontext.transformer.attn_processors
    store = []
    kontext.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        kontext(**dict(call, generator=seeded(0)))
    finally:
        kontext.transformer.set_attn_processor(dict(processors))
    text, cells = TINY_T5_LENGTH, region_cells(box, (8, 8), (16, 16))
    per_layer = [p[-1:, :, text : text + 64, text + 64 :].mean(1)[0, cells].mean(0) for p in store]
    per_call = [torch.stack(per_layer[i : i + 2]).mean(0) for i in range(0, len(per_layer), 2)]
    return torch.stack(per_call).mean(0).reshape(8, 16)


def test_kontext_correspondence_is_the_attention_to_the_references_tokens(kontext):
    # Where a box of the result looks in the reference: an explicit-softmax processor's probabilities from the box's
    # generated tokens to the reference's columns, per layer upsampled to the reference's size and averaged.
    from diffusers_interpret import record_correspondence

    box = ((0, 0), (8, 16))
    call = dict(prompt=INSTRUCTION, image=reference_image(), generator=seeded(0), **KONTEXT_CALL)
    with record_correspondence(kontext, box=box) as recorder:
        kontext(**call)
    maps = recorder.maps.maps
    assert maps.shape == (1, 1, 16, 32)
    # Bilinear upsampling is linear: the token-level map upsampled is the per-layer upsamplings averaged.
    reference = explicit_reference_map(kontext, call, box)[None, None]
    expected = torch.nn.functional.interpolate(reference, size=(16, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(maps[0, 0], expected, atol=1e-6)
    assert float(maps.sum()) > 0
    with pytest.raises(ValueError, match="Flux Kontext"):
        record_correspondence(make_tiny_pipeline("text2img", **TINY), box=box)


@pytest.mark.parametrize("editor", ["instruct_pix2pix", "flux_fill", "flux_kontext"])
def test_editors_restore_their_state_after_an_injected_exception(pix2pix, flux_fill, kontext, editor):
    pipe, kwargs = {
        "instruct_pix2pix": (pix2pix, dict(image=input_image(), num_inference_steps=3)),
        "flux_fill": (flux_fill, dict(image=input_image(16), mask_image=fill_mask(), **FLUX_CALL)),
        "flux_kontext": (kontext, dict(image=reference_image(), **KONTEXT_CALL)),
    }[editor]
    explainer_for(pipe, verbose=False)(INSTRUCTION, generator=seeded(0), prompt_dependence=False, **kwargs)
    before = pipeline_state(pipe)  # after one explanation (see test_controlnet's)

    def boom(pipe, step, timestep, callback_kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    with pytest.raises(KeyError, match="injected"):
        explainer_for(pipe, verbose=False)(INSTRUCTION, generator=seeded(0), callback_on_step_end=boom, **kwargs)
    assert pipeline_state(pipe) == before


def test_kontext_correspondence_matrix_and_its_view(kontext, browser, tmp_path):
    # With attention_maps=True a Kontext explanation records where every token of the result looks in the reference:
    # a box's map equals an explicit-softmax processor's (token level), the view's cells give the same map for a
    # cell-aligned box, and the page's script paints the same values.
    call = dict(image=reference_image(), generator=seeded(0), **KONTEXT_CALL)
    out = explainer_for(kontext, verbose=False)(INSTRUCTION, attention_maps=True, **call)
    correspondence = out.correspondence
    assert correspondence.matrix.shape == (1, 64, 128) and correspondence.reference_grid == (8, 16)
    box = ((0, 0), (8, 16))
    expected = explicit_reference_map(kontext, dict(call, prompt=INSTRUCTION), box)
    np.testing.assert_allclose(correspondence.for_box(box), expected, atol=1e-6)
    view = out.interactive_view(4)  # cells of 4 pixels: 2x2 tokens each
    np.testing.assert_allclose(view.box_correspondence(0, 0, 4, 2), expected, atol=1e-6)
    driver = browser
    driver.get(view.save(tmp_path / "view.html").resolve().as_uri())
    uid = driver.find_element("css selector", ".di-view").get_attribute("data-view-id")
    painted = driver.execute_script(
        f"return window.diffusersInterpretViews['{uid}'].correspondenceForBox(0, 0, 4, 2);"
    )
    np.testing.assert_allclose(np.reshape(painted, (8, 16)), expected, atol=1e-5)
    peak = driver.find_element("css selector", f"#{uid}-reference").get_attribute("data-peak")
    assert peak is not None and int(peak) >= 0


def test_kontext_explains_an_existing_image_without_a_reference(kontext):
    # explain_image: the transformer reads the image's own tokens, with no reference (Kontext's text-to-image mode).
    lengths = []
    handle = kontext.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(int(kwargs["hidden_states"].shape[1])), with_kwargs=True
    )
    try:
        out = explainer_for(kontext, verbose=False).explain_image(
            input_image(16), INSTRUCTION, max_sequence_length=TINY_T5_LENGTH
        )
    finally:
        handle.remove()
    assert set(lengths) == {64} and out.word_attributions is not None
