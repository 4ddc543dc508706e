"""Bad input gets a clear answer at the door, naming the argument, before any model runs."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, SIZE, TINY, seeded
from PIL import Image

from diffusers_interpret import (
    StableDiffusionImg2ImgPipelineExplainer,
    StableDiffusionInpaintPipelineExplainer,
    StableDiffusionPipelineExplainer,
)
from diffusers_interpret.testing import make_tiny_pipeline


@pytest.fixture(scope="module")
def img2img():
    return make_tiny_pipeline("img2img", **TINY)


@pytest.fixture
def no_denoiser_call(tiny_pipe):
    # Every case below must be refused before the UNet runs.
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=123), "`prompt` must be"),
        (dict(num_inference_steps=0), "`num_inference_steps` must be a positive integer"),
        (dict(num_inference_steps=-1), "`num_inference_steps` must be a positive integer"),
        (dict(num_inference_steps=2.5), "`num_inference_steps` must be a positive integer"),
        (dict(num_inference_steps="2"), "`num_inference_steps` must be a positive integer"),
        (dict(height=0), "`height` must be a positive integer"),
        (dict(width=-8), "`width` must be a positive integer"),
        (dict(num_images_per_prompt=0), "`num_images_per_prompt` must be a positive integer"),
        (dict(generator=0), "`generator` must be a torch.Generator"),
        (dict(callback_on_step_end=5), "`callback_on_step_end` must be callable"),
        (dict(explanation_2d_bounding_box=((0.5, 0), (16, 16))), "fractional coordinates"),
        (dict(explanation_2d_bounding_box=((True, 0), (16, 16))), "must be"),
        (dict(latents=torch.zeros(1, 4, 8, 8), height=SIZE), "`latents` make a 16x16"),
    ],
)
def test_bad_text_to_image_arguments_are_refused_by_name(tiny_pipe, no_denoiser_call, kwargs, match):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    call = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        explainer(**call)
    assert not no_denoiser_call


def test_latents_set_the_size_the_box_is_checked_against(tiny_pipe):
    # 16x16 latents make a 32x32 image with the tiny VAE (factor 2): a box is checked against that size.
    latents = torch.randn(1, 4, 8, 8, generator=seeded(0))
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    with pytest.raises(ValueError, match="reaches outside the 16x16"):
        explainer(PROMPT, num_inference_steps=2, latents=latents, explanation_2d_bounding_box=((0, 0), (32, 32)))
    out = explainer(PROMPT, num_inference_steps=2, latents=latents, explanation_2d_bounding_box=((0, 0), (8, 16)))
    assert out.image.size == (16, 16) and np.abs(out.token_attributions.scores).sum() > 0


def test_special_token_text_in_the_prompt_is_refused_not_cut(tiny_pipe):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    with pytest.raises(ValueError, match=r"special token.*<\|endoftext\|>"):
        explainer(PROMPT + " <|endoftext|>", num_inference_steps=1)


def test_a_prompt_longer_than_the_tokenizer_keeps_is_announced_with_the_cut_words(tiny_pipe):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    room = tiny_pipe.tokenizer.model_max_length - 2
    words = ["red"] * room + ["blue", "square"]
    with pytest.warns(UserWarning, match=r"words 'blue square' are cut"):
        out = explainer(" ".join(words), num_inference_steps=1, n_last_diffusion_steps_to_consider_for_attributions=0)
    assert out.image is not None


def test_inference_mode_is_refused_with_what_to_do(tiny_pipe):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside `torch.inference_mode"):
        explainer(PROMPT, num_inference_steps=1)


def test_the_wrong_pipeline_for_an_explainer(tiny_pipe, img2img):
    with pytest.raises(TypeError, match="explainer_for"):
        StableDiffusionImg2ImgPipelineExplainer(tiny_pipe)
    with pytest.raises(TypeError, match="takes no `mask_image`"):
        StableDiffusionInpaintPipelineExplainer(img2img)


@pytest.mark.parametrize("strength", [0, 1.5, "0.5"])
def test_bad_strength(img2img, strength):
    explainer = StableDiffusionImg2ImgPipelineExplainer(img2img, verbose=False)
    image = Image.new("RGB", (SIZE, SIZE))
    with pytest.raises(ValueError, match="`strength` must be"):
        explainer(PROMPT, image=image, strength=strength, num_inference_steps=2)
    with pytest.raises(ValueError, match="leaves no denoising step"):
        explainer(PROMPT, image=image, strength=0.2, num_inference_steps=2)


def test_input_images_in_any_common_form_are_the_same_image(img2img, tmp_path):
    explainer = StableDiffusionImg2ImgPipelineExplainer(img2img, verbose=False)
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    call = dict(
        strength=0.5, num_inference_steps=2, output_type="np", n_last_diffusion_steps_to_consider_for_attributions=0
    )
    reference = explainer(PROMPT, image=Image.fromarray(rgb), generator=seeded(0), **call).image
    rgba = Image.fromarray(np.concatenate([rgb, np.full((SIZE, SIZE, 1), 255, np.uint8)], -1))
    path = tmp_path / "init.png"
    Image.fromarray(rgb).save(path)
    for image in (rgba, str(path), path, rgb, rgb.astype(np.float32) / 255, np.asarray(rgba)):
        out = explainer(PROMPT, image=image, generator=seeded(0), **call).image
        np.testing.assert_allclose(out, reference, atol=1e-6)
    grey = Image.fromarray(rgb).convert("L")
    with pytest.warns(UserWarning, match="`image` is a L image: converted to RGB"):
        out = explainer(PROMPT, image=grey, generator=seeded(0), **call)  # made RGB, no channel error
    assert out.image.shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
        explainer(PROMPT, image=rgb.astype(np.float32), **call)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        explainer(PROMPT, image=str(tmp_path / "missing.png"), **call)
