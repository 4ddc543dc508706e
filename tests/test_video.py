"""The video families through the seam: the clip as a picture of its frames, space-time boxes, per-frame maps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from independent_concepts import hunyuan_concept_probabilities
from independent_gradients import central_difference, leaf_gradient
from PIL import Image
from pipeline_state import pipeline_state
from shared_checks import (
    assert_refused_before_any_model_runs,
    assert_state_restored_after_an_injected_exception,
    every_row_mixing,
    layer_calls,
)

from diffusers_interpret import (
    CogVideoXPipelineExplainer,
    HunyuanVideoPipelineExplainer,
    WanPipelineExplainer,
    explainer_for,
)
from diffusers_interpret.box import frame_region
from diffusers_interpret.testing.cogvideox import TINY_COGVIDEOX_CALL, make_tiny_cogvideox_pipeline
from diffusers_interpret.testing.hunyuan_video import (
    TINY_HUNYUAN_TEMPLATE,
    TINY_HUNYUAN_VIDEO_CALL,
    make_tiny_hunyuan_video_pipeline,
)
from diffusers_interpret.testing.wan import TINY_WAN_CALL, make_tiny_wan_pipeline

PROMPT = "a red ball rolls to the left"
FRAMES, SIZE = TINY_WAN_CALL["num_frames"], TINY_WAN_CALL["height"]
assert TINY_COGVIDEOX_CALL == TINY_WAN_CALL  # one clip size for both families' checks
COMMON = dict(num_inference_steps=3, negative_prompt="", **TINY_WAN_CALL)
MAKERS = {
    "wan": make_tiny_wan_pipeline,
    "cogvideox": make_tiny_cogvideox_pipeline,  # 5B's rotary embedding
    "cogvideox_2b": lambda **options: make_tiny_cogvideox_pipeline(rotary=False, **options),  # 2B's fixed one
    "hunyuan_video": make_tiny_hunyuan_video_pipeline,
}
EXPLAINERS = {
    "wan": WanPipelineExplainer,
    "cogvideox": CogVideoXPipelineExplainer,
    "hunyuan": HunyuanVideoPipelineExplainer,
}
FAMILIES = list(MAKERS)
_PIPES = {}


def tiny(family, dtype=torch.float32):
    if (family, dtype) not in _PIPES:
        _PIPES[family, dtype] = MAKERS[family](dtype=None if dtype is torch.float32 else dtype)
    return _PIPES[family, dtype]


@pytest.fixture(scope="module", params=FAMILIES)
def video(request):
    return request.param, tiny(request.param)


@pytest.fixture(scope="module")
def wan():
    return tiny("wan")


def common(pipe) -> dict:
    # HunyuanVideo's tiny pipelines take their prompt template (a guidance-distilled model: the negative prompt is
    # read only with true_cfg_scale > 1).
    if type(pipe).__name__ == "HunyuanVideoPipeline":
        return dict(COMMON, prompt_template=TINY_HUNYUAN_VIDEO_CALL["prompt_template"])
    return COMMON


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**common(pipe), **kwargs})


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "attention", "ablation"])
def test_the_clip_is_the_pipelines_clip(video, method):
    # Guidance 5 (Wan: two transformer calls a step, the prompt's first; CogVideoX: [negative, prompt] rows in one)
    # and 1 (one call, one row).
    family, pipe = video
    for seed, guidance in ((1, 5.0), (2, 1.0)):
        expected = pipe(PROMPT, generator=seeded(seed), output_type="np", guidance_scale=guidance, **common(pipe))
        expected = expected.frames[0]
        out = explain(pipe, seed=seed, attribution_method=method, output_type="np", guidance_scale=guidance)
        assert out.image.shape == (FRAMES * SIZE, SIZE, 3) and len(out.frames) == FRAMES
        np.testing.assert_array_equal(np.stack(out.frames), expected)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 1e-3 * np.abs(scores).sum(), method
        assert [word for word, _ in out.word_attributions] == PROMPT.split()
    assert isinstance(explainer_for(pipe), EXPLAINERS[family.split("_")[0]])
    assert out.stats.denoiser_calls == 3  # guidance 1: one call a step


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_token_gradients_of_a_space_time_region_equal_an_independent_autograd_and_finite_differences(family):
    # The left half of frames 1 to 4 (the frames of the second latent frame): T5's (HunyuanVideo: Llama's) token
    # embedding output replaced by a leaf, the pipeline's own __call__ with grad, the region's pixel sum
    # differentiated; then the directional derivative along that gradient by central differences (the flow-matching
    # schedulers step in float32: rel 1e-3).
    # HunyuanVideo keeps its latents in float32 between the steps: measured, its difference is 0.6159 / 0.5972 /
    # 0.59917 at eps 1e-4 / 1e-3 / 1e-2 against a gradient norm of 0.59915 (rounding, not curvature, below 1e-2).
    pipe, eps = tiny(family, torch.float64), 1e-2 if family == "hunyuan_video" else 1e-3
    out = explain(pipe, explanation_2d_bounding_box=((0, 0), (8, SIZE)), explanation_frames=(1, 5), guidance_scale=5.0)
    region = out.explained_region
    assert region == ((0, SIZE), (8, 5 * SIZE))  # whole-height boxes on consecutive frames: one box of the picture
    assert out.stats.memory_estimate.per_call > 0  # the guard estimated the 3-D latents' traced calls
    text, length = PROMPT, COMMON["max_sequence_length"]
    if family == "hunyuan_video":  # Llama reads the prompt in the template, `crop_start` more positions
        text, length = TINY_HUNYUAN_TEMPLATE["template"].format(PROMPT), length + TINY_HUNYUAN_TEMPLATE["crop_start"]
        embed = pipe.text_encoder.embed_tokens
    else:
        embed = pipe.text_encoder.encoder.embed_tokens  # T5's stack calls its own module (tied to `shared`)
    ids = pipe.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    call = dict(prompt=PROMPT, guidance_scale=5.0, **common(pipe))
    grad = leaf_gradient(pipe, embed, ids, region, **call)
    units = out.session.trace.prompt_tokens[0].units
    for row, unit in enumerate(units):
        if unit.encoders != (0,):  # HunyuanVideo's CLIP tokens (the pooled vector) have another leaf
            continue
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    assert central_difference(pipe, embed, ids, grad, eps, region, **call) == pytest.approx(
        float(grad.norm()), rel=1e-3
    )


def test_a_box_over_a_span_of_frames_is_that_box_on_each_frame(video):
    # Another region re-explained from the kept graph equals a fresh call with it; the region's gradient is the sum of
    # its frames' (gradients are additive over pixels).
    _, pipe = video
    box = ((4, 4), (12, 12))
    out = explain(pipe, explanation_2d_bounding_box=box, explanation_frames=(2, 5), keep_for_reexplanation="graph")
    assert out.explained_region == tuple(((4, 4 + k * SIZE), (12, 12 + k * SIZE)) for k in (2, 3, 4))
    assert out.explanation_2d_bounding_box == box and out.explanation_frames == (2, 5)
    same = out.explain(box, explanation_frames=(2, 5))  # the region of three boxes again, from the kept graph
    np.testing.assert_allclose(same.token_gradients, out.token_gradients, rtol=1e-5, atol=1e-9)
    fresh = explain(pipe, explanation_2d_bounding_box=box, explanation_frames=(3, 4))
    again = out.explain(box, explanation_frames=(3, 4))
    np.testing.assert_allclose(again.token_gradients, fresh.token_gradients, rtol=1e-5, atol=1e-9)
    assert again.explanation_frames == (3, 4) and again.explained_region == ((4, 4 + 3 * SIZE), (12, 12 + 3 * SIZE))
    per_frame = torch.stack([out.explain(box, explanation_frames=(k, k + 1)).token_gradients for k in (2, 3, 4)]).sum(
        0
    )
    scale = float(torch.as_tensor(out.token_gradients).abs().max())
    np.testing.assert_allclose(out.token_gradients, per_frame, rtol=1e-4, atol=1e-5 * scale)
    # The picture shows the box on the explained frames only.
    drawn = (np.asarray(out.image) == (255, 0, 0)).all(-1)
    frames_drawn = [bool(drawn[k * SIZE : (k + 1) * SIZE].any()) for k in range(FRAMES)]
    assert frames_drawn == [k in (2, 3, 4) for k in range(FRAMES)]


def test_wans_per_frame_word_maps_equal_an_independent_computation(wan):
    # Each block's cross-attention from its own projections (queries and keys normed over all heads, as the processor
    # norms them), a softmax over the prompt's own tokens (the zero padding is an attention sink, left out), heads,
    # layers and the prompt's calls averaged (with guidance the pipeline calls the prompt first, then the negative);
    # each latent frame upsampled to a frame and shown on the frames the VAE makes of it (1, then 4 each).
    out = explain(wan, attribution_method="attention", guidance_scale=5.0)
    tokens = out.session.trace.prompt_tokens[0]
    positions = list(tokens.positions)
    layers = [block.attn2 for block in wan.transformer.blocks]
    captured = layer_calls(layers, lambda: wan(PROMPT, generator=seeded(0), guidance_scale=5.0, **COMMON))
    layers = len(wan.transformer.blocks)
    prompt_calls = [captured[i : i + layers] for i in range(0, len(captured), 2 * layers)]
    per_call = []
    for calls in prompt_calls:
        per_layer = []
        for attn, args, _ in calls:
            hidden, text = args[0], args[1]
            heads = attn.heads
            q = attn.norm_q(attn.to_q(hidden)).unflatten(-1, (heads, -1)).transpose(1, 2)
            k = attn.norm_k(attn.to_k(text)).unflatten(-1, (heads, -1)).transpose(1, 2)
            scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
            per_layer.append(scores[..., positions].softmax(-1).mean(1)[0])  # (image tokens, prompt tokens)
        per_call.append(torch.stack(per_layer).mean(0))
    probs = torch.stack(per_call).mean(0)
    latent_frames = (FRAMES - 1) // 4 + 1
    grid = probs.T.reshape(len(positions), latent_frames, SIZE // 16, SIZE // 16)
    frames = [
        F.interpolate(grid[:, f][None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        for f in range(latent_frames)
    ]
    expected = torch.stack([frames[(t + 3) // 4] for t in range(FRAMES)], dim=1)  # (tokens, frames, H, W)
    maps = out.frame_maps(out.attention_maps.maps[0][positions])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert 0 < out.attention_sink_share < 1


def test_cogvideox_per_frame_word_maps_equal_an_independent_computation():
    # Each block's joint attention over [text, video] from its own projections (one set for both, each head's query
    # and key layer-normed, the video's rotated by the layer's rotary embedding), the video's queries' softmax over the
    # video's keys and the prompt's own tokens (the padding is left out of it as a sink), heads and layers averaged
    # over the prompt's rows of the guided batch; 8 frames are 2 latent frames decoded as one batch of the VAE: 4
    # frames each.
    from diffusers.models.embeddings import apply_rotary_emb

    pipe = tiny("cogvideox")
    call = dict(COMMON, num_frames=8, guidance_scale=6.0)
    out = explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(0), attribution_method="attention", **call)
    assert out.num_frames == 8 and len(out.frames) == 8
    positions = list(out.session.trace.prompt_tokens[0].positions)
    layers = [block.attn1 for block in pipe.transformer.transformer_blocks]
    captured = layer_calls(layers, lambda: pipe(PROMPT, generator=seeded(0), **call))
    per_call = []
    for attn, _, kwargs in captured:
        text, video, rotary = (
            kwargs["encoder_hidden_states"][1:],
            kwargs["hidden_states"][1:],
            kwargs["image_rotary_emb"],
        )
        joined = torch.cat([text, video], dim=1)
        heads = attn.heads
        q = attn.norm_q(attn.to_q(joined).unflatten(-1, (heads, -1)).transpose(1, 2))
        k = attn.norm_k(attn.to_k(joined).unflatten(-1, (heads, -1)).transpose(1, 2))
        n = text.shape[1]
        q = torch.cat([q[:, :, :n], apply_rotary_emb(q[:, :, n:], rotary)], dim=2)
        k = torch.cat([k[:, :, :n], apply_rotary_emb(k[:, :, n:], rotary)], dim=2)
        scores = (q[:, :, n:] @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        kept = scores[..., positions + list(range(n, scores.shape[-1]))]  # the prompt's tokens and the video's keys
        per_call.append(kept.softmax(-1)[..., : len(positions)].mean(1)[0])
    probs = torch.stack(per_call).mean(0)
    grid = probs.T.reshape(len(positions), 2, SIZE // 16, SIZE // 16)
    frames = [
        F.interpolate(grid[:, f][None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0] for f in range(2)
    ]
    expected = torch.stack([frames[t // 4] for t in range(8)], dim=1)
    np.testing.assert_allclose(out.frame_maps(out.attention_maps.maps[0][positions]), expected, atol=1e-5)


def test_hunyuan_videos_per_frame_word_maps_and_template_equal_an_independent_computation():
    # The prompt's tokens are attributed, never the template's (the 4 the crop keeps) or the padding. Each dual- and
    # single-stream block's attention over [video, text] from its own projections (the video's queries and keys
    # rotated by the layer's rotary embedding, the padding masked as the transformer masks it), the video's queries'
    # softmax over the video's keys and the prompt's tokens (the sinks' keys left out of it), heads and layers
    # averaged; 9 frames: 1 of the first latent frame, 4 of each other.
    from diffusers.models.embeddings import apply_rotary_emb

    pipe = tiny("hunyuan_video")
    out = explain(pipe, attribution_method="attention")
    tokens = out.session.trace.prompt_tokens[0]
    positions = list(tokens.positions)
    llama = [u for u in tokens.units if u.encoders == (0,)]
    crop = TINY_HUNYUAN_TEMPLATE["crop_start"]
    assert [u.label for u in llama][:2] == ["a", "red"] and llama[0].token_index == 9  # "<bos> the video:" is 9
    assert positions[: len(llama)] == [u.token_index - crop for u in llama]  # rows after the crop
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    captured = layer_calls([b.attn for b in blocks], lambda: pipe(PROMPT, generator=seeded(0), **common(pipe)))
    per_call = []
    content = positions[: len(llama)]
    for attn, _, kwargs in captured:
        video, text, rotary = kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"]
        heads, n = attn.heads, video.shape[1]

        def split(x, norm, heads=heads):
            return norm(x.unflatten(-1, (heads, -1)))

        if attn.add_q_proj is None:  # single-stream: one set of projections over the joined sequence
            joined = torch.cat([video, text], dim=1)
            q, k = split(attn.to_q(joined), attn.norm_q), split(attn.to_k(joined), attn.norm_k)
        else:
            q = torch.cat([split(attn.to_q(video), attn.norm_q), split(attn.add_q_proj(text), attn.norm_added_q)], 1)
            k = torch.cat([split(attn.to_k(video), attn.norm_k), split(attn.add_k_proj(text), attn.norm_added_k)], 1)
        q = torch.cat([apply_rotary_emb(q[:, :n], rotary, sequence_dim=1), q[:, n:]], dim=1)
        k = torch.cat([apply_rotary_emb(k[:, :n], rotary, sequence_dim=1), k[:, n:]], dim=1)
        scores = (q[:, :n].transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / q.shape[-1] ** 0.5
        kept = torch.cat([scores[..., :n], scores[..., n:][..., content]], dim=-1)  # the video's keys, the prompt's
        per_call.append(kept.softmax(-1)[..., n:].mean(1)[0])
    probs = torch.stack(per_call).mean(0)  # one call a step (guidance-distilled): every step recorded
    grid = probs.T.reshape(len(content), 3, SIZE // 8, SIZE // 8)
    frames = [
        F.interpolate(grid[:, f][None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0] for f in range(3)
    ]
    expected = torch.stack([frames[(t + 3) // 4] for t in range(FRAMES)], dim=1)
    np.testing.assert_allclose(out.frame_maps(out.attention_maps.maps[0][content]), expected, atol=1e-5)
    assert 0 < out.attention_sink_share < 1  # the template's kept tokens and the end token took some


def test_hunyuan_videos_concept_attention_through_the_text_stream_equals_an_independent_computation():
    # Each word's own Llama states (encoded alone in the template, after its 4 kept tokens, its pieces but a bare "▁"
    # averaged)
    # through the token refiner (one token, the call's timestep), carried through the dual-stream blocks with the
    # text-stream weights (the single-stream ones carry no text stream of their own, as Flux's); ConceptAttention
    # written out (`independent_concepts`); 9 frames: 1 of the first latent frame, 4 of each other.
    pipe = make_tiny_hunyuan_video_pipeline(dtype=torch.float64, num_layers=2)
    blocks, timesteps, calls = list(pipe.transformer.transformer_blocks), [], []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: timesteps.append(k["timestep"]), with_kwargs=True
    )
    try:
        captured = layer_calls(blocks, lambda: pipe(PROMPT, generator=seeded(0), **common(pipe)))
    finally:
        hook.remove()
    for index, (block, args, _) in enumerate(captured):
        if block is blocks[0]:
            calls.append([])
        video, text, temb, mask, rotary = args[:5]  # the transformer calls its blocks positionally
        calls[-1].append((video, text, temb, mask[0, 0, 0, video.shape[1] :], rotary, timesteps[index // len(blocks)]))
    out = explain(pipe, attribution_method="concept_attention", n_last_diffusion_steps_to_consider_for_attributions=2)
    concepts = PROMPT.split()
    transformer, template = pipe.transformer, TINY_HUNYUAN_VIDEO_CALL["prompt_template"]
    with torch.no_grad():
        rows = []
        for concept in concepts:
            states, _, mask = pipe.encode_prompt(concept, prompt_template=template, max_sequence_length=24)
            pieces = pipe.tokenizer.tokenize(concept)  # "ball" is "▁", "b", "a", "l", "l"
            assert int(mask.sum()) == 4 + len(pieces)  # the template's kept tokens, then the word's pieces
            own = [4 + k for k, piece in enumerate(pieces) if piece != "▁"]  # a bare word-start piece left out
            rows.append(states[0, own].mean(0))
        rows = torch.stack(rows)
    probs = hunyuan_concept_probabilities(
        transformer, lambda t: transformer.context_embedder(rows[:, None], t.expand(len(rows)))[:, 0][None], calls[-2:]
    )
    grid = probs.reshape(len(concepts), 3, SIZE // 8, SIZE // 8)
    frames = [F.interpolate(grid[:, f][None], size=(SIZE, SIZE), mode="bilinear")[0] for f in range(3)]
    expected = torch.cat([frames[(t + 3) // 4] for t in range(FRAMES)], dim=1)  # (concepts, frames x SIZE, SIZE)
    recorded = np.stack([out.concept_maps[c] for c in concepts])
    np.testing.assert_allclose(recorded, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(recorded.sum(0), 1.0, atol=1e-6)  # a softmax across the concepts at each pixel
    assert [word for word, _ in out.word_attributions] == concepts


def test_a_clip_the_user_already_has_is_refused_with_what_to_do(video):
    _, pipe = video
    with pytest.raises(ValueError, match="explain a generated clip"):
        explainer_for(pipe, verbose=False).explain_image(Image.new("RGB", (SIZE, SIZE)), PROMPT, **common(pipe))


def test_cogvideox_refuses_a_frame_count_its_vae_would_not_make():
    pipe = tiny("cogvideox")
    with pytest.raises(ValueError, match=r"`num_frames=10` is not a clip .* would make 9 frames"):
        explain(pipe, num_frames=10)
    with pytest.raises(ValueError, match="needs a text stream"):
        explain(pipe, attribution_method="concept_attention")


def test_wans_self_attention_of_a_region_of_a_frame_equals_an_independent_computation(wan):
    # The top-left quarter of frame 5 of a 32x32 clip: frame 5 is made of latent frame 2 ((5 + 3) // 4), whose 2x2
    # patch grid's top-left cell is the one query (token 2 x 4). Each block's self-attention (`attn1`) from its own
    # projections, normed over all heads, each head's pairs rotated as complex numbers by the layer's rotary
    # embedding; softmax over the video's tokens, the query's row, heads, layers and the prompt's calls averaged;
    # shown on every frame of each latent frame.
    from diffusers_interpret import record_self_attention

    call = dict(COMMON, height=32, width=32, guidance_scale=5.0)
    box = ((0, 5 * 32), (16, 5 * 32 + 16))
    recorder = record_self_attention(wan, box=box)

    def run():
        with recorder:
            wan(PROMPT, generator=seeded(0), **call)

    captured = layer_calls([block.attn1 for block in wan.transformer.blocks], run)
    layers = len(wan.transformer.blocks)
    per_call = []
    for attn, args, _ in [c for i in range(0, len(captured), 2 * layers) for c in captured[i : i + layers]]:
        hidden, (cos, sin) = args[0], args[3]  # attn1(hidden_states, None, None, rotary_emb)
        heads = attn.heads
        q = attn.norm_q(attn.to_q(hidden)).unflatten(-1, (heads, -1))
        k = attn.norm_k(attn.to_k(hidden)).unflatten(-1, (heads, -1))
        turn = torch.polar(torch.ones_like(cos[..., 0::2]), torch.atan2(sin[..., 1::2], cos[..., 0::2]))
        q, k = (
            torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * turn).flatten(-2)
            for x in (q, k)
        )
        scores = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / q.shape[-1] ** 0.5
        per_call.append(scores.softmax(-1).mean(1)[0, 2 * 4])  # the query token's row, heads averaged
    probs = torch.stack(per_call).mean(0).reshape(3, 2, 2)
    frames = [
        F.interpolate(probs[f][None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        for f in range(3)
    ]
    expected = torch.cat([frames[(t + 3) // 4] for t in range(FRAMES)])
    np.testing.assert_allclose(recorder.maps.maps[0, 0], expected, atol=1e-6)


def test_every_kind_of_map_works_on_a_clip(video, tmp_path):
    # Raw records per layer x step: upsampled per latent frame (9 frames: 1 of the first, 4 of each other) and
    # averaged, they are the recorded maps; text relations where the text attends (refused for Wan, whose text has no
    # queries); the exported word maps are the output's, frame for frame.
    from diffusers_interpret import record_cross_attention, record_text_relations

    family, pipe = video
    with record_cross_attention(pipe, keep_per_layer=True, keep_per_step=True) as recorder:
        pipe(PROMPT, generator=seeded(0), **common(pipe))
    maps = recorder.maps
    made_of = [(t + 3) // 4 for t in range(FRAMES)]
    upsampled = []
    for records in maps.per_layer.values():  # (steps, images, tokens, 3 x h, w)
        grid = records.unflatten(-2, (3, -1))
        frames = [
            F.interpolate(grid[..., f, :, :].flatten(0, 1), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            for f in range(3)
        ]
        upsampled.append(torch.cat([frames[f] for f in made_of], dim=-2).unflatten(0, records.shape[:2]))
    per_step = torch.stack(upsampled).mean(0)
    np.testing.assert_allclose(per_step, maps.per_step, atol=1e-6)
    np.testing.assert_allclose(per_step.mean(0), maps.maps, atol=1e-6)
    if family == "wan":
        with pytest.raises(ValueError, match="no text-to-text attention"):
            with record_text_relations(pipe):
                pipe(PROMPT, generator=seeded(0), **common(pipe))
    else:
        with record_text_relations(pipe) as relations:
            pipe(PROMPT, generator=seeded(0), **common(pipe))
        rows = relations.relations[0]
        assert rows.shape[0] == rows.shape[1] and bool(((rows >= 0) & (rows.sum(-1) <= 1 + 1e-5)).all())
    out = explain(pipe, attribution_method="word_attention")
    out.export_maps(tmp_path)
    words = np.load(tmp_path / "maps.npz")["words"]
    assert words.shape == (len(out.word_attributions), FRAMES * SIZE, SIZE)
    for word, tokens in zip(words, out.word_tokens):
        np.testing.assert_allclose(word, np.sum([out.word_maps[t] for t in tokens], axis=0), rtol=1e-6)


def test_word_attention_reads_wans_encoder_only_up_to_the_padding(wan, monkeypatch):
    # UMT5 reads its mask and the pipeline zeroes the padding's states: the padding feeds no position, so the
    # hand-back of positions to words needs the prompt's rows only (at Wan's 512, 16 forward passes become 1).
    call = dict(max_sequence_length=64, prompt_dependence=False, attribution_method="word_attention")
    fast = explain(wan, **call)
    computed = every_row_mixing(monkeypatch)
    full = explain(wan, **call)
    assert computed and computed[0][1] == max(fast.token_positions) + 2  # the prompt's tokens and the end token
    np.testing.assert_allclose(fast.token_attributions.scores, full.token_attributions.scores, rtol=1e-9, atol=0)


def test_checkpointed_gradients_equal_kept_ones(video):
    # Every step traced: with checkpointing the 3-D latents' calls are recomputed in the backward pass.
    _, pipe = video
    kwargs = dict(explanation_2d_bounding_box=((0, 0), (8, 8)), explanation_frames=(3, 7), prompt_dependence=False)
    outputs = []
    for checkpointing in (False, True):
        explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=checkpointing)
        outputs.append(
            explainer(PROMPT, generator=seeded(0), attribution_method="grad_x_input", **common(pipe), **kwargs)
        )
    scale = float(np.abs(np.asarray(outputs[0].token_gradients)).max())
    np.testing.assert_allclose(outputs[1].token_gradients, outputs[0].token_gradients, rtol=1e-4, atol=1e-6 * scale)


def test_state_restored_after_an_injected_exception(video):
    _, pipe = video
    explain(pipe, prompt_dependence=False)  # transformers' own hooks appear at a first run (see test_controlnet)
    before = pipeline_state(pipe)
    assert_state_restored_after_an_injected_exception(pipe, lambda **kwargs: explain(pipe, **kwargs))
    out = explain(pipe, prompt_dependence=False)
    assert out.token_attributions is not None and pipeline_state(pipe) == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(explanation_frames=(5, 12)), r"not a span of the clip's 9 frames"),
        (dict(explanation_frames=(3, 3)), r"0 <= start < stop <= 9"),
        (dict(explanation_frames=3), r"must be \(start, stop\)"),
        (dict(explanation_2d_bounding_box=((0, 0), (8, 20))), "reaches outside the 16x16"),
        (dict(num_frames=10), r"4 x k \+ 1 frames.*e\.g\. 9"),
        (dict(prompt="a  red ball"), "prompt cleaning rewrites"),
        (dict(attribution_method="concept_attention"), "needs a text stream"),
    ],
)
def test_what_wan_cannot_explain_is_refused_before_any_model_runs(wan, kwargs, message):
    assert_refused_before_any_model_runs(wan.transformer, lambda: explain(wan, **kwargs), message)


def test_frames_are_refused_for_images_and_a_second_transformer_for_wan(tiny_pipe, wan):
    with pytest.raises(ValueError, match="for a clip's frames"):
        explainer_for(tiny_pipe, verbose=False)(PROMPT, explanation_frames=(0, 1), num_inference_steps=1)
    wan.transformer_2 = wan.transformer
    try:
        with pytest.raises(ValueError, match="transformer_2=None"):
            explain(wan)
    finally:
        wan.transformer_2 = None


def test_frame_region_is_the_frames_box_moved_to_each_frame():
    assert frame_region(None, None, 16, 24, 5) is None
    assert frame_region(None, (1, 3), 16, 24, 5) == ((0, 16), (24, 48))
    assert frame_region((2, 3, 10, 12), (4, 5), 16, 24, 5) == ((2, 67), (10, 76))
    assert frame_region(((2, 3), (10, 12)), (0, 2), 16, 24, 5) == (((2, 3), (10, 12)), ((2, 19), (10, 28)))
    assert frame_region(((2, 0), (10, 16)), (1, 4), 16, 24, 5) == ((2, 16), (10, 64))


def test_the_cli_explains_a_saved_wan_clip_over_frames(tmp_path, capsys):
    # A saved tiny Wan, a box over frames 2 to 4: the report names the region, plays the clip (no GIF or video file)
    # with a button per word; --frames on an image model, and a span outside the clip, are one error line each.
    from diffusers_interpret.cli import main

    make_tiny_wan_pipeline().save_pretrained(tmp_path / "model")
    common = ["--steps", "2", "--quiet", "--height", "16", "--width", "16", "--max-sequence-length", "24"]
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), *common, "--num-frames", "9"]
    assert main([*argv, "--frames", "2", "5", "--box", "0,0,8,8", "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (8, 8)) on frames 2 to 4 of the clip" in page
    assert page.count('data-word="') == len(PROMPT.split()) + 1 and "frame 0 (of 0 to 8)" in page
    assert not list((tmp_path / "out").glob("*.gif")) and not list((tmp_path / "out").glob("*.mp4"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv, "--frames", "7", "12", "--out", str(tmp_path / "out2")])
    assert "not a span of the clip's 9 frames" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", PROMPT, "--frames", "0", "1", "--quiet", "--out", str(tmp_path / "out3")])  # the toy SD
    assert "--frames is for video pipelines" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["cogvideox", "hunyuan_video"])
def test_the_cli_explains_saved_cogvideox_and_hunyuan_video_clips(family, tmp_path):
    # HunyuanVideo from the command line reads the pipeline's own prompt template (95 of Llama 3's tokens cropped),
    # which the generated tokenizer spells out in 496 pieces: a length that leaves the prompt no room is one error
    # line saying the length that does.
    from diffusers_interpret.cli import main

    MAKERS[family]().save_pretrained(tmp_path / "model")
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--steps", "2", "--quiet", "--height", "16"]
    argv += ["--width", "16", "--num-frames", "9", "--frames", "1", "5", "--box", "0,0,8,16", "--out", str(tmp_path)]
    if family == "hunyuan_video":
        with pytest.raises(SystemExit):
            main([*argv, "--max-sequence-length", "24"])
        argv += ["--max-sequence-length", "440", "--method", "attention"]  # word_attention: 535 positions' passes
    assert main(argv) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (8, 16)) on frames 1 to 4 of the clip" in page and 'data-word="' in page


IMAGE_TO_VIDEO_REGION = dict(explanation_2d_bounding_box=((0, 0), (8, 16)), explanation_frames=(0, 5))


def explained_image_to_video(pipe, explainer_class, call):
    # A float64 image-to-video pipeline started from a random image (values kept off the [0, 1] borders, for the
    # differences): the clip explained over the left half of frames 0 to 4 by `explainer_class` is the pipeline's, and
    # holds the image's pixel attributions and no prompt dependence. Returns the explainer, the output, the image and
    # the pipeline's frames.
    from diffusers_interpret import PipelineImageToVideoExplainerOutput

    x = 0.25 + 0.5 * torch.from_numpy(np.random.default_rng(0).random((3, SIZE, SIZE)))[None]
    expected = pipe(prompt=PROMPT, image=x, generator=seeded(0), output_type="np", **call).frames[0]
    explainer = explainer_for(pipe, verbose=False)
    assert isinstance(explainer, explainer_class)
    out = explainer(
        PROMPT, image=x, generator=seeded(0), output_type="np", attribution_method="grad_x_input",
        **IMAGE_TO_VIDEO_REGION, **call,
    )  # fmt: skip
    assert isinstance(out, PipelineImageToVideoExplainerOutput) and out.prompt_dependence is None
    np.testing.assert_array_equal(np.stack(out.frames), expected)
    assert out.pixel_attributions.shape == (SIZE, SIZE) and out.input_saliency_map is not None
    return explainer, out, x, expected


def pixel_difference_along_the_gradient(pipe, image, gradient, eps, call) -> float:
    # The central difference, along the pixel gradient's direction, of the pipeline's own clips' sum over the region
    # of `IMAGE_TO_VIDEO_REGION` (rows 0-15, columns 0-7 of frames 0 to 4).
    unit = gradient / gradient.norm()

    def region_sum(x):
        clip = pipe(prompt=PROMPT, image=x, generator=seeded(0), output_type="pt", **call).frames[0]
        return float(clip[0:5, :, 0:16, 0:8].sum())

    return (region_sum(image + eps * unit[None]) - region_sum(image - eps * unit[None])) / (2 * eps)


def test_wan_image_to_video_is_the_pipelines_clip_and_its_pixel_gradients_are_finite_differences():
    # WanImageToVideoPipeline: the clip is the pipeline's; the gradient of a box over frames 0 to 4 to the image's
    # pixels through the VAE-encoded first frame the transformer reads beside the noise equals the central difference
    # of the pipeline's own clips along it, CLIP's embedding of the image held fixed (its processor works outside
    # torch: that path is not attributed). The pipeline keeps the image and the first frame's latents in float32:
    # measured, the difference is 0.0030034 / 0.0029596 / 0.0026758 at eps 3e-3 / 1e-2 / 3e-2 against a gradient norm
    # of 0.0030120 (float32 rounding below, curvature above).
    from diffusers_interpret import WanImageToVideoPipelineExplainer
    from diffusers_interpret.testing.wan import TINY_WAN_I2V_CALL, make_tiny_wan_i2v_pipeline

    pipe = make_tiny_wan_i2v_pipeline(dtype=torch.float64)
    call = dict(num_inference_steps=3, negative_prompt="", guidance_scale=5.0, **TINY_WAN_I2V_CALL)
    explainer, out, x, expected = explained_image_to_video(pipe, WanImageToVideoPipelineExplainer, call)
    grad = out.pixel_gradients
    embeddings = pipe.encode_image(x, "cpu")
    pipe.encode_image = lambda *args, **kwargs: embeddings  # CLIP's path held fixed
    difference = pixel_difference_along_the_gradient(pipe, x, grad, 3e-3, call)
    assert difference == pytest.approx(float(grad.norm()), rel=1e-2)
    assert [w for w, _ in out.word_attributions] == PROMPT.split()
    del pipe.encode_image
    word = explainer(PROMPT, image=x, generator=seeded(0), output_type="np", prompt_dependence=False, **call)
    np.testing.assert_array_equal(np.stack(word.frames), expected)  # word_attention: the image's tokens left out
    assert 0 < word.attention_sink_share < 1


def test_wan_image_to_video_refuses_what_it_cannot_explain():
    from diffusers_interpret.testing.wan import TINY_WAN_I2V_CALL, make_tiny_wan_i2v_pipeline

    pipe = make_tiny_wan_i2v_pipeline()
    image = torch.rand(1, 3, SIZE, SIZE)
    explainer = explainer_for(pipe, verbose=False)
    for kwargs, message in (
        (dict(max_sequence_length=24), r"leave `max_sequence_length` at 512"),
        (dict(last_image=image), "`last_image`"),
        (dict(image_embeds=torch.zeros(1, 65, 4)), "`image_embeds`"),
    ):
        with pytest.raises(ValueError, match=message):
            explainer(PROMPT, image=image, num_inference_steps=1, **{**TINY_WAN_I2V_CALL, **kwargs})


def test_the_cli_explains_a_saved_wan_image_to_video_clip(tmp_path):
    # --image for an image-to-video model; the report's steps are stills of the clip at each step (no input image
    # among them: it is one frame).
    from PIL import Image

    from diffusers_interpret.cli import main
    from diffusers_interpret.testing.wan import make_tiny_wan_i2v_pipeline

    make_tiny_wan_i2v_pipeline().save_pretrained(tmp_path / "model")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        tmp_path / "x.png"
    )
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--quiet"]
    argv += ["--steps", "2", "--height", "16", "--width", "16", "--num-frames", "9", "--frames", "0", "5"]
    assert main([*argv, "--box", "0,0,8,16", "--method", "grad_x_input", "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (8, 16)) on frames 0 to 4 of the clip" in page and "pixel attributions" in page
    assert "step 2/2" in page and "step 3/3" not in page  # the 2 steps' stills, no input image before them


def test_cogvideox_image_to_video_is_the_pipelines_clip_and_its_pixel_gradients_are_finite_differences():
    # CogVideoXImageToVideoPipeline: the image's VAE latents (sampled with the call's generator) as the first latent
    # frame beside the noise. The clip is the pipeline's; the gradient of a box over frames to the image's pixels
    # equals the central difference of the pipeline's own clips along it (float64, no path outside torch; the clip
    # comes back in float32: measured, the difference is 69.64 / 68.283 / 68.329 / 71.13 at eps 1e-5 / 1e-4 / 1e-3 /
    # 1e-2 against a gradient norm of 68.358, so rel 1e-3 at 1e-3).
    from diffusers_interpret import CogVideoXImageToVideoPipelineExplainer
    from diffusers_interpret.testing.cogvideox import make_tiny_cogvideox_i2v_pipeline

    pipe = make_tiny_cogvideox_i2v_pipeline(dtype=torch.float64)
    call = dict(COMMON, guidance_scale=6.0)
    _, out, x, _ = explained_image_to_video(pipe, CogVideoXImageToVideoPipelineExplainer, call)
    difference = pixel_difference_along_the_gradient(pipe, x, out.pixel_gradients, 1e-3, call)
    assert difference == pytest.approx(float(out.pixel_gradients.norm()), rel=1e-3)
