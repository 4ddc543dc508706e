r"""
The toy Flux as a stand-in for real Flux: its words reach the image through T5 in joint attention (not through CLIP's
pooled vector), the README's snippet draws the scene it names with the seed it shows, and more padding leaves the
word ranking where it was while the attention it takes is reported.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seeded
from scipy.stats import spearmanr

from diffusers_interpret import explainer_for
from diffusers_interpret.toy import TOY_FLUX_CALL, TOY_FLUX_MODEL_DIR, load_toy_flux_pipeline
from diffusers_interpret.toy.detector import check_prompt

pytestmark = pytest.mark.skipif(
    not (TOY_FLUX_MODEL_DIR / "model_index.json").is_file(), reason="the toy Flux model's files are missing"
)

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPTS = [
    "a red circle on the left",
    "a blue square on the left and a yellow triangle on the right",
    "a green triangle on the right and a red square on the left",
]


@pytest.fixture(scope="module")
def flux_pipe():
    return load_toy_flux_pipeline()


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_the_prompt_reaches_the_image_through_t5_not_the_pooled_vector(flux_pipe, one_thread):
    # Real Flux carries the content through T5's tokens in joint attention. The first toy Flux carried it through the
    # pooled CLIP vector (its share of the gradient 0.91-0.99 on these prompts); the shipped one measures 0.00-0.30.
    explainer = explainer_for(flux_pipe, verbose=False)
    shares = []
    for seed, prompt in enumerate(PROMPTS):
        out = explainer(prompt, generator=seeded(seed), attribution_method="grad_x_input", **TOY_FLUX_CALL)
        shares.append(out.pooled_share)
    assert max(shares) < 0.5 and np.mean(shares) < 0.25, shares


def test_the_readme_flux_snippet_draws_its_scene(one_thread):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    snippet = next(block for block in blocks if "load_toy_flux_pipeline" in block)
    namespace = {}
    exec(compile(snippet, "README toy Flux block", "exec"), namespace)
    prompt, output, right = namespace["prompt"], namespace["output"], namespace["right"]
    seed = int(re.search(r"manual_seed\((\d+)\)", snippet).group(1))
    image = namespace["pipe"](prompt, generator=seeded(seed), output_type="np", **TOY_FLUX_CALL).images[0]
    check = check_prompt(image, prompt)
    assert check.correct, check.detection.describe()  # the seed it shows draws the scene it names
    assert np.array_equal(np.asarray(output.image)[:, 33:], (image[:, 33:] * 255).round())  # pipe()'s, box aside
    for explained in (output, right):
        assert explained.word_attributions.tokens == prompt.split()  # every word once
        assert 0 < explained.attention_sink_share < 1
    assert right.explanation_2d_bounding_box != output.explanation_2d_bounding_box


def test_more_padding_is_left_out_and_leaves_the_ranking(flux_pipe, one_thread):
    # T5 reads its padding (diffusers' Flux gives it no attention mask) and the padding sits in joint attention, so
    # T5 length 16 -> 32 changes the image a little (as in real Flux). The padding's own attention is left out of the
    # maps and reported; the prompt's tokens' maps still sum to 1 at every pixel, and the words rank as before.
    explainer = explainer_for(flux_pipe, verbose=False)
    for seed, prompt in enumerate(PROMPTS):
        runs = {}
        for length in (16, 32):
            settings = dict(TOY_FLUX_CALL, max_sequence_length=length)
            runs[length] = explainer(prompt, generator=seeded(seed), attribution_method="attention", **settings)
        short, long = runs[16], runs[32]
        assert long.attention_sink_share > short.attention_sink_share
        for out, length in ((short, 16), (long, 32)):
            maps = out.attention_maps.maps[0]
            assert maps.shape[0] == length
            prompt_rows = maps.sum(dim=(1, 2)) > 0
            assert int(prompt_rows.sum()) == len(flux_pipe.tokenizer_2(prompt).input_ids) - 1  # not the end token
            np.testing.assert_allclose(maps.sum(0).numpy(), 1, atol=1e-4)
        scores = [[score for _, score in out.word_attributions] for out in (short, long)]
        assert spearmanr(*scores)[0] >= 0.95, (prompt, short.word_attributions, long.word_attributions)
