"""Chroma through the family seam: identity with the pipelines, gradients through T5, masked joint-attention maps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitJointAttention
from PIL import Image

from diffusers_interpret import ChromaImg2ImgPipelineExplainer, ChromaPipelineExplainer, explainer_for
from diffusers_interpret.testing.chroma import TINY_CHROMA_T5_LENGTH, make_tiny_chroma_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 16, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, max_sequence_length=TINY_CHROMA_T5_LENGTH)


@pytest.fixture(scope="module")
def chroma():
    return make_tiny_chroma_pipeline("text2img")


@pytest.fixture(scope="module")
def chroma64():
    return make_tiny_chroma_pipeline("text2img", dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **COMMON, **kwargs)


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    (x0, y0), (x1, y1) = box
    return images[0, :, y0:y1, x0:x1].sum()


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "concept_attention", "ablation"])
def test_image_is_the_pipelines_image(chroma, method):
    # Guidance 5 (the default: a prompt call and a negative call per step), with a negative prompt, and guidance 1.
    for seed, extra in (
        (1, {}),
        (2, {"negative_prompt": "a dog", "guidance_scale": 3.0}),
        (3, {"guidance_scale": 1.0}),
    ):
        expected = chroma(PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(chroma, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.any()
    assert isinstance(explainer_for(chroma), ChromaPipelineExplainer)


def test_traced_calls_follow_the_guidance(chroma):
    # Two transformer calls a step with guidance > 1, one without: a traced step traces both or one.
    one_step = dict(n_last_diffusion_steps_to_consider_for_attributions=1)
    assert explain(chroma, **one_step).extras["traced_denoiser_calls"] == 2
    assert explain(chroma, guidance_scale=1.0, **one_step).extras["traced_denoiser_calls"] == 1


def test_img2img_image_is_the_pipelines():
    pipe = make_tiny_chroma_pipeline("img2img")
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    args = dict(image=init, strength=0.5, **COMMON)
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **args).images[0]
    explainer = ChromaImg2ImgPipelineExplainer(pipe, verbose=False)
    out = explainer(PROMPT, generator=seeded(0), output_type="np", attribution_method="grad_x_input", **args)
    np.testing.assert_array_equal(out.image, expected)
    assert out.pixel_attributions is not None and out.pixel_attributions.shape[-2:] == (SIZE, SIZE)
    assert np.abs(out.pixel_attributions).sum() > 0


def t5_ids(pipe, prompt):
    return pipe.tokenizer(
        prompt, padding="max_length", max_length=TINY_CHROMA_T5_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(chroma64):
    # An independent autograd computation: T5's token embedding output (of the prompt's ids only: the negative
    # prompt's call is left alone) replaced by a leaf, the pipeline's own __call__ with grad, the box sum
    # differentiated; then the directional derivative along that gradient by central differences.
    pipe, box, eps = chroma64, ((0, 0), (8, 16)), 1e-3
    call = dict(negative_prompt="a dog", guidance_scale=3.0)
    out = explain(pipe, explanation_2d_bounding_box=box, **call)
    ids, leaf = t5_ids(pipe, PROMPT), {}

    def replace(module, args, output):
        if torch.equal(args[0], ids):
            leaf["t5"] = output.detach().clone().requires_grad_(True)
            return leaf["t5"]
        return output

    handle = pipe.text_encoder.encoder.embed_tokens.register_forward_hook(replace)
    try:
        with torch.enable_grad():
            call_ = type(pipe).__call__.__wrapped__
            images = call_(pipe, PROMPT, generator=seeded(0), output_type="pt", **COMMON, **call).images
            grad = torch.autograd.grad(box_sum(images, box), leaf["t5"])[0]
    finally:
        handle.remove()
    units = out.session.trace.prompt_tokens[0].units
    assert [u.label for u in units] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    norm = float(grad.norm())

    def shifted(sign):
        def add(module, args, output):
            return output + sign * eps * grad / norm if torch.equal(args[0], ids) else output

        handle = pipe.text_encoder.encoder.embed_tokens.register_forward_hook(add)
        try:
            return float(box_sum(pipe(PROMPT, generator=seeded(0), output_type="pt", **COMMON, **call).images, box))
        finally:
            handle.remove()

    assert (shifted(1) - shifted(-1)) / (2 * eps) == pytest.approx(norm, rel=1e-3)


def test_joint_attention_maps_equal_an_independent_computation_with_the_mask(chroma):
    # Chroma's transformer gets a (batch, 1, tokens, tokens) 0/1 mask in the layers' dtype, which the attention
    # kernel adds to the scores: the recorder must compute the attention the model computes, mask included.
    call = dict(guidance_scale=1.0)
    out = explain(chroma, attribution_method="attention", output_type="np", **call)
    maps = out.attention_maps.maps[0]  # (T5 tokens, H, W)
    processors = chroma.transformer.attn_processors
    store = []
    chroma.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        replayed = chroma(PROMPT, generator=seeded(0), output_type="np", **COMMON, **call).images[0]
    finally:
        chroma.transformer.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)  # the independent processor is the model's math
    text, grid = TINY_CHROMA_T5_LENGTH, SIZE // 2
    content = list(out.token_positions)
    image_to_text = [p[0, :, text:, :text] for p in store]
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[..., content] / (1 - p.sum(-1, keepdim=True) + p[..., content].sum(-1, keepdim=True)) for p in image_to_text
    ]

    def aggregate(per_layer):  # (image queries, text keys) per layer and step -> (text, SIZE, SIZE)
        per_call = [torch.stack(per_layer[i : i + 2]).mean(0) for i in range(0, len(per_layer), 2)]
        probs = torch.stack(per_call).mean(0)
        grid_maps = probs.T.reshape(probs.shape[-1], grid, grid)
        return F.interpolate(grid_maps[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    expected = torch.zeros(text, SIZE, SIZE)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)


def test_the_recorder_applies_the_mask_as_the_kernel_does(chroma):
    # One joint-attention layer: a boolean mask that drops keys is the attention over the kept keys alone; a
    # floating one is added to the scores (a 0/1 float mask moves the maps, as it moves the model's attention).
    from diffusers_interpret.tracing.attention import joint_attention_probabilities

    torch.manual_seed(0)
    transformer = chroma.transformer
    attn = transformer.transformer_blocks[0].attn
    width = attn.to_q.in_features
    image, text = torch.randn(1, 16, width), torch.randn(1, 6, width)
    image_ids = torch.zeros(16, 3)
    image_ids[:, 1], image_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    rotary = transformer.pos_embed(torch.cat([torch.zeros(6, 3), image_ids]))
    keep = torch.ones(1, 22, dtype=torch.bool)
    keep[0, 4:6] = False  # the last two text keys
    dropped, _ = joint_attention_probabilities(attn, image, text, rotary, 6, attention_mask=keep)
    rotary4 = transformer.pos_embed(torch.cat([torch.zeros(4, 3), image_ids]))
    alone, _ = joint_attention_probabilities(attn, image, text[:, :4], rotary4, 4)
    assert torch.all(dropped[..., 4:] == 0)
    np.testing.assert_allclose(dropped[..., :4], alone, atol=1e-6)
    plain, _ = joint_attention_probabilities(attn, image, text, rotary, 6)
    added, _ = joint_attention_probabilities(attn, image, text, rotary, 6, attention_mask=keep.float())
    assert not torch.allclose(
        plain, added, atol=1e-4
    )  # a floating 0/1 mask moves the maps (added: checked end to end above)


def test_words_merge_t5s_pieces(chroma):
    out = explain(chroma, explanation_2d_bounding_box=((0, 0), (8, 16)))
    scores = out.token_attributions.scores
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)  # "cor" + "gi"
    assert out.pooled_share is None  # no pooled vector in Chroma
    assert out.encoder_token_attributions is None  # one text encoder: nothing to tell apart


def test_record_cross_attention_leaves_out_the_negative_calls(chroma):
    # `record_cross_attention(pipe)` never sees the call's arguments: with guidance it records the prompt's calls
    # only (one a step), as a recorder told the calls per step does; without guidance, every call.
    from diffusers_interpret.attention import record_cross_attention
    from diffusers_interpret.families import family_for
    from diffusers_interpret.tracing.attention import make_recorder
    from diffusers_interpret.tracing.steps import StepCounter

    family = family_for(chroma)
    for guidance, steps, calls in ((5.0, [0, 2, 4], 2), (1.0, [0, 1, 2], 1)):
        with record_cross_attention(chroma, keep_per_step=True) as recorder:
            chroma(PROMPT, generator=seeded(0), guidance_scale=guidance, **COMMON)
        counter = StepCounter(chroma, family.denoiser(chroma), calls_per_step=calls)
        with counter, make_recorder(chroma, family, keep_per_step=True, counter=counter) as told:
            chroma(PROMPT, generator=seeded(0), guidance_scale=guidance, **COMMON)
        assert recorder.maps.steps == steps == told.maps.steps
        torch.testing.assert_close(recorder.maps.maps, told.maps.maps)
