"""The resolution sweep of PaDiM and PatchCore (issue 29): its grid, its files, and the committed table."""
import json

import pytest

from adcourse import bench, resolution
from adcourse.results import load_stored


def test_the_grid_covers_scale_and_stages_for_both_methods_and_the_bank_for_patchcore():
    settings = resolution.grid()
    padim = [c for m, c in settings if m == "padim"]
    assert {(c["input_scale"], c["strides"]) for c in padim} == {(s, st) for s in (1, 2, 4)
                                                                   for st in ((4, 8, 16), (8, 16))}
    patchcore = [c for m, c in settings if m == "patchcore"]
    assert {(c["input_scale"], c["strides"], c.get("coreset_fraction", 0.01)) for c in patchcore} == {
        (1, (4, 8), 0.01), (2, (4, 8), 0.01), (1, (8, 16), 0.01), (2, (8, 16), 0.01),
        *((4, (8, 16), fraction) for fraction in resolution.CORESET_FRACTIONS)}
    labels = [resolution.label(m, c) for m, c in settings]
    assert len(set(labels)) == len(labels) and "patchcore_x4_s8-16_c0.01" in labels and "padim_x1_s8-16" in labels


def test_every_setting_of_the_grid_is_one_the_benchmark_accepts():
    for method, config in resolution.grid():
        bench.check_overrides({method: config}, [method])


def test_a_tiny_sweep_runs_the_benchmark_and_resumes(tmp_path, monkeypatch):
    calls = []

    def stand_in(name, train, test_batch, profile, seed, device=None, defects=None, overrides=None,
                 validation_images=None):
        calls.append((name, seed, overrides["input_scale"]))
        return {"image_auroc": 0.9 + 0.01 * seed, "image_aupr": 0.9, "best_tpr": 0.9, "best_tnr": 0.9,
                "pixel_auroc": 0.8, "aupro": 0.7, "parameters": 1, "train_seconds": 2.0, "cpu_ms_per_image": 3.0,
                "gpu_ms_per_image": None, "gpu_fp16_ms_per_image": None, "peak_memory_mb": 100.0, "onnx_mb": None,
                "backbone": "net", "supervised": False, "supervision": "normal images"}

    monkeypatch.setattr(bench, "run_method", stand_in)
    monkeypatch.setattr(bench, "TEXTURE_SIZES", {"quick": dict(train=8, test=8), "full": dict(train=8, test=8)})
    monkeypatch.setattr(resolution, "SCALES", (1, 2))
    rows = resolution.sweep(seeds=(0, 1), work=tmp_path, methods=("padim",), textures=("brick",), progress=False)
    assert len(rows) == 4 and len(calls) == 8
    assert rows[0]["image_auroc"] == pytest.approx(0.905) and rows[0]["image_auroc_std"] > 0
    assert rows[0]["train_seconds"] == 2.0 and rows[0]["train_seconds_std"] is None
    again = resolution.sweep(seeds=(0, 1), work=tmp_path, methods=("padim",), textures=("brick",), progress=False)
    assert again == rows and len(calls) == 8  # every file finished: nothing is run twice
    table = resolution.markdown(rows)
    assert "| padim | ×1 | 4+8+16 | — | brick | 0.905 ± 0.007 |" in table


def test_the_command_line_refuses_a_method_outside_the_sweep(capsys):
    with pytest.raises(SystemExit) as stopped:
        resolution.main(["--methods", "ae_l2", "--out", "x.json"])
    assert stopped.value.code == 2 and "the sweep covers padim, patchcore, not ae_l2" in capsys.readouterr().err


def test_only_runs_the_named_settings_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "run", lambda methods, data, profile, seed, out, overrides, progress, validation: ran.append(
        (methods[0], overrides[methods[0]], data, validation)) or {"results": {methods[0]: {"seeds": {}}}})
    resolution.sweep(seeds=(3,), work=tmp_path, textures=("grass",), only=["padim_x4_s8-16"], progress=False)
    # judged on the test set, training on the whole training region as the committed sweep did
    assert ran == [("padim", {"input_scale": 4, "strides": (8, 16)}, "textures:grass", False)]
    with pytest.raises(ValueError, match="no setting of the grid is called padim_x3"):
        resolution.sweep(seeds=(3,), work=tmp_path, only=["padim_x3"], progress=False)


def test_the_committed_sweep_and_its_confirmation_cover_the_grid_and_the_candidates():
    sweep = load_stored("resolution/sweep.json")
    assert sweep["seeds"] == [0, 1, 2] and sweep["command"].startswith("python -m adcourse.resolution")
    labels = {(r["method"], r["input_scale"], tuple(r["strides"]), r.get("coreset_fraction")) for r in sweep["rows"]}
    assert len(sweep["rows"]) == 3 * len(resolution.grid()) == 3 * len(labels)
    confirm = load_stored("resolution/confirm.json")
    assert confirm["seeds"] == [3, 4] and len(confirm["rows"]) == 12
    for row in sweep["rows"] + confirm["rows"]:
        assert all(row[key] is not None for key in ("image_auroc", "aupro", "train_seconds", "cpu_ms_per_image"))
