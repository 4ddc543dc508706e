"""Qwen-Image through the family seam: a dropped template prefix, gradients through Qwen2.5-VL, MMDiT attention."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitQwenImageAttention
from independent_gradients import central_difference, leaf_gradient
from shared_checks import every_row_mixing

from diffusers_interpret import QwenImagePipelineExplainer, explainer_for
from diffusers_interpret.testing.qwenimage import TINY_QWEN_IMAGE_CALL, make_tiny_qwenimage_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 32, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, **TINY_QWEN_IMAGE_CALL)
TRUE_CFG = dict(negative_prompt="blurry", true_cfg_scale=3.0)


@pytest.fixture(scope="module")
def qwen():
    return make_tiny_qwenimage_pipeline()


@pytest.fixture(scope="module")
def qwen64():
    return make_tiny_qwenimage_pipeline(dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def templated_ids(pipe, prompt=PROMPT):
    # What the pipeline's own `_get_qwen_prompt_embeds` tokenizes: the prompt in its describing template (a single
    # prompt: no padding); it drops the first `prompt_template_encode_start_idx` positions' states.
    text = pipe.prompt_template_encode.format(prompt)
    return text, pipe.tokenizer(text, return_tensors="pt")


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "concept_attention", "ablation"])
def test_image_is_the_pipelines_image(qwen, method):
    # One transformer call a step (no negative prompt), and true CFG (the negative prompt's call after the prompt's).
    for seed, extra in ((1, {}), (2, TRUE_CFG)):
        expected = qwen(prompt=PROMPT, generator=seeded(seed), output_type="np", **COMMON, **extra).images[0]
        out = explain(qwen, seed=seed, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
        assert np.isfinite(out.token_attributions.scores).all() and out.token_attributions.scores.any()
    assert isinstance(explainer_for(qwen), QwenImagePipelineExplainer)


def test_only_the_prompts_own_tokens_are_attributed_at_the_rows_the_transformer_reads(qwen):
    # The dropped prefix (system message, the user's marker) has no row; the template's end (end marker, the
    # assistant's marker) reaches the transformer and is not ranked; a word split into pieces is one word.
    out = explain(qwen)
    text, ids = templated_ids(qwen)
    drop = qwen.prompt_template_encode_start_idx
    start = text.index(PROMPT)
    offsets = qwen.tokenizer(text, return_offsets_mapping=True).offset_mapping
    inside = [p for p, (a, b) in enumerate(offsets) if b > a and a < start + len(PROMPT) and b > start]
    assert inside[0] == drop  # the prompt starts where the dropped prefix ends
    assert list(out.token_positions) == [p - drop for p in inside]
    assert [label for label, _ in out.token_attributions] == ["a", "cute", "cor", "gi", "on", "the", "left"]
    scores = out.token_attributions.scores
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    assert out.word_attributions[2][1] == pytest.approx(scores[2] + scores[3], rel=1e-6)
    # The rows are those of the transformer's text: the states the pipeline hands it.
    states, _ = qwen.encode_prompt(prompt=PROMPT, max_sequence_length=COMMON["max_sequence_length"])
    assert states.shape[1] == ids.input_ids.shape[1] - drop
    # Asked for, the template's end is attributed too (the dropped prefix never: the transformer never reads it).
    every = explain(qwen, consider_special_tokens=True)
    assert list(every.token_positions) == list(range(ids.input_ids.shape[1] - drop))
    assert out.pooled_share is None


def test_token_gradients_equal_an_independent_autograd_and_finite_differences(qwen64):
    # The LLM's token embedding output of the templated prompt replaced by a leaf, the pipeline's own __call__ with
    # grad (true CFG: the negative prompt's call left alone), the box sum differentiated; then the directional
    # derivative along that gradient by central differences. (The transformer's rotary embedding computes in float32
    # whatever the model's dtype: the differences are taken at a step that float32 rounding does not swamp.)
    pipe, box, eps = qwen64, ((0, 0), (16, 32)), 1e-4
    out = explain(pipe, explanation_2d_bounding_box=box, **TRUE_CFG)
    ids = templated_ids(pipe)[1].input_ids
    embed = pipe.text_encoder.get_input_embeddings()
    grad = leaf_gradient(pipe, embed, ids, box, prompt=PROMPT, **COMMON, **TRUE_CFG)
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    # The dropped prefix carries gradient too (the LLM is causal: the prompt's states read it), and is not a row.
    drop = pipe.prompt_template_encode_start_idx
    assert float(grad[0, :drop].abs().sum()) > 0 and min(u.token_index for u in units) >= drop
    difference = central_difference(pipe, embed, ids, grad, eps, box, prompt=PROMPT, **COMMON, **TRUE_CFG)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-3)


def test_joint_attention_maps_equal_an_independent_computation(qwen):
    out = explain(qwen, attribution_method="attention", output_type="np")
    maps = out.attention_maps.maps[0]  # (text rows, H, W)
    _, ids = templated_ids(qwen)
    length = ids.input_ids.shape[1] - qwen.prompt_template_encode_start_idx
    assert maps.shape == (length, SIZE, SIZE)
    processors = qwen.transformer.attn_processors
    store = []
    qwen.transformer.set_attn_processor({name: ExplicitQwenImageAttention(store) for name in processors})
    try:
        replayed = qwen(prompt=PROMPT, generator=seeded(0), output_type="np", **COMMON).images[0]
    finally:
        qwen.transformer.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, out.image, atol=1e-5)  # the independent processors are the model's math
    grid = SIZE // qwen.vae_scale_factor // 2  # 2x2 patches of the latents: 4x4 image tokens
    content = list(out.token_positions)
    image_to_text = [p[0, :, length:, :length] for p in store]
    # The sinks' keys out of each softmax (the image's keys stay): the prompt's tokens over 1 - the sinks' share.
    kept = [
        p[..., content] / (1 - p.sum(-1, keepdim=True) + p[..., content].sum(-1, keepdim=True)) for p in image_to_text
    ]
    layers = len(qwen.transformer.transformer_blocks)

    def aggregate(per_layer):
        per_call = [torch.stack(per_layer[i : i + layers]).mean(0) for i in range(0, len(per_layer), layers)]
        probs = torch.stack(per_call).mean(0)
        grid_maps = probs.T.reshape(probs.shape[-1], grid, grid)
        return F.interpolate(grid_maps[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    expected = torch.zeros(length, SIZE, SIZE)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)
    assert 0 < out.attention_sink_share < 1


def test_each_image_of_a_batch_reads_its_own_prompts_tokens(qwen):
    # Two prompts of different lengths: the pipeline pads the shorter one's template and masks its padding out of the
    # transformer's attention. The images are the pipeline's; every image's words are its own prompt's; its maps are
    # of its own prompt's tokens only; the padding's rows get no attention (the mask), and no gradient.
    prompts = ["a cute corgi on the left", "a dog"]
    expected = qwen(prompt=prompts, generator=seeded(0), output_type="np", **COMMON).images
    explainer = QwenImagePipelineExplainer(qwen, verbose=False)
    for method in ("attention", "grad_x_input"):
        outputs = explainer(prompts, generator=seeded(0), attribution_method=method, output_type="np", **COMMON)
        for index, output in enumerate(outputs):
            np.testing.assert_array_equal(output.image, expected[index])
        assert [[w for w, _ in o.word_attributions] for o in outputs] == [PROMPT.split(), ["a", "dog"]]
        if method == "attention":
            for index, output in enumerate(outputs):
                maps = output.attention_maps.maps[index]
                content = list(output.token_positions)
                others = [p for p in range(maps.shape[0]) if p not in content]
                assert (
                    float(maps[content].sum(0).min()) > 0 and float(maps[content].sum(0).max()) < 1
                )  # image keys' share
                assert float(maps[others].abs().max()) == 0
        assert all(
            np.isfinite(o.token_attributions.scores).all() and o.token_attributions.scores.any() for o in outputs
        )


def test_a_length_that_cuts_the_prompts_states_is_refused_before_any_model_runs(qwen):
    # The pipeline keeps `max_sequence_length` of the states after the dropped prefix: a prompt longer than that
    # would lose its end (and the explanation its rows) silently. Refused, naming the length that keeps it whole.
    _, ids = templated_ids(qwen)
    needed = ids.input_ids.shape[1] - qwen.prompt_template_encode_start_idx
    calls = []
    handle = qwen.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=f"Use `max_sequence_length={needed}` or more"):
            explain(qwen, max_sequence_length=needed - 1)
        assert not calls
    finally:
        handle.remove()
    assert [w for w, _ in explain(qwen, max_sequence_length=needed).word_attributions] == PROMPT.split()


def test_word_attention_reads_the_causal_llm_only_up_to_the_prompts_last_token(qwen, monkeypatch):
    fast = explain(qwen, attribution_method="word_attention", prompt_dependence=False)
    computed = every_row_mixing(monkeypatch)
    full = explain(qwen, attribution_method="word_attention", prompt_dependence=False)
    assert computed and computed[0][1] == max(fast.token_positions) + 1
    np.testing.assert_allclose(fast.token_attributions.scores, full.token_attributions.scores, rtol=1e-9, atol=0)


def test_img2img_image_and_pixel_gradients_equal_the_pipelines_and_finite_differences():
    # QwenImageImg2ImgPipeline: the input image encoded by the video VAE as one frame. The image is the pipeline's;
    # the gradient of a box's sum to the input pixels equals central differences of the pipeline's own images (float64;
    # the rotary embedding computes in float32: measured, the differences are within 1e-4 of the gradient at a step of
    # 1e-2 and 3e-3, 0.6% off at 1e-3, where float32 rounding takes over).
    from diffusers_interpret import QwenImageImg2ImgPipelineExplainer

    pipe = make_tiny_qwenimage_pipeline(kind="img2img", dtype=torch.float64)
    x = torch.from_numpy(np.random.default_rng(0).random((3, SIZE, SIZE)))[None]
    box, kwargs, eps = ((2, 8), (30, 30)), dict(strength=0.6, **COMMON, **TRUE_CFG), 1e-2
    expected = pipe(PROMPT, image=x, generator=seeded(0), output_type="np", **kwargs).images[0]
    out = QwenImageImg2ImgPipelineExplainer(pipe, verbose=False)(
        PROMPT, image=x, generator=seeded(0), explanation_2d_bounding_box=box, output_type="np", **kwargs
    )
    np.testing.assert_array_equal(out.image, expected)
    grad = out.pixel_gradients

    def box_sum(image):
        images = pipe(PROMPT, image=image, generator=seeded(0), output_type="pt", **kwargs).images
        return float(images[..., 8:30, 2:30].sum())

    flat = grad.abs().flatten()
    for index in [*flat.topk(2).indices.tolist(), int(torch.randint(flat.numel(), (1,), generator=seeded(1)))]:
        c, y, xx = np.unravel_index(index, grad.shape)
        up, down = x.clone(), x.clone()
        up[0, c, y, xx] += eps
        down[0, c, y, xx] -= eps
        fd = (box_sum(up) - box_sum(down)) / (2 * eps)
        assert float(grad[c, y, xx]) == pytest.approx(fd, rel=1e-3, abs=1e-3 * float(flat.max())), (c, y, xx)
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
