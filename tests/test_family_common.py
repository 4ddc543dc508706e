"""What every family of 2026 must do alike, on its tiny pipeline: restore the pipeline's state after an exception,
explain an image the user already has, and give the same gradients with gradient checkpointing."""

import importlib

import numpy as np
import pytest
import torch
from conftest import seeded

from diffusers_interpret import explainer_for

PROMPT = "a cute corgi on the left"

FAMILIES = ["chroma", "flux2_klein", "flux2_dev", "qwenimage", "prx", "sana", "z_image"]
# The families with a text stream to carry concept tokens through.
WITH_CONCEPTS = {"chroma", "flux2_klein", "flux2_dev", "qwenimage"}
_BUILT = {}


def tiny(family):
    # The family's tiny pipeline (built once per session), the arguments of a 3-step call, whether it has concepts.
    if family not in _BUILT:
        if family == "chroma":
            from diffusers_interpret.testing.chroma import TINY_CHROMA_T5_LENGTH, make_tiny_chroma_pipeline

            pipe, call, size = (
                make_tiny_chroma_pipeline("text2img"),
                dict(max_sequence_length=TINY_CHROMA_T5_LENGTH),
                16,
            )
        elif family == "flux2_dev":
            from diffusers_interpret.testing.flux2 import TINY_FLUX2_DEV_LENGTH, make_tiny_flux2_dev_pipeline

            pipe, call, size = make_tiny_flux2_dev_pipeline(), dict(max_sequence_length=TINY_FLUX2_DEV_LENGTH), 16
        else:
            module_name, builder, call_name, size = {
                "flux2_klein": ("flux2", "make_tiny_flux2_klein_pipeline", "TINY_FLUX2_CALL", 16),
                "qwenimage": ("qwenimage", "make_tiny_qwenimage_pipeline", "TINY_QWEN_IMAGE_CALL", 32),
                "prx": ("prx", "make_tiny_prx_pipeline", "TINY_PRX_CALL", 16),
                "sana": ("sana", "make_tiny_sana_pipeline", "TINY_SANA_CALL", 32),
                "z_image": ("z_image", "make_tiny_z_image_pipeline", "TINY_Z_IMAGE_CALL", 32),
            }[family]
            module = importlib.import_module(f"diffusers_interpret.testing.{module_name}")
            pipe, call = getattr(module, builder)(), getattr(module, call_name)
        common = dict(height=size, width=size, num_inference_steps=3, **call)
        _BUILT[family] = (pipe, common, family in WITH_CONCEPTS)
    return _BUILT[family]


def attention_processors(pipe):
    # Every attention layer of the denoiser and its processor (Z-Image's transformer has no `attn_processors`).
    from diffusers.models.attention_processor import Attention

    modules = pipe.transformer.named_modules()
    return {name: (module, module.processor) for name, module in modules if isinstance(module, Attention)}


def hooks(pipe):
    # transformers keeps hooks of its own on an LLM's layers (its hidden-state capture): those before are those after.
    modules = [*pipe.transformer.modules(), *pipe.text_encoder.modules()]
    return [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in modules]


@pytest.mark.parametrize("family", FAMILIES)
def test_state_restored_after_an_injected_exception(family):
    pipe, common, concepts = tiny(family)
    explainer = explainer_for(pipe, verbose=True)
    processors = attention_processors(pipe)

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(0), attribution_method="grad_x_input", **common)
    before = hooks(pipe)
    methods = ["grad_x_input", "word_attention", "attention"] + (["concept_attention"] if concepts else [])
    for method in methods:
        with pytest.raises(KeyError, match="injected"):
            explainer(PROMPT, callback_on_step_end=boom, attribution_method=method, **common)
        assert torch.is_grad_enabled()
        assert hooks(pipe) == before, method
        assert all(module.processor is processor for module, processor in processors.values()), method
    expected = pipe(prompt=PROMPT, generator=seeded(3), output_type="np", **common).images[0]
    out = explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(3), output_type="np", **common)
    np.testing.assert_array_equal(out.image, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_existing_image_is_explained(family):
    from PIL import Image

    pipe, common, concepts = tiny(family)
    size = common["height"]
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (size, size, 3), dtype=np.uint8))
    explainer = explainer_for(pipe, verbose=False)
    call = {k: v for k, v in common.items() if k not in ("height", "width", "num_inference_steps")}
    for method in ["word_attention", "grad_x_input"] + (["concept_attention"] if concepts else []):
        out = explainer.explain_image(image, PROMPT, attribution_method=method, **call)
        assert [w for w, _ in out.word_attributions] == PROMPT.split()
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.max() > 0, method


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    pipe, common, _ = tiny(family)
    box = ((0, 0), (common["width"] // 2, common["height"]))
    arguments = dict(attribution_method="grad_x_input", explanation_2d_bounding_box=box, **common)
    plain = explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(0), **arguments)
    checkpointed = explainer_for(pipe, verbose=False, gradient_checkpointing=True)
    checkpointed = checkpointed(PROMPT, generator=seeded(0), **arguments)
    np.testing.assert_array_equal(np.asarray(checkpointed.image), np.asarray(plain.image))
    np.testing.assert_allclose(checkpointed.token_gradients, plain.token_gradients, rtol=1e-4, atol=1e-7)
