"""Every chapter runs its full profile, in miniature, before a reader's GPU does.

A full run is hours on a GPU, and its code (the real datasets' layouts, the sources' protocols, the
saving of results) runs nowhere else: a crash there would first be met by a reader twenty minutes
into a Colab session. Here each chapter is executed with ``PROFILE="full"`` and
``ADCOURSE_MINIATURE=1`` (:func:`adcourse.train.miniature`: the full profile's code and network
sizes, a few steps on a few images) on small copies of MVTec AD, BTAD, COIL-100 and torchvision's
MNIST family and CIFAR-10 files made by ``tiny_datasets.py`` under a temporary ``$ADCOURSE_DATA``.
Its figures mean nothing; that it runs, finds the data and writes its results is what is tested.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from adcourse.notebooks import execute
from tiny_datasets import CIFAR_MD5_STARTUP, make_course_data

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]*.ipynb"))
# What each chapter's full profile writes through adcourse.results.save ($ADCOURSE_RESULTS).
WRITES = {
    "03_synthetic_corruption": ["03_synthetic_corruption.json"],
    "04_implicit_siren": ["04_implicit_siren.json"],
    "05a_gans_wgan": ["05a_gans_wgan.json"],
    "05b_fanogan_fcbigan": ["05b_fanogan_fcbigan.json"],
    "06_vae_gan_attention": ["06_vae_gan_attention.json"],
    "07_capsules": ["07_capsules.json"],
    "08_pyramidal": ["08_pyramidal.json"],
    "09_vit_gmm": ["09_vit_gmm.json"],
    "10_comparison": ["bench_full_textures_brick.json", "bench_full_textures_grass.json"],
}
# The aim is about 20 s a chapter; the limit stops a miniature that quietly grew into a real run.
SECONDS_LIMIT = 120


@pytest.fixture(scope="module")
def course_data(tmp_path_factory):
    root = make_course_data(tmp_path_factory.mktemp("adcourse_data"))
    startup = tmp_path_factory.mktemp("ipython") / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-small-cifar10.py").write_text(CIFAR_MD5_STARTUP)
    return root, startup.parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_full_profile_runs_in_miniature(path, course_data, tmp_path, monkeypatch):
    data, ipython_dir = course_data
    results = tmp_path / "results"
    for name, value in {"ADCOURSE_MINIATURE": "1", "ADCOURSE_DATA": str(data), "ADCOURSE_RESULTS": str(results),
                        "IPYTHONDIR": str(ipython_dir), "TORCH_HOME": str(tmp_path / "torch")}.items():
        monkeypatch.setenv(name, value)  # the kernel papermill starts inherits them
    start = time.perf_counter()
    execute(path, tmp_path / path.name, profile="full", cwd=path.parent)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.0f} s (full profile in miniature)")

    cells = nbformat.read(tmp_path / path.name, as_version=4).cells
    printed = [o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    profile_line = next((text for text in printed if "Profile:" in text), "no 'Profile:' line printed")
    assert "Profile: full" in profile_line and "in miniature" in profile_line, profile_line
    for name in WRITES.get(path.stem, []):
        written = json.loads((results / name).read_text())
        assert written.get("miniature"), f"{name} does not say that it comes from a miniature run"
    assert seconds < SECONDS_LIMIT, f"{path.name} took {seconds:.0f} s in miniature (aim about 20 s)"
