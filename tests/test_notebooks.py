"""Every chapter notebook follows the course's conventions.

That each runs top to bottom in the quick profile is checked once, by nbval, which ``make test`` runs
right after this suite: it executes the committed notebooks on a fresh kernel, compares the cells
marked ``# NBVAL_CHECK_OUTPUT`` with their stored outputs, and (plugin ``nbval_timing.py``) times each
chapter against a limit. Their full profile runs in miniature in ``test_full_profile.py``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from adcourse import exercises
from adcourse.notebooks import execute

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]*.ipynb"))


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def test_there_are_chapters():
    assert [p.name[:2] for p in NOTEBOOKS][:2] == ["01", "02"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_conventions(path):
    cells = _cells(path)
    first = cells[0].source
    assert cells[0].cell_type == "markdown" and first.startswith("# Chapter"), "starts with a '# Chapter N — Title' cell"
    assert "Learning objectives" in first, "states learning objectives at the top"
    assert 'find_spec("adcourse")' in cells[1].source, "second cell installs adcourse on Colab when missing"
    assert "parameters" in cells[2].metadata.get("tags", []) and 'PROFILE = "auto"' in cells[2].source
    assert "describe_profile(PROFILE)" in cells[3].source, "prints which profile runs and why"
    markdown = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown
    assert len(re.findall(r"```\{exercise\}", markdown)) >= 3, "at least three exercises"
    solutions = [i for i, c in enumerate(cells) if "solution" in c.metadata.get("tags", [])]
    checked = [i for i in solutions
               if any(c.cell_type == "code" and re.search(r"\bcheck\w*\(", c.source) for c in cells[i + 1: i + 3])]
    assert len(checked) >= 2, f"at least two code exercises with a check cell right after them (found {len(checked)})"
    recall = markdown.partition("## Recall questions")[2]
    questions = re.findall(r"^```\{admonition\} \d+\. .*\n:class: dropdown$", recall, re.MULTILINE)
    assert 3 <= len(questions) <= 5, "3-5 numbered recall questions at the end, each answer in a dropdown"
    code = [c for c in cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "committed with the outputs of a full run"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "run top to bottom on a fresh kernel"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert any("# NBVAL_CHECK_OUTPUT" in c.source for c in code), "some numbers are checked by nbval"
    assert path.stat().st_size < 5_000_000


def test_student_version_strips_every_solution(tmp_path):
    written = exercises.make_student_version(REPO / "notebooks", tmp_path / "student").written
    assert len(written) == len(NOTEBOOKS)
    assert exercises.find_leftover_solutions(tmp_path / "student") == []


def test_a_failing_run_leaves_the_previous_notebook_and_no_temporary_file(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    broken = new_notebook(cells=[new_code_cell("raise RuntimeError('broken cell')")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, tmp_path / "broken.ipynb")
    (tmp_path / "out.ipynb").write_text("previous")
    with pytest.raises(Exception, match="broken cell"):
        execute(tmp_path / "broken.ipynb", tmp_path / "out.ipynb")
    assert (tmp_path / "out.ipynb").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ipynb", "out.ipynb"]


def test_a_widget_cell_sends_nothing_to_the_kernel_while_it_runs(tmp_path, monkeypatch):
    # A message sent on the shell socket while a cell's reply is awaited there can stall the run
    # until the cell's timeout (see adcourse.notebooks): during a run only requests may go out.
    from jupyter_client.channels import ZMQSocketChannel
    from nbformat.v4 import new_code_cell, new_notebook

    sent, send = [], ZMQSocketChannel.send
    monkeypatch.setattr(ZMQSocketChannel, "send", lambda self, msg: (sent.append(msg["msg_type"]), send(self, msg))[1])
    notebook = new_notebook(cells=[new_code_cell(
        "import ipywidgets as widgets\n"
        "widgets.interact(lambda threshold=0.3: print(f'threshold {threshold:.2f}'),\n"
        "                 threshold=widgets.FloatSlider(value=0.3, min=0, max=1))")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "widget.ipynb")
    execute(tmp_path / "widget.ipynb", tmp_path / "out.ipynb")
    assert "execute_request" in sent
    assert all(t.endswith("_request") for t in sent), sent


@pytest.mark.parametrize("limit, status", [("600", 0), ("0.001", 1)])
def test_nbval_run_times_each_notebook_and_fails_over_the_limit(tmp_path, limit, status):
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell("print(6 * 7)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "tiny.ipynb")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "nbval_timing", "--nbval-lax", "-p", "no:cacheprovider",
                          "--notebook-seconds-limit", limit, "tiny.ipynb"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert run.returncode == status, run.stdout + run.stderr
    assert "tiny.ipynb:" in run.stdout and "seconds per notebook" in run.stdout
    assert ("took" in run.stdout and "over the limit" in run.stdout) == bool(status)
    assert "tiny.ipynb" in (tmp_path / "artifacts" / "executed" / "timings.json").read_text()
