"""Checks of the arguments every loader takes: names, splits, class indices, sizes, folders.

A mistake in an argument raises :class:`DatasetArgumentError` (a value out of its range or not among
the valid names; also a ``ValueError``) or :class:`DatasetTypeError` (a value of the wrong kind; also
a ``TypeError``). Both are :class:`~adcourse.data.DatasetError`, so ``except DatasetError`` still
catches every data problem, and their message names the value and how to fix it.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np

from .download import DatasetError


class DatasetArgumentError(DatasetError, ValueError):
    """A loader argument outside its range, or not one of the valid names."""


class DatasetTypeError(DatasetError, TypeError):
    """A loader argument of the wrong kind (a string where an int is meant, …)."""


def describe(value) -> str:
    """``value`` with its kind, for messages: ``the string '3'``, ``float 3.0``."""
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def closest_name_error(kind: str, value, valid: tuple[str, ...]) -> DatasetArgumentError:
    """The error for a misspelt name, suggesting the closest valid one."""
    lowered = {name.lower(): name for name in valid}
    close = difflib.get_close_matches(str(value).lower(), lowered, n=1)
    hint = f" Did you mean {lowered[close[0]]!r}?" if close else ""
    return DatasetArgumentError(f"Unknown {kind} {value!r}.{hint} Valid: {', '.join(valid)}.")


def check_choice(kind: str, value, valid) -> None:
    """``value`` must be one of ``valid`` (compared as given: ``'3'`` is not ``3``)."""
    if not isinstance(value, str) or value not in valid:
        raise closest_name_error(kind, value, tuple(str(v) for v in valid))


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_class_index(kind: str, value, valid) -> int:
    """``value`` as a plain int when it is one of the ints ``valid``; otherwise an error naming it.

    A digit string (``"3"``) is refused with the int to pass instead.
    """
    valid = sorted(int(v) for v in valid)
    span = f"{valid[0]}–{valid[-1]}" if valid == list(range(valid[0], valid[-1] + 1)) else str(valid)
    if not is_int(value):
        hint = f": pass {int(value)}, not {value!r}" if isinstance(value, str) and value.strip().isdigit() else ""
        raise DatasetTypeError(f"{kind} must be an int ({span}), got {describe(value)}{hint}")
    if int(value) not in valid:
        raise DatasetArgumentError(f"{kind} must be one of {span}, got {int(value)}")
    return int(value)


def check_int(kind: str, value, minimum: int = 1) -> int:
    """``value`` as a plain int of at least ``minimum``."""
    if not is_int(value):
        raise DatasetTypeError(f"{kind} must be an int of at least {minimum}, got {describe(value)}")
    if value < minimum:
        raise DatasetArgumentError(f"{kind} must be at least {minimum}, got {int(value)}")
    return int(value)


def check_seed(value) -> int:
    """A seed for ``numpy.random.default_rng``: an int of at least 0."""
    return check_int("seed", value, minimum=0)


def check_fraction(kind: str, value, low: float = 0.0, high: float = 1.0, *, low_open=False, high_open=True) -> float:
    """``value`` as a float inside the interval from ``low`` to ``high`` (open or closed ends)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DatasetTypeError(f"{kind} must be a number, got {describe(value)}")
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:  # also false for NaN
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise DatasetArgumentError(f"{kind} must be in {interval}, got {value!r}")
    return float(value)


def check_folder_name(kind: str, value) -> str:
    """A single folder name (no path separators, not ``.`` or ``..``)."""
    if not isinstance(value, str):
        raise DatasetTypeError(f"{kind} must be a folder name (a string), got {describe(value)}")
    if not value or value in (".", "..") or "/" in value or os.sep in value:
        raise DatasetArgumentError(f"{kind} must be the name of one folder, got {value!r}")
    return value


def check_root(value, default: Path) -> Path:
    """``value`` as a Path, or ``default`` when it is None."""
    if value is None:
        return default
    if not isinstance(value, (str, os.PathLike)):
        raise DatasetTypeError(f"root must be a folder path (str or Path) or None, got {describe(value)}")
    return Path(value).expanduser()


def held_out_count(fraction: float, total: int, where: str) -> int:
    """How many of ``total`` training images a ``validation_fraction`` holds out: at least 2 (a
    threshold from their scores needs a spread), and never all of them."""
    count = max(2, round(fraction * total))
    if count >= total:
        raise DatasetArgumentError(f"validation_fraction={fraction} of the {total} training images of {where} leaves "
                                   "none to train on; use a smaller fraction")
    return count
