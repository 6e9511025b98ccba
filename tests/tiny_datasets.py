"""Small copies of the course's real datasets, in the layouts their loaders read, for the tests.

``make_course_data(root)`` fills ``root`` as ``$ADCOURSE_DATA`` would be after the downloads: MVTec AD
(two categories), BTAD (one product), COIL-100 (two objects), and torchvision's on-disk files of MNIST,
Fashion-MNIST, KMNIST and CIFAR-10, each with a few images per class. The images are noise with a
brighter square where a test image is defective, so every metric has both classes to work with.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MVTEC_CATEGORIES = ("bottle", "leather")
BTAD_PRODUCT = "01"
COIL_OBJECTS = (1, 2)
MNIST_FAMILY = ("MNIST", "FashionMNIST", "KMNIST")


def save_image(path, value=128, mode="RGB", size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(path)


def save_mask(path, size=8):
    """Left half defective."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    Image.fromarray(mask).save(path)


def write_idx(path, array):
    """An MNIST idx file: magic (0, 0, type 0x08 = ubyte, ndim), the sizes, the bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _noise(rng, size, defect=False):
    image = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        mask[size // 4: size // 2, size // 4: size // 2] = 255
        image[mask > 0] = 230
    return Image.fromarray(image), Image.fromarray(mask)


def _layout(folder: Path, rng, good: str, defects: tuple[str, ...], image_suffix: str, mask_name, size=32,
            n_train=4):
    """MVTec AD's layout (BTAD's with ``good="ok"``): train/<good>, test/<good|defect>, ground_truth/<defect>."""
    for k in range(n_train):
        _save(_noise(rng, size)[0], folder / "train" / good / f"{k:03d}{image_suffix}")
    for k in range(2):
        _save(_noise(rng, size)[0], folder / "test" / good / f"{k:03d}{image_suffix}")
    for defect in defects:
        for k in range(2):
            image, mask = _noise(rng, size, defect=True)
            _save(image, folder / "test" / defect / f"{k:03d}{image_suffix}")
            _save(mask, folder / "ground_truth" / defect / mask_name(k))


def _save(image: Image.Image, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_course_data(root: str | Path) -> Path:
    root = Path(root)
    rng = np.random.default_rng(0)
    for category in MVTEC_CATEGORIES:
        _layout(root / "mvtec_ad" / category, rng, "good", ("crack", "cut"), ".png", lambda k: f"{k:03d}_mask.png")
    _layout(root / "btad" / BTAD_PRODUCT, rng, "ok", ("ko",), ".bmp", lambda k: f"{k:03d}.png")
    for obj in COIL_OBJECTS:  # 72 views, every 5 degrees, as in the Columbia archive
        for angle in range(0, 360, 5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                _parent(root / "coil-100" / f"obj{obj}__{angle}.png"))
    torchvision_root = root / "torchvision"
    for name in MNIST_FAMILY:
        raw = torchvision_root / name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", 60), ("t10k", 40)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    write_cifar10(torchvision_root / "cifar-10-batches-py", rng)
    return root


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_cifar10(folder: Path, rng, per_batch: int = 20):
    """CIFAR-10's python pickles (five training batches, a test batch, the class names). torchvision
    checks each file's MD5 against the real archive's, which a small copy cannot match: see
    ``CIFAR_MD5_STARTUP`` for how the tests' kernels skip that check."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [k % 10 for k in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


# Run at the start of every kernel the tests start (an IPython startup file): the small CIFAR-10 copy
# above cannot have the real archive's MD5 sums, so torchvision's integrity check is told to pass.
CIFAR_MD5_STARTUP = """\
import torchvision.datasets
torchvision.datasets.CIFAR10._check_integrity = lambda self: True
"""
