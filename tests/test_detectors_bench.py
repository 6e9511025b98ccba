import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from adcourse import bench, detectors
from adcourse.data import TextureDefects


def test_registry():
    assert {"ae_l2", "ae_ssim"} <= set(detectors.available())
    with pytest.raises(ValueError, match="unknown method 'ae_l3'.*ae_l2"):
        detectors.create("ae_l3")
    with pytest.raises(ValueError, match="already registered"):
        detectors.register("ae_l2")(lambda **kw: None)
    with pytest.raises(TypeError, match="decorates a Detector subclass whose Settings is a dataclass"):
        detectors.register("toy_factory")(lambda **kw: None)
    assert "toy_factory" not in detectors.available()


@pytest.mark.parametrize("name", ["ae_l2", "ae_ssim"])
def test_autoencoder_detector_contract(name):
    train = TextureDefects("brick", "train", n=16, patch_size=32)
    test = TextureDefects("brick", "test", n=8, patch_size=32)
    detector = detectors.create(name, epochs=2, device="cpu").fit(train)
    scores, maps = detector.predict(test.images)
    assert scores.shape == (8,) and maps.shape == (8, 32, 32)
    assert np.isfinite(scores).all() and (maps >= -1e-6).all()
    assert len(detector.history) == 2


def test_autoencoder_detector_rejects_odd_sizes():
    odd = TextureDefects("brick", "train", n=4, patch_size=33)
    with pytest.raises(ValueError, match="even image side"):
        detectors.create("ae_l2", epochs=1).fit(odd)


def test_every_registered_method_fits_and_predicts_on_tiny_data():
    train = TextureDefects("gravel", "train", n=16, patch_size=32)
    test = TextureDefects("gravel", "test", n=6, patch_size=32)
    for name in detectors.available():
        # the shortest training is enough to check the contract
        detector = detectors.create(name, device="cpu", **tiny_training(name))
        if detector.supervised:
            continue  # supervised methods are tested with labelled anomalies in their own files
        scores, maps = detector.fit(train).predict(test.images)
        assert scores.shape == (6,), name
        assert maps.shape == (6, 32, 32), name


# Methods that count training in steps rather than epochs, or whose quick networks are slow to score.
TINY_TRAINING = {"fanogan": dict(gan_steps=2, encoder_steps=2, n_patches=64),
                 "fcbigan": dict(steps=2, n_patches=64),
                 "patchcore": dict(coreset_fraction=0.1),
                 "siren_inpaint": dict(epochs=1, hidden_features=16, hidden_layers=1, code_dim=8, encoder_width=4)}


def tiny_training(name: str) -> dict:
    """The shortest training of ``name``, with only settings the method has: its entry in
    ``TINY_TRAINING``, else ``epochs=1`` where it counts epochs, else nothing (methods that only
    collect statistics of a frozen network, such as PaDiM)."""
    fields = {field.name for field in dataclasses.fields(detectors._lookup(name)[0].Settings)}
    tiny = TINY_TRAINING.get(name, {"epochs": 1} if "epochs" in fields else {})
    assert set(tiny) <= fields, f"{name} has no settings {sorted(set(tiny) - fields)}"
    return tiny


def test_tiny_training_passes_only_settings_each_method_has():
    assert tiny_training("padim") == {} and tiny_training("patchcore") == {"coreset_fraction": 0.1}
    assert tiny_training("ae_l2") == {"epochs": 1}
    for name in detectors.available():
        detectors.create(name, device="cpu", **tiny_training(name))  # no unknown setting


def test_load_data_specs():
    train, test = bench.load_data("digits:3", "quick")
    assert train[0]["image"].shape == (1, 32, 32) and set(test.labels) == {0, 1}
    with pytest.raises(ValueError, match="needs a part"):
        bench.load_data("textures")
    with pytest.raises(ValueError, match="unknown dataset kind 'imagenet'"):
        bench.load_data("imagenet:1")
    with pytest.raises(ValueError, match="digit 0–9"):
        bench.load_data("digits:x")


def test_evaluate_skips_pixel_metrics_without_masks():
    labels = np.array([0, 0, 1, 1])
    result = bench.evaluate(labels, np.array([0.1, 0.2, 0.8, 0.9]), np.zeros((4, 2, 2)), np.zeros((4, 2, 2)))
    assert result["image_auroc"] == 1.0 and result["pixel_auroc"] is None and result["aupro"] is None


def test_evaluate_per_defect_type_against_every_normal_image():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    defects = np.array(["good", "good", "good", "stain", "stain", "scratch", "perlin"])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25, 0.0])
    result = bench.evaluate(labels, scores, np.zeros((7, 2, 2)), None, defects)
    # stains above every normal image; the scratch above two normal images of three; the Perlin region below all
    assert result["per_defect"] == pytest.approx({"perlin": 0.0, "scratch": 2 / 3, "stain": 1.0})
    assert "per_defect" not in bench.evaluate(labels, scores, np.zeros((7, 2, 2)), None)
    with pytest.raises(ValueError, match="3 defect types for 7 test images"):
        bench.evaluate(labels, scores, np.zeros((7, 2, 2)), None, defects[:3])


def test_run_writes_json_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "TEXTURE_SIZES", {"quick": dict(train=16, test=8)})
    calls = []
    real_run_method = bench.run_method

    def counting_run_method(name, *args, **kwargs):
        calls.append(name)
        return real_run_method(name, *args, **kwargs)
    monkeypatch.setattr(bench, "run_method", counting_run_method)
    real_create = detectors.create
    monkeypatch.setattr(detectors, "create", lambda name, **kw: real_create(name, epochs=1, **kw))

    out = tmp_path / "results.json"
    report = bench.run(["ae_l2"], "textures:brick", "quick", out=out, progress=False)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert {"data", "profile", "seeds", "device", "date", "results", "wall_seconds"} <= set(saved)
    assert saved["seeds"] == [0]
    row = saved["results"]["ae_l2"]
    for key in ["image_auroc", "image_aupr", "best_tpr", "best_tnr", "pixel_auroc", "aupro", "per_defect", "parameters",
                "train_seconds", "inference_ms_per_image", "cpu_ms_per_image", "gpu_ms_per_image",
                "gpu_fp16_ms_per_image", "peak_memory_mb", "onnx_mb", "backbone", "supervised", "supervision"]:
        assert key in row
    assert set(row["per_defect"]) == {"stain", "scratch", "foreign_patch", "perlin"}
    assert row["backbone"] is None  # the autoencoder runs no pretrained network
    assert row["std"]["image_auroc"] is None  # one seed: no spread
    assert {key: value for key, value in row["seeds"]["0"].items() if key in bench.QUALITY} == \
        {key: row[key] for key in bench.QUALITY}
    assert 0 <= row["image_auroc"] <= 1 and row["parameters"] > 0
    assert row["cpu_ms_per_image"] == row["inference_ms_per_image"] > 0 and row["gpu_ms_per_image"] is None
    assert row["onnx_mb"] == pytest.approx(4 * row["parameters"] / 2 ** 20, rel=0.1)  # float32 weights + a graph
    assert row["supervision"] == "normal images" and row["peak_memory_mb"] is not None
    assert row["train_seconds"] < row["wall_seconds"] == saved["wall_seconds"]
    assert "| ae_l2 |" in out.with_suffix(".md").read_text()

    # a second run with one more method trains only the new one
    bench.run(["ae_l2", "ae_ssim"], "textures:brick", "quick", out=out, progress=False)
    assert calls == ["ae_l2", "ae_ssim"]
    assert set(json.loads(out.read_text())["results"]) == {"ae_l2", "ae_ssim"}
    # a different seed is refused: the file is kept as it is
    before = out.read_text()
    with pytest.raises(ValueError, match="seeds 0"):
        bench.run(["ae_l2"], "textures:brick", "quick", seed=1, out=out, progress=False)
    assert out.read_text() == before and calls == ["ae_l2", "ae_ssim"]


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--methods", "nope", "--data", "textures:brick"])
    assert exit_info.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--methods", "ae_l2", "--data", "textures:gravle"])
    assert "Did you mean 'gravel'" in capsys.readouterr().err


def install_toy_method(monkeypatch, name, cls):
    """Make ``cls`` available to the benchmark as ``name`` for one test."""
    real_create, real_available = detectors.create, detectors.available
    monkeypatch.setattr(detectors, "available", lambda: sorted([*real_available(), name]))
    monkeypatch.setattr(detectors, "create", lambda method, **kw: cls(**kw) if method == name else real_create(method, **kw))


def test_supervised_methods_get_labelled_anomalies(monkeypatch):
    seen = {}

    class Supervised(detectors.Detector):
        supervised = True

        def __init__(self, device=None, **kwargs):
            self.name, self.device = "toy_supervised", torch.device("cpu")

        def fit(self, train_dataset, profile="quick"):
            seen["labels"] = np.asarray([train_dataset[i]["label"] for i in range(len(train_dataset))])
            return self

        def predict(self, images):
            return images.flatten(1).mean(1).numpy(), images[:, 0].numpy()

    install_toy_method(monkeypatch, "toy_supervised", Supervised)
    report = bench.run(["toy_supervised"], "digits:3", "quick", progress=False)
    assert seen["labels"].mean() == pytest.approx(bench.SUPERVISED_ANOMALY_FRACTION, abs=0.02)
    assert report["results"]["toy_supervised"]["supervised"] is True
    skipped = bench.run(["toy_supervised"], "textures:brick", "quick", progress=False)
    assert "no labelled anomalies" in skipped["results"]["toy_supervised"]["skipped"]
    assert "skipped" in bench.markdown_table(skipped)


def test_peak_memory_sees_an_allocation_and_only_its_own():
    with bench.PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2 ** 20 // 4)  # 64 MB, touched
        time.sleep(0.05)  # held for ten sampling periods: the sampler is 5 ms apart, a method's memory lives longer
        del block
    assert 48 < peak.mb < 200
    with bench.PeakMemory(torch.device("cpu")) as quiet:
        pass
    assert quiet.mb < 16  # the earlier allocation is not counted again


def test_onnx_size_of_a_network_and_the_reason_when_there_is_none():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3))
    size, why = bench.onnx_size_mb(net, torch.rand(1, 1, 16, 16))
    assert why is None and size == pytest.approx(4 * sum(p.numel() for p in net.parameters()) / 2 ** 20, abs=0.01)
    size, why = bench.onnx_size_mb(torch.nn.ModuleDict({"a": net}), torch.rand(1, 1, 16, 16))
    assert size is None and why
    assert bench.onnx_size_mb(None, torch.rand(1)) == (None, "no network to export")


def test_latency_and_moving_a_detector():
    train = TextureDefects("brick", "train", n=8, patch_size=32)
    detector = detectors.create("ae_l2", epochs=1, device="cpu").fit(train)
    assert bench.latency_ms(detector, train.images[:4], repeats=1) > 0
    assert detector.to("cpu").device == torch.device("cpu")
    assert next(detector.network.parameters()).device.type == "cpu"
    assert detectors.create("padim").supervision.endswith("no training (pretrained features)")


@pytest.mark.parametrize("name", ["fanogan", "fcbigan"])
def test_methods_with_several_networks_export_them_as_one_graph(name):
    train = TextureDefects("gravel", "train", n=16, patch_size=32)
    detector = detectors.create(name, device="cpu", **TINY_TRAINING[name]).fit(train)
    graph, example = detector.export_graph(train.images[:1])
    assert isinstance(graph, detectors.ScoringGraph)
    size, why = bench.onnx_size_mb(graph, example)
    parameters = sum(p.numel() for p in graph.parameters())
    assert why is None and size == pytest.approx(4 * parameters / 2 ** 20, rel=0.2)
