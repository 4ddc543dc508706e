"""Argument checks shared by every public entry point: each names the argument, what it got and what to pass."""

import math
from typing import Optional, Tuple, Union


def positive_int(value, name: str, allow_none: bool = True) -> None:
    r"""Raise a `ValueError` unless `value` is an integer >= 1 (or `None` where allowed); bools are refused."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def int_list(value, name: str) -> list:
    r"""`value` (an iterable of integers) as a list; a `ValueError` naming `name` for anything else."""
    items = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else None
    if items is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"`{name}` must be a list of integers, got {value!r}.")
    return items


def finite_number(value, name: str, low: Optional[float] = None, high: Optional[float] = None) -> None:
    r"""Raise a `ValueError` unless `value` is a finite real number (within [low, high] where given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value!r}.")


def positive_number(value, name: str) -> None:
    r"""Raise a `ValueError` unless `value` is a finite real number > 0."""
    finite_number(value, name)
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def cell_size(value: Union[int, Tuple[int, int]], height: int, width: int, name: str = "cell_size") -> Tuple[int, int]:
    r"""A cell size (an int, or (height, width)) as (height, width), each between 1 and the image's side."""
    cell = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(cell, (tuple, list))
        or len(cell) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in cell)
        or not (1 <= cell[0] <= height and 1 <= cell[1] <= width)
    ):
        raise ValueError(
            f"`{name}` must be a whole number of pixels (or a (height, width) pair) between 1 and the image size "
            f"{width}x{height} (width x height), got {value!r}."
        )
    return int(cell[0]), int(cell[1])


def optional_str(value, name: str) -> None:
    r"""Raise a `TypeError` unless `value` is `None` or a string."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, got {type(value).__name__}.")
