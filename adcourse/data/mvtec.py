"""MVTec AD, loaded from its official folder layout (or any category folder of one's own in that layout)."""

from __future__ import annotations

import os

from .arguments import check_choice, check_folder_name, check_root, closest_name_error
from .download import DatasetError, cache_dir, download_and_extract
from .folder import ALL_SPLITS, NORMAL, MVTecLayoutFolder

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


class MVTecAD(MVTecLayoutFolder):
    """One MVTec AD category, train (good only) or test (good and defective, with masks); validation
    (good only) holds out ``validation_fraction`` of the training images, as in :class:`MVTecLayoutFolder`.

    ``root`` holds the extracted archive: ``<root>/<category>/train/good/*.png``,
    ``<category>/test/<defect>/*.png`` (``good`` is normal) and
    ``<category>/ground_truth/<defect>/<stem>_mask.png``. ``root=None`` means
    ``cache_dir() / "mvtec_ad"``. Images are resized to ``image_size`` (bilinear), masks with
    nearest neighbour. Every image comes out with 3 channels: the grey categories (grid, screw,
    zipper) are repeated over R, G and B so that all categories fit the same models. Items are as in
    :class:`~adcourse.data.MVTecLayoutFolder`, ``defect`` being the test folder's name.

    ``category`` is one of the 15 official names, or the name of any folder of one's own under
    ``root`` in the same layout (masks required; :class:`~adcourse.data.MVTecLayoutFolder` also
    takes a folder without them).

    ``download=True`` fetches and unpacks the 4.9 GB archive when an official category is missing
    (see ``MVTEC_URL`` about links that rotate; pass a fresh one as ``url``).
    """

    LAYOUT_FIX = ("The extraction is incomplete: delete the category folder and extract the archive again "
                  "(a folder of your own: lay it out as MVTec AD, masks in ground_truth/<defect>/<stem>_mask.png).")

    def __init__(
        self,
        root: str | os.PathLike | None,
        category: str,
        split: str,
        image_size: int = 256,
        download: bool = False,
        url: str = MVTEC_URL,
        validation_fraction: float = 0.0,
    ):
        root = check_root(root, cache_dir() / "mvtec_ad")
        check_choice("split", split, ALL_SPLITS)
        category = check_folder_name("MVTec AD category", category)
        official = category in MVTEC_CATEGORIES
        if not official and not (root / category).is_dir():
            error = closest_name_error("MVTec AD category", category, MVTEC_CATEGORIES)
            raise type(error)(f"{error} A category folder of your own works too, but {root / category} does not exist.")
        if official and download and not (root / category).is_dir():
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
        super().__init__(folder, split, image_size, normal=NORMAL, mask_tag="_mask", masks=True,
                         validation_fraction=validation_fraction)
