"""Attention maps of chosen heads (`record_cross_attention(pipe, heads=...)`): a head's own map, for every family."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, seeded

from diffusers_interpret import record_cross_attention
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline


def recorded(pipe, call, **options):
    with record_cross_attention(pipe, keep_per_step=True, **options) as recorder:
        pipe(PROMPT, generator=seeded(0), **call)
    return recorder.maps


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_the_heads_maps_average_to_the_layers_map(family):
    # Every layer of the tiny pipelines has the same heads (8 in SD's cross-attention, 2 in Flux's joint attention):
    # the maps of each head alone, averaged, are the maps of all heads; all heads named are the default; one head's
    # map is its own.
    if family == "sd":
        pipe, call, count = make_tiny_pipeline("text2img"), dict(num_inference_steps=3), 8
    else:
        pipe = make_tiny_flux_pipeline("text2img")
        call = dict(num_inference_steps=3, height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
        count = 2
    every = recorded(pipe, call)
    np.testing.assert_array_equal(recorded(pipe, call, heads=list(range(count))).maps, every.maps)
    alone = [recorded(pipe, call, heads=[head]) for head in range(count)]
    np.testing.assert_allclose(torch.stack([a.maps for a in alone]).mean(0), every.maps, atol=1e-6)
    np.testing.assert_allclose(torch.stack([a.per_step for a in alone]).mean(0), every.per_step, atol=1e-6)
    assert not torch.allclose(alone[0].maps, alone[1].maps, atol=1e-4)


def test_heads_a_layer_has_not_are_refused_with_its_count():
    pipe = make_tiny_pipeline("text2img")
    with pytest.raises(ValueError, match="it has 8"):
        recorded(pipe, dict(num_inference_steps=2), heads=[8])
    for heads in ([], [0, 0], ["1"]):
        with pytest.raises(ValueError, match="heads"):
            record_cross_attention(pipe, heads=heads)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_each_layers_records_make_the_steps_maps(family):
    # Raw records of layer x step: each layer's own maps at its own grid; upsampled and averaged over the layers they
    # are each step's map, averaged over the steps the maps (joint attention: without the left-out share's column).
    if family == "sd":
        pipe, call = make_tiny_pipeline("text2img"), dict(num_inference_steps=3)
    else:
        pipe = make_tiny_flux_pipeline("text2img")
        call = dict(num_inference_steps=3, height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    maps = recorded(pipe, call, keep_per_layer=True, heads=[0])
    assert sorted(maps.per_layer) == sorted(maps.layers)
    size = maps.size
    per_step = torch.stack([
        torch.nn.functional.interpolate(layer, size=size, mode="bilinear", align_corners=False)
        for layer in (records.flatten(0, 1) for records in maps.per_layer.values())
    ]).mean(0).unflatten(0, (len(maps.steps), maps.num_images))  # fmt: skip
    np.testing.assert_allclose(per_step, maps.per_step, atol=1e-6)
    np.testing.assert_allclose(per_step.mean(0), maps.maps, atol=1e-6)
    first = maps.of_image(0)
    assert all(records.shape[1] == 1 for records in first.per_layer.values())


def test_records_over_the_bound_are_refused_with_what_to_choose():
    pipe = make_tiny_pipeline("text2img")
    with pytest.raises(ValueError, match="choose `layers=`, `steps=` or `heads=`"):
        recorded(pipe, dict(num_inference_steps=2), keep_per_layer=True, max_record_bytes=1024)
    assert all(type(p).__name__ != "CrossAttentionRecordingProcessor" for p in pipe.unet.attn_processors.values())
    small = recorded(pipe, dict(num_inference_steps=2), keep_per_layer=True, layers=[sorted(
        n for n in pipe.unet.attn_processors if "attn2" in n)[0]])  # fmt: skip
    assert len(small.per_layer) == 1
