"""Every comparison a chapter's prose draws from trained figures holds over the committed training seeds.

Each row: the chapter, the two committed figures (keys of ``book/results/spread/<chapter>.json``), the
verdict of :func:`adcourse.spread.paired_difference` that the prose states, and the sentence of the
prose that states it (whitespace collapsed). A re-collected chapter whose verdict changed fails
here until its prose is changed with it.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import adcourse.results
from adcourse import spread

REPO = Path(__file__).resolve().parents[1]
HIGHER, LOWER, SAME = "higher", "lower", "within the spread"

CLAIMS = [
    # chapter 5b: f-AnoGAN against FCBiGAN
    ("05b_fanogan_fcbigan", "fcbigan (max) image AUROC", "fanogan image AUROC", SAME,
     "In image AUROC the two differ by −0.027 ± 0.069, within the spread of the seeds"),
    ("05b_fanogan_fcbigan", "fcbigan (max) pixel AUROC", "fanogan pixel AUROC", SAME,
     "In pixel AUROC they differ by −0.058 ± 0.071, also within the spread"),
    ("05b_fanogan_fcbigan", "fcbigan (max) AUPRO", "fanogan AUPRO", SAME,
     "In AUPRO they differ by −0.020 ± 0.111, within the spread again"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) pixel AUROC", "fanogan pixel AUROC", SAME,
     "FCBiGAN's $L_R$ alone and f-AnoGAN differ in pixel AUROC by +0.015 ± 0.060, within the spread too"),
    ("05b_fanogan_fcbigan", "FCBiGAN mean |x - G(E(x))|", "BiGAN mean |x - x_hat|", LOWER,
     "Its mean error there is lower than BiGAN's, beyond the spread of the seeds"),
    ("05b_fanogan_fcbigan", "mean D(x, E(x)), defect pixels", "mean D(x, E(x)), normal test pixels", HIGHER,
     "its mean output is *higher*, closer to 1, on all five training seeds"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) pixel AUROC", "fcbigan (max) pixel AUROC", HIGHER,
     "Its reconstruction residual alone was higher in pixel AUROC and AUPRO, beyond the spread and on every seed"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) AUPRO", "fcbigan (max) AUPRO", HIGHER,
     "Its reconstruction residual alone was higher in pixel AUROC and AUPRO, beyond the spread and on every seed"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) image AUROC", "fcbigan (max) image AUROC", SAME,
     "in image AUROC the two are within the spread of the seeds"),
]


def prose(chapter: str) -> str:
    notebook = nbformat.read(REPO / "notebooks" / f"{chapter}.ipynb", as_version=4)
    return " ".join(re.sub(r"\s+", " ", cell.source) for cell in notebook.cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("chapter, first, second, verdict, sentence", CLAIMS,
                         ids=[f"{c}: {a} vs {b}" for c, a, b, _, _ in CLAIMS])
def test_the_prose_states_what_the_seeds_show(chapter, first, second, verdict, sentence):
    figures = adcourse.results.load_stored(f"spread/{chapter}.json")["figures"]
    assert spread.paired_difference(figures[first], figures[second])["verdict"] == verdict
    assert re.sub(r"\s+", " ", sentence) in prose(chapter), f"{chapter}: the prose no longer says {sentence!r}"


def test_every_comparison_a_chapter_prints_is_held_here():
    """The pairs of every compare cell of the chapters are rows of CLAIMS."""
    held = {(c, a, b) for c, a, b, _, _ in CLAIMS}
    printed = set()
    for path in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "committed.compare" in cell.source:
                printed |= {(path.stem, a, b) for a, b in re.findall(r'\("([^"]+)", "([^"]+)"\)', cell.source)}
    assert printed and printed <= held, f"compared in a chapter but not held in CLAIMS: {sorted(printed - held)}"
