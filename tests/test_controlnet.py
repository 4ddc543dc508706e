"""ControlNet (Stable Diffusion, SDXL, Flux): identity with the pipelines, control-image pixel gradients against finite
differences, the prompt's gradients through the ControlNet against an independent autograd, the control dependence."""

import numpy as np
import pytest
import torch
from conftest import seeded
from independent_gradients import box_sum, leaf_gradient
from PIL import Image
from pipeline_state import pipeline_state

from diffusers_interpret import PipelineControlNetExplainerOutput, explainer_for
from diffusers_interpret.testing.controlnet import make_tiny_controlnet_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH

PROMPT = "a red circle on the left"
SIZES = {"sd": 32, "sdxl": 32, "flux": 16}
ARGUMENT = {"sd": "image", "sdxl": "image", "flux": "control_image"}


def common(family):
    size = SIZES[family]
    extra = {"max_sequence_length": TINY_T5_LENGTH} if family == "flux" else {}
    return dict(height=size, width=size, num_inference_steps=3, **extra)


def control_image(family, seed=0):
    size = SIZES[family]
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["sd", "sdxl", "flux"])
def controlnet(request):
    return request.param, make_tiny_controlnet_pipeline(request.param)


GUIDANCE = {
    "sd": [dict(guidance_scale=5.0), dict(guidance_scale=5.0, guess_mode=True), dict(guidance_scale=1.0)],
    "sdxl": [dict(guidance_scale=5.0)],
    "flux": [dict(), dict(negative_prompt="a dog", true_cfg_scale=2.0)],
}


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "attention"])
def test_image_identical_to_the_pipelines(controlnet, method):
    family, pipe = controlnet
    image = control_image(family)
    for call in GUIDANCE[family]:
        kwargs = {**common(family), **call, ARGUMENT[family]: image, "controlnet_conditioning_scale": 0.8}
        expected = pipe(PROMPT, generator=seeded(1), output_type="np", **kwargs).images[0]
        out = explainer_for(pipe, verbose=False)(
            PROMPT, generator=seeded(1), output_type="np", attribution_method=method, prompt_dependence=False,
            **kwargs,
        )  # fmt: skip
        assert isinstance(out, PipelineControlNetExplainerOutput)
        np.testing.assert_array_equal(out.image, expected)
        if method != "attention":
            assert out.control_pixel_attributions.shape == (SIZES[family],) * 2
            assert out.control_saliency_map is out.input_saliency_map
            assert float(np.asarray(out.control_pixel_attributions).max()) > 0


def test_control_pixel_gradients_equal_finite_differences(controlnet):
    # float64: the box sum's gradient to the control image's [0, 1] pixels against central differences of the
    # pipeline's own images, along a random direction and at the largest pixels.
    family, _ = controlnet
    pipe = make_tiny_controlnet_pipeline(family, dtype=torch.float64)
    size = SIZES[family]
    # Pixels kept inside [0, 1] by the differences' steps (an image processor reads a tensor with values below 0 as
    # already normalised).
    x = 0.1 + 0.8 * torch.from_numpy(np.asarray(control_image(family), dtype=np.float64) / 255).permute(2, 0, 1)[None]
    # Flux's pipeline reads a tensor as already preprocessed (the explainer refuses it): it is given float64 arrays.
    as_given = (lambda t: t[0].permute(1, 2, 0).numpy()) if family == "flux" else (lambda t: t)
    box = ((2, 4), (size - 2, size - 6))
    kwargs = {**common(family), **GUIDANCE[family][-1], "controlnet_conditioning_scale": 0.8}
    out = explainer_for(pipe, verbose=False)(
        PROMPT, generator=seeded(0), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **{ARGUMENT[family]: as_given(x)}, **kwargs,
    )  # fmt: skip
    grad = out.pixel_gradients

    def f(image):
        control = {ARGUMENT[family]: as_given(image)}
        images = pipe(PROMPT, generator=seeded(0), output_type="pt", **control, **kwargs).images
        return float(box_sum(images, box))

    # The Stable Diffusion ControlNet pipelines cast the processed control image to float32 (`prepare_image`) and
    # Flux's rotary embedding is float32: steps of 3e-3 and 1e-3 keep that rounding out of the difference (measured:
    # within 4e-7 and 3e-5 of the gradient, against 5e-5 and 1e-4 at a tenth of the step).
    eps = 1e-3 if family == "flux" else 3e-3
    direction = torch.randn(x.shape, generator=seeded(3), dtype=torch.float64)
    directional = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    assert float((grad * direction[0]).sum()) == pytest.approx(directional, rel=2e-4)
    flat = grad.abs().flatten()
    for index in flat.topk(2).indices.tolist():
        c, y, xx = np.unravel_index(index, grad.shape)
        step = torch.zeros_like(x)
        step[0, c, y, xx] = eps
        fd = (f(x + step) - f(x - step)) / (2 * eps)
        assert float(grad[c, y, xx]) == pytest.approx(fd, rel=2e-4, abs=1e-5 * float(flat.max()))
    np.testing.assert_allclose(out.pixel_attributions, (grad * x[0]).norm(dim=0).numpy(), rtol=1e-6)


def _prompt_embedding(family, pipe):
    if family == "flux":
        ids = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=TINY_T5_LENGTH, truncation=True)
        return pipe.text_encoder_2.encoder.embed_tokens, torch.tensor([ids.input_ids]), (0,)
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True)
    return pipe.text_encoder.get_input_embeddings(), torch.tensor([ids.input_ids]), (0,)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_prompt_gradients_reach_through_the_controlnet(controlnet, checkpointing):
    # An independent autograd computation (the pipeline's own __call__ with grad, the prompt's token embeddings a
    # leaf): the explainer's token gradients must carry the path through the ControlNet as well as the denoiser's.
    # Without the ControlNet's path (the same computation with its conditioning detached) they differ.
    family, pipe = controlnet
    if family == "sdxl":
        pytest.skip("two text encoders: the Stable Diffusion and Flux cases cover the ControlNet's path")
    box = ((0, 0), (SIZES[family] // 2, SIZES[family]))
    kwargs = {**common(family), **GUIDANCE[family][0], ARGUMENT[family]: control_image(family)}
    explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=checkpointing)
    out = explainer(
        PROMPT, generator=seeded(0), explanation_2d_bounding_box=box, attribution_method="grad_x_input",
        prompt_dependence=False, **kwargs,
    )  # fmt: skip
    embed, ids, group = _prompt_embedding(family, pipe)

    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **kwargs)

    def detached(module, args, kwargs_):
        return args, {**kwargs_, "encoder_hidden_states": kwargs_["encoder_hidden_states"].detach()}

    handle = pipe.controlnet.register_forward_pre_hook(detached, with_kwargs=True)
    try:
        without_control = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **kwargs)
    finally:
        handle.remove()
    units = [u for u in out.session.trace.prompt_tokens[0].units if u.encoders == group]
    rows = [row for row, u in enumerate(out.session.trace.prompt_tokens[0].units) if u.encoders == group]
    scale = float(grad.abs().max())
    for row, unit in zip(rows, units):
        np.testing.assert_allclose(out.token_gradients[row], grad[0, unit.token_index], rtol=1e-4, atol=1e-6 * scale)
    apart = max(float((grad[0, u.token_index] - without_control[0, u.token_index]).abs().max()) for u in units)
    assert apart > 1e-3 * scale  # the ControlNet's path is a real part of the gradient


def test_control_dependence_reads_the_control(controlnet):
    # The share of a region redrawn differently without the control image: zero with the ControlNet switched off
    # (scale 0), and not zero with it on (its residuals move the image).
    family, pipe = controlnet
    kwargs = {**common(family), ARGUMENT[family]: control_image(family)}
    explainer = explainer_for(pipe, verbose=False)
    on = explainer(PROMPT, generator=seeded(0), attribution_method="attention", controlnet_conditioning_scale=2.0,
                   **kwargs)  # fmt: skip
    off = explainer(PROMPT, generator=seeded(0), attribution_method="attention", controlnet_conditioning_scale=0.0,
                    **kwargs)  # fmt: skip
    assert off.control_dependence == 0.0
    assert on.control_dependence > 0.0
    assert on.control_dependence_map.shape == (SIZES[family],) * 2
    assert "control image" in on.describe_control_dependence()


def test_a_control_image_of_another_size_is_resized_as_the_pipeline_does(controlnet):
    family, pipe = controlnet
    size = SIZES[family]
    kwargs = {**common(family), ARGUMENT[family]: control_image(family).resize((size * 2, size))}
    with pytest.warns(UserWarning, match="resizes it"):
        out = explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(0), prompt_dependence=False, **kwargs)
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **kwargs).images[0]
    np.testing.assert_array_equal(np.asarray(out.image), (expected * 255).round().astype(np.uint8))
    assert out.control_image.size == (size, size) and out.control_pixel_attributions.shape == (size, size)


def test_several_controlnets_are_refused_before_any_model_runs():
    from diffusers import StableDiffusionControlNetPipeline

    pipe = make_tiny_controlnet_pipeline("sd")
    components = {**pipe.components, "controlnet": [pipe.controlnet, pipe.controlnet]}
    multi = StableDiffusionControlNetPipeline(**components, requires_safety_checker=False)
    calls = []
    handle = multi.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="one ControlNet at a time"):
            explainer_for(multi, verbose=False)(PROMPT, image=[control_image("sd")] * 2, **common("sd"))
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize("checkpointing", [True, False])
def test_state_restored_after_an_injected_exception(controlnet, checkpointing):
    family, pipe = controlnet
    kwargs = {**common(family), ARGUMENT[family]: control_image(family)}
    # transformers installs hooks of its own on a text encoder's layers at its first hidden-state capture: the state
    # is taken after one explanation.
    explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(0), prompt_dependence=False, **kwargs)
    before = pipeline_state(pipe)

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=checkpointing)
    for method in ("grad_x_input", "word_attention"):
        with pytest.raises(KeyError, match="injected"):
            explainer(PROMPT, generator=seeded(0), attribution_method=method, callback_on_step_end=boom, **kwargs)
        assert pipeline_state(pipe) == before
    out = explainer(PROMPT, generator=seeded(0), prompt_dependence=False, **kwargs)
    assert out.control_pixel_attributions is not None and pipeline_state(pipe) == before


def test_the_memory_estimate_counts_the_controlnet(controlnet):
    # The guard's per-call count is the denoiser's and the ControlNet's saved tensors together, as a real forward pass
    # with grad saves them (measured with saved-tensor hooks on the first step's real arguments).
    from test_memory import measured_saved_bytes

    family, pipe = controlnet
    if family != "sd":
        pytest.skip("the Stable Diffusion case: the estimate's code is the same for every family")
    captured = {}

    def capture(name):
        def hook(module, args, kwargs):
            captured.setdefault(name, (args, kwargs))

        return hook

    handles = [
        getattr(pipe, name).register_forward_pre_hook(capture(name), with_kwargs=True)
        for name in ("unet", "controlnet")
    ]
    try:
        out = explainer_for(pipe, verbose=False, gradient_checkpointing=False)(
            PROMPT, generator=seeded(0), attribution_method="grad_x_input", prompt_dependence=False,
            **{**common("sd"), "image": control_image("sd")},
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    estimate = out.extras["memory_estimate"]

    def saved(name):
        # Every floating tensor of the call's arguments requiring grad, as in a traced call (the estimate's rule).
        from torch.utils._pytree import tree_flatten, tree_unflatten

        model = getattr(pipe, name)
        leaves, spec = tree_flatten(captured[name])
        where = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.is_floating_point()]

        def run(*tensors):
            filled = list(leaves)
            for i, tensor in zip(where, tensors):
                filled[i] = tensor
            args, kwargs = tree_unflatten(filled, spec)
            return model(*args, **kwargs)

        return measured_saved_bytes(model, run, *[leaves[i].detach() for i in where])

    unet, control = saved("unet"), saved("controlnet")
    assert control > 0.2 * unet  # the ControlNet is not a rounding error of the call
    assert estimate.per_call == unet + control


def test_an_existing_image_is_refused_with_what_to_do(controlnet):
    family, pipe = controlnet
    with pytest.raises(ValueError, match="without its ControlNet"):
        explainer_for(pipe, verbose=False).explain_image(control_image(family), PROMPT)
