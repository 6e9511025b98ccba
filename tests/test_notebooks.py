"""Every chapter notebook follows the course's conventions and runs top to bottom in the quick profile.

Each notebook is executed by papermill on a fresh kernel with ``PROFILE="quick"`` (the executed
copies land in ``artifacts/executed/`` for inspection). nbval, run by ``make test`` right after
this suite, re-executes the committed notebooks and compares the cells marked
``# NBVAL_CHECK_OUTPUT`` with their stored outputs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from adcourse import exercises
from adcourse.notebooks import execute

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]*.ipynb"))
EXECUTED = REPO / "artifacts" / "executed"
# The course's aim is about 90 s a chapter on a quiet 2-core CPU. On 2026-12-01 the course machine ran
# the same code about half as fast as on 2026-11-23 (ae_l2's quick training: 16.5–19.6 s against 9 s),
# and chapters 2 (one protocol for both autoencoders), 5a (minibatch discrimination), 6 (the combined
# model, t-SNE, saliency) and 10 (PatchCore) grew: a fresh-clone run there took 22–134 s a chapter, and
# chapter 6 took 214 s with other work beside it. The test stops gross regressions only; the measured
# times land in artifacts/executed/timings.json (and at the top of each chapter).
SECONDS_LIMIT = 300


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
    assert any("solution" in c.metadata.get("tags", []) for c in cells), "at least one code exercise"
    code = [c for c in cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "committed with the outputs of a full run"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "run top to bottom on a fresh kernel"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert any("# NBVAL_CHECK_OUTPUT" in c.source for c in code), "some numbers are checked by nbval"
    assert path.stat().st_size < 5_000_000


def test_student_version_strips_every_solution(tmp_path):
    written = exercises.make_student_version(REPO / "notebooks", tmp_path / "student")
    assert len(written) == len(NOTEBOOKS)
    assert exercises.find_leftover_solutions(tmp_path / "student") == []


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_quick_profile(path):
    seconds = execute(path, EXECUTED / path.name, profile="quick", cwd=path.parent)
    timings = EXECUTED / "timings.json"
    recorded = json.loads(timings.read_text()) if timings.exists() else {}
    timings.write_text(json.dumps({**recorded, path.stem: round(seconds, 1)}, indent=2))
    print(f"{path.name}: {seconds:.0f} s")
    assert seconds < SECONDS_LIMIT, f"{path.name} took {seconds:.0f} s in the quick profile (budget 90 s, limit {SECONDS_LIMIT} s)"


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
