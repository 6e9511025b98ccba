"""MVTec AD, BTAD and the torchvision one-class wrapper, on tiny trees made here (no network)."""

import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from adcourse.data import btad, mvtec
from adcourse.data.btad import BTAD
from adcourse.data.download import DatasetError, sha256sum
from adcourse.data.mvtec import MVTEC_ARCHIVE, MVTEC_PAGE, MVTEC_SHA256, MVTecAD
from adcourse.data.torchvision_oneclass import TorchvisionOneClass
from tiny_datasets import save_image, save_mask, write_idx

UNREACHABLE = "http://127.0.0.1:9/x"


def make_mvtec(root, category="bottle", mode="RGB"):
    folder = root / category
    for name in ("000.png", "001.png"):
        save_image(folder / "train" / "good" / name, mode=mode)
    save_image(folder / "test" / "good" / "000.png", mode=mode)
    for defect in ("crack", "cut"):
        save_image(folder / "test" / defect / "000.png", value=200, mode=mode)
        save_mask(folder / "ground_truth" / defect / "000_mask.png")
    return folder


def make_btad(root, product="01", image_suffix=".bmp", mask_suffix=".png"):
    folder = root / product
    save_image(folder / "train" / "ok" / f"0000{image_suffix}")
    save_image(folder / "test" / "ok" / f"0000{image_suffix}")
    save_image(folder / "test" / "ko" / f"0001{image_suffix}", value=200)
    save_mask(folder / "ground_truth" / "ko" / f"0001{mask_suffix}")
    return folder


# MVTec AD ---------------------------------------------------------------------------------------


def test_mvtec_train_split(tmp_path):
    make_mvtec(tmp_path)
    data = MVTecAD(tmp_path, "bottle", "train", image_size=16)
    assert len(data) == 2
    assert data.labels.tolist() == [0, 0]
    item = data[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], torch.full((3, 16, 16), 128 / 255))
    assert item["mask"].shape == (1, 16, 16) and item["mask"].sum() == 0
    assert item["label"] == 0
    assert item["path"].endswith("train/good/000.png")


def test_mvtec_test_split_pairs_masks(tmp_path):
    make_mvtec(tmp_path)
    data = MVTecAD(tmp_path, "bottle", "test", image_size=16)
    assert data.labels.tolist() == [0, 1, 1]
    assert [item["label"] for item in data] == [0, 1, 1]
    for index, defect in ((1, "crack"), (2, "cut")):
        item = data[index]
        assert f"test/{defect}/000.png" in item["path"]
        assert data.samples[index][2] == tmp_path / "bottle" / "ground_truth" / defect / "000_mask.png"
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
        assert item["mask"][0, :, :8].all() and not item["mask"][0, :, 8:].any()
        assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert data[0]["mask"].sum() == 0


def test_mvtec_grey_category_gets_three_equal_channels(tmp_path):
    make_mvtec(tmp_path, "grid", mode="L")
    image = MVTecAD(tmp_path, "grid", "train", image_size=8)[0]["image"]
    assert image.shape == (3, 8, 8)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_masks_stored_as_zero_one_are_read(tmp_path):
    folder = make_mvtec(tmp_path)
    mask = np.zeros((8, 8), np.uint8)
    mask[:2] = 1
    Image.fromarray(mask).save(folder / "ground_truth" / "crack" / "000_mask.png")
    assert MVTecAD(tmp_path, "bottle", "test", image_size=8)[1]["mask"].sum() == 16


def test_misspelt_category_suggests_the_closest(tmp_path):
    with pytest.raises(DatasetError, match=r"'botle'.*Did you mean 'bottle'.*zipper"):
        MVTecAD(tmp_path, "botle", "train")


def test_unknown_split(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(DatasetError, match=r"'val'.*train, test"):
        MVTecAD(tmp_path, "bottle", "val")


def test_missing_category_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as err:
        MVTecAD(tmp_path / "nowhere", "bottle", "train")
    message = str(err.value)
    for expected in (MVTEC_PAGE, MVTEC_ARCHIVE, MVTEC_SHA256, str(tmp_path / "nowhere" / "bottle")):
        assert expected in message


def test_test_tree_without_ground_truth(tmp_path):
    folder = make_mvtec(tmp_path)
    shutil.rmtree(folder / "ground_truth")
    with pytest.raises(DatasetError, match="ground_truth"):
        MVTecAD(tmp_path, "bottle", "test")
    assert len(MVTecAD(tmp_path, "bottle", "train")) == 2  # train does not need masks


def test_defective_image_without_mask(tmp_path):
    folder = make_mvtec(tmp_path)
    (folder / "ground_truth" / "cut" / "000_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        MVTecAD(tmp_path, "bottle", "test")
    assert str(folder / "test" / "cut" / "000.png") in str(err.value)
    assert str(folder / "ground_truth" / "cut" / "000_mask") in str(err.value)


@pytest.mark.parametrize("missing", ["image", "defect folder"])
def test_mask_without_image(tmp_path, missing):
    folder = make_mvtec(tmp_path)
    if missing == "image":
        save_mask(folder / "ground_truth" / "crack" / "007_mask.png")
        orphan = folder / "ground_truth" / "crack" / "007_mask.png"
    else:
        shutil.rmtree(folder / "test" / "cut")
        orphan = folder / "ground_truth" / "cut" / "000_mask.png"
    with pytest.raises(DatasetError) as err:
        MVTecAD(tmp_path, "bottle", "test")
    assert f"Mask {orphan} has no test image" in str(err.value)


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_unreadable_image_is_named(tmp_path, content):
    folder = make_mvtec(tmp_path)
    broken = folder / "train" / "good" / "001.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(broken)
        content = broken.read_bytes()[:200]
    broken.write_bytes(content)
    data = MVTecAD(tmp_path, "bottle", "train")
    with pytest.raises(DatasetError, match=f"Cannot read image {broken}"):
        data[1]


def test_empty_training_folder(tmp_path):
    folder = make_mvtec(tmp_path)
    shutil.rmtree(folder / "train" / "good")
    with pytest.raises(DatasetError, match=str(folder / "train" / "good")):
        MVTecAD(tmp_path, "bottle", "train")


def test_mvtec_download_uses_an_archive_put_there_by_hand(tmp_path, monkeypatch):
    """The offline route the error message gives: archive next to root, download=True."""
    make_mvtec(tmp_path / "tree")
    archive = tmp_path / "cache" / MVTEC_ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(tmp_path / "tree" / "bottle", arcname="bottle")
    monkeypatch.setattr(mvtec, "MVTEC_SHA256", sha256sum(archive))
    data = MVTecAD(tmp_path / "cache" / "mvtec_ad", "bottle", "test", download=True, url=UNREACHABLE)
    assert data.labels.tolist() == [0, 1, 1]


def test_mvtec_download_offline_without_archive(tmp_path):
    with pytest.raises(DatasetError) as err:
        MVTecAD(tmp_path / "mvtec_ad", "bottle", "train", download=True, url=UNREACHABLE)
    assert MVTEC_ARCHIVE in str(err.value) and str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []


# BTAD -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_suffix, mask_suffix", [(".bmp", ".png"), (".png", ".bmp")])
def test_btad_splits(tmp_path, image_suffix, mask_suffix):
    make_btad(tmp_path, "02", image_suffix, mask_suffix)
    train = BTAD(tmp_path, "02", "train", image_size=16)
    assert len(train) == 1 and train[0]["image"].shape == (3, 16, 16)
    test = BTAD(tmp_path, "02", "test", image_size=16)
    assert test.labels.tolist() == [0, 1]
    defective = test[1]
    assert defective["path"].endswith(f"test/ko/0001{image_suffix}")
    assert defective["mask"].shape == (1, 16, 16)
    assert defective["mask"][0, :, :8].all() and not defective["mask"][0, :, 8:].any()
    assert test[0]["mask"].sum() == 0


def test_btad_finds_products_inside_the_archive_folder(tmp_path):
    make_btad(tmp_path / "BTech_Dataset_transformed", "03")
    assert len(BTAD(tmp_path, "03", "test")) == 2


def test_btad_errors(tmp_path):
    with pytest.raises(DatasetError, match="Did you mean '01'"):
        BTAD(tmp_path, "1", "train")
    with pytest.raises(ValueError, match="Unknown BTAD product 1. Did you mean '01'"):
        BTAD(tmp_path, 1, "train")
    with pytest.raises(DatasetError) as err:
        BTAD(tmp_path, "01", "train")
    assert btad.BTAD_URL in str(err.value) and btad.BTAD_SHA256 in str(err.value)
    folder = make_btad(tmp_path)
    save_mask(folder / "ground_truth" / "ko" / "0009.bmp")
    with pytest.raises(DatasetError, match=f"Mask {folder / 'ground_truth' / 'ko' / '0009.bmp'}"):
        BTAD(tmp_path, "01", "test")


def test_btad_download_uses_an_archive_put_there_by_hand(tmp_path, monkeypatch):
    make_btad(tmp_path / "tree" / "BTech_Dataset_transformed", "01")
    archive = tmp_path / "cache" / "btad.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "tree").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "tree"))
    monkeypatch.setattr(btad, "BTAD_SHA256", sha256sum(archive))
    monkeypatch.setattr(btad, "BTAD_URL", UNREACHABLE)
    data = BTAD(tmp_path / "cache" / "btad", "01", "test", download=True)
    assert data.labels.tolist() == [0, 1]


# torchvision one-class --------------------------------------------------------------------------


class FakeTorchvision:
    """Stands in for a torchvision data set: ``targets`` and items ``(PIL image, class)``."""

    def __init__(self, targets, mode="L"):
        self.targets = torch.tensor(targets)
        self.mode = mode

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        target = int(self.targets[index])
        return Image.new(self.mode, (6, 6), 40 * target if self.mode == "L" else (40 * target,) * 3), target


TARGETS = [0] * 5 + [1] * 3 + [2] * 3 + [3] * 3


def test_oneclass_train_keeps_only_the_normal_class(tmp_path):
    data = TorchvisionOneClass("MNIST", tmp_path, 1, "train", base=FakeTorchvision(TARGETS))
    assert len(data) == 3 and data.labels.tolist() == [0, 0, 0]
    item = data[0]
    assert item["target"] == 1 and item["label"] == 0
    torch.testing.assert_close(item["image"], torch.full((1, 6, 6), 40 / 255))
    assert item["mask"].shape == (1, 6, 6) and item["mask"].sum() == 0


def test_oneclass_test_is_balanced_and_seeded(tmp_path):
    base = FakeTorchvision(TARGETS)
    data = TorchvisionOneClass("MNIST", tmp_path, 1, "test", base=base, seed=0)
    assert len(data) == 6 and data.labels.sum() == 3
    assert all(target != 1 for target, label in zip(data.targets, data.labels) if label == 1)
    assert [data[i]["label"] for i in range(6)] == data.labels.tolist()
    same = TorchvisionOneClass("MNIST", tmp_path, 1, "test", base=base, seed=0)
    assert same.indices.tolist() == data.indices.tolist()
    other = [TorchvisionOneClass("MNIST", tmp_path, 1, "test", base=base, seed=s).indices.tolist() for s in range(1, 6)]
    assert any(indices != data.indices.tolist() for indices in other)


def test_oneclass_resizes_and_keeps_colour(tmp_path):
    base = FakeTorchvision(TARGETS, mode="RGB")
    item = TorchvisionOneClass("CIFAR10", tmp_path, 0, "train", image_size=10, base=base)[0]
    assert item["image"].shape == (3, 10, 10) and item["mask"].shape == (1, 10, 10)


def test_oneclass_bad_arguments(tmp_path):
    base = FakeTorchvision(TARGETS)
    with pytest.raises(DatasetError, match="Did you mean 'MNIST'"):
        TorchvisionOneClass("mnist", tmp_path, 0, "train", base=base)
    with pytest.raises(DatasetError, match=r"normal_class of MNIST must be one of 0–3, got 7"):
        TorchvisionOneClass("MNIST", tmp_path, 7, "train", base=base)
    with pytest.raises(TypeError, match=r"must be an int \(0–3\), got the string '1': pass 1"):
        TorchvisionOneClass("MNIST", tmp_path, "1", "train", base=base)
    with pytest.raises(ValueError, match="split"):
        TorchvisionOneClass("MNIST", tmp_path, 1, "tset", base=base)




def test_oneclass_reads_real_torchvision_mnist_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    train = TorchvisionOneClass("MNIST", tmp_path, 3, "train")
    assert len(train) == 2 and train[0]["image"].shape == (1, 28, 28)
    test = TorchvisionOneClass("MNIST", tmp_path, 3, "test")
    assert len(test) == 2 and test.labels.tolist().count(1) == 1


@pytest.mark.parametrize(
    "name, folder, file",
    [("MNIST", "MNIST/raw", "train-images-idx3-ubyte.gz"), ("CIFAR10", "", "cifar-10-python.tar.gz")],
)
def test_oneclass_offline_message(tmp_path, name, folder, file):
    with pytest.raises(DatasetError) as err:
        TorchvisionOneClass(name, tmp_path, 0, "train")
    message = str(err.value)
    assert name in message and file in message and "download=True" in message
    assert str(tmp_path / folder) in message
def test_coil100_one_class_split(tmp_path):
    from adcourse.data import Coil100OneClass

    for obj in (1, 2, 3):
        for angle in range(0, 50, 5):  # 10 views per object
            Image.new("RGB", (32, 32), (obj * 60, angle, 0)).save(tmp_path / f"obj{obj}__{angle}.png")
    train = Coil100OneClass(tmp_path, 2, "train", image_size=16)
    test = Coil100OneClass(tmp_path, 2, "test", image_size=16)
    assert len(train) == 8 and set(train.labels) == {0}  # 80 % of object 2's views
    assert list(test.labels).count(0) == 2 and list(test.labels).count(1) == 2  # as many views of others
    assert not set(train.files) & set(test.files)
    item = test[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert all("obj2__" in f.name for f in train.files)
    with pytest.raises(DatasetError, match="COIL-100 not found in .*empty"):
        Coil100OneClass(tmp_path / "empty", 1, "train")


def test_coil100_mistakes_are_named(tmp_path):
    from adcourse.data import Coil100OneClass

    for obj in (1, 2):
        for angle in (0, 5, 10):
            Image.new("RGB", (8, 8), (obj * 60, angle, 0)).save(tmp_path / f"obj{obj}__{angle}.png")
    with pytest.raises(DatasetError, match=rf"COIL-100 object 5 not found in {tmp_path}: no obj5__<angle>.png.*1–2"):
        Coil100OneClass(tmp_path, 5, "train")
    with pytest.raises(ValueError, match=r"Unknown split 'tset'. Did you mean 'test'"):
        Coil100OneClass(tmp_path, 1, "tset")
    with pytest.raises(TypeError, match="pass 2, not '2'"):
        Coil100OneClass(tmp_path, "2", "train")
    with pytest.raises(ValueError, match="normal_object must be one of 1–100, got 0"):
        Coil100OneClass(tmp_path, 0, "train")
    (tmp_path / "obj2__notes.png").write_text("not a view")  # not a view's name: left out
    assert len(Coil100OneClass(tmp_path, 2, "test")) == 2
