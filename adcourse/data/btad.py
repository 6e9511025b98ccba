"""BTAD (beanTech Anomaly Detection), loaded from its official folder layout."""

from __future__ import annotations

import os
from pathlib import Path

from .arguments import check_choice, check_root
from .download import DatasetError, cache_dir, download_and_extract
from .folder import ALL_SPLITS, MVTecLayoutFolder

BTAD_PRODUCTS = ("01", "02", "03")
BTAD_URL = "https://avires.dimi.uniud.it/papers/btad/btad.zip"
BTAD_ARCHIVE = "btad.zip"
BTAD_SHA256 = "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a"
# The archive holds one folder, BTech_Dataset_transformed/, with the products inside.
BTAD_INNER = "BTech_Dataset_transformed"


class BTAD(MVTecLayoutFolder):
    """One BTAD product, train (``ok`` only) or test (``ok`` and defective ``ko``, with masks); validation
    (``ok`` only) holds out ``validation_fraction`` of the training images, as in :class:`MVTecLayoutFolder`.

    ``root`` holds ``<nn>/train/ok``, ``<nn>/test/ok``, ``<nn>/test/ko`` and
    ``<nn>/ground_truth/ko`` (images .bmp or .png, masks paired by file stem, .bmp or .png);
    ``<root>/BTech_Dataset_transformed/<nn>``, as the archive unpacks, works too.
    ``root=None`` means ``cache_dir() / "btad"``. Items are as in :class:`MVTecAD`: 3-channel
    images resized to ``image_size``, 0/1 masks; ``defect`` is ``"ko"`` for defective images and
    ``"good"`` for normal ones, as in every dataset of the course.
    """

    LAYOUT_FIX = "The extraction is incomplete: delete the product folder and extract the archive again."

    def __init__(
        self,
        root: str | os.PathLike | None,
        product: str,
        split: str,
        image_size: int = 256,
        download: bool = False,
        validation_fraction: float = 0.0,
    ):
        check_choice("BTAD product", product, BTAD_PRODUCTS)
        check_choice("split", split, ALL_SPLITS)
        root = check_root(root, cache_dir() / "btad")
        if download and _find(root, product) is None:
            download_and_extract(BTAD_URL, BTAD_ARCHIVE, BTAD_SHA256, root)
        folder = _find(root, product)
        if folder is None:
            raise DatasetError(
                f"BTAD product folder {root / product} not found. Download {BTAD_ARCHIVE} "
                f"(sha256 {BTAD_SHA256}) from {BTAD_URL} and either extract it into {root} "
                f"(so that {root / BTAD_INNER / product / 'train' / 'ok'} exists) or put the "
                f"archive itself in {root.parent} and pass download=True."
            )
        self.product = product
        super().__init__(folder, split, image_size, normal="ok", mask_tag="", masks=True, suffixes=(".bmp", ".png"),
                         validation_fraction=validation_fraction)


def _find(root: Path, product: str) -> Path | None:
    for folder in (root / product, root / BTAD_INNER / product):
        if folder.is_dir():
            return folder
    return None
