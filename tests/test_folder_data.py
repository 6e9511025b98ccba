"""Images of one's own: an MVTec-layout folder with or without masks, files of every bit depth, and the
benchmark run on such a folder end to end. Every tree and image is made here."""
import functools
import json
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from adcourse import bench
from adcourse.data import BTAD, DatasetError, MVTecAD, MVTecLayoutFolder, TextureDefects, read_pixels
from adcourse.data.folder import resize_image

GRADIENT16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 … 65472


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_png16_colour(path, array):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def make_tree(root, masks=True, train=8, good=3, defects=(("crack", 2), ("hole", 1)), size=32):
    """A tiny folder in MVTec AD's layout: ``train`` normal images, ``good`` normal and a few defective
    test images (brighter, defect in the left half), and their masks."""
    rng = np.random.default_rng(0)
    for k in range(train):
        save(root / "train" / "good" / f"{k:03d}.png", rng.integers(90, 110, (size, size, 3), dtype=np.uint8))
    for k in range(good):
        save(root / "test" / "good" / f"{k:03d}.png", rng.integers(90, 110, (size, size, 3), dtype=np.uint8))
    for defect, count in defects:
        for k in range(count):
            image = rng.integers(90, 110, (size, size, 3), dtype=np.uint8)
            image[:, : size // 2] = 250
            save(root / "test" / defect / f"{k:03d}.png", image)
            if masks:
                mask = np.zeros((size, size), np.uint8)
                mask[:, : size // 2] = 255
                save(root / "ground_truth" / defect / f"{k:03d}_mask.png", mask)
    return root


# The folder layout ----------------------------------------------------------------------------------


def test_folder_with_masks(tmp_path):
    root = make_tree(tmp_path / "mine")
    train = MVTecLayoutFolder(root, "train", image_size=16)
    assert len(train) == 8 and train.labels.tolist() == [0] * 8 and train.has_masks
    test = MVTecLayoutFolder(root, "test", image_size=16)
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert test.defect_types == ["good"] * 3 + ["crack", "crack", "hole"]
    item = test[3]
    assert item["defect"] == "crack" and item["label"] == 1 and item["image"].shape == (3, 16, 16)
    assert item["mask"][0, :, :8].all() and not item["mask"][0, :, 8:].any()
    assert test[0]["defect"] == "good" and test[0]["mask"].sum() == 0


def test_folder_without_masks_gives_zero_masks(tmp_path):
    root = make_tree(tmp_path / "mine", masks=False)
    test = MVTecLayoutFolder(root, "test", image_size=16)
    assert not test.has_masks and test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(test[i]["mask"].sum() == 0 for i in range(len(test)))
    assert test.defect_types[3:] == ["crack", "crack", "hole"]
    with pytest.raises(DatasetError, match="ground_truth.*not found"):
        MVTecLayoutFolder(root, "test", masks=True)


def test_masks_can_be_ignored_but_not_half_given(tmp_path):
    root = make_tree(tmp_path / "mine")
    assert MVTecLayoutFolder(root, "test", image_size=8, masks=False)[3]["mask"].sum() == 0
    (root / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"test/hole/000.png has no mask: expected .*ground_truth/hole/000_mask"):
        MVTecLayoutFolder(root, "test")


def test_hidden_folders_and_files_are_left_out(tmp_path):
    root = make_tree(tmp_path / "mine")
    save(root / "test" / ".ipynb_checkpoints" / "000.png", np.zeros((8, 8), np.uint8))
    save(root / "train" / "good" / ".hidden.png", np.zeros((8, 8), np.uint8))
    assert len(MVTecLayoutFolder(root, "train")) == 8
    assert ".ipynb_checkpoints" not in MVTecLayoutFolder(root, "test").defect_types


def test_layout_mistakes_say_how_to_lay_the_folder_out(tmp_path):
    root = tmp_path / "mine"
    save(root / "train" / "000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"1 images lie directly in .*train: move them into .*train/good"):
        MVTecLayoutFolder(root, "train")
    save(root / "test" / "000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"No test images .*lie directly in .*test"):
        MVTecLayoutFolder(root, "test")
    with pytest.raises(DatasetError, match=r"Folder not found: .*nowhere\. Lay the folder out as MVTec AD"):
        MVTecLayoutFolder(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="Not a folder"):
        MVTecLayoutFolder(root / "train" / "000.png", "train")
    train_only = tmp_path / "train-only"
    save(train_only / "train" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="Test folder .* not found"):
        MVTecLayoutFolder(train_only, "test")


@pytest.mark.parametrize("arguments, error, message", [
    (dict(root=None), TypeError, "root must be the folder"),
    (dict(root=3), TypeError, "root must be a folder path"),
    (dict(split="val"), ValueError, r"Unknown split 'val'.*train, test"),
    (dict(image_size=0), ValueError, "image_size must be at least 2"),
    (dict(image_size=32.0), TypeError, "image_size must be an int"),
    (dict(masks="yes"), TypeError, "masks must be None"),
    (dict(normal="../good"), ValueError, "normal must be the name of one folder"),
])
def test_folder_arguments_are_checked(tmp_path, arguments, error, message):
    root = make_tree(tmp_path / "mine")
    with pytest.raises(error, match=message) as raised:
        MVTecLayoutFolder(**{"root": root, "split": "train", **arguments})
    assert isinstance(raised.value, DatasetError)


# MVTec AD and BTAD built on it ----------------------------------------------------------------------


def test_mvtec_reads_a_category_folder_of_ones_own(tmp_path):
    make_tree(tmp_path / "my_parts")
    test = MVTecAD(tmp_path, "my_parts", "test", image_size=16)
    assert test.category == "my_parts" and test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert test.defect_types[-1] == "hole" and test[5]["defect"] == "hole"
    with pytest.raises(DatasetError, match=r"'my_prts'.*A category folder of your own works too, but .*my_prts does not"):
        MVTecAD(tmp_path, "my_prts", "train")
    with pytest.raises(DatasetError, match="one folder"):
        MVTecAD(tmp_path, "../my_parts", "train")
    with pytest.raises(TypeError, match="must be a folder name"):
        MVTecAD(tmp_path, 3, "train")


def test_btad_items_name_their_defect(tmp_path):
    folder = tmp_path / "01"
    save(folder / "train" / "ok" / "0000.bmp", np.full((8, 8, 3), 100, np.uint8))
    save(folder / "test" / "ok" / "0000.bmp", np.full((8, 8, 3), 100, np.uint8))
    save(folder / "test" / "ko" / "0001.bmp", np.full((8, 8, 3), 200, np.uint8))
    save(folder / "ground_truth" / "ko" / "0001.png", np.full((8, 8), 255, np.uint8))
    test = BTAD(tmp_path, "01", "test", image_size=8)
    assert test.defect_types == ["good", "ko"] and [item["defect"] for item in test] == ["good", "ko"]


def test_texture_items_carry_their_defect_type():
    test = TextureDefects("brick", "test", n=16, patch_size=32)
    assert [test[i]["defect"] for i in range(16)] == test.defect_types
    assert {name for name, label in zip(test.defect_types, test.labels) if label == 1} == \
        {"stain", "scratch", "foreign_patch", "perlin"}
    assert all((name == "good") == (label == 0) for name, label in zip(test.defect_types, test.labels))


# Reading files of every kind ------------------------------------------------------------------------


def test_sixteen_bit_grey_png_and_tiff_are_scaled_by_65535(tmp_path):
    for suffix in (".png", ".tif"):
        path = save(tmp_path / f"g16{suffix}", GRADIENT16)
        pixels = read_pixels(path)
        assert pixels.dtype == np.uint16 and pixels.shape == (32, 32, 1)
        image = resize_image(pixels, 32, path)
        torch.testing.assert_close(image[0], torch.from_numpy(GRADIENT16 / 65535).float())
        assert image.shape == (3, 32, 32) and (image[0] == image[2]).all()
        assert (image < 0.99).float().mean() > 0.9  # Pillow's convert("RGB") left 97 % of this gradient white


def test_sixteen_bit_colour_png_and_tiff_keep_their_scale(tmp_path):
    colour = np.stack([GRADIENT16, GRADIENT16 // 2, GRADIENT16 // 4], axis=-1)
    png = write_png16_colour(tmp_path / "c16.png", colour)
    tiff = tmp_path / "c16.tif"
    tifffile.imwrite(tiff, colour, photometric="rgb")
    for path in (png, tiff):
        image = resize_image(read_pixels(path), 32, path)
        expected = torch.from_numpy(colour / 65535).float().permute(2, 0, 1)
        assert (image - expected).abs().max() < 1 / 255 + 1e-6  # Pillow keeps the high byte


@pytest.mark.parametrize("name, array, mode", [
    ("grey.png", np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, None),
    ("grey.bmp", np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, None),
    ("grey.tif", np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, None),
    ("colour.png", np.arange(192, dtype=np.uint8).reshape(8, 8, 3), None),
    ("colour.bmp", np.arange(192, dtype=np.uint8).reshape(8, 8, 3), None),
    ("colour.tif", np.arange(192, dtype=np.uint8).reshape(8, 8, 3), None),
    ("alpha.png", np.arange(256, dtype=np.uint8).reshape(8, 8, 4), "RGBA"),
    ("palette.png", np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "P"),
])
def test_eight_bit_files_are_scaled_by_255(tmp_path, name, array, mode):
    image = Image.fromarray(array)
    image = image.convert(mode) if mode == "P" else image
    image.save(tmp_path / name)
    loaded = resize_image(read_pixels(tmp_path / name), 8, tmp_path / name)
    expected = np.asarray(image.convert("RGB"), np.float32) / 255
    torch.testing.assert_close(loaded, torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # Pillow opens the first, tifffile the second
def test_floating_point_tiff_in_unit_range_is_read_and_others_are_refused(tmp_path, dtype):
    values = (GRADIENT16 / 65535).astype(dtype)
    tifffile.imwrite(tmp_path / "unit.tif", values)
    torch.testing.assert_close(resize_image(read_pixels(tmp_path / "unit.tif"), 32, tmp_path / "unit.tif")[1],
                               torch.from_numpy(values).float())
    tifffile.imwrite(tmp_path / "wide.tif", values * 300)
    with pytest.raises(DatasetError, match=r"wide.tif holds floating-point values in \[0, 299.7\d*\].*save it as"):
        resize_image(read_pixels(tmp_path / "wide.tif"), 8, tmp_path / "wide.tif")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's complaint about the damaged TIFF below
def test_unsupported_and_unreadable_files_are_named(tmp_path):
    Image.fromarray(GRADIENT16.astype(np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DatasetError, match=r"i32.tif holds Pillow mode 'I'.*8- or 16-bit"):
        read_pixels(tmp_path / "i32.tif")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"Cannot read image .*junk.png"):
        read_pixels(tmp_path / "junk.png")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(DatasetError, match=r"Cannot read image .*junk.tif"):
        read_pixels(tmp_path / "junk.tif")
    with pytest.raises(DatasetError, match=r"Cannot read image .*missing.png"):
        read_pixels(tmp_path / "missing.png")


def test_sixteen_bit_masks_and_masks_of_another_shape(tmp_path):
    root = make_tree(tmp_path / "mine", defects=(("crack", 1),))
    mask = np.zeros((32, 32), np.uint16)
    mask[:8] = 65535
    save(root / "ground_truth" / "crack" / "000_mask.png", mask)
    item = MVTecLayoutFolder(root, "test", image_size=32)[3]
    assert item["mask"].sum() == 8 * 32
    save(root / "ground_truth" / "crack" / "000_mask.png", np.zeros((16, 16), np.uint8))  # half size: fine
    assert MVTecLayoutFolder(root, "test", image_size=32)[3]["mask"].shape == (1, 32, 32)
    save(root / "ground_truth" / "crack" / "000_mask.png", np.zeros((32, 20), np.uint8))
    with pytest.raises(DatasetError, match=r"Mask .*000_mask.png \(20×32 pixels\) does not fit its image .*000.png"):
        MVTecLayoutFolder(root, "test", image_size=32)[3]


# The benchmark on a folder of one's own, end to end --------------------------------------------------


@pytest.mark.parametrize("masks", [True, False])
def test_bench_runs_on_a_folder_end_to_end(tmp_path, monkeypatch, capsys, masks):
    """``python -m adcourse.bench --data folder:<tree> --methods ae_l2`` with one epoch on 32×32 images."""
    root = make_tree(tmp_path / "mine", masks=masks)
    monkeypatch.setattr(bench, "REAL_IMAGE_SIZE", {"quick": 32, "full": 32})
    monkeypatch.setattr(bench, "run", functools.partial(bench.run, overrides={"ae_l2": {"epochs": 1}}))
    out = tmp_path / "results.json"
    assert bench.main(["--methods", "ae_l2", "--data", f"folder:{root}", "--profile", "quick",
                       "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    entry = saved["results"]["ae_l2"]
    assert saved["data"] == f"folder:{root}" and saved["seeds"] == [0]
    assert 0 <= entry["image_auroc"] <= 1 and set(entry["per_defect"]) == {"crack", "hole"}
    assert entry["backbone"] is None and entry["overrides"] == {"epochs": 1}
    assert (entry["pixel_auroc"] is not None) == masks and (entry["aupro"] is not None) == masks
    printed = capsys.readouterr().out
    assert "| ae_l2 |" in printed and "| method | crack | hole |" in printed
