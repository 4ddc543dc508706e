r"""Checks and probes several families' tests share: layer calls captured, the explainer's state after a failing call,
refusals before any model runs, the token mixing computed over every row, a box over a clip's frames re-explained."""

import numpy as np
import pytest
from pipeline_state import pipeline_state


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
