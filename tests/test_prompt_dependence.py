r"""
`output.prompt_dependence`: how much a box depends on the prompt at all (the share of it the model redraws
differently without the prompt).

- On fixed toy scenes (the first scenes of the held-out seed of `benchmarks/prompt_dependence.py`, generated and
  rendered), every box around an object reads "depends on the prompt" and every box of the same size over empty
  background "depends little", by the one documented threshold; the raw total of the default method's scores over
  the box's area, the issue's floor, is printed beside it.
- The measure is what it says: the empty prompt depends on nothing (0 everywhere); a box's number is the mean of the
  map over it, for a new box as for the call's; the map is the same for a generated image and for that image
  explained as an existing one; `prompt_dependence=False` skips it.
- The views say it in words and dim the bars below the threshold; the interactive view computes it for a drawn box as
  Python does.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_interpret import explainer_for
from diffusers_interpret.dependence import DEPENDS_THRESHOLD, bar_opacity, describe_dependence
from diffusers_interpret.toy import TOY_MODELS, toy_model_available
from diffusers_interpret.tracing.redraw import redraw_changes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from prompt_dependence import auroc, measure  # noqa: E402

pytestmark = pytest.mark.skipif(not toy_model_available(), reason="the shipped toy model's files are missing")

HELD_OUT_SEED = 999
NUM_SCENES = 6


@pytest.fixture(scope="module")
def toy():
    model = TOY_MODELS["toy"]
    return model.load(), dict(model.call)


@pytest.fixture(scope="module")
def explainer(toy):
    return explainer_for(toy[0], verbose=False)


@pytest.mark.parametrize("kind", ["gen", "rendered"])
def test_object_boxes_depend_on_the_prompt_and_empty_boxes_little(one_thread, kind):
    # The benchmark's own measurement, on its first held-out scenes.
    rows = measure("toy", kind, NUM_SCENES, HELD_OUT_SEED)
    objects = [row["dependence"] for row in rows if row["kind"] == "obj"]
    empty = [row["dependence"] for row in rows if row["kind"] == "empty"]
    assert len(objects) >= 8 and len(empty) >= 8, (len(objects), len(empty))
    raw = auroc([r["raw"] for r in rows if r["kind"] == "obj"], [r["raw"] for r in rows if r["kind"] == "empty"])
    print(f"{kind}: AUROC {auroc(objects, empty):.3f} (raw total / area {raw:.3f})")
    assert auroc(objects, empty) == 1.0
    assert min(objects) >= DEPENDS_THRESHOLD > max(empty), (sorted(objects)[:3], sorted(empty)[-3:])


def test_the_empty_prompt_depends_on_nothing_and_boxes_read_the_map(one_thread, explainer, toy):
    call = toy[1]
    generator = torch.Generator().manual_seed(0)
    output = explainer(
        "a red square on the left", generator=generator, attribution_method="attention", keep_for_reexplanation=None,
        get_images_for_all_inference_steps=False, **call,
    )  # fmt: skip
    changed = output.prompt_dependence_map
    assert changed.shape == (32, 32) and 0 <= changed.min() and changed.max() <= 1
    assert output.prompt_dependence == pytest.approx(changed.mean())
    box = ((3, 5), (19, 17))
    assert output.explain(box).prompt_dependence == pytest.approx(changed[5:17, 3:19].mean())
    assert output.explain(box).word_attributions.prompt_dependence == output.explain(box).prompt_dependence
    # The empty prompt itself: both redraws see the same conditioning, nothing changes.
    pixels = torch.from_numpy(np.asarray(output.image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    nothing = redraw_changes(toy[0], explainer.family, pixels, {"prompt": [""]}, {})
    assert nothing.changed.max() == 0.0
    assert redraw_changes(toy[0], explainer.family, pixels, {"prompt": [output.prompt]}, {}).changed.max() > 0.5
    # The map reads the image, not how it was made: the same image explained as an existing one.
    again = explainer.explain_image(output.image, "a red square on the left", attribution_method="attention")
    assert np.abs(again.prompt_dependence_map - changed).mean() < 0.02
    skipped = explainer(
        "a red square on the left", generator=torch.Generator().manual_seed(0), attribution_method="attention",
        prompt_dependence=False, get_images_for_all_inference_steps=False, **call,
    )  # fmt: skip
    assert skipped.prompt_dependence is None and skipped.prompt_dependence_map is None
    with pytest.raises(TypeError, match="prompt_dependence"):
        explainer("a red square", prompt_dependence="yes", **call)


def test_redraws_side_by_side_are_the_redraws_one_at_a_time(one_thread, explainer, toy, monkeypatch):
    # Small images are redrawn several noised copies to a denoiser call and decoded together; each copy must still be
    # the redraw of its own seed (copy k of level i: seed i * copies + k), as one call per copy makes it.
    from diffusers_interpret.dependence import PIXEL_CHANGE, REDRAW_LEVELS, REDRAWS_PER_LEVEL
    from diffusers_interpret.tracing import redraw
    from diffusers_interpret.tracing.denoising import ImageDenoising

    pipe, family, prompt = toy[0], explainer.family, "a blue circle on the right"
    image = pipe(prompt, generator=torch.Generator().manual_seed(3), output_type="pt", **toy[1]).images
    pixels = image * 2 - 1
    with torch.no_grad():
        latents = family.encode_image(pipe, pixels)
    batched = ImageDenoising(pipe, family, latents, REDRAW_LEVELS, 0, (32, 32), REDRAWS_PER_LEVEL, average=False)
    encoded = []  # the rows the text encoder sees: the two texts once, not once per copy
    hook = pipe.text_encoder.register_forward_pre_hook(lambda module, args: encoded.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            rows = batched([prompt, ""]).images
    finally:
        hook.remove()
    assert rows.shape[0] == 2 * len(REDRAW_LEVELS) * REDRAWS_PER_LEVEL
    assert encoded == [2]
    # The map as the redraws were made one at a time: redraw r alone, from seed r, its pair decoded alone.
    reference = torch.zeros(32, 32)
    for index in range(len(REDRAW_LEVELS) * REDRAWS_PER_LEVEL):
        alone = ImageDenoising(pipe, family, latents, [REDRAW_LEVELS[index // REDRAWS_PER_LEVEL]], index, (32, 32))
        with torch.no_grad():
            expected = alone([prompt, ""]).images
            redrawn = family.unit_image(pipe, family.decode(pipe, expected, None, (32, 32)))
        torch.testing.assert_close(rows[2 * index : 2 * index + 2], expected, rtol=1e-4, atol=1e-5)
        reference += ((redrawn[0] - redrawn[1]).abs().amax(0) > PIXEL_CHANGE).float()
    reference = (reference / (len(REDRAW_LEVELS) * REDRAWS_PER_LEVEL)).numpy()
    assert reference.max() > 0.5
    # All pairs decoded at once, then five at a time (chunks of 5, 5 and 2 pairs): the same map, to rounding.
    for limit in (redraw.REDRAW_BATCH_PIXELS, 5 * 2 * 32 * 32):
        monkeypatch.setattr(redraw, "REDRAW_BATCH_PIXELS", limit)
        made = redraw_changes(pipe, family, pixels, {"prompt": [prompt]}, {}).changed
        assert (made != reference).sum() <= 2, np.abs(made - reference).max()


def test_views_say_it_and_dim_low_boxes(one_thread, explainer, toy, tmp_path):
    from diffusers_interpret.views.report import write_report

    output = explainer(
        "a yellow triangle on the right", generator=torch.Generator().manual_seed(0),
        get_images_for_all_inference_steps=False, **toy[1],
    )  # fmt: skip
    empty_corner = output.explain(((0, 0), (8, 8)))
    assert empty_corner.prompt_dependence < DEPENDS_THRESHOLD
    triangle = output.explain(((18, 14), (30, 28)))
    assert triangle.prompt_dependence >= DEPENDS_THRESHOLD
    opacity = bar_opacity(empty_corner.prompt_dependence)
    assert opacity < 0.5 and bar_opacity(triangle.prompt_dependence) == 1.0
    markup = empty_corner._repr_html_()
    assert "Depends little on the prompt" in markup and f"opacity:{opacity}" in markup
    assert describe_dependence(empty_corner.prompt_dependence) in markup
    assert describe_dependence(triangle.prompt_dependence) in triangle._repr_html_()
    assert "Depends on the prompt" in triangle._repr_html_()
    # The whole image only says its share (no call, no fading).
    assert describe_dependence(output.prompt_dependence, whole_image=True) in output._repr_html_()
    page = write_report([output, empty_corner, triangle], tmp_path).read_text()
    assert page.count("Depends little on the prompt") == 1 and page.count("Depends on the prompt") == 1
    assert page.count(f'<table class="bars" style="opacity:{opacity}">') == 1
    figure = empty_corner.word_attributions.plot(title="a $x^$ prompt")  # matplotlib would parse it as math
    assert all(bar.get_alpha() == opacity for bar in figure.axes[0].patches)
    assert "Depends little" in figure.axes[0].get_xlabel()
    figure = triangle.word_attributions.plot()
    assert all(bar.get_alpha() == 1.0 for bar in figure.axes[0].patches)


def test_interactive_view_computes_the_box_dependence(one_thread, browser, explainer, toy, tmp_path):
    output = explainer(
        "a yellow triangle on the right", generator=torch.Generator().manual_seed(0),
        get_images_for_all_inference_steps=False, **toy[1],
    )  # fmt: skip
    view = output.interactive_view(cell_size=4)
    browser.get(view.save(tmp_path / "view.html").resolve().as_uri())
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    for r0, c0, r1, c1 in [(0, 0, 8, 8), (0, 0, 2, 2), (2, 4, 6, 8)]:
        shown = browser.execute_script(
            f"return window.diffusersInterpretViews[{uid!r}].dependenceForBox({r0}, {c0}, {r1}, {c1})"
        )
        expected = output.explain(((c0 * 4, r0 * 4), (c1 * 4, r1 * 4))).prompt_dependence
        assert shown == pytest.approx(expected, abs=1e-4)  # per-cell sums sent to 4 decimals
        assert view.box_dependence(r0, c0, r1, c1) == pytest.approx(expected, abs=1e-6)
        browser.execute_script(f"window.diffusersInterpretViews[{uid!r}].setBox({r0}, {c0}, {r1}, {c1})")
        text = browser.find_element("css selector", f"#{uid}-dependence").text
        whole = (r0, c0, r1, c1) == (0, 0, 8, 8)
        assert text == describe_dependence(expected, whole_image=whole)
        shown_opacity = browser.find_element("css selector", f"#{uid}-bars").get_attribute("data-opacity")
        assert float(shown_opacity) == pytest.approx(bar_opacity(expected, whole), abs=1e-3)


def test_inpainting_keeps_what_is_outside_its_mask(one_thread, toy):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from diffusers_interpret.testing.stable_diffusion import make_tiny_pipeline
    from diffusers_interpret.toy.scenes import generate_scene

    pipe = StableDiffusionInpaintPipeline(**toy[0].components, requires_safety_checker=False)
    explainer = explainer_for(pipe, verbose=False)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    call = dict(strength=0.9, num_inference_steps=20, guidance_scale=toy[1]["guidance_scale"])
    scene = generate_scene(5, num_objects=2)
    output = explainer(
        "a red square on the right", init_image=scene.to_pil(), mask_image=Image.fromarray(mask),
        generator=torch.Generator().manual_seed(0), get_images_for_all_inference_steps=False, **call,
    )  # fmt: skip
    changed = output.prompt_dependence_map
    assert changed[:, :16].max() == 0.0  # kept by the pipeline: depends on nothing
    assert changed[:, 16:].mean() > 0.1  # repainted with the prompt's red square
    # A 9-channel inpainting UNet reads the mask too: it cannot redraw the image alone, and says nothing.
    tiny = make_tiny_pipeline(kind="inpaint")
    tiny_output = explainer_for(tiny, verbose=False)(
        "a red square", init_image=Image.new("RGB", (64, 64), "white"), mask_image=Image.new("L", (64, 64), 255),
        num_inference_steps=2, generator=torch.Generator().manual_seed(0), attribution_method="attention",
    )  # fmt: skip
    assert tiny_output.prompt_dependence is None and tiny_output.prompt_dependence_map is None


def test_conditioning_repeated_for_copies_keeps_each_entrys_rows_in_copy_order():
    # What the families' `encode` returns beside the states (masks, Z-Image's lengths, a mask that is None) is
    # repeated row for row as the states are, copy after copy, as the texts repeated would have been encoded.
    from diffusers_interpret.tracing.denoising import _repeated

    states, lengths = torch.randn(2, 5, 3), torch.tensor([2, 3])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    made = _repeated({"encoder_hidden_states": states, "mask": mask, "lengths": lengths, "none": None}, 2, 3)
    for copy in range(3):
        torch.testing.assert_close(made["encoder_hidden_states"][2 * copy : 2 * copy + 2], states)
        torch.testing.assert_close(made["mask"][2 * copy : 2 * copy + 2], mask)
    assert made["lengths"].tolist() == [2, 3] * 3 and made["none"] is None
    assert _repeated({"encoder_hidden_states": states}, 2, 1)["encoder_hidden_states"] is states
