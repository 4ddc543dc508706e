"""The command line's words: its name, the choices it offers, and how it reads and refuses an argument."""

import argparse
import sys
from typing import NoReturn, Optional, Tuple

from .methods import method_names

PROG = "diffusers-interpret"
# The one registry of methods (torch-free, so that `--help` stays fast).
METHODS = method_names()
LEVELS = ("token_embeddings", "text_encoder_output")


class ArgumentParser(argparse.ArgumentParser):
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


def _integer(text: str, least: int, expected: str) -> int:
    # `text` as an integer >= `least`; `argparse.ArgumentTypeError` saying what was `expected` otherwise.
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    r"""`text` as an integer >= 1; `argparse.ArgumentTypeError` otherwise."""
    return _integer(text, 1, "a positive integer")


def frame_index(text: str) -> int:
    r"""A frame's index: an integer >= 0; `argparse.ArgumentTypeError` otherwise."""
    return _integer(text, 0, "a frame index (an integer >= 0)")


def traced_steps(text: str) -> Optional[int]:
    r"""`--traced`'s value: an integer >= 0, or `None` for `'all'`; `argparse.ArgumentTypeError` otherwise."""
    return None if text.lower() == "all" else _integer(text, 0, "an integer >= 0 or 'all'")
