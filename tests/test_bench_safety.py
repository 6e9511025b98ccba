"""The benchmark's bookkeeping: seeds, merging into --out, refusing other files, resuming, clear errors.

The methods' training is replaced by a stand-in that returns a row at once (figures that depend on
the method and the seed), so that these tests check the file handling only; the end-to-end runs with
real training are in test_folder_data.py and test_detectors_bench.py.
"""
import json

import numpy as np
import pytest
from PIL import Image

from adcourse import bench


def fake_figure(name: str, seed: int) -> float:
    """A quality figure that differs by method and seed, in [0.5, 1]."""
    return 0.5 + 0.1 * (len(name) % 3) + 0.05 * seed


@pytest.fixture
def calls(monkeypatch):
    """Replace training and scoring by a stand-in; the list records every (method, seed) run."""
    record = []

    def fake_run_method(name, train, test_batch, profile, seed, device=None, defects=None, overrides=None,
                        validation_images=None):
        record.append((name, seed))
        figure = fake_figure(name, seed)
        row = {key: figure for key in bench.QUALITY[:7]}  # the image figures
        row.update(pixel_auroc=None, aupro=None, parameters=1000, train_seconds=1.0 + seed, inference_ms_per_image=2.0,
                   cpu_ms_per_image=2.0, gpu_ms_per_image=None, gpu_fp16_ms_per_image=None, peak_memory_mb=10.0,
                   onnx_mb=0.1, backbone=None, supervised=False, supervision="normal images", device="cpu (test)",
                   first_train_pixel=float(train[0]["image"].flatten()[0]))
        if defects is not None:
            row["per_defect"] = {kind: figure for kind in sorted(set(defects[test_batch[1] == 1]))}
        return row

    monkeypatch.setattr(bench, "run_method", fake_run_method)
    monkeypatch.setattr(bench, "TEXTURE_SIZES", {"quick": dict(train=8, test=8), "full": dict(train=8, test=8)})
    return record


def test_seeds_give_mean_and_standard_deviation_of_every_quality_figure(tmp_path, calls):
    out = tmp_path / "r.json"
    report = bench.run(["ae_l2"], "textures:brick", "quick", seed=[2, 0, 1], out=out, progress=False)
    assert calls == [("ae_l2", 0), ("ae_l2", 1), ("ae_l2", 2)]
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report)) and saved["seeds"] == [0, 1, 2]
    entry = saved["results"]["ae_l2"]
    figures = [fake_figure("ae_l2", s) for s in range(3)]
    for key in bench.QUALITY[:7]:
        assert entry[key] == pytest.approx(np.mean(figures))
        assert entry["std"][key] == pytest.approx(np.std(figures, ddof=1))
    assert entry["pixel_auroc"] is None and entry["std"]["pixel_auroc"] is None  # not measured: no figure, no spread
    assert set(entry["per_defect"]) == {"stain", "scratch", "foreign_patch", "perlin"}
    assert entry["std"]["per_defect"]["stain"] == pytest.approx(np.std(figures, ddof=1))
    assert entry["train_seconds"] == pytest.approx(2.0)  # cost figures: the mean as well
    assert list(entry["seeds"]) == ["0", "1", "2"] and entry["seeds"]["1"]["image_auroc"] == figures[1]
    assert entry["backbone"] is None and "backbone" in out.with_suffix(".md").read_text()
    # each seed draws its own data
    assert len({row["first_train_pixel"] for row in entry["seeds"].values()}) == 3
    table = out.with_suffix(".md").read_text()
    assert f"{np.mean(figures):.3f} ± {np.std(figures, ddof=1):.3f}" in table
    assert "Image AUROC per defect type" in table
    assert "| method | foreign_patch | perlin | scratch | stain |" in table


def test_single_seed_table_has_no_spread_and_digits_have_no_defect_types(tmp_path, calls):
    report = bench.run(["ae_l2"], "digits:3", "quick", seed=4, progress=False)
    entry = report["results"]["ae_l2"]
    assert report["seeds"] == [4] and entry["std"]["image_auroc"] is None and "per_defect" not in entry
    table = bench.markdown_table(report)
    assert "±" not in table and "per defect type" not in table


def test_out_merges_methods_run_one_after_the_other(tmp_path, calls):
    out = tmp_path / "r.json"
    bench.run(["ae_l2"], "textures:brick", "quick", seed=[0, 1], out=out, progress=False)
    first = json.loads(out.read_text())["results"]["ae_l2"]
    bench.run(["ae_ssim"], "textures:brick", "quick", seed=[0, 1], out=out, progress=False)
    saved = json.loads(out.read_text())
    assert list(saved["results"]) == ["ae_l2", "ae_ssim"] and saved["results"]["ae_l2"] == first
    assert calls == [("ae_l2", 0), ("ae_l2", 1), ("ae_ssim", 0), ("ae_ssim", 1)]
    bench.run(["ae_ssim", "ae_l2"], "textures:brick", "quick", seed=[0, 1], out=out, progress=False)
    assert len(calls) == 4  # everything was done: nothing runs again
    assert "| ae_l2 |" in out.with_suffix(".md").read_text() and "| ae_ssim |" in out.with_suffix(".md").read_text()


def test_more_seeds_extend_a_file_keeping_its_rows(tmp_path, calls):
    out = tmp_path / "r.json"
    bench.run(["ae_l2", "ae_ssim"], "textures:brick", "quick", seed=0, out=out, progress=False)
    first = json.loads(out.read_text())["results"]["ae_l2"]["seeds"]["0"]
    report = bench.run(["ae_l2", "ae_ssim"], "textures:brick", "quick", seed=[0, 1, 2], out=out, progress=False)
    assert calls == [("ae_l2", 0), ("ae_ssim", 0), ("ae_l2", 1), ("ae_l2", 2), ("ae_ssim", 1), ("ae_ssim", 2)]
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [0, 1, 2] and saved == json.loads(json.dumps(report))
    entry = saved["results"]["ae_l2"]
    assert entry["seeds"]["0"] == first and entry["std"]["image_auroc"] is not None
    assert entry["image_auroc"] == pytest.approx(np.mean([fake_figure("ae_l2", s) for s in range(3)]))


def test_data_seed_draws_the_data_once_for_every_training_seed(tmp_path, calls):
    paired = bench.run(["ae_l2"], "textures:brick", "quick", seed=[0, 1, 2], progress=False)
    one_draw = bench.run(["ae_l2"], "textures:brick", "quick", seed=[0, 1, 2], data_seed=5, out=tmp_path / "r.json",
                         progress=False)
    first_pixel = lambda report: {row["first_train_pixel"] for row in report["results"]["ae_l2"]["seeds"].values()}
    assert len(first_pixel(paired)) == 3 and paired["data_seed"] is None  # each seed its own data
    assert len(first_pixel(one_draw)) == 1 and one_draw["data_seed"] == 5
    assert first_pixel(one_draw) != first_pixel(paired)
    assert json.loads((tmp_path / "r.json").read_text())["data_seed"] == 5
    with pytest.raises(ValueError, match="data seed 5"):  # a file of one draw is not extended by another run
        bench.run(["ae_ssim"], "textures:brick", "quick", seed=[0, 1, 2], out=tmp_path / "r.json", progress=False)


@pytest.mark.parametrize("change, held", [
    (dict(data="textures:grass"), "--data textures:brick"),
    (dict(profile="full"), "--profile quick"),
    (dict(seed=0), "seeds 0,1"),  # would lose seed 1
    (dict(seed=[0, 2]), "seeds 0,1"),
    (dict(data_seed=0), "seeds 0,1"),  # one data draw for every seed: another experiment
])
def test_out_of_another_run_is_refused_and_kept(tmp_path, calls, change, held):
    out = tmp_path / "r.json"
    bench.run(["ae_l2"], "textures:brick", "quick", seed=[0, 1], out=out, progress=False)
    before, table_before = out.read_bytes(), out.with_suffix(".md").read_bytes()
    arguments = {"data": "textures:brick", "profile": "quick", "seed": [0, 1], **change}
    with pytest.raises(ValueError) as error:
        bench.run(["ae_ssim"], out=out, progress=False, **arguments)
    message = str(error.value)
    assert str(out) in message and held in message and "1 methods" in message and "another --out" in message
    assert out.read_bytes() == before and out.with_suffix(".md").read_bytes() == table_before
    assert calls == [("ae_l2", 0), ("ae_l2", 1)]


@pytest.mark.parametrize("content, reason", [
    ('{"data": "textures:brick", "results": {', "not valid JSON"),
    ("[1, 2]", "not a results file"),
    ('{"data": "textures:brick", "results": {"ae_l2": 3}}', "not a results file"),
    ('{"data": "textures:brick", "profile": "quick", "seed": 0, "results": {}}', "earlier adcourse.bench"),
    (b"\xff\xfe\x00 not text", "cannot be read"),
])
def test_a_file_that_is_not_a_results_file_is_refused_naming_it(tmp_path, calls, content, reason):
    out = tmp_path / "r.json"
    out.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=reason) as error:
        bench.run(["ae_l2"], "textures:brick", "quick", out=out, progress=False)
    assert str(out) in str(error.value)
    assert out.read_bytes() == (content if isinstance(content, bytes) else content.encode()) and calls == []
    assert not out.with_suffix(".md").exists()


def test_an_interrupted_run_keeps_every_finished_method_and_seed(tmp_path, monkeypatch, calls):
    out = tmp_path / "r.json"
    fake = bench.run_method

    def interrupted(name, *args, **kwargs):
        if (name, args[3]) == ("ae_ssim", 1):
            raise KeyboardInterrupt
        return fake(name, *args, **kwargs)

    monkeypatch.setattr(bench, "run_method", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.run(["ae_l2", "ae_ssim"], "textures:brick", "quick", seed=[0, 1, 2], out=out, progress=False)
    saved = json.loads(out.read_text())
    assert set(saved["results"]["ae_l2"]["seeds"]) == {"0", "1", "2"} and "image_auroc" in saved["results"]["ae_l2"]
    assert saved["results"]["ae_ssim"] == {"seeds": {"0": saved["results"]["ae_ssim"]["seeds"]["0"]}}
    assert "| ae_ssim | unfinished: 1 of 3 seeds done" in out.with_suffix(".md").read_text()

    monkeypatch.setattr(bench, "run_method", fake)
    bench.run(["ae_l2", "ae_ssim"], "textures:brick", "quick", seed=[0, 1, 2], out=out, progress=False)
    assert calls == [("ae_l2", 0), ("ae_l2", 1), ("ae_l2", 2), ("ae_ssim", 0), ("ae_ssim", 1), ("ae_ssim", 2)]
    resumed = json.loads(out.read_text())["results"]
    assert resumed["ae_l2"] == saved["results"]["ae_l2"]
    assert resumed["ae_ssim"]["seeds"]["0"] == saved["results"]["ae_ssim"]["seeds"]["0"]
    assert resumed["ae_ssim"]["image_auroc"] == pytest.approx(np.mean([fake_figure("ae_ssim", s) for s in range(3)]))


def test_the_command_line_says_where_an_interrupted_run_is_kept(tmp_path, monkeypatch, capsys, calls):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_method", interrupted)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--methods", "ae_l2", "--data", "textures:brick", "--profile", "quick", "--out", str(out)])
    assert exit_info.value.code == 130
    assert f"every finished (method, seed) is in {out}: run the same command to resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--methods", ","], "no method given"),
    (["--methods", " "], "no method given"),
    (["--methods", "ae_l3,nope"], "unknown methods 'ae_l3' (did you mean 'ae_l2'?), 'nope'"),
    (["--seeds", "0,x"], "--seeds: '0,x': give whole numbers"),
    (["--seeds", "1,1"], "each once"),
    (["--seeds", ","], "--seeds"),
    (["--seed", "-1"], "seeds must be whole numbers of at least 0"),
    (["--seed", "0", "--seeds", "1,2"], "not allowed with argument"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--out", "{tmp}"], "is a folder; give a file name"),
    (["--out", "{tmp}/r.md"], "ends in .md"),
    (["--data", "folder:{tmp}/nowhere"], "Folder not found"),
    (["--data", "textures"], "needs a part after a colon"),
    (["--data", "mvtec:botle"], "Did you mean 'bottle'"),
    (["--profile", "fast"], "invalid choice"),
])
def test_command_line_mistakes_exit_with_code_2_and_a_clear_message(tmp_path, capsys, calls, argv, message):
    argv = [part.format(tmp=tmp_path) for part in argv]
    defaults = {"--methods": "ae_l2", "--data": "textures:brick"}
    argv = [*argv, *(item for key, value in defaults.items() if key not in argv for item in (key, value))]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert calls == [] and list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_run_checks_every_argument_before_training(tmp_path, calls):
    with pytest.raises(ValueError, match="overrides name 'ae_ssim', which this run does not include"):
        bench.run(["ae_l2"], "textures:brick", overrides={"ae_ssim": {"epochs": 1}}, progress=False)
    with pytest.raises(ValueError, match=r"overrides for ae_l2: .*'epoch'"):
        bench.run(["ae_l2"], "textures:brick", overrides={"ae_l2": {"epoch": 1}}, progress=False)
    with pytest.raises(ValueError, match="overrides must map method names to settings"):
        bench.run(["ae_l2"], "textures:brick", overrides={"ae_l2": 1}, progress=False)
    with pytest.raises(ValueError, match="name a seed twice"):
        bench.run(["ae_l2"], "textures:brick", seed=[1, 1], progress=False)
    with pytest.raises(ValueError, match="seeds must be whole numbers"):
        bench.run(["ae_l2"], "textures:brick", seed=[], progress=False)
    with pytest.raises(ValueError, match="seeds must be whole numbers"):
        bench.run(["ae_l2"], "textures:brick", seed="0", progress=False)
    with pytest.raises(ValueError, match="methods must be a list of method names"):
        bench.run([3], "textures:brick", progress=False)
    assert calls == []
    report = bench.run("ae_l2", "textures:brick", progress=False)  # one name as a string is one method
    assert list(report["results"]) == ["ae_l2"]


def test_a_test_set_of_one_class_is_refused_before_training(tmp_path, calls):
    root = tmp_path / "mine"
    for split in ("train", "test"):
        (root / split / "good").mkdir(parents=True)
        for k in range(3):
            Image.new("L", (8, 8), 100).save(root / split / "good" / f"{k}.png")
    with pytest.raises(ValueError, match=r"holds only normal images \(3\).*test/<defect>/"):
        bench.run(["ae_l2"], f"folder:{root}", "quick", progress=False)
    assert calls == []



def test_set_changes_one_setting_and_is_recorded(tmp_path, calls, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--methods", "ae_ssim", "--data", "textures:brick", "--profile", "quick", "--seeds", "0,1",
                       "--set", "ae_ssim.epochs=3", "--set", "ae_ssim.lr=0.01", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["overrides"] == {"ae_ssim": {"epochs": 3, "lr": 0.01}}
    with pytest.raises(ValueError, match="settings changed"):  # the same file with the default settings: refused
        bench.run(["ae_ssim"], "textures:brick", "quick", seed=[0, 1], out=out, progress=False)
    with pytest.raises(SystemExit):
        bench.main(["--methods", "ae_ssim", "--data", "textures:brick", "--set", "epochs=3"])
    assert "METHOD.SETTING=VALUE" in capsys.readouterr().err
