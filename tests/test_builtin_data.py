import numpy as np
import pytest
import torch

from adcourse.data import DatasetError, OneClassDigits, TextureDefects


@pytest.mark.parametrize("texture", ["brick", "grass", "gravel"])
def test_texture_defects(texture):
    train = TextureDefects(texture, "train", n=20)
    test = TextureDefects(texture, "test", n=20)
    item = test[0]
    assert set(item) >= {"image", "label", "mask"}
    assert item["image"].shape == (1, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert train.labels.sum() == 0 and train.masks.sum() == 0
    assert test.labels.sum() == 10
    # every defective patch has a non-empty mask, every normal patch an empty one
    per_image = test.masks.flatten(1).sum(1).numpy()
    assert ((per_image > 0) == (test.labels == 1)).all()
    assert 0 <= test.images.min() and test.images.max() <= 1


def test_texture_train_and_test_regions_are_disjoint():
    train = TextureDefects("brick", "train", n=300)
    test = TextureDefects("brick", "test", n=300)
    normal_test = test.images[torch.from_numpy(test.labels == 0)]
    # no normal test patch equals any training patch
    distances = torch.cdist(normal_test.flatten(1), train.images.flatten(1))
    assert distances.min() > 1e-3


def test_texture_deterministic():
    a, b = TextureDefects("grass", "test", n=12, seed=3), TextureDefects("grass", "test", n=12, seed=3)
    torch.testing.assert_close(a.images, b.images)
    c = TextureDefects("grass", "test", n=12, seed=4)
    assert not torch.equal(a.images, c.images)


def test_texture_errors():
    with pytest.raises(DatasetError, match="Did you mean 'brick'"):
        TextureDefects("brik")
    with pytest.raises(DatasetError, match="split"):
        TextureDefects("brick", "validation")
    with pytest.raises(ValueError, match="patch_size"):
        TextureDefects("brick", "test", patch_size=300)


def test_one_class_digits_protocol():
    train = OneClassDigits(3, "train")
    test = OneClassDigits(3, "test")
    assert (train.digits == 3).all() and train.labels.sum() == 0
    assert test.labels.mean() == 0.5  # balanced
    assert ((test.digits != 3) == (test.labels == 1)).all()
    assert train[0]["image"].shape == (1, 28, 28) and train[0]["mask"].sum() == 0


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1])
def test_one_class_digits_imbalanced(fraction):
    train = OneClassDigits(5, "train", anomaly_fraction=fraction)
    n_anomalies = train.labels.sum()
    assert n_anomalies >= 1
    assert abs(n_anomalies / len(train) - fraction) < max(0.01, 1 / len(train))
    assert (train.digits[train.labels == 1] != 5).all()


def test_one_class_digits_errors():
    with pytest.raises(DatasetError, match="normal_class"):
        OneClassDigits(12)
    with pytest.raises(ValueError, match="anomaly_fraction"):
        OneClassDigits(1, anomaly_fraction=1.0)


def test_digits_split_is_disjoint():
    train, test = OneClassDigits(0, "train", image_size=8), OneClassDigits(0, "test", image_size=8)
    normal_test = test.images[torch.from_numpy(test.labels == 0)]
    assert torch.cdist(normal_test.flatten(1), train.images.flatten(1)).min() > 0
    assert np.isclose(train.images.max().item(), 1.0)


@pytest.mark.parametrize("normal_class, error, message", [
    ("3", TypeError, r"normal_class must be an int \(0–9\), got the string '3': pass 3, not '3'"),
    (3.0, TypeError, "got float 3.0"),
    (True, TypeError, "got bool True"),
    (None, TypeError, "got NoneType None"),
    (-1, ValueError, "normal_class must be one of 0–9, got -1"),
    (10, ValueError, "normal_class must be one of 0–9, got 10"),
])
def test_one_class_digits_normal_class_must_be_an_int_from_0_to_9(normal_class, error, message):
    with pytest.raises(error, match=message) as raised:
        OneClassDigits(normal_class)
    assert isinstance(raised.value, DatasetError)


def test_one_class_digits_takes_numpy_ints_and_checks_its_other_arguments():
    assert OneClassDigits(np.int64(3), image_size=8).normal_class == 3
    with pytest.raises(ValueError, match="split"):
        OneClassDigits(3, "tset")
    with pytest.raises(ValueError, match="image_size must be at least 1"):
        OneClassDigits(3, image_size=0)
    with pytest.raises(ValueError, match="seed must be at least 0"):
        OneClassDigits(3, seed=-1)
    with pytest.raises(TypeError, match="anomaly_fraction must be a number"):
        OneClassDigits(3, anomaly_fraction="0.1")


@pytest.mark.parametrize("arguments, error, message", [
    (dict(n=0), ValueError, "n must be at least 1"),
    (dict(n=2.5), TypeError, "n must be an int"),
    (dict(patch_size="64"), TypeError, "patch_size must be an int"),
    (dict(patch_size=4), ValueError, "patch_size must be at least 8"),
    (dict(seed=-1), ValueError, "seed must be at least 0"),
    (dict(train_rows=1.0), ValueError, r"train_rows must be in \(0, 1\)"),
    (dict(defects=[]), ValueError, "defects is empty"),
    (dict(defects=["stain", "crack"]), ValueError, r"Unknown defect 'crack'"),
    (dict(texture=3), ValueError, "Unknown texture 3"),
])
def test_texture_arguments_are_checked(arguments, error, message):
    with pytest.raises(error, match=message):
        TextureDefects(**{"texture": "brick", "split": "test", "n": 8, **arguments})


def test_texture_defects_takes_one_defect_name_as_a_string():
    test = TextureDefects("brick", "test", n=8, patch_size=16, defects="stain")
    assert set(test.defect_types) == {"good", "stain"}
