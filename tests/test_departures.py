"""The appendix "Where the course departs from its sources" (``book/departures.md``) stays true.

Every chapter 2–10 has a section on the page, with a table of its departures (element, source
value, quick profile, full profile, why), and the chapter itself states them in a *Source vs.
course* box. A setting quoted as code, ``name=value``, in a table's quick or full column is read
back from the code for that profile:

* unqualified, ``epochs=30``: from the settings of the detectors the section names (in backticks),
  from the chapter notebook's settings dictionary (``SETTINGS`` or ``S``, nested keys included) or
  from the defaults of a function of the package that the section names; one of them must hold
  the value;
* qualified, ``piade.epochs=400`` (a detector) or ``SETTINGS.real.epochs=100`` (the notebook's
  dictionary, key by key): exactly there.

A value that none of these holds is an error: the page must not quote a setting the code does not
have.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest

import adcourse.models
from adcourse import detectors

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "book" / "departures.md"
CHAPTERS = ["2", "3", "4", "5a", "5b", "6", "7", "8", "9", "10"]
COLUMNS = ["element", "source value (seed and section)", "quick profile", "full profile", "why"]
PROFILE_COLUMNS = {"quick": 2, "full": 3}
SETTING = re.compile(r"`([A-Za-z_][\w.]*)=([^`]+)`")
NAME_IN_CODE = re.compile(r"`([A-Za-z_]\w*)`")
NOTEBOOK_DICTS = ("SETTINGS", "S")
MISSING = object()


def chapter_sections() -> dict[str, str]:
    """``{"2": text of "## Chapter 2", ...}`` in page order."""
    parts = re.split(r"^## Chapter (\S+)[ \t]*$", PAGE.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_rows(section: str) -> list[list[str]]:
    """The rows of the section's tables, header rows and separators left out."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: ") or [c.lower() for c in cells] == COLUMNS:
            continue
        rows.append(cells)
    return rows


def chapter_notebook(chapter: str) -> Path:
    prefix = chapter.zfill(2) if chapter.isdigit() else chapter.zfill(3)      # 2 -> 02, 5a -> 05a, 10 -> 10
    found = sorted((REPO / "notebooks").glob(f"{prefix}_*.ipynb"))
    assert len(found) == 1, f"chapter {chapter}: expected one notebook notebooks/{prefix}_*.ipynb, found {found}"
    return found[0]


def notebook_settings(path: Path) -> dict | None:
    """The notebook's ``SETTINGS`` (or ``S``) dictionary of profiles, evaluated from its source with
    only the names it uses imported; ``None`` when the notebook has none."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id in NOTEBOOK_DICTS):
                continue
            value = node.value.value if isinstance(node.value, ast.Subscript) else node.value  # SETTINGS = {...}[profile]
            if not isinstance(value, ast.Dict):
                continue
            imported = {}
            for statement in tree.body:
                if isinstance(statement, ast.ImportFrom):
                    imported.update({a.asname or a.name: (statement.module, a.name) for a in statement.names})
                elif isinstance(statement, ast.Import):
                    imported.update({a.asname or a.name.split(".")[0]: (a.name, None) for a in statement.names})
            namespace = {}
            for name in {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} - set(dir(builtins)):
                assert name in imported, f"{path.name}: the settings use {name!r}, which the cell does not import"
                module, attribute = imported[name]
                module = importlib.import_module(module)
                namespace[name] = getattr(module, attribute) if attribute else module
            return eval(compile(ast.Expression(value), str(path), "eval"), namespace)
    return None


def detector_settings(name: str, profile: str) -> dict:
    """A detector's settings for ``profile``: a frozen settings object (``settings_for``) or, for a
    detector that still keeps a dict per profile, that dict."""
    detector = detectors.create(name)
    if getattr(type(detector), "Settings", None) is not None:
        return dataclasses.asdict(detector.settings_for(profile))
    profiles = detector.PROFILES[profile]
    if isinstance(profiles, dict):
        return dict(profiles)
    return {field.name: getattr(profiles, field.name) for field in dataclasses.fields(profiles)}


def package_functions() -> dict[str, object]:
    """Every public function of the package's modules, by name (for ``the `stain` default``)."""
    modules = ["adcourse.corruption", "adcourse.losses", "adcourse.metrics", "adcourse.train"]
    modules += [f"adcourse.models.{m.name}" for m in pkgutil.iter_modules(adcourse.models.__path__)]
    functions = {}
    for module in map(importlib.import_module, modules):
        functions.update({name: f for name, f in vars(module).items()
                          if inspect.isfunction(f) and not name.startswith("_")})
    return functions


def canonical(value):
    """Lists and tuples compare alike (a notebook writes ``[0, 1]``, a dataclass keeps ``(0, 1)``)."""
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def values_of(key: str, mapping, found: list) -> None:
    """Every value stored under ``key`` in a (nested) dictionary."""
    if isinstance(mapping, dict):
        for k, v in mapping.items():
            if k == key:
                found.append(v)
            values_of(key, v, found)


class ChapterSources:
    """Where a chapter's quoted settings can be read, per profile."""

    def __init__(self, chapter: str, section: str):
        named = set(NAME_IN_CODE.findall(section))
        self.detectors = sorted(named & set(detectors.available()))
        self.notebook = chapter_notebook(chapter)
        self.notebook_dicts = notebook_settings(self.notebook)
        functions = package_functions()
        self.defaults = {}
        for name in sorted(named & set(functions)):
            for parameter in inspect.signature(functions[name]).parameters.values():
                if parameter.default is not inspect.Parameter.empty:
                    self.defaults.setdefault(parameter.name, []).append(parameter.default)

    def candidates(self, key: str, profile: str) -> list:
        path = key.split(".")
        if len(path) > 1:                                     # qualified: exactly one place
            head, rest = path[0], path[1:]
            if head in NOTEBOOK_DICTS:
                assert self.notebook_dicts is not None, f"{self.notebook.name} has no {head} dictionary"
                value = self.notebook_dicts[profile]
            else:
                assert head in detectors.available(), f"`{key}`: {head!r} is neither a detector nor {NOTEBOOK_DICTS}"
                value = detector_settings(head, profile)
            for part in rest:
                value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
            return [] if value is MISSING else [value]
        found = []
        for name in self.detectors:
            values_of(key, detector_settings(name, profile), found)
        if self.notebook_dicts is not None:
            values_of(key, self.notebook_dicts[profile], found)
        return found + self.defaults.get(key, [])


SECTIONS = chapter_sections()


def test_the_page_is_in_the_book():
    assert "book/departures" in (REPO / "_toc.yml").read_text(encoding="utf-8")
    assert PAGE.read_text(encoding="utf-8").startswith("# Where the course departs from its sources")


def test_every_chapter_has_a_section_with_a_table_in_order():
    assert list(SECTIONS) == CHAPTERS, f"sections {list(SECTIONS)}, expected one '## Chapter N' for each of {CHAPTERS}"
    for chapter, section in SECTIONS.items():
        headers = [[c.strip().lower() for c in line.strip().strip("|").split("|")]
                   for line in section.splitlines() if line.startswith("|")][:1]
        assert headers == [COLUMNS], f"chapter {chapter}: the table's columns must be {COLUMNS}, got {headers}"
        rows = table_rows(section)
        assert rows, f"chapter {chapter}: the section has no row of departures"
        assert all(len(row) == len(COLUMNS) for row in rows), \
            f"chapter {chapter}: rows must have {len(COLUMNS)} cells: {[r for r in rows if len(r) != len(COLUMNS)]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_chapter_states_its_departures(chapter):
    text = "\n".join(c.source for c in nbformat.read(chapter_notebook(chapter), as_version=4).cells
                     if c.cell_type == "markdown")
    assert "{admonition} Source vs. course" in text, f"chapter {chapter} has no 'Source vs. course' box"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_quoted_settings_are_the_codes(chapter):
    section = SECTIONS[chapter]
    sources = ChapterSources(chapter, section)
    checked, wrong = 0, []
    for row in table_rows(section):
        for profile, column in PROFILE_COLUMNS.items():
            for key, text in SETTING.findall(row[column]):
                try:
                    quoted = ast.literal_eval(text.strip())
                except (ValueError, SyntaxError):
                    wrong.append(f"{row[0]!r}, {profile}: `{key}={text}` is not a literal value")
                    continue
                found = sources.candidates(key, profile)
                if not found:
                    wrong.append(f"{row[0]!r}, {profile}: no `{key}` in the settings of "
                                 f"{sources.detectors or 'no detector named in the section'}, in "
                                 f"{sources.notebook.name} or in a named function's defaults")
                elif canonical(quoted) not in [canonical(v) for v in found]:
                    wrong.append(f"{row[0]!r}, {profile}: the page says `{key}={text}`, the code has {found}")
                checked += 1
    assert not wrong, f"book/departures.md, chapter {chapter}:\n  " + "\n  ".join(wrong)
    assert checked, f"chapter {chapter}: no setting of the table is quoted as `name=value`, so none is checked"
