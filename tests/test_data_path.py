"""The data path's seams: the registry of families, the run plan, the typed request and the typed outputs."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import PROMPT, SIZE, TINY, seeded
from diffusers import StableDiffusionPipeline
from PIL import Image

import diffusers_interpret
from diffusers_interpret import BasePipelineExplainer, ExplainRequest, explainer_for
from diffusers_interpret.families import (
    InputKind,
    family_for,
    register_family,
    registry,
    supported_pipeline,
    supported_pipelines,
)
from diffusers_interpret.families.stable_diffusion import StableDiffusionFamily
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline
from diffusers_interpret.tracing import RunPlan, attention_recording, run

CALL = dict(num_inference_steps=3, get_images_for_all_inference_steps=False, output_type="np")
FAMILY_NAMES = {"sd": "stable_diffusion", "sdxl": "stable_diffusion_xl", "sd3": "stable_diffusion_3", "flux": "flux"}


@pytest.fixture(scope="module")
def pipelines():
    return {
        "sd": {kind: make_tiny_pipeline(kind, **TINY) for kind in ("text2img", "img2img", "inpaint")},
        "sdxl": {kind: make_tiny_sdxl_pipeline(kind) for kind in ("text2img", "img2img", "inpaint")},
        "sd3": {kind: make_tiny_sd3_pipeline(kind) for kind in ("text2img", "img2img")},
        "flux": {kind: make_tiny_flux_pipeline(kind) for kind in ("text2img", "img2img")},
    }


# -- the registry -----------------------------------------------------------------------------------------------------
def test_every_pipeline_gets_its_named_explainer_with_the_input_its_call_takes(pipelines):
    kinds = {"text2img": None, "img2img": InputKind.IMAGE, "inpaint": InputKind.INPAINT}
    for family, by_kind in pipelines.items():
        for kind, pipe in by_kind.items():
            name = type(pipe).__name__
            explainer = explainer_for(pipe, verbose=False)
            assert type(explainer).__name__ == f"{name}Explainer"
            # The class is the one the package exports by that name (0.5.0's import path), made once.
            assert type(explainer) is getattr(diffusers_interpret, f"{name}Explainer")
            assert isinstance(explainer, BasePipelineExplainer)
            assert explainer.input_kind is kinds[kind]
            assert explainer.family is family_for(pipe)
            assert supported_pipeline(pipe).family.name == FAMILY_NAMES[family]


def test_a_subclass_of_a_supported_pipeline_is_explained_by_its_base_and_unknown_ones_are_named(pipelines):
    class ShopPipeline(StableDiffusionPipeline):  # a user's own subclass: diffusers' call, another name
        pass

    pipe = ShopPipeline(**pipelines["sd"]["text2img"].components)
    explainer = explainer_for(pipe, verbose=False)
    assert type(explainer).__name__ == "StableDiffusionPipelineExplainer"
    expected = pipe(PROMPT, num_inference_steps=2, generator=seeded(0), output_type="np").images[0]
    np.testing.assert_array_equal(
        explainer(PROMPT, generator=seeded(0), **dict(CALL, num_inference_steps=2)).image, expected
    )
    # BasePipelineExplainer itself takes any supported pipeline, by the pipeline's own class.
    assert BasePipelineExplainer(pipe, verbose=False).family is explainer.family
    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        BasePipelineExplainer(object())
    with pytest.raises(AttributeError):
        diffusers_interpret.UnknownPipelineExplainer  # noqa: B018


def test_a_new_family_is_its_adapter_alone(pipelines, monkeypatch):
    # A pipeline family of an existing shape, registered by its adapter only: the explainer, its class and every
    # method come from the registry, with no other line of the package touched.
    class SketchPipeline(StableDiffusionPipeline):
        pass

    class SketchFamily(StableDiffusionFamily):
        name = "sketch"
        display_name = "Sketch"
        pipeline_class_names = ("SketchPipeline",)
        default_method = "grad_x_input"

    monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))
    family = register_family(SketchFamily())
    assert "SketchPipeline" in supported_pipelines()
    pipe = SketchPipeline(**pipelines["sd"]["text2img"].components)
    explainer = explainer_for(pipe, verbose=False)
    assert type(explainer).__name__ == "SketchPipelineExplainer" and explainer.family is family
    expected = pipe(PROMPT, num_inference_steps=3, generator=seeded(1), output_type="np").images[0]
    out = explainer(PROMPT, generator=seeded(1), **CALL)
    np.testing.assert_array_equal(out.image, expected)
    assert out.attribution_method == "grad_x_input" and out.token_attributions.scores.max() > 0


def test_families_answer_what_shared_code_asks(pipelines):
    sd, sdxl, sd3, flux = (pipelines[name]["text2img"] for name in ("sd", "sdxl", "sd3", "flux"))
    assert family_for(sd).prompt_arguments(sd) == ("prompt",)
    assert family_for(sdxl).negative_prompt_arguments(sdxl) == ("negative_prompt", "negative_prompt_2")
    assert family_for(sd3).negative_prompt_arguments(sd3) == (
        "negative_prompt",
        "negative_prompt_2",
        "negative_prompt_3",
    )
    assert family_for(flux).prompt_arguments(flux) == ("prompt", "prompt_2")
    latents = torch.zeros(1, 4, 8, 12)
    assert family_for(sd).latents_size(sd, latents) == (8 * sd.vae_scale_factor, 12 * sd.vae_scale_factor)
    with pytest.raises(ValueError, match="latents"):
        family_for(sd).latents_size(sd, torch.zeros(1, 16, 4))
    assert family_for(flux).latents_size(flux, torch.zeros(1, 16, 4)) is None  # packed: the call's size decides
    assert family_for(sd).joint_attention is None
    assert family_for(flux).joint_attention.text_first and not family_for(sd3).joint_attention.text_first


def test_sd3s_third_negative_prompt_is_repeated_for_regenerated_rows(pipelines):
    # Regeneration batches every negative prompt the family names (SD3 has three): a one-entry list must be repeated
    # for the rows made at once, as the pipeline asks one per prompt.
    pipe = pipelines["sd3"]["text2img"]
    out = explainer_for(pipe, verbose=False)(
        "a cute corgi on the left",
        negative_prompt="a dog",
        negative_prompt_3=["a cat"],
        attribution_method="ablation",
        height=16,
        width=16,
        max_sequence_length=TINY_SD3_T5_LENGTH,
        generator=seeded(0),
        **dict(CALL, num_inference_steps=2),
    )
    assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.max() > 0


# -- the run plan -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_plain_run_is_the_pipelines_call_and_records_what_it_is_asked(pipelines, family):
    pipe = pipelines[family]["text2img"]
    call = dict(prompt=PROMPT, num_inference_steps=3, generator=seeded(2), output_type="np")
    if family == "flux":
        call.update(height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    expected = pipe(**call).images
    plan = RunPlan(pipe, family_for(pipe), size=(16, 16) if family == "flux" else (SIZE, SIZE), graph=False)
    result = run(plan, dict(call, generator=seeded(2)), recordings=[attention_recording(traced_only=False)])
    np.testing.assert_array_equal(result.output.images, expected)
    assert result.traced_calls == 0 and result.denoiser_calls == 3 and result.memory_estimate is None
    assert result.recordings["attention_maps"].steps == [0, 1, 2]
    # Traced runs of the explainer keep the count of the calls they traced.
    out = explainer_for(pipe, verbose=False)(
        PROMPT, generator=seeded(2), attribution_method="grad_x_input",
        n_last_diffusion_steps_to_consider_for_attributions=2, **CALL, **call_size(family),
    )  # fmt: skip
    assert out.stats.traced_denoiser_calls == 2 and out.stats.denoiser_calls == 3


def call_size(family):
    return dict(height=16, width=16, max_sequence_length=TINY_T5_LENGTH) if family == "flux" else {}


# -- the typed request and outputs ------------------------------------------------------------------------------------
def test_a_request_replayed_with_another_box_is_a_fresh_call_with_that_box(tiny_pipe):
    explainer = explainer_for(tiny_pipe, verbose=False)
    request = ExplainRequest(
        PROMPT,
        n_last_diffusion_steps_to_consider_for_attributions=2,
        explanation_2d_bounding_box=((0, 0), (16, 32)),
        attribution_method="grad_x_input",
        pipeline_kwargs={"generator": seeded(3)},
        **CALL,
    )
    first = explainer.explain(request)
    box = ((16, 0), (32, 32))
    again = explainer.explain(
        dataclasses.replace(request, explanation_2d_bounding_box=box, pipeline_kwargs={"generator": seeded(3)})
    )
    fresh = explainer(PROMPT, n_last_diffusion_steps_to_consider_for_attributions=2, explanation_2d_bounding_box=box,
                      attribution_method="grad_x_input", generator=seeded(3), **CALL)  # fmt: skip
    np.testing.assert_array_equal(again.token_attributions.scores, fresh.token_attributions.scores)
    assert not np.array_equal(first.token_attributions.scores, again.token_attributions.scores)
    assert again.explanation_2d_bounding_box == fresh.explanation_2d_bounding_box == box


def test_typed_fields_are_what_extras_shows_by_the_earlier_names(tiny_pipe):
    explainer = explainer_for(tiny_pipe, verbose=False)
    out = explainer(PROMPT, generator=seeded(0), explanation_2d_bounding_box=((0, 0), (16, 32)), **CALL)
    assert out.attribution_method == "word_attention"
    assert out.extras["word_maps"] is out.word_maps and out.word_maps.shape == (
        len(out.token_attributions),
        SIZE,
        SIZE,
    )
    assert out.extras["cell_size"] == out.word_map_cell_size
    assert out.extras["token_positions"] == out.token_positions == list(range(1, len(out.token_attributions) + 1))
    assert out.extras["traced_denoiser_calls"] == out.stats.traced_denoiser_calls == 3
    assert out.extras["method_summary"] == out.method_summary != ""
    assert "signed_scores" not in out.extras and "memory_estimate" not in out.extras
    with pytest.raises(TypeError):
        out.extras["word_maps"] = None
    # Another method on the same call's maps: its own values only, none left over from the first method.
    other = out.explain(None, attribution_method="attention")
    assert other.attribution_method == "attention" and other.word_maps is None and "word_maps" not in other.extras
    assert other.method_summary != out.method_summary
    ig = explainer(PROMPT, generator=seeded(0), attribution_method="integrated_gradients", **CALL)
    assert ig.extras["signed_scores"] is ig.signed_scores and ig.extras["completeness"] == ig.completeness
    assert ig.word_maps is None and ig.stats.memory_estimate is None  # regenerates: the call itself keeps no graph


def test_a_method_defined_outside_the_library_keeps_its_own_extras(tiny_pipe):
    from diffusers_interpret.methods import AttributionMethod, Scores

    class LengthMethod(AttributionMethod):
        name = "length"
        summary = "Each token's length."

        def attribute(self, trace, target):
            labels = trace.prompt_tokens[0].labels
            return Scores(
                tokens=[np.array([len(label) for label in labels], float)], extras=[{"longest": max(labels, key=len)}]
            )

    out = explainer_for(tiny_pipe, verbose=False)(
        PROMPT, attribution_method=LengthMethod(), generator=seeded(0), **CALL
    )
    assert out.method_extras == {"longest": "circle"} and out.extras["longest"] == "circle"
    assert out.token_attributions.scores.tolist() == [float(len(word)) for word in PROMPT.split()]


def test_the_input_image_is_checked_through_the_request(pipelines):
    pipe = pipelines["sd"]["img2img"]
    image = Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="not both"):
        explainer_for(pipe).explain(ExplainRequest(PROMPT, init_image=image, image=image))
