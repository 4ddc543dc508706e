import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

import diffusers_interpret.toy as toy
from diffusers_interpret.toy import (
    COLORS,
    SHAPES,
    TOY_GUIDANCE_SCALE,
    TOY_IMAGE_SIZE,
    TOY_MODEL_DIR,
    TOY_NUM_INFERENCE_STEPS,
    load_toy_pipeline,
)
from diffusers_interpret.toy.detector import check_prompt, detect_objects
from diffusers_interpret.toy.scenes import (
    COLOR_RGB,
    SCENE_WORDS,
    generate_scene,
    generate_scenes,
    parse_prompt,
    render_scene,
    sample_scene_spec,
)

# Fixed prompts and seeds that the shipped model must draw right (colour on the named side).
FOLLOW_CASES = [
    ("a red circle on the left", 0),
    ("a yellow triangle on the right", 1),
    ("a blue square on the left", 2),
    ("a green circle on the right", 3),
    ("a red circle on the left and a blue square on the right", 4),
    ("a yellow triangle on the left and a green square on the right", 5),
    ("a blue circle on the left and a red triangle on the right", 6),
    ("a green square on the left and a yellow circle on the right", 7),
]


@pytest.fixture(scope="module")
def toy_pipe():
    return load_toy_pipeline()


def test_scenes_are_deterministic_and_exact():
    a, b = generate_scene(123), generate_scene(123)
    assert a.prompt == b.prompt and np.array_equal(a.image, b.image)
    for scene in generate_scenes(50, seed=7):
        named = parse_prompt(scene.prompt)
        assert [(o.color, o.shape, o.side) for o in scene.objects] == named
        assert scene.image.shape == (TOY_IMAGE_SIZE, TOY_IMAGE_SIZE, 3) and scene.image.dtype == np.uint8
        if len(scene.objects) == 2:
            assert [o.side for o in scene.objects] == ["left", "right"]
            assert scene.objects[0].color != scene.objects[1].color
        for obj, mask in zip(scene.objects, scene.masks):
            assert (scene.image[mask] == COLOR_RGB[obj.color]).all()
            cols = np.nonzero(mask)[1]
            assert (cols < TOY_IMAGE_SIZE // 2).all() if obj.side == "left" else (cols >= TOY_IMAGE_SIZE // 2).all()
        background = ~np.any(scene.masks, axis=0)
        assert (scene.image[background] == scene.spec.background).all()


def test_prompt_forms():
    spec = sample_scene_spec(np.random.default_rng(0), num_objects=2)
    assert render_scene(spec).prompt == spec.prompt
    left, right = spec.objects
    assert spec.prompt == (f"a {left.color} {left.shape} on the left and a {right.color} {right.shape} on the right")
    assert set(COLORS) | set(SHAPES) <= set(SCENE_WORDS)
    with pytest.raises(ValueError):
        parse_prompt("a purple circle on the left")


def test_detector_on_rendered_scenes():
    for scene in generate_scenes(300, seed=4242):
        check = check_prompt(scene.image, scene.prompt)
        assert check.correct and all(check.shape), (scene.prompt, check.detection.describe())
        for obj, mask in zip(scene.objects, scene.masks):
            assert np.array_equal(check.detection.objects[obj.side].mask, mask)
    empty = np.full((32, 32, 3), 235, dtype=np.uint8)
    assert detect_objects(empty).objects == {"left": None, "right": None}


def test_toy_pipeline_is_a_frozen_stable_diffusion_pipeline(toy_pipe):
    assert type(toy_pipe) is StableDiffusionPipeline
    assert isinstance(toy_pipe.scheduler, DPMSolverMultistepScheduler)
    for model in (toy_pipe.unet, toy_pipe.vae, toy_pipe.text_encoder):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert model.dtype == torch.float32
    # Every scene word is one token.
    for word in SCENE_WORDS:
        assert len(toy_pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1
    size = sum(f.stat().st_size for f in TOY_MODEL_DIR.rglob("*") if f.is_file())
    assert size < 20e6


def test_missing_model_gives_a_clear_error(tmp_path, monkeypatch):
    for resolution in (32, 64):
        monkeypatch.setitem(toy.TOY_MODEL_DIRS, resolution, tmp_path)
        with pytest.raises(FileNotFoundError, match="toy model"):
            load_toy_pipeline(resolution=resolution)
    with pytest.raises(ValueError, match="resolution 48"):
        load_toy_pipeline(resolution=48)


def test_generated_images_follow_prompts(toy_pipe):
    prompts = [p for p, _ in FOLLOW_CASES]
    generators = [torch.Generator().manual_seed(s) for _, s in FOLLOW_CASES]
    images = toy_pipe(
        prompts,
        guidance_scale=TOY_GUIDANCE_SCALE,
        num_inference_steps=TOY_NUM_INFERENCE_STEPS,
        generator=generators,
        output_type="np",
    ).images
    assert images.shape == (len(prompts), TOY_IMAGE_SIZE, TOY_IMAGE_SIZE, 3)
    for image, prompt in zip(images, prompts):
        check = check_prompt(image, prompt)
        assert all(check.color_side), (prompt, check.detection.describe())
