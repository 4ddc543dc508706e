r"""
A tiny Stable Diffusion model that ships with the package, so that everything runs offline with no download.

It uses Stable Diffusion's exact classes (`AutoencoderKL`, `UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer`,
`DPMSolverMultistepScheduler`, in a `StableDiffusionPipeline`), trained from scratch on 32x32 synthetic scenes of one
or two coloured shapes (`scenes.py`), with prompts such as `"a red circle on the left and a blue square on the right"`.
The ground truth of every scene is known, and `detector.py` checks generated images independently of the model. See
`docs/toy_model.md`.

A second toy model, `load_toy_pipeline(resolution=64)`, draws the same scenes and words at 64x64 (16x16 latents,
cross-attention at 16x16 and 8x8); its two-object prompts name either object first, so the side words are needed to
draw them.
"""

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Union

from .scenes import COLORS, IMAGE_SIZE, SHAPES, SIDES, generate_scene, render_scene, sample_scene_spec

TOY_MODEL_DIR = Path(__file__).resolve().parent / "model"
# Every shipped toy model by its image size, and the order of the objects its two-object prompts were trained on.
TOY_MODEL_DIRS = {32: TOY_MODEL_DIR, 64: TOY_MODEL_DIR.with_name("model_64")}
TOY_PROMPT_ORDERS = {32: "left_first", 64: "random"}
TOY_IMAGE_SIZE = IMAGE_SIZE
TOY_GUIDANCE_SCALE = 4.0
TOY_NUM_INFERENCE_STEPS = 20
# The toy Flux model (64x64 scenes, 8x8 packed image tokens) and the call arguments it generates with: trained with
# 10% empty prompts, it samples with true classifier-free guidance against the empty prompt.
TOY_FLUX_MODEL_DIR = TOY_MODEL_DIR.with_name("model_flux")
TOY_FLUX_CALL = dict(
    height=64, width=64, num_inference_steps=20, max_sequence_length=16, negative_prompt="", true_cfg_scale=4.0
)
# The toy SD3 model (the toy Flux's scenes and latents; CLIP-L, CLIP-G and T5 tokens in one sequence): SD3 samples with
# classifier-free guidance against the empty prompt.
TOY_SD3_MODEL_DIR = TOY_MODEL_DIR.with_name("model_sd3")
TOY_SD3_CALL = dict(height=64, width=64, num_inference_steps=20, max_sequence_length=16, guidance_scale=4.0)
# The toy Wan video model (`clips.py`: one shape moving left or right, 9 frames of 32x32; 5 latent frames of 8x8):
# classifier-free guidance against the empty prompt.
TOY_WAN_MODEL_DIR = TOY_MODEL_DIR.with_name("model_wan")
TOY_WAN_CALL = dict(
    height=32, width=32, num_frames=9, num_inference_steps=20, max_sequence_length=16, guidance_scale=4.0
)


@dataclass(frozen=True)
class ToyModel:
    r"""
    A shipped toy model by the name the command line knows it by.

    Args:
        description (`str`): What it is, for a report's settings.
        load (`Callable`): `load(torch_dtype, device)` -> the pipeline.
        call (`Dict[str, Any]`): The call arguments it generates with (size, steps, guidance).
    """

    description: str
    load: Callable[..., Any]
    call: Dict[str, Any] = field(default_factory=dict)


TOY_MODELS: Dict[str, ToyModel] = {}  # filled below, once the loaders are defined

__all__ = [
    "COLORS",
    "SHAPES",
    "SIDES",
    "TOY_CONTROL_CALL",
    "TOY_FLUX_CALL",
    "TOY_FLUX_MODEL_DIR",
    "TOY_SD3_CALL",
    "TOY_SD3_MODEL_DIR",
    "TOY_WAN_CALL",
    "TOY_WAN_MODEL_DIR",
    "TOY_GUIDANCE_SCALE",
    "TOY_IMAGE_SIZE",
    "TOY_MODELS",
    "TOY_MODEL_DIR",
    "TOY_MODEL_DIRS",
    "TOY_PROMPT_ORDERS",
    "TOY_NUM_INFERENCE_STEPS",
    "generate_scene",
    "load_toy_controlnet_pipeline",
    "outline_image",
    "load_toy_flux_pipeline",
    "load_toy_sd3_pipeline",
    "load_toy_wan_pipeline",
    "load_toy_pipeline",
    "quiet_loading",
    "render_scene",
    "sample_scene_spec",
    "toy_model_available",
    "ToyModel",
]

_REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")


def _model_dir(resolution: int) -> Path:
    if resolution not in TOY_MODEL_DIRS:
        raise ValueError(f"There is no toy model at resolution {resolution}; choose one of {sorted(TOY_MODEL_DIRS)}.")
    return TOY_MODEL_DIRS[resolution]


def toy_model_available(resolution: int = IMAGE_SIZE) -> bool:
    r"""Whether the shipped toy model's files (at `resolution`: 32 or 64) are present."""
    return all((_model_dir(resolution) / name).is_file() for name in _REQUIRED_FILES)


@contextlib.contextmanager
def quiet_loading():
    r"""
    Within the block, diffusers and transformers say only what is wrong: no progress bars, no notices (a 4.5 MB model
    loads in a blink, and outside a terminal every progress-bar refresh is a line of output). Their settings are put
    back on exit.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = []
    for library in (diffusers_logging, transformers_logging):
        saved.append((library, library.get_verbosity(), library.is_progress_bar_enabled()))
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, verbosity, bars in saved:
            library.set_verbosity(verbosity)
            if bars:
                library.enable_progress_bar()


def load_toy_pipeline(
    torch_dtype=None,
    device: Union[str, "torch.device"] = "cpu",  # noqa: F821
    resolution: int = IMAGE_SIZE,
    **kwargs,
):
    r"""
    Load a shipped toy `StableDiffusionPipeline` from the package directory, offline.

    Every parameter is frozen (`requires_grad=False`) and every model is in eval mode. Explainers that need gradients
    with respect to inputs still get them; enable parameter gradients yourself if you need those.

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Dtype of the loaded weights (they are stored in fp16; fp32 is recommended on CPU).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Device to move the pipeline to.
        resolution (`int`, *optional*, defaults to 32):
            32 (the default toy, 8x8 latents) or 64 (the 64x64 toy, 16x16 latents, prompts naming either object
            first).
        kwargs (*optional*):
            Passed to `StableDiffusionPipeline.from_pretrained`.

    Returns:
        `StableDiffusionPipeline`: The pipeline, with its progress bar disabled. Generate with
        `guidance_scale=TOY_GUIDANCE_SCALE`, `num_inference_steps=TOY_NUM_INFERENCE_STEPS` (images are
        `resolution` x `resolution`).
    """
    import torch

    model_dir = _model_dir(resolution)
    if not toy_model_available(resolution):
        missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
        raise FileNotFoundError(
            f"The toy model's files are missing from {model_dir} (missing: {', '.join(missing)}). Reinstall "
            "diffusers-interpret, or train and save the model with `python scripts/train_toy_model.py`."
        )
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("feature_extractor", None)
    kwargs.setdefault("requires_safety_checker", False)
    with warnings.catch_warnings(), quiet_loading():
        from diffusers import StableDiffusionPipeline

        # Recent diffusers renamed `torch_dtype` to `dtype`; older ones only know `torch_dtype`.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(model_dir),
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


def load_toy_flux_pipeline(torch_dtype=None, device="cpu"):
    r"""
    Load the shipped toy `FluxPipeline` (the 64x64 scenes, 8x8 packed image tokens; T5 splits "triangle" into two
    pieces) from the package directory, offline. Generate with `**TOY_FLUX_CALL` (64x64, 20 steps, T5 length 16, true
    classifier-free guidance 4 against the empty prompt).

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): Dtype of the loaded weights.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): Device to move the pipeline to.
    """
    return _load_transformer_toy("FluxPipeline", TOY_FLUX_MODEL_DIR, "train_toy_flux.py", torch_dtype, device)


def load_toy_sd3_pipeline(torch_dtype=None, device="cpu"):
    r"""
    Load the shipped toy `StableDiffusion3Pipeline` (the toy Flux's 64x64 scenes; two CLIPs and T5, whose tokens stand
    side by side in one sequence, so that every word is read twice) from the package directory, offline. Generate with
    `**TOY_SD3_CALL` (64x64, 20 steps, T5 length 16, classifier-free guidance 4 against the empty prompt).

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): Dtype of the loaded weights.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): Device to move the pipeline to.
    """
    return _load_transformer_toy(
        "StableDiffusion3Pipeline", TOY_SD3_MODEL_DIR, "train_toy_sd3.py", torch_dtype, device
    )


def load_toy_wan_pipeline(torch_dtype=None, device="cpu"):
    r"""
    Load the shipped toy `WanPipeline` (`clips.py`: one coloured shape moving left or right, 9 frames of 32x32; T5 in
    place of UMT5) from the package directory, offline. Generate with `**TOY_WAN_CALL` (9 frames of 32x32, 20 steps, T5
    length 16, classifier-free guidance 4 against the empty prompt).

    Args:
        torch_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): Dtype of the loaded weights.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): Device to move the pipeline to.
    """
    return _load_transformer_toy("WanPipeline", TOY_WAN_MODEL_DIR, "train_toy_wan.py", torch_dtype, device)


def _load_transformer_toy(class_name: str, model_dir: Path, script: str, torch_dtype, device):
    import torch

    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The toy model's files are missing from {model_dir}. Reinstall diffusers-interpret, or train it with "
            f"`python scripts/{script}`."
        )
    with warnings.catch_warnings(), quiet_loading():
        import diffusers

        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = getattr(diffusers, class_name).from_pretrained(
            str(model_dir), torch_dtype=torch_dtype or torch.float32, local_files_only=True
        )
    pipe = pipe.to(device)
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            model.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd_call(size: int) -> Dict[str, Any]:
    steps, guidance = TOY_NUM_INFERENCE_STEPS, TOY_GUIDANCE_SCALE
    return dict(height=size, width=size, num_inference_steps=steps, guidance_scale=guidance)


from .control import TOY_CONTROL_CALL, load_toy_controlnet_pipeline, outline_image  # noqa: E402

TOY_MODELS.update(
    {
        "toy": ToyModel(
            "shipped toy model (Stable Diffusion, 32x32)",
            lambda torch_dtype=None, device="cpu": load_toy_pipeline(torch_dtype, device),
            _sd_call(TOY_IMAGE_SIZE),
        ),
        "toy-64": ToyModel(
            "shipped toy model (Stable Diffusion, 64x64)",
            lambda torch_dtype=None, device="cpu": load_toy_pipeline(torch_dtype, device, resolution=64),
            _sd_call(64),
        ),
        "toy-flux": ToyModel("shipped toy Flux model (64x64)", load_toy_flux_pipeline, dict(TOY_FLUX_CALL)),
        "toy-sd3": ToyModel("shipped toy Stable Diffusion 3 model (64x64)", load_toy_sd3_pipeline, dict(TOY_SD3_CALL)),
        "toy-wan": ToyModel(
            "shipped toy Wan video model (9 frames of 32x32)", load_toy_wan_pipeline, dict(TOY_WAN_CALL)
        ),
        "toy-controlnet": ToyModel(
            "shipped toy ControlNet (Stable Diffusion 32x32, outline control images)",
            lambda torch_dtype=None, device="cpu": load_toy_controlnet_pipeline(torch_dtype, device),
            dict(height=TOY_IMAGE_SIZE, width=TOY_IMAGE_SIZE, **TOY_CONTROL_CALL),
        ),
    }
)
