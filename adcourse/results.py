"""Measured results: the runs committed with the course, and the ones a chapter writes.

**Stored results** are the runs committed to the repository under ``book/results/`` (the quick
benchmark on a 2-core CPU, full-profile runs on a GPU), each with the command, device and date
that produced it. The package installs that folder as its data ``adcourse.stored_results`` (see
``pyproject.toml``), so a notebook opened alone on Colab reads them exactly as a notebook in a
clone of the repository does::

    import adcourse.results

    adcourse.results.stored_names("quick/bench_quick_*.json")    # ['quick/bench_quick_digits_0.json', ...]
    report = adcourse.results.load_stored("quick/bench_quick_textures_brick.json")

**Your results** are what a chapter's full profile measures. It writes them with
:func:`save` to :func:`results_dir`: ``$ADCOURSE_RESULTS`` when that is set, otherwise
``~/adcourse_results``, a folder that exists (or can be made) on a laptop and on Colab alike::

    path = adcourse.results.save("08_pyramidal", payload)       # ~/adcourse_results/08_pyramidal.json

To add a run to the book, copy its file into ``book/results/`` (or run with
``ADCOURSE_RESULTS=$PWD/book/results``); ``book/results/README.md`` says what each file holds.
"""
from __future__ import annotations

import fnmatch
import importlib.resources
import json
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["RESULTS_ENV", "STORED_PACKAGE", "load_stored", "results_dir", "save", "stored_names"]

RESULTS_ENV = "ADCOURSE_RESULTS"
STORED_PACKAGE = "adcourse.stored_results"  # book/results/ of the repository, installed as package data


def _stored_root() -> Traversable:
    try:
        return importlib.resources.files(STORED_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"this installation of adcourse has no stored results (package data {STORED_PACKAGE!r}, "
            "book/results/ of the repository): install the package with pip — `pip install -e .` in a "
            "clone, which `make` does, or `pip install \"adcourse @ git+<repository URL>\"` — instead "
            "of putting the source folder on sys.path"
        ) from None


def _walk(folder: Traversable, prefix: PurePosixPath):
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):  # hidden files, __pycache__
            continue
        if entry.is_dir():
            yield from _walk(entry, prefix / entry.name)
        else:
            yield str(prefix / entry.name)


def stored_names(pattern: str = "*.json") -> list[str]:
    """The stored results whose path (``"quick/bench_quick_digits_0.json"``) matches ``pattern``,
    sorted; ``*`` in the pattern also matches ``/``, so the default lists every JSON file."""
    return sorted(name for name in _walk(_stored_root(), PurePosixPath()) if fnmatch.fnmatchcase(name, pattern))


def load_stored(name: str) -> Any:
    """The committed result ``name`` (a path inside ``book/results/``, e.g.
    ``"quick/bench_quick_textures_brick.json"``), read from the installed package."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"{name!r}: give a path inside book/results/, such as 'quick/bench_quick_digits_0.json'")
    entry = _stored_root().joinpath(*parts)
    if not entry.is_file():
        available = ", ".join(stored_names()) or "none"
        raise FileNotFoundError(f"no stored result {name!r} in book/results/ (package {STORED_PACKAGE}); "
                                f"the stored results are: {available}")
    try:
        return json.loads(entry.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"stored result {name!r} is not valid JSON ({error}): restore it from the repository") from None


def results_dir() -> Path:
    """Where chapters write the results of their full profile: ``$ADCOURSE_RESULTS``, or
    ``~/adcourse_results``. The folder is made by :func:`save` when it is first needed."""
    return Path(os.environ.get(RESULTS_ENV) or Path.home() / "adcourse_results").expanduser()


def save(name: str, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``results_dir()/<name>.json`` in one step (a reader never sees a
    half-written file); return the path. NumPy and PyTorch values are written as numbers and lists."""
    filename = name if name.endswith(".json") else f"{name}.json"
    if not filename[:-len(".json")] or Path(filename).name != filename:
        raise ValueError(f"{name!r}: a result's name is a file name without folders, such as '08_pyramidal'")

    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):  # NumPy arrays and scalars, PyTorch tensors
            return value.tolist()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"result {name!r}: cannot write a value of type {type(value).__name__} as JSON; "
                        "convert it to a number, string, list or dict first")

    from .train import MINIATURE_NOTE, miniature_active, write_text_atomic  # imports torch: only when a result is written

    if miniature_active() and isinstance(payload, dict):
        payload = {"miniature": MINIATURE_NOTE, **payload}
    text = json.dumps(payload, indent=2, default=plain) + "\n"  # serialised before anything is written

    return write_text_atomic(results_dir() / filename, text)
