"""HunyuanVideo 1.5 through the seam: Qwen2.5-VL in a chat template, a guider, each row's text laid out anew."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from independent_concepts import hunyuan_concept_probabilities
from independent_gradients import central_difference, leaf_gradient
from shared_checks import (
    assert_a_box_over_frames_re_explained_is_a_fresh_call,
    assert_image_to_video_pixel_gradients_are_central_differences,
    assert_refused_before_any_model_runs,
    assert_state_restored_after_an_injected_exception,
    layer_calls,
)

from diffusers_interpret import (
    HunyuanVideo15PipelineExplainer,
    explainer_for,
    record_self_attention,
    record_text_relations,
)
from diffusers_interpret.testing.hunyuan_video15 import (
    TINY_HUNYUAN_VIDEO15_CALL,
    TINY_HUNYUAN_VIDEO15_LENGTHS,
    make_tiny_hunyuan_video15_pipeline,
)

PROMPT = "a red ball rolls to the left"
GLYPHS = 'a red sign reads "STOP" on the left'  # quoted text: ByT5's glyph bytes come first in the layers' text
FRAMES, SIZE = TINY_HUNYUAN_VIDEO15_CALL["num_frames"], TINY_HUNYUAN_VIDEO15_CALL["height"]
LATENT_FRAMES, CELLS = 5, SIZE // 4  # 9 frames -> 5 latent frames (1, then 2 frames each); 16 pixels -> 4 cells
COMMON = dict(num_inference_steps=3, **TINY_HUNYUAN_VIDEO15_CALL)
MADE_OF = [(t + 1) // 2 for t in range(FRAMES)]  # the latent frame each frame is made of


@pytest.fixture(scope="module")
def hv15():
    return make_tiny_hunyuan_video15_pipeline(guidance_scale=4.0)  # two transformer calls a step


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **{**COMMON, **kwargs})


def per_frame(grids: torch.Tensor) -> torch.Tensor:
    # (..., latent frames, cells, cells) -> (..., frames x SIZE, SIZE): each latent frame upsampled to a frame and
    # shown on the frames the VAE makes of it.
    frames = [
        F.interpolate(grids[..., f, :, :].reshape(-1, 1, CELLS, CELLS), size=(SIZE, SIZE), mode="bilinear").reshape(
            *grids.shape[:-3], SIZE, SIZE
        )
        for f in range(LATENT_FRAMES)
    ]
    return torch.cat([frames[f] for f in MADE_OF], dim=-2)


@pytest.mark.parametrize("method", ["grad_x_input", "word_attention", "attention", "ablation"])
def test_the_clip_is_the_pipelines_clip(hv15, method):
    # The guider at 4 (the prompt's call, then the negative prompt's, each step) and at 1 (one call a step).
    for pipe, seed in ((hv15, 1), (make_tiny_hunyuan_video15_pipeline(guidance_scale=1.0), 2)):
        expected = pipe(PROMPT, generator=seeded(seed), output_type="np", **COMMON).frames[0]
        out = explain(pipe, seed=seed, attribution_method=method, output_type="np")
        assert out.image.shape == (FRAMES * SIZE, SIZE, 3) and len(out.frames) == FRAMES
        np.testing.assert_array_equal(np.stack(out.frames), expected)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 1e-3 * np.abs(scores).sum(), method
        assert [word for word, _ in out.word_attributions] == PROMPT.split()
        assert len(out.all_images_during_generation) == COMMON["num_inference_steps"]  # from the scheduler's steps
    assert isinstance(explainer_for(hv15), HunyuanVideo15PipelineExplainer)
    assert out.stats.denoiser_calls == 3


def test_token_gradients_of_a_space_time_region_equal_an_independent_autograd_and_finite_differences():
    # The right half of frames 3 to 6: Qwen's token embedding output replaced by a leaf, the pipeline's own __call__
    # with grad, the region's pixel sum differentiated; then the directional derivative along that gradient by
    # central differences (the flow-matching scheduler steps in float32, so the step is 1e-2: at 1e-3 its rounding
    # moves the difference by 0.3%).
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

    pipe = make_tiny_hunyuan_video15_pipeline(dtype=torch.float64)
    out = explain(pipe, explanation_2d_bounding_box=((8, 0), (16, SIZE)), explanation_frames=(3, 7))
    region = out.explained_region
    assert region == ((8, 3 * SIZE), (16, 7 * SIZE))
    length = TINY_HUNYUAN_VIDEO15_LENGTHS["tokenizer_max_length"] + pipe.prompt_template_encode_start_idx
    ids = pipe.tokenizer.apply_chat_template(
        format_text_input([PROMPT], pipe.system_message), add_generation_prompt=True, tokenize=True,
        return_dict=True, padding="max_length", max_length=length, truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    call = dict(prompt=PROMPT, **COMMON)
    embed = pipe.text_encoder.embed_tokens
    grad = leaf_gradient(pipe, embed, ids, region, **call)
    units = out.session.trace.prompt_tokens[0].units
    assert "".join(pipe.tokenizer.decode(ids[0, u.token_index]) for u in units) == PROMPT  # the prompt's own tokens
    for row, unit in enumerate(units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    assert central_difference(pipe, embed, ids, grad, 1e-2, region, **call) == pytest.approx(
        float(grad.norm()), rel=1e-3
    )


def _layer_inputs(pipe, run):
    # Each block's attention call of the prompt's (conditional) calls: the video's queries and keys from the layer's
    # own projections and norms, the video's rotated; the text's; the layer's text mask; and where each of the
    # refined Qwen states sits in the layer's text, found by matching the states themselves (the transformer's
    # `context_embedder` output plus its condition-type embedding, as the blocks' first input holds them).
    refined = []
    handle = pipe.transformer.context_embedder.register_forward_hook(lambda m, a, o: refined.append(o.detach()))
    try:
        captured = layer_calls([block.attn for block in pipe.transformer.transformer_blocks], run)
    finally:
        handle.remove()
    from diffusers.models.embeddings import apply_rotary_emb

    calls, blocks = [], len(pipe.transformer.transformer_blocks)
    for index, (attn, _, kwargs) in enumerate(captured):
        if (index // blocks) % 2:  # the guider's negative-prompt call (the prompt's first, each step)
            continue
        video, text, mask = kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["attention_mask"]
        heads, rotary = attn.heads, kwargs["image_rotary_emb"]
        q = apply_rotary_emb(attn.norm_q(attn.to_q(video).unflatten(-1, (heads, -1))), rotary, sequence_dim=1)
        k = apply_rotary_emb(attn.norm_k(attn.to_k(video).unflatten(-1, (heads, -1))), rotary, sequence_dim=1)
        tq = attn.norm_added_q(attn.add_q_proj(text).unflatten(-1, (heads, -1)))
        tk = attn.norm_added_k(attn.add_k_proj(text).unflatten(-1, (heads, -1)))
        calls.append((torch.cat([q, tq], 1).transpose(1, 2), torch.cat([k, tk], 1).transpose(1, 2), mask.bool()))
    states = refined[0][0] + pipe.transformer.cond_type_embed(torch.zeros(1, dtype=torch.long))[0]
    return calls, states


@pytest.mark.parametrize("prompt", [PROMPT, GLYPHS])
def test_per_frame_word_maps_and_text_relations_equal_an_independent_computation(hv15, prompt):
    # Each block's joint attention from its own projections: a softmax over the video's keys and the text's unmasked
    # keys less the chat template's (its sinks; ByT5's glyph bytes stay in it), the prompt's own tokens found in the
    # layer's text by their states; heads, layers and steps averaged, each latent frame upsampled to a frame and shown
    # on the frames the VAE makes of it. With quoted text the prompt's tokens sit after ByT5's bytes.
    out = explain(hv15, prompt=prompt, attribution_method="attention")
    positions = list(out.session.trace.prompt_tokens[0].positions)
    block_text = []
    hook = hv15.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, k: block_text.append(k.get("encoder_hidden_states", a[1] if len(a) > 1 else None)[0]),
        with_kwargs=True,
    )
    relations = record_text_relations(hv15)
    try:

        def run():
            with relations:
                hv15(prompt, generator=seeded(0), **COMMON)

        calls, states = _layer_inputs(hv15, run)
    finally:
        hook.remove()
    # Where each unmasked Qwen position's state sits in the first block's text (the masked ones are zeros there).
    _, qwen_mask, _, glyph_mask = hv15.encode_prompt(prompt, device="cpu")
    valid = torch.nonzero(qwen_mask[0].bool()).squeeze(1)
    distance = torch.cdist(states[valid].double(), block_text[0].double())
    assert torch.all(distance.min(1).values < 1e-6)
    column = torch.full((len(qwen_mask[0]),), -1, dtype=torch.long)
    column[valid] = distance.argmin(1)
    kept = column[positions]
    glyphs = int(glyph_mask.sum())
    assert (glyphs > 0) == (prompt == GLYPHS) and int(kept.min()) == glyphs  # the prompt after ByT5's bytes
    video = LATENT_FRAMES * CELLS * CELLS
    per_layer, relation_layers = [], []
    for q, k, mask in calls:
        text_keys = mask[0].clone()
        prompt_keys = torch.zeros_like(text_keys)
        prompt_keys[kept] = True
        sinks = text_keys & ~prompt_keys & torch.isin(torch.arange(len(text_keys)), column[valid])  # the template
        keep = torch.cat([torch.ones(video, dtype=torch.bool), text_keys & ~sinks])
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (1, heads, tokens, tokens)
        probs = scores[..., :video, :].masked_fill(~keep, float("-inf")).softmax(-1).mean(1)[0]
        per_layer.append(probs[:, video + kept])  # (video tokens, prompt tokens)
        with_text = torch.cat([torch.ones(video, dtype=torch.bool), text_keys])
        text_scores = scores[..., video:, :].masked_fill(~with_text, float("-inf")).softmax(-1).mean(1)[0]
        relation_layers.append(text_scores[:, video:][kept][:, kept])  # prompt tokens x prompt tokens
    probs = torch.stack(per_layer).mean(0)
    expected = per_frame(probs.T.reshape(len(positions), LATENT_FRAMES, CELLS, CELLS))
    np.testing.assert_allclose(out.attention_maps.maps[0][positions], expected, atol=1e-5)
    assert 0 < out.attention_sink_share < 1  # the chat template's end markers
    recorded = relations.relations[0]
    expected_relations = torch.stack(relation_layers).mean(0)
    np.testing.assert_allclose(recorded[positions][:, positions], expected_relations, atol=1e-5)


def test_self_attention_of_a_region_of_a_frame_equals_an_independent_computation(hv15):
    # A 4x4 box at the top left of frame 3: frame 3 is made of latent frame 2, whose top-left cell is the one query
    # (token 2 x 16). Each block's joint attention from its own projections (the video's rotated), the softmax over
    # every unmasked key, the video's columns kept; heads, layers and steps averaged; shown on every frame of each
    # latent frame.
    box = ((0, 3 * SIZE), (4, 3 * SIZE + 4))
    recorder = record_self_attention(hv15, box=box)

    def run():
        with recorder:
            hv15(PROMPT, generator=seeded(0), **COMMON)

    calls, _ = _layer_inputs(hv15, run)
    video = LATENT_FRAMES * CELLS * CELLS
    per_layer = []
    for q, k, mask in calls:
        keep = torch.cat([torch.ones(video, dtype=torch.bool), mask[0]])
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        probs = scores[..., 2 * CELLS * CELLS, :].masked_fill(~keep, float("-inf")).softmax(-1).mean(1)[0]
        per_layer.append(probs[:video])
    probs = torch.stack(per_layer).mean(0).reshape(LATENT_FRAMES, CELLS, CELLS)
    np.testing.assert_allclose(recorder.maps.maps[0, 0], per_frame(probs), atol=1e-6)


def test_a_box_over_frames_re_explained_is_a_fresh_call_and_checkpointing_changes_nothing(hv15):
    def checkpointed(**kwargs):
        explainer = explainer_for(hv15, verbose=False, gradient_checkpointing=True)
        return explainer(PROMPT, generator=seeded(0), attribution_method="grad_x_input", **COMMON, **kwargs)

    assert_a_box_over_frames_re_explained_is_a_fresh_call(lambda **kwargs: explain(hv15, **kwargs), checkpointed, SIZE)


def test_state_restored_after_an_injected_exception(hv15):
    explain(hv15, prompt_dependence=False)  # transformers' own hooks appear at a first run (see test_controlnet)
    # The pipeline takes no step callback: the exception comes from the transformer's third call, after the first
    # step's two calls and its scheduler step (whose override, keeping the steps' latents, is gone again).
    assert_state_restored_after_an_injected_exception(
        hv15, lambda **kwargs: explain(hv15, **kwargs), denoiser=hv15.transformer, at_call=3
    )
    assert "step" not in vars(hv15.scheduler)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=8), r"`num_frames=8` is not a clip .* would make 7 frames"),
        (dict(explanation_frames=(5, 12)), r"not a span of the clip's 9 frames"),
        (dict(height=18, width=18), "multiple of 4"),
    ],
)
def test_what_hunyuan_video15_cannot_explain_is_refused_before_any_model_runs(hv15, kwargs, message):
    assert_refused_before_any_model_runs(hv15.transformer, lambda: explain(hv15, **kwargs), message)


def test_a_guider_whose_calls_per_step_change_is_refused_before_any_model_runs():
    from diffusers.guiders import ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance

    pipe = make_tiny_hunyuan_video15_pipeline()
    for guider, message in (
        (ClassifierFreeGuidance(guidance_scale=4.0, start=0.2), "guides only from 0.2 to 1.0"),
        (ClassifierFreeZeroStarGuidance(guidance_scale=4.0), "not ClassifierFreeZeroStarGuidance"),
    ):
        pipe.guider = guider
        assert_refused_before_any_model_runs(pipe.transformer, lambda: explain(pipe), message)


def test_the_cli_explains_a_saved_hunyuan_video15_clip_over_frames(tmp_path):
    # Saved and loaded again, the pipeline pads to its own lengths (1000 Qwen positions, 256 ByT5 bytes, 729 image
    # tokens): the template's crop, the text's layout and the maps follow them.
    from diffusers_interpret.cli import main

    make_tiny_hunyuan_video15_pipeline(guidance_scale=4.0).save_pretrained(tmp_path / "model")
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--steps", "2", "--quiet", "--height", "16"]
    argv += ["--width", "16", "--num-frames", "9", "--frames", "1", "5", "--box", "0,0,8,16"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (8, 16)) on frames 1 to 4 of the clip" in page
    assert page.count('data-word="') == len(PROMPT.split()) + 1


def reference_concept_maps(pipe, concepts, block_inputs):
    # Each word's own Qwen states (encoded alone, its pieces averaged) through the transformer's token refiner (one
    # token, the call's timestep) and the Qwen condition-type embedding; then ConceptAttention written out
    # (`independent_concepts`), each latent frame upsampled to a frame and shown on the frames made of it.
    transformer = pipe.transformer
    with torch.no_grad():
        rows = []
        for concept in concepts:
            states = pipe.encode_prompt(concept, device="cpu")[0][0]
            own = len(pipe.tokenizer(concept, add_special_tokens=False).input_ids)
            rows.append(states[:own].mean(0))
        rows = torch.stack(rows)

        def embedded(timestep):
            refined = transformer.context_embedder(rows[:, None], timestep.expand(len(rows)))[:, 0]
            return (refined + transformer.cond_type_embed(torch.zeros(len(rows), dtype=torch.long)))[None]

        probs = hunyuan_concept_probabilities(transformer, embedded, block_inputs)
        return per_frame(probs.reshape(len(concepts), LATENT_FRAMES, CELLS, CELLS))


def test_concept_attention_through_the_text_stream_equals_an_independent_computation():
    # Two dual-stream blocks (the concepts carried from one to the next), the guider at 4 (the prompt's call each
    # step), the last two steps traced; the maps shown on every frame of each latent frame.
    pipe = make_tiny_hunyuan_video15_pipeline(dtype=torch.float64, num_layers=2, guidance_scale=4.0)
    blocks = list(pipe.transformer.transformer_blocks)
    calls, timesteps = [], []
    timestep_hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: timesteps.append(k["timestep"]), with_kwargs=True
    )
    captured = layer_calls(blocks, lambda: pipe(PROMPT, generator=seeded(0), output_type="np", **COMMON))
    timestep_hook.remove()
    for index, (block, args, _) in enumerate(captured):
        call = index // len(blocks)
        if call % 2:  # the guider's negative-prompt call
            continue
        if block is blocks[0]:
            calls.append([])
        video, text, temb, mask, rotary = args  # the transformer calls its blocks positionally
        calls[-1].append((video, text, temb, mask[0].bool(), rotary, timesteps[call]))
    out = explain(
        pipe, attribution_method="concept_attention", output_type="np",
        n_last_diffusion_steps_to_consider_for_attributions=2,
    )  # fmt: skip
    concepts = PROMPT.split()
    expected = reference_concept_maps(pipe, concepts, calls[-2:])
    recorded = np.stack([out.concept_maps[c] for c in concepts])
    assert recorded.shape == (len(concepts), FRAMES * SIZE, SIZE)
    np.testing.assert_allclose(recorded, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(recorded.sum(0), 1.0, atol=1e-6)  # a softmax across the concepts at each pixel


def test_raw_records_and_the_export_of_a_hunyuan_video15_clip(hv15, tmp_path):
    # Raw records per layer x step (the prompt's calls only), each layer's grids upsampled per latent frame and
    # averaged, are the recorded maps; the exported words are the output's word maps, each word's tokens summed.
    from diffusers_interpret import record_cross_attention

    with record_cross_attention(hv15, keep_per_layer=True, keep_per_step=True) as recorder:
        hv15(PROMPT, generator=seeded(0), **COMMON)
    maps = recorder.maps
    assert len(maps.steps) == COMMON["num_inference_steps"]  # the negative prompt's calls are not recorded
    per_layer = [per_frame(records.unflatten(-2, (LATENT_FRAMES, -1))) for records in maps.per_layer.values()]
    per_step = torch.stack(per_layer).mean(0)
    np.testing.assert_allclose(per_step, maps.per_step, atol=1e-6)
    np.testing.assert_allclose(per_step.mean(0), maps.maps, atol=1e-6)
    out = explain(hv15, attribution_method="word_attention")
    out.export_maps(tmp_path)
    words = np.load(tmp_path / "maps.npz")["words"]
    assert words.shape == (len(out.word_attributions), FRAMES * SIZE, SIZE)
    for word, tokens in zip(words, out.word_tokens):
        np.testing.assert_allclose(word, np.sum([out.word_maps[t] for t in tokens], axis=0), rtol=1e-6)


@pytest.mark.parametrize("image_tokens", [False, True])
def test_text_key_columns_are_where_the_transformer_lays_each_text_position(image_tokens):
    # The transformer's own layout of each row's text, read off its first block's input by the states themselves:
    # rows with different masks (a prompt quoting text, one without), with image tokens that count (non-zero image
    # embeddings, as image-to-video gives them: they come first) or not (text-to-video). Every unmasked Qwen position
    # is where `text_key_columns` says.
    from diffusers_interpret.families import family_for

    pipe = make_tiny_hunyuan_video15_pipeline()
    transformer, family = pipe.transformer, family_for(pipe)
    qwen, qwen_mask, glyphs, glyph_mask = pipe.encode_prompt([PROMPT, GLYPHS], device="cpu", batch_size=2)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, pipe.vision_num_semantic_tokens, pipe.vision_states_dim, generator=generator)
    kwargs = dict(
        hidden_states=torch.randn(2, 9, LATENT_FRAMES, CELLS, CELLS, generator=generator),
        timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=qwen,
        encoder_attention_mask=qwen_mask,
        encoder_hidden_states_2=glyphs,
        encoder_attention_mask_2=glyph_mask,
        image_embeds=image if image_tokens else torch.zeros_like(image),
        return_dict=False,
    )
    refined, block_text = [], []
    hooks = [
        transformer.context_embedder.register_forward_hook(lambda m, a, o: refined.append(o)),
        transformer.transformer_blocks[0].register_forward_pre_hook(lambda m, a: block_text.append(a[1])),
    ]
    try:
        with torch.no_grad():
            transformer(**kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    states = refined[0] + transformer.cond_type_embed(torch.zeros(1, dtype=torch.long))
    columns = family.text_key_columns(pipe, (), kwargs)
    assert columns.shape == qwen_mask.shape
    for row in range(2):
        valid = torch.nonzero(qwen_mask[row].bool()).squeeze(1)
        distance = torch.cdist(states[row, valid].double(), block_text[0][row].double())
        assert torch.equal(distance.argmin(1), columns[row, valid]) and distance.min(1).values.max() < 1e-5
        first = (pipe.vision_num_semantic_tokens if image_tokens else 0) + int(glyph_mask[row].sum())
        assert int(columns[row, valid].min()) == first  # after the image tokens that count and the glyph bytes


def test_image_to_video_is_the_pipelines_clip_and_its_pixel_gradients_are_finite_differences():
    # HunyuanVideo15ImageToVideoPipeline (float64, its guider at 4): the clip is the pipeline's; the gradient of a box
    # over frames 0 to 4 to the image's pixels, through the VAE-encoded first frame the transformer reads beside the
    # noise, equals the central difference of the pipeline's own clips along it (the image moved where the pipeline
    # preprocesses it for its VAE; SigLIP's tokens, from its processor outside torch, are not attributed). SigLIP's
    # tokens count in the layers' text: the words' maps read past them.
    from PIL import Image

    from diffusers_interpret import HunyuanVideo15ImageToVideoPipelineExplainer

    pipe = make_tiny_hunyuan_video15_pipeline(dtype=torch.float64, guidance_scale=4.0, kind="image2video")
    image = Image.fromarray((64 + 128 * np.random.default_rng(0).random((SIZE, SIZE, 3))).astype(np.uint8))
    call = dict(num_inference_steps=3, num_frames=FRAMES)
    processor = pipe.video_processor
    original = processor.preprocess

    def clip_along(unit, eps):
        # The [0, 1] pixels moved by `eps` along the gradient: the preprocessed [-1, 1] values by twice that.
        processor.preprocess = lambda *args, **kwargs: (
            original(*args, **kwargs) + 2 * eps * unit[None].to(torch.float64)
        )
        try:
            return pipe(prompt=PROMPT, image=image, generator=seeded(0), output_type="pt", **call).frames[0]
        finally:
            del processor.preprocess

    explainer, expected = assert_image_to_video_pixel_gradients_are_central_differences(
        pipe, HunyuanVideo15ImageToVideoPipelineExplainer, PROMPT, image, (SIZE, SIZE), call, ((0, 0), (8, 16)),
        (0, 5), clip_along,
    )  # fmt: skip
    word = explainer(PROMPT, image=image, generator=seeded(0), output_type="np", **call)  # word_attention
    np.testing.assert_array_equal(np.stack(word.frames), expected)
    assert [w for w, _ in word.word_attributions] == PROMPT.split() and 0 < word.attention_sink_share < 1
    with pytest.raises(ValueError, match=r"crops and resizes a 24x16 .* give the image at 16x12"):
        explainer(PROMPT, image=image.resize((24, 16)), generator=seeded(0), **call)
    with pytest.raises(ValueError, match="takes its size from the input image"):
        explainer(PROMPT, image=image, generator=seeded(0), height=16, width=16, **call)


def test_the_cli_explains_a_saved_hunyuan_video15_image_to_video_clip(tmp_path):
    # --image for HunyuanVideo 1.5 image-to-video, which sizes the clip by the image (no --height/--width).
    from PIL import Image

    from diffusers_interpret.cli import main

    make_tiny_hunyuan_video15_pipeline(kind="image2video").save_pretrained(tmp_path / "model")
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--quiet"]
    argv += [
        "--steps",
        "2",
        "--num-frames",
        "9",
        "--frames",
        "0",
        "5",
        "--box",
        "0,0,8,16",
        "--method",
        "grad_x_input",
    ]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (8, 16)) on frames 0 to 4 of the clip" in page and "pixel attributions" in page
