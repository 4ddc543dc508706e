"""Img2img and inpainting explainers: identity with the pipelines, pixel gradients, masks, errors."""

import numpy as np
import pytest
import torch
from conftest import SIZE, TINY, seeded
from PIL import Image

from diffusers_interpret import StableDiffusionImg2ImgPipelineExplainer, StableDiffusionInpaintPipelineExplainer
from diffusers_interpret.testing import make_tiny_pipeline

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def init_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask_image():
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 4:20] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def img2img():
    return make_tiny_pipeline("img2img", **TINY)


@pytest.fixture(scope="module", params=[9, 4], ids=["unet9", "unet4"])
def inpaint(request):
    return make_tiny_pipeline("inpaint", unet_in_channels=request.param, **TINY)


@pytest.mark.parametrize("n_traced", [None, 1])
def test_img2img_image_identical_and_pixels_need_all_steps(img2img, init_image, n_traced):
    kwargs = dict(strength=0.75, num_inference_steps=4)
    expected = img2img(PROMPT, image=init_image, generator=seeded(2), output_type="np", **kwargs).images[0]
    explainer = StableDiffusionImg2ImgPipelineExplainer(img2img, verbose=False)
    if n_traced is None:
        out = explainer(prompt=PROMPT, init_image=init_image, generator=seeded(2), output_type="np", **kwargs)
        assert out.pixel_attributions.shape == (SIZE, SIZE)
        assert out.pixel_attributions.normalized.sum() == pytest.approx(100, rel=1e-4)
    else:
        with pytest.warns(UserWarning, match="do not reach the input image"):
            out = explainer(
                prompt=PROMPT,
                image=init_image,
                generator=seeded(2),
                output_type="np",
                n_last_diffusion_steps_to_consider_for_attributions=n_traced,
                **kwargs,
            )
        assert out.pixel_attributions is None and out.token_attributions is not None
    np.testing.assert_array_equal(out.image, expected)
    frames = out.all_images_during_generation
    assert len(frames) == 1 + img2img.num_timesteps  # starts from the init image
    assert np.array_equal(np.asarray(frames[0]), np.asarray(init_image))


def test_img2img_pixel_gradient_matches_finite_differences(init_image):
    pipe = make_tiny_pipeline("img2img", dtype=torch.float64, **TINY)
    x = torch.from_numpy(np.asarray(init_image, dtype=np.float64) / 255).permute(2, 0, 1)[None]
    box, kwargs, eps = ((2, 16), (30, 30)), dict(strength=0.6, num_inference_steps=5), 1e-4
    out = StableDiffusionImg2ImgPipelineExplainer(pipe, verbose=False)(
        PROMPT, image=x, generator=seeded(0), explanation_2d_bounding_box=box, **kwargs
    )
    grad = out.pixel_gradients

    def box_sum(image):
        images = pipe(PROMPT, image=image, generator=seeded(0), output_type="pt", **kwargs).images
        return float(images[..., 16:30, 2:30].sum())

    flat = grad.abs().flatten()
    picks = [*flat.topk(3).indices.tolist(), int(torch.randint(flat.numel(), (1,), generator=seeded(1)))]
    for index in picks:
        c, y, xx = np.unravel_index(index, grad.shape)
        up, down = x.clone(), x.clone()
        up[0, c, y, xx] += eps
        down[0, c, y, xx] -= eps
        fd = (box_sum(up) - box_sum(down)) / (2 * eps)
        assert float(grad[c, y, xx]) == pytest.approx(fd, rel=1e-3, abs=1e-3 * float(flat.max())), (c, y, xx)
    expected = (grad * x[0]).norm(dim=0).numpy()  # grad_x_input over channels, at the [0, 1] pixels
    np.testing.assert_allclose(out.pixel_attributions, expected, rtol=1e-5)


@pytest.mark.parametrize("n_traced", [2, None])
def test_inpaint_identical_and_pixel_attributions(inpaint, init_image, mask_image, n_traced):
    kwargs = dict(strength=0.75, num_inference_steps=5)
    expected = inpaint(
        PROMPT, image=init_image, mask_image=mask_image, generator=seeded(4), output_type="np", **kwargs
    ).images[0]
    out = StableDiffusionInpaintPipelineExplainer(inpaint, verbose=False)(
        prompt=PROMPT,
        init_image=init_image,
        mask_image=mask_image,
        generator=seeded(4),
        output_type="np",
        n_last_diffusion_steps_to_consider_for_attributions=n_traced,
        **kwargs,
    )
    np.testing.assert_array_equal(out.image, expected)
    assert out.mask.sum() == 16 * 16 and out.mask[8:24, 4:20].all()
    scores = out.pixel_attributions
    assert scores is not None and scores[~out.mask].max() > 0
    nine_channels = inpaint.unet.config.in_channels == 9
    if nine_channels and n_traced is not None:
        # the model sees image * (mask < 0.5): pixels inside the mask cannot matter (the start latents are untraced)
        assert float(np.abs(out.pixel_gradients.numpy()[:, out.mask]).max()) == 0.0
    else:
        # the 4-channel path blends the encoded image in every step; traced first step: noised image latents
        assert scores[out.mask].max() > 0
    saliency = out.input_saliency_map
    overlay = saliency.overlay()
    assert overlay.size == (SIZE, SIZE)
    fig = saliency.plot(cmap="jet", image_weight=0.5, apply_mask=True)
    assert len(fig.axes) >= 3


def test_input_image_errors(img2img, inpaint, init_image, mask_image):
    explainer = StableDiffusionImg2ImgPipelineExplainer(img2img, verbose=False)
    with pytest.raises(ValueError, match="not both"):
        explainer(PROMPT, init_image=init_image, image=init_image)
    with pytest.raises(ValueError, match="needs an input image"):
        explainer(PROMPT)
    inpainter = StableDiffusionInpaintPipelineExplainer(inpaint, verbose=False)
    with pytest.raises(ValueError, match="mask_image"):
        inpainter(PROMPT, image=init_image)
    with pytest.raises(ValueError, match="mask's size|of the image's size"):
        inpainter(PROMPT, image=init_image, mask_image=mask_image.resize((16, 16)))


def test_saliency_scaling_before_colour_map():
    from diffusers_interpret import SaliencyMap

    image = Image.new("RGB", (4, 4), "white")
    scores = np.zeros((4, 4), np.float32)
    scores[0, 0] = 1e-6  # tiny raw scores must still span the colour map (the original cast them to uint8: all 0)
    heat = np.asarray(SaliencyMap(image, scores).heatmap(cmap="gray"))
    assert heat[0, 0].tolist() == [255, 255, 255] and heat[1, 1].tolist() == [0, 0, 0]


def test_inpaint_lean_reexplanation_equals_a_fresh_call(inpaint, init_image, mask_image):
    explainer = StableDiffusionInpaintPipelineExplainer(inpaint, verbose=False)
    kwargs = dict(
        init_image=init_image,
        mask_image=mask_image,
        num_inference_steps=4,
        n_last_diffusion_steps_to_consider_for_attributions=2,
        attribution_method="grad_x_input",
        output_type="np",
    )
    first = explainer("a red circle", generator=seeded(0), keep_for_reexplanation="latents", **kwargs)
    box = ((8, 8), (24, 24))
    again = first.explain(explanation_2d_bounding_box=box)
    fresh = explainer("a red circle", generator=seeded(0), explanation_2d_bounding_box=box, **kwargs)
    np.testing.assert_allclose(again.token_attributions.scores, fresh.token_attributions.scores, rtol=1e-4)
    np.testing.assert_allclose(again.pixel_attributions, fresh.pixel_attributions, rtol=1e-4, atol=1e-12)
    assert not np.allclose(again.pixel_attributions, first.pixel_attributions)  # the box changed them
