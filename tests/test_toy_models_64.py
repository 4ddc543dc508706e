"""The second toy resolution (64x64 SD) and the toy Flux: they load offline, are frozen, and draw the named colours."""

import numpy as np
import pytest
import torch
from conftest import seeded

from diffusers_interpret import explainer_for
from diffusers_interpret.toy import (
    TOY_FLUX_CALL,
    TOY_FLUX_MODEL_DIR,
    TOY_GUIDANCE_SCALE,
    load_toy_flux_pipeline,
    load_toy_pipeline,
    toy_model_available,
)
from diffusers_interpret.toy.detector import check_prompt, detect_objects
from diffusers_interpret.toy.scenes import sample_scene_spec

needs_64 = pytest.mark.skipif(not toy_model_available(64), reason="the 64x64 toy model's files are missing")
needs_flux = pytest.mark.skipif(
    not (TOY_FLUX_MODEL_DIR / "model_index.json").is_file(), reason="the toy Flux model's files are missing"
)


def one_object_prompts(count=4, seed=2025):
    rng = np.random.default_rng(seed)
    return [sample_scene_spec(rng, 1, image_size=64).prompt for _ in range(count)]


@needs_64
def test_the_64x64_toy_draws_the_named_colours():
    pipe = load_toy_pipeline(resolution=64)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    prompts = one_object_prompts()
    images = pipe(
        prompts,
        guidance_scale=TOY_GUIDANCE_SCALE,
        num_inference_steps=20,
        generator=[seeded(i) for i in range(len(prompts))],
        output_type="np",
    ).images
    assert images.shape == (len(prompts), 64, 64, 3)
    for image, prompt in zip(images, prompts):
        found = [obj.color for obj in detect_objects(image).objects.values() if obj is not None]
        assert prompt.split()[1] in found, (prompt, found)


@needs_flux
def test_the_toy_flux_draws_single_objects_and_its_explanation_merges_t5_pieces():
    pipe = load_toy_flux_pipeline()
    assert type(pipe).__name__ == "FluxPipeline"
    assert not any(p.requires_grad for p in pipe.transformer.parameters())
    prompts = one_object_prompts()
    images = pipe(
        prompts, generator=[seeded(i) for i in range(len(prompts))], output_type="np", **TOY_FLUX_CALL
    ).images
    for image, prompt in zip(images, prompts):
        check = check_prompt(image, prompt)
        assert all(check.color_side), (prompt, check.detection.describe())

    prompt = "a red triangle on the left"
    expected = pipe(prompt, generator=seeded(0), output_type="np", **TOY_FLUX_CALL).images[0]
    explainer = explainer_for(pipe, verbose=False)
    out = explainer(prompt, generator=seeded(0), output_type="np", attribution_method="grad_x_input", **TOY_FLUX_CALL)
    np.testing.assert_array_equal(out.image, expected)
    labels = out.token_attributions.tokens
    assert labels[:7] == ["a", "red", "tri", "angle", "on", "the", "left"]  # T5's pieces, then CLIP's tokens
    scores = out.token_attributions.scores
    words = dict(out.word_attributions)
    assert list(words) == prompt.split()
    assert words["triangle"] == pytest.approx(scores[2] + scores[3] + scores[labels.index("triangle")], rel=1e-6)
    torch.testing.assert_close(float(sum(words.values())), float(scores.sum()), rtol=1e-6, atol=0)
