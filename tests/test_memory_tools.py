r"""
diffusers' memory tools under the explainer (issue #27), on the tiny SD pipeline, on the CPU: with each tool the
explained image is still `pipe()`'s under the same tool, no weight gets a gradient, and the scores are those without
the tool where the tool does not change the arithmetic (offloading, VAE slicing), or rank the words as they do
without it where it does (VAE tiling blends tiles, layerwise casting stores weights in bfloat16).
`torch.compile` is checked by `benchmarks/memory_tools.py` (its compilation takes about a minute on the CPU).
Sequential CPU offload fails in `pipe()` itself on this stack (accelerate with torch 2.13): the explainer refuses it
with a message that names diffusers' group offloading instead (tested below).
"""

import contextlib

import numpy as np
import pytest
import torch

from diffusers_interpret import explainer_for
from diffusers_interpret.faithfulness import spearman
from diffusers_interpret.testing import make_tiny_pipeline

CPU = torch.device("cpu")
TOOLS = {
    "vae_tiling": (lambda pipe: pipe.vae.enable_tiling(), False),
    "vae_slicing": (lambda pipe: pipe.vae.enable_slicing(), True),
    "model_cpu_offload": (lambda pipe: pipe.enable_model_cpu_offload(device="cpu"), True),
    "group_offload": (
        lambda pipe: pipe.unet.enable_group_offload(
            onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
        ),
        True,
    ),
    "layerwise_casting": (
        lambda pipe: pipe.unet.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32),
        False,
    ),
}
CALL = dict(num_inference_steps=3, output_type="np", height=64, width=64, get_images_for_all_inference_steps=False)
PROMPT = "a red circle on the left and a blue square on the right"


def explained(pipe, method):
    explainer = explainer_for(pipe, verbose=False)
    return explainer(PROMPT, generator=torch.Generator().manual_seed(0), attribution_method=method, **CALL)


@pytest.fixture(scope="module")
def without_tools():
    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    return {method: explained(pipe, method) for method in ("grad_x_input", "word_attention")}


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("method", ["grad_x_input", "word_attention"])
def test_memory_tool(tool, method, without_tools):
    apply, exact = TOOLS[tool]
    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    apply(pipe)
    if tool == "vae_tiling":  # tiles smaller than the image, so that the decode is tiled
        pipe.vae.tile_sample_min_size = 32
        pipe.vae.tile_latent_min_size = 32 // pipe.vae_scale_factor
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(True)  # as `from_pretrained` leaves them
    expected = pipe(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np",
                    height=64, width=64).images[0]  # fmt: skip
    output = explained(pipe, method)
    assert np.array_equal(output.image, expected)  # the image is pipe()'s, under the same tool
    weights = [p for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()]
    assert all(p.grad is None for p in weights)
    scores, reference = output.token_attributions.scores, without_tools[method].token_attributions.scores
    assert np.isfinite(scores).all()
    if exact:
        np.testing.assert_allclose(scores, reference, rtol=1e-4)
    else:
        assert spearman(scores, reference) > 0.9


def test_gradients_through_the_tiled_decode_match_finite_differences():
    # VAE tiling changes the arithmetic (tiles decoded apart and blended): the gradient through it is checked against
    # a central finite difference of the box's sum through `pipe()` with the same tiling, in float64.
    pipe = make_tiny_pipeline("text2img", dtype=torch.float64, sample_size=16, layers_per_block=1)
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size = 32
    pipe.vae.tile_latent_min_size = 32 // pipe.vae_scale_factor
    box, steps, eps, prompt = ((5, 20), (50, 60)), 3, 1e-3, "a blue square on the left"
    call = dict(num_inference_steps=steps, height=64, width=64)
    output = explainer_for(pipe, verbose=False)(
        prompt, generator=torch.Generator().manual_seed(0), explanation_2d_bounding_box=box,
        attribution_method="grad_x_input", attribution_level="text_encoder_output", prompt_dependence=False,
        get_images_for_all_inference_steps=False, **call,
    )  # fmt: skip
    positive, negative = pipe.encode_prompt(prompt, "cpu", 1, True)
    (x0, y0), (x1, y1) = box

    def box_sum(direction):
        images = pipe(
            prompt_embeds=positive + direction, negative_prompt_embeds=negative, output_type="pt",
            generator=torch.Generator().manual_seed(0), **call,
        ).images  # fmt: skip
        return float(images[0, :, y0:y1, x0:x1].sum())

    for row, position in enumerate(output.token_positions[:4]):
        direction = torch.zeros_like(positive)
        direction[0, position] = positive[0, position] * eps
        finite = (box_sum(direction) - box_sum(-direction)) / (2 * eps)
        ours = float((output.token_gradients[row] * output.token_embeddings[row]).sum())
        assert ours == pytest.approx(finite, rel=1e-3, abs=1e-9), (row, ours, finite)


def test_the_decoder_checkpointed_by_block_keeps_less_and_gives_the_same_gradient():
    # The explainer's decode turns on the VAE's own gradient checkpointing for its length: the graph keeps the
    # decoder blocks' inputs, the backward pass recomputes one block at a time; the gradient is the same.
    from diffusers_interpret.tracing.checkpoint import BlockCheckpointing

    vae = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1).vae
    latents = torch.randn(1, vae.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for scope in (contextlib.nullcontext(), BlockCheckpointing(vae)):
        z = latents.clone().requires_grad_(True)
        saved = {}

        def pack(tensor, saved=saved):
            saved[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
            return tensor

        with scope, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            image = vae.decode(z).sample
        image.square().sum().backward()
        results.append((sum(saved.values()), z.grad))
    (plain_bytes, plain_grad), (checkpointed_bytes, checkpointed_grad) = results
    torch.testing.assert_close(checkpointed_grad, plain_grad, rtol=1e-5, atol=1e-6)
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in vae.modules())  # put back


def test_accelerates_sequential_offload_is_refused_with_what_to_use_instead():
    # `pipe()` itself fails under sequential CPU offload on this stack, so the explainer cannot be tested with it; its
    # hooks (accelerate's) cannot be told to recompute in the backward pass either: the call is refused at the door,
    # before any model runs, naming the tool and diffusers' group offloading instead.
    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    pipe.enable_sequential_cpu_offload(device="cpu")
    ran = []
    pipe.text_encoder.register_forward_pre_hook(lambda *a: ran.append(1))
    with pytest.raises(ValueError) as refused:
        explainer_for(pipe, verbose=False)(PROMPT, generator=torch.Generator().manual_seed(0), **CALL)
    message = str(refused.value)
    assert "enable_sequential_cpu_offload()" in message and "enable_group_offload(" in message and not ran


def test_the_guard_counts_the_weights_model_offload_brings_to_the_device():
    # Under model CPU offload the guard runs before the denoiser's offload hook brings its weights, and the VAE's come
    # for the decode: both are on the device through the backward pass, in place of the text encoders. Here the
    # device is "meta" (a stand-in for an accelerator: the CPU is the offload device) and the sums are counted apart.
    from diffusers_interpret.tracing.estimate import weights_arriving

    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    pipe.enable_model_cpu_offload(device="cpu")

    def size(model):
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    needed = [pipe.unet, pipe.vae]
    meta = torch.device("meta")
    # The offload device is the device itself: nothing moves.
    assert weights_arriving(pipe, needed, torch.device("cpu")) == 0
    assert weights_arriving(pipe, needed, meta) == size(pipe.unet) + size(pipe.vae)
    pipe.text_encoder.to(meta)  # on the device: it leaves as the denoiser arrives
    assert weights_arriving(pipe, needed, meta) == size(pipe.unet) + size(pipe.vae) - size(pipe.text_encoder)
    pipe.unet.to(meta)
    assert weights_arriving(pipe, needed, meta) == max(size(pipe.vae) - size(pipe.text_encoder), 0)
    # Without model offload, nothing is counted whatever is where.
    plain = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    assert weights_arriving(plain, [plain.unet, plain.vae], meta) == 0


def test_an_explanation_under_model_offload_says_what_its_weights_add(monkeypatch):
    # The estimate's peak and refusal message carry the weights model offload brings, as read at the first call.
    from diffusers_interpret import memory
    from diffusers_interpret.tracing import estimate

    pipe = make_tiny_pipeline("text2img", sample_size=16, layers_per_block=1)
    TOOLS["model_cpu_offload"][0](pipe)
    explainer = explainer_for(pipe, verbose=False)
    call = dict(CALL, attribution_method="grad_x_input", generator=torch.Generator().manual_seed(0))
    plain = explainer(PROMPT, **call).extras["memory_estimate"]
    assert plain.weights_arriving == 0  # the offload device is the device: nothing moves on the CPU
    monkeypatch.setattr(estimate, "weights_arriving", lambda pipe, needed, device: 3 * memory.GiB)
    monkeypatch.setattr(memory, "available_memory", lambda device: plain.peak + memory.GiB)
    with pytest.raises(memory.NotEnoughMemoryError) as refused:
        explainer(PROMPT, **call)
    assert "3.00 GiB of weights model offload brings" in str(refused.value)
    assert "enable_group_offload" in str(refused.value)
