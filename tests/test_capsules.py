"""Capsule networks (chapter 7): squash, routing, shapes, losses, the anomaly score, the detector."""
import numpy as np
import pytest
import torch
from PIL import Image

from adcourse import detectors
from adcourse.data import InMemoryAnomalyDataset, OneClassDigits, TextureDefects
from adcourse.models.capsules import (CapsNet, CapsNetDetector, DigitCaps, PrimaryCaps, anomaly_score,
                                      balanced_accuracy, best_threshold_accuracy, capsnet_loss, dynamic_routing,
                                      imbalanced_torchvision, margin_loss, squash, standard_decision)

TINY = dict(epochs=1, min_steps=3, batch_size=16, conv_channels=4, primary_types=2, decoder_hidden=(8, 16))


# -- squash ----------------------------------------------------------------------------------
def test_squash_keeps_direction_and_maps_length_below_one():
    torch.manual_seed(0)
    s = torch.randn(64, 8) * torch.logspace(-2, 2, 64)[:, None]   # lengths from ~0.03 to ~300
    v = squash(s)
    norms_s, norms_v = s.norm(dim=1), v.norm(dim=1)
    assert torch.all(norms_v < 1) and torch.all(norms_v > 0)
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(s, v, dim=1), torch.ones(64))
    torch.testing.assert_close(norms_v, norms_s ** 2 / (1 + norms_s ** 2))         # the formula
    order = torch.argsort(norms_s)
    assert torch.all(torch.diff(norms_v[order]) >= -1e-7)


def test_squash_short_vectors_vanish_long_saturate_and_zero_is_finite():
    short, long = torch.tensor([[1e-2, 0.0]]), torch.tensor([[1e3, 0.0]])
    assert squash(short).norm() < 2e-4
    assert squash(long).norm() > 0.999
    for dtype in (torch.float32, torch.float16):
        zero = squash(torch.zeros(3, 8, dtype=dtype))
        assert zero.dtype == dtype and torch.all(torch.isfinite(zero)) and torch.all(zero == 0)


def test_squash_along_another_dimension():
    s = torch.randn(2, 8, 5)
    torch.testing.assert_close(squash(s, dim=1), squash(s.transpose(1, 2)).transpose(1, 2))


# -- routing ---------------------------------------------------------------------------------
def test_routing_couplings_sum_to_one_over_parents():
    torch.manual_seed(0)
    u_hat = torch.randn(4, 30, 3, 16)
    v, couplings = dynamic_routing(u_hat, iterations=4, return_couplings=True)
    assert v.shape == (4, 3, 16) and len(couplings) == 4
    for c in couplings:
        assert c.shape == (4, 30, 3)
        torch.testing.assert_close(c.sum(dim=2), torch.ones(4, 30))
    torch.testing.assert_close(couplings[0], torch.full((4, 30, 3), 1 / 3))   # b = 0 at the start


def test_routing_agreement_raises_coupling():
    """Inputs 0–9 all vote the same vector for parent 0 and random ones for parent 1: they couple to 0."""
    torch.manual_seed(0)
    u_hat = torch.randn(1, 10, 2, 8) * 0.5
    u_hat[:, :, 0] = torch.tensor([1.0] * 8) * 0.5 + 0.05 * torch.randn(1, 10, 8)
    _, couplings = dynamic_routing(u_hat, iterations=3, return_couplings=True)
    to_parent0 = [c[0, :, 0].mean().item() for c in couplings]
    assert to_parent0[0] == pytest.approx(0.5)
    assert to_parent0[0] < to_parent0[1] < to_parent0[2]
    assert to_parent0[2] > 0.7


def test_routing_keeps_double_and_lifts_half_precision():
    u_hat = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    assert dynamic_routing(u_hat).dtype == torch.float64
    v = dynamic_routing(u_hat.half())
    assert v.dtype == torch.float32 and torch.all(torch.isfinite(v))


def test_routing_one_iteration_is_the_squashed_uniform_vote():
    u_hat = torch.randn(2, 5, 3, 4)   # c_ij = 1/3 for every input: s_j = Σ_i û_{j|i} / 3
    torch.testing.assert_close(dynamic_routing(u_hat, 1), squash(u_hat.sum(dim=1) / 3))


def test_routing_rejects_bad_input():
    with pytest.raises(ValueError, match="batch, n_in, n_out, dim"):
        dynamic_routing(torch.randn(5, 3, 4))
    with pytest.raises(ValueError, match="at least 1"):
        dynamic_routing(torch.randn(1, 5, 3, 4), iterations=0)


# -- layers and network ----------------------------------------------------------------------
def test_primary_and_digit_caps_shapes():
    x = torch.randn(3, 16, 20, 20)
    u = PrimaryCaps(16, n_types=4, dim=8)(x)
    assert u.shape == (3, 4 * 6 * 6, 8) and torch.all(u.norm(dim=-1) < 1)
    digits = DigitCaps(144, 8, n_out=2, out_dim=16)
    assert digits.predictions(u).shape == (3, 144, 2, 16)
    v, couplings = digits(u, return_couplings=True)
    assert v.shape == (3, 2, 16) and couplings[-1].shape == (3, 144, 2)
    with pytest.raises(ValueError, match="144 input capsules"):
        digits(u[:, :100])


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3)])
def test_capsnet_shapes(size, channels):
    torch.manual_seed(0)
    net = CapsNet(channels, size, conv_channels=8, primary_types=2, decoder_hidden=(16, 32))
    grid = (size - 17) // 2 + 1
    assert net.n_primary == 2 * grid * grid
    out = net(torch.rand(2, channels, size, size))
    assert out["capsules"].shape == (2, 2, 16) and out["lengths"].shape == (2, 2)
    assert out["reconstruction"].shape == (2, channels, size, size)
    assert torch.all((out["lengths"] >= 0) & (out["lengths"] < 1))
    assert torch.all((out["reconstruction"] >= 0) & (out["reconstruction"] <= 1))


def test_full_size_capsnet_has_1152_primary_capsules():
    assert CapsNet().n_primary == 1152
    with pytest.raises(ValueError, match="at least 25"):
        CapsNet(image_size=16)


# -- losses and scores -----------------------------------------------------------------------
def test_margin_loss_by_hand():
    lengths = torch.tensor([[0.95, 0.05], [0.5, 0.6], [0.2, 0.3]])
    labels = torch.tensor([0, 0, 1])
    # image 0: nothing; image 1: (0.9-0.5)² + 0.5·(0.6-0.1)²; image 2: (0.9-0.3)² + 0.5·(0.2-0.1)²
    expected = (0 + (0.16 + 0.5 * 0.25) + (0.36 + 0.5 * 0.01)) / 3
    torch.testing.assert_close(margin_loss(lengths, labels), torch.tensor(expected))


def test_capsnet_loss_reconstructs_normal_images_only():
    lengths = torch.tensor([[0.95, 0.05], [0.05, 0.95]])
    images = torch.zeros(2, 1, 4, 4)
    recon = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])   # the anomaly is reconstructed badly
    out = {"lengths": lengths, "reconstruction": recon}
    torch.testing.assert_close(capsnet_loss(out, images, torch.tensor([0, 1])), torch.tensor(0.0))
    torch.testing.assert_close(capsnet_loss(out, images, torch.tensor([0, 0]), recon_weight=1.0),
                               margin_loss(lengths, torch.tensor([0, 0])) + 16 / 2)


def test_anomaly_score_and_standard_decision():
    lengths = torch.tensor([[0.95, 0.02], [0.8, 0.6], [0.1, 0.9]])
    r_l = torch.tensor([0.01, 0.05, 0.2])
    torch.testing.assert_close(anomaly_score(lengths, r_l), torch.tensor([-0.92, -0.15, 1.0]))
    assert standard_decision(lengths).tolist() == [False, False, True]
    # the source's example: ‖z_n‖ = 0.8, ‖z_a‖ = 0.6 is normal for CapsNet but scores far above a normal image
    score = anomaly_score(lengths, r_l)
    assert score[1] > score[0] + 0.5


def test_accuracies():
    labels = np.array([0, 0, 0, 1])
    assert balanced_accuracy(labels, [0, 0, 0, 0]) == 0.5
    assert balanced_accuracy(labels, [0, 0, 1, 1]) == pytest.approx(0.5 * (2 / 3 + 1))
    assert best_threshold_accuracy(labels, [0.1, 0.2, 0.3, 0.9]) == 1.0
    assert best_threshold_accuracy(labels, [0.2, 0.95, 0.3, 0.9]) == pytest.approx(0.5 * (2 / 3 + 1))
    assert best_threshold_accuracy(labels, [0.9, 0.2, 0.3, 0.1]) == 0.5   # the anomaly scores lowest


# -- the detector ----------------------------------------------------------------------------
def test_detector_is_registered_and_supervised():
    assert "capsnet" in detectors.available()
    assert detectors.create("capsnet", device="cpu").supervised is True


def test_detector_refuses_a_training_set_without_anomalies():
    with pytest.raises(ValueError, match="supervised.*anomaly_fraction"):
        CapsNetDetector(device="cpu", **TINY).fit(OneClassDigits(1, "train"), "quick")


def test_detector_fit_predict_on_imbalanced_digits():
    torch.manual_seed(0)
    train = OneClassDigits(1, "train", anomaly_fraction=0.05)
    test = OneClassDigits(1, "test")
    images = test.images[:10]
    det = CapsNetDetector(device="cpu", **TINY).fit(train, "quick")
    scores, maps = det.predict(images)
    assert scores.shape == (10,) and maps.shape == (10, 28, 28) and np.all(np.isfinite(scores))
    d = det.details(images)
    np.testing.assert_allclose(scores, d["lengths"][:, 1] - d["lengths"][:, 0] + d["recon_error"], rtol=1e-5, atol=1e-6)
    assert det.threshold is not None and det.decide(images).dtype == bool
    assert det.n_train_anomalies == int(train.labels.sum()) >= 1
    assert det.n_train == len(train) - round(0.2 * int((train.labels == 0).sum()))   # calibration normals held out
    assert det.model() is det.network


def test_detector_fit_predict_on_textures():
    torch.manual_seed(0)
    train = TextureDefects("brick", "test", n=16)           # half of these patches carry labelled defects
    images = TextureDefects("brick", "test", n=8, seed=1).images
    det = CapsNetDetector(device="cpu", calibration_fraction=0.0, **TINY).fit(train, "quick")
    scores, maps = det.predict(images)
    assert scores.shape == (8,) and maps.shape == (8, 64, 64)
    assert det.threshold is None
    with pytest.raises(RuntimeError, match="threshold"):
        det.decide(images)


def test_detector_is_deterministic_with_its_seed():
    train = OneClassDigits(2, "train", anomaly_fraction=0.05)
    images = OneClassDigits(2, "test").images[:6]
    a = CapsNetDetector(device="cpu", **TINY).fit(train).predict(images)[0]
    b = CapsNetDetector(device="cpu", **TINY).fit(train).predict(images)[0]
    np.testing.assert_array_equal(a, b)


class _FakeTorchvision(torch.utils.data.Dataset):
    """A stand-in for MNIST: ``targets`` and items (PIL image, class)."""

    def __init__(self, per_class: int, seed: int):
        rng = np.random.default_rng(seed)
        self.targets = np.repeat(np.arange(10), per_class)
        self.images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in self.targets]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def test_imbalanced_torchvision_protocol():
    train, test = imbalanced_torchvision("MNIST", 3, 0.1, train_base=_FakeTorchvision(60, 0),
                                         test_base=_FakeTorchvision(4, 1))
    assert isinstance(train, InMemoryAnomalyDataset)
    # as in the thesis, 10 % of the normal images (6, not 7 = 10 % of the whole training set)
    assert (train.labels == 0).sum() == 60 and (train.labels == 1).sum() == 6
    assert train.images.shape == (66, 1, 28, 28)
    assert len(test) == 8 and test.labels.sum() == 4                            # balanced test split


def test_loaded_detector_keeps_its_calibrated_threshold(tmp_path):
    torch.manual_seed(0)
    train = OneClassDigits(1, "train", anomaly_fraction=0.05)
    images = OneClassDigits(1, "test").images[:10]
    det = CapsNetDetector(device="cpu", **TINY).fit(train, "quick")
    loaded = detectors.load(det.save(tmp_path / "capsnet.pt"))
    assert loaded.threshold == det.threshold is not None
    np.testing.assert_array_equal(loaded.decide(images), det.decide(images))
    np.testing.assert_array_equal(loaded.details(images)["score"], det.details(images)["score"])


def test_detector_refuses_items_without_labels_and_a_training_set_of_anomalies_only():
    images = OneClassDigits(1, "test").images[:8]
    with pytest.raises(ValueError, match="supervised.*'label'"):
        CapsNetDetector(device="cpu", **TINY).fit(_ImagesOnly(images))
    with pytest.raises(ValueError, match="all 8 training images are labelled anomalies"):
        CapsNetDetector(device="cpu", **TINY).fit(InMemoryAnomalyDataset(images, np.ones(8, dtype=int)))


class _ImagesOnly(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


@pytest.mark.parametrize("bad, match", [(dict(calibration_fraction=1.0), r"calibration_fraction=1.0 .*\[0, 1\)"),
                                        (dict(calibration_quantile=1.5), r"calibration_quantile=1.5"),
                                        (dict(decoder_hidden=(8, 0)), r"decoder_hidden=\(8, 0\)"),
                                        (dict(routing_iterations=0), r"routing_iterations=0")])
def test_out_of_range_capsnet_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        CapsNetDetector.Settings(**bad)
