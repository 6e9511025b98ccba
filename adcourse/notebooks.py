"""Execute the chapter notebooks with papermill and store them without machine-specific noise.

    python -m adcourse.notebooks execute notebooks/*.ipynb       # PROFILE="auto", in place
    python -m adcourse.notebooks execute --profile full --output-dir book/results/full notebooks/04_implicit_siren.ipynb

With the default profile ``auto`` nothing is injected, so the stored notebook keeps
``PROFILE = "auto"`` (quick on a CPU, full on a Colab GPU); any other profile is injected by
papermill as a parameter.

Committed notebooks carry the outputs of a quick run (the book shows them, nbval checks them), so
what would differ from one machine to the next is removed: papermill's timings, execution
timestamps, and progress-bar widgets.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

import nbformat

# Progress bars are for people at a keyboard; in stored outputs they are noise. The thread count is
# pinned because floating-point sums (and so the checked numbers) depend on how work is split
# between threads; nbval runs with the same setting (Makefile).
QUIET_ENV = {"TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2"}


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


def execute(path: str | os.PathLike, output: str | os.PathLike | None = None, profile: str = "auto",
            parameters: dict | None = None, cwd: str | os.PathLike | None = None) -> float:
    """Run ``path`` top to bottom on a fresh kernel; return the seconds taken.

    The executed notebook replaces ``output`` (default: ``path`` itself) only when every cell ran:
    a failing run leaves the previous file untouched.
    """
    import papermill

    from .train import atomic_output  # imports torch: only when a notebook is executed

    path = Path(path)
    os.environ.update(QUIET_ENV)
    start = time.perf_counter()
    with atomic_output(output or path, suffix=".ipynb") as tmp:  # papermill reads the format from the suffix
        injected = {**({} if profile == "auto" else {"PROFILE": profile}), **(parameters or {})}
        with _output_widgets_that_do_not_write_back():
            papermill.execute_notebook(str(path), str(tmp), parameters=injected,
                                       kernel_name="python3", cwd=str(cwd or path.parent), progress_bar=False,
                                       execution_timeout=600, start_timeout=120)
        seconds = time.perf_counter() - start
        nbformat.write(clean(nbformat.read(tmp, as_version=4)), tmp)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("execute", help="execute notebooks with papermill and store them cleaned")
    run.add_argument("notebooks", nargs="+")
    run.add_argument("--profile", default="auto", choices=["auto", "quick", "full"])
    run.add_argument("--output-dir", default=None, help="write executed copies here instead of in place")
    args = parser.parse_args(argv)
    for name in args.notebooks:
        output = Path(args.output_dir) / Path(name).name if args.output_dir else None
        seconds = execute(name, output, args.profile)
        print(f"{name}: {seconds:.0f} s ({args.profile})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
