"""Loading a pipeline to explain (the shipped toy, or a supported one from a folder or the local cache), and the
process settings a run of it needs: quiet libraries, seeded generators, torch's thread count."""

import contextlib
import os
import warnings
from pathlib import Path
from typing import Optional

TOY = "toy"


def quiet_libraries() -> None:
    r"""Silence diffusers' and transformers' notices and loading bars (the command prints its own progress)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*requires torchvision.*")
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _check_supported(index: Path, model: str) -> None:
    # Before the weights load: the pipeline class the folder names must be one this library explains.
    import json

    from .families import supported_pipeline_named, supported_pipelines

    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"{model!r}: its model_index.json is not a diffusers pipeline index (JSON)") from None
    try:
        supported_pipeline_named(str(class_name))
    except TypeError:
        raise ValueError(
            f"{model!r} holds a {class_name}, which diffusers-interpret does not explain; it explains "
            f"{', '.join(supported_pipelines())}"
        ) from None


def load_pipeline(model: str, device: Optional[str] = None, dtype: str = "float32", allow_download: bool = False):
    r"""
    Load a shipped toy model (`"toy"`, `"toy-64"`, `"toy-flux"`, `"toy-sd3"`: `toy.TOY_MODELS`) or a text-to-image
    pipeline of a supported family (Stable Diffusion 1.x/2.x, SDXL, SD3, Flux, Chroma, Flux 2) from a folder
    or a locally cached id.

    Raises:
        `FileNotFoundError`: for a path that does not exist.
        `OSError`: when diffusers cannot load the model.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from .toy import TOY_MODELS

    if model in TOY_MODELS:
        return TOY_MODELS[model].load(torch_dtype, device)
    path = Path(model).expanduser()
    # A hub-style id is "name" or "owner/name"; anything else that does not exist is a missing path.
    looks_like_id = not model.startswith((".", "~", "/", "\\")) and model.count("/") <= 1 and "\\" not in model
    if not path.exists() and not looks_like_id:
        raise FileNotFoundError(f"model path {model!r} does not exist")
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{model!r} is not a diffusers pipeline folder (no model_index.json in it); save one with "
            "pipe.save_pretrained(path)"
        )
    if path.exists():
        _check_supported(path / "model_index.json", model)
    from diffusers import DiffusionPipeline

    source = str(path) if path.exists() else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                source, torch_dtype=torch_dtype, local_files_only=not allow_download
            )
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            where = "" if path.exists() else " (no such folder; as a model id, it is not in the local cache)"
            hint = "" if allow_download or path.exists() else "; pass --allow-download to fetch it"
            raise OSError(f"cannot load the model {model!r}{where}: {first_line}{hint}") from error
    from .families import supported_pipeline, supported_pipelines

    try:
        supported_pipeline(pipe)
    except TypeError:
        raise OSError(
            f"{model!r} holds a {type(pipe).__name__}, which cannot be explained; supported: "
            f"{', '.join(supported_pipelines())}"
        ) from None
    return pipe.to(device)


def seeded_generator(seed: int, device):
    r"""A `torch.Generator` on `device` seeded with `seed` (the global generator on MPS, which has none of its own)."""
    import torch

    return torch.Generator(device=str(device)).manual_seed(seed) if str(device) != "mps" else torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(count: Optional[int]):
    r"""Torch's CPU thread count set to `count` within the block (unchanged for `None`), and restored after it."""
    import torch

    saved = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
