"""The `diffusers-interpret batch` command: its arguments and its run (the API is `explain_dataset`)."""

import argparse
import sys
from pathlib import Path

from ..cli_arguments import LEVELS, METHODS, PROG, fail, parse_box, positive_int, traced_steps
from ..loading import TOY, quiet_libraries, torch_threads

_EPILOG = """\
PROMPTS is a .jsonl or .csv file with one record per line (prompt; optional id, prompt_2, seed, negative_prompt,
boxes as [[x0,y0,x1,y1], ...], init_image, control_image for a ControlNet model), or a folder saved with datasets'
save_to_disk. Writes DIR/data/*.parquet (one row per record and box), DIR/images/*.png and DIR/manifest.json. Run
the same command again to finish a stopped run.

examples:
  diffusers-interpret batch prompts.jsonl --model toy --steps 10 --out runs/toy
  accelerate launch --num_processes 8 -m diffusers_interpret batch prompts.jsonl \\
      --model ./stable-diffusion-v1-5 --dtype bfloat16 --steps 15 --traced 3 --out runs/sd15"""


def add_batch_parser(commands) -> argparse.ArgumentParser:
    r"""Add the `batch` subcommand to the `diffusers-interpret` subparsers `commands` and return its parser."""
    batch = commands.add_parser(
        "batch",
        help="explain a prompt set (JSONL, CSV or a saved dataset) into Parquet shards, on one or many processes",
        description="Explain every record of PROMPTS, resumable, on one process or many (accelerate launch, torchrun)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("prompts", metavar="PROMPTS", help="a .jsonl or .csv file, or a saved datasets folder")
    batch.add_argument(
        "--model",
        default=TOY,
        metavar="PATH_OR_ID",
        help="a diffusers folder, a cached id, or a shipped toy run with its own call: 'toy' (default), 'toy-64', "
        "'toy-flux', 'toy-sd3'",
    )
    batch.add_argument("--out", required=True, metavar="DIR", help="output folder (Parquet shards, PNGs, manifest)")
    batch.add_argument("--method", choices=METHODS, default=None, help="attribution method (default: the family's)")
    batch.add_argument("--level", choices=LEVELS, default="token_embeddings", help="default: %(default)s")
    batch.add_argument(
        "--box",
        "--boxes",
        dest="box",
        type=parse_box,
        action="append",
        default=None,
        metavar="x0,y0,x1,y1",
        help="box for records that give none; repeat for several (default: the whole image)",
    )
    batch.add_argument("--steps", type=positive_int, default=15, help="denoising steps (default: %(default)s)")
    batch.add_argument(
        "--traced",
        type=traced_steps,
        default=5,
        metavar="N",
        help="last steps traced or 'all' (default: %(default)s)",
    )
    batch.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default: a toy's own, else the pipeline's)"
    )
    for side in ("height", "width"):
        batch.add_argument(
            f"--{side}", type=positive_int, default=None, help=f"image {side} (default: a toy's own, else the model's)"
        )
    batch.add_argument("--strength", type=float, default=None, help="img2img strength for init_image records")
    batch.add_argument(
        "--maps",
        type=positive_int,
        default=None,
        metavar="SIZE",
        help="also store per-token maps (word_attention) averaged down to SIZE x SIZE, float16 (default: none)",
    )
    batch.add_argument("--seed", type=int, default=0, help="run seed for records without one (default: %(default)s)")
    batch.add_argument("--restart", action="store_true", help="discard what --out holds and start again")
    batch.add_argument(
        "--batch-size", type=positive_int, default=8, help="records per Parquet shard (default: %(default)s)"
    )
    batch.add_argument("--device", default=None, help="torch device (default: accelerate's for each process)")
    batch.add_argument("--cpu", action="store_true", help="keep every process on the CPU")
    batch.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="default: %(default)s"
    )
    batch.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute traced steps in the backward pass (default: on when more than one step is traced)",
    )
    batch.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads per process (default: 1 for toy)"
    )
    batch.add_argument(
        "--log-every", type=float, default=30.0, help="seconds between progress lines outside a terminal"
    )
    batch.add_argument(
        "--toy-truth",
        action="store_true",
        help="at the end, score the boxes of two-object toy scene prompts against the truth (see the docs)",
    )
    batch.add_argument("--quiet", action="store_true", help="no progress and no summary")
    return batch


def run_batch(args: argparse.Namespace) -> int:
    r"""Run `diffusers-interpret batch` with parsed `args`; prints the output folder on stdout (main process)."""
    quiet_libraries()
    from .runner import explain_dataset

    threads = args.threads if args.threads is not None else (1 if args.model == TOY else None)
    boxes = None if args.box is None else [[*box[0], *box[1]] for box in args.box]
    try:
        with torch_threads(threads):
            output = explain_dataset(
                args.model,
                args.prompts,
                args.out,
                method=args.method,
                level=args.level,
                steps=args.steps,
                traced=args.traced,
                guidance=args.guidance,
                height=args.height,
                width=args.width,
                strength=args.strength,
                boxes=boxes,
                map_size=args.maps,
                seed=args.seed,
                restart=args.restart,
                batch_size=args.batch_size,
                device=args.device,
                dtype=args.dtype,
                gradient_checkpointing=args.gradient_checkpointing,
                cpu=args.cpu,
                progress=not args.quiet,
                log_every=args.log_every,
            )
    except (ValueError, FileNotFoundError, OSError, ImportError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; run the same command again to finish\n")
        return 130
    if _is_main(args.cpu):
        if args.toy_truth:
            from .toy_truth import toy_truth

            sys.stderr.write(f"batch: {toy_truth(output.out_dir).summary()}\n")
        print(Path(output.out_dir))
    return 0


def _is_main(cpu: bool) -> bool:
    from .sharding import process_group

    return process_group(cpu=cpu).is_main
