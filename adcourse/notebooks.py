"""Run the chapter notebooks and keep their first cells in step with the repository's address.

    python -m adcourse.notebooks execute notebooks/*.ipynb       # in place, quick profile
    python -m adcourse.notebooks execute --profile full --output-dir artifacts/full notebooks/04_implicit_siren.ipynb
    python -m adcourse.notebooks headers notebooks/*.ipynb       # Colab badge and install cell from _config.yml

**execute.** The committed notebooks carry the outputs of a quick run (the book shows them, nbval
checks them), so a run in place is always a quick run: nothing is injected, the notebook keeps its
own ``PROFILE = "auto"``, and the kernel is shown no CUDA device, so ``auto`` resolves to quick on
any machine. A full run writes its executed copies elsewhere (``--output-dir``) and refuses to
overwrite the committed notebooks. What would differ from one machine to the next is removed from
the stored notebooks: papermill's timings, execution timestamps, and progress-bar widgets.

**headers.** The repository's address lives in one place, ``repository.url`` and ``branch`` in
``_config.yml``, which also drives the book's launch buttons. A notebook opened alone on Colab
cannot read that file, so its title cell carries an "Open in Colab" badge and its first code cell
installs the package from that address; ``headers`` rewrites both from ``_config.yml``, and a test
checks that they agree with it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from unittest import mock

import nbformat

# Progress bars are for people at a keyboard; in stored outputs they are noise.
QUIET_ENV = {"TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
# The kernel's thread count is pinned because floating-point sums (and so the checked numbers) depend
# on how work is split between threads; nbval runs with the same setting (Makefile). Kernels that
# share the CPU take fewer: two kernels of two threads each on two cores slow each other many times over.
THREADS = 2


def clean(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop execution metadata and widget outputs that change from run to run."""
    notebook.metadata.pop("papermill", None)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    return notebook


@contextlib.contextmanager
def _output_widgets_that_do_not_write_back():
    """nbclient stands in for the front end of an Output widget (what ``ipywidgets.interact`` draws
    into) and sends each captured output back to the kernel on the shell socket, while the reply to
    the running cell is awaited on that same socket. That send can swallow the socket's wake-up, and
    the reply is then only seen when the cell's timeout runs out: a 10-second chapter took 10 minutes
    (jupyter/nbclient#312). A batch run has no one to show the widget to, so the outputs are still
    captured but not sent back."""
    from nbclient import client, output_widget

    class CapturingOnly(output_widget.OutputWidget):
        def sync_state(self) -> None:
            pass

    with mock.patch.object(client, "OutputWidget", CapturingOnly):
        yield


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables (inherited by the kernel papermill starts) for the block only."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(path: str | os.PathLike, output: str | os.PathLike | None = None, profile: str = "quick",
            parameters: dict | None = None, cwd: str | os.PathLike | None = None, threads: int = THREADS) -> float:
    """Run ``path`` top to bottom on a fresh kernel; return the seconds taken.

    ``profile``: ``"quick"`` injects nothing and hides CUDA from the kernel, so the notebook's own
    ``PROFILE = "auto"`` resolves to quick and its parameters cell is stored as it was;
    ``"full"`` is injected by papermill and needs an ``output`` other than ``path`` (the committed
    notebooks keep quick outputs). ``threads``: the kernel's ``OMP_NUM_THREADS``.

    The executed notebook replaces ``output`` (default: ``path`` itself) only when every cell ran:
    a failing run leaves the previous file untouched.
    """
    import papermill

    from .train import atomic_output  # imports torch: only when a notebook is executed

    if profile not in ("quick", "full"):
        raise ValueError(f"profile must be 'quick' or 'full', got {profile!r}")
    path = Path(path)
    if profile == "full" and (output is None or Path(output).resolve() == path.resolve()):
        raise ValueError(f"{path}: the committed notebooks keep the outputs of a quick run; write a full "
                         "run elsewhere (output=..., or --output-dir on the command line)")
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads must be a whole number of at least 1, got {threads!r}")
    kernel_env = {**QUIET_ENV, "OMP_NUM_THREADS": str(threads),
                  **({"CUDA_VISIBLE_DEVICES": ""} if profile == "quick" else {})}
    injected = {**({"PROFILE": "full"} if profile == "full" else {}), **(parameters or {})}
    start = time.perf_counter()
    with atomic_output(output or path, suffix=".ipynb") as tmp:  # papermill reads the format from the suffix
        with _output_widgets_that_do_not_write_back(), _environment(**kernel_env):
            papermill.execute_notebook(str(path), str(tmp), parameters=injected,
                                       kernel_name="python3", cwd=str(cwd or path.parent), progress_bar=False,
                                       execution_timeout=600, start_timeout=120)
        seconds = time.perf_counter() - start
        nbformat.write(clean(nbformat.read(tmp, as_version=4)), tmp)
    return seconds


# --- the first cells: Colab badge and install cell, from _config.yml ----------------------------

COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"^\[!\[Open in Colab\]\([^)]*\)\]\((?P<url>[^)]*)\)[ \t]*$", re.MULTILINE)
INSTALL_MARK = 'importlib.util.find_spec("adcourse")'
INSTALL_CELL = """\
# Installs the course package when it is missing (on Colab, say); Colab's own torch is kept.
import importlib.util, subprocess, sys
PACKAGE = "adcourse @ git+{url}@{branch}"
if importlib.util.find_spec("adcourse") is None:
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE]).returncode != 0:
        raise RuntimeError(
            "Installing the course package failed (pip says why above). Either:\\n"
            "- check that this runtime is online, then run this cell again;\\n"
            "- or download {url}/archive/refs/heads/{branch}.zip on a computer that can,\\n"
            "  upload it beside this notebook (on Colab: the folder icon on the left), and run\\n"
            "  !pip install {name}-{branch}.zip\\n"
            "- on your own machine, open the notebooks with `make lab` instead: its kernel has the package.")
"""


def course_root(start: str | os.PathLike) -> Path:
    """The course checkout that holds ``start``: the first folder up from it with ``_config.yml``."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file():
            return folder
    raise FileNotFoundError(f"{start}: no _config.yml in this folder or above it; run inside the course repository")


def repository(config: str | os.PathLike) -> tuple[str, str]:
    """``(url, branch)`` of the repository, from ``repository`` in the book's ``_config.yml``."""
    import yaml

    settings = (yaml.safe_load(Path(config).read_text()) or {}).get("repository") or {}
    url, branch = str(settings.get("url", "")).rstrip("/"), str(settings.get("branch", "main"))
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"{config}: repository.url should be https://github.com/<owner>/<name>, got {url!r}")
    return url, branch


def colab_url(url: str, branch: str, notebook: str) -> str:
    """Where Colab opens ``notebooks/<notebook>`` of the repository (the book's launch button too)."""
    owner_and_name = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_and_name}/blob/{branch}/notebooks/{notebook}"


def colab_badge(url: str, branch: str, notebook: str) -> str:
    return f"[![Open in Colab]({COLAB_BADGE_IMAGE})]({colab_url(url, branch, notebook)})"


def install_cell(url: str, branch: str) -> str:
    return INSTALL_CELL.format(url=url, branch=branch, name=url.rsplit("/", 1)[1]).rstrip("\n")


def with_headers(notebook: nbformat.NotebookNode, name: str, url: str, branch: str) -> nbformat.NotebookNode:
    """Put the Colab badge under the title (first Markdown cell) and the install cell (first code
    cell) of ``notebook``, built from ``url`` and ``branch``; every other cell is left alone."""
    title = next((c for c in notebook.cells if c.cell_type == "markdown"), None)
    install = next((c for c in notebook.cells if c.cell_type == "code"), None)
    if title is None or not title.source.startswith("# "):
        raise ValueError(f"{name}: the first Markdown cell should start with the '# Title' line")
    if install is None or INSTALL_MARK not in install.source:
        raise ValueError(f"{name}: the first code cell should install adcourse when it is missing "
                         f"(it has no {INSTALL_MARK}); see book/conventions.md")
    badge = colab_badge(url, branch, name)
    if BADGE_RE.search(title.source):
        title.source = BADGE_RE.sub(lambda _: badge, title.source, count=1)
    else:
        heading, _, rest = title.source.partition("\n")
        title.source = f"{heading}\n\n{badge}\n\n{rest.lstrip(chr(10))}".rstrip("\n")
    install.source = install_cell(url, branch)
    return notebook


def write_headers(paths: list[str | os.PathLike]) -> list[Path]:
    """Rewrite the badge and install cell of each notebook from its checkout's ``_config.yml``;
    return the notebooks that changed (each written in one step)."""
    from .train import write_text_atomic

    changed = []
    for path in map(Path, paths):
        url, branch = repository(course_root(path.parent) / "_config.yml")
        text = path.read_text(encoding="utf-8")
        notebook = with_headers(nbformat.reads(text, as_version=4), path.name, url, branch)
        new_text = nbformat.writes(notebook)
        new_text += "" if new_text.endswith("\n") else "\n"  # as nbformat.write ends a file
        if new_text != text:
            write_text_atomic(path, new_text)
            changed.append(path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("execute", help="execute notebooks with papermill and store them cleaned")
    run.add_argument("notebooks", nargs="+")
    run.add_argument("--profile", default="quick", choices=["quick", "full"],
                     help="quick (default): in place, CUDA hidden; full: needs --output-dir")
    run.add_argument("--output-dir", default=None, help="write executed copies here instead of in place")
    run.add_argument("--threads", type=int, default=THREADS,
                     help=f"the kernel's OMP_NUM_THREADS (default {THREADS}; 1 when kernels share the CPU)")
    headers = commands.add_parser("headers", help="write the Colab badge and install cell from _config.yml")
    headers.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "headers":
        changed = write_headers(args.notebooks)
        print(f"{len(changed)} of {len(args.notebooks)} notebook(s) updated from _config.yml")
        return 0
    if args.profile == "full" and not args.output_dir:
        parser.error("--profile full writes executed copies elsewhere: add --output-dir DIR "
                     "(the committed notebooks keep the outputs of a quick run)")
    for name in args.notebooks:
        output = Path(args.output_dir) / Path(name).name if args.output_dir else None
        seconds = execute(name, output, args.profile, threads=args.threads)
        print(f"{name}: {seconds:.0f} s ({args.profile})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
