"""Tests of adcourse.exercises: hint-giving checks and the student version of the notebooks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from adcourse import exercises
from adcourse.exercises import (
    ExerciseError,
    StudentVersionError,
    check,
    check_close,
    check_function,
    check_range,
    check_shape,
    find_leftover_solutions,
    make_student_version,
    strip_code_solution,
    strip_markdown_solutions,
)

REPO = Path(__file__).resolve().parents[1]

EXERCISE_MD = """## Exercises

```{exercise} Mean residual
:label: ex-99-mean

Write `score`.
```

````{solution} ex-99-mean
:class: dropdown

Average the residual:

```python
residual.mean()
```
````

:::{solution} ex-99-mean
A second, colon-fenced solution.
:::

Keep this line."""

SOLUTION_CODE = """import torch


def score(x, x_hat):
    \"\"\"Mean absolute residual.\"\"\"
    # BEGIN SOLUTION
    residual = (x - x_hat).abs()
    return residual.mean()
    # END SOLUTION


class Model:
    def forward(self, x):
        if x is not None:
            # BEGIN SOLUTION
            return x * 2
            # END SOLUTION
        return None"""


def _notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _executed_code_cell(source, tags=(), text="42\n"):
    cell = new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
    cell.execution_count = 3
    cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


@pytest.fixture
def course(tmp_path) -> Path:
    """A folder of two small notebooks with solutions and outputs, as the lead commits them."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb1 = _notebook(
        [
            new_markdown_cell("# Chapter\n\nThe score is $s = |x - \\hat x|$."),
            _executed_code_cell('PROFILE = "auto"', tags=["parameters"], text="profile: quick\n"),
            _executed_code_cell(SOLUTION_CODE, tags=["solution"]),
            new_markdown_cell(EXERCISE_MD),
            _executed_code_cell("# NBVAL_CHECK_OUTPUT\nprint(42)"),
        ]
    )
    nb1.cells[2].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    nb1.metadata["papermill"] = {"parameters": {"PROFILE": "quick"}}
    nb2 = _notebook([new_markdown_cell("# Another\n\nNo exercise here."), _executed_code_cell("1 + 1")])
    nbformat.write(nb1, folder / "01_first.ipynb")
    nbformat.write(nb2, folder / "02_second.ipynb")
    (folder / "notes.txt").write_text("not a notebook")
    (folder / ".01_first.tmp123.ipynb").write_text("half-written, hidden: skipped")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the student version ------------------------------------------------------------------------


def test_student_version_removes_code_solutions_keeping_indentation(course, tmp_path):
    out = tmp_path / "student"
    written = make_student_version(course, out)
    assert sorted(p.name for p in written) == ["01_first.ipynb", "02_second.ipynb"]
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb", "02_second.ipynb"]
    nb = nbformat.read(out / "01_first.ipynb", as_version=4)
    code = nb.cells[2].source
    assert "BEGIN SOLUTION" not in code and "END SOLUTION" not in code
    assert "(x - x_hat).abs()" not in code and "x * 2" not in code
    assert "    # YOUR CODE HERE\n    raise NotImplementedError" in code
    assert "            # YOUR CODE HERE\n            raise NotImplementedError" in code
    # what is around the solutions stays
    assert 'def score(x, x_hat):\n    """Mean absolute residual."""' in code
    assert code.rstrip().endswith("return None")
    # the stubbed code is still valid Python and raises the promised error
    namespace: dict = {}
    exec(compile(code, "student", "exec"), namespace)  # noqa: S102 - our own fixture
    with pytest.raises(NotImplementedError):
        namespace["score"](torch.ones(1), torch.zeros(1))
    with pytest.raises(NotImplementedError):
        namespace["Model"]().forward(1)


def test_student_version_removes_markdown_solutions(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    md = nbformat.read(out / "01_first.ipynb", as_version=4).cells[3].source
    assert "{solution}" not in md
    assert "Average the residual" not in md and "colon-fenced" not in md
    assert "```{exercise} Mean residual" in md and "Write `score`." in md
    assert md.rstrip().endswith("Keep this line.")
    assert "\n\n\n" not in md


def test_student_version_clears_outputs_and_execution_counts(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    for path in out.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert "papermill" not in nb.metadata
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == []
                assert cell.execution_count is None
                assert "execution" not in cell.metadata
    # tags survive (papermill still finds its parameters cell)
    nb = nbformat.read(out / "01_first.ipynb", as_version=4)
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    assert find_leftover_solutions(out) == []


def test_student_version_never_touches_the_sources(course, tmp_path):
    before = _digests(course)
    make_student_version(course, tmp_path / "student")
    assert _digests(course) == before


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 1\n# BEGIN SOLUTION\nx = 2\n", "never closed"),
        ("x = 1\n# END SOLUTION\n", "has no '# BEGIN SOLUTION'"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\nx\n# END SOLUTION\n", "inside the solution"),
        ("x = 1  # BEGIN SOLUTION\n", "not on a line of its own"),
    ],
)
def test_unbalanced_markers_name_notebook_and_cell(course, tmp_path, source, message):
    nb = nbformat.read(course / "02_second.ipynb", as_version=4)
    nb.cells.append(new_code_cell(source, metadata={"tags": ["solution"]}))
    nbformat.write(nb, course / "02_second.ipynb")
    out = tmp_path / "student"
    with pytest.raises(StudentVersionError) as info:
        make_student_version(course, out)
    text = str(info.value)
    assert "02_second.ipynb" in text and "cell 2" in text and message in text
    # atomic: nothing half-written, no temporary folder left behind
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".student")] == []


def test_failure_keeps_previous_output(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    previous = _digests(out)
    nb = nbformat.read(course / "01_first.ipynb", as_version=4)
    nb.cells.append(new_code_cell("# BEGIN SOLUTION\nx = 1"))
    nbformat.write(nb, course / "01_first.ipynb")
    with pytest.raises(StudentVersionError, match="01_first.ipynb, cell 5"):
        make_student_version(course, out)
    assert _digests(out) == previous


def test_rerun_replaces_output(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    (out / "stale.ipynb").write_text("{}")
    (course / "02_second.ipynb").unlink()
    make_student_version(course, out)
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb"]


def test_solution_tag_without_markers_is_refused(course, tmp_path):
    nb = nbformat.read(course / "02_second.ipynb", as_version=4)
    nb.cells.append(new_code_cell("x = 1", metadata={"tags": ["solution"]}))
    nbformat.write(nb, course / "02_second.ipynb")
    with pytest.raises(StudentVersionError, match=r"02_second.ipynb, cell 2: .*tagged 'solution'"):
        make_student_version(course, tmp_path / "student")


def test_unclosed_and_gated_markdown_solutions_are_refused():
    with pytest.raises(StudentVersionError, match="nb.ipynb, cell 4: .*never closed"):
        strip_markdown_solutions("```{solution} ex\nhalf", "nb.ipynb", 4)
    with pytest.raises(StudentVersionError, match="solution-start"):
        strip_markdown_solutions("```{solution-start} ex\n```\n", "nb.ipynb", 4)


def test_markdown_stripping_reads_fences_like_myst():
    # a {solution} shown inside a literal code block is documentation, not a solution
    shown = "How to write one:\n\n````md\n```{solution} ex\nText\n```\n````\n"
    assert strip_markdown_solutions(shown) == shown
    # a cell without solutions is returned unchanged, blank lines included
    plain = "Line\n\n\n\nOther\n"
    assert strip_markdown_solutions(plain) == plain
    # a solution nested in another directive is removed, the directive kept
    nested = "::::{note}\n:::{solution} ex\nsecret\n:::\n::::"
    assert strip_markdown_solutions(nested) == "::::{note}\n::::"
    # an exercise and its solution with fences of the same length
    same = "```{exercise} Ex\n:label: ex\nDo it.\n```\n\n```{solution} ex\nsecret\n```\n\nAfter."
    assert strip_markdown_solutions(same) == "```{exercise} Ex\n:label: ex\nDo it.\n```\n\nAfter."
    # a cell that was only a solution becomes empty
    assert strip_markdown_solutions("```{solution} ex\nsecret\n```") == ""


def test_strip_code_solution_without_markers_is_identity():
    assert strip_code_solution("a = 1\n\n\nb = 2\n") == "a = 1\n\n\nb = 2\n"


def test_check_stripped_finds_leftovers(course, tmp_path):
    problems = find_leftover_solutions(course)
    text = "\n".join(problems)
    assert "01_first.ipynb, cell 2: a '# BEGIN/END SOLUTION' marker" in text
    assert "01_first.ipynb, cell 3: a {solution} directive" in text
    assert "outputs or an execution count" in text
    assert find_leftover_solutions(tmp_path / "empty") == [f"{tmp_path / 'empty'}: no .ipynb files found"]


def test_command_line(course, tmp_path):
    out = tmp_path / "student"
    run = [sys.executable, "-m", "adcourse.exercises"]
    done = subprocess.run([*run, "student", str(course), str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 student notebook(s)" in done.stdout
    done = subprocess.run([*run, "check-stripped", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*run, "check-stripped", str(course)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and "01_first.ipynb, cell 2" in done.stderr
    # a bad marker: a clear message, no traceback, the previous output kept
    nb = nbformat.read(course / "02_second.ipynb", as_version=4)
    nb.cells.append(new_code_cell("# END SOLUTION"))
    nbformat.write(nb, course / "02_second.ipynb")
    done = subprocess.run([*run, "student", str(course), str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert "02_second.ipynb, cell 2" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb", "02_second.ipynb"]


def test_same_source_and_output_folder_is_refused(course):
    with pytest.raises(StudentVersionError, match="must differ"):
        make_student_version(course, course)


# --- the checks ---------------------------------------------------------------------------------


def test_check_passes_quietly_with_a_tick(capsys):
    check(True, "never shown")
    check_shape(torch.zeros(2, 3), (2, None), "x")
    check_range(np.array([0.0, 0.5, 1.0]), 0, 1, "probs")
    check_close(torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-7], "y")
    check_close(0.5, 0.5, "a float")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.startswith("✓ ") for line in out)


def test_check_raises_the_hint():
    with pytest.raises(ExerciseError, match="train for 10 epochs"):
        check(False, "train for 10 epochs")
    assert issubclass(ExerciseError, AssertionError)


def test_check_shape_names_the_dimension():
    with pytest.raises(ExerciseError) as info:
        check_shape(torch.zeros(4, 1, 32, 30), (4, 1, 32, 32), "recon")
    assert "`recon`" in str(info.value) and "dimension 3 is 30, expected 32" in str(info.value)
    with pytest.raises(ExerciseError, match="has 3 dimensions .* should have 4"):
        check_shape(torch.zeros(1, 32, 32), (1, 1, 32, 32), "recon")
    with pytest.raises(ExerciseError, match="forget to `return`"):
        check_shape(None, (1,), "recon")


def test_check_range_reports_span_and_nans():
    with pytest.raises(ExerciseError) as info:
        check_range(torch.tensor([-0.5, 0.2, 1.5, 0.3]), 0.0, 1.0, "recon")
    message = str(info.value)
    assert "[-0.5, 1.5]" in message and "2 of 4 values outside" in message
    with pytest.raises(ExerciseError, match="1 NaN"):
        check_range(torch.tensor([0.1, float("nan")]), 0.0, 1.0, "recon")


def test_check_close_says_how_far_and_where():
    expected = torch.zeros(2, 3)
    actual = expected.clone()
    actual[1, 2] = 0.25
    actual[0, 0] = 0.01
    with pytest.raises(ExerciseError) as info:
        check_close(actual, expected, "heatmap", atol=1e-3)
    message = str(info.value)
    assert "`heatmap` is off by up to 0.25 at index (1, 2)" in message
    assert "2 of 6 values" in message and "atol=0.001" in message
    check_close(actual, expected, "heatmap", atol=0.3)  # within a looser tolerance
    with pytest.raises(ExerciseError, match=r"shape \(2, 3\) but the expected value has shape \(3, 2\)"):
        check_close(actual, expected.T, "heatmap")


def test_check_function_reports_the_first_failing_case(capsys):
    def double(x):
        return x * 2

    check_function(double, [("ones", (torch.ones(3),), torch.full((3,), 2.0)), ("int", (2,), 4)])
    assert "✓ double passes all 2 cases" in capsys.readouterr().out

    def wrong(x):
        return x * 2 if x.numel() < 3 else x

    cases = [
        ("short", (torch.ones(2),), torch.full((2,), 2.0)),
        ("long", (torch.ones(3),), torch.full((3,), 2.0)),
        ("never reached", (torch.ones(4),), None),
    ]
    with pytest.raises(ExerciseError) as info:
        check_function(wrong, cases)
    assert "`wrong` fails on case 'long'" in str(info.value)
    assert "off by up to 1" in str(info.value)


def test_check_function_hints_for_stub_errors_and_none():
    def stub(x):
        # YOUR CODE HERE
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="not written yet"):
        check_function(stub, [("any", (1,), 1)])

    def broken(x):
        return x.nope

    with pytest.raises(ExerciseError, match="raised AttributeError on case 'tensor'"):
        check_function(broken, [("tensor", (torch.ones(1),), torch.ones(1))])

    def forgot(x):
        x + 1

    with pytest.raises(ExerciseError, match="returned None on case 'one'"):
        check_function(forgot, [("one", (1,), 2)])

    with pytest.raises(ExerciseError, match=r"returned 'b', expected 'a'"):
        check_function(lambda: "b", [("string", (), "a")])


def test_check_function_protects_cases_from_in_place_changes():
    x = torch.ones(2)

    def in_place(t):
        t.mul_(3)
        return t

    check_function(in_place, [("first", (x,), torch.full((2,), 3.0)), ("again", (x,), torch.full((2,), 3.0))])
    assert torch.equal(x, torch.ones(2))


def test_check_function_accepts_keyword_arguments():
    check_function(lambda a, b=0: a - b, [("kwargs", {"a": 3, "b": 1}, 2)])


def test_module_exports():
    for name in exercises.__all__:
        assert hasattr(exercises, name)


# --- the course's own notebooks -----------------------------------------------------------------


def test_course_notebooks_make_a_clean_student_version(tmp_path):
    """The committed chapters follow the conventions the student version relies on."""
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    if not notebooks:
        pytest.skip("no chapter notebooks yet")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and "BEGIN SOLUTION" in cell.source:
                assert "solution" in cell.metadata.get("tags", []), (
                    f"{path.name}, cell {index}: solution markers in a cell not tagged 'solution' "
                    "(the book would show the solution unfolded)"
                )
    before = _digests(REPO / "notebooks")
    make_student_version(REPO / "notebooks", tmp_path / "student")
    assert find_leftover_solutions(tmp_path / "student") == []
    assert _digests(REPO / "notebooks") == before
