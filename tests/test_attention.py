import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PROMPT, SIZE, seeded
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image

from diffusers_interpret.attention import AttentionMaps, record_cross_attention
from diffusers_interpret.tracing.attention import query_grid

STEPS = 3


def generate(pipe, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": seeded(0), "output_type": "np", **kwargs}
    return pipe(PROMPT, **kwargs).images


def cross_attention_names(pipe):
    return [
        name
        for name in pipe.unet.attn_processors
        if pipe.unet.get_submodule(name[: -len(".processor")]).is_cross_attention
    ]


@pytest.fixture(scope="module")
def non_square(tiny_pipe):
    # height != width, CFG on: reference image, image while recording, and the recorder.
    reference = generate(tiny_pipe, height=SIZE, width=48)
    with record_cross_attention(tiny_pipe, keep_per_step=True) as recorder:
        image = generate(tiny_pipe, height=SIZE, width=48)
    return reference, image, recorder.maps


def test_image_bit_identical_while_recording(non_square):
    reference, image, _ = non_square
    # The recording processor runs the same scaled dot-product attention on the same tensors: bit-identical.
    assert np.array_equal(reference, image)


def test_maps_non_square_shape_and_identities(tiny_pipe, non_square):
    _, _, maps = non_square
    num_tokens = tiny_pipe.tokenizer.model_max_length
    assert isinstance(maps, AttentionMaps)
    assert maps.maps.shape == (1, num_tokens, SIZE, 48)
    assert maps.maps.dtype == torch.float32
    assert maps.per_step.shape == (STEPS, 1, num_tokens, SIZE, 48)
    assert maps.steps == list(range(STEPS))
    assert maps.layers == cross_attention_names(tiny_pipe)
    # Means of distributions over tokens, upsampled by convex (bilinear) weights: still distributions.
    torch.testing.assert_close(maps.maps.sum(1), torch.ones(1, SIZE, 48), rtol=0, atol=1e-5)
    # Aggregation is a mean over steps.
    torch.testing.assert_close(maps.per_step.mean(0), maps.maps, rtol=0, atol=1e-6)
    assert not torch.allclose(maps.per_step[0], maps.per_step[-1])


def test_map_views(non_square):
    _, image, maps = non_square
    pil = Image.fromarray((image[0] * 255).round().astype(np.uint8))
    token = maps.for_token(1)
    assert token.shape == (SIZE, 48) and token.dtype == np.float32
    assert token.min() == 0.0 and token.max() == 1.0
    assert maps.heatmap(1).size == (48, SIZE)
    assert maps.overlay(pil, 1, alpha=0.0).tobytes() == pil.tobytes()
    assert maps.overlay(pil, 1, alpha=1.0).tobytes() == maps.heatmap(1).tobytes()
    fig = maps.plot(pil, positions=[1, 2], labels=["a", "</script>"], title="a $x^$ prompt")
    assert len(fig.axes) == 4  # the image, two maps, and the colour bar
    assert fig.axes[-1].get_ylabel() == "attention (map's min to max)"
    assert fig._suptitle.get_text() == r"a \$x^\$ prompt"  # drawn as written, not parsed as math
    with pytest.raises(IndexError):
        maps.for_token(maps.num_tokens)


@pytest.mark.parametrize("guidance_scale, height", [(7.5, SIZE), (1.0, 40)])
def test_with_and_without_cfg_two_images(tiny_pipe, guidance_scale, height):
    with record_cross_attention(tiny_pipe, steps=[-1]) as recorder:
        kwargs = dict(guidance_scale=guidance_scale, num_images_per_prompt=2, num_inference_steps=2, height=height)
        kwargs["width"] = SIZE
        generate(tiny_pipe, **kwargs)
    maps = recorder.maps
    assert maps.maps.shape == (2, tiny_pipe.tokenizer.model_max_length, height, SIZE)
    torch.testing.assert_close(maps.maps.sum(1), torch.ones(2, height, SIZE), rtol=0, atol=1e-5)
    assert maps.steps == [1]
    assert maps.per_step is None


def test_processors_restored_after_success_and_exception(tiny_pipe):
    saved = tiny_pipe.unet.attn_processors
    with record_cross_attention(tiny_pipe):
        inside = tiny_pipe.unet.attn_processors
        changed = [name for name in saved if inside[name] is not saved[name]]
        assert changed == cross_attention_names(tiny_pipe)
        generate(tiny_pipe, num_inference_steps=1)
    after = tiny_pipe.unet.attn_processors
    assert after.keys() == saved.keys() and all(after[name] is saved[name] for name in saved)
    assert not tiny_pipe.unet._forward_pre_hooks

    def boom(pipe, step, timestep, callback_kwargs):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        with record_cross_attention(tiny_pipe):
            generate(tiny_pipe, callback_on_step_end=boom)
    after = tiny_pipe.unet.attn_processors
    assert after.keys() == saved.keys() and all(after[name] is saved[name] for name in saved)
    assert not tiny_pipe.unet._forward_pre_hooks


def test_any_processor_is_recorded_beside_the_layer_and_left_in_place(tiny_pipe, non_square):
    # The original README calls `pipe.enable_attention_slicing()`: sliced layers (and any other processor) keep their
    # processor, their output is unchanged, and the maps computed beside them equal the default processors' maps.
    _, _, default_maps = non_square
    saved = tiny_pipe.unet.attn_processors
    tiny_pipe.enable_attention_slicing(1)
    try:
        sliced = tiny_pipe.unet.attn_processors
        reference = generate(tiny_pipe, height=SIZE, width=48)  # slicing's own rounding, without recording
        with record_cross_attention(tiny_pipe, keep_per_step=True) as recorder:
            image = generate(tiny_pipe, height=SIZE, width=48)
        np.testing.assert_array_equal(image, reference)
        assert all(tiny_pipe.unet.attn_processors[k] is v for k, v in sliced.items())
        torch.testing.assert_close(recorder.maps.maps, default_maps.maps, rtol=1e-4, atol=1e-6)

        class Custom(AttnProcessor):
            pass

        name = cross_attention_names(tiny_pipe)[0]
        tiny_pipe.unet.set_attn_processor({**tiny_pipe.unet.attn_processors, name: Custom()})
        with pytest.warns(UserWarning, match="Custom"):
            with record_cross_attention(tiny_pipe) as recorder:
                generate(tiny_pipe, height=SIZE, width=48)
        torch.testing.assert_close(recorder.maps.maps, default_maps.maps, rtol=1e-4, atol=1e-6)
        assert not any(m._forward_pre_hooks for m in tiny_pipe.unet.modules() if m is not tiny_pipe.unet)
    finally:
        tiny_pipe.unet.set_attn_processor(dict(saved))


def test_explicit_attn_processor_bit_identical(tiny_pipe):
    saved = tiny_pipe.unet.attn_processors
    tiny_pipe.unet.set_attn_processor(AttnProcessor())
    try:
        reference = generate(tiny_pipe, num_inference_steps=2)
        with record_cross_attention(tiny_pipe) as recorder:
            image = generate(tiny_pipe, num_inference_steps=2)
        assert np.array_equal(reference, image)
        torch.testing.assert_close(recorder.maps.maps.sum(1), torch.ones(1, SIZE, SIZE), rtol=0, atol=1e-5)
    finally:
        tiny_pipe.unet.set_attn_processor(dict(saved))


@pytest.mark.parametrize("layer_index", [0, -1])
def test_one_layer_matches_independent_softmax(tiny_pipe, layer_index):
    # Recompute one layer's probabilities at one step from its hooked `to_q` / `to_k` outputs.
    name = cross_attention_names(tiny_pipe)[layer_index]
    attn = tiny_pipe.unet.get_submodule(name[: -len(".processor")])
    step = 1
    captured, calls = {}, []
    hooks = [
        tiny_pipe.unet.register_forward_pre_hook(lambda *_: calls.append(None)),
        attn.to_q.register_forward_hook(lambda m, i, o: captured.setdefault(("q", len(calls) - 1), o.detach())),
        attn.to_k.register_forward_hook(lambda m, i, o: captured.setdefault(("k", len(calls) - 1), o.detach())),
    ]
    try:
        with record_cross_attention(tiny_pipe, steps={step}, layers=[name[: -len(".processor")]]) as recorder:
            generate(tiny_pipe, height=48, width=SIZE)
    finally:
        for hook in hooks:
            hook.remove()
    maps = recorder.maps
    assert maps.layers == [name] and maps.steps == [step]

    q, k = captured[("q", step)], captured[("k", step)]
    q, k = q.chunk(2)[1], k.chunk(2)[1]  # CFG: [negative, positive]
    heads = attn.heads
    d = q.shape[-1] // heads
    q = q.view(q.shape[0], q.shape[1], heads, d).transpose(1, 2).double()
    k = k.view(k.shape[0], k.shape[1], heads, d).transpose(1, 2).double()
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1).mean(1)  # (1, hw, tokens)
    latent_h, latent_w = 48 // tiny_pipe.vae_scale_factor, SIZE // tiny_pipe.vae_scale_factor
    factor = int(round(math.sqrt(latent_h * latent_w / probs.shape[1])))
    h, w = latent_h // factor, latent_w // factor
    assert h * w == probs.shape[1]
    grid = probs.transpose(1, 2).reshape(1, -1, h, w)
    expected = F.interpolate(grid, size=(48, SIZE), mode="bilinear", align_corners=False).float()
    torch.testing.assert_close(maps.maps, expected, rtol=1e-4, atol=1e-6)


def test_grid_shape_follows_stride_two_downsampling():
    # SD at 520x512: latent 65x64, then 33x32, 17x16, 9x8 (stride-2 convolutions with padding 1 round up).
    assert query_grid(65 * 64, (65, 64)) == (65, 64)
    assert query_grid(33 * 32, (65, 64)) == (33, 32)
    assert query_grid(17 * 16, (65, 64)) == (17, 16)
    assert query_grid(9 * 8, (65, 64)) == (9, 8)
    with pytest.raises(RuntimeError):
        query_grid(7, (65, 64))
