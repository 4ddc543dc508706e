"""An explanation's maps written as files (NPZ, JSON, PNG) with the settings that made them."""

import json

import numpy as np
import pytest
from conftest import PROMPT, seeded
from PIL import Image

from diffusers_interpret import explainer_for


def test_the_exported_maps_are_the_outputs_and_say_what_made_them(tiny_pipe, tmp_path):
    out = explainer_for(tiny_pipe, verbose=False)(
        PROMPT,
        generator=seeded(0),
        num_inference_steps=3,
        attribution_method="word_attention",
        explanation_2d_bounding_box=((0, 0), (16, 32)),
        guidance_scale=6.0,
    )
    written = out.export_maps(tmp_path / "maps")
    with np.load(written["maps.npz"]) as arrays:
        np.testing.assert_array_equal(arrays["word_maps"], np.asarray(out.word_maps, dtype=np.float32))
        np.testing.assert_allclose(arrays["attention_maps"], np.asarray(out.attention_maps.maps[0]), rtol=1e-6)
        for k, group in enumerate(out.word_tokens):  # each word's map: its tokens' maps added
            np.testing.assert_allclose(arrays["words"][k], np.asarray(out.word_maps)[group].sum(0), rtol=1e-6)
        np.testing.assert_allclose(arrays["prompt_dependence_map"], out.prompt_dependence_map, rtol=1e-6)
        shapes = {name: list(arrays[name].shape) for name in arrays.files}
    settings = json.loads(written["maps.json"].read_text(encoding="utf-8"))
    assert settings["prompt"] == PROMPT and settings["method"] == "word_attention"
    assert settings["box"] == [[0, 0], [16, 32]] and settings["arrays"] == shapes
    assert [t["label"] for t in settings["tokens"]] == [label for label, _ in out.token_attributions]
    assert [w["word"] for w in settings["words"]] == [word for word, _ in out.word_attributions]
    assert settings["call"]["num_inference_steps"] == 3 and settings["call"]["guidance_scale"] == 6.0
    assert settings["call"]["pipeline"] == type(tiny_pipe).__name__
    assert settings["attention"]["steps"] == [int(s) for s in out.attention_maps.steps]
    pictures = sorted(p for p in written if p.endswith(".png"))
    assert len(pictures) == len(out.word_attributions)
    with Image.open(written[pictures[0]]) as picture:
        assert picture.size == out.image.size


def test_an_explanation_without_maps_says_what_to_do(tiny_pipe, tmp_path):
    out = explainer_for(tiny_pipe, verbose=False)(
        PROMPT, generator=seeded(0), num_inference_steps=2, attribution_method="grad_x_input", prompt_dependence=False
    )
    with pytest.raises(ValueError, match="no maps to export"):
        out.export_maps(tmp_path)
    with pytest.raises(ValueError, match="colormap"):
        out.export_maps(tmp_path, cmap="nope")
