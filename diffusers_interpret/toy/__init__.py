r"""
A tiny Stable Diffusion model that ships with the package, so that everything runs offline with no download.

It uses Stable Diffusion's exact classes (`AutoencoderKL`, `UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer`,
`DPMSolverMultistepScheduler`, in a `StableDiffusionPipeline`), trained from scratch on 32x32 synthetic scenes of one
or two coloured shapes (`scenes.py`), with prompts such as `"a red circle on the left and a blue square on the right"`.
The ground truth of every scene is known, and `detector.py` checks generated images independently of the model. See
`docs/toy_model.md`.
"""

import warnings
from pathlib import Path
from typing import Union

from .scenes import COLORS, IMAGE_SIZE, SHAPES, SIDES, generate_scene, render_scene, sample_scene_spec

TOY_MODEL_DIR = Path(__file__).resolve().parent / "model"
TOY_IMAGE_SIZE = IMAGE_SIZE
TOY_GUIDANCE_SCALE = 4.0
TOY_NUM_INFERENCE_STEPS = 20

__all__ = [
    "COLORS",
    "SHAPES",
    "SIDES",
    "TOY_GUIDANCE_SCALE",
    "TOY_IMAGE_SIZE",
    "TOY_MODEL_DIR",
    "TOY_NUM_INFERENCE_STEPS",
    "generate_scene",
    "load_toy_pipeline",
    "render_scene",
    "sample_scene_spec",
    "toy_model_available",
]

_REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")


def toy_model_available() -> bool:
    r"""Whether the shipped toy model's files are present."""
    return all((TOY_MODEL_DIR / name).is_file() for name in _REQUIRED_FILES)


def load_toy_pipeline(torch_dtype=None, device: Union[str, "torch.device"] = "cpu", **kwargs):  # noqa: F821
    r"""
    Load the shipped toy `StableDiffusionPipeline` from the package directory, offline.

    Every parameter is frozen (`requires_grad=False`) and every model is in eval mode. Explainers that need gradients
    with respect to inputs still get them; enable parameter gradients yourself if you need those.

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Dtype of the loaded weights (they are stored in fp16; fp32 is recommended on CPU).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Device to move the pipeline to.
        kwargs (*optional*):
            Passed to `StableDiffusionPipeline.from_pretrained`.

    Returns:
        `StableDiffusionPipeline`: The pipeline, with its progress bar disabled. Generate with
        `guidance_scale=TOY_GUIDANCE_SCALE`, `num_inference_steps=TOY_NUM_INFERENCE_STEPS` (images are 32x32).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    if not toy_model_available():
        missing = [name for name in _REQUIRED_FILES if not (TOY_MODEL_DIR / name).is_file()]
        raise FileNotFoundError(
            f"The toy model's files are missing from {TOY_MODEL_DIR} (missing: {', '.join(missing)}). Reinstall "
            "diffusers-interpret, or train and save the model with `python scripts/train_toy_model.py`."
        )
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("feature_extractor", None)
    kwargs.setdefault("requires_safety_checker", False)
    with warnings.catch_warnings():
        # Recent diffusers renamed `torch_dtype` to `dtype`; older ones only know `torch_dtype`.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(TOY_MODEL_DIR),
            torch_dtype=torch.float32 if torch_dtype is None else torch_dtype,
            local_files_only=True,
            **kwargs,
        )
    pipe = pipe.to(device)
    for name in ("vae", "text_encoder", "unet"):
        model = getattr(pipe, name)
        model.eval()
        model.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
