"""Checks shared by the detectors: the ranges of their settings and the image shapes their networks need.

The type of every setting is checked when a detector is created (:mod:`adcourse.detectors`); the
range functions here, called from the ``__post_init__`` of a ``Settings`` dataclass, check the
*values* that would otherwise fail deep inside torch (a batch size of 0, a negative learning rate, a
fraction outside (0, 1), an unknown choice), with an error that names the setting, the value and
what is allowed::

    @dataclass(frozen=True)
    class Settings:
        epochs: int = 10
        lr: float = 1e-3

        def __post_init__(self):
            at_least(self, 1, "epochs")
            positive(self, "lr")
"""
from __future__ import annotations

import math


def _refuse(settings, name: str, rule: str) -> None:
    value = getattr(settings, name)
    raise ValueError(f"{name}={value!r} is out of range ({type(settings).__name__}): {name} must be {rule}")


def at_least(settings, minimum: int, *names: str) -> None:
    """Each of ``names`` is a whole number ≥ ``minimum`` (None is left to the type check)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and not value >= minimum:
            _refuse(settings, name, f"a whole number of at least {minimum}")


def positive(settings, *names: str) -> None:
    """Each of ``names`` is a finite number > 0."""
    for name in names:
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            _refuse(settings, name, "a finite number > 0")


def non_negative(settings, *names: str) -> None:
    """Each of ``names`` is a finite number ≥ 0."""
    for name in names:
        value = getattr(settings, name)
        if not (math.isfinite(value) and value >= 0):
            _refuse(settings, name, "a finite number ≥ 0")


def in_interval(settings, name: str, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """``name`` lies between ``low`` and ``high``, each end open or closed."""
    value = getattr(settings, name)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        _refuse(settings, name, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(settings, name: str, choices) -> None:
    """``name`` is one of ``choices``."""
    if getattr(settings, name) not in choices:
        _refuse(settings, name, "one of " + ", ".join(repr(c) for c in choices))


def betas(settings, name: str = "betas") -> None:
    """``name`` is Adam's pair (β1, β2), each in [0, 1); stored as a tuple."""
    value = getattr(settings, name)
    if len(value) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in value):
        _refuse(settings, name, "a pair (β1, β2) of numbers in [0, 1)")
    object.__setattr__(settings, name, tuple(float(b) for b in value))


def square_images(method: str, input_shape) -> None:
    """For networks that read one side for both: refuse C×H×W images with H ≠ W before building them."""
    if input_shape[-2] != input_shape[-1]:
        raise ValueError(f"{method} needs square images, got {input_shape[-2]}×{input_shape[-1]}; "
                         "resize or crop them (e.g. image_size=... of the dataset)")
