"""Half precision: the image is still the pipeline's, attributions stay finite and ranked as in float32."""

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from conftest import PROMPT, SIZE, TINY, seeded

from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.testing import make_tiny_pipeline

COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=4, explanation_2d_bounding_box=((0, 0), (16, 32)))


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(x, dtype=np.float64))) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def word_scores(pipe, method):
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    out = explainer(PROMPT, generator=seeded(0), output_type="np", attribution_method=method, **COMMON)
    call = {k: v for k, v in COMMON.items() if "box" not in k}
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **call).images[0]
    np.testing.assert_array_equal(out.image, expected)
    return np.array([score for _, score in out.word_attributions])


@pytest.fixture(scope="module")
def reference():
    pipe = make_tiny_pipeline("text2img", **TINY)
    return {method: word_scores(pipe, method) for method in ("grad_x_input", "word_attention")}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["grad_x_input", "word_attention"])
def test_half_precision_ranks_words_as_float32(reference, dtype, method):
    pipe = make_tiny_pipeline("text2img", dtype=dtype, **TINY)
    scores = word_scores(pipe, method)
    assert np.isfinite(scores).all() and scores.max() > 0
    assert spearman(scores, reference[method]) > 0.9


def test_word_attention_with_float32_layer_norm_tangents(reference):
    # CUDA's layer norm computes a half-precision input's statistics in float32, so forward-mode differentiation
    # through it gives a float32 tangent to a float16 output (the CPU kernel keeps float16). Simulated here: the
    # token mixing must not hand such a tangent to the next float16 linear layer.
    pipe = make_tiny_pipeline("text2img", dtype=torch.float16, **TINY)

    def float32_tangent(module, args, output):
        primal, tangent = forward_ad.unpack_dual(output)
        return output if tangent is None else forward_ad.make_dual(primal, tangent.float())

    before = {name: p.clone() for name, p in pipe.text_encoder.state_dict().items()}
    norms = [m for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    handles = [m.register_forward_hook(float32_tangent) for m in norms]
    try:
        simulated = word_scores(pipe, "word_attention")
    finally:
        for handle in handles:
            handle.remove()
    assert np.isfinite(simulated).all()
    np.testing.assert_allclose(simulated, word_scores(pipe, "word_attention"), rtol=1e-3)
    # The mixing computed in float32 leaves the float16 weights exactly as they were.
    for name, p in pipe.text_encoder.state_dict().items():
        assert p.dtype == before[name].dtype and torch.equal(p, before[name]), name


def test_half_precision_seed_gradients_stay_normal():
    # Each pixel of the box gets the target's scale as its seed gradient: it must stay a normal float16 number for
    # boxes up to 1024x1024x3 (on an H100 at 512 px, 1 / values gave 2.5e-6 and float16 ranked the words reversed),
    # while the scaled sum stays far below float16's largest value.
    from diffusers_interpret.target import half_precision_scale

    for values in (3, 32 * 32 * 3, 512 * 512 * 3, 1024 * 1024 * 3):
        scale = half_precision_scale(torch.float16, float(values))
        assert scale >= torch.finfo(torch.float16).tiny
        assert values * scale < torch.finfo(torch.float16).max / 16
    assert half_precision_scale(torch.float32, 1e6) == 1.0
