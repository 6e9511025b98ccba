"""MVTec AD, loaded from its official folder layout.

Also home of the image/mask reading shared with the other folder-based benchmarks (BTAD).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .download import DatasetError, cache_dir, closest_name_error, download_and_extract

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
MVTEC_ARCHIVE = "mvtec_anomaly_detection.tar.xz"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
# MVTec's direct links rotate (anomalib has had to update theirs several times). When this one
# stops working, get a fresh link from MVTEC_PAGE and pass it as MVTecAD(..., url=...); the
# checksum stays the same for the same archive.
MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
SPLITS = ("train", "test")


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """An image file as a float32 3×size×size tensor in [0, 1]; grey images are repeated."""
    image = _open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def load_mask(path: str | os.PathLike, size: int) -> torch.Tensor:
    """A ground-truth mask file as a float32 1×size×size tensor of 0/1."""
    mask = np.asarray(_open(path).convert("L").resize((size, size), Image.NEAREST))
    # Above half the brightest value, so that masks stored as 0/255 and as 0/1 both work.
    return torch.from_numpy((mask > mask.max() / 2).astype(np.float32))[None]


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"Cannot read image {path}: {err}. The file is missing, damaged or not an image; "
            "delete the dataset folder and extract the archive again."
        ) from err


def list_images(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes`` (lower case), sorted; [] if no folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def paired_defects(
    image_folder: Path, mask_folder: Path, suffixes: tuple[str, ...], mask_tag: str = ""
) -> list[tuple[Path, int, Path]]:
    """Samples ``(image, 1, mask)``, the mask of ``<stem>.<ext>`` being ``<stem><mask_tag>.<ext>``.

    An image without a mask, or a mask without an image, is an error.
    """
    kinds = " or ".join(suffixes)
    masks = {p.stem: p for p in list_images(mask_folder, suffixes)}
    samples = []
    for image in list_images(image_folder, suffixes):
        mask = masks.pop(image.stem + mask_tag, None)
        if mask is None:
            raise DatasetError(
                f"Defective test image {image} has no mask: expected "
                f"{mask_folder / (image.stem + mask_tag)} ({kinds}). "
                "Restore the mask from the archive, or remove the image."
            )
        samples.append((image, 1, mask))
    if masks:
        orphan = masks[min(masks)]
        expected = image_folder / orphan.stem.removesuffix(mask_tag)
        raise DatasetError(
            f"Mask {orphan} has no test image: expected {expected} ({kinds}). "
            "Restore the image from the archive, or remove the mask."
        )
    return samples


def folder_samples(
    folder: Path, split: str, normal: str, suffixes: tuple[str, ...], mask_tag: str = ""
) -> list[tuple[Path, int, Path | None]]:
    """Samples of an MVTec-style tree, checked: every defect has its mask and vice versa.

    ``train/<normal>/`` holds normal images; ``test/<normal>/`` normal and ``test/<defect>/``
    defective ones, with masks ``ground_truth/<defect>/<stem><mask_tag>``.
    """
    fix = f"The extraction is incomplete: delete {folder} and extract the archive again."
    if split == "train":
        train = folder / "train" / normal
        images = list_images(train, suffixes)
        if not images:
            raise DatasetError(f"No training images in {train} (missing or empty). {fix}")
        return [(path, 0, None) for path in images]
    test, truth = folder / "test", folder / "ground_truth"
    if not test.is_dir():
        raise DatasetError(f"Test folder {test} not found. {fix}")
    if not truth.is_dir():
        raise DatasetError(f"Ground-truth folder {truth} not found: no masks. {fix}")
    samples = [(path, 0, None) for path in list_images(test / normal, suffixes)]
    defects = {p.name for p in test.iterdir() if p.is_dir()}
    defects |= {p.name for p in truth.iterdir() if p.is_dir()}
    for defect in sorted(defects - {normal}):
        samples += paired_defects(test / defect, truth / defect, suffixes, mask_tag)
    if not samples:
        raise DatasetError(f"No test images in {test}. {fix}")
    return samples


class AnomalyImages(Dataset):
    """Samples ``(image path, label, mask path or None)`` read and resized on access.

    Items are dicts: ``image`` 3×H×W float32 in [0, 1], ``label`` 0 normal / 1 anomalous,
    ``mask`` 1×H×W float32 0/1 (zeros for normal images), ``path``.
    """

    def __init__(self, samples: list[tuple[Path, int, Path | None]], image_size: int):
        self.samples = samples
        self.image_size = image_size
        self.labels = np.array([label for _, label, _ in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label, mask_path = self.samples[index]
        image = load_image(path, self.image_size)
        if mask_path is None:
            mask = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask = load_mask(mask_path, self.image_size)
        return {"image": image, "label": label, "mask": mask, "path": str(path)}


class MVTecAD(AnomalyImages):
    """One MVTec AD category, train (good only) or test (good and defective, with masks).

    ``root`` holds the extracted archive: ``<root>/<category>/train/good/*.png``,
    ``<category>/test/<defect>/*.png`` (``good`` is normal) and
    ``<category>/ground_truth/<defect>/<stem>_mask.png``. ``root=None`` means
    ``cache_dir() / "mvtec_ad"``. Images are resized to ``image_size`` (bilinear), masks with
    nearest neighbour. Every image comes out with 3 channels: the grey categories (grid, screw,
    zipper) are repeated over R, G and B so that all categories fit the same models.

    ``download=True`` fetches and unpacks the 4.9 GB archive when the category is missing (see
    ``MVTEC_URL`` about links that rotate; pass a fresh one as ``url``).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        category: str,
        split: str,
        image_size: int = 256,
        download: bool = False,
        url: str = MVTEC_URL,
    ):
        if category not in MVTEC_CATEGORIES:
            raise closest_name_error("MVTec AD category", category, MVTEC_CATEGORIES)
        if split not in SPLITS:
            raise closest_name_error("split", split, SPLITS)
        root = Path(root) if root is not None else cache_dir() / "mvtec_ad"
        if download and not (root / category).is_dir():
            try:
                download_and_extract(url, MVTEC_ARCHIVE, MVTEC_SHA256, root)
            except DatasetError as err:
                raise DatasetError(
                    f"{err}\nMVTec's direct links change over time: if the download failed, get "
                    f"a current link from {MVTEC_PAGE} and pass it as MVTecAD(..., url=...)."
                ) from err
        folder = root / category
        if not folder.is_dir():
            raise DatasetError(
                f"MVTec AD category folder {folder} not found. Download {MVTEC_ARCHIVE} "
                f"(sha256 {MVTEC_SHA256}) from {MVTEC_PAGE} and either extract it into {root} "
                f"(so that {folder / 'train' / 'good'} exists) or put the archive itself in "
                f"{root.parent} and pass download=True."
            )
        self.category = category
        self.split = split
        super().__init__(folder_samples(folder, split, "good", (".png",), "_mask"), image_size)
