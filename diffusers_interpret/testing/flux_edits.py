"""Tiny, randomly initialised Flux Fill and Flux Kontext pipelines built offline from configs."""

from typing import Optional

import torch
from diffusers import FluxFillPipeline, FluxKontextPipeline, FluxTransformer2DModel

from .components import finished, freeze
from .flux import TINY_FLUX_WIDTHS, make_tiny_flux_components


def make_tiny_flux_fill_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None) -> FluxFillPipeline:
    r"""
    A tiny offline `FluxFillPipeline` (16x16 images; call it with `max_sequence_length=TINY_T5_LENGTH`): the tiny Flux
    components with a transformer that reads the packed noised latents, the masked image's latents and the mask (12
    channels for the one-channel latents of the tiny VAE), as diffusers' Fill tests build theirs (20 channels for two).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline (e.g. `torch.float64` for finite-difference tests).
    """
    components = make_tiny_flux_components(seed)
    for name in ("image_encoder", "feature_extractor"):
        components.pop(name, None)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        in_channels=12, out_channels=4, num_layers=1, num_single_layers=1, **TINY_FLUX_WIDTHS
    )
    freeze(transformer)
    components["transformer"] = transformer
    return finished(FluxFillPipeline(**components), dtype)


def make_tiny_flux_kontext_pipeline(seed: int = 0, dtype: Optional[torch.dtype] = None) -> FluxKontextPipeline:
    r"""
    A tiny offline `FluxKontextPipeline`: the tiny Flux components (16x16 images; call it with
    `max_sequence_length=TINY_T5_LENGTH` and `_auto_resize=False`, which keeps a small reference image small).

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of the weight initialisation.
        dtype (`torch.dtype`, *optional*): Cast the pipeline.
    """
    return finished(FluxKontextPipeline(**make_tiny_flux_components(seed)), dtype)
