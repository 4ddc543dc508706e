"""StableDiffusionPipelineExplainer on a tiny offline pipeline: identity with pipe(), gradients, boxes, state."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, seeded
from PIL import Image

from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.box import draw_box

STEPS = 5


class GradientExplainer(StableDiffusionPipelineExplainer):
    # These tests check the gradient machinery: the original's method, whatever the library's default.
    def __call__(self, *args, **kwargs):
        kwargs.setdefault("attribution_method", "grad_x_input")
        return super().__call__(*args, **kwargs)


def explain(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("get_images_for_all_inference_steps", False)
    return GradientExplainer(pipe, verbose=False)(prompt, generator=seeded(seed), **kwargs)


@pytest.mark.parametrize("n_traced", [0, 1, 2, None])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_image_is_the_pipelines_image(tiny_pipe, n_traced, checkpointing):
    expected = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(3), output_type="np").images[0]
    explainer = GradientExplainer(tiny_pipe, verbose=False, gradient_checkpointing=checkpointing)
    out = explainer(
        PROMPT,
        num_inference_steps=STEPS,
        generator=seeded(3),
        output_type="np",
        n_last_diffusion_steps_to_consider_for_attributions=n_traced,
        get_images_for_all_inference_steps=False,
    )
    np.testing.assert_array_equal(out.image, expected)
    assert (out.token_attributions is None) == (n_traced == 0)


def test_pil_image_and_other_pipeline_arguments_pass_through(tiny_pipe):
    kwargs = dict(guidance_scale=3.0, negative_prompt="green triangle", eta=0.5, num_inference_steps=4)
    expected = tiny_pipe(PROMPT, generator=seeded(1), **kwargs).images[0]
    out = explain(tiny_pipe, seed=1, n_last_diffusion_steps_to_consider_for_attributions=2, **kwargs)
    assert np.array_equal(np.asarray(out.image), np.asarray(expected))
    no_cfg = explain(tiny_pipe, guidance_scale=1.0, n_last_diffusion_steps_to_consider_for_attributions=2)
    expected = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(0), guidance_scale=1.0).images[0]
    assert np.array_equal(np.asarray(no_cfg.image), np.asarray(expected))
    assert no_cfg.token_attributions is not None


def _box_sum(images: torch.Tensor, box) -> torch.Tensor:
    # Independent of the library: slice rows y0:y1 and columns x0:x1 of (B, C, H, W) images.
    (x0, y0), (x1, y1) = box
    return images[..., y0:y1, x0:x1].sum()


@pytest.mark.parametrize("n_traced", [None, 2])
def test_encoder_output_gradient_matches_finite_differences(tiny_pipe64, n_traced):
    pipe, box, steps, eps = tiny_pipe64, ((3, 5), (20, 15)), 4, 1e-3
    prompt = "a blue square on the left"
    out = explain(
        pipe,
        prompt=prompt,
        num_inference_steps=steps,
        explanation_2d_bounding_box=box,
        attribution_level="text_encoder_output",
        n_last_diffusion_steps_to_consider_for_attributions=n_traced,
    )
    pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True)
    first_traced = 0 if n_traced is None else steps - n_traced
    positions = list(range(1, 1 + len(out.token_attributions)))

    def box_sum(direction: torch.Tensor) -> float:
        perturbed = pos + direction

        def swap(pipeline, step, timestep, kwargs):  # the pipeline's own callback swaps the conditioning
            return {"prompt_embeds": torch.cat([neg, perturbed])} if step + 1 == first_traced else {}

        kwargs = dict(callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds"])
        if first_traced == 0:
            kwargs = dict(prompt_embeds=perturbed, negative_prompt_embeds=neg)
        else:
            kwargs.update(prompt_embeds=pos, negative_prompt_embeds=neg)
        images = pipe(num_inference_steps=steps, generator=seeded(0), output_type="pt", **kwargs).images
        return float(_box_sum(images, box))

    for row, position in enumerate(positions):
        direction = torch.zeros_like(pos)
        direction[0, position] = pos[0, position] * eps
        fd = (box_sum(direction) - box_sum(-direction)) / (2 * eps)
        ours = float((out.token_gradients[row] * out.token_embeddings[row]).sum())
        assert ours == pytest.approx(fd, rel=1e-3, abs=1e-6 * abs(fd) + 1e-9), (row, ours, fd)


def test_token_embedding_gradient_matches_finite_differences(tiny_pipe64):
    pipe, box, steps, eps = tiny_pipe64, ((16, 0), (32, 32)), 3, 1e-3
    prompt = "a red circle on the right"
    out = explain(pipe, prompt=prompt, num_inference_steps=steps, explanation_2d_bounding_box=box)
    assert out.attribution_level == "token_embeddings"
    prompt_ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    prompt_ids = prompt_ids.input_ids

    def box_sum(position: int, scale: float) -> float:
        def perturb(module, args, output):  # only the prompt's row, not the negative prompt's
            if torch.equal(args[0], prompt_ids):
                output = output.clone()
                output[0, position] *= 1 + scale
            return output

        handle = pipe.text_encoder.get_input_embeddings().register_forward_hook(perturb)
        try:
            images = pipe(prompt, num_inference_steps=steps, generator=seeded(0), output_type="pt").images
        finally:
            handle.remove()
        return float(_box_sum(images, box))

    for row in range(len(out.token_attributions)):
        fd = (box_sum(row + 1, eps) - box_sum(row + 1, -eps)) / (2 * eps)
        ours = float((out.token_gradients[row] * out.token_embeddings[row]).sum())
        assert ours == pytest.approx(fd, rel=1e-3), (row, ours, fd)


def test_scores_are_the_documented_aggregations(tiny_pipe):
    outs = {
        m: explain(tiny_pipe, attribution_method=m, n_last_diffusion_steps_to_consider_for_attributions=2)
        for m in ("grad_x_input", "max_grad", "mean_grad", "min_grad")
    }
    g, e = outs["grad_x_input"].token_gradients, outs["grad_x_input"].token_embeddings
    expected = {
        "grad_x_input": (g * e).norm(dim=-1),
        "max_grad": g.abs().max(-1).values,
        "mean_grad": g.abs().mean(-1),
        "min_grad": g.abs().min(-1).values,
    }
    for method, out in outs.items():
        np.testing.assert_allclose(out.token_attributions.scores, expected[method].numpy(), rtol=1e-5)
        assert sum(v for _, v in out.token_attributions.normalized) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="attribution_method"):
        explain(tiny_pipe, attribution_method="saliency")
    with pytest.raises(ValueError, match="attribution_level"):
        explain(tiny_pipe, attribution_level="pixels")


def test_gradient_checkpointing_gives_the_same_gradients(tiny_pipe):
    kwargs = dict(
        n_last_diffusion_steps_to_consider_for_attributions=3, explanation_2d_bounding_box=((0, 0), (10, 25))
    )
    plain = explain(tiny_pipe, **kwargs)
    explainer = GradientExplainer(tiny_pipe, verbose=False, gradient_checkpointing=True)
    ckpt = explainer(
        PROMPT, num_inference_steps=STEPS, generator=seeded(0), get_images_for_all_inference_steps=False, **kwargs
    )
    torch.testing.assert_close(ckpt.token_gradients, plain.token_gradients, rtol=1e-5, atol=1e-9)


def test_box_changes_attributions_and_is_drawn_exactly(tiny_pipe):
    box = ((4, 2), (20, 15))
    whole = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=2, output_type="np")
    boxed = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=2, explanation_2d_bounding_box=box)
    assert boxed.explanation_2d_bounding_box == box
    assert whole.explanation_2d_bounding_box is None
    assert not np.allclose(whole.token_attributions.scores, boxed.token_attributions.scores)
    plain = (whole.image * 255).round().astype(np.uint8)
    drawn = np.asarray(boxed.image)
    changed = np.argwhere((drawn != plain).any(-1))
    red = np.argwhere((drawn == [255, 0, 0]).all(-1))
    # the outline covers the box's first and last rows and columns: its extent is exactly the explained region
    assert red[:, 0].min() == 2 and red[:, 0].max() == 14 and red[:, 1].min() == 4 and red[:, 1].max() == 19
    assert changed[:, 0].min() >= 2 and changed[:, 0].max() <= 14
    # a flat (x0, y0, x1, y1) box means the same
    flat = explain(
        tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=2, explanation_2d_bounding_box=(4, 2, 20, 15)
    )
    np.testing.assert_allclose(flat.token_attributions.scores, boxed.token_attributions.scores)


def test_draw_box_convention():
    image = draw_box(Image.new("RGB", (10, 6), "white"), ((1, 2), (4, 6)))
    red = np.argwhere((np.asarray(image) == [255, 0, 0]).all(-1))
    assert (red[:, 0].min(), red[:, 0].max(), red[:, 1].min(), red[:, 1].max()) == (2, 5, 1, 3)


@pytest.mark.parametrize(
    "box, match",
    [
        (((10, 10), (5, 20)), "empty or inverted"),
        (((10, 10), (10, 20)), "empty or inverted"),
        (((0, 0), (33, 10)), "outside"),
        (((-1, 0), (5, 10)), "outside"),
        ((1, 2, 3), "must be"),
        ("box", "must be"),
    ],
)
def test_bad_boxes_are_rejected_before_generating(tiny_pipe, box, match):
    with pytest.raises(ValueError, match=match):
        explain(tiny_pipe, explanation_2d_bounding_box=box)


def test_bad_arguments(tiny_pipe):
    with pytest.raises(ValueError, match="n_last_diffusion_steps"):
        explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=-1)
    with pytest.raises(ValueError, match="prompt"):
        explain(tiny_pipe, prompt="")
    with pytest.raises(ValueError, match="prompt_embeds"):
        explain(tiny_pipe, prompt_embeds=torch.zeros(1, 77, 32))
    with pytest.raises(ValueError, match="output_type"):
        explain(tiny_pipe, output_type="latent")
    with pytest.raises(TypeError, match="Stable Diffusion pipeline"):
        GradientExplainer(object())


def test_more_traced_steps_than_steps_traces_all(tiny_pipe):
    all_steps = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=None)
    too_many = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=STEPS + 10)
    np.testing.assert_allclose(too_many.token_attributions.scores, all_steps.token_attributions.scores, rtol=1e-6)
    fewer = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=1)
    assert not np.allclose(fewer.token_attributions.scores, all_steps.token_attributions.scores)


def test_tokens_clean_and_special_tokens(tiny_pipe):
    out = explain(tiny_pipe, prompt="a yellow square", n_last_diffusion_steps_to_consider_for_attributions=1)
    assert out.token_attributions.tokens == ["a", "yellow", "square"]
    raw = explain(
        tiny_pipe,
        prompt="a yellow square",
        n_last_diffusion_steps_to_consider_for_attributions=1,
        consider_special_tokens=True,
        clean_token_prefixes_and_suffixes=False,
    )
    assert raw.token_attributions.tokens == ["<|startoftext|>", "a</w>", "yellow</w>", "square</w>", "<|endoftext|>"]
    np.testing.assert_allclose(raw.token_attributions.scores[1:4], out.token_attributions.scores, rtol=1e-6)


def test_global_state_restored_after_success_and_failure(tiny_pipe):
    config_before = dict(tiny_pipe._progress_bar_config)
    explainer = GradientExplainer(tiny_pipe, verbose=True)
    for grad_mode in (True, False):
        torch.set_grad_enabled(grad_mode)
        try:
            explainer(PROMPT, num_inference_steps=3, get_images_for_all_inference_steps=False)
            assert torch.is_grad_enabled() is grad_mode

            def boom(pipe, step, timestep, kwargs):
                if step == 2:  # a traced step, while grad mode is on
                    assert torch.is_grad_enabled()
                    raise KeyError("injected")
                return {}

            with pytest.raises(KeyError, match="injected"):
                explainer(PROMPT, num_inference_steps=3, callback_on_step_end=boom)
            assert torch.is_grad_enabled() is grad_mode
        finally:
            torch.set_grad_enabled(True)
        assert not tiny_pipe.unet._forward_pre_hooks and not tiny_pipe.unet._forward_hooks
        assert not tiny_pipe.text_encoder.get_input_embeddings()._forward_hooks
        assert tiny_pipe._progress_bar_config == config_before
    assert not any(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_calling_twice_gives_the_same_explanation(tiny_pipe):
    explainer = GradientExplainer(tiny_pipe, verbose=False)
    kwargs = dict(num_inference_steps=STEPS, n_last_diffusion_steps_to_consider_for_attributions=2)
    first = explainer(PROMPT, generator=seeded(5), **kwargs)
    second = explainer(PROMPT, generator=seeded(5), **kwargs)
    assert first.token_attributions == second.token_attributions
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_user_callback_is_chained(tiny_pipe):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append((step, sorted(kwargs)))
        return {}

    explain(
        tiny_pipe,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        n_last_diffusion_steps_to_consider_for_attributions=2,
    )
    assert seen == [(i, ["prompt_embeds"]) for i in range(STEPS)]


def test_several_prompts_and_images_each_get_their_own_explanation(tiny_pipe):
    prompts = ["a red circle on the left", "a blue square on the right"]
    latents = torch.randn(4, 4, 16, 16, generator=seeded(7))
    kwargs = dict(n_last_diffusion_steps_to_consider_for_attributions=2, num_images_per_prompt=2)
    outs = explain(tiny_pipe, prompt=prompts, latents=latents, **kwargs)
    expected = tiny_pipe(prompts, num_inference_steps=STEPS, latents=latents, num_images_per_prompt=2).images
    assert len(outs) == 4 and [o.prompt for o in outs] == [p for p in prompts for _ in range(2)]
    for out, image in zip(outs, expected):
        assert np.array_equal(np.asarray(out.image), np.asarray(image))
    kwargs["num_images_per_prompt"] = 1
    for index, out in enumerate(outs):
        single = explain(tiny_pipe, prompt=out.prompt, latents=latents[index : index + 1], **kwargs)
        np.testing.assert_allclose(out.token_attributions.scores, single.token_attributions.scores, rtol=1e-4)
    assert not np.allclose(outs[0].token_attributions.scores, outs[1].token_attributions.scores)


def test_step_images_are_decoded_when_first_looked_at(tiny_pipe):
    # The call decodes its final image only; the steps' images are the pipeline's own step latents decoded, all
    # images of the call at once, the first time one is looked at.
    decodes = []
    handle = tiny_pipe.vae.decoder.register_forward_pre_hook(lambda *a: decodes.append(1))
    try:
        outs = explain(
            tiny_pipe, prompt=[PROMPT, "a yellow triangle"], prompt_dependence=False,
            get_images_for_all_inference_steps=True, n_last_diffusion_steps_to_consider_for_attributions=1,
        )  # fmt: skip
        assert len(decodes) == 1  # the images themselves, one batch
        assert len(outs[0].all_images_during_generation) == STEPS and len(decodes) == 1  # len() decodes nothing
        frames = [list(out.all_images_during_generation) for out in outs]
        assert len(decodes) == 1 + STEPS  # every step once, for both images
        frames[0][2], outs[1].all_images_during_generation[4]  # noqa: B018 (read again: nothing more decoded)
        assert len(decodes) == 1 + STEPS
    finally:
        handle.remove()
    latents = []

    def keep(pipe, step, timestep, callback_kwargs):
        latents.append(callback_kwargs["latents"].detach().clone())
        return {}

    tiny_pipe([PROMPT, "a yellow triangle"], num_inference_steps=STEPS, generator=seeded(0), callback_on_step_end=keep)
    for step, step_latents in enumerate(latents):
        decoded = tiny_pipe.vae.decode(step_latents / tiny_pipe.vae.config.scaling_factor).sample
        for index, expected in enumerate(tiny_pipe.image_processor.postprocess(decoded.detach(), "pil")):
            assert np.array_equal(np.asarray(frames[index][step]), np.asarray(expected)), (index, step)


def test_images_during_generation_slider_and_gif(tiny_pipe, tmp_path):
    out = explain(
        tiny_pipe, get_images_for_all_inference_steps=True, n_last_diffusion_steps_to_consider_for_attributions=1
    )
    frames = out.all_images_during_generation
    assert len(frames) == STEPS and all(isinstance(f, Image.Image) for f in frames)
    assert np.array_equal(
        np.asarray(frames[-1]),
        np.asarray(explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=0).image),
    )
    html = frames._repr_html_()
    assert html.count("data:image/png;base64,") == STEPS + 1 and 'type="range"' in html
    path = frames.gif(tmp_path / "steps.gif", duration=100)
    with Image.open(path) as gif:
        assert gif.n_frames == STEPS


def test_token_attribution_plot(tiny_pipe):
    out = explain(tiny_pipe, n_last_diffusion_steps_to_consider_for_attributions=1)
    fig = out.token_attributions.plot()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == out.token_attributions.tokens


@pytest.mark.parametrize("checkpointing", [False, True])
def test_explain_another_box_without_regenerating(tiny_pipe, checkpointing):
    explainer = GradientExplainer(tiny_pipe, verbose=False, gradient_checkpointing=checkpointing)
    kwargs = dict(num_inference_steps=STEPS, n_last_diffusion_steps_to_consider_for_attributions=2)
    first = explainer(PROMPT, generator=seeded(0), keep_for_reexplanation="graph", **kwargs)
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for box in (((0, 0), (16, 32)), ((16, 0), (32, 32)), None):
            again = first.explain(explanation_2d_bounding_box=box)
            fresh = explainer(
                PROMPT, generator=seeded(0), explanation_2d_bounding_box=box, prompt_dependence=False, **kwargs
            )
            np.testing.assert_allclose(again.token_attributions.scores, fresh.token_attributions.scores, rtol=1e-4)
            assert again.explanation_2d_bounding_box == fresh.explanation_2d_bounding_box
            assert np.array_equal(np.asarray(again.image), np.asarray(fresh.image))
    finally:
        handle.remove()
    # no generation: the UNet ran only in the fresh calls, plus, with checkpointing, once per traced step and backward
    assert len(calls) == 3 * STEPS + (2 * 6 if checkpointing else 0)
    first.release()
    with pytest.raises(RuntimeError, match="released"):
        first.explain(explanation_2d_bounding_box=((0, 0), (8, 8)))
    with pytest.raises(RuntimeError, match="keep_for_reexplanation"):
        explainer(PROMPT, generator=seeded(0), **kwargs).explain(((0, 0), (8, 8)))


@pytest.mark.parametrize("generator", ["one", "list", "global"])
def test_lean_reexplanation_runs_only_the_traced_steps(tiny_pipe, generator):
    # keep_for_reexplanation="latents": a new box replays the untraced steps from kept outputs and runs only the
    # traced ones; the result is a fresh call's, for one generator, a list of them and the global generator.
    # (No checkpointing: it would add a recomputation per traced step to the forward passes counted.)
    explainer = GradientExplainer(tiny_pipe, verbose=False, gradient_checkpointing=False)
    kwargs = dict(num_inference_steps=STEPS, n_last_diffusion_steps_to_consider_for_attributions=2, output_type="np")
    prompts = [PROMPT, "a green triangle on the right"]

    def generators():
        torch.manual_seed(11)
        return {"one": seeded(4), "list": [seeded(4), seeded(5)], "global": None}[generator]

    first = explainer(prompts, generator=generators(), keep_for_reexplanation="latents", **kwargs)
    convolutions = []
    handle = tiny_pipe.unet.conv_in.register_forward_pre_hook(lambda *a: convolutions.append(1))
    try:
        box = ((16, 0), (32, 32))
        again = first[1].explain(explanation_2d_bounding_box=box)
    finally:
        handle.remove()
    assert len(convolutions) == 2  # the two traced steps; the other STEPS - 2 were replayed
    fresh = explainer(prompts, generator=generators(), explanation_2d_bounding_box=box, **kwargs)[1]
    np.testing.assert_allclose(again.token_attributions.scores, fresh.token_attributions.scores, rtol=1e-4)
    assert np.array_equal(again.image, fresh.image)
    assert again.all_images_during_generation is first[1].all_images_during_generation
    again.explain(explanation_2d_bounding_box=None)  # a re-explanation can be re-explained
    with pytest.raises(RuntimeError, match="graph"):
        again.region_grid(8)
    first[0].release()
    with pytest.raises(RuntimeError, match="released"):
        first[1].explain(explanation_2d_bounding_box=box)


def test_region_grid_attention_maps_and_interactive_view(tiny_pipe):
    from diffusers_interpret.views.interactive import box_scores_from_cells

    explainer = GradientExplainer(tiny_pipe, verbose=False)
    kwargs = dict(num_inference_steps=STEPS, n_last_diffusion_steps_to_consider_for_attributions=2)
    out = explainer(
        PROMPT, generator=seeded(0), keep_for_reexplanation="graph", attention_maps=True, output_type="np", **kwargs
    )
    expected = tiny_pipe(PROMPT, generator=seeded(0), output_type="np", num_inference_steps=STEPS).images[0]
    np.testing.assert_array_equal(out.image, expected)  # recording attention changes nothing
    assert out.attention_maps.maps.shape == (1, 77, 32, 32)
    assert tiny_pipe.unet.attn_processors == GradientExplainer(tiny_pipe).pipe.unet.attn_processors
    grid = out.region_grid(cell_size=(8, 16))
    assert grid.shape == (4, 2, len(out.token_attributions), 32)
    # any grid-aligned box is the sum of its cells: rows 1..3 (y 8..24), column 1 (x 16..32)
    fresh = explainer(PROMPT, generator=seeded(0), explanation_2d_bounding_box=((16, 8), (32, 24)), **kwargs)
    np.testing.assert_allclose(box_scores_from_cells(grid, 1, 1, 3, 2), fresh.token_attributions.scores, rtol=1e-4)
    html = out.interactive_view(cell_size=(8, 16))._repr_html_()
    assert "data:image/png;base64," in html and "blue" in html
    with pytest.raises(ValueError, match="cell_size"):
        out.region_grid(cell_size=0)


def test_the_original_readme_attention_slicing_works_with_every_default(tiny_pipe):
    # The 0.5.0 README calls `pipe.enable_attention_slicing()` before explaining: the default method (which records
    # cross-attention) must explain the image the sliced pipeline makes, with no error.
    saved = tiny_pipe.unet.attn_processors
    tiny_pipe.enable_attention_slicing()
    try:
        expected = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(5), output_type="np").images[0]
        out = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)(
            PROMPT, num_inference_steps=STEPS, generator=seeded(5), output_type="np"
        )
        np.testing.assert_array_equal(out.image, expected)
        assert out.attribution_method == "word_attention" and np.isfinite(out.token_attributions.scores).all()
        kinds = {type(p).__name__ for p in tiny_pipe.unet.attn_processors.values()}
        assert kinds == {"SlicedAttnProcessor"}  # the user's processors stay in place
    finally:
        tiny_pipe.unet.set_attn_processor(dict(saved))


def test_checkpointing_is_on_by_default_where_traced_steps_pile_up(tiny_pipe):
    auto = GradientExplainer(tiny_pipe, verbose=False)
    assert auto.checkpoints(None) and auto.checkpoints(3) and not auto.checkpoints(1)
    assert not auto.checkpoints(3, keep="graph")  # a kept graph is reused: recomputing it per use would cost more
    assert not GradientExplainer(tiny_pipe, gradient_checkpointing=False).checkpoints(None)
    assert GradientExplainer(tiny_pipe, gradient_checkpointing=True).checkpoints(1)
    calls = []
    handle = tiny_pipe.unet.conv_in.register_forward_pre_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    try:
        out = auto(
            PROMPT,
            generator=seeded(0),
            num_inference_steps=STEPS,
            n_last_diffusion_steps_to_consider_for_attributions=2,
            prompt_dependence=False,  # its redraws call the UNet too
        )
    finally:
        handle.remove()
    assert out.token_attributions is not None
    assert len(calls) == STEPS + 2  # every step once, and the two traced steps again in the backward pass


@pytest.mark.parametrize("method", ["grad_x_input", "linearized_ablation", "jacobian_norm"])
def test_weights_that_require_grad_get_no_gradient(method):
    # A model loaded with `from_pretrained` has every weight requiring grad: gradients still reach the inputs only
    # (no `.grad` on any weight), the weights are left as they were, and the scores are those of frozen weights.
    from diffusers_interpret.testing import make_tiny_pipeline

    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    frozen = explain(pipe, attribution_method=method, n_last_diffusion_steps_to_consider_for_attributions=2)
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    for module in modules:
        module.requires_grad_(True)
    thawed = explain(pipe, attribution_method=method, n_last_diffusion_steps_to_consider_for_attributions=2)
    parameters = [p for module in modules for p in module.parameters()]
    assert all(p.grad is None for p in parameters)
    assert all(p.requires_grad for p in parameters)
    np.testing.assert_allclose(thawed.token_attributions.scores, frozen.token_attributions.scores, rtol=1e-5)
