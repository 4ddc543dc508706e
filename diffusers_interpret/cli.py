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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .cli_arguments import (
    LEVELS,
    METHODS,
    PROG,
    ArgumentParser,
    fail,
    frame_index,
    parse_box,
    positive_int,
    traced_steps,
)
from .defaults import DEFAULT_ATTRIBUTION_METHOD, DEFAULT_NOISE_LEVELS
from .loading import TOY, load_pipeline, quiet_libraries, seeded_generator, torch_threads

DEMO_PROMPTS = (
    "a red circle on the left and a blue square on the right",
    "a yellow triangle on the right",
    "a green square on the left and a yellow circle on the right",
)
# The toy Wan video model's demo prompts: one shape moving across 9 frames.
VIDEO_DEMO_PROMPTS = ("a red circle moving right", "a blue triangle moving left")
# The toy ControlNet's demo: the first two-object scenes of this seed, held out of its training.
CONTROL_DEMO_SEED, CONTROL_DEMO_SCENES = 999, 2
_DESCRIPTION = """\
Explain the images made by diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux, Chroma, Flux 2): which prompt
words made the image.
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

_EXPLAIN_IMAGE_EPILOG = """\
The image is processed as the pipeline processes an input image (resized down to a multiple of its VAE's cell, with a
note), encoded, noised at each --noise-levels level with seeded noise (--seed) and denoised once per level with the
prompt; the maps are averaged over the levels. Gradient and ablation methods explain the model's prediction of the
clean image.

examples:
  diffusers-interpret explain-image scene.png --prompt "a red circle on the left" --out out
  diffusers-interpret explain-image dog.jpg --prompt "a dog on the grass" --model ./FLUX.1-schnell \\
      --concepts background grass --box 0,0,512,256 --device cuda --dtype bfloat16 --out dog"""

_DEMO_EPILOG = (
    """\
The demo explains three toy prompts, each for the whole image, a box around each object the toy drew and one box
over empty background:
"""
    + "\n".join(f'  "{prompt}"' for prompt in DEMO_PROMPTS)
    + """
With --family wan, two clips of the toy video model, each whole and the object's box on its first and last frames:
"""
    + "\n".join(f'  "{prompt}"' for prompt in VIDEO_DEMO_PROMPTS)
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for report.html and the PNG files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: %(default)s)")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help=f"attribution method (default: {DEFAULT_ATTRIBUTION_METHOD}, for every family; see the docs for what "
        "each costs and how truthful it is)",
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
    parser.add_argument(
        "--no-memory-check",
        dest="check_memory",
        action="store_false",
        help="explain even when the estimated memory of a gradient method's graph is more than the device has free",
    )
    parser.add_argument(
        "--no-prompt-dependence",
        dest="prompt_dependence",
        action="store_false",
        help="skip measuring how much each box depends on the prompt at all (12 redraws of two rows and their decodes "
        "per image)",
    )


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
    parser = ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    demo = commands.add_parser(
        "demo",
        help="explain a few prompts on the shipped toy model (offline, seconds on a CPU)",
        description="Explain a few prompts on the shipped toy model, offline, and write a report.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(demo)
    demo.add_argument(
        "--family",
        choices=("sd", "flux", "sd3", "controlnet", "wan"),
        default="sd",
        help="which toy model: 'sd' (Stable Diffusion 32x32, default), 'flux' (Flux 64x64, T5 in joint attention), "
        "'sd3' (SD3 64x64, two CLIPs and T5 in one sequence), 'controlnet' (the 32x32 toy with a ControlNet that "
        "reads the objects' outlines: prompts that name the shapes and prompts that name colours only) or 'wan' "
        "(Wan video, a shape moving across 9 frames of 32x32: the whole clip, and the object's box on its first "
        "and last frames)",
    )
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
        help="explain one prompt on any supported model on disk: SD, SDXL, SD3, Flux, Chroma, Flux 2 (the toy "
        "model by default)",
        description="Generate an image for PROMPT and explain it (the whole image, or boxes of it).",
        epilog=_EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("prompt", metavar="PROMPT", help="the text prompt")
    _add_model(explain)
    _add_boxes(explain, "in pixels")
    _add_common(explain)
    explain.add_argument(
        "--steps", type=positive_int, default=None, help="denoising steps (default: a toy model's own, 15 otherwise)"
    )
    explain.add_argument(
        "--traced",
        type=traced_steps,
        default=5,
        metavar="N",
        help="last denoising steps to back-propagate through, or 'all' (default: %(default)s)",
    )
    explain.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: a toy model's own, else the pipeline's own default; for Flux-dev, its "
        "guidance embedding)",
    )
    explain.add_argument(
        "--true-cfg-scale",
        type=float,
        default=None,
        help="Flux, Qwen-Image: true classifier-free guidance against --negative-prompt, the empty prompt when none "
        "is given (default: the toy Flux's 4; off otherwise)",
    )
    explain.add_argument(
        "--max-sequence-length",
        type=positive_int,
        default=None,
        help="SD3, Flux, Chroma, Flux 2, Qwen-Image, Sana, Z-Image: the text encoder's padded (or kept) length "
        "(default: the toy Flux's 16; the pipeline's otherwise: 256, 300 or 512)",
    )
    explain.add_argument(
        "--no-resolution-binning",
        action="store_true",
        help="PRX, Sana: make the image at the size asked for, not at the nearest trained aspect ratio resized (a "
        "size binning would change is refused otherwise)",
    )
    explain.add_argument(
        "--num-frames",
        type=positive_int,
        default=None,
        help="video pipelines (Wan): the clip's frames, 4 x k + 1 (default: the pipeline's, 81)",
    )
    explain.add_argument(
        "--frames",
        type=frame_index,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="video pipelines: explain frames START to STOP - 1 only (counted from 0); a --box is then the region of "
        "each of them, in a frame's pixels (default: every frame)",
    )
    explain.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's)")
    explain.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's)")
    explain.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    explain.add_argument(
        "--prompt-2",
        default=None,
        help="SDXL, SD3, Flux: the text the second text encoder reads (Flux's T5, SDXL's and SD3's CLIP-G; default: "
        "PROMPT); the report lists each text's words, labelled by encoder",
    )
    explain.add_argument(
        "--control-image",
        default=None,
        metavar="PATH",
        help="ControlNet pipelines (SD, SDXL, Flux): the control image (edges, depth, pose) the ControlNet reads; "
        "the report shows its pixel attributions and how much each box depends on it",
    )
    explain.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="pipelines that start from an image (img2img, inpainting, InstructPix2Pix, Flux Kontext's reference, "
        "Flux Fill): the input image; the report shows its pixel attributions",
    )
    explain.add_argument(
        "--mask",
        default=None,
        metavar="PATH",
        help="inpainting pipelines (SD, SDXL, Flux Fill): the mask, white where the image is repainted",
    )
    explain.add_argument(
        "--control-scale",
        type=float,
        default=None,
        help="ControlNet pipelines: the ControlNet's conditioning scale (default: the pipeline's, 1.0)",
    )
    explain.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute the traced steps in the backward pass: less memory, slower (default: on when more than one "
        "step is traced)",
    )
    _add_interactive(explain, 0)
    explain_image = commands.add_parser(
        "explain-image",
        help="explain an image you already have with a prompt: which words the model reads where (no generation)",
        description="Explain IMAGE with --prompt: where the model reads each word in it (the whole image, or boxes).",
        epilog=_EXPLAIN_IMAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain_image.add_argument("image", metavar="IMAGE", help="the image file (RGB)")
    explain_image.add_argument("--prompt", required=True, help="the text to explain the image with")
    _add_model(explain_image)
    _add_boxes(explain_image, "in pixels of the image as the pipeline processes it")
    explain_image.add_argument(
        "--concepts",
        nargs="+",
        default=None,
        metavar="CONCEPT",
        help="concepts beside the prompt's words, for concept attention (SD3, Flux, Chroma, Flux 2), e.g. --concepts "
        "background sky",
    )
    explain_image.add_argument(
        "--noise-levels",
        type=_noise_level,
        nargs="+",
        default=None,
        metavar="LEVEL",
        help="levels of noise in (0, 1) the image is denoised at, averaged (default: 0.1 0.3 0.5)",
    )
    _add_common(explain_image)
    _add_interactive(explain_image, 0)
    from .batch.command import add_batch_parser

    add_batch_parser(commands)
    return parser


def _add_model(parser: argparse.ArgumentParser) -> None:
    # Which pipeline, where it runs and whether it may be fetched (`explain`, `explain-image`).
    parser.add_argument(
        "--model",
        default=TOY,
        metavar="PATH_OR_ID",
        help="a diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3, Flux, Chroma, Flux 2), or a model id in the "
        "local cache; the "
        "shipped toy models: 'toy' (default, SD 32x32), 'toy-64' (SD 64x64), 'toy-flux' (Flux 64x64), 'toy-sd3' "
        "(SD3 64x64), 'toy-wan' (Wan video, 9 frames of 32x32), each with its own size, steps and guidance unless "
        "you set them",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="weights dtype (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let diffusers fetch a model id that is not on disk (off by default: everything is loaded locally)",
    )


def _add_boxes(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument(
        "--box",
        type=parse_box,
        action="append",
        default=None,
        metavar="x0,y0,x1,y1",
        help=f"region to explain, {where}; repeat for several boxes (default: the whole image)",
    )


def _noise_level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a noise level in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a noise level in (0, 1), got {text!r}")
    return value


def run_explanations(
    pipe,
    jobs: Sequence[Tuple],
    seed: int,
    quiet: bool,
    gradient_checkpointing: Optional[bool] = None,
    **explain_kwargs,
) -> List[Any]:
    r"""
    Explain `(prompt, box)` jobs, every one from the same seed (so the boxes of a prompt share one image), or
    `(prompt, box, (start, stop))` for a clip's box on those frames of its own (else `explanation_frames`, if given).
    Returns the outputs and, with `interactive=CELL` (> 0), the HTML of an interactive view per prompt.
    """

    from .explainers import explainer_for

    if not quiet:
        pipe.set_progress_bar_config(disable=False, leave=False, desc="Denoising")
    explainer = explainer_for(pipe, verbose=not quiet, gradient_checkpointing=gradient_checkpointing)
    outputs = []
    interactive = explain_kwargs.pop("interactive", 0)
    from .progress import progress_bar

    first: Dict[str, Any] = {}
    for job in progress_bar(jobs, "Explanations", disable=quiet or len(jobs) < 2, unit="expl", leave=True):
        prompt, box = job[:2]
        frames = job[2] if len(job) > 2 else explain_kwargs.get("explanation_frames")
        spanned = {} if frames is None else {"explanation_frames": frames}
        output = None
        if prompt in first and explainer.input_kind is None:  # an input image's pixels need each box's own call
            try:  # what the prompt's first call kept (recorded maps) explains another box without generating again
                output = first[prompt].explain(box, **spanned)
            except RuntimeError:
                pass
        if output is None:
            output = explainer(
                prompt,
                explanation_2d_bounding_box=box,
                generator=seeded_generator(seed, pipe.device),
                output_type="pil",
                **{**explain_kwargs, **spanned},
            )
            first.setdefault(prompt, output)
        outputs.append(output)
    views: Dict[str, str] = {}
    if interactive and outputs and outputs[0].attribution_method == "word_attention":
        # The cards' method: the view's bars come from the word maps the outputs hold (no generation).
        for prompt, output in zip((job[0] for job in jobs), outputs):
            if prompt not in views:
                views[prompt] = output.interactive_view(min(interactive, *output.image.size)).to_html()
    elif interactive:
        gradient_kwargs = dict(explain_kwargs, attribution_method="grad_x_input")
        for prompt in dict.fromkeys(job[0] for job in jobs):
            output = explainer(
                prompt,
                generator=seeded_generator(seed, pipe.device),
                keep_for_reexplanation="graph",
                attention_maps=True,
                **gradient_kwargs,
            )
            cell = min(interactive, *output.image.size)
            views[prompt] = output.interactive_view(cell).to_html()
            output.release()
    return outputs, views


def _run_demo(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], str]:
    from .toy import TOY_MODELS
    from .toy.detector import object_boxes

    names = {"flux": "toy-flux", "sd3": "toy-sd3", "controlnet": "toy-controlnet", "wan": "toy-wan"}
    toy = TOY_MODELS[names.get(args.family, TOY)]
    pipe = toy.load()
    call = dict(toy.call)
    call["num_inference_steps"] = args.steps or call["num_inference_steps"]
    options = dict(
        interactive=args.interactive,
        n_last_diffusion_steps_to_consider_for_attributions=args.traced,
        attribution_method=args.method,
        attribution_level=args.level,
        check_memory=args.check_memory,
        prompt_dependence=args.prompt_dependence,
    )
    if args.family == "controlnet":
        outputs = _control_demo(pipe, args, call, options)
    elif args.family == "wan":
        outputs = _video_demo(pipe, args, call, options)
    else:
        # Per prompt: the whole image, a box around each object the toy drew and one over empty background.
        jobs = []
        for prompt in DEMO_PROMPTS:
            generator = seeded_generator(args.seed, pipe.device)
            image = pipe(prompt, generator=generator, output_type="np", **call).images[0]
            jobs += [(prompt, None)] + [(prompt, box) for _, box in object_boxes(image)]
        outputs = run_explanations(pipe, jobs, args.seed, args.quiet, **options, **call)
    settings = {
        "model": toy.description,
        "traced steps": _traced_setting(args.traced, call),
        **_call_settings(call),
        "seed": args.seed,
        "method": outputs[0][0].attribution_method if outputs[0] else args.method,
        "level": args.level,
    }
    return outputs, settings, f"diffusers-interpret demo: the {toy.description}"


def _control_demo(pipe, args: argparse.Namespace, call: Dict[str, Any], options: Dict[str, Any]):
    # The toy ControlNet on two held-out scenes' outlines, each with its full prompt and with a prompt that names the
    # colours only (the shapes then come from the control image alone): the whole image and each object's box.
    import numpy as np

    from .box import mask_box
    from .toy.control import color_only_prompt, outline_image
    from .toy.scenes import render_scene, sample_scene_spec

    rng = np.random.default_rng(CONTROL_DEMO_SEED)
    scenes = [render_scene(sample_scene_spec(rng, 2)) for _ in range(CONTROL_DEMO_SCENES)]
    outputs, views = [], {}
    for scene in scenes:
        boxes = [mask_box(mask) for mask in scene.masks]
        for prompt in (scene.prompt, color_only_prompt(scene)):
            jobs = [(prompt, None)] + [(prompt, box) for box in boxes]
            made, made_views = run_explanations(
                pipe, jobs, args.seed, args.quiet, image=outline_image(scene), **options, **call
            )
            outputs += made
            views.update(made_views)
    return outputs, views


def _video_demo(pipe, args: argparse.Namespace, call: Dict[str, Any], options: Dict[str, Any]):
    # The toy Wan's clips: the whole clip, then the box of the object the detector finds on the first and on the last
    # frame (as the image demo finds its boxes: on the pipeline's own clip from the same seed).
    from .toy.clips import check_clip

    jobs = []
    for prompt in VIDEO_DEMO_PROMPTS:
        clip = pipe(prompt, generator=seeded_generator(args.seed, pipe.device), output_type="np", **call).frames[0]
        boxes = check_clip(clip, prompt).boxes()
        last = len(boxes) - 1
        jobs += [(prompt, None)] + [(prompt, boxes[k], (k, k + 1)) for k in (0, last) if boxes[k] is not None]
    return run_explanations(pipe, jobs, args.seed, args.quiet, **options, **call)


def _check_call_options(pipe, call: Dict[str, Any]) -> None:
    import inspect

    accepted = inspect.signature(type(pipe).__call__).parameters
    options = ("true_cfg_scale", "max_sequence_length", "negative_prompt", "prompt_2", "use_resolution_binning")
    for key in (*options, "num_frames"):
        if call.get(key) is not None and key not in accepted:
            option = "no-resolution-binning" if key == "use_resolution_binning" else key.replace("_", "-")
            fail(f"--{option} is not an argument of this model's {type(pipe).__name__}: leave it out")


def _image_call(pipe, args: argparse.Namespace) -> Dict[str, Any]:
    # The input images a pipeline starts from: a ControlNet's control image (under the pipeline's own argument name)
    # and conditioning scale, an input image and an inpainting mask.
    from .families import InputKind, supported_pipeline

    kind, name = supported_pipeline(pipe).input_kind, type(pipe).__name__
    family = supported_pipeline(pipe).family
    if kind is not InputKind.CONTROL:
        for option, value in (("--control-image", args.control_image), ("--control-scale", args.control_scale)):
            if value is not None:
                fail(f"{option} is for ControlNet pipelines; this model's {name} has no ControlNet")
    if kind not in (InputKind.IMAGE, InputKind.INPAINT) and args.image is not None:
        fail(f"--image is for pipelines that start from an image; this model's {name} does not take one")
    if kind is not InputKind.INPAINT and args.mask is not None:
        fail(f"--mask is for inpainting pipelines; this model's {name} repaints no mask")
    call: Dict[str, Any] = {}
    if kind is InputKind.CONTROL:
        if args.control_image is None:
            fail(f"this model's {name} reads a control image: pass --control-image PATH")
        call[family.input_image(pipe)[0]] = _read_image(args.control_image, "--control-image")
        if args.control_scale is not None:
            call["controlnet_conditioning_scale"] = args.control_scale
    elif kind in (InputKind.IMAGE, InputKind.INPAINT):
        if args.image is None:
            fail(f"this model's {name} starts from an image: pass --image PATH")
        call["image"] = _read_image(args.image, "--image")
        if kind is InputKind.INPAINT:
            if args.mask is None:
                fail(f"this model's {name} repaints a mask: pass --mask PATH (white where repainted)")
            call["mask_image"] = _read_image(args.mask, "--mask", mode="L")
    return call


def _read_image(given: str, option: str, mode: str = "RGB"):
    from PIL import Image

    path = Path(given).expanduser()
    if not path.is_file():
        fail(f"{option} {given!r} is not a file")
    try:
        with Image.open(path) as opened:
            return opened.convert(mode)
    except OSError as error:
        fail(f"{option} {given!r} is not an image Pillow can read ({error})")


def _traced_setting(traced, call) -> object:
    # The steps traced, as the call runs them: "all", or N where the call makes at least N steps.
    steps = call.get("num_inference_steps")
    if traced is None or (steps is not None and traced >= steps):
        return "all"
    return traced


def _call_settings(call: Dict[str, Any]) -> Dict[str, Any]:
    # The generation arguments as a report lists them.
    names = {
        "num_inference_steps": "steps",
        "guidance_scale": "guidance scale",
        "true_cfg_scale": "true CFG scale",
        "negative_prompt": "negative prompt",
        "max_sequence_length": "max sequence length",
        "use_resolution_binning": "resolution binning",
        "controlnet_conditioning_scale": "control scale",
    }
    settings = {}
    if "height" in call:
        settings["image size"] = f"{call['width']}x{call['height']} (width x height)"
    for key, label in names.items():
        if call.get(key) is not None:
            value = call[key]
            settings[label] = repr(value) if key == "negative_prompt" else value
    return settings


def _run_explain(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], str]:
    from .box import normalize_box
    from .toy import TOY_MODELS

    if not args.prompt.strip():
        fail("PROMPT is empty")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.allow_download)
    # A toy model's own call (size, steps, guidance), then what the command line sets.
    toy = TOY_MODELS.get(args.model)
    call: Dict[str, Any] = dict(toy.call) if toy else {"num_inference_steps": 15}
    given = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "true_cfg_scale": args.true_cfg_scale,
        "max_sequence_length": args.max_sequence_length,
        "negative_prompt": args.negative_prompt,
        "prompt_2": args.prompt_2,
        "use_resolution_binning": False if args.no_resolution_binning else None,
        "num_frames": args.num_frames,
    }
    call.update({key: value for key, value in given.items() if value is not None})
    _check_call_options(pipe, call)
    if args.frames is not None:
        import inspect

        if "num_frames" not in inspect.signature(type(pipe).__call__).parameters:
            fail(f"--frames is for video pipelines; this model's {type(pipe).__name__} makes images")
        call["explanation_frames"] = tuple(args.frames)
    call.update(_image_call(pipe, args))
    if (call.get("true_cfg_scale") or 1.0) > 1 and call.get("negative_prompt") is None:
        call["negative_prompt"] = ""  # true classifier-free guidance needs a negative prompt: the empty one
    if _sized_by_call(pipe):
        height, width = _image_size(pipe, args.height or call.get("height"), args.width or call.get("width"))
        call.update(height=height, width=width)
    else:  # InstructPix2Pix, HunyuanVideo 1.5 image-to-video: the size the pipeline makes of the input image
        if args.height or args.width:
            fail(f"this model's {type(pipe).__name__} takes its size from --image: resize the image instead")
        from .families import family_for

        family = family_for(pipe)
        try:
            size = family.input_size(pipe, call["image"]) if hasattr(call["image"], "getpixel") else None
        except ValueError as error:
            fail(str(error))
        processor = getattr(pipe, family.input_image(pipe)[1])
        height, width = size if size is not None else processor.get_default_height_width(call["image"])
    for box in args.box or [None]:  # checked before any generation
        try:
            normalize_box(box, height, width)
        except ValueError:
            (x0, y0), (x1, y1) = box
            fail(
                f"--box {x0},{y0},{x1},{y1} reaches outside the {width}x{height} (width x height) image: it needs "
                f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
            )
    outputs = run_explanations(
        pipe,
        [(args.prompt, box) for box in args.box or [None]],
        args.seed,
        args.quiet,
        gradient_checkpointing=args.gradient_checkpointing,
        interactive=args.interactive,
        n_last_diffusion_steps_to_consider_for_attributions=args.traced,
        attribution_method=args.method,
        attribution_level=args.level,
        check_memory=args.check_memory,
        prompt_dependence=args.prompt_dependence,
        **call,
    )
    settings = {
        "model": toy.description if toy else args.model,
        **{
            label: value
            for label, value in (
                ("input image", args.image),
                ("mask", args.mask),
                ("control image", args.control_image),
            )
            if value
        },  # fmt: skip
        "traced steps": _traced_setting(args.traced, call),
        **_call_settings(call),
        "seed": args.seed,
        "method": outputs[0][0].attribution_method if outputs[0] else args.method,
        "level": args.level,
    }
    return outputs, settings, "diffusers-interpret explain"


def _run_explain_image(args: argparse.Namespace) -> Tuple[List[Any], Dict[str, Any], str]:
    from PIL import Image

    if not args.prompt.strip():
        fail("--prompt is empty")
    path = Path(args.image).expanduser()
    if not path.is_file():
        fail(f"IMAGE {args.image!r} is not a file")
    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except OSError:
        fail(f"IMAGE {args.image!r} is not an image file Pillow can read")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.allow_download)
    from .explainers import explainer_for
    from .toy import TOY_MODELS

    explainer = explainer_for(pipe, verbose=not args.quiet)
    options = dict(
        attribution_method=args.method,
        attribution_level=args.level,
        concepts=args.concepts,
        noise_levels=args.noise_levels,
        noise_seed=args.seed,
        check_memory=args.check_memory,
        prompt_dependence=args.prompt_dependence,
    )
    outputs = [explainer.explain_image(image, args.prompt, explanation_2d_bounding_box=box, **options)
               for box in (args.box or [None])]  # fmt: skip
    views: Dict[str, str] = {}
    if args.interactive and outputs[0].word_maps is not None:
        views[args.prompt] = outputs[0].interactive_view(min(args.interactive, *outputs[0].image.size)).to_html()
    first = outputs[0]
    settings = {
        "model": TOY_MODELS[args.model].description if args.model in TOY_MODELS else args.model,
        "image": f"{path.name} ({first.image.width}x{first.image.height} as the pipeline processed it)",
        "noise levels": ", ".join(f"{v:g}" for v in (args.noise_levels or DEFAULT_NOISE_LEVELS)),
        "noise seed": args.seed,
        "method": first.attribution_method,
        "level": args.level,
    }
    if args.concepts:
        settings["concepts"] = ", ".join(args.concepts)
    return (outputs, views), settings, "diffusers-interpret explain-image"


def _sized_by_call(pipe) -> bool:
    import inspect

    return "height" in inspect.signature(type(pipe).__call__).parameters


def _image_size(pipe, height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    from .families import family_for

    default_height, default_width = family_for(pipe).default_size(pipe)
    height, width = height or default_height, width or default_width
    factor = getattr(pipe, "vae_scale_factor", None) or family_for(pipe).size_multiple(pipe) or 8
    if height % factor or width % factor:
        raise ValueError(f"--height and --width must be multiples of {factor} for this model, got {height}x{width}")
    return int(height), int(width)


def _toy_names() -> Sequence[str]:
    from .toy import TOY_MODELS

    return tuple(TOY_MODELS)


def _boxes_joined(argv: List[str]) -> List[str]:
    # `--box -1,0,16,16` reads to argparse as two options; joined as `--box=-1,0,16,16` the box is parsed (and a box
    # outside the image is refused for what it is).
    joined, k = [], 0
    while k < len(argv):
        if argv[k] == "--box" and k + 1 < len(argv) and argv[k + 1].startswith("-") and "," in argv[k + 1]:
            joined.append(f"--box={argv[k + 1]}")
            k += 2
            continue
        joined.append(argv[k])
        k += 1
    return joined


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""
    Run `diffusers-interpret` with `argv` (the process's arguments by default).

    Returns:
        `int`: 0 on success. Bad arguments print one `diffusers-interpret: error: ...` line and exit with code 2.
    """
    parser = build_parser()
    args = parser.parse_args(_boxes_joined(list(sys.argv[1:] if argv is None else argv)))
    if args.command is None:
        fail(f"choose a command: demo, explain or explain-image, or batch for a prompt set (see '{PROG} --help')")
    if args.command == "batch":
        from .batch.command import run_batch

        return run_batch(args)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {args.out!r} exists and is not a directory")
    # Before any model loads: a folder that cannot be made is refused at once (nothing is created yet).
    existing = next(parent for parent in [out_dir.absolute(), *out_dir.absolute().parents] if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        why = "is a file" if not existing.is_dir() else "is not writable"
        fail(f"--out {args.out!r} cannot be created: {str(existing)!r} {why}; choose another folder")
    quiet_libraries()
    threads = args.threads
    if threads is None and (args.command == "demo" or args.model in _toy_names()):
        threads = 1
    started = time.perf_counter()
    try:
        with torch_threads(threads):
            run = {"demo": _run_demo, "explain": _run_explain, "explain-image": _run_explain_image}[args.command]
            (outputs, views), settings, title = run(args)
            from .views.report import write_report

            path = write_report(outputs, out_dir, title=title, settings=settings, interactive_views=views)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError, MemoryError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    if not args.quiet:
        sys.stderr.write(f"{len(outputs)} explanations in {time.perf_counter() - started:.1f} s\n")
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
