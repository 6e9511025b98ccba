"""Exercise helpers: checks that give students a hint, and the student version of the notebooks.

Checks (use them in the cell after a code exercise)::

    from adcourse.exercises import check, check_shape, check_range, check_close, check_function

    check_shape(recon, (16, 1, 32, 32), "recon")
    check_close(score, expected, "score", atol=1e-5)
    check_function(image_score, [("all ones", (torch.ones(2, 1, 4, 4),), torch.ones(2))])

Each prints a short line starting with ✓ when it passes and raises :class:`ExerciseError`
(an ``AssertionError``) with a hint when it does not. The chapters' own code exercises have checks
named after their chapter, ``check_chNN_<what>(student_function)`` (``check_ch07_squash``), which
name the usual mistakes in their hints.

Command line::

    python -m adcourse.exercises student notebooks student   # notebooks/*.ipynb -> student/
    python -m adcourse.exercises check-stripped student      # fails if a solution is left

Notebook conventions (see ``book/conventions.md``): code solutions sit between the lines
``# BEGIN SOLUTION`` and ``# END SOLUTION`` in code cells tagged ``solution``; prose solutions are
sphinx-exercise ``{solution}`` directives (backtick or colon fences) in Markdown cells.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

__all__ = [
    "ExerciseError",
    "StudentVersionError",
    "check",
    "check_shape",
    "check_range",
    "check_close",
    "check_function",
    "check_ch01_pro_at_threshold",
    "check_ch02_ssim_terms",
    "check_ch03_denoising_loss",
    "check_ch04_gradient_norm",
    "check_ch05a_critic_loss",
    "check_ch05b_mahalanobis_pixels",
    "check_ch06_negative_elbo",
    "check_ch07_squash",
    "check_ch08_pyramid_features",
    "check_ch08_se_gate",
    "check_ch09_weighted_component_nll",
    "check_ch10_position_gaussians",
    "strip_code_solution",
    "strip_markdown_solutions",
    "make_student_notebook",
    "make_student_version",
    "StudentVersion",
    "find_leftover_solutions",
]


# ---------------------------------------------------------------------------------------------
# Checks with hints
# ---------------------------------------------------------------------------------------------


class ExerciseError(AssertionError):
    """A check failed; the message is a hint for the student."""


def _function_name(fn) -> str:
    """The name a hint gives the learner's function: its own, or "your function" for a lambda."""
    name = getattr(fn, "__name__", None)
    return "your function" if name in (None, "<lambda>") else name


def _ok(message: str) -> None:
    print(f"✓ {message}")


def check(condition: Any, hint: str, success: str = "check passed") -> None:
    """Raise :class:`ExerciseError` with ``hint`` unless ``condition`` is true."""
    if not bool(condition):
        raise ExerciseError(hint)
    _ok(success)


def _as_tensor(value: Any, name: str):
    """Turn a tensor, array, number or nested list into a torch tensor (hint on failure)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None:
        raise ExerciseError(
            f"`{name}` is None: did the function forget to `return` its result?"
        )
    try:
        return torch.as_tensor(np.asarray(value))
    except Exception as error:  # noqa: BLE001 - the hint is the point
        raise ExerciseError(
            f"`{name}` should be a tensor or an array, got {type(value).__name__} ({error})"
        ) from None


def _shape_of(value: Any, name: str) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise ExerciseError(
            f"`{name}` should be a tensor or an array with a shape, got {type(value).__name__}"
            + (": did the function forget to `return` its result?" if value is None else "")
        )
    return tuple(int(s) for s in shape)


def check_shape(tensor: Any, expected: Sequence[int | None], name: str = "tensor") -> None:
    """Check ``tensor.shape``; ``None`` in ``expected`` accepts any size in that dimension."""
    shape = _shape_of(tensor, name)
    expected = tuple(expected)
    shown = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
    if len(shape) != len(expected):
        raise ExerciseError(
            f"`{name}` has {len(shape)} dimensions {shape} but should have {len(expected)}: "
            f"expected shape {shown}. Check for a missing or extra batch/channel dimension "
            "(unsqueeze, squeeze, flatten)."
        )
    for dim, (got, want) in enumerate(zip(shape, expected)):
        if want is not None and got != want:
            raise ExerciseError(
                f"`{name}` has shape {shape} but should be {shown}: dimension {dim} is {got}, "
                f"expected {want}."
            )
    _ok(f"{name} has shape {shape}")


def check_range(tensor: Any, low: float, high: float, name: str = "tensor") -> None:
    """Check that every value of ``tensor`` is finite and within ``[low, high]``."""
    t = _as_tensor(tensor, name).double()
    if t.numel() == 0:
        raise ExerciseError(f"`{name}` is empty: expected values in [{low}, {high}]")
    nan = int(t.isnan().sum())
    inf = int(t.isinf().sum())
    if nan or inf:
        raise ExerciseError(
            f"`{name}` has {nan} NaN and {inf} infinite values out of {t.numel()}: "
            "look for a division by zero, a log of zero, or a learning rate that is too high."
        )
    lo, hi = float(t.min()), float(t.max())
    if lo < low or hi > high:
        outside = int(((t < low) | (t > high)).sum())
        raise ExerciseError(
            f"`{name}` should lie in [{low}, {high}] but its values span [{lo:.4g}, {hi:.4g}] "
            f"({outside} of {t.numel()} values outside). A missing sigmoid/clamp, or data "
            "normalised to another range?"
        )
    _ok(f"{name} lies in [{low}, {high}] (min {lo:.4g}, max {hi:.4g})")


def _compare(
    actual: Any, expected: Any, name: str, atol: float, rtol: float, label: str | None = None
) -> str | None:
    """Return ``None`` when close, else a message that says how far off and where."""
    label = label or f"`{name}`"
    import numpy as np
    import torch

    a = _as_tensor(actual, name)
    e = _as_tensor(expected, f"expected {name}")
    if tuple(a.shape) != tuple(e.shape):
        return (
            f"{label} has shape {tuple(a.shape)} but the expected value has shape "
            f"{tuple(e.shape)}."
        )
    if a.dtype == torch.bool or e.dtype == torch.bool:
        a, e = a.to(torch.int64), e.to(torch.int64)
    a, e = a.double(), e.double()
    if a.numel() == 0:
        return None
    a_nan, e_nan = a.isnan(), e.isnan()
    if bool((a_nan != e_nan).any()):
        return f"{label} has {int(a_nan.sum())} NaN values where {int(e_nan.sum())} are expected."
    a = torch.where(a_nan, torch.zeros_like(a), a)
    e = torch.where(e_nan, torch.zeros_like(e), e)
    diff = (a - e).abs()
    diff = torch.where(diff.isnan(), torch.full_like(diff, math.inf), diff)  # inf - inf
    bad = diff > atol + rtol * e.abs()
    if not bool(bad.any()):
        return None
    flat = int(diff.argmax())
    where = tuple(int(i) for i in np.unravel_index(flat, tuple(a.shape))) if a.dim() else ()
    at = f" at index {where}" if where else ""
    return (
        f"{label} is off by up to {float(diff.max()):.4g}{at} "
        f"(got {float(a.reshape(-1)[flat]):.6g}, expected {float(e.reshape(-1)[flat]):.6g}); "
        f"{int(bad.sum())} of {a.numel()} values differ by more than the tolerance "
        f"(atol={atol:g}, rtol={rtol:g})."
    )


def check_close(
    actual: Any, expected: Any, name: str = "value", atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Check that ``actual`` is close to ``expected``; the hint says how far off and where."""
    message = _compare(actual, expected, name, atol, rtol)
    if message is not None:
        raise ExerciseError(message)
    _ok(f"{name} matches the expected value")


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _compare_nested(result: Any, expected: Any, label: str, atol: float, rtol: float) -> str | None:
    """``None`` when ``result`` matches ``expected``, else what differs, where: tuples and lists
    element by element, dicts key by key, tensors, arrays and numbers with a tolerance, anything
    else with ``==``."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(result, (tuple, list)):
            return f"{label} is {_describe(result)}, expected a {type(expected).__name__} of {len(expected)} values."
        if len(result) != len(expected):
            return f"{label} holds {len(result)} values, expected {len(expected)}."
        for index, (got, want) in enumerate(zip(result, expected)):
            message = _compare_nested(got, want, f"{label}[{index}]", atol, rtol)
            if message is not None:
                return message
        return None
    if isinstance(expected, dict):
        if not isinstance(result, dict):
            return f"{label} is {_describe(result)}, expected a dict with keys {sorted(map(str, expected))}."
        if set(result) != set(expected):
            return f"{label} has keys {sorted(map(str, result))}, expected {sorted(map(str, expected))}."
        for key in expected:
            message = _compare_nested(result[key], expected[key], f"{label}[{key!r}]", atol, rtol)
            if message is not None:
                return message
        return None
    numeric = hasattr(expected, "shape") or isinstance(expected, (int, float, complex)) and not isinstance(expected, bool)
    if numeric:
        if result is None:
            return f"{label} is None, expected {_describe(expected)}."
        return _compare(result, expected, "result", atol, rtol, label=label)
    try:
        equal = bool(result == expected)
    except Exception:  # noqa: BLE001 - e.g. a tensor compared with a list
        equal = False
    if equal:
        return None
    said = "returned" if label == "the result" else f"{label} is"
    return f"{said} {_describe(result)}, expected {_describe(expected)}."


def check_function(
    fn: Callable[..., Any],
    cases: Iterable[tuple[str, Any, Any]],
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> None:
    """Run ``fn`` on named cases ``[(name, args, expected), ...]``; report the first failure.

    ``args`` is a tuple of positional arguments (a single non-tuple value is passed alone) or a
    dict of keyword arguments. Arguments are deep-copied, so an in-place change in ``fn`` cannot
    corrupt later cases. Tuples, lists and dicts are compared element by element; tensors, arrays
    and numbers with a tolerance, anything else with ``==``.
    """
    fn_name = _function_name(fn)
    cases = list(cases)
    if not cases:
        raise ValueError("check_function needs at least one case")
    for case_name, args, expected in cases:
        args = copy.deepcopy(args)
        if isinstance(args, dict):
            call_args, call_kwargs = (), args
        elif isinstance(args, tuple):
            call_args, call_kwargs = args, {}
        else:
            call_args, call_kwargs = (args,), {}
        try:
            result = fn(*call_args, **call_kwargs)
        except NotImplementedError:
            raise ExerciseError(
                f"`{fn_name}` is not written yet: replace `raise NotImplementedError` with your "
                "code and run its cell again."
            ) from None
        except Exception as error:  # noqa: BLE001 - turned into a hint
            raise ExerciseError(
                f"`{fn_name}` raised {type(error).__name__} on case '{case_name}': {error}"
            ) from error
        if result is None and expected is not None:
            raise ExerciseError(
                f"`{fn_name}` returned None on case '{case_name}': did it forget to `return`?"
            )
        message = _compare_nested(result, expected, "the result", atol, rtol)
        if message is not None:
            raise ExerciseError(f"`{fn_name}` fails on case '{case_name}': {message}")
    _ok(f"{fn_name} passes all {len(cases)} case{'s' if len(cases) != 1 else ''}")


# ---------------------------------------------------------------------------------------------
# The chapters' code exercises: one check per exercise, named after its chapter
# ---------------------------------------------------------------------------------------------
#
# Each check runs the student's function on small cases whose answers it computes itself. When an
# answer is wrong it first compares it with the answers of the usual mistakes, so that the hint
# names the mistake rather than only the size of the error. A stub (``raise NotImplementedError``)
# gets the hint "not written yet", any other exception a hint that names it and the case. Every
# check takes well under a second on a CPU.


def _call(fn: Callable[..., Any], case: str, *args: Any, **kwargs: Any) -> Any:
    """Call the student's ``fn``; a stub or an exception becomes an :class:`ExerciseError` hint."""
    name = _function_name(fn)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseError(
            f"`{name}` is not written yet: replace `raise NotImplementedError` with your code and "
            "run its cell again."
        ) from None
    except ExerciseError:
        raise
    except Exception as error:  # noqa: BLE001 - turned into a hint
        raise ExerciseError(
            f"`{name}` raised {type(error).__name__} on case '{case}': {error}"
        ) from error


def _expect(
    fn: Callable[..., Any],
    case: str,
    result: Any,
    expected: Any,
    mistakes: Sequence[tuple[Any, str]] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    what: str = "the result",
) -> None:
    """Raise a hint unless ``result`` is close to ``expected``.

    ``mistakes`` holds ``(wrong_answer, hint)`` pairs: a result that matches a wrong answer gets
    that hint; any other wrong result gets how far off it is, and where.
    """
    name = _function_name(fn)
    if result is None:
        raise ExerciseError(f"`{name}` returned None on case '{case}': did it forget to `return`?")
    message = _compare(result, expected, "result", atol, rtol, label=what)
    if message is None:
        return
    for wrong, hint in mistakes:
        if _compare(result, wrong, "result", atol, rtol) is None:
            raise ExerciseError(f"`{name}` fails on case '{case}': {hint}")
    raise ExerciseError(f"`{name}` fails on case '{case}': {message}")


def _require(condition: Any, hint: str) -> None:
    """Raise ``hint`` as an :class:`ExerciseError` unless ``condition`` holds (prints nothing)."""
    if not bool(condition):
        raise ExerciseError(hint)


def _pair(fn: Callable[..., Any], case: str, result: Any, names: str) -> tuple[Any, Any]:
    """Unpack a result that must be a pair (``names`` says what the two parts are)."""
    name = _function_name(fn)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ExerciseError(
            f"`{name}` should return two values, {names}, on case '{case}'; it returned "
            f"{_describe(result)}."
        )
    return result[0], result[1]


def check_ch01_pro_at_threshold(fn: Callable[..., Any]) -> None:
    """Chapter 1: ``fn(masks, maps, threshold)``, the per-region overlap (PRO) at one threshold.

    ``masks`` and ``maps`` are N×H×W arrays; every 8-connected region of every mask counts once,
    whatever its size, and a pixel is flagged when its map value is ``>= threshold``.
    """
    import numpy as np
    from scipy import ndimage

    def per_region(masks, maps, threshold, structure):
        overlaps = []
        for mask, values in zip(masks, maps):
            labelled, count = ndimage.label(mask, structure=structure)
            overlaps += [(values[labelled == k] >= threshold).mean() for k in range(1, count + 1)]
        return float(np.mean(overlaps))

    def mistakes(masks, maps, threshold):
        return [
            (float((maps[masks > 0] >= threshold).mean()),
             "this is the share of defect *pixels* found. PRO averages the overlap of each defect "
             "*region*, so a small region counts as much as a large one: label the regions of "
             "each mask (scipy.ndimage.label) and average their overlaps."),
            (per_region(masks, maps, threshold, None),
             "two pixels that touch only by a corner belong to the same region: label with "
             "8-connectivity, `ndimage.label(mask, structure=np.ones((3, 3)))`."),
            (per_region(masks, maps - 1e-9, threshold, np.ones((3, 3))),
             "a pixel whose value equals the threshold is flagged: compare with `>=`, not `>`."),
        ]

    eight = np.ones((3, 3))
    large_and_small = np.zeros((3, 12, 12), dtype=bool)   # the third image has no defect
    large_and_small[0, 1:9, 1:9] = True                 # 64 pixels, all found
    large_and_small[1, 9:11, 9:11] = True               # 4 pixels, all missed
    found = np.zeros((3, 12, 12))
    found[0, 1:9, 1:9] = 1.0
    corners = np.zeros((1, 8, 8), dtype=bool)
    corners[0, [1, 2, 3], [1, 2, 3]] = True             # three pixels on a diagonal: one region
    corners[0, 5:7, 5:7] = True                         # and a square of four, found
    corner_map = np.zeros((1, 8, 8))
    corner_map[0, 1, 1] = 0.9
    corner_map[0, 5:7, 5:7] = 0.9
    tie = np.zeros((1, 6, 6), dtype=bool)
    tie[0, 2, 2:4] = True
    tie_map = np.zeros((1, 6, 6))
    tie_map[0, 2, 2:4] = [0.5, 0.2]                     # one pixel exactly at the threshold
    rng = np.random.default_rng(0)
    random_masks = rng.random((4, 16, 16)) > 0.85
    random_maps = rng.random((4, 16, 16)) + 0.5 * random_masks
    cases = [
        ("a large region found, a small one missed", large_and_small, found, 0.5),
        ("a diagonal region and a square", corners, corner_map, 0.5),
        ("a value equal to the threshold", tie, tie_map, 0.5),
        ("random masks and maps", random_masks, random_maps, 0.7),
    ]
    for case, masks, maps, threshold in cases:
        result = _call(fn, case, masks.copy(), maps.copy(), threshold)
        _expect(fn, case, result, per_region(masks, maps, threshold, eight),
                mistakes(masks, maps, threshold))
    _ok(f"{getattr(fn, '__name__', 'the function')} gives the per-region overlap on all {len(cases)} cases")


def _ssim_terms_reference(x, y, size: int = 11, sigma: float = 1.5, data_range: float = 1.0):
    """SSIM's luminance term and its contrast-structure term, the two factors of the SSIM map."""
    import torch
    import torch.nn.functional as F

    coords = torch.arange(size, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def mean(t):
        return F.conv2d(F.pad(t, (size // 2,) * 4, mode="reflect"), window)

    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y, cov = mean(x * x) - mu_x ** 2, mean(y * y) - mu_y ** 2, mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1),
            (2 * cov + c2) / (var_x + var_y + c2))


def check_ch02_ssim_terms(fn: Callable[..., Any]) -> None:
    """Chapter 2: ``fn(x, y)`` returns SSIM's two factors, ``(luminance, contrast_structure)``.

    For N×1×H×W images, each an N×1×H×W map with the Gaussian window of the chapter (11×11,
    σ = 1.5, reflected borders, data range 1); their product is the SSIM map.
    """
    import torch

    from .losses import ssim_map

    name = _function_name(fn)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    darker = (0.7 * x + 0.05 * torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)
    cases = [("a darker copy", x, darker), ("a blurred copy", x, blurred), ("identical images", x, x.clone())]
    for case, a, b in cases:
        luminance, structure = _pair(fn, case, _call(fn, case, a.clone(), b.clone()),
                                     "(luminance, contrast_structure)")
        want_l, want_cs = _ssim_terms_reference(a, b)
        swapped = "the two maps are swapped: return (luminance, contrast_structure), in that order."
        _expect(fn, case, luminance, want_l, [(want_cs, swapped)], atol=1e-6, what="the luminance map")
        _expect(fn, case, structure, want_cs, [(want_l, swapped)], atol=1e-6,
                what="the contrast-structure map")
        product = (_as_tensor(luminance, "luminance").double()
                   * _as_tensor(structure, "contrast_structure").double())
        _expect(fn, case, product, ssim_map(a, b), atol=1e-6,
                what="luminance × contrast_structure (it should be the SSIM map)")
    _ok(f"{name}: both factors are right and their product is SSIM on all {len(cases)} cases")


def check_ch03_denoising_loss(fn: Callable[..., Any]) -> None:
    """Chapter 3: ``fn(model, clean, corruption, rng)``, the loss of training with corrupted inputs.

    Corrupt the batch with ``corruption`` (one draw from ``rng`` per image, in order, as
    ``corrupt_batch`` does), run the model on it, and return the mean squared error between the
    output and the *clean* batch, as a tensor that can be back-propagated.
    """
    import numpy as np
    import torch

    from .corruption import gaussian_noise
    from .models.corruption_ae import corrupt_batch

    name = _function_name(fn)

    def white_corner(image, rng):
        corrupted = np.array(image, dtype=np.float32, copy=True)
        corrupted[:3, :3] = 1.0
        mask = np.zeros(corrupted.shape[:2], dtype=bool)
        mask[:3, :3] = True
        return corrupted, mask

    model = torch.nn.Conv2d(1, 1, 1, bias=False)        # out = 0.5·in: a model that is easy to follow
    with torch.no_grad():
        model.weight.fill_(0.5)
    clean = 0.5 * torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cases = [("a white corner", white_corner, 0), ("Gaussian noise from rng", gaussian_noise, 1)]
    for case, corruption, seed in cases:
        before = clean.clone()
        loss = _call(fn, case, model, clean, corruption, np.random.default_rng(seed))
        _require(torch.equal(clean, before), f"`{name}` changed `clean` in place: corrupt a copy "
                 "(corrupt_batch returns a new tensor).")
        corrupted = corrupt_batch(clean, corruption, np.random.default_rng(seed))
        with torch.no_grad():
            out, out_clean = model(corrupted), model(clean)
            expected = ((out - clean) ** 2).mean()
            mistakes = [
                (((out - corrupted) ** 2).mean(), "the output is compared with the corrupted input: "
                 "the target is the clean image, that is the whole idea of the method."),
                (((out_clean - clean) ** 2).mean(), "the model never saw a corrupted image: corrupt "
                 "`clean` with `corruption` first (`corrupt_batch(clean, corruption, rng)`)."),
                (((out - clean) ** 2).sum(), "use the mean of the squared errors, not their sum."),
            ]
        try:
            _expect(fn, case, loss, expected, mistakes)
        except ExerciseError as error:
            if corruption is gaussian_noise and "off by" in str(error):
                raise ExerciseError(
                    f"{error} With a random corruption, draw each image's corruption from `rng`, "
                    "one image after the other, as corrupt_batch does."
                ) from None
            raise
        _require(isinstance(loss, torch.Tensor) and loss.requires_grad,
                 f"`{name}` must return a tensor that keeps its graph (no `.item()`, no "
                 "`torch.no_grad()`): training back-propagates through it.")
    _ok(f"{name} computes the loss of training with corrupted inputs and clean targets")


def check_ch04_gradient_norm(fn: Callable[..., Any]) -> None:
    """Chapter 4: ``fn(model, coords)`` returns ‖∇Φ‖ at every coordinate, a tensor of shape (N,).

    ``model`` maps N×2 coordinates to N×1 values; the gradient is taken by autograd with respect to
    the coordinates (which arrive without ``requires_grad``).
    """
    import torch

    from .models.siren import Siren, coordinate_grid, gradient

    name = _function_name(fn)
    plane = torch.nn.Linear(2, 1)
    with torch.no_grad():
        plane.weight.copy_(torch.tensor([[3.0, 4.0]]))
        plane.bias.fill_(0.5)
    torch.manual_seed(0)
    siren = Siren(2, 16, hidden_layers=1)
    coords = coordinate_grid(6)
    for case, model in [("a plane of slope 5", plane), ("a small SIREN", siren)]:
        try:
            result = _call(fn, case, model, coords.clone())
        except ExerciseError as error:
            if "does not require grad" in str(error):
                raise ExerciseError(f"{error} — the coordinates arrive without gradients: take a "
                                    "copy with `coords.clone().requires_grad_(True)` before the "
                                    "forward pass.") from None
            raise
        points = coords.clone().requires_grad_(True)
        grad = gradient(model(points), points).detach()
        mistakes = [
            ((grad ** 2).sum(1), "this is the squared norm: take the square root (`grad.norm(dim=1)`)."),
            (grad.abs().sum(1), "this is the L1 norm |∂Φ/∂y| + |∂Φ/∂x|: use the Euclidean norm."),
            (grad, "this is the gradient itself: return its norm, one number per point "
                   "(`grad.norm(dim=1)`)."),
            (grad.norm(dim=1, keepdim=True), "return a tensor of shape (N,), one number per point "
             "(`grad.norm(dim=1)`, without keepdim)."),
        ]
        _expect(fn, case, result, grad.norm(dim=1), mistakes, atol=1e-5, rtol=1e-4)
    _ok(f"{name} gives |∇Φ| at every point, by autograd")


def check_ch05a_critic_loss(fn: Callable[..., Any]) -> None:
    """Chapter 5a: ``fn(critic, real, fake, gp_weight=10.0, generator=None)``, a WGAN-GP critic's loss.

    −(mean C(real) − mean C(fake)) + gp_weight · penalty, with the two-sided gradient penalty on
    interpolates of ``real`` and ``fake``; the check uses linear critics, whose gradient is known.
    """
    import torch

    name = _function_name(fn)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 1, 2, 2, generator=g), torch.rand(6, 1, 2, 2, generator=g) - 0.3
    for case, norm, weight in [("slope 2, λ = 10", 2.0, 10.0), ("slope 3, λ = 2.5", 3.0, 2.5),
                               ("slope 1: no penalty", 1.0, 10.0)]:
        critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
        with torch.no_grad():
            critic[1].weight.copy_(torch.tensor([[0.6, 0.0, 0.8, 0.0]]) * norm)
            critic[1].bias.fill_(0.3)
        loss = _call(fn, case, critic, real.clone(), fake.clone(), gp_weight=weight)
        with torch.no_grad():
            distance = critic(real).mean() - critic(fake).mean()
        penalty = (norm - 1.0) ** 2
        mistakes = [
            (distance + weight * penalty, "the sign of the distance is wrong: the critic *maximises* "
             "mean C(real) − mean C(fake), so its loss is −distance + λ·penalty."),
            (-distance, "the gradient penalty is missing: add gp_weight · (‖∇C(x̂)‖ − 1)², averaged "
             "over the interpolates."),
            (-distance + penalty, "the penalty is not multiplied by `gp_weight`."),
            (distance - weight * penalty, "both signs are reversed: the loss is −distance + λ·penalty."),
        ]
        _expect(fn, case, loss, -distance + weight * penalty, mistakes, atol=1e-4, rtol=1e-4)
        _require(isinstance(loss, torch.Tensor) and loss.requires_grad,
                 f"`{name}` must return a tensor connected to the critic's weights (no `.item()`, "
                 "no `torch.no_grad()`), or the critic step cannot back-propagate it.")
        # The value can be right while the penalty is cut from the graph; its gradient tells. For a
        # linear critic C(x) = w·x + b the penalty is (‖w‖ − 1)², whose gradient is 2(‖w‖ − 1) w / ‖w‖.
        weights = critic[1].weight
        (gradient,) = torch.autograd.grad(loss, weights)
        direction = weights.detach() / weights.detach().norm()
        moved_by_distance = -(real.flatten(1).mean(0) - fake.flatten(1).mean(0))
        _require(torch.allclose(gradient, moved_by_distance + weight * 2 * (norm - 1.0) * direction,
                                atol=1e-4, rtol=1e-4),
                 f"`{name}` gives the right value in case '{case}', but its gradient with respect to the "
                 "critic's weights misses the penalty's: the penalty is cut from the graph (`.item()`, "
                 "`.detach()`, or `torch.autograd.grad` without `create_graph=True`), so the critic step "
                 "never feels it.")
    _ok(f"{name} gives the WGAN-GP critic loss on linear critics")


def check_ch05b_mahalanobis_pixels(fn: Callable[..., Any]) -> None:
    """Chapter 5b: ``fn(l_r, l_d, mean, cov)``, the Mahalanobis distance of every pixel's pair.

    ``l_r`` and ``l_d`` are N×H×W maps; ``mean`` (2,) and ``cov`` (2×2) describe the pair
    (L_R, L_D) on normal pixels. Returns the N×H×W map √((v − μ)ᵀ Σ⁻¹ (v − μ)).
    """
    import numpy as np

    name = _function_name(fn)
    rng = np.random.default_rng(0)
    base = rng.random((2, 4, 5))
    l_r, l_d = 0.3 + 0.2 * base, 0.5 + 0.2 * base + 0.3 * rng.random((2, 4, 5))
    mean = np.array([0.35, 0.6])
    for case, cov in [("independent, unit variances", np.eye(2)),
                      ("correlated losses", np.array([[0.04, 0.018], [0.018, 0.09]]))]:
        result = _call(fn, case, l_r.copy(), l_d.copy(), mean.copy(), cov.copy())
        v = np.stack([l_r - mean[0], l_d - mean[1]], axis=-1)
        squared = np.einsum("...i,ij,...j->...", v, np.linalg.inv(cov), v)
        raw = np.stack([l_r, l_d], axis=-1)
        z = np.sqrt(((v / np.sqrt(np.diag(cov))) ** 2).sum(-1))
        mistakes = [
            (squared, "this is the squared distance: take the square root."),
            (np.sqrt(np.einsum("...i,ij,...j->...", v, cov, v)), "Σ is used where its inverse "
             "belongs: the distance is √(vᵀ Σ⁻¹ v) (`np.linalg.inv(cov)`)."),
            (np.sqrt(np.einsum("...i,ij,...j->...", raw, np.linalg.inv(cov), raw)),
             "the losses are not centred: subtract the normal mean from (L_R, L_D) first."),
            (z, "this divides each loss by its own standard deviation and ignores how L_R and L_D "
                "vary together: use the inverse of the whole 2×2 covariance."),
        ]
        _expect(fn, case, result, np.sqrt(squared), mistakes, atol=1e-6, rtol=1e-5)
    _ok(f"{name} gives the Mahalanobis distance of (L_R, L_D) at every pixel")


def check_ch06_negative_elbo(fn: Callable[..., Any]) -> None:
    """Chapter 6: ``fn(x_hat, x, mu, logvar, beta=1.0)``, the VAE's loss per pixel, batch mean.

    (BCE summed over an image's pixels + β·KL) divided by the number of pixels, averaged over the
    batch — what ``adcourse.models.vae_gan.vae_loss`` returns first.
    """
    import torch
    import torch.nn.functional as F

    name = _function_name(fn)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g)
    x_hat = torch.sigmoid(torch.randn(3, 1, 4, 4, generator=g))
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    d = x[0].numel()
    bce = F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(1)
    for case, beta in [("β = 1", 1.0), ("β = 4", 4.0)]:
        result = _call(fn, case, x_hat.clone(), x.clone(), mu.clone(), logvar.clone(), beta=beta)
        mistakes = [
            ((bce / d).mean(), "the KL term is missing: add β·KL(q(z|x) ‖ N(0, I)), "
             "½ Σ (μ² + σ² − log σ² − 1) per image."),
            ((bce / d + beta * kl).mean(), "the KL term must be divided by the number of pixels "
             "too: the whole loss (BCE + β·KL) is per pixel."),
            ((bce + beta * kl).mean(), "divide by the number of pixels of an image "
             "(`x[0].numel()`): the loss is per pixel."),
            (((bce - beta * kl) / d).mean(), "the KL term enters with a minus sign: the loss is the "
             "*negative* ELBO, BCE + β·KL."),
            (((bce + kl) / d).mean(), "the KL term is not multiplied by `beta`."),
        ]
        _expect(fn, case, result, ((bce + beta * kl) / d).mean(), mistakes, atol=1e-5, rtol=1e-5)
    _ok(f"{name} gives the negative ELBO per pixel")


def check_ch07_squash(fn: Callable[..., Any]) -> None:
    """Chapter 7: ``fn(s, a=1.0, dim=-1)``, the squash with the thesis's constant ``a``.

    ‖s‖²/(a + ‖s‖²) · s/‖s‖ along ``dim``, and a zero vector for a zero vector (not NaN).
    """
    import torch

    name = _function_name(fn)

    def squash(s, a=1.0, dim=-1):
        norm2 = (s ** 2).sum(dim=dim, keepdim=True)
        safe = torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
        return torch.where(norm2 > 0, norm2 / (a + norm2) * s / safe.sqrt(), torch.zeros_like(s))

    g = torch.Generator().manual_seed(0)
    lengths = torch.logspace(-1, 2, 6)[:, None]
    directions = torch.randn(6, 8, generator=g)
    s = directions / directions.norm(dim=1, keepdim=True) * lengths
    capsules = torch.randn(2, 4, 3, generator=g)                  # N × dim × capsules: vectors along dim 1
    with_zero = torch.cat([s[:2], torch.zeros(1, 8)])
    cases = [("lengths from 0.1 to 100", s, {}),
             ("a = 0.5", s, {"a": 0.5}),
             ("vectors along dim 1", capsules, {"dim": 1}),
             ("a zero vector among others", with_zero, {})]
    for case, value, options in cases:
        result = _call(fn, case, value.clone(), **options)
        if torch.is_tensor(result) and bool(result.isnan().any()):
            raise ExerciseError(
                f"`{name}` returns NaN on case '{case}': a zero vector gives 0/0. Divide by "
                "√(‖s‖² + ε) with a small ε, or return zeros where ‖s‖ = 0 (`torch.where`)."
            )
        a = options.get("a", 1.0)
        mistakes = []
        if a != 1.0:
            mistakes.append((squash(value, 1.0, options.get("dim", -1)),
                             "the constant `a` is ignored: it replaces the 1 in ‖s‖²/(a + ‖s‖²)."))
        if "dim" in options:
            mistakes.append((squash(value, a, -1), "the norm is taken along the wrong dimension: "
                             "use `dim`, e.g. `(s ** 2).sum(dim=dim, keepdim=True)`."))
        _expect(fn, case, result, squash(value, **options), mistakes, atol=1e-6, rtol=1e-4)
    _ok(f"{name} squashes with any constant a, along any dimension, and maps 0 to 0")


def check_ch08_se_gate(fn: Callable[..., Any]) -> None:
    """Chapter 8: ``fn(u, w1, w2)``, squeeze-and-excitation's gates (eqs. 5.1–5.2): the spatial mean
    ``z`` of every channel of ``u`` (N×C×H×W), then ``sigmoid(w2 · relu(w1 · z))``, N×C; ``w1`` is
    C/r × C and ``w2`` C × C/r, without biases."""
    import torch

    name = _function_name(fn)
    g = torch.Generator().manual_seed(0)
    for case, shape, hidden in [("3 images, 8 channels, 5×5", (3, 8, 5, 5), 2),
                                ("1 image, 4 channels, 2×3 (not square)", (1, 4, 2, 3), 2)]:
        # channels of different means and spreads, so that a mean and a maximum tell apart
        u = torch.randn(*shape, generator=g) * torch.linspace(0.5, 2.0, shape[1]).view(1, -1, 1, 1) \
            + torch.linspace(-1.0, 1.0, shape[1]).view(1, -1, 1, 1)
        w1, w2 = torch.randn(hidden, shape[1], generator=g), torch.randn(shape[1], hidden, generator=g)
        result = _call(fn, case, u.clone(), w1.clone(), w2.clone())
        z = u.mean(dim=(2, 3))
        mistakes = [
            (torch.sigmoid(torch.relu(u.amax(dim=(2, 3)) @ w1.T) @ w2.T),
             "this squeezes by the maximum over the positions: SE's squeeze is the spatial *mean*, "
             "z_c = (1/HW) Σ u_c(i, j) (eq. 5.1, global average pooling)."),
            (torch.relu(z @ w1.T) @ w2.T, "the sigmoid is missing: the gates lie in (0, 1), s = σ(W₂ δ(W₁ z))."),
            (torch.sigmoid(z @ w1.T @ w2.T), "the ReLU between the two matrices is missing: s = σ(W₂ δ(W₁ z)), "
                                             "δ the ReLU."),
            (torch.sigmoid(torch.relu(z @ w2) @ w1), "W₁ and W₂ are swapped: W₁ (C/r × C) reduces z to C/r "
                                                     "numbers first, then W₂ (C × C/r) expands them back to C."),
        ]
        _expect(fn, case, result, torch.sigmoid(torch.relu(z @ w1.T) @ w2.T), mistakes, atol=1e-5, what="the gates")
    _ok(f"{name} squeezes by the spatial mean and excites with σ(W₂ δ(W₁ z))")


def check_ch08_pyramid_features(fn: Callable[..., Any]) -> None:
    """Chapter 8: ``fn(fmap, bins=(8, 4, 2, 1), dim=8)``, PIADE's features u_i from a feature map.

    Average-pool the N×C×h×w map to each k×k grid of ``bins``, flatten each level channel first
    (``flatten(1)``), concatenate the levels in the order of ``bins`` and cut the N rows into
    vectors of ``dim`` numbers: an N × n × ``dim`` tensor.
    """
    import torch
    import torch.nn.functional as F

    name = _function_name(fn)

    def pyramid(fmap, bins, dim, pool=F.adaptive_avg_pool2d, flat=lambda t: t.flatten(1)):
        return torch.cat([flat(pool(fmap, k)) for k in bins], 1).reshape(len(fmap), -1, dim)

    def channels_last(t):
        return t.permute(0, 2, 3, 1).flatten(1)

    g = torch.Generator().manual_seed(0)
    cases = [("the chapter's pyramid, 16 channels", torch.randn(2, 16, 8, 8, generator=g), {}),
             ("bins (4, 2, 1), vectors of 4", torch.randn(3, 4, 4, 4, generator=g),
              {"bins": (4, 2, 1), "dim": 4})]
    for case, fmap, options in cases:
        bins, dim = options.get("bins", (8, 4, 2, 1)), options.get("dim", 8)
        result = _call(fn, case, fmap.clone(), **options)
        mistakes = [
            (pyramid(fmap, bins, dim, pool=F.adaptive_max_pool2d), "this pools with the maximum: "
             "PIADE averages each cell (`F.adaptive_avg_pool2d`)."),
            (pyramid(fmap, bins[::-1], dim), "the levels are concatenated in reverse: keep the "
             "order of `bins`, the finest grid first."),
            (pyramid(fmap, bins, dim, flat=channels_last), "each level is flattened channel last: "
             "flatten the N×C×k×k level as it is (`flatten(1)`), channel first."),
        ]
        _expect(fn, case, result, pyramid(fmap, bins, dim), mistakes, atol=1e-6)
    _ok(f"{name} pools the pyramid and cuts it into PIADE's features")


def check_ch09_weighted_component_nll(fn: Callable[..., Any]) -> None:
    """Chapter 9: ``fn(y, logits, means, scales)``, the published code's loss Σ_k w_k (−log N_k).

    Shapes as for ``adcourse.losses.mixture_nll``: ``y`` …×D, ``logits`` …×K, ``means`` and
    ``scales`` …×K×D; one value per vector, with w = softmax(logits).
    """
    import math

    import torch

    from .losses import mixture_nll

    name = _function_name(fn)

    def log_normal(y, means, scales, constant=True):
        z = (y.unsqueeze(-2) - means) / scales
        terms = -0.5 * z ** 2 - torch.log(scales)
        return terms.sum(-1) - (0.5 * y.shape[-1] * math.log(2 * math.pi) if constant else 0.0)

    g = torch.Generator().manual_seed(0)
    cases = []
    for case, batch in [("five vectors, K = 3", (5,)), ("a batch of sequences, K = 3", (2, 3))]:
        y = torch.randn(*batch, 4, generator=g)
        logits = torch.randn(*batch, 3, generator=g)
        means = torch.randn(*batch, 3, 4, generator=g)
        scales = 0.5 + torch.rand(*batch, 3, 4, generator=g)
        cases.append((case, y, logits, means, scales))
    for case, y, logits, means, scales in cases:
        result = _call(fn, case, y.clone(), logits.clone(), means.clone(), scales.clone())
        weights = torch.softmax(logits, -1)
        expected = -(weights * log_normal(y, means, scales)).sum(-1)
        mistakes = [
            (mixture_nll(y, logits, means, scales), "this is the mixture NLL −log Σ_k w_k N_k (the "
             "paper's loss). The code's loss weights each component's own NLL: Σ_k w_k·(−log N_k)."),
            (-(logits * log_normal(y, means, scales)).sum(-1), "the logits are used as weights: turn "
             "them into weights with a softmax first."),
            (-(weights * log_normal(y, means, scales, constant=False)).sum(-1), "the constant "
             "−(D/2)·log 2π of each Gaussian's log-density is missing."),
        ]
        _expect(fn, case, result, expected, mistakes, atol=1e-5, rtol=1e-5)
    _ok(f"{name} gives the code's loss, an upper bound of the mixture NLL (Jensen)")


def check_ch10_cheapest_setting(fn: Callable[..., Any]) -> None:
    """Chapter 10: ``fn(settings, min_auroc)``, the cheapest setting that reaches a stated quality.

    ``settings`` is a pandas frame, one row per setting, with ``worst_auroc`` (its lowest mean image
    AUROC over the textures) and ``seconds`` (its largest fit-and-score time over them). Returns the
    index label of the row with the fewest ``seconds`` among those whose ``worst_auroc`` is at least
    ``min_auroc``, or ``None`` when no row reaches it.
    """
    import pandas as pd

    name = _function_name(fn)
    settings = pd.DataFrame({"worst_auroc": [0.90, 0.97, 0.99, 0.95, 0.97],
                             "seconds": [3.0, 12.0, 40.0, 8.0, 9.0]},
                            index=["×1", "×2 fine", "×4", "×2 coarse", "×2 mid"])
    cases = [("at least 0.95", 0.95, "×2 coarse"), ("at least 0.97", 0.97, "×2 mid"),
             ("at least 0.99", 0.99, "×4"), ("at least 0.995: none", 0.995, None)]
    for case, floor, expected in cases:
        result = _call(fn, case, settings.copy(), floor)
        if result == expected:
            continue
        reaching = settings[settings["worst_auroc"] >= floor]
        hint = f"returned {result!r}, expected {expected!r}."
        if expected is not None and result == reaching["worst_auroc"].idxmax():
            hint += " That is the best setting that reaches the quality, not the cheapest: take the fewest seconds."
        elif expected is not None and result == settings["seconds"].idxmin():
            hint += " That is the cheapest setting of all: keep only those with worst_auroc >= min_auroc first."
        elif expected is not None and result == settings[settings["worst_auroc"] > floor]["seconds"].idxmin():
            hint += " A setting exactly at the stated quality reaches it: compare with >=, not >."
        elif expected is None:
            hint += " No setting reaches that quality: return None rather than the nearest miss."
        raise ExerciseError(f"`{name}` fails on case '{case}': {hint}")
    _ok(f"{name} finds the cheapest setting that reaches each stated quality")


def check_ch01_normal_threshold_f1(fn: Callable[..., Any]) -> None:
    """Chapter 1: ``fn(validation_scores, labels, scores)``: the threshold mean + 3 sample standard
    deviations of the normal validation scores, and the image F1 it gives on the test set (score >=
    threshold is anomalous). Returns ``(threshold, f1)``."""
    import numpy as np

    name = _function_name(fn)
    rng = np.random.default_rng(0)
    validation = rng.normal(1.0, 0.2, 50)
    labels = np.r_[np.zeros(40, int), np.ones(10, int)]
    scores = np.r_[rng.normal(1.0, 0.2, 40), rng.normal(2.2, 0.5, 10)]

    def f1_at(threshold):
        flagged, truth = scores >= threshold, labels == 1
        hits = (flagged & truth).sum()
        return 0.0 if hits == 0 else 2 * hits / (flagged.sum() + truth.sum())

    threshold = validation.mean() + 3 * validation.std(ddof=1)
    result = _pair(fn, "normal validation scores", _call(fn, "normal validation scores", validation.copy(),
                                                          labels.copy(), scores.copy()), "(threshold, f1)")
    _expect(fn, "normal validation scores", float(result[0]), threshold, [
        (validation.mean() + 3 * validation.std(ddof=0), "the standard deviation divides by n: use the sample "
         "standard deviation (ddof=1), as MVTec AD 2 does."),
        (scores[labels == 0].mean() + 3 * scores[labels == 0].std(ddof=1), "that threshold comes from the normal "
         "*test* images: a factory has only its validation images, use validation_scores."),
        (validation.mean() + 2 * validation.std(ddof=1), "mean + 3 standard deviations, not 2."),
    ], what="the threshold")
    _expect(fn, "normal validation scores", float(result[1]), f1_at(threshold), [
        (f1_at(np.nextafter(threshold, np.inf)), "an image whose score equals the threshold is anomalous: score >= threshold."),
    ], what="the F1")
    _ok(f"{name} fixes the threshold on normal images and gives the F1 it reaches")


def check_ch10_position_gaussians(fn: Callable[..., Any]) -> None:
    """Chapter 10: ``fn(features, epsilon=0.01)``, PaDiM's step 2 — one Gaussian per position.

    For N×D×h×w features returns ``(means, covariances)``: (h·w)×D and (h·w)×D×D, positions
    numbered row by row (p = row·w + col), covariances unbiased (N − 1) plus ε·I.
    """
    import torch

    name = _function_name(fn)

    def gaussians(features, epsilon, order=(2, 3, 0, 1), ddof=1, regularise=True):
        n, d, h, w = features.shape
        x = features.permute(*order).reshape(h * w, n, d).double()
        mean = x.mean(1)
        centred = x - mean[:, None]
        cov = centred.transpose(1, 2) @ centred / (n - ddof)
        return mean, cov + (epsilon * torch.eye(d, dtype=x.dtype) if regularise else 0)

    g = torch.Generator().manual_seed(0)
    features = torch.randn(5, 3, 2, 3, generator=g)
    for case, options in [("ε = 0.01", {}), ("ε = 0.5", {"epsilon": 0.5})]:
        epsilon = options.get("epsilon", 0.01)
        means, covariances = _pair(fn, case, _call(fn, case, features.clone(), **options),
                                   "(means, covariances)")
        want_mean, want_cov = gaussians(features, epsilon)
        by_column = gaussians(features, epsilon, order=(3, 2, 0, 1))
        row_by_row = ("the positions are numbered column by column: number them row by row, "
                      "p = row·w + col (`features.permute(2, 3, 0, 1).reshape(h * w, N, D)`).")
        _expect(fn, case, means, want_mean, [(by_column[0], row_by_row)], atol=1e-5, rtol=1e-4,
                what="the means")
        _expect(fn, case, covariances, want_cov, [
            (by_column[1], row_by_row),
            (gaussians(features, epsilon, ddof=0)[1], "the covariance is divided by N: the "
             "unbiased estimate divides by N − 1."),
            (gaussians(features, epsilon, regularise=False)[1], "ε·I is missing: add `epsilon` "
             "times the identity, which keeps Σ invertible with fewer images than dimensions."),
        ], atol=1e-5, rtol=1e-4, what="the covariances")
    _ok(f"{name} fits one regularised Gaussian per position")


# ---------------------------------------------------------------------------------------------
# Student version of the notebooks
# ---------------------------------------------------------------------------------------------

BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\s*$")
END_RE = re.compile(r"^[ \t]*#\s*END SOLUTION\s*$")
ANY_MARKER_RE = re.compile(r"#\s*(BEGIN|END) SOLUTION\b")
SOLUTION_TAG = "solution"
# The stub says what to do, wherever it is first called (in a check, which turns it into the
# exercise's own hint, or in a plain cell).
STUB = ("# YOUR CODE HERE",
        'raise NotImplementedError("exercise not written yet: replace this line with your code, then run '
        'this cell and the check after it")')
# A fence opening: backticks, tildes or colons (MyST colon_fence), then an info string. A
# directive has an info string that starts with "{name}".
FENCE_OPEN_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})\s*(?P<info>.*)$")
DIRECTIVE_NAME_RE = re.compile(r"^\{(?P<name>[\w-]+)\}")
SOLUTION_DIRECTIVES = {"solution", "solution-start", "solution-end"}


class StudentVersionError(ValueError):
    """A notebook cannot be turned into its student version (the message names notebook and cell)."""


def _where(notebook: str | os.PathLike | None, index: int | None) -> str:
    parts = []
    if notebook is not None:
        parts.append(str(notebook))
    if index is not None:
        parts.append(f"cell {index}")
    return ", ".join(parts) + ": " if parts else ""


def strip_code_solution(
    source: str, notebook: str | os.PathLike | None = None, index: int | None = None
) -> str:
    """Replace every ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block by the stub.

    The stub (``# YOUR CODE HERE`` then ``raise NotImplementedError("...")``) takes the indentation of
    the ``BEGIN`` line. Unbalanced or nested markers raise :class:`StudentVersionError`.
    """
    out: list[str] = []
    begin_line: int | None = None
    lines = source.split("\n")
    for number, line in enumerate(lines, start=1):
        begin = BEGIN_RE.match(line)
        if begin:
            if begin_line is not None:
                raise StudentVersionError(
                    f"{_where(notebook, index)}'# BEGIN SOLUTION' on line {number} inside the "
                    f"solution opened on line {begin_line}: add the missing '# END SOLUTION'."
                )
            begin_line = number
            indent = begin.group("indent")
            out.extend(indent + stub for stub in STUB)
            continue
        if END_RE.match(line):
            if begin_line is None:
                raise StudentVersionError(
                    f"{_where(notebook, index)}'# END SOLUTION' on line {number} has no "
                    "'# BEGIN SOLUTION' before it."
                )
            begin_line = None
            continue
        if begin_line is None:
            if ANY_MARKER_RE.search(line):
                raise StudentVersionError(
                    f"{_where(notebook, index)}line {number} holds a solution marker that is not "
                    "on a line of its own: write '# BEGIN SOLUTION' / '# END SOLUTION' alone on "
                    "their lines."
                )
            out.append(line)
    if begin_line is not None:
        raise StudentVersionError(
            f"{_where(notebook, index)}'# BEGIN SOLUTION' on line {begin_line} is never closed: "
            "add '# END SOLUTION' after the solution code."
        )
    return "\n".join(out)


def _closing_fence(fence: str) -> re.Pattern:
    return re.compile(r"^[ \t]*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")


def _solution_blocks(
    source: str, notebook: str | os.PathLike | None = None, index: int | None = None
) -> list[tuple[int, int, str]]:
    """``(first, last, directive)`` line ranges (0-based, inclusive) of solution directives.

    Reads fences the way MyST does: a block closes at the first line made only of at least as
    many of the opening fence's characters. Plain code blocks (```` ```python ````) are literal,
    so a ``{solution}`` shown inside one is not a solution. An unclosed solution raises
    :class:`StudentVersionError`.
    """
    lines = source.split("\n")
    blocks = []
    open_directives: list[re.Pattern] = []  # closing fences of the enclosing directives
    i = 0
    while i < len(lines):
        if open_directives and open_directives[-1].match(lines[i]):
            open_directives.pop()
            i += 1
            continue
        match = FENCE_OPEN_RE.match(lines[i])
        if not match or match.group("fence")[0] == ":" and not match.group("info").strip():
            i += 1
            continue
        fence, info = match.group("fence"), match.group("info").strip()
        directive = DIRECTIVE_NAME_RE.match(info)
        if directive and directive.group("name") not in SOLUTION_DIRECTIVES:
            # another directive: its body is Markdown and may hold a solution
            open_directives.append(_closing_fence(fence))
            i += 1
            continue
        close = _closing_fence(fence)
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if directive:
            if j == len(lines):
                raise StudentVersionError(
                    f"{_where(notebook, index)}the {{{directive.group('name')}}} block opened on "
                    f"line {i + 1} with {fence!r} is never closed."
                )
            blocks.append((i, j, directive.group("name")))
        i = j + 1  # past the solution, or past a literal code block
    return blocks


def strip_markdown_solutions(
    source: str, notebook: str | os.PathLike | None = None, index: int | None = None
) -> str:
    """Remove every sphinx-exercise ``{solution}`` directive block from Markdown ``source``.

    Gated directives (``solution-start``/``solution-end``) and unclosed blocks raise
    :class:`StudentVersionError`. A cell without solutions is returned unchanged.
    """
    blocks = _solution_blocks(source, notebook, index)
    if not blocks:
        return source
    for first, _, name in blocks:
        if name != "solution":
            raise StudentVersionError(
                f"{_where(notebook, index)}line {first + 1} uses the gated directive "
                f"{{{name}}}, which the student version does not support: use a {{solution}} "
                "block, or a code cell tagged 'solution' with solution markers."
            )
    lines = source.split("\n")
    drop = {n for first, last, _ in blocks for n in range(first, last + 1)}
    text = "\n".join(line for n, line in enumerate(lines) if n not in drop)
    text = re.sub(r"\n{3,}", "\n\n", text)  # no gaping hole where the solution was
    return text.strip("\n")


def _clean_metadata(metadata: dict) -> None:
    for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
        metadata.pop(key, None)


def make_student_notebook(nb, name: str | os.PathLike = "<notebook>"):
    """Return the student version of a notebook (``nbformat.NotebookNode``); ``nb`` is untouched."""
    from .notebooks import BADGE_RE

    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        source = cell.get("source", "")
        if isinstance(source, list):  # tolerate un-normalised notebooks
            source = "".join(source)
        if cell.cell_type == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            has_marker = ANY_MARKER_RE.search(source) is not None
            if SOLUTION_TAG in tags and not has_marker:
                raise StudentVersionError(
                    f"{_where(name, index)}the cell is tagged 'solution' but has no "
                    "'# BEGIN SOLUTION' / '# END SOLUTION' lines: mark the part to remove."
                )
            if has_marker:
                source = strip_code_solution(source, name, index)
            cell["source"] = source
            cell["outputs"] = []
            cell["execution_count"] = None
        elif cell.cell_type == "markdown":
            # The Colab badge opens the notebook of the repository, solutions included: not this one.
            if BADGE_RE.search(source):
                source = re.sub(r"\n{3,}", "\n\n", BADGE_RE.sub("", source))
            cell["source"] = strip_markdown_solutions(source, name, index)
        else:
            cell["source"] = source
        _clean_metadata(cell.setdefault("metadata", {}))
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    return nb


def _notebooks_in(folder: Path) -> list[Path]:
    """The notebooks of ``folder``; hidden files (``.name.ipynb``, e.g. half-written) are skipped."""
    return sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.name.startswith("."))


# Beside the student notebooks: the digest of every file make_student_version wrote, so that a
# notebook changed since (a student's work) is told apart from one it may replace.
STUDENT_MANIFEST = ".adcourse-student.json"


class StudentVersion(NamedTuple):
    """What :func:`make_student_version` did: ``written`` (new or replaced notebooks) and ``kept``,
    pairs ``(notebook with the student's changes, left as it is; the new version written beside it)``."""
    written: list[Path]
    kept: list[tuple[Path, Path]]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _written_before(output_dir: Path) -> dict[str, str]:
    try:
        manifest = json.loads((output_dir / STUDENT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none (or unreadable): every existing notebook that differs counts as the student's
    return manifest if isinstance(manifest, dict) else {}


def make_student_version(source_dir: str | os.PathLike, output_dir: str | os.PathLike) -> StudentVersion:
    """Write the student version of every ``source_dir/*.ipynb`` into ``output_dir``, losing nothing.

    Every notebook is converted first: a failure writes nothing. Then each is written atomically,
    except over a notebook that differs from what this function last wrote there (a student's
    answers): that one is kept as it is, and the new version goes beside it as
    ``<name>.new.ipynb`` (listed in ``kept``). No other file of ``output_dir`` is touched. The
    source notebooks are only read."""
    import nbformat

    from .train import atomic_output  # here: the checks and the student version need no torch otherwise

    source_dir, output_dir = Path(source_dir), Path(output_dir)
    if not source_dir.is_dir():
        raise StudentVersionError(f"{source_dir}: no such folder of notebooks")
    if output_dir.resolve() == source_dir.resolve():
        raise StudentVersionError(
            f"{output_dir}: the output folder must differ from the source folder"
        )
    notebooks = _notebooks_in(source_dir)
    if not notebooks:
        raise StudentVersionError(f"{source_dir}: no .ipynb files found")

    def write(path: Path, data: bytes) -> None:
        with atomic_output(path) as tmp:  # readable by everyone (0644): the folder is handed out
            tmp.write_bytes(data)

    converted = {}
    for path in notebooks:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:  # noqa: BLE001
            raise StudentVersionError(f"{path}: cannot read the notebook ({error})") from error
        student = make_student_notebook(nb, path)
        nbformat.validate(student)
        converted[path.name] = (nbformat.writes(student) + "\n").encode("utf-8")

    output_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(output_dir, 0o755)
    written_before = _written_before(output_dir)
    manifest, written, kept = dict(written_before), [], []
    for name, data in converted.items():
        target = output_dir / name
        current = _digest(target.read_bytes()) if target.exists() else None
        if current is not None and current != written_before.get(name) and current != _digest(data):
            target = target.with_suffix(".new.ipynb")
            kept.append((output_dir / name, target))
        write(target, data)
        manifest[target.name] = _digest(data)
        written.append(target)
    write(output_dir / STUDENT_MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return StudentVersion(written, kept)


def find_leftover_solutions(folder: str | os.PathLike) -> list[str]:
    """Problems that show a solution (or an output) left in the notebooks of ``folder``."""
    import nbformat

    problems: list[str] = []
    folder = Path(folder)
    notebooks = _notebooks_in(folder)
    if not notebooks:
        return [f"{folder}: no .ipynb files found"]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            where = f"{path}, cell {index}"
            source = cell.source
            if cell.cell_type == "code":
                if ANY_MARKER_RE.search(source):
                    problems.append(f"{where}: a '# BEGIN/END SOLUTION' marker is still there")
                tags = cell.get("metadata", {}).get("tags", [])
                if SOLUTION_TAG in tags and "raise NotImplementedError" not in source:
                    problems.append(f"{where}: cell tagged 'solution' was not replaced by a stub")
                if cell.get("outputs") or cell.get("execution_count") is not None:
                    problems.append(f"{where}: outputs or an execution count are still there")
            elif cell.cell_type == "markdown":
                try:
                    blocks = _solution_blocks(source, path, index)
                except StudentVersionError as error:
                    problems.append(str(error))
                    continue
                for first, _, name in blocks:
                    problems.append(f"{where}: a {{{name}}} directive is still there (line {first + 1})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adcourse.exercises",
        description="Make and check the student version of the course notebooks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser(
        "student", help="write SOURCE/*.ipynb with solutions and outputs removed into OUTPUT"
    )
    student.add_argument("source", help="folder of the notebooks with solutions (e.g. notebooks)")
    student.add_argument("output", help="folder to write (e.g. student); a notebook a student changed there is kept")
    stripped = commands.add_parser(
        "check-stripped", help="fail if a solution or an output is left in FOLDER/*.ipynb"
    )
    stripped.add_argument("folder")
    args = parser.parse_args(argv)

    if args.command == "student":
        try:
            result = make_student_version(args.source, args.output)
        except StudentVersionError as error:
            print(f"error: {error}", file=sys.stderr)
            print(f"error: {args.output} was left as it was", file=sys.stderr)
            return 1
        print(f"wrote {len(result.written)} student notebook(s) to {args.output}/")
        for mine, new in result.kept:
            print(f"kept {mine}: it has changes made since it was written (your answers), so the new version "
                  f"went beside it, to {new}. Copy your answers into the new one (or the new cells into "
                  f"yours); to start {mine.name} afresh instead, delete it and run this again.")
        return 0

    problems = find_leftover_solutions(args.folder)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"✓ no solutions left in {args.folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
