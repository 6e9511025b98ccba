"""The course as its readers meet it: `make lab` on a laptop, a notebook opened alone on Colab, the
committed results read from an installed package, and the instructor's loop from the student
version to the grading of submissions.

Each test runs what a reader runs (the Makefile's targets, the notebooks' first cells, the commands
printed in the docs) rather than a copy of it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

from adcourse import exercises, notebooks, results

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]*.ipynb"))
DOCS = [REPO / "README.md", *sorted((REPO / "book").glob("*.md")), REPO / "book" / "results" / "README.md"]
REPOSITORY_URL, BRANCH = notebooks.repository(REPO / "_config.yml")
CHAPTERS_WRITING_RESULTS = ["03", "04", "05a", "05b", "06", "07", "08", "09"]
LAB_START_SECONDS = 300  # a stale .venv is rebuilt first, as `make lab` does for a student


def _chapter(prefix: str) -> Path:
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix + "_"))


def _code(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


# --- 1. local in one step ----------------------------------------------------------------------


def _make(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-n", *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_jupyterlab_is_pinned_and_installed():
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "jupyterlab" in pins, "requirements.txt must pin jupyterlab: `make lab` runs it from .venv"
    from importlib.metadata import version

    assert version("jupyterlab") == pins["jupyterlab"], "run `make venv`: .venv is older than requirements.txt"


def _get(url: str, seconds: float = 60) -> str:
    """The body of ``url``; the server prints its address a moment before it accepts connections."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read().decode()
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_make_lab_starts_jupyterlab_from_the_venv(tmp_path):
    """`make lab` (bootstrap included) serves notebooks/ from .venv; stopped once it answers."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    options = "--no-browser --port=0 --ServerApp.ip=127.0.0.1"
    lab = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_OPTIONS={options}"], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log: list[str] = []
    url_found = threading.Event()

    def read() -> None:
        for line in lab.stdout:
            log.append(line)
            if re.search(r"http://127\.0\.0\.1:\d+/lab\?token=\w+", line):
                url_found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        started = url_found.wait(LAB_START_SECONDS)
        text = "".join(log)
        assert started, f"`make lab` printed no JupyterLab address within {LAB_START_SECONDS} s:\n{text[-3000:]}"
        assert "is running at" in text
        port, token = re.search(r"http://127\.0\.0\.1:(\d+)/lab\?token=(\w+)", text).groups()
        assert f"JupyterLab application directory is {REPO / '.venv'}" in text, "JupyterLab did not run from .venv"
        base = f"http://127.0.0.1:{port}"
        served = {entry["name"] for entry in json.loads(_get(f"{base}/api/contents?token={token}"))["content"]}
        assert {p.name for p in NOTEBOOKS} <= served, f"JupyterLab does not serve notebooks/: {sorted(served)}"
        assert "JupyterLab" in _get(f"{base}/lab?token={token}")
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(10)
        reader.join(10)
    assert lab.returncode is not None


def test_make_book_runs_the_quick_profile_whatever_profile_says():
    for arguments in (["book"], ["book", "PROFILE=full"]):
        plan = _make(*arguments)
        assert plan.returncode == 0, plan.stderr
        assert "adcourse.notebooks execute --profile quick notebooks/" in plan.stdout
        assert "--profile full" not in plan.stdout, f"`make {' '.join(arguments)}` would run the full profile"


def test_make_notebooks_full_writes_copies_elsewhere_and_refuses_unknown_profiles():
    plan = _make("notebooks", "PROFILE=full")
    assert plan.returncode == 0, plan.stderr
    assert "execute --profile full --output-dir artifacts/full notebooks/" in plan.stdout
    refused = _make("notebooks", "PROFILE=auto")
    assert refused.returncode != 0 and "PROFILE must be quick or full, got 'auto'" in refused.stderr


def test_the_executor_refuses_to_overwrite_a_notebook_with_a_full_run(tmp_path, capsys):
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    with pytest.raises(ValueError, match="keep the outputs of a quick run"):
        notebooks.execute(path, profile="full")
    with pytest.raises(ValueError, match="keep the outputs of a quick run"):
        notebooks.execute(path, path, profile="full")
    with pytest.raises(SystemExit):
        notebooks.main(["execute", "--profile", "full", str(path)])
    assert "add --output-dir" in capsys.readouterr().err
    assert nbformat.read(path, as_version=4).cells == []


def test_a_quick_run_hides_cuda_pins_the_threads_and_keeps_the_parameters_cell(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    source = new_notebook(cells=[
        new_code_cell('PROFILE = "auto"', metadata={"tags": ["parameters"]}),
        new_code_cell("import os\nfrom adcourse.train import resolve_profile\n"
                      "print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), resolve_profile(PROFILE), "
                      "os.environ.get('OMP_NUM_THREADS'))"),
    ])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(source, tmp_path / "chapter.ipynb")
    before = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    notebooks.execute(tmp_path / "chapter.ipynb", profile="quick")
    after = {name: os.environ.get(name) for name in before}
    assert after == before, "the executor left its kernel's environment in this process"
    ran = nbformat.read(tmp_path / "chapter.ipynb", as_version=4)
    assert [c.source for c in ran.cells] == [c.source for c in source.cells], "a cell was injected or changed"
    assert ran.cells[1].outputs[0]["text"] == f"'' quick {notebooks.THREADS}\n"
    # kernels that share the CPU ask for fewer threads (the full-profile test runs two at a time)
    notebooks.execute(tmp_path / "chapter.ipynb", tmp_path / "one_thread.ipynb", profile="quick", threads=1)
    assert nbformat.read(tmp_path / "one_thread.ipynb", as_version=4).cells[1].outputs[0]["text"] == "'' quick 1\n"
    with pytest.raises(ValueError, match="threads must be a whole number of at least 1, got 0"):
        notebooks.execute(tmp_path / "chapter.ipynb", profile="quick", threads=0)


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end != -1 else None]


def _commands(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^(make [^#\n]*)", text, re.MULTILINE)]


def test_readme_shows_two_commands_then_the_others_under_their_own_heading():
    readme = (REPO / "README.md").read_text()
    first = readme[readme.index("\n## "):readme.index("\n## ", readme.index("\n## ") + 1)]
    assert _commands(first) == ["make book", "make test"], first
    others = _commands(_section(readme, "Other commands"))
    assert {"make lab", "make student", "make html-nosolutions"} <= set(others), others


@pytest.mark.parametrize("page", ["README.md", "book/setup.md", "book/intro.md"])
def test_make_lab_is_the_students_first_command(page):
    text = (REPO / page).read_text()
    if page == "README.md":  # its first section is the two commands of the maintainers
        text = _section(text, "Following the course")
    assert re.findall(r"make \w+", text)[0] == "make lab", f"{page}: a student's first command is `make lab`"


# --- 2. Colab ------------------------------------------------------------------------------------


def test_launch_buttons_use_the_repository_of_config():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["path_to_book"] == "", "the Colab links assume notebooks/ at the top"
    assert notebooks.colab_url(REPOSITORY_URL, BRANCH, "02_autoencoders.ipynb") == (
        f"https://colab.research.google.com/github/{REPOSITORY_URL.removeprefix('https://github.com/')}"
        f"/blob/{BRANCH}/notebooks/02_autoencoders.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_install_cell_are_those_of_config(path):
    notebook = nbformat.read(path, as_version=4)
    expected = notebooks.with_headers(nbformat.read(path, as_version=4), path.name, REPOSITORY_URL, BRANCH)
    title = next(c for c in notebook.cells if c.cell_type == "markdown")
    install = next(c for c in notebook.cells if c.cell_type == "code")
    hint = "run `.venv/bin/python -m adcourse.notebooks headers notebooks/*.ipynb`"
    assert title.source == next(c for c in expected.cells if c.cell_type == "markdown").source, hint
    assert install.source == notebooks.install_cell(REPOSITORY_URL, BRANCH), hint
    assert notebooks.colab_url(REPOSITORY_URL, BRANCH, path.name) in title.source


COURSE_ADDRESSES = [  # (pattern, what the match must equal)
    (re.compile(r"git\+(https://github\.com/[\w.-]+/[\w.-]+?)(?:@([\w.-]+))?(?=[\s\"'`@]|$)"), "install"),
    (re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([\w.-]+)/"), "colab"),
    (re.compile(r"(https://github\.com/[\w.-]+/[\w.-]+)/archive/refs/heads/([\w.-]+?)\.zip"), "archive"),
    (re.compile(r"(https://github\.com/[\w.-]+/adcourse)\b"), "repository"),
]


def _course_addresses(text: str):
    for pattern, kind in COURSE_ADDRESSES:
        for match in pattern.finditer(text):
            address, branch = match.group(1), (match.group(2) if pattern.groups > 1 else None)
            if kind == "colab":
                address = f"https://github.com/{address}"
            yield kind, address, branch


@pytest.mark.parametrize("path", DOCS + NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_and_notebooks_name_the_repository_of_config(path):
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    wrong = [(kind, address, branch) for kind, address, branch in _course_addresses(text)
             if address != REPOSITORY_URL or (branch is not None and branch != BRANCH)]
    assert not wrong, (f"{path.relative_to(REPO)} names the course at another address than _config.yml "
                       f"({REPOSITORY_URL}, branch {BRANCH}): {wrong}")


def test_the_address_check_sees_a_wrong_address():
    text = 'pip install "adcourse @ git+https://github.com/someone/adcourse@dev"'
    assert ("install", "https://github.com/someone/adcourse", "dev") in list(_course_addresses(text))


def _run_install_cell(monkeypatch, pip_exit_code: int) -> list[list[str]]:
    calls = []

    class Done:
        returncode = pip_exit_code

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    monkeypatch.setattr(subprocess, "run", lambda command, *args, **kwargs: calls.append(command) or Done())
    exec(notebooks.install_cell(REPOSITORY_URL, BRANCH), {})
    return calls


def test_the_install_cell_installs_from_the_repository_and_keeps_torch(monkeypatch):
    calls = _run_install_cell(monkeypatch, pip_exit_code=0)
    assert len(calls) == 1
    assert calls[0][-1] == f"adcourse @ git+{REPOSITORY_URL}@{BRANCH}"
    assert not any("torch" in part for part in calls[0])


def test_the_install_cell_says_what_to_do_when_pip_fails(monkeypatch):
    with pytest.raises(RuntimeError) as failure:
        _run_install_cell(monkeypatch, pip_exit_code=1)
    message = str(failure.value)
    name = REPOSITORY_URL.rsplit("/", 1)[1]
    assert "online" in message
    assert f"{REPOSITORY_URL}/archive/refs/heads/{BRANCH}.zip" in message
    assert f"!pip install {name}-{BRANCH}.zip" in message
    assert "make lab" in message


def test_pyproject_accepts_colabs_ipywidgets_7_and_requirements_pin_8():
    from packaging.requirements import Requirement

    text = (REPO / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL).group(1)
    widgets = next(Requirement(d) for d in re.findall(r'"([^"]+)"', dependencies) if d.startswith("ipywidgets"))
    assert widgets.specifier.contains("7.7.1"), "Colab ships ipywidgets 7.7.1 and draws only 7.x widgets"
    assert re.search(r"^ipywidgets==8\.", (REPO / "requirements.txt").read_text(), re.MULTILINE)


def _badge_extension():
    spec = importlib.util.spec_from_file_location("colab_badge", REPO / "book" / "_ext" / "colab_badge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_book_drops_the_badge_and_keeps_other_colab_links():
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    document = new_document("chapter", get_default_settings(Parser))
    target = notebooks.colab_url(REPOSITORY_URL, BRANCH, "02_autoencoders.ipynb")
    badge = nodes.paragraph("", "", nodes.reference("", "", nodes.image(uri=notebooks.COLAB_BADGE_IMAGE), refuri=target))
    text_link = nodes.paragraph("", "", nodes.reference("", "open it on Colab", nodes.Text("open it on Colab"),
                                                        refuri=target))
    document += [nodes.title("", "Chapter 2"), badge, text_link]
    _badge_extension().RemoveColabBadge(document).apply()
    assert not list(document.findall(nodes.image))
    assert [r["refuri"] for r in document.findall(nodes.reference)] == [target]
    assert len(list(document.findall(nodes.paragraph))) == 1, "the badge's empty paragraph is left behind"


# --- 3. results as package data, written to one place ------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(REPO), "-w", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    return next(out.glob("adcourse-*.whl"))


def _stored_files() -> list[str]:
    folder = REPO / "book" / "results"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))


def test_the_wheel_holds_every_module_and_every_stored_result(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "adcourse").rglob("*.py")
                     if "__pycache__" not in p.parts)
    missing = [m for m in modules if m not in names]
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {missing}"
    stored = _stored_files()
    assert any(name.endswith(".json") for name in stored)
    missing = [s for s in stored if f"adcourse/stored_results/{s}" not in names]
    assert not missing, f"book/results files missing from the wheel (see pyproject.toml): {missing}"


def test_load_stored_reads_the_committed_results_from_an_installed_package(wheel, tmp_path):
    """What a notebook opened alone on Colab does: no checkout, only the installed package."""
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                                str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = tmp_path / "colab"
    empty.mkdir()
    script = ("import json, adcourse, adcourse.results as r\n"
              "names = r.stored_names('quick/bench_quick_*.json')\n"
              "print(json.dumps({'package': adcourse.__file__, 'names': names,\n"
              "                  'data': r.load_stored(names[0])['data']}))\n")
    ran = subprocess.run([sys.executable, "-c", script], cwd=empty, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site), "the checkout's package was used, not the installed one"
    assert found["names"] == sorted(f"quick/{p.name}" for p in (REPO / "book/results/quick").glob("bench_quick_*.json"))
    committed = json.loads((REPO / "book" / "results" / found["names"][0]).read_text())
    assert found["data"] == committed["data"]


def test_stored_names_and_load_stored_in_this_checkout():
    names = results.stored_names("full/*.json")
    assert names == sorted(f"full/{p.name}" for p in (REPO / "book/results/full").glob("*.json"))
    assert results.load_stored(names[0]) == json.loads((REPO / "book/results" / names[0]).read_text())


def test_load_stored_says_what_exists():
    with pytest.raises(FileNotFoundError, match=r"no stored result 'quick/nothing\.json'.*quick/bench_quick_"):
        results.load_stored("quick/nothing.json")
    with pytest.raises(ValueError, match="a path inside book/results/"):
        results.load_stored("../README.md")


def test_save_writes_under_adcourse_results_in_one_step(tmp_path, monkeypatch):
    import numpy as np
    import torch

    monkeypatch.setenv("ADCOURSE_RESULTS", str(tmp_path / "mine"))
    assert results.results_dir() == tmp_path / "mine"
    path = results.save("08_pyramidal", {"auroc": np.float32(0.75), "curve": torch.tensor([1, 2]),
                                         "classes": {3: np.arange(2)}, "where": tmp_path})
    assert path == tmp_path / "mine" / "08_pyramidal.json"
    assert json.loads(path.read_text()) == {"auroc": 0.75, "curve": [1, 2], "classes": {"3": [0, 1]},
                                            "where": str(tmp_path)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(TypeError, match="result '08_pyramidal': cannot write a value of type object as JSON"):
        results.save("08_pyramidal", {"auroc": object()})
    assert json.loads(path.read_text())["auroc"] == 0.75, "a failed save changed the previous file"
    assert sorted(p.name for p in path.parent.iterdir()) == ["08_pyramidal.json"]
    with pytest.raises(ValueError, match="without folders"):
        results.save("../elsewhere", {})


def test_results_dir_defaults_to_a_folder_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("ADCOURSE_RESULTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert results.results_dir() == tmp_path / "adcourse_results"


def test_chapters_read_and_write_results_only_through_adcourse_results():
    relative = re.compile(r"""\.\./book|["']\.\.["']\s*\)\s*/\s*["']book|write_results_json|save_results\(|\.write_text\(json""")
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in _code(path))
        assert not relative.search(code), f"{path.name} reads or writes results by a path: {relative.search(code)[0]!r}"
    for prefix in CHAPTERS_WRITING_RESULTS:
        assert "adcourse.results.save(" in "\n".join(c.source for c in _code(_chapter(prefix))), prefix
    for prefix in ("02", "10"):
        assert "adcourse.results.load_stored(" in "\n".join(c.source for c in _code(_chapter(prefix))), prefix


# --- 5. the student version and the grading loop -----------------------------------------------


def test_student_version_is_readable_by_everyone_and_has_no_badge(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    chapter = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# Chapter 2 — Title\n\n{notebooks.colab_badge(REPOSITORY_URL, BRANCH, '02_x.ipynb')}"
                                      "\n\n**Learning objectives**"),
        nbformat.v4.new_code_cell("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION",
                                  metadata={"tags": ["solution"]}),
    ])
    nbformat.write(chapter, source / "02_x.ipynb")
    previous = os.umask(0o077)  # an instructor's private umask must not make the folder private
    try:
        exercises.main(["student", str(source), str(tmp_path / "student")])
    finally:
        os.umask(previous)
    folder = tmp_path / "student"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "02_x.ipynb").stat().st_mode) == 0o644
    title = nbformat.read(folder / "02_x.ipynb", as_version=4).cells[0].source
    assert title == "# Chapter 2 — Title\n\n**Learning objectives**"


def test_a_stub_says_what_to_do():
    stub = exercises.strip_code_solution("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION")
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match="exercise not written yet: replace this line with your code"):
        namespace["f"](1)


def test_chapter_10_student_stub_shows_the_hint_of_its_check():
    import pandas as pd

    student = exercises.make_student_notebook(nbformat.read(_chapter("10"), as_version=4))
    cells = student.cells
    index = next(i for i, c in enumerate(cells) if "def pareto_front" in c.source)
    check_cell = next(c for c in cells[index + 1:] if c.cell_type == "code")
    namespace = {"pd": pd}
    exec(cells[index].source, namespace)  # the stub's cell runs without error
    with pytest.raises(exercises.ExerciseError, match="`pareto_front` is not written yet"):
        exec(check_cell.source, namespace)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solution_cells_only_define(path):
    """In the student version a solution cell must run; the first call is the check's."""
    import ast

    for index, cell in enumerate(exercises.make_student_notebook(nbformat.read(path, as_version=4)).cells):
        if cell.cell_type != "code" or "solution" not in cell.metadata.get("tags", []):
            continue
        tree = ast.parse(cell.source)
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
                continue
            called = {n.func.id for n in ast.walk(statement) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            runs_the_stub = isinstance(statement, ast.Raise) or called & defined
            assert not runs_the_stub, (
                f"{path.name}, cell {index}: line {statement.lineno} of the solution cell runs the stub "
                "at once, so the student version raises before the check can give its hint. Move the call "
                "into the check cell (book/conventions.md)")


def _grading_loop() -> str:
    text = (REPO / "book" / "instructors.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    return next(b for b in blocks if "for notebook in submitted/" in b)


def test_the_grading_loop_of_the_instructors_page_reports_each_student(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    for student, body in [("alice", "return x * 3"), ("bob", "return x * 2"),
                          ("carol", 'raise NotImplementedError("exercise not written yet: return twice x")')]:
        submission = new_notebook(cells=[
            new_code_cell('PROFILE = "auto"', metadata={"tags": ["parameters"]}),
            new_code_cell(f"def double(x):\n    {body}"),
            new_code_cell("from adcourse.exercises import check_function\n"
                          "check_function(double, [('two', (2,), 4)])"),
        ])
        submission.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        (tmp_path / "submitted" / student).mkdir(parents=True)
        nbformat.write(submission, tmp_path / "submitted" / student / "02_autoencoders.ipynb")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    ran = subprocess.run(["bash", "-c", _grading_loop()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert ran.returncode == 0, ran.stderr
    report = dict(line.split(": ", 1) for line in ran.stdout.strip().splitlines())
    assert report["bob"] == "every check passes"
    assert report["alice"].startswith("ExerciseError: `double` fails on case 'two'"), report["alice"]
    # an exercise left as handed out: "not written yet", naming it, not "the run failed"
    assert report["carol"].startswith("ExerciseError: `double` is not written yet"), report["carol"]
    assert (tmp_path / "checked" / "alice.ipynb").is_file() and (tmp_path / "checked" / "bob.ipynb").is_file()


def test_setup_lists_the_times_each_chapter_states():
    stated = {}
    for path in NOTEBOOKS:
        title = nbformat.read(path, as_version=4).cells[0].source
        chapter = re.search(r"# Chapter ([0-9ab]+) — ", title).group(1)
        stated[chapter] = re.search(r"quick profile ran in (\d+) s", title).group(1) + " s"
    listed = dict(re.findall(r"^\| ([0-9ab]+) \| (\d+ s) \| ", (REPO / "book" / "setup.md").read_text(), re.MULTILINE))
    assert listed == stated
    low, high = min(stated.values(), key=lambda t: int(t[:-2])), max(stated.values(), key=lambda t: int(t[:-2]))
    assert f"takes {low[:-2]}–{high}" in (REPO / "README.md").read_text()
