"""Where a region of the image looks in the image: self-attention relation maps, against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PROMPT, seeded
from explicit_attention import ExplicitJointAttention

from diffusers_interpret import record_self_attention
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline
from diffusers_interpret.tracing.self_attention import region_cells


class ExplicitSelfAttention:
    r"""`AttnProcessor`'s self-attention math with an explicit softmax, keeping (batch, heads, queries, keys)."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        k = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) * attn.scale, dim=-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


def region_map(per_call_layers, box, grids, size):
    # (batch, heads, queries, keys) per layer -> the region's queries averaged, heads averaged, each layer upsampled,
    # layers averaged -> (H, W) of the conditional row (the last: [negative, positive] rows under guidance).
    maps = []
    for probs, grid in zip(per_call_layers, grids):
        cells = region_cells(box, grid, size)
        row = probs[-1:].mean(1)[:, cells].mean(1).reshape(1, 1, *grid)
        maps.append(F.interpolate(row, size=size, mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(maps).mean(0)


def test_a_unet_regions_map_is_its_self_attention():
    pipe = make_tiny_pipeline("text2img")
    box, call = ((0, 0), (16, 32)), dict(num_inference_steps=3, height=32, width=32)
    with record_self_attention(pipe, box=box) as recorder:
        image = pipe(PROMPT, generator=seeded(0), output_type="np", **call).images[0]
    maps = recorder.maps
    assert maps.maps.shape == (1, 1, 32, 32)
    processors = pipe.unet.attn_processors
    names = [n for n in processors if n.endswith("attn1.processor")]
    store = []
    pipe.unet.set_attn_processor({n: ExplicitSelfAttention(store) if n in names else p for n, p in processors.items()})
    try:
        replayed = pipe(PROMPT, generator=seeded(0), output_type="np", **call).images[0]
    finally:
        pipe.unet.set_attn_processor(dict(processors))
    np.testing.assert_allclose(replayed, image, atol=1e-5)
    per_call = [store[i : i + len(names)] for i in range(0, len(store), len(names))]
    grids = [(int(p.shape[-1] ** 0.5),) * 2 for p in per_call[0]]
    expected = torch.stack([region_map(layers, box, grids, (32, 32)) for layers in per_call]).mean(0)
    np.testing.assert_allclose(maps.maps[0, 0], expected, atol=1e-6)
    # The left half looks at the left half more than the right half looks at it.
    with record_self_attention(pipe, box=((16, 0), (32, 32))) as right:
        pipe(PROMPT, generator=seeded(0), **call)
    assert not torch.allclose(right.maps.maps, maps.maps, atol=1e-4)


def test_a_joint_attention_regions_map_is_its_image_to_image_block():
    pipe = make_tiny_flux_pipeline("text2img")
    box = ((0, 0), (8, 16))
    call = dict(num_inference_steps=3, height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    with record_self_attention(pipe, box=box) as recorder:
        pipe(PROMPT, generator=seeded(0), **call)
    processors = pipe.transformer.attn_processors
    store = []
    pipe.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        pipe(PROMPT, generator=seeded(0), **call)
    finally:
        pipe.transformer.set_attn_processor(dict(processors))
    text, grid = TINY_T5_LENGTH, (8, 8)
    image_to_image = [p[:, :, text:, text:] for p in store]  # the softmax over all keys: the image keys' columns
    per_call = [image_to_image[i : i + 2] for i in range(0, len(image_to_image), 2)]
    expected = torch.stack([region_map(layers, box, [grid] * 2, (16, 16)) for layers in per_call]).mean(0)
    np.testing.assert_allclose(recorder.maps.maps[0, 0], expected, atol=1e-6)
    assert float(recorder.maps.maps.sum()) > 0


def test_bad_regions_and_layers_are_refused():
    pipe = make_tiny_pipeline("text2img")
    with pytest.raises(ValueError):
        record_self_attention(pipe, box=((8, 8), (4, 4)))
    with pytest.raises(ValueError, match="outside|reaches"):
        with record_self_attention(pipe, box=((0, 0), (64, 64))):
            pipe(PROMPT, num_inference_steps=2, height=32, width=32)
    assert not any(module._forward_pre_hooks for module in pipe.unet.modules())  # refused at the first call, undone
    with pytest.raises(ValueError, match="Not self-attention layers"):
        with record_self_attention(pipe, box=((0, 0), (8, 8)), layers=["nope"]):
            pass


def test_text_relations_are_the_joint_attentions_text_block():
    from diffusers_interpret import record_text_relations

    pipe = make_tiny_flux_pipeline("text2img")
    call = dict(num_inference_steps=3, height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    with record_text_relations(pipe) as recorder:
        pipe(PROMPT, generator=seeded(0), **call)
    relations = recorder.relations
    assert relations.shape == (1, TINY_T5_LENGTH, TINY_T5_LENGTH)
    processors = pipe.transformer.attn_processors
    store = []
    pipe.transformer.set_attn_processor({name: ExplicitJointAttention(store) for name in processors})
    try:
        pipe(PROMPT, generator=seeded(0), **call)
    finally:
        pipe.transformer.set_attn_processor(dict(processors))
    text = TINY_T5_LENGTH
    blocks = [p[:, :, :text, :text].mean(1) for p in store]  # [text, image]: text queries x text keys, heads averaged
    per_call = [torch.stack(blocks[i : i + 2]).mean(0) for i in range(0, len(blocks), 2)]
    np.testing.assert_allclose(relations, torch.stack(per_call).mean(0), atol=1e-6)
    assert float(relations.sum(-1).max()) < 1  # the image keys take their share of each text token's attention
    with pytest.raises(ValueError, match="text encoder"):
        with record_text_relations(make_tiny_pipeline("text2img")):
            pass
