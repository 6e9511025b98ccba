"""Exercise helpers: checks that give students a hint, and the student version of the notebooks.

Checks (use them in the cell after a code exercise)::

    from adcourse.exercises import check, check_shape, check_range, check_close, check_function

    check_shape(recon, (16, 1, 32, 32), "recon")
    check_close(score, expected, "score", atol=1e-5)
    check_function(image_score, [("all ones", (torch.ones(2, 1, 4, 4),), torch.ones(2))])

Each prints a short line starting with ✓ when it passes and raises :class:`ExerciseError`
(an ``AssertionError``) with a hint when it does not.

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
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "ExerciseError",
    "StudentVersionError",
    "check",
    "check_shape",
    "check_range",
    "check_close",
    "check_function",
    "strip_code_solution",
    "strip_markdown_solutions",
    "make_student_notebook",
    "make_student_version",
    "find_leftover_solutions",
]


# ---------------------------------------------------------------------------------------------
# Checks with hints
# ---------------------------------------------------------------------------------------------


class ExerciseError(AssertionError):
    """A check failed; the message is a hint for the student."""


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


def check_function(
    fn: Callable[..., Any],
    cases: Iterable[tuple[str, Any, Any]],
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> None:
    """Run ``fn`` on named cases ``[(name, args, expected), ...]``; report the first failure.

    ``args`` is a tuple of positional arguments (a single non-tuple value is passed alone) or a
    dict of keyword arguments. Arguments are deep-copied, so an in-place change in ``fn`` cannot
    corrupt later cases. Tensors, arrays and numbers are compared with a tolerance, anything else
    with ``==``.
    """
    fn_name = getattr(fn, "__name__", "the function")
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
        numeric = (
            hasattr(expected, "shape")
            or isinstance(expected, (int, float, complex))
            and not isinstance(expected, bool)
        )
        if numeric:
            if result is None:
                raise ExerciseError(
                    f"`{fn_name}` returned None on case '{case_name}': did it forget to `return`?"
                )
            message = _compare(result, expected, "result", atol, rtol, label="the result")
        else:
            try:
                equal = bool(result == expected)
            except Exception:  # noqa: BLE001 - e.g. a tensor compared with a list
                equal = False
            message = None if equal else (
                f"returned {_describe(result)}, expected {_describe(expected)}."
            )
        if message is not None:
            raise ExerciseError(f"`{fn_name}` fails on case '{case_name}': {message}")
    _ok(f"{fn_name} passes all {len(cases)} case{'s' if len(cases) != 1 else ''}")


# ---------------------------------------------------------------------------------------------
# Student version of the notebooks
# ---------------------------------------------------------------------------------------------

BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\s*$")
END_RE = re.compile(r"^[ \t]*#\s*END SOLUTION\s*$")
ANY_MARKER_RE = re.compile(r"#\s*(BEGIN|END) SOLUTION\b")
SOLUTION_TAG = "solution"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
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

    The stub (``# YOUR CODE HERE`` then ``raise NotImplementedError``) takes the indentation of
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


def make_student_version(source_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """Write the student version of every ``source_dir/*.ipynb`` into ``output_dir``.

    Everything is converted into a temporary folder next to ``output_dir`` first; the folder
    replaces ``output_dir`` only when all notebooks succeeded, so a failure leaves the previous
    ``output_dir`` (or none) in place. The source notebooks are only read.
    """
    import nbformat

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

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    written = []
    try:
        for path in notebooks:
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception as error:  # noqa: BLE001
                raise StudentVersionError(f"{path}: cannot read the notebook ({error})") from error
            student = make_student_notebook(nb, path)
            nbformat.validate(student)
            nbformat.write(student, tmp / path.name)
            written.append(output_dir / path.name)
        old = None
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            old.rmdir()
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


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
    student.add_argument("output", help="folder to write (replaced as a whole, e.g. student)")
    stripped = commands.add_parser(
        "check-stripped", help="fail if a solution or an output is left in FOLDER/*.ipynb"
    )
    stripped.add_argument("folder")
    args = parser.parse_args(argv)

    if args.command == "student":
        try:
            written = make_student_version(args.source, args.output)
        except StudentVersionError as error:
            print(f"error: {error}", file=sys.stderr)
            print(f"error: {args.output} was left as it was", file=sys.stderr)
            return 1
        print(f"wrote {len(written)} student notebook(s) to {args.output}/")
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
