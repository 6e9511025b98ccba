import numpy as np
import pytest
import torch
from torch import nn

from adcourse import train


def test_seed_everything_repeats():
    train.seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    train.seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_profiles(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.resolve_profile("auto") == "quick"
    assert "no CUDA" in train.describe_profile("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.resolve_profile("auto") == "full"
    assert train.resolve_profile("quick") == "quick"
    with pytest.raises(ValueError, match="profile"):
        train.resolve_profile("fast")


def test_pick_device():
    assert train.pick_device("cpu").type == "cpu"
    assert train.pick_device().type in {"cpu", "cuda", "mps"}


def _regression(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return [{"x": x[i:i + 16], "y": y[i:i + 16]} for i in range(0, n, 16)]


def test_fit_learns_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        history = train.fit(model, _regression(), lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(),
                            epochs=30, lr=0.05, progress=False)
        return model, history
    model, history = run()
    assert history[-1] < 0.01 * history[0]
    assert not model.training  # left in eval mode
    _, again = run()
    assert history == again


def test_fit_stops_on_nan():
    model = nn.Linear(3, 1)
    with pytest.raises(FloatingPointError, match="epoch 1, step 1.*learning rate"):
        train.fit(model, _regression(), lambda m, b: m(b["x"]).sum() * float("nan"), epochs=2, progress=False)


def test_checkpoint_roundtrip_and_atomicity(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    path = train.save_checkpoint(tmp_path / "ckpt" / "model.pt", model, epoch=5, loss=0.25)
    other = nn.Linear(3, 2)
    extra = train.load_checkpoint(path, other)
    assert extra == {"epoch": 5, "loss": 0.25}
    torch.testing.assert_close(other.weight, model.weight)

    # an interrupted save leaves the old checkpoint intact and no temporary file behind
    def broken_save(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, nn.Linear(3, 2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    train.load_checkpoint(path, other)
    torch.testing.assert_close(other.weight, model.weight)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the model first"):
        train.load_checkpoint(tmp_path / "missing.pt", nn.Linear(1, 1))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="(?s)bad.pt.*delete it"):
        train.load_checkpoint(bad, nn.Linear(1, 1))


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": nn.Linear(1, 1).state_dict(), "obj": object()}, path)
    with pytest.raises(RuntimeError, match="not a readable"):
        train.load_checkpoint(path, nn.Linear(1, 1))  # weights_only=True refuses arbitrary objects


def test_count_parameters_all_or_trainable_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))      # 16 + 10 parameters
    model[0].requires_grad_(False)                                # a frozen first layer
    assert train.count_parameters(model) == 26
    assert train.count_parameters(model, trainable_only=True) == 10


def test_miniature_is_the_identity_unless_asked(monkeypatch):
    from adcourse.train import miniature

    monkeypatch.delenv("ADCOURSE_MINIATURE", raising=False)
    settings = {"epochs": 100, "n_train": 2048, "classes": list(range(10)), "download": True}
    assert miniature(settings) is settings
    monkeypatch.setenv("ADCOURSE_MINIATURE", "0")
    assert miniature(settings) is settings


def test_miniature_cuts_training_and_data_but_not_networks(monkeypatch):
    from adcourse import detectors
    from adcourse.train import describe_profile, miniature

    monkeypatch.setenv("ADCOURSE_MINIATURE", "1")
    settings = {"gan_steps": 10000, "fit_steps": 3, "digit_epochs": 100, "n_train": 2048, "n_test": 8,
                "classes": list(range(10)), "mvtec": ["carpet", "grid", "wood"], "cifar_download": True,
                "width": 64, "texture": {"n_train": 1024, "epochs": 100, "size": 64}, "n_components": 150}
    assert miniature(settings) == {"gan_steps": 5, "fit_steps": 3, "digit_epochs": 1, "n_train": 16, "n_test": 8,
                                   "classes": [0, 1], "mvtec": ["carpet", "grid", "wood"], "cifar_download": False,
                                   "width": 64, "texture": {"n_train": 16, "epochs": 1, "size": 64},
                                   "n_components": 150}
    full = detectors.create("vtadl").settings_for("full")
    assert (full.epochs, full.refit_steps, full.dim, full.n_components) == (1, 5, 512, 150)
    assert detectors.create("vtadl").settings_for("quick") == detectors.create("vtadl").PROFILES["quick"]
    assert detectors.create("padim").settings_for("full").download is False
    assert miniature(settings, "quick") is settings  # the quick profile is small already: never cut
    assert "in miniature" in describe_profile("full") and "miniature" not in describe_profile("quick")
    with pytest.raises(TypeError, match="dict or a settings dataclass"):
        miniature([1, 2])


def test_miniature_results_say_so(monkeypatch, tmp_path):
    import json

    from adcourse import bench, results

    monkeypatch.setenv("ADCOURSE_RESULTS", str(tmp_path))
    monkeypatch.setenv("ADCOURSE_MINIATURE", "1")
    assert json.loads(results.save("x", {"auroc": 0.5}).read_text())["miniature"]
    train, test = bench.load_data("textures:brick", "full")
    assert (len(train), len(test)) == (16, 16)
    monkeypatch.delenv("ADCOURSE_MINIATURE")
    assert "miniature" not in json.loads(results.save("y", {"auroc": 0.5}).read_text())
