"""Every chapter runs its full profile, in miniature, before a reader's GPU does.

A full run is hours on a GPU, and its code (the real datasets' layouts, the sources' protocols, the
saving of results) runs nowhere else: a crash there would first be met by a reader twenty minutes
into a Colab session. Here each chapter is executed with ``PROFILE="full"`` and
``ADCOURSE_MINIATURE=1`` (:func:`adcourse.train.miniature`: the full profile's code and network
sizes, a few steps on a few images) on small copies of MVTec AD, BTAD, COIL-100 and torchvision's
MNIST family and CIFAR-10 files made by ``tiny_datasets.py`` under a temporary ``$ADCOURSE_DATA``.
Its figures mean nothing; that it runs, finds the data and writes its results is what is tested.
The chapters run two at a time, each in its own process (see ``PARALLEL_KERNELS``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

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
# Two chapters at a time, one thread each: a miniature is mostly small operations that a second
# thread hardly speeds up, so two kernels side by side finish sooner than one after the other with
# two threads each. On the course's 2-core machine, chapters 3, 8 and 10 in miniature, whole process,
# two runs each: 142.6 s median wall time against 195.3 s (ratio 0.73, 0.72-0.75); all eleven
# chapters: 385 s against 570-640 s.
PARALLEL_KERNELS = 2
# The aim is about 20 s a chapter (alone); the limit stops a miniature that quietly grew into a real
# run, with room for the kernel that runs beside it.
SECONDS_LIMIT = 240
TEST_NAME = "test_full_profile_runs_in_miniature"


@pytest.fixture(scope="module")
def miniature_runs(request, tmp_path_factory):
    """Run the full profile in miniature of every chapter this session selected, two at a time, in
    separate processes; return, for each, its seconds, exit status, error output and folders."""
    data = make_course_data(tmp_path_factory.mktemp("adcourse_data"))
    ipython_dir = tmp_path_factory.mktemp("ipython")
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-small-cifar10.py").write_text(CIFAR_MD5_STARTUP)
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", None) == TEST_NAME]

    def run(path: Path) -> dict:
        folder = tmp_path_factory.mktemp(path.stem)
        env = {**os.environ, "ADCOURSE_MINIATURE": "1", "ADCOURSE_DATA": str(data),
               "ADCOURSE_RESULTS": str(folder / "results"), "IPYTHONDIR": str(ipython_dir),
               "TORCH_HOME": str(folder / "torch")}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "adcourse.notebooks", "execute", "--profile", "full",
                               "--output-dir", str(folder), "--threads", "1", str(path)], env=env, capture_output=True, text=True)
        return {"seconds": time.perf_counter() - start, "returncode": done.returncode,
                "errors": done.stderr[-4000:], "notebook": folder / path.name, "results": folder / "results"}

    # The later chapters are the longer ones: started first, the short ones fill the gaps at the end.
    order = selected[::-1]
    with ThreadPoolExecutor(PARALLEL_KERNELS) as pool:
        return dict(zip((path.stem for path in order), pool.map(run, order)))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_full_profile_runs_in_miniature(path, miniature_runs):
    run = miniature_runs[path.stem]
    print(f"{path.name}: {run['seconds']:.0f} s (full profile in miniature, beside another chapter)")
    assert run["returncode"] == 0, f"{path.name} failed in its full profile (in miniature):\n{run['errors']}"

    cells = nbformat.read(run["notebook"], as_version=4).cells
    printed = [o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    profile_line = next((text for text in printed if "Profile:" in text), "no 'Profile:' line printed")
    assert "Profile: full" in profile_line and "in miniature" in profile_line, profile_line
    for name in WRITES.get(path.stem, []):
        written = json.loads((run["results"] / name).read_text())
        assert written.get("miniature"), f"{name} does not say that it comes from a miniature run"
    assert run["seconds"] < SECONDS_LIMIT, f"{path.name} took {run['seconds']:.0f} s in miniature (aim about 20 s)"
