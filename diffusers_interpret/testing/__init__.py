r"""
Tiny, randomly initialised pipelines of every supported family, built offline from configs (as diffusers' own tests
build theirs) with tokenizers generated here: one module per family, for the tests, the benchmarks and for anyone
checking an explainer without weights.
"""

from .components import freeze, tiny_clip_config, tiny_flow_vae, tiny_scheduler, tiny_t5, tiny_vae
from .stable_diffusion import PIPELINE_CLASSES, make_tiny_components, make_tiny_pipeline

__all__ = [
    "PIPELINE_CLASSES",
    "freeze",
    "make_tiny_components",
    "make_tiny_pipeline",
    "tiny_clip_config",
    "tiny_flow_vae",
    "tiny_scheduler",
    "tiny_t5",
    "tiny_vae",
]
