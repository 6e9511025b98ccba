import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from adcourse import detectors, metrics
from adcourse.data import TextureDefects
from adcourse.models.padim import gaussian_per_position, mahalanobis_map


def test_gaussian_per_position_matches_numpy():
    torch.manual_seed(0)
    features = torch.randn(20, 3, 2, 2)
    mean, inverse = gaussian_per_position(features, epsilon=0.01)
    x = features[:, :, 1, 0].double().numpy()  # position (1, 0) is row-major index 2
    np.testing.assert_allclose(mean[2].numpy(), x.mean(0), rtol=1e-5)
    expected = np.linalg.inv(np.cov(x, rowvar=False) + 0.01 * np.eye(3))
    np.testing.assert_allclose(inverse[2].numpy(), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_per_position(features[:1])


def test_mahalanobis_map_matches_scipy():
    torch.manual_seed(1)
    train, test = torch.randn(30, 4, 3, 3), torch.randn(2, 4, 3, 3)
    mean, inverse = gaussian_per_position(train)
    distances = mahalanobis_map(test, mean, inverse)
    assert distances.shape == (2, 3, 3)
    expected = mahalanobis(test[1, :, 2, 1].numpy(), mean[7].numpy(), inverse[7].numpy())
    assert distances[1, 2, 1].item() == pytest.approx(expected, rel=1e-4)


def test_padim_needs_no_training_and_finds_built_in_defects():
    train = TextureDefects("brick", "train", n=64, seed=0)
    test = TextureDefects("brick", "test", n=32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # offline: the ImageNet weights fall back to a seeded random init
        detector = detectors.create("padim", device="cpu").fit(train)
    assert not detector.trains and detector.model() is detector.backbone
    scores, maps = detector.predict(test.images)
    assert scores.shape == (32,) and maps.shape == (32, 64, 64)
    assert metrics.image_auroc(test.labels, scores) > 0.75
    again, _ = detectors.create("padim", device="cpu").fit(train).predict(test.images)
    np.testing.assert_allclose(scores, again, rtol=1e-5)  # seeded: the same channels, the same weights
    with pytest.raises(ValueError, match="d=1000"):
        detectors.create("padim", d=1000).fit(train)
    with pytest.raises(TypeError, match="unknown padim setting 'epochs'"):
        detectors.create("padim", epochs=3).fit(train)
