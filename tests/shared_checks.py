r"""Checks and probes several families' tests share: layer calls captured, the explainer's state after a failing call,
refusals before any model runs, the token mixing computed over every row, a box over a clip's frames re-explained,
an image-to-video clip's pixel gradients against central differences."""

import numpy as np
import pytest
from conftest import seeded
from pipeline_state import pipeline_state

from diffusers_interpret import PipelineImageToVideoExplainerOutput, explainer_for


def layer_calls(layers, run):
    r"""Run `run()` and return every call of the modules `layers` made during it, as (module, args, kwargs)."""
    captured = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k: captured.append((m, a, k)), with_kwargs=True)
        for layer in layers
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def assert_refused_before_any_model_runs(denoiser, explain, message):
    r"""`explain()` raises a `ValueError` matching `message` before `denoiser` is called once."""
    calls = []
    handle = denoiser.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            explain()
    finally:
        handle.remove()
    assert not calls


def assert_state_restored_after_an_injected_exception(pipe, explain, denoiser=None, at_call: int = 2):
    r"""An exception raised at step 1 of `explain(attribution_method=..., callback_on_step_end=...)` leaves the
    pipeline as it was, for a gradient method and an attention method. With `denoiser` (a pipeline that takes no step
    callback), the exception is raised by `denoiser`'s call number `at_call` instead (a hook of the test's, removed
    before the pipeline's state is compared)."""
    before = pipeline_state(pipe)

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    for method in ("grad_x_input", "word_attention"):
        handle = None
        if denoiser is not None:
            handle = denoiser.register_forward_pre_hook(_raising_at_call(at_call), with_kwargs=True)
        try:
            with pytest.raises(KeyError, match="injected"):
                explain(attribution_method=method, **({} if denoiser is not None else {"callback_on_step_end": boom}))
        finally:
            if handle is not None:
                handle.remove()
        assert pipeline_state(pipe) == before


def assert_a_box_over_frames_re_explained_is_a_fresh_call(explain, explain_checkpointed, size: int):
    r"""On a clip of `size`-pixel frames: a box over frames 2 to 4 is that box on each of them; re-explained from the
    kept graph over frames 3 to 4 it equals a fresh call, and so does a call with gradient checkpointing.
    `explain(**kwargs)` and `explain_checkpointed(**kwargs)` explain the same prompt and seed with `grad_x_input`."""
    box = ((4, 4), (12, 12))
    out = explain(explanation_2d_bounding_box=box, explanation_frames=(2, 5), keep_for_reexplanation="graph")
    assert out.explained_region == tuple(((4, 4 + k * size), (12, 12 + k * size)) for k in (2, 3, 4))
    fresh = explain(explanation_2d_bounding_box=box, explanation_frames=(3, 4))
    again = out.explain(box, explanation_frames=(3, 4))
    np.testing.assert_allclose(again.token_gradients, fresh.token_gradients, rtol=1e-5, atol=1e-9)
    checkpointed = explain_checkpointed(explanation_2d_bounding_box=box, explanation_frames=(3, 4))
    scale = float(np.abs(np.asarray(fresh.token_gradients)).max())
    np.testing.assert_allclose(checkpointed.token_gradients, fresh.token_gradients, rtol=1e-4, atol=1e-6 * scale)


def assert_image_to_video_pixel_gradients_are_central_differences(
    pipe, explainer_class, prompt: str, image, image_size, call: dict, box, frames, clip_along, eps: float = 1e-3
):
    r"""
    An image-to-video pipeline's explainer (`explainer_for` gives `explainer_class`) on `image`, seed 0: the clip is
    `pipe()`'s; the pixel attributions are of the image's `image_size` ((H, W)); the gradient (`grad_x_input`) of
    `box` over `frames` to the image's pixels equals the central difference, rel 1e-3, of the region's sum in the
    pipeline's own clips along it. `clip_along(unit, eps)` makes that clip ((frames, 3, H, W)) with the image moved
    by `eps` along the unit gradient, where the family moves it. Returns the explainer and `pipe()`'s clip
    ((frames, H, W, 3)), for the caller's further checks.
    """
    expected = pipe(prompt=prompt, image=image, generator=seeded(0), output_type="np", **call).frames[0]
    explainer = explainer_for(pipe, verbose=False)
    assert isinstance(explainer, explainer_class)
    region = dict(explanation_2d_bounding_box=box, explanation_frames=frames)
    out = explainer(
        prompt, image=image, generator=seeded(0), output_type="np", attribution_method="grad_x_input", **region, **call
    )
    assert isinstance(out, PipelineImageToVideoExplainerOutput) and out.prompt_dependence is None
    np.testing.assert_array_equal(np.stack(out.frames), expected)
    grad = out.pixel_gradients
    assert out.pixel_attributions.shape == tuple(image_size) and grad.abs().max() > 0
    unit = grad / grad.norm()
    (x0, y0), (x1, y1) = box

    def region_sum(step: float) -> float:
        return float(clip_along(unit, step)[frames[0] : frames[1], :, y0:y1, x0:x1].sum())

    difference = (region_sum(eps) - region_sum(-eps)) / (2 * eps)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)
    return explainer, expected


def _raising_at_call(index: int):
    # A forward pre-hook that raises `KeyError("injected")` at the module's `index`-th call (from 1).
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        if len(calls) == index:
            raise KeyError("injected")

    return hook


def every_row_mixing(monkeypatch):
    r"""Make the token mixing compute every row of each encoder's block (not only those that feed the positions
    read); returns the list into which the rows it would have computed are put, call by call."""
    from diffusers_interpret.text import mixing

    computed = []
    original = mixing._feeding_rows

    def every_row(family, pipe, slots, blocks, group, tokens):
        computed.append(original(family, pipe, slots, blocks, group, tokens))
        return blocks[group[0]].rows.start, blocks[group[0]].rows.stop

    monkeypatch.setattr(mixing, "_feeding_rows", every_row)
    return computed
