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

Some rows quote more than settings: channel counts, map sizes, the stages a network reads, the time a
chapter printed. The tests at the end build the network each of those rows speaks of (or read the
chapter's stored output and the committed results it prints) and compare them with the row's own
words: chapter 3's training length, chapter 4's loss network, chapter 8's depth of the backbone and
width of the up-sampled maps, chapter 10's PatchCore features and coreset times.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import math
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

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


# --- Rows whose text states what the code does: read back from the code ----------------------------
# The rows below quote more than `name=value` settings: channel counts, map sizes, the stages read, the
# times a chapter printed. Each test builds the network (or reads the stored output) the row speaks of
# and compares it with the row's own words. "random" builds the source's architecture with seeded
# random weights, so the full profile's ResNets are checked without a download.

NETWORK_OF_PROFILE = {"quick": "shipped", "full": "random"}


def departures_row(chapter: str, element: str) -> list[str]:
    """The one row of chapter ``chapter`` whose element starts with ``element``."""
    rows = [row for row in table_rows(SECTIONS[chapter]) if row[0].startswith(element)]
    assert len(rows) == 1, f"chapter {chapter}: expected one row '{element}…', found {[r[0] for r in rows]}"
    return rows[0]


def named_list(text: str) -> list[str]:
    """'relu1_2, relu2_2 and relu3_3' -> ['relu1_2', 'relu2_2', 'relu3_3']."""
    return [part.strip() for part in re.split(r",\s*|\s+and\s+", text) if part.strip()]


def number(text: str) -> int:
    return int(text.replace(",", ""))


def stored_output(chapter: str) -> str:
    """Every stream output of the chapter notebook's code cells, as committed."""
    cells = nbformat.read(chapter_notebook(chapter), as_version=4).cells
    return "\n".join(output.get("text", "") for cell in cells if cell.cell_type == "code"
                     for output in cell.outputs if output.output_type == "stream")


def test_ch3_training_length_is_the_detectors():
    """The epochs of both profiles are those of every corruption autoencoder, and the full column's
    steps and updates follow from the full batch size and the notebook's number of patches."""
    from adcourse.models.corruption_ae import CorruptionAEDetector

    row = departures_row("3", "Training length")
    names = [name for name in detectors.available() if isinstance(detectors.create(name), CorruptionAEDetector)]
    assert names, "no corruption autoencoder is registered"
    settings = notebook_settings(chapter_notebook("3"))
    for profile, column in PROFILE_COLUMNS.items():
        quoted = {int(value) for value in re.findall(r"`epochs=(\d+)`", row[column])}
        assert len(quoted) == 1, f"the {profile} column should quote one `epochs=N`, found {quoted}"
        epochs = quoted.pop()
        assert {detector_settings(name, profile)["epochs"] for name in names} == {epochs}, \
            f"{profile}: the row says {epochs} epochs, the detectors {names} have " \
            f"{[detector_settings(name, profile)['epochs'] for name in names]}"
        assert settings[profile]["train"]["epochs"] == epochs
    full = {name: detector_settings(name, "full") for name in names}
    batch = {s["batch_size"] for s in full.values()}
    assert len(batch) == 1
    batch = batch.pop()
    # the course's epoch: one pass over the notebook's training patches, the last batch kept
    steps = re.search(r"(\d+) steps on the ([\d,]+) texture patches \(([\d,]+) updates\)", row[3])
    assert steps, "the full column should give the steps and updates of the full profile on the texture patches"
    per_epoch, patches, updates = map(number, steps.groups())
    assert patches == settings["full"]["n_train"]
    assert per_epoch == math.ceil(patches / batch)
    assert updates == per_epoch * full[names[0]]["epochs"]
    # the authors' epoch: a fixed number of steps, at the batch the full profile shares with them
    code = re.search(r"int\(2000/(\d+)\) = ([\d,]+) steps of (\d+) images, ([\d,]+) updates", row[1])
    assert code, "the source column should give the authors' steps per epoch and updates"
    divisor, per_epoch, images, updates = map(number, code.groups())
    assert divisor == images == batch
    assert per_epoch == 2000 // batch and updates == per_epoch * full[names[0]]["epochs"]


def test_ch4_loss_network_is_the_codes():
    """The full column names the VGG-16 layers the loss network reads, the source column says the
    published code reads the same ones, and the quick column's strides and channels are the shipped
    loss network's."""
    from adcourse.backbones import EfficientNetLite0Features
    from adcourse.losses import SHIPPED_LOSS_STAGES, VGGFeatures

    row = departures_row("4", "Loss network")
    layers = list(inspect.signature(VGGFeatures).parameters["layers"].default)
    relu = re.compile(r"relu\d_\d")
    assert relu.findall(row[3]) == layers, f"full column names {relu.findall(row[3])}, the code reads {layers}"
    published = row[1].partition("Published code")[2]
    assert relu.findall(published) == layers, "the source column should name the published code's layers, the code's"
    assert detector_settings("siren_inpaint", "full")["backbone"] == "source"
    assert detector_settings("siren_inpaint", "quick")["backbone"] == "shipped"
    strides = re.search(r"strides ([\d, and]+?) \(([\d, and]+) channels\)", row[2])
    assert strides, "the quick column should give the shipped network's strides and channels"
    assert [f"stride{s}" for s in named_list(strides.group(1))] == list(SHIPPED_LOSS_STAGES)
    network = EfficientNetLite0Features(SHIPPED_LOSS_STAGES)
    assert [int(c) for c in named_list(strides.group(2))] == list(network.out_channels)


def test_ch8_width_of_the_up_sampled_maps():
    """The widths, the decoder's input and the weight count of the row are the built networks'."""
    from adcourse.models.pyramidal import PIADE, PIADEDetector, PyramidalAE, PyramidalAEDetector, SEBackbone, backbone_plan

    row = departures_row("8", "Width of the up-sampled maps")
    settings = notebook_settings(chapter_notebook("8"))

    def network(cls, keys, name, profile, **changes):
        s = {**detector_settings(name, profile), **changes}
        return cls(1, settings[profile]["digit_size"], backbone=NETWORK_OF_PROFILE[profile],
                   **{key: s[key] for key in keys})

    quick = re.search(r"at (\d+) px the stacked AE's decoder reads (\d+) × (\d+) \+ (\d+) = (\d+) channels", row[2])
    assert quick, "the quick column should add up the stacked AE's decoder input"
    size, levels, width, backbone_channels, total = map(int, quick.groups())
    assert size == settings["quick"]["digit_size"]
    stacked = network(PyramidalAE, PyramidalAEDetector.NETWORK_KEYS, "pyramidal_ae", "quick")
    assert (levels, width, backbone_channels) == (len(stacked.pyramid.bins), stacked.up_channels,
                                                  stacked.backbone.out_channels)
    assert levels * width + backbone_channels == total == stacked.decoder.net[0].in_channels

    full = re.search(r"at (\d+) px beside ResNet-18's (\d+) channels", row[3])
    assert full, "the full column should name the ResNet-18 channels the maps are concatenated with"
    assert int(full.group(1)) == settings["full"]["digit_size"]
    assert detector_settings("pyramidal_ae", "full")["backbone"] == "source"
    resnet = SEBackbone("random", backbone_plan(int(full.group(1))), se=False)
    assert resnet.name.startswith("ResNet-18") and resnet.out_channels == int(full.group(2))

    thesis_stacked = int(re.search(r"(\d+) channels at the map's side", row[1]).group(1))
    thesis_piade = int(re.search(r"(\d+) channels \(§5\.1\.1\)", row[1]).group(1))
    words = {"four": 4, "eight": 8, "sixteen": 16, "thirty-two": 32}
    narrower = re.search(r"(\S+) and (\S+) times narrower", row[4])
    assert narrower, "the why column should say how much narrower the course's maps are"
    for profile in PROFILE_COLUMNS:
        assert thesis_stacked / detector_settings("pyramidal_ae", profile)["up_channels"] == words[narrower.group(1)]
        assert thesis_piade / detector_settings("piade", profile)["up_channels"] == words[narrower.group(2)]

    weights = re.search(r"at (\d+) channels on an (\d+)×\d+ grid PIADE's last linear layer alone would hold (\d+) million", row[4])
    assert weights
    channels, side, millions = map(int, weights.groups())
    piade = network(PIADE, PIADEDetector.NETWORK_KEYS, "piade", "quick", **settings["quick"]["piade"])
    last = [m for m in piade.upsample if isinstance(m, nn.Linear)][-1]
    assert channels == thesis_piade and side == piade.h
    assert int(last.in_features * channels * side * side / 1e6) == millions


def test_ch8_depth_of_the_backbone():
    """Every 'stride s at p px (an h×w map)' of the row is what backbone_plan chooses at p px and what
    the profile's network gives; the digits and the brick patches of each profile are among them."""
    from adcourse.models.pyramidal import RESNET_PLAN, SEBackbone, backbone_plan

    row = departures_row("8", "Depth of the backbone")
    settings = notebook_settings(chapter_notebook("8"))
    for profile, column in PROFILE_COLUMNS.items():
        quoted = {(int(s), int(p)): (int(h), int(w))
                  for s, p, h, w in re.findall(r"stride (\d+) at (\d+) px \(an? (\d+)×(\d+) map\)", row[column])}
        assert quoted, f"the {profile} column quotes no 'stride s at p px (an h×w map)'"
        for (stride, size), side in quoted.items():
            assert backbone_plan(size) == stride, f"{profile}: backbone_plan({size}) is {backbone_plan(size)}, not {stride}"
            with torch.no_grad():
                out = SEBackbone(NETWORK_OF_PROFILE[profile], stride, se=False)(torch.zeros(1, 1, size, size))
            assert tuple(out.shape[-2:]) == side, f"{profile}: stride {stride} at {size} px gives {tuple(out.shape[-2:])}"
        s = settings[profile]
        assert (backbone_plan(s["digit_size"]), s["digit_size"]) in quoted, f"{profile}: the digits' stride is not quoted"
        assert (s["texture"]["feature_stride"], s["texture"]["size"]) in quoted, f"{profile}: the patches' stride is not quoted"
    stages = re.findall(r"stride (\d+) at \d+ px \([^)]*\), ResNet-18 up to `(layer\d)` (without|with) the stem's max pooling",
                        row[3])
    assert stages, "the full column should say which ResNet-18 stages the digits read"
    for stride, layer, pooling in stages:
        assert RESNET_PLAN[int(stride)] == (layer, pooling == "with")


def test_ch10_patchcore_times_are_the_chapters():
    """The coreset row quotes the times chapter 10 printed in its stored run: the selection of its
    largest bank, and PatchCore's training time in the committed brick runs (section 5's cost table,
    the mean over the seeds that section lists)."""
    row = departures_row("10", "PatchCore's coreset")
    printed = stored_output("10")
    quoted = re.search(r"choosing chapter 10's bank of ([\d,]+) patches took (\d+) s in its stored run", row[4])
    selection = re.search(r"choosing the largest bank \(([\d,]+) patches\) took (\d+) s; each choice is one pass over "
                          r"all ([\d,]+) patches", printed)
    assert quoted and selection, "the row or chapter 10's stored output no longer says how long the selection took"
    assert quoted.groups() == selection.groups()[:2], \
        f"the row says {quoted.groups()}, chapter 10 printed {selection.groups()[:2]} (patches, seconds)"
    assert f"all {selection.group(3)} training patches" in row[4]
    fit = re.search(r"PatchCore's whole fit ([\d.]+) s in the committed brick runs \(the mean over seeds (\d+)–(\d+)\)", row[4])
    assert fit, "the row should quote PatchCore's training time in the committed brick runs"
    outputs = [output.get("text", "") for cell in nbformat.read(chapter_notebook("10"), as_version=4).cells
               if cell.cell_type == "code" for output in cell.outputs if output.output_type == "stream"]
    costs = [text for text in outputs if text.startswith("textures:brick:") and "train s" in text]
    assert len(costs) == 1, "chapter 10 should print one cost table of the committed brick runs"
    trained = re.search(r"^patchcore\s+([\d.]+)\s", costs[0], re.M)
    assert trained and trained.group(1) == fit.group(1), \
        f"the row says {fit.group(1)} s, chapter 10 printed {trained and trained.group(1)} s for PatchCore's training"
    seeds = re.search(r"'textures:brick': \[([\d, ]+)\]", printed)
    assert seeds and [int(s) for s in seeds.group(1).split(",")] == list(range(int(fit.group(2)), int(fit.group(3)) + 1))


def test_ch10_patchcore_values_per_patch():
    """'a + b = c values per patch' in each profile is what that profile's stages give."""
    from adcourse.backbones import staged_features

    row = departures_row("10", "PatchCore's features")
    for profile, column in PROFILE_COLUMNS.items():
        sums = re.search(r"(\d+) \+ ([\d,]+) = ([\d,]+) values per patch", row[column])
        assert sums, f"the {profile} column should give the values per patch"
        first, second, total = map(number, sums.groups())
        s = detector_settings("patchcore", profile)
        backbone = "random" if s["backbone"] == "source" else s["backbone"]    # the source's architecture
        network = staged_features(backbone, s["strides"], "wide_resnet50_2")
        assert [first, second] == list(network.out_channels) and total == sum(network.out_channels), \
            f"{profile}: the row says {first} + {second} = {total}, {network.name} gives {network.out_channels}"
