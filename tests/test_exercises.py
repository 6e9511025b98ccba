"""Tests of adcourse.exercises: hint-giving checks and the student version of the notebooks."""

from __future__ import annotations

import hashlib
import re
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
    main,
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
    written = make_student_version(course, out).written
    assert sorted(p.name for p in written) == ["01_first.ipynb", "02_second.ipynb"]
    assert sorted(p.name for p in out.iterdir()) == [".adcourse-student.json", "01_first.ipynb", "02_second.ipynb"]
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


def test_rerun_replaces_what_it_wrote_and_deletes_nothing(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    (out / "my_notes.ipynb").write_text("{}")  # a file of the student's own
    nb = nbformat.read(course / "02_second.ipynb", as_version=4)
    nb.cells.append(new_markdown_cell("A new paragraph in the source."))
    nbformat.write(nb, course / "02_second.ipynb")
    result = make_student_version(course, out)
    assert result.kept == [] and sorted(p.name for p in result.written) == ["01_first.ipynb", "02_second.ipynb"]
    assert "A new paragraph" in (out / "02_second.ipynb").read_text()
    assert (out / "my_notes.ipynb").read_text() == "{}"


def test_a_notebook_with_the_students_answers_is_never_overwritten(course, tmp_path):
    out = tmp_path / "student"
    make_student_version(course, out)
    answered = nbformat.read(out / "01_first.ipynb", as_version=4)
    answered.cells[2].source = answered.cells[2].source.replace("raise NotImplementedError", "return 0  # mine")
    nbformat.write(answered, out / "01_first.ipynb")
    mine = (out / "01_first.ipynb").read_bytes()
    result = make_student_version(course, out)
    assert result.kept == [(out / "01_first.ipynb", out / "01_first.new.ipynb")]
    assert (out / "01_first.ipynb").read_bytes() == mine
    assert "raise NotImplementedError" in (out / "01_first.new.ipynb").read_text()
    # and a third run still keeps it: the student's file never becomes "what was written"
    assert make_student_version(course, out).kept == result.kept and (out / "01_first.ipynb").read_bytes() == mine


def test_a_student_folder_without_the_record_keeps_every_notebook_that_differs(course, tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "01_first.ipynb").write_text("{}")  # made before the record existed, or by hand
    result = make_student_version(course, out)
    assert [mine.name for mine, _ in result.kept] == ["01_first.ipynb"] and (out / "01_first.ipynb").read_text() == "{}"


def test_the_command_names_what_it_kept_and_how_to_go_on(course, tmp_path, capsys):
    out = tmp_path / "student"
    main(["student", str(course), str(out)])
    (out / "02_second.ipynb").write_text("{}")
    assert main(["student", str(course), str(out)]) == 0
    said = capsys.readouterr().out
    assert "kept " in said and "02_second.new.ipynb" in said and "delete it and run this again" in said


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
    assert sorted(p.name for p in out.iterdir()) == [".adcourse-student.json", "01_first.ipynb", "02_second.ipynb"]


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


# --- the chapters' code exercises -----------------------------------------------------------------

# The function each chapter's check is written for, and the check (chapter -> (function, check)).
CHAPTER_CHECKS = {
    "01": ("pro_at_threshold", exercises.check_ch01_pro_at_threshold),
    "02": ("ssim_terms", exercises.check_ch02_ssim_terms),
    "03": ("denoising_loss", exercises.check_ch03_denoising_loss),
    "04": ("gradient_norm", exercises.check_ch04_gradient_norm),
    "05a": ("critic_loss", exercises.check_ch05a_critic_loss),
    "05b": ("mahalanobis_pixels", exercises.check_ch05b_mahalanobis_pixels),
    "06": ("negative_elbo", exercises.check_ch06_negative_elbo),
    "07": ("squash_with_constant", exercises.check_ch07_squash),
    "08": ("pyramid_features", exercises.check_ch08_pyramid_features),
    "09": ("code_mixture_loss", exercises.check_ch09_weighted_component_nll),
    "10": ("position_gaussians", exercises.check_ch10_position_gaussians),
}


def _notebook_globals() -> dict:
    """The names the solution cells take from their notebooks."""
    import math

    import torch.nn.functional as F
    from scipy import ndimage

    from adcourse.losses import gradient_penalty
    from adcourse.models.corruption_ae import corrupt_batch

    def penalty(critic, real, fake, generator=None):  # chapter 5a's written-out penalty
        return gradient_penalty(critic, real, fake, generator=generator)

    return {"np": np, "torch": torch, "F": F, "math": math, "ndimage": ndimage,
            "corrupt_batch": corrupt_batch, "penalty": penalty}


def _exercise_cells(chapter: str, function: str):
    path = next((REPO / "notebooks").glob(f"{chapter}_*.ipynb"))
    cells = nbformat.read(path, as_version=4).cells
    for index, cell in enumerate(cells):
        if cell.cell_type == "code" and f"def {function}(" in cell.source:
            return cell, cells[index + 1]
    pytest.fail(f"{path.name}: no code cell defines {function}()")


@pytest.mark.parametrize("chapter", sorted(CHAPTER_CHECKS))
def test_chapter_check_passes_the_notebook_solution_and_hints_on_the_stub(chapter, capsys):
    function, check_exercise = CHAPTER_CHECKS[chapter]
    solution, following = _exercise_cells(chapter, function)
    assert "solution" in solution.metadata.get("tags", [])
    assert f"{check_exercise.__name__}({function})" in following.source, "the next cell runs the check"
    namespace = _notebook_globals()
    exec(solution.source, namespace)  # noqa: S102 - the course's own notebook
    check_exercise(namespace[function])
    assert capsys.readouterr().out.startswith("✓ ")
    stub = _notebook_globals()
    exec(strip_code_solution(solution.source), stub)  # noqa: S102 - what make student hands out
    with pytest.raises(ExerciseError, match="is not written yet: replace `raise NotImplementedError`"):
        check_exercise(stub[function])


def _label_4_connected(masks, maps, threshold):
    from scipy import ndimage

    overlaps = []
    for mask, values in zip(masks, maps):
        labelled, count = ndimage.label(mask)
        overlaps += [(values[labelled == k] >= threshold).mean() for k in range(1, count + 1)]
    return float(np.mean(overlaps))


def _pro_strictly_above(masks, maps, threshold):
    from scipy import ndimage

    overlaps = []
    for mask, values in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        overlaps += [(values[labelled == k] > threshold).mean() for k in range(1, count + 1)]
    return float(np.mean(overlaps))


def _ssim_swapped(x, y):
    from adcourse.exercises import _ssim_terms_reference

    luminance, structure = _ssim_terms_reference(x, y)
    return structure, luminance


def _denoise(target_is_corrupted=False, corrupt=True, reduce=torch.mean, fresh_rng=False, item=False,
             in_place=False):
    from adcourse.models.corruption_ae import corrupt_batch

    def loss(model, clean, corruption, rng):
        if in_place:
            clean[..., :1, :1] = 0.0
        rng = np.random.default_rng(0) if fresh_rng else rng
        corrupted = corrupt_batch(clean, corruption, rng) if corrupt else clean
        value = reduce((model(corrupted) - (corrupted if target_is_corrupted else clean)) ** 2)
        return value.item() if item else value

    return loss


def _gradient(norm, requires_grad=True):
    def gradient_norm(model, coords):
        points = coords.clone().requires_grad_(requires_grad)
        (grad,) = torch.autograd.grad(model(points).sum(), points)
        return norm(grad)

    return gradient_norm


def _critic(sign=-1.0, with_penalty=True, weighted=True, item=False, penalty_item=False):
    from adcourse.losses import gradient_penalty

    def critic_loss(critic, real, fake, gp_weight=10.0, generator=None):
        distance = critic(real).mean() - critic(fake).mean()
        penalty = gradient_penalty(critic, real, fake, generator=generator) if with_penalty else 0.0
        if penalty_item:  # the value kept, the graph cut: what chapter 5a's create_graph=True warns about
            penalty = penalty.item()
        value = sign * distance + (gp_weight if weighted else 1.0) * penalty
        return value.item() if item else value

    return critic_loss


def _se_gate(kind):
    def se_gate(u, w1, w2):
        z = u.amax(dim=(2, 3)) if kind == "max" else u.mean(dim=(2, 3))
        if kind == "swapped":
            return torch.sigmoid(torch.relu(z @ w2) @ w1)
        hidden = z @ w1.T if kind == "no relu" else torch.relu(z @ w1.T)
        return hidden @ w2.T if kind == "no sigmoid" else torch.sigmoid(hidden @ w2.T)

    return se_gate


def _mahalanobis(kind):
    def mahalanobis_pixels(l_r, l_d, mean, cov):
        v = np.stack([l_r - mean[0], l_d - mean[1]], axis=-1)
        if kind == "uncentred":
            v = np.stack([l_r, l_d], axis=-1)
        if kind == "z-scores":
            return np.sqrt(((v / np.sqrt(np.diag(cov))) ** 2).sum(-1))
        matrix = cov if kind == "covariance" else np.linalg.inv(cov)
        squared = np.einsum("...i,ij,...j->...", v, matrix, v)
        return squared if kind == "squared" else np.sqrt(squared)

    return mahalanobis_pixels


def _elbo(kl_weight=1.0, kl_per_pixel=True, per_pixel=True, use_beta=True):
    import torch.nn.functional as F

    def negative_elbo(x_hat, x, mu, logvar, beta=1.0):
        pixels = x[0].numel()
        bce = F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1)
        kl = kl_weight * 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(1) * (beta if use_beta else 1.0)
        if not per_pixel:
            return (bce + kl).mean()
        return (bce / pixels + (kl / pixels if kl_per_pixel else kl)).mean()

    return negative_elbo


def _squash(use_a=True, use_dim=True, eps=1e-12):
    def squash_with_constant(s, a=1.0, dim=-1):
        dim = dim if use_dim else -1
        norm2 = (s ** 2).sum(dim=dim, keepdim=True)
        return norm2 / ((a if use_a else 1.0) + norm2) * s / torch.sqrt(norm2 + eps)

    return squash_with_constant


def _pyramid(pool="avg", reverse=False, channels_last=False):
    import torch.nn.functional as F

    def pyramid_features(fmap, bins=(8, 4, 2, 1), dim=8):
        pooling = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
        levels = [pooling(fmap, k) for k in (bins[::-1] if reverse else bins)]
        flat = [level.permute(0, 2, 3, 1).flatten(1) if channels_last else level.flatten(1)
                for level in levels]
        return torch.cat(flat, 1).reshape(len(fmap), -1, dim)

    return pyramid_features


def _mixture_loss(kind):
    import math

    from adcourse.losses import mixture_nll

    def code_mixture_loss(y, logits, means, scales):
        if kind == "mixture":
            return mixture_nll(y, logits, means, scales)
        z = (y.unsqueeze(-2) - means) / scales
        log_normal = (-0.5 * z ** 2 - torch.log(scales)).sum(-1)
        if kind != "no constant":
            log_normal = log_normal - 0.5 * y.shape[-1] * math.log(2 * math.pi)
        weights = logits if kind == "logits" else torch.softmax(logits, -1)
        return -(weights * log_normal).sum(-1)

    return code_mixture_loss


def _gaussians(order=(2, 3, 0, 1), ddof=1, regularise=True, pair=True):
    def position_gaussians(features, epsilon=0.01):
        n, d, h, w = features.shape
        x = features.permute(*order).reshape(h * w, n, d)
        means = x.mean(1)
        centred = x - means[:, None]
        covariances = centred.transpose(1, 2) @ centred / (n - ddof)
        if regularise:
            covariances = covariances + epsilon * torch.eye(d)
        return (means, covariances) if pair else means

    return position_gaussians


WRONG_ANSWERS = [
    ("01", lambda masks, maps, t: float((maps[masks > 0] >= t).mean()), r"each defect \*region\*"),
    ("01", _label_4_connected, r"8-connectivity"),
    ("01", _pro_strictly_above, r"compare with `>=`, not `>`"),
    ("01", lambda masks, maps, t: None, r"returned None on case 'a large region found"),
    ("01", lambda masks, maps, t: 1 / 0, r"raised ZeroDivisionError on case"),
    ("02", _ssim_swapped, r"the two maps are swapped"),
    ("02", lambda x, y: x * y, r"should return two values, \(luminance, contrast_structure\)"),
    ("03", _denoise(target_is_corrupted=True), r"the target is the clean image"),
    ("03", _denoise(corrupt=False), r"never saw a corrupted image"),
    ("03", _denoise(reduce=torch.sum), r"not their sum"),
    ("03", _denoise(item=True), r"keeps its graph"),
    ("03", _denoise(in_place=True), r"changed `clean` in place"),
    ("03", _denoise(fresh_rng=True), r"draw each image's corruption from `rng`"),
    ("04", _gradient(lambda g: (g ** 2).sum(1)), r"squared norm"),
    ("04", _gradient(lambda g: g.abs().sum(1)), r"L1 norm"),
    ("04", _gradient(lambda g: g), r"the gradient itself"),
    ("04", _gradient(lambda g: g.norm(dim=1, keepdim=True)), r"shape \(N,\)"),
    ("04", _gradient(lambda g: g.norm(dim=1), requires_grad=False), r"requires_grad_\(True\)"),
    ("05a", _critic(sign=1.0), r"the critic \*maximises\*"),
    ("05a", _critic(with_penalty=False), r"the gradient penalty is missing"),
    ("05a", _critic(weighted=False), r"not multiplied by `gp_weight`"),
    ("05a", _critic(item=True), r"connected to the critic's weights"),
    ("05a", _critic(penalty_item=True), r"penalty is cut from the graph"),
    ("05b", _mahalanobis("squared"), r"squared distance"),
    ("05b", _mahalanobis("covariance"), r"Σ is used where its inverse belongs"),
    ("05b", _mahalanobis("uncentred"), r"not centred"),
    ("05b", _mahalanobis("z-scores"), r"how L_R and L_D vary together"),
    ("06", _elbo(kl_weight=0.0), r"the KL term is missing"),
    ("06", _elbo(kl_per_pixel=False), r"divided by the number of pixels too"),
    ("06", _elbo(per_pixel=False), r"divide by the number of pixels of an image"),
    ("06", _elbo(kl_weight=-1.0), r"minus sign"),
    ("06", _elbo(use_beta=False), r"not multiplied by `beta`"),
    ("07", _squash(eps=0.0), r"returns NaN .* a zero vector"),
    ("07", _squash(use_a=False), r"the constant `a` is ignored"),
    ("07", _squash(use_dim=False), r"the wrong dimension"),
    ("08", _pyramid(pool="max"), r"pools with the maximum"),
    ("08", _pyramid(reverse=True), r"concatenated in reverse"),
    ("08", _pyramid(channels_last=True), r"flattened channel last"),
    ("09", _mixture_loss("mixture"), r"this is the mixture NLL"),
    ("09", _mixture_loss("logits"), r"with a softmax first"),
    ("09", _mixture_loss("no constant"), r"log 2π"),
    ("10", _gaussians(ddof=0), r"divides by N − 1"),
    ("10", _gaussians(regularise=False), r"ε·I is missing"),
    ("10", _gaussians(order=(3, 2, 0, 1)), r"numbered column by column"),
    ("10", _gaussians(pair=False), r"should return two values, \(means, covariances\)"),
]


@pytest.mark.parametrize("chapter, answer, hint", WRONG_ANSWERS,
                         ids=[f"{chapter}-{hint[:28]}" for chapter, _, hint in WRONG_ANSWERS])
def test_chapter_check_names_the_mistake(chapter, answer, hint):
    _, check_exercise = CHAPTER_CHECKS[chapter]
    with pytest.raises(ExerciseError, match=hint):
        check_exercise(answer)


def test_ch08_se_gate_check_passes_the_notebook_solution(capsys):
    solution, following = _exercise_cells("08", "se_gate")
    assert "check_ch08_se_gate(se_gate)" in following.source
    namespace = _notebook_globals()
    exec(solution.source, namespace)  # noqa: S102 - the course's own notebook
    exercises.check_ch08_se_gate(namespace["se_gate"])
    assert capsys.readouterr().out.startswith("✓ ")


@pytest.mark.parametrize("kind, hint", [("max", r"squeezes by the maximum"), ("no sigmoid", r"sigmoid is missing"),
                                        ("no relu", r"ReLU between the two matrices is missing"),
                                        ("swapped", r"W₁ and W₂ are swapped")])
def test_ch08_se_gate_check_names_the_mistake(kind, hint):
    with pytest.raises(ExerciseError, match=hint):
        exercises.check_ch08_se_gate(_se_gate(kind))


def test_every_chapter_has_two_checked_code_exercises_and_ends_with_recall_questions():
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]*.ipynb"))
    assert len(notebooks) >= len(CHAPTER_CHECKS)
    for path in notebooks:
        cells = nbformat.read(path, as_version=4).cells
        solutions = [i for i, cell in enumerate(cells) if "solution" in cell.metadata.get("tags", [])]
        assert len(solutions) >= 2, f"{path.name}: fewer than two code exercises"
        for index in solutions:
            after = next(cell for cell in cells[index + 1:] if cell.cell_type == "code")
            assert "from adcourse.exercises import" in after.source, (
                f"{path.name}, cell {index}: the code cell after a solution should run a check"
            )
        last = cells[-1]
        assert last.cell_type == "markdown" and last.source.startswith("## Recall questions"), (
            f"{path.name}: the chapter should end with its recall questions"
        )
        questions = re.findall(r"^```\{admonition\} .+\n:class: dropdown\n", last.source, re.M)
        assert 3 <= len(questions) <= 5, f"{path.name}: {len(questions)} recall questions"
        assert last.source.count("```") == 2 * len(questions), f"{path.name}: an answer is not closed"
