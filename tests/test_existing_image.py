"""Explaining an image the user already has: the encoding is the pipeline's own, the maps and the target are what an
independent computation gives, the gradient agrees with finite differences, every family explains."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, SIZE, TINY, seeded
from diffusers import (
    ChromaImg2ImgPipeline,
    FluxImg2ImgPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from diffusers_interpret import explainer_for
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.chroma import make_tiny_chroma_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline

BOX = ((2, 4), (14, 20))
DIT_PROMPT = "a cute corgi on the left"


def picture(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "chroma"])
def test_the_noised_image_is_the_pipelines_own_img2img_start(family, monkeypatch):
    # With the VAE posterior read at its mode (as the explanation reads it), the family's img2img pipeline's own
    # `prepare_latents` (its encoding, scaling and shift, its noise drawn from the generator, its packing) gives the
    # latents the explanation's denoiser call is given.
    make, img2img, size, call = {
        "sd": (lambda: make_tiny_pipeline("text2img", **TINY), StableDiffusionImg2ImgPipeline, SIZE, {}),
        "sdxl": (lambda: make_tiny_sdxl_pipeline("text2img"), StableDiffusionXLImg2ImgPipeline, SIZE, {}),
        "sd3": (lambda: make_tiny_sd3_pipeline("text2img"), StableDiffusion3Img2ImgPipeline, 16, {}),
        "flux": (lambda: make_tiny_flux_pipeline("text2img"), FluxImg2ImgPipeline, 16, {}),
        "chroma": (lambda: make_tiny_chroma_pipeline("text2img"), ChromaImg2ImgPipeline, 16, {}),
    }[family]
    pipe = make()
    explainer = explainer_for(pipe, verbose=False)
    image = picture(size)
    reference = img2img(**pipe.components)
    pixels = reference.image_processor.preprocess(image)
    seen = {}

    def keep(module, args, kwargs):
        seen["sample"] = explainer.family.read_sample(args, kwargs).detach().clone()

    handle = explainer.family.denoiser(pipe).register_forward_pre_hook(keep, with_kwargs=True)
    if family in ("sd", "sdxl"):
        level = 0.6
        timestep = torch.tensor(round(0.6 * (pipe.scheduler.config.num_train_timesteps - 1)))
    else:
        reference.scheduler.set_timesteps(4)
        timestep = reference.scheduler.timesteps[1:2]
        level = float(reference.scheduler.sigmas[1])
    extra = {"max_sequence_length": TINY_SD3_T5_LENGTH if family == "sd3" else TINY_T5_LENGTH} if size == 16 else {}
    try:
        explainer.explain_image(
            image,
            "a",
            noise_levels=[level],
            noise_seed=7,
            attribution_method="attention",
            prompt_dependence=False,
            **extra,
        )
    finally:
        handle.remove()
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    with torch.no_grad():
        if family in ("flux", "chroma"):
            expected, _ = reference.prepare_latents(
                pixels, timestep, 1, 1, size, size, torch.float32, "cpu", seeded(7)
            )  # fmt: skip
        else:
            expected = reference.prepare_latents(pixels, timestep, 1, 1, torch.float32, "cpu", seeded(7), **call)
    np.testing.assert_allclose(seen["sample"].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def _independent_target(pipe, pixels, embeds, levels, seed, box):
    # The explained target computed without the library: the UNet on the VAE's mode noised with the seeded noise at
    # each level, its clean-latent predictions averaged, decoded, the [0, 1] image's sum inside the box.
    scheduler, vae = pipe.scheduler, pipe.vae
    clean = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    predictions = []
    for k, level in enumerate(levels):
        t = round(level * (scheduler.config.num_train_timesteps - 1))
        alpha = scheduler.alphas_cumprod[t].double()
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + k)).to(clean.dtype)
        noised = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        eps = pipe.unet(noised, torch.tensor(t), encoder_hidden_states=embeds).sample
        predictions.append((noised - (1 - alpha).sqrt() * eps) / alpha.sqrt())
    image = (vae.decode(torch.stack(predictions).mean(0) / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    (x0, y0), (x1, y1) = box
    return image[..., y0:y1, x0:x1].double().sum()


def test_the_gradient_target_agrees_with_finite_differences(tiny_pipe64):
    pipe = tiny_pipe64
    image, levels = picture(SIZE, 3), (0.4, 0.6)
    out = explainer_for(pipe, verbose=False).explain_image(
        image, PROMPT, explanation_2d_bounding_box=BOX, attribution_method="grad_x_input",
        attribution_level="text_encoder_output", noise_levels=levels, noise_seed=5,
    )  # fmt: skip
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    pixels = pipe.image_processor.preprocess(image).double()
    with torch.no_grad():
        embeds = pipe.text_encoder(torch.tensor([ids]))[0]
        gradient = torch.zeros_like(embeds)
        gradient[0, out.token_positions] = out.token_gradients.double()
        eps = 1e-4 * float(embeds.norm() / gradient.norm())
        plus = _independent_target(pipe, pixels, embeds + eps * gradient, levels, 5, BOX)
        minus = _independent_target(pipe, pixels, embeds - eps * gradient, levels, 5, BOX)
    directional = float((plus - minus) / (2 * eps))
    assert directional == pytest.approx(float(gradient.pow(2).sum()), rel=1e-4)
    assert np.asarray(out.image).shape == (SIZE, SIZE, 3)


def test_attention_maps_are_the_denoisers_own_over_the_noised_image(tiny_pipe):
    from diffusers_interpret.attention import record_cross_attention

    pipe, image, levels = tiny_pipe, picture(SIZE, 4), (0.3, 0.7)
    out = explainer_for(pipe, verbose=False).explain_image(
        image,
        PROMPT,
        attribution_method="attention",
        noise_levels=levels,
        noise_seed=2,
        explanation_2d_bounding_box=BOX,
    )
    pixels = pipe.image_processor.preprocess(image)
    with torch.no_grad():
        embeds = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
        clean = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        with record_cross_attention(pipe) as recorder:
            for k, level in enumerate(levels):
                t = round(level * (pipe.scheduler.config.num_train_timesteps - 1))
                alpha = pipe.scheduler.alphas_cumprod[t]
                noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2 + k))
                pipe.unet(alpha.sqrt() * clean + (1 - alpha).sqrt() * noise, t, encoder_hidden_states=embeds)
    np.testing.assert_allclose(out.attention_maps.maps.numpy(), recorder.maps.maps.numpy(), rtol=1e-5, atol=1e-7)
    maps = recorder.maps.maps[0, out.token_positions].double()
    (x0, y0), (x1, y1) = BOX
    share = maps[:, y0:y1, x0:x1].sum((1, 2)) / maps.sum((1, 2))
    np.testing.assert_allclose(out.token_attributions.scores, share.numpy(), rtol=1e-5)
    assert out.stats.denoiser_calls == 2 and out.all_images_during_generation is None


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "flux_dev", "chroma"])
def test_every_family_explains_an_existing_image_with_every_kind_of_method(family):
    make = {
        "sdxl": lambda: make_tiny_sdxl_pipeline("text2img"),
        "sd3": lambda: make_tiny_sd3_pipeline("text2img"),
        "flux": lambda: make_tiny_flux_pipeline("text2img"),
        "flux_dev": lambda: make_tiny_flux_pipeline("text2img", guidance_embeds=True),
        "chroma": lambda: make_tiny_chroma_pipeline("text2img"),
    }[family]
    pipe = make()
    size = SIZE if family == "sdxl" else 16
    extra = (
        {} if family == "sdxl" else {"max_sequence_length": TINY_SD3_T5_LENGTH if family == "sd3" else TINY_T5_LENGTH}
    )
    methods = ["word_attention", "grad_x_input", "linearized_ablation"]
    if family != "sdxl":
        methods.append("concept_attention")
    image = picture(size, 5)
    explainer = explainer_for(pipe, verbose=False)
    for method in methods:
        out = explainer.explain_image(image, DIT_PROMPT, attribution_method=method, **extra)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 0, method
        # The output's image is the input as the pipeline processed it.
        np.testing.assert_array_equal(np.asarray(out.image), np.asarray(image))
    concepts = (
        explainer.explain_image(image, DIT_PROMPT, concepts=["sky", "grass"], **extra) if family != "sdxl" else None
    )
    if concepts is not None:
        assert (
            list(concepts.concept_maps)[-2:] == ["sky", "grass"] and concepts.attribution_method == "concept_attention"
        )


def test_an_image_of_another_size_is_resized_as_the_pipeline_would_and_said_so(tiny_pipe):
    image = picture(37)
    side = 37 - 37 % tiny_pipe.vae_scale_factor  # the pipeline's image processor rounds down to the VAE's cell
    with pytest.warns(UserWarning, match=rf"37x37 .* resized to {side}x{side}"):
        out = explainer_for(tiny_pipe, verbose=False).explain_image(image, PROMPT)
    assert out.image.size == (side, side) and out.word_maps.shape[1:] == (side, side)
    again = out.explain(((0, 0), (16, side)))  # the maps read again for a new box: nothing generated
    assert again.explanation_2d_bounding_box == ((0, 0), (16, side))
    assert not np.allclose(again.token_attributions.scores, out.token_attributions.scores)
