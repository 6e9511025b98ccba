"""Images of one's own in MVTec AD's folder layout, and the image reading every folder-based set shares.

:class:`MVTecLayoutFolder` loads any tree laid out as MVTec AD (``train/good``, ``test/good``,
``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``), with or without masks;
:class:`~adcourse.data.MVTecAD` and :class:`~adcourse.data.BTAD` are built on it.

Image files are read at their own bit depth and scaled by their type's range: 8-bit files by 255,
16-bit ones by 65 535 (Pillow's ``convert("RGB")`` would clip them at 255), floating-point TIFFs as
they are when they lie in [0, 1]. Colour files of 16 bits per channel come through Pillow, which
keeps their high byte (the right scale, in steps of 1/255). Anything else is refused with an error
that names the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .arguments import (DatasetArgumentError, DatasetTypeError, check_choice, check_folder_name, check_fraction,
                        check_int, check_root, held_out_count)
from .download import DatasetError

SPLITS = ("train", "test")
# Normal images held out from training, to fix a threshold on (adcourse.metrics.normal_threshold):
# every built-in and folder dataset offers this third split.
VALIDATION = "validation"
ALL_SPLITS = (*SPLITS, VALIDATION)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL = "good"  # the defect type of every normal image, whatever its folder is called

_GREY_MODES = ("1", "L", "LA", "La")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SUPPORTED = ("8- or 16-bit greyscale or colour (PNG, TIFF, BMP, JPEG), or a floating-point TIFF with "
              "values in [0, 1]")


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an image file as H×W×C (C = 1 for grey, 3 for colour; alpha dropped), in the
    file's own type: ``uint8``, ``uint16`` or ``float32``. Raises :class:`DatasetError` naming the
    file when it is missing, damaged or of a kind the course does not read."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            pixels = _pixels_of(image, path)
    except UnidentifiedImageError as error:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise _unreadable(path, error) from error
        pixels = _tiff_pixels(path, error)  # floating-point and other TIFFs that Pillow does not open
    except (OSError, SyntaxError, ValueError) as error:
        raise _unreadable(path, error) from error
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _pixels_of(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in _GREY_MODES:
        return np.asarray(image.convert("L"))
    if mode in _COLOUR_MODES:
        return np.asarray(image.convert("RGB"))
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)
    if mode == "I" and image.format == "PNG":  # Pillow's name for 16-bit greyscale PNG in some versions
        return np.asarray(image).astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    raise _unsupported(path, f"Pillow mode {mode!r}")


def _tiff_pixels(path: Path, pillow_error: Exception) -> np.ndarray:
    import tifffile  # installed with scikit-image

    try:
        pixels = tifffile.imread(path)
    except Exception as error:  # tifffile raises many kinds for a damaged file
        raise _unreadable(path, error) from error
    if pixels.size == 0:  # what tifffile returns for a file without a readable page
        raise _unreadable(path, "no image data") from pillow_error
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2, 3, 4):
        pixels = pixels[..., :1] if pixels.shape[2] <= 2 else pixels[..., :3]  # drop alpha
    elif pixels.ndim != 2:
        raise _unsupported(path, f"an array of shape {pixels.shape} (expected H×W or H×W×C)")
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32)
    raise _unsupported(path, f"pixels of type {pixels.dtype}")


def _unreadable(path: Path, error: Exception | str) -> DatasetError:
    return DatasetError(f"Cannot read image {path}: {error}. The file is missing, damaged or not an image; "
                        "replace it (for a downloaded dataset: delete its folder and extract the archive again).")


def _unsupported(path: Path, what: str) -> DatasetError:
    return DatasetError(f"Image {path} holds {what}, which the course does not read: save it as {_SUPPORTED}.")


def to_unit_range(pixels: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``pixels`` of :func:`read_pixels` as float32 in [0, 1]: divided by 255 or 65 535 by type;
    floating-point pixels must already lie in [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise _unsupported(Path(path), f"floating-point values in [{np.nanmin(pixels):g}, {np.nanmax(pixels):g}] "
                                       "(NaN, infinite or outside [0, 1])")
    return pixels.astype(np.float32)


def resize_image(pixels: np.ndarray, size: int, path: str | os.PathLike) -> torch.Tensor:
    """Pixels of :func:`read_pixels` as a float32 3×size×size tensor in [0, 1] (bilinear; grey
    repeated over three channels). 8-bit pixels are resized as bytes by Pillow, as the loaders always
    did; deeper ones channel by channel in floating point, so that no precision is lost."""
    if pixels.dtype == np.uint8:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        resized = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
        resized = resized[..., None] if resized.ndim == 2 else resized
    else:
        unit = to_unit_range(pixels, path)
        channels = [Image.fromarray(np.ascontiguousarray(unit[..., c])) for c in range(unit.shape[2])]
        resized = np.stack([np.asarray(channel.resize((size, size), Image.BILINEAR)) for channel in channels],
                           axis=-1).clip(0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32)).permute(2, 0, 1)
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


def resize_mask(pixels: np.ndarray, size: int) -> torch.Tensor:
    """Pixels of a mask file as a float32 1×size×size tensor of 0/1 (nearest neighbour): defect where
    any channel is above half the brightest value, so that masks stored as 0/255, 0/1 or 0/65535 all work."""
    values = pixels.max(axis=2).astype(np.float64)
    defect = (values > values.max() / 2).astype(np.uint8) * 255
    resized = np.asarray(Image.fromarray(defect).resize((size, size), Image.NEAREST))
    return torch.from_numpy((resized > 0).astype(np.float32))[None]


# Files that operating systems drop into folders of pictures: never part of a dataset.
SYSTEM_FILES = ("thumbs.db", "desktop.ini")


def list_images(folder: Path, suffixes: tuple[str, ...], strict: bool = True) -> list[Path]:
    """Image files of ``folder`` with one of ``suffixes`` (any case), sorted; [] if no folder.

    Hidden files and :data:`SYSTEM_FILES` are left out, and so are images of the kinds in
    :data:`IMAGE_SUFFIXES` that ``suffixes`` leaves out on purpose. With ``strict`` anything else
    that would silently go missing from the dataset is an error naming it: a link whose target is
    gone, a file that cannot be read, a file or folder that is not an image."""
    if not folder.is_dir():
        return []
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.lower() in SYSTEM_FILES:
            continue
        if path.suffix.lower() in suffixes and path.is_file() and os.access(path, os.R_OK):
            images.append(path)
            continue
        if not strict:
            continue
        if path.is_symlink() and not path.exists():
            raise DatasetError(f"{path} is a link to {os.readlink(path)}, which does not exist: the image would be "
                               "left out of the dataset. Restore the file it points to, or remove the link.")
        if path.suffix.lower() in suffixes and path.is_file():
            raise DatasetError(f"Cannot read image {path}: permission denied. Make it readable (chmod +r), or move "
                               "it out of the dataset.")
        if path.is_dir():
            raise DatasetError(f"{path} is a folder inside {folder}, which should hold only images: its contents would "
                               "be left out of the dataset. Move them up into it, or move the folder away.")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            continue  # an image kind that `suffixes` leaves out on purpose
        raise DatasetError(f"{path} is not an image the course reads ({', '.join(suffixes)}): it would be left out "
                           f"of the dataset. Convert it to PNG, or move it out of {folder}.")
    return images


def _subfolders(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")} if folder.is_dir() else set()


class Sample(NamedTuple):
    """One image of a folder-based set: its file, label (0 normal, 1 anomalous), mask file (None for
    normal images and sets without masks) and defect type (:data:`NORMAL` for normal images)."""
    image: Path
    label: int
    mask: Path | None
    defect: str


def paired_defects(image_folder: Path, mask_folder: Path, suffixes: tuple[str, ...], mask_tag: str = "") -> list[Sample]:
    """The defective images of ``image_folder`` with their masks: the mask of ``<stem>.<ext>`` is
    ``<stem><mask_tag>.<ext>`` in ``mask_folder``. An image without a mask, or a mask without an
    image, is an error."""
    kinds = " or ".join(suffixes)
    masks = {p.stem: p for p in list_images(mask_folder, suffixes)}
    samples = []
    for image in list_images(image_folder, suffixes):
        mask = masks.pop(image.stem + mask_tag, None)
        if mask is None:
            raise DatasetError(
                f"Defective test image {image} has no mask: expected {mask_folder / (image.stem + mask_tag)} "
                f"({kinds}). Restore the mask, or remove the image.")
        samples.append(Sample(image, 1, mask, image_folder.name))
    if masks:
        orphan = masks[min(masks)]
        expected = image_folder / orphan.stem.removesuffix(mask_tag)
        raise DatasetError(f"Mask {orphan} has no test image: expected {expected} ({kinds}). "
                           "Restore the image, or remove the mask.")
    return samples


class AnomalyImages(Dataset):
    """:class:`Sample` s read and resized on access.

    Items are dicts: ``image`` 3×H×W float32 in [0, 1], ``label`` 0 normal / 1 anomalous, ``mask``
    1×H×W float32 0/1 (zeros for normal images and sets without masks), ``defect`` (the defect type,
    ``"good"`` for normal images) and ``path``. ``labels`` and ``defect_types`` hold every item's.
    """

    def __init__(self, samples: list[Sample], image_size: int):
        self.samples = samples
        self.image_size = check_int("image_size", image_size, minimum=2)
        self.labels = np.array([sample.label for sample in samples], dtype=np.int64)
        self.defect_types = [sample.defect for sample in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pixels = read_pixels(sample.image)
        image = resize_image(pixels, self.image_size, sample.image)
        if sample.mask is None:
            mask = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask_pixels = read_pixels(sample.mask)
            _check_same_shape(sample.image, pixels, sample.mask, mask_pixels)
            mask = resize_mask(mask_pixels, self.image_size)
        return {"image": image, "label": sample.label, "mask": mask, "defect": sample.defect, "path": str(sample.image)}


def _check_same_shape(image_path: Path, image: np.ndarray, mask_path: Path, mask: np.ndarray) -> None:
    """A mask may be stored at another resolution, but not with another aspect ratio: that is the mask
    of another image."""
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
    if abs(ih * mw - mh * iw) > 0.01 * ih * mw:
        raise DatasetError(f"Mask {mask_path} ({mw}×{mh} pixels) does not fit its image {image_path} "
                           f"({iw}×{ih}): replace the mask with the one made for this image.")


class MVTecLayoutFolder(AnomalyImages):
    """Any folder in MVTec AD's layout, such as a collection of one's own images::

        <root>/train/good/*.png                         normal training images
        <root>/test/good/*.png                          normal test images
        <root>/test/<defect>/*.png                      defective test images, one folder per defect type
        <root>/ground_truth/<defect>/<stem>_mask.png    their masks (optional)

    ``split`` is ``"train"`` or ``"test"``. Images may be PNG, TIFF, BMP or JPEG, 8- or 16-bit,
    greyscale or colour (see the module's notes); they come out with 3 channels, resized to
    ``image_size`` (bilinear), masks with nearest neighbour. Items are as in :class:`AnomalyImages`;
    ``defect`` is the name of the image's test folder.

    ``masks``: ``None`` (default) reads ``ground_truth/`` when it exists, and then every defective
    image needs its mask; ``True`` requires it; ``False`` ignores it. Without masks
    (``has_masks`` false) every mask is zeros, and the benchmark leaves out the pixel metrics.
    ``normal`` names the folder of normal images and ``mask_tag`` what ends a mask's file stem.

    ``split="validation"``: normal images apart from training and test, to fix a threshold on. They
    are ``<root>/validation/good/`` where that folder exists (MVTec AD 2's layout); otherwise
    ``validation_fraction`` of ``train/good`` (at least 2 images, drawn once with a fixed seed),
    which the ``"train"`` split of the same ``validation_fraction`` then leaves out. The default,
    0, keeps every training image for training.
    """

    # What to do about a tree that does not fit the layout (subclasses for downloaded sets say "extract again").
    LAYOUT_FIX = ("Lay the folder out as MVTec AD: train/good/ and test/good/ for normal images, "
                  "test/<defect>/ for defective ones, masks (optional) in ground_truth/<defect>/<stem>_mask.png.")

    def __init__(self, root: str | os.PathLike, split: str, image_size: int = 256, normal: str = NORMAL,
                 mask_tag: str = "_mask", masks: bool | None = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                 validation_fraction: float = 0.0):
        if root is None:
            raise DatasetTypeError("root must be the folder that holds train/ and test/, got None")
        root = check_root(root, Path())
        check_choice("split", split, ALL_SPLITS)
        normal = check_folder_name("normal", normal)
        validation_fraction = check_fraction("validation_fraction", validation_fraction)
        if masks not in (None, True, False):
            raise DatasetTypeError(f"masks must be None (use ground_truth/ when present), True or False, got {masks!r}")
        if not root.is_dir():
            raise DatasetError(f"{'Not a folder' if root.exists() else 'Folder not found'}: {root}. {self.LAYOUT_FIX}")
        self.root, self.split = root, split
        self.has_masks = (root / "ground_truth").is_dir() if masks is None else masks
        if split == "test":
            samples = self._test_samples(root, normal, suffixes, mask_tag)
        elif (root / VALIDATION / normal).is_dir():  # a validation folder of its own: training keeps every image
            samples = self._train_samples(root, normal, suffixes) if split == "train" else \
                [Sample(path, 0, None, NORMAL) for path in list_images(root / VALIDATION / normal, suffixes)]
        else:
            samples = self._held_out(self._train_samples(root, normal, suffixes), split, validation_fraction)
        if not samples:
            raise DatasetError(f"No validation images in {root / VALIDATION / normal} ({', '.join(suffixes)}). "
                               f"{self.LAYOUT_FIX}")
        super().__init__(samples, image_size)

    def _held_out(self, samples: list[Sample], split: str, fraction: float) -> list[Sample]:
        """The training or the validation part of ``train/<normal>`` when ``fraction`` of it is held out."""
        if split == VALIDATION and not fraction:
            raise DatasetArgumentError(
                f"split='validation': {self.root} has no {VALIDATION}/ folder of normal images; pass "
                "validation_fraction=0.1 (for example) to hold out that share of the training images, or add "
                f"normal images in {self.root / VALIDATION / NORMAL}")
        if not fraction:
            return samples
        count = held_out_count(fraction, len(samples), str(self.root))
        # one fixed draw: the same images are held out whatever the run's seed
        held = set(np.random.default_rng(0).permutation(len(samples))[:count].tolist())
        return [sample for k, sample in enumerate(samples) if (k in held) == (split == VALIDATION)]

    def _train_samples(self, root: Path, normal: str, suffixes) -> list[Sample]:
        folder = root / "train" / normal
        images = list_images(folder, suffixes)
        if not images:
            loose = list_images(root / "train", suffixes, strict=False)
            hint = f" {len(loose)} images lie directly in {root / 'train'}: move them into {folder}." if loose else ""
            raise DatasetError(f"No training images in {folder} (missing or empty; {', '.join(suffixes)}).{hint} "
                               f"{self.LAYOUT_FIX}")
        return [Sample(path, 0, None, NORMAL) for path in images]

    def _test_samples(self, root: Path, normal: str, suffixes, mask_tag: str) -> list[Sample]:
        test, truth = root / "test", root / "ground_truth"
        if not test.is_dir():
            raise DatasetError(f"Test folder {test} not found. {self.LAYOUT_FIX}")
        if self.has_masks and not truth.is_dir():
            raise DatasetError(f"Ground-truth folder {truth} not found: no masks. {self.LAYOUT_FIX}")
        samples = [Sample(path, 0, None, NORMAL) for path in list_images(test / normal, suffixes)]
        defects = _subfolders(test) | (_subfolders(truth) if self.has_masks else set())
        for defect in sorted(defects - {normal}):
            if self.has_masks:
                samples += paired_defects(test / defect, truth / defect, suffixes, mask_tag)
            else:
                samples += [Sample(path, 1, None, defect) for path in list_images(test / defect, suffixes)]
        if not samples:
            loose = list_images(test, suffixes, strict=False)
            hint = (f" {len(loose)} images lie directly in {test}: move normal ones into {test / normal} and "
                    "defective ones into a folder per defect type.") if loose else ""
            raise DatasetError(f"No test images in {test / normal} or any test/<defect> folder "
                               f"({', '.join(suffixes)}).{hint} {self.LAYOUT_FIX}")
        return samples

