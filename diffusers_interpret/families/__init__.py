r"""
One adapter per pipeline family: the only code that knows a pipeline's shape. Each module of this folder is one
family's adapter and registers it; `family_for(pipe)` picks one, `supported_pipeline(pipe)` says what the registry
knows of a pipeline. Adding a family is adding its file here.
"""

import importlib
import pkgutil

from .base import InputKind, JointAttention, PipelineFamily, TextEncoderSlot, TransformerFamily
from .registry import (
    SupportedPipeline,
    family_for,
    register_family,
    supported_pipeline,
    supported_pipeline_named,
    supported_pipelines,
)

# Every family file registers its adapter when imported.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "InputKind",
    "JointAttention",
    "PipelineFamily",
    "SupportedPipeline",
    "TextEncoderSlot",
    "TransformerFamily",
    "family_for",
    "register_family",
    "supported_pipeline",
    "supported_pipeline_named",
    "supported_pipelines",
]
