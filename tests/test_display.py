"""Notebook and script display: every view shows exactly once, files only where asked, the output shows itself."""

import html
import re

import IPython
import IPython.display
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import PROMPT, SIZE, seeded
from PIL import Image

from diffusers_interpret import SaliencyMap, StableDiffusionPipelineExplainer

STEPS = 3


class FakeKernelShell:
    kernel = object()  # what a notebook's shell has and a terminal's has not

    class events:  # what pyplot registers its redraw with
        @staticmethod
        def register(*args, **kwargs):
            pass


@pytest.fixture
def notebook(monkeypatch):
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeKernelShell())
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    return shown


@pytest.fixture(scope="module")
def output(tiny_pipe):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    return explainer(
        "a <b>red</b> circle",
        generator=seeded(0),
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        explanation_2d_bounding_box=((0, 0), (16, 32)),
        keep_for_reexplanation="graph",
    )


def test_every_view_displays_exactly_once_in_a_notebook(notebook, output, tmp_path):
    figures = plt.get_fignums()
    assert output.all_images_during_generation.show() is None
    assert len(notebook) == 1 and "data:image/png;base64," in notebook[0].data
    saliency = SaliencyMap(Image.new("RGB", (8, 8)), np.random.default_rng(0).random((8, 8)))
    assert saliency.show() is None
    assert len(notebook) == 2 and isinstance(notebook[1], plt.Figure)
    assert output.interactive_view(cell_size=16).show() is None
    assert len(notebook) == 3 and "di-view-" in notebook[2].data
    # `.plot()` returns its figure without leaving it to pyplot (which a notebook would display a second time).
    assert output.token_attributions.plot() is not None and saliency.plot() is not None
    assert plt.get_fignums() == figures
    # In a notebook, `.gif()` embeds the GIF in the page and writes nothing unless asked.
    before = set(tmp_path.iterdir())
    assert output.all_images_during_generation.gif() is None and len(notebook) == 4
    assert "data:image/gif;base64," in notebook[3].data and set(tmp_path.iterdir()) == before


def test_ids_are_unique_per_render(output):
    frames = output.all_images_during_generation
    view = output.interactive_view(cell_size=16)
    for first, second in ((frames._repr_html_(), frames._repr_html_()), (view.to_html(), view.to_html())):
        ids = set(re.findall(r'id="([^"]+)"', first))
        assert ids and not ids & set(re.findall(r'id="([^"]+)"', second))


def test_outside_a_notebook_show_says_where_to_look(output, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert output.all_images_during_generation.show() is None
    page = re.search(r"saved to (\S+\.html)", capsys.readouterr().out).group(1)
    with open(page, encoding="utf-8") as f:
        assert "<!DOCTYPE html>" in f.read()
    # `.gif()` without a name writes diffusion_process.gif, then never overwrites it.
    frames = output.all_images_during_generation
    first, second = frames.gif(), frames.gif()
    assert (first.name, second.name) == ("diffusion_process.gif", "diffusion_process-1.gif")
    assert "diffusion_process-1.gif" in capsys.readouterr().out
    asked = frames.gif(tmp_path / "steps.gif", duration=100)
    with Image.open(asked) as gif:
        assert gif.n_frames == STEPS
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == [
        "diffusion_process-1.gif",
        "diffusion_process.gif",
        "steps.gif",
    ]


def test_the_output_shows_itself(output):
    card = output._repr_html_()
    assert card.count("data:image/png;base64,") == 1
    assert "word_attention" in card and "&lt;b&gt;red&lt;/b&gt;" in card and "<b>red</b>" not in card
    # One bar per word, with the word's share in percent.
    for word, share in output.word_attributions.normalized:
        assert f">{html.escape(word)}</td>" in card and f"{share:.1f}%" in card
    assert "<script" not in card


def test_toy_models_load_quietly_and_settings_come_back(capfd):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from diffusers_interpret.toy import load_toy_flux_pipeline, load_toy_pipeline

    before = [
        (lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)
    ]
    capfd.readouterr()
    load_toy_pipeline()
    load_toy_flux_pipeline()
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""  # no notice, no progress bar
    after = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    assert after == before


def test_a_progress_bar_config_with_a_file_survives_explaining(tiny_pipe):
    import sys

    tiny_pipe.set_progress_bar_config(file=sys.stderr, disable=True)
    try:
        explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
        explainer(PROMPT, generator=seeded(0), num_inference_steps=2, height=SIZE, width=SIZE)
        assert tiny_pipe._progress_bar_config["file"] is sys.stderr
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)
        tiny_pipe._progress_bar_config.pop("file", None)


def test_the_view_scores_by_the_calls_own_method(output):
    # The call used the default word_attention with the graph kept: the view follows the method, not the graph.
    view = output.interactive_view(cell_size=16)
    assert view.score == "word_attention" == output.attribution_method
    whole = view.box_scores(0, 0, *view.cell_grad_x_input.shape[:2])
    np.testing.assert_allclose(whole, output.explain(None).token_attributions.scores, rtol=1e-5)
