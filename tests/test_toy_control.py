r"""
The shipped toy ControlNet (outline control images, `diffusers_interpret.toy.control`): it loads offline, draws the
shapes and positions of its control's outlines, and the explanation of a box around one object reads the control
pixels of that object's own outline. (The short version of `benchmarks/toy_control_truth.py`.)

The scenes are the benchmark's (`--seed 999`): the i-th two-object scene of `sample_scene_spec(default_rng(999), 2)`
with noise seed 999 + i.
"""

import numpy as np
import pytest
import torch
from conftest import seeded

from diffusers_interpret import explainer_for
from diffusers_interpret.box import mask_box
from diffusers_interpret.toy.control import (
    TOY_CONTROL_CALL,
    TOY_CONTROLNET_DIR,
    color_only_prompt,
    load_toy_controlnet_pipeline,
    matches_scene,
    outline_band,
    outline_image,
)
from diffusers_interpret.toy.scenes import render_scene, sample_scene_spec

pytestmark = pytest.mark.skipif(
    not (TOY_CONTROLNET_DIR / "config.json").is_file(), reason="the shipped toy ControlNet's files are missing"
)

SEED = 999
# Two scenes with all three shapes among them, drawn right with full and with colour-only prompts (the benchmark's
# first scene is one of the 1 in 20 its colour-only prompt draws wrong: a triangle for its circle).
DRAWN_SCENES = (1, 4)
# Scene 3's right object: the benchmark measured 94% of its box's control attribution inside its own 2-pixel outline
# band (the median over 40 boxes: 83%, the lowest 51%; chance, the band's share of the image: 16%).
EXPLAINED_SCENE, EXPLAINED_OBJECT = 3, 1
MIN_OWN_BAND_SHARE = 0.8


def scene_and_seed(index: int):
    rng = np.random.default_rng(SEED)
    for _ in range(index):
        sample_scene_spec(rng, 2)
    return render_scene(sample_scene_spec(rng, 2)), SEED + index


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the toy's layers gain nothing from threads, which stall on a busy 2-core machine
    yield load_toy_controlnet_pipeline()
    torch.set_num_threads(threads)


def test_loads_offline_frozen_and_small(pipe):
    from diffusers import StableDiffusionControlNetPipeline

    assert isinstance(pipe, StableDiffusionControlNetPipeline)
    assert pipe.safety_checker is None
    assert all(not p.requires_grad for p in pipe.controlnet.parameters())
    assert pipe.controlnet.dtype == torch.float32
    assert not pipe.controlnet.training
    assert sum(f.stat().st_size for f in TOY_CONTROLNET_DIR.rglob("*") if f.is_file()) < 5_000_000


def test_outline_image_is_the_masks_boundary():
    scene, _ = scene_and_seed(0)
    lines = np.asarray(outline_image(scene))
    assert lines.shape == (32, 32, 3) and set(np.unique(lines)) == {0, 255}
    drawn = lines[:, :, 0] == 255
    for mask in scene.masks:
        assert (drawn & mask).any() and not (drawn & mask).all()  # a boundary, not a fill
    assert not (drawn & ~np.logical_or(*scene.masks)).any()


@pytest.mark.parametrize("color_only", [False, True])
@pytest.mark.parametrize("index", DRAWN_SCENES)
def test_draws_the_shapes_of_its_outlines(pipe, index, color_only):
    scene, seed = scene_and_seed(index)
    prompt = color_only_prompt(scene) if color_only else scene.prompt
    image = pipe(
        prompt, image=outline_image(scene), generator=seeded(seed), output_type="np",
        **TOY_CONTROL_CALL,
    ).images[0]  # fmt: skip
    assert matches_scene(image, scene)


def test_object_box_reads_its_own_outline(pipe):
    scene, seed = scene_and_seed(EXPLAINED_SCENE)
    mask = scene.masks[EXPLAINED_OBJECT]
    box = mask_box(mask)
    call = dict(image=outline_image(scene), output_type="np", **TOY_CONTROL_CALL)
    out = explainer_for(pipe, verbose=False)(
        scene.prompt, generator=seeded(seed), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **call,
    )  # fmt: skip
    np.testing.assert_array_equal(out.image, pipe(scene.prompt, generator=seeded(seed), **call).images[0])
    scores = np.abs(np.asarray(out.control_pixel_attributions, dtype=np.float64))
    own = scores[outline_band(mask, 2)].sum() / scores.sum()
    assert own >= MIN_OWN_BAND_SHARE, own
