"""
Faults, for every explainer family and kind: an exception or a KeyboardInterrupt in the middle of the pipeline's loop
leaves the pipeline exactly as it was, and two threads explaining with one pipeline get what each would alone.
"""

import threading

import numpy as np
import pytest
import torch
from conftest import PROMPT, TINY, seeded
from PIL import Image

from diffusers_interpret import explainer_for
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.chroma import TINY_CHROMA_T5_LENGTH, make_tiny_chroma_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline

STEPS = 3
PIPELINES = {
    "sd": lambda: (make_tiny_pipeline("text2img", **TINY), 32, {}),
    "sd-img2img": lambda: (make_tiny_pipeline("img2img", **TINY), 32, {}),
    "sd-inpaint": lambda: (make_tiny_pipeline("inpaint", **TINY), 32, {}),
    "sdxl": lambda: (make_tiny_sdxl_pipeline("text2img"), 32, {}),
    "sdxl-img2img": lambda: (make_tiny_sdxl_pipeline("img2img"), 32, {}),
    "sd3": lambda: (make_tiny_sd3_pipeline("text2img"), 16, dict(max_sequence_length=TINY_SD3_T5_LENGTH)),
    "sd3-img2img": lambda: (make_tiny_sd3_pipeline("img2img"), 16, dict(max_sequence_length=TINY_SD3_T5_LENGTH)),
    "flux": lambda: (make_tiny_flux_pipeline("text2img"), 16, dict(max_sequence_length=TINY_T5_LENGTH)),
    "flux-img2img": lambda: (make_tiny_flux_pipeline("img2img"), 16, dict(max_sequence_length=TINY_T5_LENGTH)),
    "chroma": lambda: (make_tiny_chroma_pipeline("text2img"), 16, dict(max_sequence_length=TINY_CHROMA_T5_LENGTH)),
    "chroma-img2img": lambda: (
        make_tiny_chroma_pipeline("img2img"),
        16,
        dict(max_sequence_length=TINY_CHROMA_T5_LENGTH),
    ),
}


def call_arguments(pipe, size, extra, kind):
    arguments = dict(extra, num_inference_steps=STEPS)
    if kind.endswith("img2img") or kind.endswith("inpaint"):
        rng = np.random.default_rng(0)
        arguments.update(image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), strength=1.0)
        if kind.endswith("inpaint"):
            arguments["mask_image"] = Image.new("L", (size, size), 255)
    else:
        arguments.update(height=size, width=size)
    return arguments


def snapshot(pipe):
    # Everything an explanation changes for its length and must give back.
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    return dict(
        hooks=sum(
            len(sub._forward_pre_hooks) + len(sub._forward_hooks) + len(sub._backward_hooks)
            for module in modules
            for sub in module.modules()
        ),
        processors=dict(denoiser.attn_processors),
        requires_grad=sum(p.requires_grad for module in modules for p in module.parameters()),
        progress=dict(getattr(pipe, "_progress_bar_config", {})),
        grad_mode=torch.is_grad_enabled(),
        weights_sum=sum(float(p.double().sum()) for p in denoiser.parameters()),
    )


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_state_is_restored_after_an_exception_or_interrupt_in_the_loop(kind):
    pipe, size, extra = PIPELINES[kind]()
    arguments = call_arguments(pipe, size, extra, kind)
    reference = pipe(PROMPT, generator=seeded(0), output_type="np", **arguments).images
    before = snapshot(pipe)
    explainer = explainer_for(pipe, verbose=False)
    for error in (KeyError("injected"), KeyboardInterrupt()):

        def interrupt(pipeline, step, timestep, kwargs, error=error):
            if step == STEPS - 1:  # a traced step, with grad on and every hook installed
                raise error
            return {}

        for method in ("grad_x_input", None):  # a gradient method, and the family's default
            with pytest.raises(type(error)):
                explainer(PROMPT, callback_on_step_end=interrupt, attribution_method=method, **arguments)
            assert snapshot(pipe) == before, (kind, type(error).__name__, method)
    again = pipe(PROMPT, generator=seeded(0), output_type="np", **arguments).images
    np.testing.assert_array_equal(again, reference)
    # And the explainer itself still works, on the same pipeline.
    out = explainer(PROMPT, generator=seeded(0), output_type="np", attribution_method="grad_x_input", **arguments)
    np.testing.assert_array_equal(out.image, reference[0])


def test_two_threads_explaining_with_one_pipeline_get_what_each_would_alone(tiny_pipe):
    explainer = explainer_for(tiny_pipe, verbose=False)
    prompts = {"left": PROMPT, "right": "a blue square on the left and a red circle on the right"}
    call = dict(num_inference_steps=STEPS, attribution_method="grad_x_input", output_type="np")
    alone = {name: explainer(prompt, generator=seeded(1), **call) for name, prompt in prompts.items()}
    results, errors = {}, []
    start = threading.Barrier(len(prompts))

    def work(name):
        try:
            start.wait()
            for _ in range(2):
                results.setdefault(name, []).append(explainer(prompts[name], generator=seeded(1), **call))
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for name, outputs in results.items():
        assert len(outputs) == 2
        for out in outputs:
            np.testing.assert_array_equal(out.image, alone[name].image)
            np.testing.assert_allclose(out.token_attributions.scores, alone[name].token_attributions.scores, rtol=1e-6)
    assert not tiny_pipe.unet._forward_pre_hooks and not tiny_pipe.unet._forward_hooks
