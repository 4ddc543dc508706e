"""
The bad-input table: what a careless or hurried user passes, across the explainers, their outputs, the faithfulness
functions and the command line. Each case is refused with the error type it names, a message that names the argument,
and no denoiser call.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROMPT, SIZE, TINY, seeded
from PIL import Image

from diffusers_interpret import (
    SaliencyMap,
    StableDiffusionImg2ImgPipelineExplainer,
    StableDiffusionInpaintPipelineExplainer,
    StableDiffusionPipelineExplainer,
    explainer_for,
    faithfulness,
)
from diffusers_interpret.attention import record_cross_attention, record_self_attention, record_text_relations
from diffusers_interpret.cli import main
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.views.report import write_report

BAD = (ValueError, TypeError)


@pytest.fixture(scope="module")
def img2img():
    return make_tiny_pipeline("img2img", **TINY)


@pytest.fixture(scope="module")
def inpaint():
    return make_tiny_pipeline("inpaint", **TINY)


@pytest.fixture(scope="module")
def kept(tiny_pipe):
    # An output that keeps its graph, for the output methods' cases.
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    return explainer(
        PROMPT,
        num_inference_steps=2,
        attribution_method="grad_x_input",
        keep_for_reexplanation="graph",
        attention_maps=True,
        generator=seeded(0),
    )


def denoiser_calls(pipe):
    from diffusers_interpret.families import family_for

    calls = []
    handle = family_for(pipe).denoiser(pipe).register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def refused(pipe, run, error, name):
    calls, handle = denoiser_calls(pipe)
    try:
        with pytest.raises(error) as caught:
            run()
    finally:
        handle.remove()
    assert name in str(caught.value), f"{name!r} not named in: {caught.value}"
    assert not calls, "the denoiser ran before the input was refused"


RGB = Image.new("RGB", (SIZE, SIZE), (120, 30, 200))
MASK = Image.new("L", (SIZE, SIZE), 255)
BOX = ((0, 0), (16, 16))

TEXT_TO_IMAGE = [
    # prompt
    ("prompt-int", dict(prompt=123), BAD, "prompt"),
    ("prompt-none", dict(prompt=None), BAD, "prompt"),
    ("prompt-empty", dict(prompt=""), BAD, "prompt"),
    ("prompt-blank", dict(prompt="   "), BAD, "prompt"),
    ("prompt-empty-list", dict(prompt=[]), BAD, "prompt"),
    ("prompt-list-with-int", dict(prompt=["a red circle", 5]), BAD, "prompt"),
    ("prompt-bytes", dict(prompt=b"a red circle"), BAD, "prompt"),
    ("prompt-special-token", dict(prompt=PROMPT + " <|endoftext|>"), BAD, "<|endoftext|>"),
    ("prompt-embeds", dict(prompt_embeds=torch.zeros(1, 77, 32)), BAD, "prompt_embeds"),
    # steps
    ("steps-0", dict(num_inference_steps=0), BAD, "num_inference_steps"),
    ("steps-negative", dict(num_inference_steps=-1), BAD, "num_inference_steps"),
    ("steps-float", dict(num_inference_steps=2.5), BAD, "num_inference_steps"),
    ("steps-str", dict(num_inference_steps="2"), BAD, "num_inference_steps"),
    ("steps-bool", dict(num_inference_steps=True), BAD, "num_inference_steps"),
    ("steps-none", dict(num_inference_steps=None), BAD, "num_inference_steps"),
    # traced steps
    ("traced-negative", dict(n_last_diffusion_steps_to_consider_for_attributions=-1), BAD, "n_last_diffusion_steps"),
    ("traced-float", dict(n_last_diffusion_steps_to_consider_for_attributions=1.5), BAD, "n_last_diffusion_steps"),
    ("traced-str", dict(n_last_diffusion_steps_to_consider_for_attributions="all"), BAD, "n_last_diffusion_steps"),
    ("traced-bool", dict(n_last_diffusion_steps_to_consider_for_attributions=True), BAD, "n_last_diffusion_steps"),
    # size
    ("height-0", dict(height=0), BAD, "height"),
    ("width-negative", dict(width=-8), BAD, "width"),
    ("height-float", dict(height=32.5), BAD, "height"),
    ("width-str", dict(width="32"), BAD, "width"),
    ("height-not-multiple", dict(height=SIZE + 1), BAD, "height"),
    ("latents-wrong-size", dict(latents=torch.zeros(1, 4, 8, 8), height=SIZE), BAD, "latents"),
    ("latents-wrong-rank", dict(latents=torch.zeros(4, 16, 16)), BAD, "latents"),
    ("latents-not-tensor", dict(latents=[[0.0]]), BAD, "latents"),
    ("latents-wrong-channels", dict(latents=torch.zeros(1, 3, SIZE // 8, SIZE // 8)), BAD, "latents"),
    ("height-not-multiple-of-8", dict(height=SIZE - 2), BAD, "height"),
    # images per prompt, generator, callbacks
    ("images-per-prompt-0", dict(num_images_per_prompt=0), BAD, "num_images_per_prompt"),
    ("images-per-prompt-negative", dict(num_images_per_prompt=-1), BAD, "num_images_per_prompt"),
    ("images-per-prompt-float", dict(num_images_per_prompt=1.5), BAD, "num_images_per_prompt"),
    ("generator-int", dict(generator=0), BAD, "generator"),
    ("generator-list-of-ints", dict(generator=[0]), BAD, "generator"),
    ("generator-list-wrong-length", dict(generator=[seeded(0), seeded(1)]), BAD, "generator"),
    ("callback-int", dict(callback_on_step_end=5), BAD, "callback_on_step_end"),
    ("callback-inputs-unknown", dict(callback_on_step_end_tensor_inputs=["nothing"]), BAD, "callback_on_step_end"),
    # guidance and negative prompt
    ("guidance-str", dict(guidance_scale="7"), BAD, "guidance_scale"),
    ("guidance-none", dict(guidance_scale=None), BAD, "guidance_scale"),
    ("guidance-nan", dict(guidance_scale=float("nan")), BAD, "guidance_scale"),
    ("negative-int", dict(negative_prompt=5), BAD, "negative_prompt"),
    ("negative-wrong-count", dict(negative_prompt=["a", "b"]), BAD, "negative_prompt"),
    ("eta-str", dict(eta="x"), BAD, "eta"),
    ("unknown-argument", dict(colour="red"), BAD, "colour"),
    # box
    ("box-fractional", dict(explanation_2d_bounding_box=((0.5, 0), (16, 16))), BAD, "explanation_2d_bounding_box"),
    ("box-bool", dict(explanation_2d_bounding_box=((True, 0), (16, 16))), BAD, "explanation_2d_bounding_box"),
    ("box-outside", dict(explanation_2d_bounding_box=((0, 0), (SIZE + 1, 16))), BAD, "explanation_2d_bounding_box"),
    ("box-inverted", dict(explanation_2d_bounding_box=((16, 16), (0, 0))), BAD, "explanation_2d_bounding_box"),
    ("box-empty", dict(explanation_2d_bounding_box=((8, 8), (8, 16))), BAD, "explanation_2d_bounding_box"),
    ("box-negative", dict(explanation_2d_bounding_box=((-1, 0), (16, 16))), BAD, "explanation_2d_bounding_box"),
    ("box-three-numbers", dict(explanation_2d_bounding_box=(1, 2, 3)), BAD, "explanation_2d_bounding_box"),
    ("box-str", dict(explanation_2d_bounding_box="0,0,16,16"), BAD, "explanation_2d_bounding_box"),
    ("box-nan", dict(explanation_2d_bounding_box=((float("nan"), 0), (16, 16))), BAD, "explanation_2d_bounding_box"),
    # method and level
    ("method-unknown", dict(attribution_method="shap"), BAD, "attribution_method"),
    ("method-int", dict(attribution_method=5), BAD, "attribution_method"),
    ("method-concepts-on-unet", dict(attribution_method="concept_attention"), BAD, "concept_attention"),
    ("level-unknown", dict(attribution_level="pixels"), BAD, "attribution_level"),
    ("level-int", dict(attribution_level=3), BAD, "attribution_level"),
    # switches and outputs
    ("output-latent", dict(output_type="latent"), BAD, "output_type"),
    ("output-none", dict(output_type=None), BAD, "output_type"),
    ("keep-unknown", dict(keep_for_reexplanation="all"), BAD, "keep_for_reexplanation"),
    ("keep-with-ablation", dict(keep_for_reexplanation="graph", attribution_method="ablation"), BAD, "keep_for"),
    ("special-tokens-str", dict(consider_special_tokens="yes"), BAD, "consider_special_tokens"),
    ("clean-none", dict(clean_token_prefixes_and_suffixes=None), BAD, "clean_token_prefixes_and_suffixes"),
    ("step-images-str", dict(get_images_for_all_inference_steps="no"), BAD, "get_images_for_all_inference_steps"),
    ("attention-maps-str", dict(attention_maps="yes"), BAD, "attention_maps"),
    ("check-memory-str", dict(check_memory="no"), BAD, "check_memory"),
    ("image-to-text-explainer", dict(image=RGB), BAD, "img2img"),
    ("mask-to-text-explainer", dict(mask_image=MASK), BAD, "img2img"),
    ("perturbation-many-images", dict(attribution_method="ablation", num_images_per_prompt=2), BAD, "one prompt"),
]


def table(cases):
    return dict(argvalues=[case[1:] for case in cases], ids=[case[0] for case in cases])


@pytest.mark.parametrize("kwargs, error, name", **table(TEXT_TO_IMAGE))
def test_text_to_image_explainer(tiny_pipe, kwargs, error, name):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    call = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    refused(tiny_pipe, lambda: explainer(**call), error, name)


ARRAY = np.asarray(RGB)
IMG2IMG = [
    ("no-image", dict(), BAD, "image"),
    ("image-and-init-image", dict(image=RGB, init_image=RGB), BAD, "init_image"),
    ("image-int", dict(image=5), BAD, "image"),
    ("image-str-not-a-path", dict(image="not an image"), FileNotFoundError, "not an image"),
    ("image-float-255", dict(image=ARRAY.astype(np.float32)), BAD, "image"),
    ("image-negative-floats", dict(image=ARRAY.astype(np.float32) / 255 - 1), BAD, "image"),
    ("image-5-channels", dict(image=np.zeros((SIZE, SIZE, 5), np.uint8)), BAD, "image"),
    ("image-1d", dict(image=np.zeros(SIZE, np.uint8)), BAD, "image"),
    ("image-empty", dict(image=np.zeros((0, 0, 3), np.uint8)), BAD, "image"),
    ("image-empty-list", dict(image=[]), BAD, "image"),
    ("image-and-other-height", dict(image=RGB, height=2 * SIZE), BAD, "height"),
    ("image-nan", dict(image=np.full((SIZE, SIZE, 3), np.nan, np.float32)), BAD, "image"),
    ("strength-0", dict(image=RGB, strength=0), BAD, "strength"),
    ("strength-above-1", dict(image=RGB, strength=1.5), BAD, "strength"),
    ("strength-str", dict(image=RGB, strength="0.5"), BAD, "strength"),
    ("strength-leaves-no-step", dict(image=RGB, strength=0.2), BAD, "strength"),
    ("mask-to-img2img", dict(image=RGB, mask_image=MASK), BAD, "mask_image"),
    ("two-images-for-one-prompt", dict(image=[RGB, RGB]), BAD, "image"),
    ("negative-two-for-one-prompt", dict(image=RGB, negative_prompt=["a", "b"]), BAD, "negative_prompt"),
]


@pytest.mark.parametrize("kwargs, error, name", **table(IMG2IMG))
def test_img2img_explainer(img2img, kwargs, error, name):
    explainer = StableDiffusionImg2ImgPipelineExplainer(img2img, verbose=False)
    call = {"prompt": PROMPT, "num_inference_steps": 2, "strength": 1.0, **kwargs}
    refused(img2img, lambda: explainer(**call), error, name)


INPAINT = [
    ("no-mask", dict(image=RGB), BAD, "mask_image"),
    ("mask-other-size", dict(image=RGB, mask_image=Image.new("L", (SIZE // 2, SIZE))), BAD, "mask_image"),
    ("mask-int", dict(image=RGB, mask_image=5), BAD, "mask_image"),
    ("mask-out-of-range", dict(image=RGB, mask_image=np.full((SIZE, SIZE), 3.0, np.float32)), BAD, "mask_image"),
    ("mask-missing-file", dict(image=RGB, mask_image="missing-mask.png"), FileNotFoundError, "missing-mask.png"),
]


@pytest.mark.parametrize("kwargs, error, name", **table(INPAINT))
def test_inpaint_explainer(inpaint, kwargs, error, name):
    explainer = StableDiffusionInpaintPipelineExplainer(inpaint, verbose=False)
    call = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    refused(inpaint, lambda: explainer(**call), error, name)


EXISTING_IMAGE = [
    ("image-int", dict(image=5), BAD, "image"),
    ("image-missing-file", dict(image="missing-picture.png"), FileNotFoundError, "missing-picture.png"),
    ("image-rgba", dict(image=Image.new("RGBA", (SIZE, SIZE))), BAD, "alpha"),
    ("image-grey", dict(image=Image.new("L", (SIZE, SIZE))), BAD, "one channel"),
    ("image-array-4-channels", dict(image=np.zeros((SIZE, SIZE, 4), np.uint8)), BAD, "image"),
    ("image-array-grey", dict(image=np.zeros((SIZE, SIZE), np.uint8)), BAD, "image"),
    ("image-too-small", dict(image=Image.new("RGB", (1, 1))), BAD, "image"),
    ("image-list", dict(image=[RGB, RGB]), BAD, "image"),
    ("image-nan", dict(image=np.full((SIZE, SIZE, 3), np.nan, np.float32)), BAD, "image"),
    ("noise-levels-0", dict(noise_levels=[0]), BAD, "noise_levels"),
    ("noise-levels-above-1", dict(noise_levels=[0.5, 1.5]), BAD, "noise_levels"),
    ("noise-levels-empty", dict(noise_levels=[]), BAD, "noise_levels"),
    ("noise-levels-str", dict(noise_levels="0.5"), BAD, "noise_levels"),
    ("noise-seed-str", dict(noise_seed="1"), BAD, "noise_seed"),
    ("prompt-only-special-tokens", dict(prompt="<|endoftext|>"), BAD, "<|endoftext|>"),
    ("prompt-empty", dict(prompt=""), BAD, "prompt"),
    ("concepts-empty", dict(concepts=[]), BAD, "concepts"),
    ("concepts-blank", dict(concepts=["sky", " "]), BAD, "concepts"),
    ("concepts-duplicate", dict(concepts=["sky", "sky"]), BAD, "concepts"),
    ("concepts-str", dict(concepts="sky"), BAD, "concepts"),
    ("concepts-with-gradient", dict(concepts=["sky"], attribution_method="grad_x_input"), BAD, "concepts"),
    ("concepts-on-unet", dict(concepts=["sky"]), BAD, "concept_attention"),
    ("image-and-init-image", dict(init_image=RGB), BAD, "init_image"),
    ("latents", dict(latents=torch.zeros(1, 4, 16, 16)), BAD, "latents"),
    ("keep-latents", dict(keep_for_reexplanation="latents"), BAD, "keep_for_reexplanation"),
    ("box-outside", dict(explanation_2d_bounding_box=((0, 0), (SIZE + 2, 8))), BAD, "explanation_2d_bounding_box"),
    ("unknown-argument", dict(colour="red"), BAD, "colour"),
]


@pytest.mark.parametrize("kwargs, error, name", **table(EXISTING_IMAGE))
def test_explain_an_existing_image(tiny_pipe, kwargs, error, name):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    call = {"image": RGB, "prompt": PROMPT, **kwargs}
    refused(tiny_pipe, lambda: explainer.explain_image(**call), error, name)


def test_an_inpainting_denoiser_is_refused_for_an_existing_image(inpaint):
    explainer = StableDiffusionInpaintPipelineExplainer(inpaint, verbose=False)
    refused(inpaint, lambda: explainer.explain_image(RGB, PROMPT), BAD, "inpainting")


CONSTRUCTION = [
    ("explainer-of-a-string", lambda pipes: StableDiffusionPipelineExplainer("CompVis/stable-diffusion-v1-4"), "pipe"),
    ("explainer-of-none", lambda pipes: explainer_for(None), "pipe"),
    (
        "img2img-explainer-of-text-pipe",
        lambda pipes: StableDiffusionImg2ImgPipelineExplainer(pipes[0]),
        "explainer_for",
    ),
    ("inpaint-explainer-of-img2img", lambda pipes: StableDiffusionInpaintPipelineExplainer(pipes[1]), "mask_image"),
    (
        "text-explainer-of-img2img",
        lambda pipes: StableDiffusionPipelineExplainer(pipes[1]),
        "StableDiffusionImg2ImgPipelineExplainer",
    ),
    (
        "checkpointing-str",
        lambda pipes: StableDiffusionPipelineExplainer(pipes[0], gradient_checkpointing="yes"),
        "gradient_checkpointing",
    ),
]


@pytest.mark.parametrize("make, name", **table(CONSTRUCTION))
def test_explainer_construction(tiny_pipe, img2img, make, name):
    refused(tiny_pipe, lambda: make((tiny_pipe, img2img)), TypeError, name)


OUTPUTS = [
    ("explain-box-outside", lambda o: o.explain(((0, 0), (SIZE + 8, 8))), BAD, "explanation_2d_bounding_box"),
    ("explain-box-str", lambda o: o.explain("left half"), BAD, "explanation_2d_bounding_box"),
    ("explain-method-unknown", lambda o: o.explain(BOX, attribution_method="lime"), BAD, "attribution_method"),
    ("region-grid-0", lambda o: o.region_grid(0), BAD, "cell_size"),
    ("region-grid-negative", lambda o: o.region_grid(-4), BAD, "cell_size"),
    ("region-grid-str", lambda o: o.region_grid("8"), BAD, "cell_size"),
    ("region-grid-too-big", lambda o: o.region_grid(SIZE + 1), BAD, "cell_size"),
    ("region-grid-float", lambda o: o.region_grid(4.5), BAD, "cell_size"),
    ("interactive-view-0", lambda o: o.interactive_view(0), BAD, "cell_size"),
    ("interactive-view-title-int", lambda o: o.interactive_view(8, title=5), BAD, "title"),
    ("gif-negative-duration", lambda o: o.all_images_during_generation.gif("x.gif", duration=-1), BAD, "duration"),
    ("gif-loop-str", lambda o: o.all_images_during_generation.gif("x.gif", loop="yes"), BAD, "loop"),
    ("slider-width-0", lambda o: o.all_images_during_generation.to_html(width=0), BAD, "width"),
    ("plot-ax-str", lambda o: o.token_attributions.plot(ax="left"), BAD, "ax"),
    ("getitem-unknown", lambda o: o["imgae"], KeyError, "imgae"),
    ("ablation-positions-outside", lambda o: faithfulness.ablation_effects(o, positions=[99]), BAD, "positions"),
    ("map-position-outside", lambda o: o.attention_maps.for_token(999), IndexError, "position"),
    ("map-position-str", lambda o: o.attention_maps.heatmap("red"), TypeError, "position"),
    ("map-image-index-outside", lambda o: o.attention_maps.for_token(1, image_index=3), IndexError, "image_index"),
    ("map-cmap-unknown", lambda o: o.attention_maps.heatmap(1, cmap="rainbowz"), BAD, "cmap"),
    ("map-overlay-alpha", lambda o: o.attention_maps.overlay(o.image, 1, alpha=2), BAD, "alpha"),
    ("map-overlay-not-image", lambda o: o.attention_maps.overlay(np.zeros((4, 4)), 1), BAD, "image"),
    ("saliency-shape", lambda o: SaliencyMap(o.image, np.zeros((3, 3))), BAD, "attributions"),
    ("saliency-not-image", lambda o: SaliencyMap(np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE))), BAD, "image"),
    ("saliency-cmap", lambda o: SaliencyMap(o.image, np.zeros((SIZE, SIZE))).heatmap(cmap=3), BAD, "cmap"),
    ("report-empty", lambda o: write_report([], "report"), BAD, "outputs"),
    ("report-nested", lambda o: write_report([[o]], "report"), BAD, "outputs"),
    ("ablation-box-outside", lambda o: faithfulness.ablation_effects(o, ((0, 0), (99, 99))), BAD, "bounding_box"),
    ("ablation-batch-0", lambda o: faithfulness.ablation_effects(o, batch_size=0), BAD, "batch_size"),
    ("deletion-order-outside", lambda o: faithfulness.deletion_curve(o, [0, 99]), BAD, "order"),
    ("deletion-auc-scores-count", lambda o: faithfulness.deletion_auc_ratio(o, scores=[1.0]), BAD, "scores"),
    ("deletion-auc-orders-0", lambda o: faithfulness.deletion_auc_ratio(o, num_random_orders=0), BAD, "num_random"),
    ("pixel-deletion-patch-0", lambda o: faithfulness.pixel_deletion_auc_ratio(o, patch_size=0), BAD, "patch_size"),
    ("pixel-deletion-fill", lambda o: faithfulness.pixel_deletion_auc_ratio(o, fill=2.0), BAD, "fill"),
    ("ablation-of-a-list", lambda o: faithfulness.ablation_effects([o]), BAD, "output"),
]


@pytest.mark.parametrize("run, error, name", **table(OUTPUTS))
def test_output_methods(tiny_pipe, kept, run, error, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(tiny_pipe, lambda: run(kept), error, name)
    assert not list(tmp_path.iterdir()), "a refused call wrote a file"


def _tiny(family):
    # The newer families' tiny pipelines, with the call settings their tests use.
    if family == "flux":
        from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline

        return make_tiny_flux_pipeline(), dict(height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    if family == "kontext":
        from diffusers_interpret.testing.flux_edits import make_tiny_flux_kontext_pipeline

        return make_tiny_flux_kontext_pipeline(), dict(height=16, width=16, max_sequence_length=16, _auto_resize=False)
    if family.startswith("controlnet_"):
        from diffusers_interpret.testing.controlnet import make_tiny_controlnet_pipeline

        kind = family.split("_")[1]
        size = 16 if kind == "flux" else 32
        common = dict(height=size, width=size) if kind != "flux" else dict(height=16, width=16, max_sequence_length=16)
        return make_tiny_controlnet_pipeline(kind), common
    if family == "qwenimage":
        from diffusers_interpret.testing.qwenimage import TINY_QWEN_IMAGE_CALL, make_tiny_qwenimage_pipeline

        return make_tiny_qwenimage_pipeline(), dict(height=32, width=32, **TINY_QWEN_IMAGE_CALL)
    if family == "chroma":
        from diffusers_interpret.testing.chroma import make_tiny_chroma_pipeline

        return make_tiny_chroma_pipeline("text2img"), dict(height=16, width=16, max_sequence_length=16)
    if family == "z_image":
        from diffusers_interpret.testing.z_image import TINY_Z_IMAGE_CALL, make_tiny_z_image_pipeline

        return make_tiny_z_image_pipeline(), dict(height=32, width=32, **TINY_Z_IMAGE_CALL)
    if family == "sana":
        from diffusers_interpret.testing.sana import TINY_SANA_CALL, make_tiny_sana_pipeline

        return make_tiny_sana_pipeline(), dict(height=32, width=32, **TINY_SANA_CALL)
    if family == "wan":
        from diffusers_interpret.testing.wan import TINY_WAN_CALL, make_tiny_wan_pipeline

        return make_tiny_wan_pipeline(), TINY_WAN_CALL
    if family == "cogvideox":
        from diffusers_interpret.testing.cogvideox import TINY_COGVIDEOX_CALL, make_tiny_cogvideox_pipeline

        return make_tiny_cogvideox_pipeline(), TINY_COGVIDEOX_CALL
    if family in ("ltx", "ltx_i2v"):
        from diffusers_interpret.testing.ltx import TINY_LTX_CALL, make_tiny_ltx_pipeline

        return make_tiny_ltx_pipeline(kind="image2video" if family == "ltx_i2v" else "text2video"), TINY_LTX_CALL
    if family == "hunyuan_video":
        from diffusers_interpret.testing.hunyuan_video import TINY_HUNYUAN_VIDEO_CALL, make_tiny_hunyuan_video_pipeline

        return make_tiny_hunyuan_video_pipeline(), TINY_HUNYUAN_VIDEO_CALL
    if family == "hunyuan_video15":
        from diffusers_interpret.testing.hunyuan_video15 import (
            TINY_HUNYUAN_VIDEO15_CALL,
            make_tiny_hunyuan_video15_pipeline,
        )

        return make_tiny_hunyuan_video15_pipeline(guidance_scale=4.0), TINY_HUNYUAN_VIDEO15_CALL
    if family == "prx":
        from diffusers_interpret.testing.prx import TINY_PRX_CALL, make_tiny_prx_pipeline

        return make_tiny_prx_pipeline(), dict(height=16, width=16, **TINY_PRX_CALL)
    from diffusers_interpret.testing import flux2

    if family == "flux2_klein":
        return flux2.make_tiny_flux2_klein_pipeline(), dict(height=16, width=16, **flux2.TINY_FLUX2_CALL)
    return flux2.make_tiny_flux2_dev_pipeline(), dict(height=16, width=16, max_sequence_length=64)


@pytest.fixture(scope="module")
def family_pipes():
    return {}


FAMILIES = [
    ("flux-prompt-2-int", "flux", dict(prompt_2=5), BAD, "prompt_2"),
    ("flux-prompt-2-two-for-one-prompt", "flux", dict(prompt_2=["a", "b"]), BAD, "prompt_2"),
    ("flux-prompt-2-list-of-int", "flux", dict(prompt_2=[5]), BAD, "prompt_2"),
    ("qwen-length-cuts-prompt", "qwenimage", dict(max_sequence_length=4), BAD, "max_sequence_length=12"),
    ("qwen-length-over-1024", "qwenimage", dict(max_sequence_length=2000), BAD, "max_sequence_length"),
    ("qwen-length-0", "qwenimage", dict(max_sequence_length=0), BAD, "max_sequence_length"),
    ("qwen-special-token", "qwenimage", dict(prompt="a dog <|im_end|>"), BAD, "<|im_end|>"),
    ("qwen-size", "qwenimage", dict(height=30), BAD, "height"),
    ("qwen-true-cfg-str", "qwenimage", dict(true_cfg_scale="4", negative_prompt="x"), BAD, "true_cfg_scale"),
    ("qwen-image", "qwenimage", dict(image=Image.new("RGB", (32, 32))), BAD, "image"),
    ("chroma-length-0", "chroma", dict(max_sequence_length=0), BAD, "max_sequence_length"),
    ("chroma-length-str", "chroma", dict(max_sequence_length="64"), BAD, "max_sequence_length"),
    ("klein-reference-image", "flux2_klein", dict(image=Image.new("RGB", (16, 16))), BAD, "image="),
    ("klein-length-no-room", "flux2_klein", dict(max_sequence_length=3), BAD, "max_sequence_length=3"),
    ("dev-caption-upsampling", "flux2_dev", dict(caption_upsample_temperature=0.7), BAD, "caption_upsample"),
    ("prx-cleaning-rewrites", "prx", dict(prompt="a dog at www.example.com"), BAD, "skip_text_cleaning"),
    ("prx-two-prompts-guided", "prx", dict(prompt=["a dog", "a cat"]), BAD, "one prompt"),
    ("prx-two-images-guided", "prx", dict(num_images_per_prompt=2), BAD, "one image"),
    ("prx-concept-attention", "prx", dict(attribution_method="concept_attention"), BAD, "text stream"),
    ("sana-clean-caption", "sana", dict(clean_caption=True), BAD, "clean_caption"),
    ("sana-binning-resizes", "sana", dict(use_resolution_binning=True), BAD, "use_resolution_binning"),
    ("sana-size-not-32", "sana", dict(height=48), BAD, "height"),
    ("sana-concept-attention", "sana", dict(attribution_method="concept_attention"), BAD, "text stream"),
    ("sana-length-0", "sana", dict(max_sequence_length=0), BAD, "max_sequence_length"),
    ("z-image-cfg-truncation", "z_image", dict(cfg_truncation=0.5), BAD, "cfg_truncation"),
    ("z-image-concept-attention", "z_image", dict(attribution_method="concept_attention"), BAD, "text stream"),
    ("z-image-special-token", "z_image", dict(prompt="a dog <|im_start|>"), BAD, "<|im_start|>"),
    ("z-image-size", "z_image", dict(height=30), BAD, "height"),
    ("z-image-latents-5d", "z_image", dict(latents=torch.zeros(1, 16, 1, 16, 16)), BAD, "latents"),
    ("controlnet-no-control-image", "controlnet_sd", dict(), BAD, "image="),
    ("controlnet-two-controls-one-prompt", "controlnet_sd", dict(image=[RGB, RGB]), BAD, "image"),
    ("controlnet-control-missing-file", "controlnet_sd", dict(image="no/such/edges.png"), FileNotFoundError, "image"),
    ("controlnet-control-not-an-image", "controlnet_sd", dict(image=3), BAD, "image"),
    ("controlnet-init-image", "controlnet_sd", dict(init_image=RGB), BAD, "init_image"),
    ("controlnet-mask", "controlnet_sd", dict(image=RGB, mask_image=MASK), BAD, "mask_image"),
    ("controlnet-flux-no-control", "controlnet_flux", dict(), BAD, "control_image="),
    ("controlnet-flux-image", "controlnet_flux", dict(image=RGB), BAD, "control_image="),
    ("kontext-size-from-max-area", "kontext", dict(image=RGB), BAD, "max_area=256"),
    ("kontext-no-reference", "kontext", dict(max_area=256), BAD, "input image"),
    ("controlnet-flux-tensor", "controlnet_flux", dict(control_image=torch.zeros(1, 3, 16, 16)), BAD, "control_image"),
    # clips: frame ranges outside the clip, boxes on a frame that does not exist, frame counts the model cannot make
    ("wan-frames-past-the-clip", "wan", dict(explanation_frames=(5, 12)), BAD, "explanation_frames"),
    ("wan-frames-empty", "wan", dict(explanation_frames=(4, 4)), BAD, "explanation_frames"),
    ("wan-frames-negative", "wan", dict(explanation_frames=(-1, 3)), BAD, "explanation_frames"),
    ("wan-frames-one-number", "wan", dict(explanation_frames=3), BAD, "explanation_frames"),
    ("wan-frames-float", "wan", dict(explanation_frames=(0.5, 3)), BAD, "explanation_frames"),
    ("wan-box-below-the-frame", "wan", dict(explanation_2d_bounding_box=((0, 16), (8, 24))), BAD, "bounding_box"),
    ("wan-frame-count", "wan", dict(num_frames=10), BAD, "num_frames"),
    ("wan-frame-count-0", "wan", dict(num_frames=0), BAD, "num_frames"),
    ("wan-videos-per-prompt-0", "wan", dict(num_videos_per_prompt=0), BAD, "num_videos_per_prompt"),
    ("wan-cleaning-rewrites", "wan", dict(prompt="a  corgi &amp; a cat"), BAD, "prompt"),
    ("cogvideox-frame-count", "cogvideox", dict(num_frames=10), BAD, "num_frames=10"),
    ("cogvideox-frames-past-the-clip", "cogvideox", dict(explanation_frames=(0, 10)), BAD, "explanation_frames"),
    ("hunyuan-frame-count", "hunyuan_video", dict(num_frames=8), BAD, "num_frames=8"),
    ("ltx-frame-count", "ltx", dict(num_frames=8), BAD, "num_frames=8"),
    ("ltx-size-not-32", "ltx", dict(height=48), BAD, "multiple of 32"),
    ("ltx-decode-noise", "ltx", dict(decode_timestep=0.0, decode_noise_scale=0.05), BAD, "decode_noise_scale"),
    ("ltx-frames-past-the-clip", "ltx", dict(explanation_frames=(2, 10)), BAD, "explanation_frames"),
    ("ltx-i2v-no-image", "ltx_i2v", dict(), BAD, "image="),
    ("ltx-i2v-mask", "ltx_i2v", dict(image=RGB, mask_image=MASK), BAD, "mask_image"),
    (
        "hunyuan-template-without-place",
        "hunyuan_video",
        dict(prompt_template={"template": "x"}),
        BAD,
        "prompt_template",
    ),
    ("wan-concept-attention", "wan", dict(attribution_method="concept_attention"), BAD, "text stream"),
    ("hunyuan15-frame-count", "hunyuan_video15", dict(num_frames=10), BAD, "num_frames=10"),
    ("hunyuan15-frames-past-the-clip", "hunyuan_video15", dict(explanation_frames=(3, 11)), BAD, "explanation_frames"),
    (
        "hunyuan15-box-below-the-frame",
        "hunyuan_video15",
        dict(explanation_2d_bounding_box=((0, 16), (8, 24))),
        BAD,
        "bounding_box",
    ),
    ("hunyuan15-guidance-scale", "hunyuan_video15", dict(guidance_scale=4.0), TypeError, "guidance_scale"),
    ("hunyuan15-two-videos", "hunyuan_video15", dict(num_videos_per_prompt=2), BAD, "num_videos_per_prompt=2"),
    ("hunyuan15-input-image", "hunyuan_video15", dict(image=RGB), BAD, "text-to-video calls"),
]


@pytest.mark.parametrize("family, kwargs, error, name", **table(FAMILIES))
def test_newer_families(family_pipes, family, kwargs, error, name):
    if family not in family_pipes:
        family_pipes[family] = _tiny(family)
    pipe, common = family_pipes[family]
    call = {"prompt": "a cute corgi on the left", "num_inference_steps": 2, **common, **kwargs}
    refused(pipe, lambda: explainer_for(pipe, verbose=False)(**call), error, name)


def _record(pipe, make):
    with make(pipe):
        pipe(PROMPT, num_inference_steps=1, generator=seeded(0))


RECORDERS = [
    ("heads-str", lambda p: _record(p, lambda q: record_cross_attention(q, heads="all")), BAD, "heads"),
    ("heads-empty", lambda p: _record(p, lambda q: record_cross_attention(q, heads=[])), BAD, "heads"),
    ("heads-twice", lambda p: _record(p, lambda q: record_cross_attention(q, heads=[1, 1])), BAD, "heads"),
    ("steps-str", lambda p: _record(p, lambda q: record_cross_attention(q, steps="all")), BAD, "steps"),
    ("layers-unknown", lambda p: _record(p, lambda q: record_cross_attention(q, layers=["nope"])), BAD, "nope"),
    ("record-bytes-0", lambda p: _record(p, lambda q: record_cross_attention(q, max_record_bytes=0)), BAD, "max_rec"),
    ("self-box-str", lambda p: _record(p, lambda q: record_self_attention(q, box="left")), BAD, "bounding_box"),
    ("text-relations-unet", lambda p: _record(p, record_text_relations), BAD, "text relations"),
]


@pytest.mark.parametrize("run, error, name", **table(RECORDERS))
def test_recorders(tiny_pipe, run, error, name):
    refused(tiny_pipe, lambda: run(tiny_pipe), error, name)


def test_exporting_maps_an_output_has_not(tiny_pipe, tmp_path):
    # A gradient explanation without its prompt-dependence map and without recorded attention has no map.
    output = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)(
        PROMPT, num_inference_steps=1, attribution_method="grad_x_input", prompt_dependence=False, generator=seeded(0)
    )
    refused(tiny_pipe, lambda: output.export_maps(tmp_path / "maps"), BAD, "attention_maps")
    assert not list(tmp_path.iterdir()), "a refused call wrote a file"


CLI = [
    ("no-command", [], "demo, explain or explain-image"),
    ("true-cfg-on-sd", ["explain", "a red circle", "--true-cfg-scale", "2"], "--true-cfg-scale"),
    ("sequence-length-on-sd", ["explain", "a red circle", "--max-sequence-length", "64"], "--max-sequence-length"),
    ("sequence-length-zero", ["explain", "a red circle", "--max-sequence-length", "0"], "--max-sequence-length"),
    ("demo-family", ["demo", "--family", "sdxl"], "--family"),
    ("steps-0", ["explain", "a red circle", "--steps", "0"], "--steps"),
    ("steps-str", ["explain", "a red circle", "--steps", "many"], "--steps"),
    ("traced-negative", ["explain", "a red circle", "--traced", "-1"], "--traced"),
    ("box-three", ["explain", "a red circle", "--box", "1,2,3"], "--box"),
    ("box-outside", ["explain", "a red circle", "--box", "0,0,64,64"], "--box"),
    ("box-inverted", ["explain", "a red circle", "--box", "16,16,0,0"], "--box"),
    ("empty-prompt", ["explain", "  "], "PROMPT"),
    ("method-unknown", ["explain", "a red circle", "--method", "shap"], "--method"),
    ("level-unknown", ["explain", "a red circle", "--level", "pixels"], "--level"),
    ("model-missing", ["explain", "a red circle", "--model", "no/such-model-dir"], "no/such-model-dir"),
    ("height-not-multiple", ["explain", "a red circle", "--height", "30"], "--height"),
    ("seed-str", ["explain", "a red circle", "--seed", "abc"], "--seed"),
    ("guidance-str", ["explain", "a red circle", "--guidance", "high"], "--guidance"),
    ("out-is-a-file", ["explain", "a red circle", "--out", "OUT_FILE"], "--out"),
    ("out-under-a-file", ["explain", "a red circle", "--out", "OUT_FILE/report"], "cannot be created"),
    (
        "model-unsupported-pipeline",
        ["explain", "a red circle", "--model", "UNSUPPORTED"],
        "StableVideoDiffusionPipeline",
    ),
    ("image-missing", ["explain-image", "missing.png", "--prompt", "a red circle"], "IMAGE"),
    ("image-not-an-image", ["explain-image", "OUT_FILE", "--prompt", "a red circle"], "IMAGE"),
    ("image-no-prompt", ["explain-image", "missing.png"], "--prompt"),
    (
        "image-noise-level",
        ["explain-image", "missing.png", "--prompt", "a", "--noise-levels", "1.5"],
        "--noise-levels",
    ),
]


@pytest.mark.parametrize("argv, name", **table(CLI))
def test_command_line(argv, name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "report.txt"
    out_file.write_text("")
    unsupported = tmp_path / "video-model"
    unsupported.mkdir()
    (unsupported / "model_index.json").write_text('{"_class_name": "StableVideoDiffusionPipeline"}')
    argv = [a.replace("OUT_FILE", str(out_file)).replace("UNSUPPORTED", str(unsupported)) for a in argv]
    if argv and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    calls = []
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err, err
    assert not calls
    assert not (tmp_path / "out").exists(), "a refused command wrote its output directory"


def test_the_table_has_at_least_80_cases():
    count = len(TEXT_TO_IMAGE) + len(IMG2IMG) + len(INPAINT) + len(EXISTING_IMAGE) + len(CONSTRUCTION) + len(OUTPUTS)
    count += len(CLI) + len(FAMILIES) + len(RECORDERS)
    assert count >= 80, count


def test_no_case_file_is_left_in_the_working_directory():
    assert not Path(os.getcwd(), "x.gif").exists()


def test_a_long_prompt_is_noted_once_and_words_show_as_written(tiny_pipe):
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    from diffusers.utils import logging as diffusers_logging

    logger = logging.getLogger(type(tiny_pipe).__module__)
    handler = Keep()
    logger.addHandler(handler)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # as a user's session has it (other tests quiet diffusers)
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    try:
        with pytest.warns(UserWarning, match="tokens long"):
            explainer(" ".join(["red"] * 100), num_inference_steps=2, generator=seeded(0))
    finally:
        logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    truncated = [message for message in records if message.startswith("The following part of your input")]
    assert len(truncated) == 1, truncated  # once, not once per text-encoder pass
    prompt = "a 🐱 cat и кошка café"
    output = explainer(prompt, num_inference_steps=2, generator=seeded(0))
    assert output.word_attributions.tokens == prompt.split()  # as written, not as byte-level pieces


def test_a_prompt_with_dollar_signs_reports(tmp_path, capsys):
    from diffusers_interpret.toy import toy_model_available

    if not toy_model_available():
        pytest.skip("the shipped toy model's files are missing")
    code = main(["explain", "a $x^$ red circle", "--steps", "2", "--quiet", "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "report.html").is_file()
    assert "a $x^$ red circle" in (tmp_path / "report.html").read_text()
