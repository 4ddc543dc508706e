"""SDXL through the family seam: identity with the pipelines, gradients through both text encoders, every method."""

import numpy as np
import pytest
import torch
from conftest import seeded
from PIL import Image

from diffusers_interpret import (
    IntegratedGradients,
    JacobianNorm,
    SmoothGrad,
    StableDiffusionXLImg2ImgPipelineExplainer,
    StableDiffusionXLInpaintPipelineExplainer,
    StableDiffusionXLPipelineExplainer,
    TokenAblation,
    explainer_for,
)
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline

PROMPT = "a red circle on the left and a blue square on the right"
SIZE, STEPS = 32, 3


@pytest.fixture(scope="module")
def sdxl():
    return make_tiny_sdxl_pipeline("text2img")


@pytest.fixture(scope="module")
def sdxl64():
    return make_tiny_sdxl_pipeline("text2img", dtype=torch.float64)


@pytest.fixture(scope="module")
def init_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask_image():
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 4:20] = 255
    return Image.fromarray(mask)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("attribution_method", "grad_x_input")
    kwargs.setdefault("get_images_for_all_inference_steps", False)
    return StableDiffusionXLPipelineExplainer(pipe, verbose=False)(prompt, generator=seeded(seed), **kwargs)


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    (x0, y0), (x1, y1) = box
    return images[..., y0:y1, x0:x1].double().sum()


@pytest.mark.parametrize("method", ["grad_x_input", "attention"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_image_is_the_pipelines_image(sdxl, method, checkpointing):
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=5.0, negative_prompt="a green triangle")
    expected = sdxl(PROMPT, generator=seeded(1), output_type="np", **kwargs).images[0]
    explainer = StableDiffusionXLPipelineExplainer(sdxl, verbose=False, gradient_checkpointing=checkpointing)
    out = explainer(PROMPT, generator=seeded(1), output_type="np", attribution_method=method, **kwargs)
    np.testing.assert_array_equal(out.image, expected)
    assert out.token_attributions.tokens == PROMPT.split()


def test_img2img_and_inpaint_images_are_the_pipelines(init_image, mask_image):
    for kind, explainer_class, extra in (
        ("img2img", StableDiffusionXLImg2ImgPipelineExplainer, {}),
        ("inpaint", StableDiffusionXLInpaintPipelineExplainer, {"mask_image": mask_image}),
    ):
        pipe = make_tiny_sdxl_pipeline(kind)
        kwargs = dict(num_inference_steps=4, strength=0.75, **extra)
        expected = pipe(PROMPT, image=init_image, generator=seeded(2), output_type="np", **kwargs).images[0]
        explainer = explainer_for(pipe, verbose=False)
        assert type(explainer) is explainer_class
        out = explainer(
            PROMPT,
            init_image=init_image,
            generator=seeded(2),
            output_type="np",
            attribution_method="grad_x_input",
            **kwargs,
        )
        np.testing.assert_array_equal(out.image, expected)
        assert out.pixel_attributions.shape == (SIZE, SIZE) and np.isfinite(out.pixel_attributions).all()
        assert out.pixel_attributions.sum() > 0 and out.token_attributions is not None


def test_token_embedding_gradient_matches_finite_differences(sdxl64):
    # Both encoders' token embeddings of one position scaled together: the directional derivative must equal the
    # gradient x input summed over the concatenation of both encoders' features.
    pipe, box, eps = sdxl64, ((16, 0), (32, 32)), 1e-3
    prompt = "a red circle on the right"
    out = explain(pipe, prompt=prompt, explanation_2d_bounding_box=box)
    assert out.attribution_level == "token_embeddings"
    assert out.token_gradients.shape[-1] == 64  # CLIP-L's 32 features, then CLIP-G's 32
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    def target(position: int, scale: float) -> float:
        def perturb(module, args, output):  # only the prompt's row
            if torch.equal(args[0], ids):
                output = output.clone()
                output[0, position] *= 1 + scale
            return output

        handles = [
            encoder.get_input_embeddings().register_forward_hook(perturb)
            for encoder in (pipe.text_encoder, pipe.text_encoder_2)
        ]
        try:
            images = pipe(prompt, num_inference_steps=STEPS, generator=seeded(0), output_type="pt").images
        finally:
            for handle in handles:
                handle.remove()
        return float(box_sum(images, box))

    for row in range(len(out.token_attributions)):
        fd = (target(row + 1, eps) - target(row + 1, -eps)) / (2 * eps)
        ours = float((out.token_gradients[row] * out.token_embeddings[row]).sum())
        assert ours == pytest.approx(fd, rel=1e-3), (row, ours, fd)


def test_encoder_output_gradient_matches_finite_differences_and_the_pooled_share(sdxl64):
    pipe, box, eps = sdxl64, ((3, 5), (20, 15)), 1e-3
    prompt = "a blue square on the left"
    out = explain(pipe, prompt=prompt, explanation_2d_bounding_box=box, attribution_level="text_encoder_output")
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)

    def run(prompt_embeds, pooled_embeds, grad=False):
        call = type(pipe).__call__.__wrapped__ if grad else type(pipe).__call__
        return call(
            pipe,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_embeds,
            num_inference_steps=STEPS,
            generator=seeded(0),
            output_type="pt",
        ).images

    for row in range(len(out.token_attributions)):
        direction = torch.zeros_like(embeds)
        direction[0, row + 1] = embeds[0, row + 1] * eps
        fd = (box_sum(run(embeds + direction, pooled), box) - box_sum(run(embeds - direction, pooled), box)) / (
            2 * eps
        )
        ours = float((out.token_gradients[row] * out.token_embeddings[row]).sum())
        assert ours == pytest.approx(float(fd), rel=1e-3), (row, ours, fd)

    # An independent autograd computation through the pipeline's own `prompt_embeds` / `pooled_prompt_embeds`.
    leaf, pooled_leaf = embeds.clone().requires_grad_(True), pooled.clone().requires_grad_(True)
    with torch.enable_grad():
        grad_embeds, grad_pooled = torch.autograd.grad(
            box_sum(run(leaf, pooled_leaf, grad=True), box), (leaf, pooled_leaf)
        )
    np.testing.assert_allclose(out.token_gradients, grad_embeds[0, 1 : 1 + len(out.token_attributions)], rtol=1e-6)
    a = float((grad_pooled * pooled).pow(2).sum())
    b = float((grad_embeds * embeds).pow(2).sum())
    assert out.pooled_share == pytest.approx(a / (a + b), rel=1e-6)
    assert 0 < out.pooled_share < 1


def test_per_encoder_scores_combine_into_the_token_score(sdxl):
    out = explain(sdxl, explanation_2d_bounding_box=((0, 0), (16, 32)))
    per_encoder = out.encoder_token_attributions
    assert set(per_encoder) == {"text_encoder", "text_encoder_2"}
    first, second = per_encoder["text_encoder"].scores, per_encoder["text_encoder_2"].scores
    np.testing.assert_allclose(out.token_attributions.scores, np.sqrt(first**2 + second**2), rtol=1e-5)
    assert not np.allclose(first, second)


def test_prompt_2_attributes_both_sets_of_tokens(sdxl):
    prompt_2 = "a yellow star"
    out = explain(sdxl, prompt_2=prompt_2)
    assert out.token_attributions.tokens == PROMPT.split() + prompt_2.split()
    assert np.all(out.token_attributions.scores > 0)
    # Each text's words, shown once each and labelled by the encoder that reads them; a word's score is its token's.
    assert out.word_attributions.tokens == PROMPT.split() + prompt_2.split()
    assert out.word_attributions.encoders == ["CLIP-L"] * len(PROMPT.split()) + ["CLIP-G"] * len(prompt_2.split())
    np.testing.assert_allclose(out.word_attributions.scores, out.token_attributions.scores)
    # The pipeline reads prompt_2 with CLIP-G: the image is the pipeline's own with both prompts.
    expected = sdxl(PROMPT, prompt_2=prompt_2, num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    again = explain(sdxl, prompt_2=prompt_2, output_type="np")
    np.testing.assert_array_equal(again.image, expected.images[0])


def test_box_changes_attributions_and_denoising_end_passes_through(sdxl):
    left = explain(sdxl, explanation_2d_bounding_box=((0, 0), (16, 32)))
    right = explain(sdxl, explanation_2d_bounding_box=((16, 0), (32, 32)))
    assert not np.allclose(left.token_attributions.scores, right.token_attributions.scores)
    kwargs = dict(num_inference_steps=6, denoising_end=0.5, output_type="np")
    out = explain(sdxl, n_last_diffusion_steps_to_consider_for_attributions=1, **kwargs)
    expected = sdxl(PROMPT, generator=seeded(0), **kwargs).images[0]
    np.testing.assert_array_equal(out.image, expected)
    assert 1 < sdxl.num_timesteps < 6  # denoising_end cut the loop short
    assert out.extras["traced_denoiser_calls"] == 1


METHODS = {
    "word_attention": "word_attention",
    "attention": "attention",
    "grad_x_input": "grad_x_input",
    "jacobian_norm": JacobianNorm(n_probes=2),
    "integrated_gradients": IntegratedGradients(n_steps=2),
    "smoothgrad": SmoothGrad(n_samples=2),
    "ablation": TokenAblation(),
}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("level", ["token_embeddings", "text_encoder_output"])
def test_every_method_runs(sdxl, name, level):
    out = explain(
        sdxl,
        num_inference_steps=2,
        attribution_method=METHODS[name],
        attribution_level=level,
        explanation_2d_bounding_box=((0, 0), (16, 32)),
    )
    scores = out.token_attributions.scores
    assert len(scores) == len(PROMPT.split()) and np.isfinite(scores).all() and scores.sum() > 0
    assert out.attribution_method == name


def test_reexplanation_region_grid_and_attention_maps(sdxl):
    explainer = StableDiffusionXLPipelineExplainer(sdxl, verbose=False)
    kwargs = dict(num_inference_steps=STEPS, attribution_method="grad_x_input")
    first = explainer(PROMPT, generator=seeded(0), keep_for_reexplanation="graph", attention_maps=True, **kwargs)
    box = ((16, 8), (32, 24))
    fresh = explainer(PROMPT, generator=seeded(0), explanation_2d_bounding_box=box, **kwargs)
    np.testing.assert_allclose(
        first.explain(box).token_attributions.scores, fresh.token_attributions.scores, rtol=1e-4
    )
    grid = first.region_grid(8)
    assert grid.shape == (4, 4, len(PROMPT.split()), 64)
    assert first.attention_maps.maps.shape == (1, 77, SIZE, SIZE)
    assert "data:image/png;base64," in first.interactive_view(8)._repr_html_()
    lean = explainer(PROMPT, generator=seeded(0), keep_for_reexplanation="latents", **kwargs)
    np.testing.assert_allclose(lean.explain(box).token_attributions.scores, fresh.token_attributions.scores, rtol=1e-4)
    first.release()


def test_state_restored_after_an_injected_exception(sdxl):
    config_before = dict(sdxl._progress_bar_config)
    processors_before = sdxl.unet.attn_processors
    explainer = StableDiffusionXLPipelineExplainer(sdxl, verbose=True)

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    for method in ("grad_x_input", "attention"):
        with pytest.raises(KeyError, match="injected"):
            explainer(PROMPT, num_inference_steps=STEPS, callback_on_step_end=boom, attribution_method=method)
        assert torch.is_grad_enabled()
        assert not sdxl.unet._forward_pre_hooks and not sdxl.unet._forward_hooks
        for encoder in (sdxl.text_encoder, sdxl.text_encoder_2):
            assert not encoder.get_input_embeddings()._forward_hooks
        assert sdxl._progress_bar_config == config_before
        assert all(sdxl.unet.attn_processors[k] is v for k, v in processors_before.items())
    expected = sdxl(PROMPT, num_inference_steps=STEPS, generator=seeded(3), output_type="np").images[0]
    out = explain(sdxl, seed=3, output_type="np")
    np.testing.assert_array_equal(out.image, expected)


def test_unsupported_pipeline_names_the_supported_ones():
    with pytest.raises(TypeError, match="StableDiffusionXLPipeline"):
        explainer_for(object())
