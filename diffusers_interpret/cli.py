r"""
The `diffusers-interpret` command: explain Stable Diffusion (SD 1.x/2.x, SDXL) images from the shell and write an HTML
report.

`diffusers-interpret demo --out DIR` runs offline on the shipped toy model; `diffusers-interpret explain "PROMPT"` runs
on any supported text-to-image model on disk (the toy model by default). See `docs/cli.md` and
`diffusers-interpret --help`.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from .defaults import DEFAULT_ATTRIBUTION_METHOD

PROG = "diffusers-interpret"
METHODS = (
    "grad_x_input",
    "max_grad",
    "mean_grad",
    "min_grad",
    "integrated_gradients",
    "smoothgrad",
    "ablation",
    "attention",
    "jacobian_norm",
    "word_attention",
)
LEVELS = ("token_embeddings", "text_encoder_output")
DEMO_PROMPTS = (
    "a red circle on the left and a blue square on the right",
    "a yellow triangle on the right",
    "a green square on the left and a yellow circle on the right",
)
TOY = "toy"

_DESCRIPTION = """\
Explain the images made by diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux): which prompt words made the image.
Writes one self-contained report.html (images inlined, open it anywhere) and PNG files into --out."""

_EPILOG = """\
examples:
  # offline demo on the shipped toy model (32x32 images, a few seconds on a CPU)
  diffusers-interpret demo --out demo_report

  # one prompt on the toy model, the left half of the image explained
  diffusers-interpret explain "a red circle on the left and a blue square on the right" --box 0,0,16,32 --out out

  # a Stable Diffusion or SDXL model on disk (a diffusers folder, or an id already in the local cache)
  diffusers-interpret explain "a photo of a cat on a bench" --model ./stable-diffusion-v1-5 \\
      --steps 15 --traced 3 --box 128,128,384,384 --device cuda --dtype float16 --out cat
  diffusers-interpret explain "a photo of a cat on a bench" --model ./stable-diffusion-xl-base-1.0 \\
      --steps 20 --traced 3 --device cuda --dtype float16 --gradient-checkpointing --out cat-xl

  # many prompts (a JSONL or CSV file) into Parquet shards, resumable; on 8 GPUs with accelerate launch
  diffusers-interpret batch prompts.jsonl --model toy --steps 10 --out runs/toy

run 'diffusers-interpret COMMAND --help' for the options of a command."""

_EXPLAIN_EPILOG = """\
boxes are x0,y0,x1,y1 in pixels: x the column, y the row, (x0, y0) the upper-left corner (inclusive), (x1, y1) the
lower-right corner (exclusive). --box may be given several times: each box gets its own explanation. Without
--box the whole image is explained.

examples:
  diffusers-interpret explain "a yellow triangle on the right" --out out
  diffusers-interpret explain "a red circle on the left and a blue square on the right" \\
      --box 0,0,16,32 --box 16,0,32,32 --traced 20 --out out
  diffusers-interpret explain "a photo of a cat" --model ./stable-diffusion-v1-5 --height 512 --width 512 \\
      --steps 15 --traced 3 --device cuda --dtype float16 --gradient-checkpointing --out cat"""

_DEMO_EPILOG = """\
The demo explains three toy prompts, each for the whole image, its left half and its right half:
""" + "\n".join(f'  "{prompt}"' for prompt in DEMO_PROMPTS)


class _ArgumentParser(argparse.ArgumentParser):
    # Errors are one line, `diffusers-interpret: error: ...`, exit code 2 (no usage block, no traceback).
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    r"""Print `diffusers-interpret: error: MESSAGE` (one line) to stderr and exit with code 2."""
    message = " ".join(str(message).split())
    sys.stderr.write(f"{PROG}: error: {message}\n")
    raise SystemExit(2)


def parse_box(text: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    r"""`"x0,y0,x1,y1"` as `((x0, y0), (x1, y1))`; `argparse.ArgumentTypeError` for anything else."""
    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    try:
        x0, y0, x1, y1 = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad box {text!r}: expected four integers x0,y0,x1,y1 (pixels, upper-left corner first), e.g. 0,0,16,32"
        ) from None
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"bad box {text!r}: it needs x0 < x1 and y0 < y1 (upper-left corner first)")
    return ((x0, y0), (x1, y1))


def positive_int(text: str) -> int:
    r"""`text` as an integer >= 1; `argparse.ArgumentTypeError` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def traced_steps(text: str) -> Optional[int]:
    r"""`--traced`'s value: an integer >= 0, or `None` for `'all'`; `argparse.ArgumentTypeError` otherwise."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all', got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for report.html and the PNG files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: %(default)s)")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help=f"attribution method (default: the model family's: {DEFAULT_ATTRIBUTION_METHOD} for SD, SDXL and SD3, "
        "grad_x_input for Flux; see the docs for what each costs and how truthful it is)",
    )
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="token_embeddings",
        help="where tokens are attributed: input token embeddings, or the text encoder's output "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default: 1 for the toy model, whose layers are too small to gain from more; "
        "torch's default otherwise)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_interactive(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--interactive",
        type=_cell_size,
        default=default,
        metavar="CELL",
        help="add an interactive view per prompt to the report (draw a box, see its token attributions; click a "
        "token for its attention map) with a grid of CELL-pixel cells, one backward pass per cell; 0 for none "
        "(default: %(default)s)",
    )


def _cell_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cell size in pixels (an integer >= 0), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a cell size in pixels (an integer >= 0), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of `diffusers-interpret`."""
    parser = _ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)

    demo = commands.add_parser(
        "demo",
        help="explain a few prompts on the shipped toy model (offline, seconds on a CPU)",
        description="Explain a few prompts on the shipped toy model, offline, and write a report.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(demo)
    demo.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the toy's 20)")
    demo.add_argument(
        "--traced",
        type=traced_steps,
        default=None,
        metavar="N",
        help="last denoising steps to back-propagate through, or 'all' (default: all)",
    )
    _add_interactive(demo, 8)

    explain = commands.add_parser(
        "explain",
        help="explain one prompt on any supported model on disk: SD, SDXL, SD3, Flux (the toy model by default)",
        description="Generate an image for PROMPT and explain it (the whole image, or boxes of it).",
        epilog=_EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("prompt", metavar="PROMPT", help="the text prompt")
    explain.add_argument(
        "--model",
        default=TOY,
        metavar="PATH_OR_ID",
        help="a diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3, Flux), or a model id in the local cache; 'toy' "
        "(default) is the shipped toy model",
    )
    explain.add_argument(
        "--box",
        type=parse_box,
        action="append",
        default=None,
        metavar="x0,y0,x1,y1",
        help="region to explain, in pixels; repeat for several boxes (default: the whole image)",
    )
    _add_common(explain)
    explain.add_argument("--steps", type=positive_int, default=15, help="denoising steps (default: %(default)s)")
    explain.add_argument(
        "--traced",
        type=traced_steps,
        default=5,
        metavar="N",
        help="last denoising steps to back-propagate through, or 'all' (default: %(default)s)",
    )
    explain.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default: 4 for the toy model, 7.5 otherwise)"
    )
    explain.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's)")
    explain.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's)")
    explain.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    explain.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    explain.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="weights dtype (default: %(default)s)",
    )
    explain.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute the traced steps in the backward pass: less memory, slower (default: on when more than one "
        "step is traced)",
    )
    _add_interactive(explain, 0)
    explain.add_argument(
        "--allow-download",
        action="store_true",
        help="let diffusers fetch a model id that is not on disk (off by default: everything is loaded locally)",
    )
    from .batch.command import add_batch_parser

    add_batch_parser(commands)
    return parser


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


def load_pipeline(model: str, device: Optional[str] = None, dtype: str = "float32", allow_download: bool = False):
    r"""
    Load the toy model (`model="toy"`) or a text-to-image pipeline of a supported family (Stable Diffusion 1.x/2.x,
    SDXL, SD3, Flux) from a folder or a locally cached id.

    Raises:
        `FileNotFoundError`: for a path that does not exist.
        `OSError`: when diffusers cannot load the model.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model == TOY:
        from .toy import load_toy_pipeline

        return load_toy_pipeline(torch_dtype=torch_dtype, device=device)
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
    from .families import explainer_class_for, supported_pipelines

    try:
        explainer_class_for(pipe)
    except TypeError:
        raise OSError(
            f"{model!r} holds a {type(pipe).__name__}, which cannot be explained; supported: "
            f"{', '.join(supported_pipelines())}"
        ) from None
    return pipe.to(device)


def _generator(seed: int, device):
    import torch

    return torch.Generator(device=str(device)).manual_seed(seed) if str(device) != "mps" else torch.manual_seed(seed)


def run_explanations(
    pipe,
    jobs: Sequence[Tuple[str, Any]],
    seed: int,
    quiet: bool,
    gradient_checkpointing: Optional[bool] = None,
    **explain_kwargs,
) -> List[Any]:
    r"""
    Explain `(prompt, box)` jobs, every one from the same seed (so the boxes of a prompt share one image). Returns the
    outputs and, with `interactive=CELL` (> 0), the HTML of an interactive view per prompt.
    """

    from .families import explainer_for

    if not quiet:
        pipe.set_progress_bar_config(disable=False, leave=False, desc="Denoising")
    explainer = explainer_for(pipe, verbose=not quiet, gradient_checkpointing=gradient_checkpointing)
    outputs = []
    interactive = explain_kwargs.pop("interactive", 0)
    from .progress import progress_bar

    for prompt, box in progress_bar(jobs, "Explanations", disable=quiet or len(jobs) < 2, unit="expl", leave=True):
        output = explainer(
            prompt,
            explanation_2d_bounding_box=box,
            generator=_generator(seed, pipe.device),
            output_type="pil",
            **explain_kwargs,
        )
        outputs.append(output)
    views: Dict[str, str] = {}
    if interactive and outputs and outputs[0].attribution_method == "word_attention":
        # The cards' method: the view's bars come from the word maps the outputs hold (no generation).
        for prompt, output in zip((prompt for prompt, _ in jobs), outputs):
            if prompt not in views:
                views[prompt] = output.interactive_view(min(interactive, *output.image.size)).to_html()
    elif interactive:
        gradient_kwargs = dict(explain_kwargs, attribution_method="grad_x_input")
        for prompt in dict.fromkeys(prompt for prompt, _ in jobs):
            output = explainer(
                prompt,
                generator=_generator(seed, pipe.device),
                keep_for_reexplanation="graph",
                attention_maps=True,
                **gradient_kwargs,
            )
            cell = min(interactive, *output.image.size)
            views[prompt] = output.interactive_view(cell).to_html()
            output.release()
    return outputs, views


def _run_demo(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], str]:
    from .toy import TOY_GUIDANCE_SCALE, TOY_IMAGE_SIZE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline

    pipe = load_toy_pipeline()
    steps = args.steps or TOY_NUM_INFERENCE_STEPS
    half = TOY_IMAGE_SIZE // 2
    boxes = [None, ((0, 0), (half, TOY_IMAGE_SIZE)), ((half, 0), (TOY_IMAGE_SIZE, TOY_IMAGE_SIZE))]
    jobs = [(prompt, box) for prompt in DEMO_PROMPTS for box in boxes]
    outputs = run_explanations(
        pipe,
        jobs,
        args.seed,
        args.quiet,
        interactive=args.interactive,
        num_inference_steps=steps,
        n_last_diffusion_steps_to_consider_for_attributions=args.traced,
        guidance_scale=TOY_GUIDANCE_SCALE,
        attribution_method=args.method,
        attribution_level=args.level,
    )
    settings = {
        "model": "shipped toy model (32x32)",
        "steps": steps,
        "traced steps": "all" if args.traced is None else args.traced,
        "guidance scale": TOY_GUIDANCE_SCALE,
        "seed": args.seed,
        "method": outputs[0][0].attribution_method if outputs[0] else args.method,
        "level": args.level,
    }
    return outputs, settings, "diffusers-interpret demo: the shipped toy model"


def _run_explain(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], str]:
    from .box import normalize_box

    if not args.prompt.strip():
        fail("PROMPT is empty")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.allow_download)
    explainer_size = _image_size(pipe, args.height, args.width)
    boxes = args.box or [None]
    height, width = explainer_size
    for box in boxes:  # checked before any generation
        try:
            normalize_box(box, height, width)
        except ValueError:
            (x0, y0), (x1, y1) = box
            fail(
                f"--box {x0},{y0},{x1},{y1} reaches outside the {width}x{height} (width x height) image: it needs "
                f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
            )
    guidance = args.guidance
    if guidance is None:
        from .toy import TOY_GUIDANCE_SCALE

        guidance = TOY_GUIDANCE_SCALE if args.model == TOY else 7.5
    kwargs: Dict[str, Any] = dict(
        num_inference_steps=args.steps,
        n_last_diffusion_steps_to_consider_for_attributions=args.traced,
        guidance_scale=guidance,
        attribution_method=args.method,
        attribution_level=args.level,
        height=explainer_size[0],
        width=explainer_size[1],
    )
    if args.negative_prompt:
        kwargs["negative_prompt"] = args.negative_prompt
    outputs = run_explanations(
        pipe,
        [(args.prompt, box) for box in boxes],
        args.seed,
        args.quiet,
        gradient_checkpointing=args.gradient_checkpointing,
        interactive=args.interactive,
        **kwargs,
    )
    settings = {
        "model": "shipped toy model" if args.model == TOY else args.model,
        "image size": f"{explainer_size[1]}x{explainer_size[0]} (width x height)",
        "steps": args.steps,
        "traced steps": "all" if args.traced is None else args.traced,
        "guidance scale": guidance,
        "seed": args.seed,
        "method": outputs[0][0].attribution_method if outputs[0] else args.method,
        "level": args.level,
    }
    if args.negative_prompt:
        settings["negative prompt"] = args.negative_prompt
    return outputs, settings, "diffusers-interpret explain"


def _image_size(pipe, height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    from .families import family_for

    default_height, default_width = family_for(pipe).default_size(pipe)
    height, width = height or default_height, width or default_width
    factor = pipe.vae_scale_factor
    if height % factor or width % factor:
        raise ValueError(f"--height and --width must be multiples of {factor} for this model, got {height}x{width}")
    return int(height), int(width)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""
    Run `diffusers-interpret` with `argv` (the process's arguments by default).

    Returns:
        `int`: 0 on success. Bad arguments print one `diffusers-interpret: error: ...` line and exit with code 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        fail(f"choose a command: demo or explain, or batch for a prompt set (see '{PROG} --help')")
    if args.command == "batch":
        from .batch.command import run_batch

        return run_batch(args)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {args.out!r} exists and is not a directory")
    quiet_libraries()
    import torch

    threads = args.threads
    if threads is None and (args.command == "demo" or args.model == TOY):
        threads = 1
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        (outputs, views), settings, title = (_run_demo if args.command == "demo" else _run_explain)(args)
        from .views.report import write_report

        path = write_report(outputs, out_dir, title=title, settings=settings, interactive_views=views)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        torch.set_num_threads(saved_threads)
    if not args.quiet:
        sys.stderr.write(f"{len(outputs)} explanations in {time.perf_counter() - started:.1f} s\n")
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
