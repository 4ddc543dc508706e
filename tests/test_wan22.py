r"""
Wan 2.2's 5B text-to-video model (`WanPipeline` with `expand_timesteps=True`: Wan 2.2's VAE, a timestep per token):
the clip explained is `pipe()`'s, a space-time region's token gradients are autograd's and central differences', and
the calls the library makes itself (the prompt-dependence redraws) give the transformer the pipeline's own
per-token timesteps.
"""

import numpy as np
import pytest
import torch
from conftest import seeded
from independent_gradients import central_difference, leaf_gradient

from diffusers_interpret import explainer_for
from diffusers_interpret.families import family_for
from diffusers_interpret.testing.wan import TINY_WAN22_CALL, make_tiny_wan22_pipeline

PROMPT = "a red ball rolls"
SIZE = TINY_WAN22_CALL["height"]
CALL = dict(num_inference_steps=3, negative_prompt="", **TINY_WAN22_CALL)


@pytest.fixture(scope="module")
def wan22():
    return make_tiny_wan22_pipeline()


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention"])
def test_the_clip_is_the_pipelines_clip(wan22, method):
    assert wan22.config.expand_timesteps
    for seed, guidance in ((1, 5.0), (2, 1.0)):
        expected = wan22(PROMPT, generator=seeded(seed), output_type="np", guidance_scale=guidance, **CALL).frames[0]
        out = explainer_for(wan22, verbose=False)(
            PROMPT, generator=seeded(seed), output_type="np", guidance_scale=guidance, attribution_method=method,
            **CALL,
        )  # fmt: skip
        np.testing.assert_array_equal(np.stack(out.frames), expected)
        assert [word for word, _ in out.word_attributions] == PROMPT.split()
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.max() > 0


def test_token_gradients_of_a_space_time_region_equal_autograd_and_finite_differences():
    # The left half of frames 1 to 4 (the second latent frame's): T5's embedding output replaced by a leaf, the
    # pipeline's own __call__ with grad, the region's pixel sum differentiated; then the directional derivative
    # along that gradient by float64 central differences, rel 1e-3. The flow scheduler steps in float32: measured,
    # the difference is 14.1430 / 14.0328 / 14.0054 at eps 1e-4 / 1e-3 / 1e-2 against a gradient norm of 14.0050
    # (rounding, not curvature, below 1e-2).
    pipe = make_tiny_wan22_pipeline(dtype=torch.float64)
    out = explainer_for(pipe, verbose=False)(
        PROMPT, generator=seeded(0), attribution_method="grad_x_input", guidance_scale=5.0,
        explanation_2d_bounding_box=((0, 0), (SIZE // 2, SIZE)), explanation_frames=(1, 5), **CALL,
    )  # fmt: skip
    region = out.explained_region
    assert region == ((0, SIZE), (SIZE // 2, 5 * SIZE))
    embed = pipe.text_encoder.encoder.embed_tokens
    length = CALL["max_sequence_length"]
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    call = dict(prompt=PROMPT, guidance_scale=5.0, **CALL)
    grad = leaf_gradient(pipe, embed, ids.input_ids, region, **call)
    for row, unit in enumerate(out.session.trace.prompt_tokens[0].units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    difference = central_difference(pipe, embed, ids.input_ids, grad, 1e-2, region, **call)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)


def test_the_librarys_own_transformer_calls_take_the_pipelines_per_token_timesteps(wan22):
    # The pipeline's first transformer call, captured; the family's arguments for the same latents and step (what the
    # redraws call the transformer with) give the same timesteps and so the same prediction.
    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("kwargs", dict(kwargs))

    handle = wan22.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        wan22(PROMPT, generator=seeded(0), guidance_scale=1.0, output_type="latent", **CALL)
    finally:
        handle.remove()
    kwargs = seen["kwargs"]
    latents, timestep = kwargs["hidden_states"], kwargs["timestep"]
    assert timestep.shape == (1, latents.shape[2] * (latents.shape[3] // 2) * (latents.shape[4] // 2))
    family = family_for(wan22)
    ours = family.denoiser_arguments(
        wan22, latents, timestep[0, 0], {"encoder_hidden_states": kwargs["encoder_hidden_states"]}, None, {}
    )
    torch.testing.assert_close(ours["timestep"], timestep, rtol=0, atol=0)
    with torch.no_grad():
        expected = wan22.transformer(**kwargs)[0]
        torch.testing.assert_close(wan22.transformer(**ours)[0], expected, rtol=0, atol=0)
