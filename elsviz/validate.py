"""Argument checks shared by the public API: each returns the clean value or raises ElsvizError
with a message that says what to pass.

Integers are ints (numpy and 0-d torch integers too), never bools, floats or strings; numbers are
real numbers, never strings or bools. Nothing here guesses: 1.0 is not an integer and "3" is not 3.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch

from .errors import ElsvizError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; numpy's generators any int >= 0


def is_int(value) -> bool:
    """True for Python, numpy and 0-d integer torch values; False for bools, floats, strings."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return False


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:,} to {hi:,}"
    if lo is not None:
        return f" >= {lo:,}"
    if hi is not None:
        return f" <= {hi:,}"
    return ""


def as_int(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """value as an int in [lo, hi] (either bound may be None)."""
    if not is_int(value):
        raise ElsvizError(f"{name} must be an integer{_range_text(lo, hi)}{hint}, got {value!r} "
                          f"({type(value).__name__}).")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ElsvizError(f"{name} must be an integer{_range_text(lo, hi)}{hint}, got {v:,}.")
    return v


def as_float(name: str, value, lo: float | None = None, hi: float | None = None, *, open_range: bool = False,
             hint: str = "") -> float:
    """value as a finite float in [lo, hi] (strictly inside when open_range)."""
    ok_type = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, torch.Tensor):
        ok_type = value.ndim == 0 and value.dtype != torch.bool and not value.is_complex()
    where = ""
    if lo is not None and hi is not None:
        where = f" {'strictly ' if open_range else ''}between {lo:g} and {hi:g}"
    elif lo is not None:
        where = f" {'>' if open_range else '>='} {lo:g}"
    elif hi is not None:
        where = f" {'<' if open_range else '<='} {hi:g}"
    if not ok_type:
        raise ElsvizError(f"{name} must be a number{where}{hint}, got {value!r} ({type(value).__name__}).")
    v = float(value)
    inside = math.isfinite(v)
    if lo is not None:
        inside = inside and (v > lo if open_range else v >= lo)
    if hi is not None:
        inside = inside and (v < hi if open_range else v <= hi)
    if not inside:
        raise ElsvizError(f"{name} must be a number{where}{hint}, got {v}.")
    return v


def as_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ElsvizError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def as_seed(value, name: str = "seed") -> int:
    """A seed for the random generators: an integer from 0 to 2**63 - 1."""
    if not is_int(value) or not 0 <= int(value) <= MAX_SEED:
        raise ElsvizError(f"{name} must be an integer from 0 to 2**63 - 1 (same seed, same noise), got {value!r}.")
    return int(value)


def as_label(value, name: str = "label") -> int | None:
    """None (every image) or a class label, an integer >= 0."""
    if value is None:
        return None
    return as_int(name, value, 0, MAX_SEED, " (a class of the training set) or None for every class")


def as_pixel(value, height: int, width: int, name: str = "pixel") -> tuple[int, int]:
    """(row, col) of a pixel of a height x width image: two integers."""
    if isinstance(value, torch.Tensor) or isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 else value
    hint = f"{name} must be (row, col), two integers with 0 <= row < {height} and 0 <= col < {width}"
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) for v in value):
        raise ElsvizError(f"{hint}; got {value!r}.")
    i, j = int(value[0]), int(value[1])
    if not (0 <= i < height and 0 <= j < width):
        raise ElsvizError(f"{hint}; ({i}, {j}) lies outside the {height}x{width} image.")
    return i, j


def as_choice(name: str, value, choices) -> str:
    """One of `choices` (strings), case-insensitively."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ElsvizError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value.lower()


def as_callback(value, name: str = "callback") -> Callable | None:
    if value is not None and not callable(value):
        raise ElsvizError(f"{name} must be a function called with each step's frame, or None; got {value!r}.")
    return value


def as_text(name: str, value) -> str:
    if not isinstance(value, str):
        raise ElsvizError(f"{name} must be a string, got {value!r} ({type(value).__name__}).")
    return value
