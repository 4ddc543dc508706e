"""What a pipeline's state is, for the tests that an explanation leaves it as it found it (after an exception too)."""

import torch


def pipeline_state(pipe):
    r"""Every hook of every model of the pipeline, every attention processor, the image processors' instance
    attributes (the pixel leaf overrides `preprocess` on the instance), grad mode."""
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    hooks = [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for model in models for m in model.modules()]
    processors = [getattr(m, "processor", None) for model in models for m in model.modules()]
    overrides = {
        name: dict(vars(getattr(pipe, name)))
        for name in ("image_processor", "control_image_processor", "mask_processor", "video_processor")
        if hasattr(pipe, name)
    }
    return hooks, processors, overrides, torch.is_grad_enabled()
