"""The memory guard: its estimate counts what autograd really keeps, and it refuses before the first step runs."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, SIZE, seeded
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

from diffusers_interpret import StableDiffusionPipelineExplainer, explainer_for, memory
from diffusers_interpret.memory import GiB, MemoryEstimate, NotEnoughMemoryError
from diffusers_interpret.tracing.estimate import estimate_memory


def measured_saved_bytes(module, run, *inputs) -> int:
    # Independent of the estimate: the real forward pass, its saved tensors counted by storage (weights left out).
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs = [x.detach().clone().requires_grad_(True) if x.is_floating_point() else x for x in inputs]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run(*inputs)
    return sum(saved.values())


def most_held_bytes(module, run, *inputs) -> int:
    # Independent of the estimate: the most bytes of saved tensors (weights left out) held at once over the real
    # forward and backward pass (a checkpointed block's recomputation saves and frees its own in the backward pass).
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    held, most = {}, [0]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in weights:
            return tensor
        held[storage.data_ptr()] = storage.nbytes()
        most[0] = max(most[0], sum(held.values()))
        return (tensor, storage.data_ptr())

    def unpack(packed):
        if isinstance(packed, tuple):
            held.pop(packed[1], None)
            return packed[0]
        return packed

    inputs = [x.detach().clone().requires_grad_(True) if x.is_floating_point() else x for x in inputs]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        run(*inputs).square().sum().backward()
    return most[0]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_counts_the_tensors_a_real_traced_call_keeps(tiny_pipe, checkpointing):
    # The guard captures the first denoiser call's real inputs; its per-call and decoder counts must equal what a
    # real forward pass with grad saves for the backward pass.
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False, gradient_checkpointing=checkpointing)
    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("call", (args, kwargs))

    handle = tiny_pipe.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        out = explainer(PROMPT, num_inference_steps=3, attribution_method="grad_x_input", generator=seeded(0))
    finally:
        handle.remove()
    estimate = out.extras["memory_estimate"]
    assert estimate.traced_calls == 3 and estimate.checkpointed == checkpointing and not estimate.blocks
    assert estimate.available is not None and estimate.available > 0
    args, kwargs = captured["call"]
    sample, timestep = args[:2] if len(args) > 1 else (args[0], kwargs["timestep"])
    hidden = kwargs["encoder_hidden_states"]
    assert estimate.per_call == measured_saved_bytes(
        tiny_pipe.unet, lambda x, h: tiny_pipe.unet(x, timestep, encoder_hidden_states=h), sample, hidden
    )
    latents = torch.randn(1, 4, SIZE // tiny_pipe.vae_scale_factor, SIZE // tiny_pipe.vae_scale_factor)
    decode = (tiny_pipe.vae, lambda z: tiny_pipe.vae.decode(z).sample, latents)
    if not checkpointing:
        assert estimate.decoder == measured_saved_bytes(*decode)
        return
    # A checkpointed decode is recomputed with the VAE's own block checkpointing on: its count (the blocks' inputs,
    # what runs outside them, and the largest block's recomputation) is at least the most a real forward and
    # backward pass under it holds at once as this hook sees it (it does not see what a block's recomputation saves:
    # torch's checkpoint keeps that with hooks of its own), and well under the whole decode's activations.
    from diffusers_interpret.tracing.checkpoint import BlockCheckpointing

    with BlockCheckpointing(tiny_pipe.vae):
        held = most_held_bytes(*decode)
    assert held <= estimate.decoder < 0.8 * measured_saved_bytes(*decode), (estimate.decoder, held)


def test_a_recomputation_that_does_not_fit_whole_is_checkpointed_by_block(tiny_pipe, monkeypatch):
    # With less free memory than a checkpointed call's whole recomputation needs, but enough for its blocks one at a
    # time, the guard turns the denoiser's own block checkpointing on for the recomputation instead of refusing: the
    # scores are the same, the UNet's blocks run once more.
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False, gradient_checkpointing=True)
    call = dict(num_inference_steps=3, attribution_method="grad_x_input")
    whole = explainer(PROMPT, generator=seeded(0), **call)
    fitting = whole.extras["memory_estimate"]
    runs = []
    handle = tiny_pipe.unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *a: runs.append(1))
    try:
        explainer(PROMPT, generator=seeded(0), **call)
        plain_runs, runs[:] = len(runs), []
        monkeypatch.setattr(memory, "available_memory", lambda device: fitting.peak - 1)
        blocks = explainer(PROMPT, generator=seeded(0), **call)
    finally:
        handle.remove()
    estimate = blocks.extras["memory_estimate"]
    assert estimate.blocks and estimate.fits and estimate.peak < fitting.peak
    assert len(runs) > plain_runs  # the blocks were recomputed once more in the backward pass
    np.testing.assert_allclose(blocks.token_attributions.scores, whole.token_attributions.scores, rtol=1e-5)
    np.testing.assert_array_equal(blocks.image, whole.image)


def test_a_call_that_does_not_fit_is_refused_before_its_first_step(tiny_pipe, monkeypatch):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False, gradient_checkpointing=False)
    reference = tiny_pipe(PROMPT, num_inference_steps=3, generator=seeded(0), output_type="np").images
    ran = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: ran.append(1))
    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    try:
        with pytest.raises(NotEnoughMemoryError) as refused:
            explainer(PROMPT, num_inference_steps=3, attribution_method="grad_x_input")
        assert not ran  # refused before the denoiser ran once
        message = str(refused.value)
        for way in ("would need about", "gradient_checkpointing=True", "n_last_diffusion_steps", "check_memory=False"):
            assert way in message
        # Going on anyway works, and the attention methods keep no graph: nothing to refuse.
        out = explainer(PROMPT, num_inference_steps=3, attribution_method="grad_x_input", check_memory=False)
        assert np.abs(out.token_attributions.scores).sum() > 0
        explainer(PROMPT, num_inference_steps=3, attribution_method="word_attention")
    finally:
        handle.remove()
    # Nothing of the refused call stays behind: the pipeline makes the same image.
    again = tiny_pipe(PROMPT, num_inference_steps=3, generator=seeded(0), output_type="np").images
    np.testing.assert_array_equal(again, reference)


def test_the_guard_also_covers_regenerating_methods(tiny_pipe, monkeypatch):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    with pytest.raises(NotEnoughMemoryError):
        explainer(PROMPT, num_inference_steps=2, attribution_method="integrated_gradients", generator=seeded(0))


def test_the_estimate_grows_with_traced_steps_and_checkpointing_bounds_it(tiny_pipe):
    estimates = {}
    for traced in (1, 4):
        for checkpointing in (False, True):
            explainer = explainer_for(tiny_pipe, verbose=False, gradient_checkpointing=checkpointing)
            out = explainer(
                PROMPT,
                num_inference_steps=4,
                get_images_for_all_inference_steps=False,
                n_last_diffusion_steps_to_consider_for_attributions=traced,
                attribution_method="grad_x_input",
            )
            estimates[traced, checkpointing] = out.extras["memory_estimate"]
    assert {key: estimate.traced_calls for key, estimate in estimates.items()} == {key: key[0] for key in estimates}
    assert {key: estimate.checkpointed for key, estimate in estimates.items()} == {key: key[1] for key in estimates}
    # Without checkpointing every traced call keeps its activations; with it, only its inputs.
    assert estimates[4, False].peak - estimates[1, False].peak == 3 * estimates[1, False].per_call
    assert estimates[4, True].peak - estimates[1, True].peak == 3 * estimates[1, True].call_inputs


def sd14_size_img2img_on_meta():
    # Stable Diffusion 1.4's UNet and VAE, shapes only (nothing allocated), in a real img2img pipeline.
    from diffusers_interpret.testing import make_tiny_components

    small = make_tiny_components(sample_size=16, layers_per_block=1)
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
        )
    components = dict(small, unet=unet, vae=vae)
    pipe = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    pipe._guidance_scale = 7.5
    return pipe


def test_the_original_readmes_23_gb_img2img_call_is_stopped_and_checkpointing_lets_it_run():
    # The 0.5.0 README's img2img example: 448x448, strength 0.75 of 50 steps (37 traced), no checkpointing, which
    # grew a 24 GB machine's process to 23 GB before the kernel killed it.
    pipe = sd14_size_img2img_on_meta()
    args = (torch.empty(2, 4, 56, 56, device="meta"), torch.tensor(999))
    kwargs = dict(encoder_hidden_states=torch.empty(2, 77, 768, device="meta"), return_dict=False)
    family = explainer_for(pipe).family
    estimate = estimate_memory(pipe, family, pipe.unet, args, kwargs, 37, False, (448, 448), pixels=True)
    assert estimate.peak > 23 * GiB
    machine = estimate.replace(available=20 * GiB)  # this machine's free memory, about
    assert not machine.fits and "GiB" in machine.message() and "gradient_checkpointing=True" in machine.message()
    assert machine.replace(checkpointed=True).fits
    assert isinstance(estimate, MemoryEstimate) and estimate.encoder > 0


@pytest.mark.parametrize("family_name", ["flux", "flux2_klein"])
def test_the_estimate_counts_the_text_encoders_graph(family_name):
    # At the token_embeddings level a traced run keeps the text encoders' graph from the prompt's token embeddings to
    # the conditioning (a gradient through T5, or through an LLM): the guard counts it on shape-only copies of the
    # encoders, near what the pipeline's own encode_prompt keeps, counted as it runs.
    from diffusers_interpret.families import family_for
    from diffusers_interpret.text.encoding import encode_with_graph
    from diffusers_interpret.tracing.estimate import text_encoder_bytes

    if family_name == "flux":
        from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline

        pipe, call = make_tiny_flux_pipeline(), {"max_sequence_length": TINY_T5_LENGTH}
    else:
        from diffusers_interpret.testing.flux2 import TINY_FLUX2_CALL, make_tiny_flux2_klein_pipeline

        pipe, call = make_tiny_flux2_klein_pipeline(), dict(TINY_FLUX2_CALL)
    family = family_for(pipe)
    weights = {p.untyped_storage()._cdata for m in pipe.components.values() if isinstance(m, torch.nn.Module)
               for p in [*m.parameters(), *m.buffers()]}  # fmt: skip
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    prompts = {"prompt": ["a red circle on the left", "a blue square"]}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        encoding = encode_with_graph(family, pipe, prompts, call, torch.device("cpu"))
    lengths = [leaf.shape[1] for leaf in encoding.token_leaves]
    estimate = text_encoder_bytes(pipe, family, 2, lengths)
    kept = sum(saved.values())
    # Measured: 92% (T5) and 82% (Qwen3) of what is kept; an estimate blind to the text encoders is 0.
    assert kept > 0 and 0.75 * kept <= estimate <= 1.25 * kept, (estimate, kept)
