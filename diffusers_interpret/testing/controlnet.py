"""Tiny, randomly initialised ControlNet pipelines (Stable Diffusion, SDXL, Flux) built offline from configs."""

from typing import Optional

import torch
from diffusers import (
    ControlNetModel,
    FluxControlNetModel,
    FluxControlNetPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)

from .components import finished, freeze
from .flux import TINY_FLUX_WIDTHS, make_tiny_flux_components
from .stable_diffusion import make_tiny_components
from .stable_diffusion_xl import ADDITION_TIME_EMBED_DIM, PROJECTION_DIM, TEXT_HIDDEN_SIZE, make_tiny_sdxl_components

CONTROLNET_FAMILIES = ("sd", "sdxl", "flux")
# The tiny UNets' ControlNet (their widths; conditioning embedded to the latents' grid by one stride-2 stage).
_UNET_CONTROLNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    conditioning_embedding_out_channels=(16, 32),
)


def _drawn_zero_layers(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # A ControlNet starts with its output convolutions (and Flux's control embedder) at zero, so that training begins
    # from the base model: a random tiny one would then not see its control image at all (every gradient to it 0).
    # Those layers are drawn at their layers' default initialisation instead.
    torch.manual_seed(seed + 1)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and weight is not None and not weight.any():
            module.reset_parameters()
    return model


def make_tiny_controlnet_pipeline(family: str = "sd", seed: int = 0, dtype: Optional[torch.dtype] = None):
    r"""
    A tiny offline ControlNet pipeline with random weights, for tests and benchmarks: `"sd"`
    (`StableDiffusionControlNetPipeline`, 32x32 images, control image `image=`), `"sdxl"`
    (`StableDiffusionXLControlNetPipeline`, 32x32) or `"flux"` (`FluxControlNetPipeline`, 16x16, `control_image=`, call
    it with `max_sequence_length=TINY_T5_LENGTH`).

    Args:
        family (`str`, *optional*, defaults to `"sd"`): `"sd"`, `"sdxl"` or `"flux"`.
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline (e.g. `torch.float64` for finite-difference tests).
    """
    # The ControlNets' configs are those of diffusers' tests/pipelines/controlnet/test_controlnet.py,
    # test_controlnet_sdxl.py and tests/pipelines/controlnet_flux/test_controlnet_flux.py, matched to the tiny base
    # models of this package (their widths, their cross-attention dimension, Flux's one-channel latents); the
    # ControlNets' zero-initialised output layers are drawn (`_drawn_zero_layers`).
    if family not in CONTROLNET_FAMILIES:
        raise ValueError(f"`family` must be one of {CONTROLNET_FAMILIES}, got {family!r}.")
    torch.manual_seed(seed)
    if family == "sd":
        components = make_tiny_components(seed=seed, sample_size=16, layers_per_block=1)
        controlnet = ControlNetModel(cross_attention_dim=32, **_UNET_CONTROLNET)
        pipeline_class = StableDiffusionControlNetPipeline
        extra = {"requires_safety_checker": False}
    elif family == "sdxl":
        components = make_tiny_sdxl_components(seed=seed)
        controlnet = ControlNetModel(
            **_UNET_CONTROLNET,
            addition_embed_type="text_time",
            addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
            cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
        )
        pipeline_class = StableDiffusionXLControlNetPipeline
        extra = {"add_watermarker": False}
    else:
        components = make_tiny_flux_components(seed)
        controlnet = FluxControlNetModel(in_channels=4, num_layers=1, num_single_layers=1, **TINY_FLUX_WIDTHS)
        pipeline_class = FluxControlNetPipeline
        extra = {}
        for name in ("image_encoder", "feature_extractor"):
            components.pop(name, None)
    freeze(_drawn_zero_layers(controlnet, seed))
    pipe = pipeline_class(**components, controlnet=controlnet, **extra)
    return finished(pipe, dtype)
