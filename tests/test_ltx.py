"""LTX-Video through the seam: packed video latents, T5 read by each block's cross-attention under its mask."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from independent_gradients import central_difference, leaf_gradient
from shared_checks import (
    assert_a_box_over_frames_re_explained_is_a_fresh_call,
    assert_image_to_video_pixel_gradients_are_central_differences,
    assert_refused_before_any_model_runs,
    assert_state_restored_after_an_injected_exception,
    layer_calls,
)

from diffusers_interpret import LTXPipelineExplainer, explainer_for, record_self_attention
from diffusers_interpret.testing.ltx import TINY_LTX_CALL, make_tiny_ltx_pipeline

PROMPT = "a red ball rolls to the left"
FRAMES, SIZE = TINY_LTX_CALL["num_frames"], TINY_LTX_CALL["height"]
LATENT_FRAMES, CELLS = 3, SIZE // 4  # 9 frames -> 3 latent frames (1, then 4 frames each); 32 pixels -> 8 cells
COMMON = dict(num_inference_steps=3, negative_prompt="", **TINY_LTX_CALL)
MADE_OF = [(t + 3) // 4 for t in range(FRAMES)]  # the latent frame each frame is made of


@pytest.fixture(scope="module")
def ltx():
    return make_tiny_ltx_pipeline()


def explain(pipe, seed=0, **kwargs):
    kwargs.setdefault("attribution_method", "grad_x_input")
    return explainer_for(pipe, verbose=False)(PROMPT, generator=seeded(seed), **{**COMMON, **kwargs})


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
def test_the_clip_is_the_pipelines_clip(ltx, method):
    # Guidance 3 ([negative, prompt] rows in one call a step) and 1 (one row).
    for seed, guidance in ((1, 3.0), (2, 1.0)):
        expected = ltx(PROMPT, generator=seeded(seed), output_type="np", guidance_scale=guidance, **COMMON).frames[0]
        out = explain(ltx, seed=seed, attribution_method=method, output_type="np", guidance_scale=guidance)
        assert out.image.shape == (FRAMES * SIZE, SIZE, 3) and len(out.frames) == FRAMES
        np.testing.assert_array_equal(np.stack(out.frames), expected)
        scores = out.token_attributions.scores
        assert np.isfinite(scores).all() and scores.max() > 1e-3 * np.abs(scores).sum(), method
        assert [word for word, _ in out.word_attributions] == PROMPT.split()
    assert isinstance(explainer_for(ltx), LTXPipelineExplainer)
    assert out.stats.denoiser_calls == 3


def test_a_vae_that_reads_the_decode_timestep_gives_the_pipelines_clip():
    # LTX-Video 0.9.1's VAE is told the decode timestep: at the pipeline's default (0, no decode noise) the clip is
    # the pipeline's; another is refused before any model runs.
    pipe = make_tiny_ltx_pipeline(timestep_conditioning=True)
    expected = pipe(PROMPT, generator=seeded(0), output_type="np", **COMMON).frames[0]
    out = explain(pipe, output_type="np", attribution_method="attention")
    np.testing.assert_array_equal(np.stack(out.frames), expected)
    for kwargs in (dict(decode_timestep=0.05), dict(decode_timestep=0.0, decode_noise_scale=0.025)):
        with pytest.raises(ValueError, match="`decode_timestep` and `decode_noise_scale` other than 0"):
            explain(pipe, **kwargs)


def test_token_gradients_of_a_space_time_region_equal_an_independent_autograd_and_finite_differences():
    # The left half of frames 1 to 4 (the second latent frame's): T5's token embedding output replaced by a leaf, the
    # pipeline's own __call__ with grad, the region's pixel sum differentiated; then the directional derivative along
    # that gradient by central differences (the flow-matching scheduler steps in float32: rel 1e-3).
    pipe = make_tiny_ltx_pipeline(dtype=torch.float64)
    out = explain(pipe, explanation_2d_bounding_box=((0, 0), (16, SIZE)), explanation_frames=(1, 5))
    region = out.explained_region
    assert region == ((0, SIZE), (16, 5 * SIZE))
    assert out.stats.memory_estimate.per_call > 0
    embed = pipe.text_encoder.encoder.embed_tokens
    ids = pipe.tokenizer(
        PROMPT, padding="max_length", max_length=COMMON["max_sequence_length"], truncation=True, return_tensors="pt"
    ).input_ids
    call = dict(prompt=PROMPT, **COMMON)
    grad = leaf_gradient(pipe, embed, ids, region, **call)
    for row, unit in enumerate(out.session.trace.prompt_tokens[0].units):
        np.testing.assert_allclose(
            out.token_gradients[row], grad[0, unit.token_index], rtol=1e-5, atol=1e-7 * float(grad.abs().max())
        )
    assert central_difference(pipe, embed, ids, grad, 1e-3, region, **call) == pytest.approx(
        float(grad.norm()), rel=1e-3
    )


def test_per_frame_word_maps_equal_an_independent_computation(ltx):
    # Each block's cross-attention from its own projections (queries and keys normed over all heads, as the processor
    # norms them), a softmax over the prompt's own tokens (the padding, masked by the pipeline, and the end token are
    # left out), the prompt's row of the [negative, prompt] batch, heads, layers and steps averaged; each latent frame
    # upsampled to a frame and shown on the frames the VAE makes of it (1, then 4 each).
    out = explain(ltx, attribution_method="attention", guidance_scale=3.0)
    positions = list(out.session.trace.prompt_tokens[0].positions)
    layers = [block.attn2 for block in ltx.transformer.transformer_blocks]
    captured = layer_calls(layers, lambda: ltx(PROMPT, generator=seeded(0), guidance_scale=3.0, **COMMON))
    per_layer = []
    for attn, args, kwargs in captured:
        hidden, text = args[0][1:], kwargs["encoder_hidden_states"][1:]  # the prompt's row
        heads = attn.heads
        q = attn.norm_q(attn.to_q(hidden)).unflatten(-1, (heads, -1)).transpose(1, 2)
        k = attn.norm_k(attn.to_k(text)).unflatten(-1, (heads, -1)).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        per_layer.append(scores[..., positions].softmax(-1).mean(1)[0])  # (video tokens, prompt tokens)
    probs = torch.stack(per_layer).mean(0)
    expected = per_frame(probs.T.reshape(len(positions), LATENT_FRAMES, CELLS, CELLS))
    np.testing.assert_allclose(out.attention_maps.maps[0][positions], expected, atol=1e-5)
    assert 0 < out.attention_sink_share < 1  # the end token's share (the padding's is masked to nothing)


def test_self_attention_of_a_region_of_a_frame_equals_an_independent_computation(ltx):
    # A 4x4 box at the top left of frame 5: frame 5 is made of latent frame 2, whose top-left cell is the one query
    # (token 2 x 64). Each block's `attn1` from its own projections, normed over all heads, each pair of features
    # turned as a complex number by the layer's rotary embedding; softmax over the video's tokens, the query's row,
    # heads, layers and steps averaged (the prompt's row of the batch); shown on every frame of each latent frame.
    box = ((0, 5 * SIZE), (4, 5 * SIZE + 4))
    recorder = record_self_attention(ltx, box=box)

    def run():
        with recorder:
            ltx(PROMPT, generator=seeded(0), guidance_scale=3.0, **COMMON)

    captured = layer_calls([block.attn1 for block in ltx.transformer.transformer_blocks], run)
    per_layer = []
    for attn, _, kwargs in captured:
        hidden, (cos, sin) = kwargs["hidden_states"][1:], kwargs["image_rotary_emb"]
        turn = torch.polar(torch.ones_like(cos[:1, :, 0::2]), torch.atan2(sin[:1, :, 0::2], cos[:1, :, 0::2]))
        q, k = attn.norm_q(attn.to_q(hidden)), attn.norm_k(attn.to_k(hidden))
        q, k = (
            torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * turn).flatten(-2)
            for x in (q, k)
        )
        q, k = (x.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for x in (q, k))
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        per_layer.append(scores.softmax(-1).mean(1)[0, 2 * CELLS * CELLS])  # the query token's row, heads averaged
    probs = torch.stack(per_layer).mean(0).reshape(LATENT_FRAMES, CELLS, CELLS)
    np.testing.assert_allclose(recorder.maps.maps[0, 0], per_frame(probs), atol=1e-6)


def test_a_box_over_frames_re_explained_is_a_fresh_call_and_checkpointing_changes_nothing(ltx):
    def checkpointed(**kwargs):
        explainer = explainer_for(ltx, verbose=False, gradient_checkpointing=True)
        return explainer(PROMPT, generator=seeded(0), attribution_method="grad_x_input", **COMMON, **kwargs)

    assert_a_box_over_frames_re_explained_is_a_fresh_call(lambda **kwargs: explain(ltx, **kwargs), checkpointed, SIZE)


def test_state_restored_after_an_injected_exception(ltx):
    explain(ltx, prompt_dependence=False)  # transformers' own hooks appear at a first run (see test_controlnet)
    assert_state_restored_after_an_injected_exception(ltx, lambda **kwargs: explain(ltx, **kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=8), r"`num_frames=8` is not a clip .* would make 5 frames"),
        (dict(explanation_frames=(5, 12)), r"not a span of the clip's 9 frames"),
        (dict(height=48), "multiple of 32"),
        (dict(attribution_method="concept_attention"), "needs a text stream"),
    ],
)
def test_what_ltx_cannot_explain_is_refused_before_any_model_runs(ltx, kwargs, message):
    assert_refused_before_any_model_runs(ltx.transformer, lambda: explain(ltx, **kwargs), message)


def test_the_cli_explains_a_saved_ltx_clip_over_frames(tmp_path):
    from diffusers_interpret.cli import main

    make_tiny_ltx_pipeline().save_pretrained(tmp_path / "model")
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--steps", "2", "--quiet", "--height", "32"]
    argv += ["--width", "32", "--num-frames", "9", "--frames", "1", "5", "--box", "0,0,16,32"]
    assert main([*argv, "--max-sequence-length", "24", "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "the box ((0, 0), (16, 32)) on frames 1 to 4 of the clip" in page
    assert page.count('data-word="') == len(PROMPT.split()) + 1


def test_every_kind_of_map_works_on_an_ltx_clip(ltx, tmp_path):
    # Raw records per layer x step, upsampled per latent frame and averaged, are the recorded maps; the text has no
    # queries of its own (refused, saying so); the exported word maps are the output's.
    from diffusers_interpret import record_cross_attention, record_text_relations

    with record_cross_attention(ltx, keep_per_layer=True, keep_per_step=True) as recorder:
        ltx(PROMPT, generator=seeded(0), **COMMON)
    maps = recorder.maps
    per_layer = [per_frame(records.unflatten(-2, (LATENT_FRAMES, -1))) for records in maps.per_layer.values()]
    per_step = torch.stack(per_layer).mean(0)
    np.testing.assert_allclose(per_step, maps.per_step, atol=1e-6)
    np.testing.assert_allclose(per_step.mean(0), maps.maps, atol=1e-6)
    with pytest.raises(ValueError, match="no text-to-text attention"):
        with record_text_relations(ltx):
            ltx(PROMPT, generator=seeded(0), **COMMON)
    out = explain(ltx, attribution_method="word_attention")
    out.export_maps(tmp_path)
    words = np.load(tmp_path / "maps.npz")["words"]
    assert words.shape == (len(out.word_attributions), FRAMES * SIZE, SIZE)
    for word, tokens in zip(words, out.word_tokens):
        np.testing.assert_allclose(word, np.sum([out.word_maps[t] for t in tokens], axis=0), rtol=1e-6)


def test_image_to_video_is_the_pipelines_clip_and_its_pixel_gradients_are_finite_differences():
    # LTXImageToVideoPipeline (float64, guidance 3: [negative, prompt] rows): the clip is the pipeline's; the gradient
    # of a box over frames 0 to 4 to the image's pixels, through the VAE's sample of the image's latents (the clip's
    # first latent frame, told timestep 0), equals the central difference of the pipeline's own clips along it (the
    # posterior's noise drawn from the same generator each time).
    from diffusers_interpret import LTXImageToVideoPipelineExplainer

    pipe = make_tiny_ltx_pipeline(dtype=torch.float64, kind="image2video")
    x = 0.25 + 0.5 * torch.from_numpy(np.random.default_rng(0).random((3, SIZE, SIZE)))[None]
    call = dict(COMMON, guidance_scale=3.0)

    def clip_along(unit, eps):
        return pipe(prompt=PROMPT, image=x + eps * unit[None], generator=seeded(0), output_type="pt", **call).frames[0]

    explainer, expected = assert_image_to_video_pixel_gradients_are_central_differences(
        pipe, LTXImageToVideoPipelineExplainer, PROMPT, x, (SIZE, SIZE), call, ((0, 0), (16, SIZE)), (0, 5),
        clip_along,
    )  # fmt: skip
    word = explainer(PROMPT, image=x, generator=seeded(0), output_type="np", **call)  # word_attention
    np.testing.assert_array_equal(np.stack(word.frames), expected)
    assert [w for w, _ in word.word_attributions] == PROMPT.split()
