"""Normal validation images, apart from training and test, in every built-in and folder dataset, and
the benchmark's figures at a threshold fixed on them (issue: evaluation as a factory does it).

A dataset asked for no validation images is exactly what it was before they existed: every chapter's
data stay the same. Asked for them, the training split gives them up and the test split does not move.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adcourse import bench, metrics
from adcourse.data import (DatasetArgumentError, MVTecLayoutFolder, OneClassDigits, TextureDefects,
                           TorchvisionOneClass)
from adcourse.data import builtin
from test_real_datasets import FakeTorchvision
from tiny_datasets import _layout, save_image


# --- textures: a band of rows of the photograph ----------------------------------------------------

@pytest.fixture
def row_numbered_photo(monkeypatch):
    """A 512×512 "photograph" whose every pixel holds its row index / 1000: a patch tells its rows."""
    photo = np.repeat(np.arange(512, dtype=np.float32)[:, None] / 1000, 512, axis=1)
    monkeypatch.setattr(builtin, "texture_photo", lambda name: photo)


def rows_of(dataset, defective=False):
    keep = dataset.labels == (1 if defective else 0)
    values = dataset.images[keep][:, 0].numpy()
    return np.round(values.min() * 1000), np.round(values.max() * 1000)


def test_texture_validation_patches_lie_in_their_own_band(row_numbered_photo):
    train = TextureDefects("brick", "train", seed=3, validation_rows=0.15)
    validation = TextureDefects("brick", "validation", seed=3, validation_rows=0.15)
    test = TextureDefects("brick", "test", seed=3, validation_rows=0.15)
    held, boundary = int(512 * 0.45), int(512 * 0.6)
    assert rows_of(train)[1] < held
    assert held <= rows_of(validation)[0] and rows_of(validation)[1] < boundary
    assert rows_of(test)[0] >= boundary
    assert len(validation) == 64 and validation.labels.sum() == 0 and validation.masks.sum() == 0
    assert set(validation.defect_types) == {"good"}


def test_textures_without_validation_are_unchanged_and_the_test_split_never_moves():
    for split in ("train", "test"):
        before = TextureDefects("grass", split, seed=1)
        assert torch.equal(before.images, TextureDefects("grass", split, seed=1, validation_rows=0.0).images)
    assert torch.equal(TextureDefects("grass", "test", seed=1).images,
                       TextureDefects("grass", "test", seed=1, validation_rows=0.15).images)


@pytest.mark.parametrize("arguments, message", [
    (dict(split="validation"), "needs validation_rows > 0"),
    (dict(split="validation", validation_rows=0.6), r"validation_rows must be in \[0, 0.6\)"),
    (dict(split="check"), "validation"),
])
def test_texture_validation_arguments_are_checked(arguments, message):
    with pytest.raises(DatasetArgumentError, match=message):
        TextureDefects("brick", **arguments)


# --- digits: the last of the normal class's training digits ---------------------------------------

def test_digit_validation_comes_out_of_training_and_leaves_the_test_split_alone():
    train = OneClassDigits(4, "train", seed=2)
    kept = OneClassDigits(4, "train", seed=2, validation_fraction=0.2)
    validation = OneClassDigits(4, "validation", seed=2, validation_fraction=0.2)
    assert len(validation) == round(0.2 * len(train)) and validation.labels.sum() == 0
    assert set(validation.digits.tolist()) == {4}
    assert torch.equal(torch.cat([kept.images, validation.images]), train.images)
    assert torch.equal(OneClassDigits(4, "test", seed=2).images,
                       OneClassDigits(4, "test", seed=2, validation_fraction=0.2).images)
    with pytest.raises(DatasetArgumentError, match="needs validation_fraction > 0"):
        OneClassDigits(4, "validation")


def test_digit_validation_with_labelled_anomalies_holds_normal_digits_only():
    supervised = OneClassDigits(4, "train", anomaly_fraction=0.1, seed=2, validation_fraction=0.2)
    validation = OneClassDigits(4, "validation", anomaly_fraction=0.1, seed=2, validation_fraction=0.2)
    assert supervised.labels.sum() > 0 and validation.labels.sum() == 0


# --- folders: validation/good, or a fixed share of train/good --------------------------------------

@pytest.fixture
def folder(tmp_path):
    _layout(tmp_path / "part", np.random.default_rng(0), "good", ("crack",), ".png",
            lambda k: f"{k:03d}_mask.png", n_train=10)
    return tmp_path / "part"


def test_a_folder_holds_out_a_fixed_share_of_its_training_images(folder):
    everything = {sample.image for sample in MVTecLayoutFolder(folder, "train").samples}
    train = {sample.image for sample in MVTecLayoutFolder(folder, "train", validation_fraction=0.3).samples}
    held = [sample.image for sample in MVTecLayoutFolder(folder, "validation", validation_fraction=0.3).samples]
    assert len(held) == 3 and set(held) | train == everything and not set(held) & train
    again = [sample.image for sample in MVTecLayoutFolder(folder, "validation", validation_fraction=0.3).samples]
    assert held == again  # the same images on every run, whatever the run's seed


def test_a_folder_with_its_own_validation_folder_uses_it_and_trains_on_everything(folder):
    for k in range(3):  # MVTec AD 2's layout: validation/good beside train/good
        save_image(folder / "validation" / "good" / f"{k:03d}.png", value=90 + k, size=32)
    validation = MVTecLayoutFolder(folder, "validation")
    assert len(validation) == 3 and all(sample.image.parent == folder / "validation" / "good"
                                        for sample in validation.samples)
    assert len(MVTecLayoutFolder(folder, "train", validation_fraction=0.3)) == 10


def test_a_folder_without_validation_images_says_how_to_get_them(folder):
    with pytest.raises(DatasetArgumentError, match="validation_fraction=0.1"):
        MVTecLayoutFolder(folder, "validation")
    with pytest.raises(DatasetArgumentError, match="leaves none to train on"):
        MVTecLayoutFolder(folder, "validation", validation_fraction=0.95)


def test_torchvision_validation_is_drawn_from_the_normal_training_images(tmp_path):
    targets = [1] * 20 + [2] * 5
    base = FakeTorchvision(targets)
    train = TorchvisionOneClass("MNIST", tmp_path, 1, "train", base=base, seed=0, validation_fraction=0.25)
    validation = TorchvisionOneClass("MNIST", tmp_path, 1, "validation", base=base, seed=0, validation_fraction=0.25)
    assert len(validation) == 5 and len(train) == 15 and not set(validation.indices) & set(train.indices)
    assert set(validation.targets.tolist()) == {1} and validation.labels.sum() == 0


# --- the benchmark --------------------------------------------------------------------------------

def test_load_splits_holds_validation_out_and_load_data_does_not():
    splits = bench.load_splits("digits:3", "quick", seed=0)
    train, test = bench.load_data("digits:3", "quick", seed=0)
    assert len(splits.train) + len(splits.validation) == len(train)
    assert torch.equal(torch.stack([splits.test[i]["image"] for i in range(len(test))]),
                       torch.stack([test[i]["image"] for i in range(len(test))]))
    assert bench.load_splits("digits:3", "quick", validation=False).validation is None


def test_evaluate_reports_the_validation_threshold_beside_the_oracle():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(40, int)]
    masks = np.zeros((80, 8, 8))
    masks[40:, 2:5, 2:5] = 1
    maps = rng.random((80, 8, 8)) + 2 * masks
    scores = maps.max(axis=(1, 2))
    validation_maps = rng.random((20, 8, 8))
    validation_scores = validation_maps.max(axis=(1, 2))
    result = bench.evaluate(labels, scores, masks, maps, None, validation_scores, validation_maps, (0.3, 0.05))
    threshold = validation_scores.mean() + 3 * validation_scores.std(ddof=1)
    flagged = scores >= threshold
    assert result["val_tpr"] == pytest.approx(flagged[labels == 1].mean())
    assert result["val_tnr"] == pytest.approx(1 - flagged[labels == 0].mean())
    pixel_threshold = validation_maps.mean() + 3 * validation_maps.std(ddof=1)
    hit = (maps >= pixel_threshold) & (masks > 0)
    assert result["segf1"] == pytest.approx(2 * hit.sum() / ((maps >= pixel_threshold).sum() + masks.sum()))
    assert result["aupro_0.05"] == pytest.approx(metrics.aupro(masks, maps, fpr_limit=0.05))
    assert result["aupro"] == pytest.approx(metrics.aupro(masks, maps, fpr_limit=0.3))
    # a chapter's own call keeps the figures it had: no validation figures, AUPRO at 0.3 alone
    assert set(bench.evaluate(labels, scores, masks, maps)) == {"image_auroc", "image_aupr", "best_tpr", "best_tnr",
                                                                "pixel_auroc", "aupro"}


def test_a_results_file_of_the_earlier_protocol_is_refused_naming_it(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"data": "digits:3", "profile": "quick", "seeds": [0], "data_seed": None,
                               "overrides": None, "results": {}}))
    with pytest.raises(ValueError, match="written before validation images were held out"):
        bench.run(["ae_l2"], "digits:3", "quick", seed=0, out=out, progress=False)


def test_the_table_names_the_oracle_and_the_fpr_limits():
    header = bench.markdown_table({"results": {}, "seeds": [0]}).splitlines()[0]
    for title in ("oracle TPR", "oracle TNR", "val. TPR", "val. TNR", "val. F1", "AU-PRO@0.3", "AU-PRO@0.05", "SegF1"):
        assert f"| {title} |" in header


def test_every_dataset_refuses_a_hold_out_that_leaves_nothing_to_train_on(tmp_path):
    # two normal training images: the hold-out of at least 2 would take them all
    with pytest.raises(DatasetArgumentError, match="leaves none to train on"):
        TorchvisionOneClass("MNIST", tmp_path, 1, "train", base=FakeTorchvision([1, 1, 2, 2]), validation_fraction=0.5)
