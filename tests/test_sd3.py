"""SD3 through the family seam: identity, gradients through CLIP-L, CLIP-G and T5, joint-attention maps, words."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from PIL import Image

from diffusers_interpret import StableDiffusion3Img2ImgPipelineExplainer, explainer_for
from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 16, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, max_sequence_length=TINY_SD3_T5_LENGTH)


@pytest.fixture(scope="module")
def sd3():
    return make_tiny_sd3_pipeline("text2img")


@pytest.fixture(scope="module")
def sd3_64():
    return make_tiny_sd3_pipeline("text2img", dtype=torch.float64)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **COMMON, **kwargs)


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    (x0, y0), (x1, y1) = box
    return images[0, :, y0:y1, x0:x1].sum()


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "concept_attention"])
def test_image_is_the_pipelines_image(sd3, method):
    expected = sd3(PROMPT, generator=seeded(1), output_type="np", **COMMON).images[0]
    np.testing.assert_array_equal(explain(sd3, seed=1, attribution_method=method, output_type="np").image, expected)
    pipe = make_tiny_sd3_pipeline("img2img")
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    args = dict(image=init, strength=0.5, **COMMON)
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **args).images[0]
    explainer = StableDiffusion3Img2ImgPipelineExplainer(pipe, verbose=False)
    out = explainer(PROMPT, generator=seeded(0), output_type="np", attribution_method=method, **args)
    np.testing.assert_array_equal(out.image, expected)


def test_token_gradients_equal_an_independent_autograd(sd3_64):
    pipe, box = sd3_64, ((0, 0), (8, 16))
    out = explain(pipe, explanation_2d_bounding_box=box)
    units = out.session.trace.prompt_tokens[0].units
    # CLIP-L and CLIP-G tokenize alike: one unit each over both; then T5's pieces ("corgi" in two).
    assert [u.encoders for u in units] == [(0, 1)] * 6 + [(2,)] * 7
    assert out.token_gradients.shape[-1] == 64

    leaves = {}
    encoders = {
        "clip_l": (pipe.text_encoder.get_input_embeddings(), pipe.tokenizer, 77),
        "clip_g": (pipe.text_encoder_2.get_input_embeddings(), pipe.tokenizer_2, 77),
        "t5": (pipe.text_encoder_3.encoder.embed_tokens, pipe.tokenizer_3, TINY_SD3_T5_LENGTH),
    }
    handles = []
    for name, (layer, tokenizer, length) in encoders.items():
        ids = tokenizer(
            PROMPT, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids

        def replace(module, args, output, name=name, ids=ids):
            if args[0].shape == ids.shape and torch.equal(args[0], ids):
                leaves[name] = output.detach().clone().requires_grad_(True)
                return leaves[name]
            return output

        handles.append(layer.register_forward_hook(replace))
    try:
        with torch.enable_grad():
            images = (
                type(pipe).__call__.__wrapped__(pipe, PROMPT, generator=seeded(0), output_type="pt", **COMMON).images
            )
            grads = dict(zip(leaves, torch.autograd.grad(box_sum(images, box), list(leaves.values()))))
    finally:
        for handle in handles:
            handle.remove()
    scale = float(max(g.abs().max() for g in grads.values()))  # the scheduler steps in float32
    for row, unit in enumerate(units):
        if unit.encoders == (0, 1):
            expected = torch.cat([grads["clip_l"][0, unit.token_index], grads["clip_g"][0, unit.token_index]])
        else:
            expected = grads["t5"][0, unit.token_index]
        np.testing.assert_allclose(out.token_gradients[row], expected.float(), rtol=1e-5, atol=1e-7 * scale)
    per_encoder = out.encoder_token_attributions
    assert set(per_encoder) == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    clip_l = per_encoder["text_encoder"].scores
    clip_g = per_encoder["text_encoder_2"].scores
    np.testing.assert_allclose(np.sqrt(clip_l**2 + clip_g**2), out.token_attributions.scores[:6], rtol=1e-5)


def test_encoder_output_gradients_and_the_pooled_share(sd3_64):
    pipe, box = sd3_64, ((4, 2), (14, 12))
    out = explain(pipe, explanation_2d_bounding_box=box, attribution_level="text_encoder_output")
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPT, None, None, max_sequence_length=TINY_SD3_T5_LENGTH
    )
    leaf, pooled_leaf = embeds.clone().requires_grad_(True), pooled.clone().requires_grad_(True)
    call = {k: v for k, v in COMMON.items() if k != "max_sequence_length"}
    with torch.enable_grad():
        images = (
            type(pipe)
            .__call__.__wrapped__(
                pipe,
                prompt_embeds=leaf,
                pooled_prompt_embeds=pooled_leaf,
                negative_prompt_embeds=negative,
                negative_pooled_prompt_embeds=negative_pooled,
                generator=seeded(0),
                output_type="pt",
                **call,
            )
            .images
        )
        grad_embeds, grad_pooled = torch.autograd.grad(box_sum(images, box), (leaf, pooled_leaf))
    positions = out.session.trace.prompt_tokens[0].positions
    assert positions == list(range(1, 7)) + list(range(77, 84))  # CLIP rows, then T5's after the 77 CLIP rows
    np.testing.assert_allclose(
        out.token_gradients, grad_embeds[0, positions].float(), rtol=1e-5, atol=1e-7 * float(grad_embeds.abs().max())
    )
    a = float((grad_pooled * pooled).pow(2).sum())
    b = float((grad_embeds * embeds).pow(2).sum())
    assert out.pooled_share == pytest.approx(a / (a + b), rel=1e-5)


def test_words_merge_clip_and_t5(sd3):
    out = explain(sd3)
    scores = out.token_attributions.scores
    words = dict(out.word_attributions)
    assert list(words) == PROMPT.split()
    assert words["corgi"] == pytest.approx(scores[2] + scores[8] + scores[9], rel=1e-6)  # CLIP's corgi, T5's cor+gi


def test_each_texts_words_once_labelled_by_the_encoders_that_read_it(sd3):
    # CLIP-G reads `prompt_2`, T5 `prompt_3` (or `prompt` where not given): every text's words are listed, each once,
    # labelled by the encoders that read that text, and a word's score merges that text's tokens only.
    for extra, expected in (
        (dict(prompt_2="a blue star"), [("CLIP-L+T5", PROMPT), ("CLIP-G", "a blue star")]),
        (
            dict(prompt_2="a blue star", prompt_3="green hat"),
            [("CLIP-L", PROMPT), ("CLIP-G", "a blue star"), ("T5", "green hat")],
        ),
    ):
        out = explain(sd3, **extra)
        words = out.word_attributions
        assert words.tokens == [w for _, text in expected for w in text.split()]
        assert words.encoders == [label for label, text in expected for _ in text.split()]
        tokens = out.token_attributions
        for index, group in enumerate(out.word_tokens):
            assert group and set(words.encoders[index].split("+")) == {tokens.encoders[i] for i in group}
            assert words.scores[index] == pytest.approx(sum(tokens.scores[i] for i in group), rel=1e-6)
        assert sorted(i for group in out.word_tokens for i in group) == list(range(len(tokens)))


@pytest.mark.parametrize("method", ["word_attention", "attention"])
def test_a_word_read_off_maps_sums_each_encoders_most_read_piece(sd3, method):
    # Both encoders' tokens are in the joint attention's maps: "corgi" is CLIP's one token plus the larger of T5's
    # "cor" and "gi" (not the three summed, nor the largest of the three).
    out = explain(sd3, attribution_method=method, explanation_2d_bounding_box=((0, 0), (8, 16)))
    scores = out.token_attributions.scores
    assert scores[2] > 0 and scores[8] != scores[9]
    words = dict(out.word_attributions)
    assert words["corgi"] == pytest.approx(scores[2] + max(scores[8], scores[9]), rel=1e-6)


class ExplicitJointAttention:
    r"""An independent SD3 joint-attention processor: JointAttnProcessor2_0's math with an explicit softmax, whose
    probabilities (every head) it keeps."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, heads = hidden_states.shape[0], attn.heads

        def split(x, norm):
            x = x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)
            return x if norm is None else norm(x)

        q, k = split(attn.to_q(hidden_states), attn.norm_q), split(attn.to_k(hidden_states), attn.norm_k)
        v = split(attn.to_v(hidden_states), None)
        eq = split(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)
        ek = split(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)
        ev = split(attn.add_v_proj(encoder_hidden_states), None)
        q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
        self.store.append(torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, -1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, q.shape[1] * q.shape[-1])
        image, text = out[:, : hidden_states.shape[1]], out[:, hidden_states.shape[1] :]
        image = attn.to_out[1](attn.to_out[0](image))
        return (image, text) if attn.context_pre_only else (image, attn.to_add_out(text))


def test_joint_attention_maps_equal_an_independent_computation(sd3):
    out = explain(sd3, attribution_method="attention")
    text = 77 + TINY_SD3_T5_LENGTH
    maps = out.attention_maps.maps[0]
    assert maps.shape == (text, SIZE, SIZE)
    processors = sd3.transformer.attn_processors
    store = []
    sd3.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        sd3(PROMPT, generator=seeded(0), output_type="np", **COMMON)
    finally:
        sd3.transformer.set_attn_processor(dict(processors))
    grid = SIZE // 2  # 16x16 latents in 2x2 patches
    layers = len(out.attention_maps.layers)
    # The prompt's own tokens: CLIP's (rows 0-76, CLIP-L and CLIP-G side by side) and T5's (after them). The start,
    # end and padding positions are attention sinks, left out: each head's softmax is taken again without their keys
    # (the image's keys and the prompt's tokens share it) before the heads, layers and steps are averaged.
    content = out.token_positions
    assert any(p < 77 for p in content) and any(p >= 77 for p in content) and len(content) < text
    image_to_text = [p[1, :, : grid * grid, grid * grid :] for p in store]  # the positive row (CFG)
    sinks = [p for p in range(text) if p not in content]
    kept = [(p[..., content] / (1 - p[..., sinks].sum(-1, keepdim=True))).mean(0) for p in image_to_text]
    per_call = [torch.stack(kept[i : i + layers]).mean(0) for i in range(0, len(kept), layers)]
    probs = torch.stack(per_call).mean(0)
    expected = torch.zeros(text, SIZE, SIZE)
    up = F.interpolate(probs.T.reshape(len(content), grid, grid)[None], size=(SIZE, SIZE), mode="bilinear")[0]
    expected[content] = up
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_skip_layer_guidance_is_refused_with_a_clear_error(sd3):
    with pytest.raises(ValueError, match="skip_guidance_layers"):
        explain(sd3, skip_guidance_layers=[0])


def test_concept_attention_through_the_text_stream_blocks(sd3):
    transformer = sd3.transformer
    family = explainer_for(sd3).family
    blocks = [block for _, block in family.concept_blocks(transformer)]
    # The last block only reads the text stream (`context_pre_only`): no text output to compare or carry on.
    assert blocks == [b for b in transformer.transformer_blocks if not b.context_pre_only] and blocks
    out = explain(sd3, attribution_method="concept_attention", explanation_2d_bounding_box=((0, 0), (8, 16)))
    maps = np.stack(list(out.extras["concept_maps"].values()))
    assert list(out.extras["concept_maps"]) == ["a", "cute", "corgi", "on", "the", "left"]
    np.testing.assert_allclose(maps.sum(0), 1.0, atol=1e-5)
    # The box score of each word: what the box reads of the word's map times the map's share inside the box.
    for word, score in out.word_attributions:
        m = out.extras["concept_maps"][word].astype(np.float64)
        inside = m[0:16, 0:8]
        assert score == pytest.approx(inside.mean() * inside.sum() / m.sum(), rel=1e-4)
