"""Instruction editors and fill models: identity with the pipelines, input-image pixel gradients against finite
differences, the instruction's gradients against an independent autograd, refusals."""

import numpy as np
import pytest
import torch
from conftest import SIZE, TINY, seeded
from independent_gradients import box_sum
from PIL import Image

from diffusers_interpret import (
    PipelineImg2ImgExplainerOutput,
    StableDiffusionInstructPix2PixPipelineExplainer,
    explainer_for,
)
from diffusers_interpret.testing import make_tiny_pipeline

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
    embed, leaf = pix2pix.text_encoder.get_input_embeddings(), {}

    def replace(module, args, output):
        if torch.equal(args[0], ids):
            leaf["e"] = output.detach().clone().requires_grad_(True)
            return leaf["e"]
        return output

    handle = embed.register_forward_hook(replace)
    try:
        with torch.enable_grad():
            run = type(pix2pix).__call__.__wrapped__
            images = run(pix2pix, INSTRUCTION, generator=seeded(0), output_type="pt", **kwargs).images
            grad = torch.autograd.grad(box_sum(images, box), leaf["e"])[0]
    finally:
        handle.remove()
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
