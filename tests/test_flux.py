"""Flux through the family seam: identity with the pipelines, gradients through T5 and CLIP, joint-attention maps."""

import html
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from explicit_attention import ExplicitJointAttention
from PIL import Image

from diffusers_interpret import FluxImg2ImgPipelineExplainer, FluxPipelineExplainer, explainer_for
from diffusers_interpret.methods import ConceptAttention
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline

PROMPT = "a cute corgi on the left"
SIZE, STEPS = 16, 3
COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, max_sequence_length=TINY_T5_LENGTH)


@pytest.fixture(scope="module")
def flux():
    return make_tiny_flux_pipeline("text2img")


@pytest.fixture(scope="module")
def flux64():
    return make_tiny_flux_pipeline("text2img", dtype=torch.float64)


@pytest.fixture(scope="module")
def flux_dev():
    return make_tiny_flux_pipeline("text2img", guidance_embeds=True)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    explainer = explainer_for(pipe, verbose=False)
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer(prompt, generator=seeded(seed), **COMMON, **kwargs)


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    (x0, y0), (x1, y1) = box
    return images[0, :, y0:y1, x0:x1].sum()


@pytest.mark.parametrize("method", ["grad_x_input", "attention", "word_attention", "concept_attention"])
def test_image_is_the_pipelines_image(flux, flux_dev, method):
    for pipe, extra in ((flux, {}), (flux_dev, {"guidance_scale": 3.5})):
        expected = pipe(PROMPT, generator=seeded(1), output_type="np", **COMMON, **extra).images[0]
        out = explain(pipe, seed=1, attribution_method=method, output_type="np", **extra)
        np.testing.assert_array_equal(out.image, expected)
    true_cfg = dict(negative_prompt="a dog", true_cfg_scale=2.0)
    expected = flux(PROMPT, generator=seeded(2), output_type="np", **COMMON, **true_cfg).images[0]
    out = explain(flux, seed=2, attribution_method=method, output_type="np", **true_cfg)
    np.testing.assert_array_equal(out.image, expected)


def test_img2img_image_is_the_pipelines():
    pipe = make_tiny_flux_pipeline("img2img")
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    args = dict(image=init, strength=0.5, **COMMON)  # 0.7 of 3 steps would start from pure noise (sigma 1)
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **args).images[0]
    explainer = FluxImg2ImgPipelineExplainer(pipe, verbose=False)
    out = explainer(PROMPT, generator=seeded(0), output_type="np", attribution_method="grad_x_input", **args)
    np.testing.assert_array_equal(out.image, expected)
    assert out.pixel_attributions is not None and out.pixel_attributions.shape[-2:] == (SIZE, SIZE)
    assert np.abs(out.pixel_attributions).sum() > 0


def reference_token_gradients(pipe, prompt, box, **call):
    # An independent autograd computation: each text encoder's token embedding output replaced (for the prompt's
    # own ids only) by a leaf, then the pipeline's own __call__ with grad, and the box sum differentiated.
    leaves = {}

    def hook(name, ids):
        def replace(module, args, output):
            if args[0].shape == ids.shape and torch.equal(args[0], ids):
                leaves[name] = output.detach().clone().requires_grad_(True)
                return leaves[name]
            return output

        return replace

    t5_ids = pipe.tokenizer_2(
        prompt, padding="max_length", max_length=TINY_T5_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    clip_ids = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    handles = [
        pipe.text_encoder_2.encoder.embed_tokens.register_forward_hook(hook("t5", t5_ids)),
        pipe.text_encoder.get_input_embeddings().register_forward_hook(hook("clip", clip_ids)),
    ]
    try:
        with torch.enable_grad():
            images = (
                type(pipe)
                .__call__.__wrapped__(pipe, prompt, generator=seeded(0), output_type="pt", **COMMON, **call)
                .images
            )
            target = box_sum(images, box)
            grads = torch.autograd.grad(target, [leaves["t5"], leaves["clip"]])
    finally:
        for handle in handles:
            handle.remove()
    return target.item(), {"t5": (leaves["t5"].detach(), grads[0]), "clip": (leaves["clip"].detach(), grads[1])}


@pytest.mark.parametrize("true_cfg", [False, True])
def test_token_gradients_equal_an_independent_autograd_and_finite_differences(flux64, true_cfg):
    pipe, box, eps = flux64, ((0, 0), (8, 16)), 1e-3
    call = dict(negative_prompt="a dog", true_cfg_scale=2.0) if true_cfg else {}
    out = explain(pipe, explanation_2d_bounding_box=box, **call)
    _, reference = reference_token_gradients(pipe, PROMPT, box, **call)
    units = out.session.trace.prompt_tokens[0].units
    assert [u.encoders for u in units] == [(0,)] * 7 + [(1,)] * 6  # T5's 7 pieces, then CLIP's 6 tokens
    for row, unit in enumerate(units):
        values, grads = reference["t5" if unit.encoders == (0,) else "clip"]
        np.testing.assert_allclose(
            out.token_gradients[row],
            grads[0, unit.token_index].float(),
            rtol=1e-5,
            atol=1e-7 * float(grads.abs().max()),
        )
        np.testing.assert_allclose(out.token_embeddings[row], values[0, unit.token_index].float(), rtol=1e-6)

    # The directional derivative along the gradient (the flow-matching scheduler steps in float32, so per-token
    # differences along weak directions drown in rounding; along the gradient they do not).
    t5_grad, clip_grad = reference["t5"][1], reference["clip"][1]
    norm = float(torch.sqrt(t5_grad.pow(2).sum() + clip_grad.pow(2).sum()))

    def shifted(sign):
        def shift(direction, ids):
            def add(module, args, output):
                if args[0].shape == ids.shape and torch.equal(args[0], ids):
                    return output + sign * eps * direction / norm
                return output

            return add

        t5_ids = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=TINY_T5_LENGTH, return_tensors="pt")
        clip_ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt")
        handles = [
            pipe.text_encoder_2.encoder.embed_tokens.register_forward_hook(shift(t5_grad, t5_ids.input_ids)),
            pipe.text_encoder.get_input_embeddings().register_forward_hook(shift(clip_grad, clip_ids.input_ids)),
        ]
        try:
            images = pipe(PROMPT, generator=seeded(0), output_type="pt", **COMMON, **call).images
        finally:
            for handle in handles:
                handle.remove()
        return float(box_sum(images, box))

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    ours = float(np.sqrt(np.sum(np.asarray(out.token_gradients, dtype=np.float64) ** 2)))
    assert fd == pytest.approx(norm, rel=1e-3)
    # Every nonzero gradient row is a unit's: the attributed tokens carry the whole gradient but for the end/padding.
    assert ours <= norm * (1 + 1e-6)


def test_encoder_output_gradients_and_the_pooled_share(flux64):
    pipe, box = flux64, ((4, 2), (14, 12))
    out = explain(pipe, explanation_2d_bounding_box=box, attribution_level="text_encoder_output")
    assert len(out.token_attributions) == 7  # T5's pieces only: CLIP enters as the pooled vector
    embeds, pooled, _ = pipe.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=TINY_T5_LENGTH)
    leaf, pooled_leaf = embeds.clone().requires_grad_(True), pooled.clone().requires_grad_(True)
    call = {k: v for k, v in COMMON.items() if k != "max_sequence_length"}
    with torch.enable_grad():
        images = (
            type(pipe)
            .__call__.__wrapped__(
                pipe,
                prompt_embeds=leaf,
                pooled_prompt_embeds=pooled_leaf,
                generator=seeded(0),
                output_type="pt",
                **call,
            )
            .images
        )
        grad_embeds, grad_pooled = torch.autograd.grad(box_sum(images, box), (leaf, pooled_leaf))
    np.testing.assert_allclose(
        out.token_gradients, grad_embeds[0, :7].float(), rtol=1e-5, atol=1e-7 * float(grad_embeds.abs().max())
    )
    a = float((grad_pooled * pooled).pow(2).sum())
    b = float((grad_embeds * embeds).pow(2).sum())
    assert out.pooled_share == pytest.approx(a / (a + b), rel=1e-5)


def test_words_merge_every_tokenizers_pieces(flux):
    out = explain(flux, explanation_2d_bounding_box=((0, 0), (8, 16)))
    labels = [label for label, _ in out.token_attributions]
    # T5 splits "corgi" into two pieces; CLIP keeps it whole.
    assert labels == ["a", "cute", "cor", "gi", "on", "the", "left", "a", "cute", "corgi", "on", "the", "left"]
    scores = dict(enumerate(out.token_attributions.scores))
    words = out.word_attributions
    assert [w for w, _ in words] == PROMPT.split()
    assert words[2][1] == pytest.approx(scores[2] + scores[3] + scores[9], rel=1e-6)
    assert words[0][1] == pytest.approx(scores[0] + scores[7], rel=1e-6)
    per_encoder = out.encoder_token_attributions
    assert [w for w, _ in per_encoder["text_encoder_2"]] == labels[:7]
    assert [w for w, _ in per_encoder["text_encoder"]] == labels[7:]
    # A word no tokenizer knows whole, split into characters by both, and punctuation glued to a word.
    out = explain(flux, prompt="a zebra, left")
    assert [w for w, _ in out.word_attributions] == ["a", "zebra,", "left"]
    assert sum(s for _, s in out.word_attributions) == pytest.approx(sum(out.token_attributions.scores), rel=1e-6)


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "concept_attention"])
def test_prompt_2s_words_are_words_of_their_own_labelled_by_encoder(flux, method, tmp_path):
    # With `prompt_2` the T5 reads another text than CLIP: each text's words are listed once, in the tokens' order
    # (T5's, then CLIP's), labelled by encoder; a word's score merges its own text's tokens only. Before, only
    # `prompt`'s words were listed, and an attention method showed CLIP's (which no map reads) all at zero.
    prompt_2 = "a blue zebra"
    out = explain(flux, prompt_2=prompt_2, attribution_method=method, explanation_2d_bounding_box=((0, 0), (8, 16)))
    words = out.word_attributions
    assert words.tokens == prompt_2.split() + PROMPT.split()
    assert words.encoders == ["T5"] * 3 + ["CLIP"] * len(PROMPT.split())
    tokens, encoders = out.token_attributions, out.token_attributions.encoders
    t5 = [label for label, encoder in zip(tokens.tokens, encoders) if encoder == "T5"]
    assert "".join(t5).replace("▁", "") == prompt_2.replace(" ", "")  # T5 read prompt_2, CLIP the prompt
    merged = [len(group) for group in out.word_tokens]
    assert sum(merged) == len(tokens) and all(merged)
    for index, ((_, score), group) in enumerate(zip(words, out.word_tokens)):
        assert {encoders[i] for i in group} == {words.encoders[index]}
        own = [tokens.scores[i] for i in group]
        expected = max(own) if method == "word_attention" else sum(own)
        assert score == pytest.approx(expected, rel=1e-6, abs=1e-12)
    if method == "word_attention":  # read off maps: CLIP's words have none (its pooled vector), T5's do
        assert np.all(words.scores[3:] == 0) and words.scores[1] > 0
    # Every view names each word's encoder (the card, the plot's axis) and the text T5 read beside the prompt.
    assert out.other_prompts == {"prompt_2": prompt_2}
    labels = [f"{word} ({encoder})" for word, encoder in zip(words.tokens, words.encoders)]
    card = out._repr_html_()
    assert all(html.escape(label) in card for label in labels)
    assert html.escape(f"{PROMPT}; prompt_2: {prompt_2}") in card
    figure = words.plot()
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == labels
    if method == "word_attention":  # the exported maps' words carry their encoder too
        written = out.export_maps(tmp_path)
        settings = json.loads(written["maps.json"].read_text())
        assert [(w["word"], w["encoder"]) for w in settings["words"]] == list(zip(words.tokens, words.encoders))
        assert settings["other_prompts"] == {"prompt_2": prompt_2}
        assert sum(name.startswith("word-") for name in written) == len(words)


@pytest.mark.parametrize("prompt_2", [PROMPT, ""])
def test_a_prompt_2_that_is_the_prompt_lists_the_words_once_unlabelled(flux, prompt_2):
    # The pipeline reads an empty `prompt_2` as `prompt` (`prompt_2 or prompt`): either way both encoders read one
    # text, whose words are listed once, with no encoder label, exactly as without `prompt_2`.
    plain = explain(flux, attribution_method="word_attention")
    out = explain(flux, prompt_2=prompt_2, attribution_method="word_attention")
    assert out.word_attributions.encoders is None and out.other_prompts == {}
    assert out.word_attributions == plain.word_attributions
    assert out.token_attributions == plain.token_attributions


@pytest.mark.parametrize("method", ["word_attention", "attention"])
def test_a_word_read_off_maps_scores_its_most_read_piece_under_each_encoder(flux, method):
    # Two pieces draw attention at two positions without meaning more: T5's "cor" + "gi" score as the larger of the
    # two, and CLIP's "corgi" (the pooled vector: no map, 0) is added; a gradient method sums (above).
    out = explain(flux, attribution_method=method, explanation_2d_bounding_box=((0, 0), (8, 16)))
    scores = out.token_attributions.scores
    assert scores[2] != scores[3] and scores[9] == 0
    words = dict(out.word_attributions)
    assert words["corgi"] == pytest.approx(max(scores[2], scores[3]), rel=1e-6)
    assert words["cute"] == pytest.approx(scores[1] + scores[8], rel=1e-6)


def test_joint_attention_maps_equal_an_independent_computation(flux):
    from diffusers_interpret import record_cross_attention

    out = explain(flux, attribution_method="attention", explanation_2d_bounding_box=((0, 0), (8, 16)))
    maps = out.attention_maps.maps[0]  # (T5 tokens, H, W)
    assert maps.shape == (TINY_T5_LENGTH, SIZE, SIZE)
    assert len(out.attention_maps.layers) == 2  # one double-stream and one single-stream layer
    with record_cross_attention(flux) as recorder:
        flux(PROMPT, generator=seeded(0), output_type="np", **COMMON)
    raw = recorder.maps.maps[0]

    processors = flux.transformer.attn_processors
    store = []
    flux.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        flux(PROMPT, generator=seeded(0), output_type="np", **COMMON)
    finally:
        flux.transformer.set_attn_processor(dict(processors))
    text, grid = TINY_T5_LENGTH, SIZE // 2  # packed 2x2: an 8x8 grid of image tokens
    content = [p for p in out.token_positions if p < text]  # T5's pieces of the prompt (CLIP's rows come after)
    assert 0 < len(content) < text

    def aggregate(per_layer):  # (heads, image queries, text keys) per layer and step -> (text, SIZE, SIZE)
        per_call = [torch.stack(per_layer[i : i + 2]).mean(0) for i in range(0, len(per_layer), 2)]  # layers
        probs = torch.stack(per_call).mean(0)  # steps
        grid_maps = probs.T.reshape(probs.shape[-1], grid, grid)
        return F.interpolate(grid_maps[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]

    image_to_text = [p[0, :, text:, :text] for p in store]
    expected_raw = aggregate([p.mean(0) for p in image_to_text])
    np.testing.assert_allclose(raw, expected_raw, atol=1e-5)
    assert float(raw.sum(0).max()) < 1  # the image keys take their share of each softmax
    # The explainer leaves out the text positions that are not the prompt's tokens: each head's softmax taken again
    # without their keys (the image's keys and the prompt's tokens share it), heads averaged; the share the others
    # took is recorded beside.
    sinks = [p for p in range(text) if p not in content]
    kept = [p[..., content] / (1 - p[..., sinks].sum(-1, keepdim=True)) for p in image_to_text]
    expected = torch.zeros(text, SIZE, SIZE)
    expected[content] = aggregate([k.mean(0) for k in kept])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert float(maps.sum(0).max()) < 1 and float(maps.sum(0).min()) > 0  # the image's keys keep their share
    left_out = [(1 - p[..., content].sum(-1) / p.sum(-1)).mean(0)[..., None] for p in image_to_text]
    np.testing.assert_allclose(out.attention_maps.excluded_share[0], aggregate(left_out)[0], atol=1e-5)
    assert 0.05 < float(out.attention_maps.excluded_share.mean()) < 0.95


def test_every_method_and_reexplanation(flux):
    explainer = FluxPipelineExplainer(flux, verbose=False)
    for method in ("integrated_gradients", "smoothgrad", "ablation", "jacobian_norm", "attention", "word_attention"):
        out = explainer(PROMPT, generator=seeded(0), attribution_method=method, **COMMON)
        assert len(out.token_attributions) == 13 and np.isfinite(out.token_attributions.scores).all(), method
    out = explainer(PROMPT, generator=seeded(0), keep_for_reexplanation="latents", **COMMON)
    fresh = explainer(PROMPT, generator=seeded(0), explanation_2d_bounding_box=((8, 0), (16, 16)), **COMMON)
    again = out.explain(((8, 0), (16, 16)))
    np.testing.assert_allclose(again.token_attributions.scores, fresh.token_attributions.scores, rtol=1e-5)


def test_state_restored_after_an_injected_exception(flux):
    explainer = FluxPipelineExplainer(flux, verbose=True)
    processors = flux.transformer.attn_processors

    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyError("injected")
        return {}

    for method in ("grad_x_input", "word_attention"):
        with pytest.raises(KeyError, match="injected"):
            explainer(PROMPT, callback_on_step_end=boom, attribution_method=method, **COMMON)
        assert torch.is_grad_enabled()
        for module in flux.transformer.modules():
            assert not module._forward_pre_hooks and not module._forward_hooks
        for layer in (flux.text_encoder_2.encoder.embed_tokens, flux.text_encoder.get_input_embeddings()):
            assert not layer._forward_hooks
        assert all(flux.transformer.attn_processors[k] is v for k, v in processors.items())
    expected = flux(PROMPT, generator=seeded(3), output_type="np", **COMMON).images[0]
    np.testing.assert_array_equal(explain(flux, seed=3, output_type="np").image, expected)


def test_gradient_checkpointing_gives_the_same_gradients(flux):
    box = ((0, 0), (8, 16))
    plain = explain(flux, explanation_2d_bounding_box=box)
    explainer = FluxPipelineExplainer(flux, verbose=False, gradient_checkpointing=True)
    checkpointed = explainer(
        PROMPT, generator=seeded(0), attribution_method="grad_x_input", explanation_2d_bounding_box=box, **COMMON
    )
    np.testing.assert_array_equal(np.asarray(checkpointed.image), np.asarray(plain.image))
    np.testing.assert_allclose(checkpointed.token_gradients, plain.token_gradients, rtol=1e-4, atol=1e-7)


def test_the_family_default_method(flux):
    # Chosen again on the retrained toy Flux by benchmarks/faithfulness.py: the package's default, as for SD.
    out = FluxPipelineExplainer(flux, verbose=False)(PROMPT, generator=seeded(0), **COMMON)
    assert out.attribution_method == "word_attention"


def reference_concept_maps(pipe, concepts, block_inputs, calls, softmax=True):
    from diffusers.models.embeddings import apply_rotary_emb

    # ConceptAttention written out with explicit softmax attention from the blocks' parts, independent of the
    # recorder (which calls the blocks themselves): concept tokens (each word's own T5 states, averaged) carried
    # through the double-stream blocks with the text-stream weights, attending to [concepts, image]; each image token's
    # attention output computed against [prompt text, image]; per block the concept x image dot products.
    transformer = pipe.transformer
    with torch.no_grad():
        rows = []
        for concept in concepts:
            states = pipe.encode_prompt(concept, concept, max_sequence_length=TINY_T5_LENGTH)[0][0]
            own = len(pipe.tokenizer_2(concept).input_ids) - 1  # the word's pieces, without the end token
            rows.append(states[:own].mean(0))
        scores = []
        for call in calls:
            stream = transformer.context_embedder(torch.stack(rows))[None]
            per_block = []
            for block, inputs in zip(transformer.transformer_blocks, block_inputs[call]):
                image, text, temb, rotary = inputs
                attn = block.attn
                norm_image = block.norm1(image, emb=temb)[0]
                norm_text = block.norm1_context(text, emb=temb)[0]
                norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(stream, emb=temb)

                def heads(x, norm=None, count=attn.heads):
                    x = x.unflatten(-1, (count, -1))
                    return norm(x) if norm is not None else x

                iq = heads(attn.to_q(norm_image), attn.norm_q)
                ik = heads(attn.to_k(norm_image), attn.norm_k)
                iv = heads(attn.to_v(norm_image))
                tk = heads(attn.add_k_proj(norm_text), attn.norm_added_k)
                tv = heads(attn.add_v_proj(norm_text))
                cq = heads(attn.add_q_proj(norm_c), attn.norm_added_q)
                ck = heads(attn.add_k_proj(norm_c), attn.norm_added_k)
                cv = heads(attn.add_v_proj(norm_c))
                image_rotary = tuple(part[text.shape[1] :] for part in rotary)
                iq = apply_rotary_emb(iq, image_rotary, sequence_dim=1)
                ik = apply_rotary_emb(ik, image_rotary, sequence_dim=1)
                # Text and concept tokens sit at position ids 0: their rotation is the identity.

                def attend(q, k, v):
                    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
                    return (probs @ v).transpose(1, 2).flatten(2)

                image_out = attend(iq, torch.cat([tk, ik], 1), torch.cat([tv, iv], 1))
                concept_out = attend(cq, torch.cat([ck, ik], 1), torch.cat([cv, iv], 1))
                per_block.append(torch.einsum("bcd,bnd->bcn", concept_out, image_out))
                stream = stream + c_gate_msa[:, None] * attn.to_add_out(concept_out)
                normed = block.norm2_context(stream) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
                stream = stream + c_gate_mlp[:, None] * block.ff_context(normed)
            scores.append(torch.stack(per_block).mean(0))
        grid = SIZE // 2
        mean = torch.stack(scores).mean(0)
        probs = mean.softmax(dim=1) if softmax else mean - mean.min()
        probs = probs.reshape(1, len(concepts), grid, grid)
        return F.interpolate(probs, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]


def test_concept_attention_equals_an_independent_computation():
    pipe = make_tiny_flux_pipeline("text2img", dtype=torch.float64, num_layers=2)
    inputs, hooks = [], []

    def capture(module, args, kwargs):
        if module is pipe.transformer.transformer_blocks[0]:
            inputs.append([])
        inputs[-1].append(
            (kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["temb"], kwargs["image_rotary_emb"])
        )

    for block in pipe.transformer.transformer_blocks:
        hooks.append(block.register_forward_pre_hook(capture, with_kwargs=True))
    try:
        expected_image = pipe(PROMPT, generator=seeded(0), output_type="np", **COMMON).images[0]
    finally:
        for hook in hooks:
            hook.remove()
    method = ConceptAttention(concepts=["sky"])
    out = explain(
        pipe, attribution_method=method, output_type="np", n_last_diffusion_steps_to_consider_for_attributions=2
    )
    np.testing.assert_array_equal(out.image, expected_image)
    concepts = ["a", "cute", "corgi", "on", "the", "left", "sky"]
    assert list(out.extras["concept_maps"]) == concepts
    expected = reference_concept_maps(pipe, concepts, inputs, calls=[STEPS - 2, STEPS - 1])
    recorded = np.stack([out.extras["concept_maps"][c] for c in concepts])
    np.testing.assert_allclose(recorded, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(recorded.sum(0), 1.0, atol=1e-6)  # a softmax across concepts at each pixel
    # Without the softmax: each concept's own dot products, less their least value.
    raw = explain(
        pipe,
        attribution_method=ConceptAttention(concepts=["sky"], softmax=False),
        n_last_diffusion_steps_to_consider_for_attributions=2,
    )
    expected = reference_concept_maps(pipe, concepts, inputs, calls=[STEPS - 2, STEPS - 1], softmax=False)
    recorded = np.stack([raw.extras["concept_maps"][c] for c in concepts])
    np.testing.assert_allclose(recorded, expected.numpy(), atol=1e-6 * float(expected.abs().max()))
    assert not np.allclose(recorded.sum(0), 1.0, atol=1e-3)


def test_concept_attention_scores_words_and_reexplains_from_its_maps(flux):
    explainer = FluxPipelineExplainer(flux, verbose=False)
    box = ((0, 0), (8, 16))
    out = explainer(PROMPT, generator=seeded(0), attribution_method="concept_attention", **COMMON)
    words = dict(out.word_attributions)
    assert list(words) == ["a", "cute", "corgi", "on", "the", "left"]
    # Whole image: each word's score is its map's spatial standard deviation, shared among its tokens.
    for word, score in words.items():
        assert score == pytest.approx(float(np.std(out.extras["concept_maps"][word], ddof=1)), rel=1e-5)
    again = out.explain(box)
    fresh = explainer(
        PROMPT, generator=seeded(0), attribution_method="concept_attention", explanation_2d_bounding_box=box, **COMMON
    )
    np.testing.assert_allclose(again.token_attributions.scores, fresh.token_attributions.scores, rtol=1e-6)
    assert dict(fresh.word_attributions) == pytest.approx(fresh.extras["concept_scores"])


def test_traced_steps_are_steps_with_true_cfg(flux):
    # With true CFG each step makes two transformer calls (prompt, then negative prompt): one traced step traces both.
    true_cfg = dict(negative_prompt="a dog", true_cfg_scale=2.0, n_last_diffusion_steps_to_consider_for_attributions=1)
    for method in ("grad_x_input", "attention", "concept_attention"):
        out = explain(flux, attribution_method=method, **true_cfg)
        assert out.token_attributions is not None and np.isfinite(out.token_attributions.scores).all(), method
    assert out.extras["traced_denoiser_calls"] == 1  # the step's one prompt call is recorded
    out = explain(flux, **true_cfg)
    assert out.extras["traced_denoiser_calls"] == 2


def test_sink_columns_added_or_removed_leave_the_prompt_tokens_maps_unchanged(flux):
    # One joint-attention layer on the same image tokens and the same prompt-token states, with 3 or 40 padding
    # states after them (Flux's text ids are all zeros, so the padding's length moves no rotary position): the
    # maps of the prompt's tokens (the sinks' keys out of each softmax) are the same; the share left out grows with
    # the padding.
    from diffusers_interpret.tracing.attention import joint_attention_probabilities

    torch.manual_seed(0)
    transformer = flux.transformer
    attn = transformer.transformer_blocks[0].attn
    width = attn.to_q.in_features
    image, prompt, pad = torch.randn(1, 16, width), torch.randn(1, 5, width), torch.randn(1, 1, width)
    image_ids = torch.zeros(16, 3)
    image_ids[:, 1], image_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    results = []
    for pads in (3, 40):
        text = torch.cat([prompt, pad.expand(1, pads, width)], dim=1)
        rotary = transformer.pos_embed(torch.cat([torch.zeros(text.shape[1], 3), image_ids]))
        content = torch.zeros(1, text.shape[1], dtype=torch.bool)
        content[0, :5] = True
        kept, left_out = joint_attention_probabilities(attn, image, text, rotary, text.shape[1], content=content)
        raw, none = joint_attention_probabilities(attn, image, text, rotary, text.shape[1])
        assert none is None and torch.all(kept[..., 5:] == 0)
        assert torch.all((kept.sum(-1) > 0) & (kept.sum(-1) < 1))  # the image's keys keep their share
        assert torch.all((left_out > 0) & (left_out < 1))
        results.append((kept[..., :5], raw[..., :5], left_out))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    assert not torch.allclose(results[0][1], results[1][1], atol=1e-3)  # the raw maps do change
    assert float(results[1][2].mean()) > float(results[0][2].mean())


def test_each_image_of_a_batch_leaves_out_its_own_prompts_padding(flux):
    # Two prompts of different lengths, two images each, true classifier-free guidance (a separate negative call):
    # every image's maps are of its own prompt's tokens (at each pixel, the share of its attention they take beside
    # the image's keys), zero at every other position.
    explainer = FluxPipelineExplainer(flux, verbose=False)
    outputs = explainer(
        ["a cute corgi on the left", "a dog"],
        generator=seeded(0),
        attribution_method="attention",
        num_images_per_prompt=2,
        negative_prompt=["blurry", "dark"],  # one per prompt (diffusers' Flux fails on a single one for two)
        true_cfg_scale=2.0,
        **COMMON,
    )
    assert [len(o.word_attributions) for o in outputs] == [6, 6, 2, 2]
    for index, output in enumerate(outputs):
        maps = output.attention_maps.maps[index]
        content = [p for p in output.token_positions if p < TINY_T5_LENGTH]
        others = [p for p in range(TINY_T5_LENGTH) if p not in content]
        assert float(maps[content].sum(0).min()) > 0 and float(maps[content].sum(0).max()) < 1
        assert float(maps[others].abs().max()) == 0
        assert 0 < output.attention_sink_share < 1


def test_record_cross_attention_leaves_out_true_cfg_negative_calls():
    # `record_cross_attention(pipe)` never sees the call's arguments: with true CFG it must still record the
    # prompt's calls only (one per step), as a recorder told the calls per step does.
    from diffusers_interpret.attention import record_cross_attention
    from diffusers_interpret.families import family_for
    from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
    from diffusers_interpret.tracing.attention import make_recorder
    from diffusers_interpret.tracing.steps import StepCounter

    pipe = make_tiny_flux_pipeline()
    call = dict(
        negative_prompt="a blurry photo", true_cfg_scale=2.0, num_inference_steps=3, height=16, width=16,
        max_sequence_length=TINY_T5_LENGTH,
    )  # fmt: skip
    with record_cross_attention(pipe, keep_per_step=True) as recorder:
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **call)
    family = family_for(pipe)
    counter = StepCounter(pipe, family.denoiser(pipe), calls_per_step=2)
    with counter, make_recorder(pipe, family, keep_per_step=True, counter=counter) as told:
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **call)
    assert recorder.maps.steps == [0, 2, 4] == told.maps.steps
    torch.testing.assert_close(recorder.maps.maps, told.maps.maps)
