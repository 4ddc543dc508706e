r"""
Maps given the image's own edges (`edge_aware_maps`, `AttentionMaps.edge_aware`): the filter against a direct
computation of its formula, its invariances, what it does at an edge, its errors, and on the toy model: the default
method's word maps find the object each word names much more exactly once filtered.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_interpret import (
    StableDiffusionPipelineExplainer,
    edge_aware_maps,
    explainer_for,
    record_cross_attention,
)
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline
from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline, toy_model_available
from diffusers_interpret.toy.detector import check_prompt


def reference_filter(maps, image, cell_size, range_sigma, iterations):
    # The joint bilateral filter written out pixel by pixel: neighbours every `step` pixels out to two cells, clamped
    # at the border (replicate), weighted by a spatial Gaussian of `cell_size` and a colour Gaussian of `range_sigma`.
    step = max(1, round(cell_size / 2))
    reach = math.ceil(2 * cell_size / step)
    height, width = maps.shape[-2:]
    values = maps.astype(np.float64)
    for _ in range(iterations):
        out = np.zeros_like(values)
        for y in range(height):
            for x in range(width):
                total = np.zeros(values.shape[0])
                norm = 0.0
                for dy in range(-reach, reach + 1):
                    for dx in range(-reach, reach + 1):
                        ny = min(max(y + dy * step, 0), height - 1)
                        nx = min(max(x + dx * step, 0), width - 1)
                        spatial = ((dy * step) ** 2 + (dx * step) ** 2) / (2 * cell_size**2)
                        colour = ((image[ny, nx] - image[y, x]) ** 2).sum() / (2 * range_sigma**2)
                        weight = math.exp(-spatial - colour)
                        total += weight * values[:, ny, nx]
                        norm += weight
                out[:, y, x] = total / norm
        values = out
    return values


@pytest.mark.parametrize("cell_size,iterations", [(2.0, 1), (3.0, 2), (1.0, 2)])
def test_filter_matches_its_formula_computed_directly(cell_size, iterations):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 11)).astype(np.float32)
    image = rng.random((9, 11, 3)).astype(np.float32)
    got = edge_aware_maps(maps, image, cell_size, range_sigma=0.3, iterations=iterations)
    want = reference_filter(maps, image.astype(np.float64), cell_size, 0.3, iterations)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bands_kinds_and_shapes_do_not_change_the_result():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 20, 16)).astype(np.float32)
    image = (rng.random((20, 16, 3)) * 255).astype(np.uint8)
    whole = edge_aware_maps(maps, image, 2.0)
    assert isinstance(whole, np.ndarray) and whole.shape == maps.shape
    for bound in (500, 36_000):  # one row per band; bands of 6 rows, the last one of 2
        np.testing.assert_allclose(edge_aware_maps(maps, image, 2.0, max_elements=bound), whole, rtol=1e-5, atol=1e-6)
    as_tensor = edge_aware_maps(torch.from_numpy(maps), Image.fromarray(image), 2.0)
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), whole, rtol=1e-5, atol=1e-6)
    one = edge_aware_maps(maps[2], image, 2.0)
    assert one.shape == maps.shape[1:]
    np.testing.assert_allclose(one, whole[2], rtol=1e-5, atol=1e-6)
    # The same guide in other forms: 16-bit integers, floats in [0, 1], a torch tensor; the maps in float64, reversed.
    for guide in (image.astype(np.uint16) * 257, image / 255.0, torch.from_numpy(image)):
        np.testing.assert_allclose(edge_aware_maps(maps, guide, 2.0), whole, rtol=1e-4, atol=1e-5)
    wide = edge_aware_maps(maps.astype(np.float64)[:, ::-1], image[::-1], 2.0)
    assert wide.dtype == np.float64
    np.testing.assert_allclose(wide[:, ::-1], whole, rtol=1e-4, atol=1e-5)
    # A grey image is its own three channels; a PIL image with alpha is read as RGB.
    grey = image[..., :1]
    np.testing.assert_allclose(
        edge_aware_maps(maps, grey, 2.0), edge_aware_maps(maps, np.repeat(grey, 3, -1), 2.0), rtol=1e-6
    )
    rgba = Image.fromarray(np.concatenate([image, np.full_like(image[..., :1], 7)], -1), "RGBA")
    np.testing.assert_allclose(edge_aware_maps(maps, rgba, 2.0), whole, rtol=1e-5, atol=1e-6)


def test_a_constant_map_stays_constant_and_a_flat_image_only_blurs():
    rng = np.random.default_rng(2)
    image = rng.random((12, 12, 3)).astype(np.float32)
    constant = np.full((12, 12), 0.37, dtype=np.float32)
    np.testing.assert_allclose(edge_aware_maps(constant, image, 2.0), constant, rtol=1e-5)
    # With one colour everywhere only the spatial Gaussian is left: the peak spreads, alike in every direction.
    spike = np.zeros((12, 12), dtype=np.float32)
    spike[6, 6] = 1.0
    flat = edge_aware_maps(spike, np.full((12, 12, 3), 0.5, dtype=np.float32), 2.0, iterations=1)
    assert flat[6, 6] < 0.2 and flat[6, 7] > 0 and flat[6, 7] == pytest.approx(flat[7, 6], rel=1e-5)


def test_a_blurred_map_takes_the_outline_of_the_object_under_it():
    # A bright square on a dark image, and a map that found the square only to within a few pixels (box blur).
    image = np.zeros((32, 32, 3), dtype=np.float32)
    image[10:22, 8:20] = 1.0
    truth = image[..., 0] > 0.5
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(truth.astype(np.float32))[None, None], 9, 1, 4)
    blurred = blurred[0, 0].numpy()
    filtered = edge_aware_maps(blurred, image, 4.0)

    def best_iou(values):
        values = (values - values.min()) / (values.max() - values.min())
        return max(((values >= t) & truth).sum() / ((values >= t) | truth).sum() for t in np.arange(0.1, 0.95, 0.05))

    assert best_iou(filtered) > 0.95 > best_iou(blurred) + 0.1
    # Inside the square the map is nearly flat; just outside it falls (the blurred map straddles the edge).
    assert filtered[truth].std() < 0.5 * blurred[truth].std()
    assert filtered[9, 14] < 0.5 * blurred[9, 14]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cell_size=0), "cell_size"),
        (dict(cell_size=float("nan")), "cell_size"),
        (dict(cell_size=2, range_sigma=-1), "range_sigma"),
        (dict(cell_size=2, iterations=0), "iterations"),
        (dict(cell_size=2, image=np.zeros((8, 9, 3))), "the maps are 8x8"),
        (dict(cell_size=2, image=np.zeros((8, 8))), r"\(H, W, 3\)"),
        (dict(cell_size=2, image="image.png"), "PIL image"),
        (dict(cell_size=2, image=np.full((8, 8, 3), 255.0)), r"\[0, 1\]"),
        (dict(cell_size=2, maps=np.zeros((8, 8), dtype=np.int64)), "float"),
    ],
)
def test_bad_arguments_say_what_to_pass(kwargs, match):
    arguments = dict(maps=np.zeros((8, 8)), image=np.zeros((8, 8, 3)))
    arguments.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        edge_aware_maps(**arguments)


def finest_attention_grid(pipe, prompt):
    # The largest query length any cross-attention layer sees, read off the layers' own inputs.
    lengths = []
    handles = [
        module.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
        for name, module in pipe.unet.named_modules()
        if name.endswith("attn2.to_q")
    ]
    try:
        pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        for handle in handles:
            handle.remove()
    return math.isqrt(max(lengths))


@pytest.mark.parametrize("make", [make_tiny_pipeline, make_tiny_sdxl_pipeline], ids=["sd", "sdxl"])
def test_recorded_maps_know_their_cell_and_filter_the_rows_asked(make):
    pipe = make()
    prompt = "a red circle on the left"
    grid = finest_attention_grid(pipe, prompt)
    with record_cross_attention(pipe) as recorder:
        image = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil")
    maps = recorder.maps
    assert maps.cell_size == maps.size[0] / grid
    filtered = maps.edge_aware(image.images, positions=[1, 2])
    assert torch.equal(filtered.maps[:, 3:], maps.maps[:, 3:]) and torch.equal(filtered.maps[:, :1], maps.maps[:, :1])
    want = edge_aware_maps(maps.maps[0, [1, 2]], image.images[0], maps.cell_size)
    torch.testing.assert_close(filtered.maps[0, [1, 2]], want)
    assert filtered.plot(image.images[0], [1, 2]) is not None  # the filtered maps draw like the raw ones
    with pytest.raises(ValueError, match="one per image"):
        maps.edge_aware(image.images * 2)
    assert torch.equal(maps.edge_aware(image.images, positions=[]).maps, maps.maps)


def test_the_explainers_word_maps_carry_their_cell():
    pipe = make_tiny_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    output = explainer("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert output.extras["cell_size"] == pipe.vae_scale_factor * pipe.unet.config.sample_size / finest_attention_grid(
        pipe, "a red circle"
    )


@pytest.mark.skipif(not toy_model_available(), reason="the shipped toy model's files are missing")
def test_on_the_toy_the_filtered_word_maps_find_each_words_object():
    # The three fixed scenes of test_toy_truth; each object's colour and shape word, the default method's word maps.
    # Measured: of the object's area worth of highest pixels, 91-100% fall on the object once filtered (62-92% raw);
    # IoU at the threshold 0.9 of the min-max normalized map 0.82-0.98 (0.39-0.67 raw).
    scenes = [
        ("a yellow triangle on the left and a green triangle on the right", 31337),
        ("a green triangle on the left and a blue square on the right", 31338),
        ("a yellow triangle on the left and a blue circle on the right", 31339),
    ]
    pipe = load_toy_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    common = dict(guidance_scale=TOY_GUIDANCE_SCALE, num_inference_steps=TOY_NUM_INFERENCE_STEPS, output_type="np")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        precision, ious, raw_precision = [], [], []
        for prompt, seed in scenes:
            output = explainer(prompt, generator=torch.Generator().manual_seed(seed), **common)
            check = check_prompt(output.image, prompt)
            assert check.correct
            maps = np.asarray(output.extras["word_maps"])
            filtered = edge_aware_maps(maps, output.image, output.extras["cell_size"])
            for side, positions in (("left", (1, 2)), ("right", (8, 9))):
                mask = check.detection.objects[side].mask
                for position in positions:
                    for values, into in ((filtered[position], precision), (maps[position], raw_precision)):
                        top = np.argsort(values.ravel())[::-1][: mask.sum()]
                        into.append(mask.ravel()[top].mean())
                    values = filtered[position]
                    values = (values - values.min()) / (values.max() - values.min())
                    ious.append(((values >= 0.9) & mask).sum() / ((values >= 0.9) | mask).sum())
    finally:
        torch.set_num_threads(saved)
    assert min(precision) >= 0.85 and np.mean(precision) >= 0.9, precision
    assert np.mean(precision) > np.mean(raw_precision) + 0.1, (precision, raw_precision)
    assert min(ious) >= 0.7 and np.mean(ious) >= 0.8, ious


def test_one_image_of_a_batch_and_the_interactive_views_edge_aware_maps():
    pipe = make_tiny_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    outputs = explainer(
        ["a red circle", "a blue square"],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        attention_maps=True,
        output_type="np",
    )
    second = outputs[1]
    maps = second.attention_maps
    one = maps.of_image(1)
    assert one.num_images == 1 and torch.equal(one.maps[0], maps.maps[1]) and one.cell_size == maps.cell_size
    assert torch.equal(maps.of_image(-1).maps, one.maps) and torch.equal(maps.of_image(-2).maps[0], maps.maps[0])
    with pytest.raises(ValueError, match="of_image"):
        maps.edge_aware(second.image)  # one image for the maps of two
    positions = second.extras["token_positions"]
    raw = second.interactive_view(cell_size=4).attention_maps
    shown = second.interactive_view(cell_size=4, edge_aware=True).attention_maps
    image = Image.fromarray((second.image * 255).round().astype(np.uint8))  # the image the view shows
    for position, before, after in zip(positions, raw, shown):
        want = edge_aware_maps(maps.maps[1, position].numpy(), image, maps.cell_size)
        want = (want - want.min()) / (want.max() - want.min())
        np.testing.assert_allclose(after, want, atol=1e-5)
        np.testing.assert_allclose(before, maps.for_token(position, image_index=1), atol=1e-6)
    assert any(np.abs(a - b).max() > 0.05 for a, b in zip(raw, shown))
    with pytest.raises(TypeError, match="edge_aware"):
        second.interactive_view(edge_aware="yes")
    plain = explainer(
        "a red circle",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        attribution_method="grad_x_input",
        keep_for_reexplanation="graph",
    )
    assert plain.attention_maps is None
    with pytest.raises(ValueError, match="attention_maps=True"):
        plain.interactive_view(edge_aware=True)


@pytest.mark.parametrize(
    "make,common",
    [
        (make_tiny_sd3_pipeline, dict(max_sequence_length=TINY_SD3_T5_LENGTH)),
        (make_tiny_flux_pipeline, dict(max_sequence_length=TINY_T5_LENGTH)),
    ],
    ids=["sd3", "flux"],
)
@pytest.mark.parametrize("method", ["word_attention", "concept_attention"])
def test_the_transformer_families_maps_carry_their_token_grids_cell(make, common, method):
    # The image-token grid read off the transformer's own input: SD3's latents cut into patch_size patches, Flux's
    # packed tokens (2x2 latents each).
    pipe = make()
    grids = []

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"]
        side = hidden.shape[2] // module.config.patch_size if hidden.ndim == 4 else math.isqrt(hidden.shape[1])
        grids.append(side)

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        output = explainer_for(pipe, verbose=False)(
            "a red circle",
            height=32,
            width=32,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            attribution_method=method,
            **common,
        )
    finally:
        handle.remove()
    assert output.extras["cell_size"] == 32 / grids[0]
