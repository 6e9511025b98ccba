"""The one-class protocol on torchvision's small classification sets (MNIST family, CIFAR-10)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

from .arguments import (DatasetArgumentError, check_choice, check_class_index, check_fraction, check_int, check_root,
                        check_seed, held_out_count)
from .download import DatasetError, cache_dir
from .folder import ALL_SPLITS, VALIDATION

TORCHVISION_SETS = {
    "MNIST": datasets.MNIST,
    "FashionMNIST": datasets.FashionMNIST,
    "KMNIST": datasets.KMNIST,
    "CIFAR10": datasets.CIFAR10,
}


class TorchvisionOneClass(Dataset):
    """One class of a torchvision data set as "normal", every other class as "anomalous".

    ``split="train"``: the training images of ``normal_class`` only (label 0).
    ``split="test"``: every test image of ``normal_class`` (label 0) plus as many test images
    drawn, without replacement and seeded by ``seed``, from the other classes (label 1).
    ``split="validation"``: ``validation_fraction`` of the training images of ``normal_class`` (at
    least 2, drawn with ``seed``), which the training split of the same ``validation_fraction`` then
    leaves out; the default, 0, trains on every one.

    Items are dicts: ``image`` float32 C×H×W in [0, 1] (1 channel for the MNIST family, 3 for
    CIFAR-10), resized to ``image_size`` if given; ``label``; ``mask`` all zeros (no masks);
    ``target`` the original class. ``root=None`` means ``cache_dir() / "torchvision"``.
    ``base`` replaces the torchvision data set (e.g. a small stand-in in tests): anything with
    ``targets`` whose items are ``(PIL image, class)``.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike | None,
        normal_class: int,
        split: str,
        image_size: int | None = None,
        download: bool = False,
        seed: int = 0,
        base: Dataset | None = None,
        validation_fraction: float = 0.0,
    ):
        check_choice("torchvision data set", name, tuple(TORCHVISION_SETS))
        check_choice("split", split, ALL_SPLITS)
        validation_fraction = check_fraction("validation_fraction", validation_fraction, high=0.5, high_open=False)
        if split == VALIDATION and not validation_fraction:
            raise DatasetArgumentError("split='validation' needs validation_fraction > 0, such as 0.1: the share of "
                                       "the normal class's training images held out of training")
        if image_size is not None:
            image_size = check_int("image_size", image_size)
        seed = check_seed(seed)
        root = check_root(root, cache_dir() / "torchvision")
        if base is None:
            base = _load(name, root, split != "test", download)
        targets = np.asarray(base.targets)
        normal_class = check_class_index(f"normal_class of {name}", normal_class, np.unique(targets).tolist())
        normal = np.flatnonzero(targets == normal_class)
        if split != "test":
            indices = normal
            if validation_fraction:
                count = held_out_count(validation_fraction, len(normal), f"{name} class {normal_class}")
                held = np.zeros(len(normal), dtype=bool)
                held[np.random.default_rng([seed, ALL_SPLITS.index(VALIDATION)]).permutation(len(normal))[:count]] = True
                indices = normal[held if split == VALIDATION else ~held]
        else:
            others = np.flatnonzero(targets != normal_class)
            rng = np.random.default_rng(seed)
            drawn = rng.choice(others, size=min(len(normal), len(others)), replace=False)
            indices = np.sort(np.concatenate([normal, drawn]))
        self.name, self.normal_class, self.split = name, normal_class, split
        self.base = base
        self.image_size = image_size
        self.indices = indices
        self.targets = targets[indices]
        self.labels = (self.targets != normal_class).astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        image, _ = self.base[int(self.indices[index])]
        if self.image_size is not None:
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        image = TF.to_tensor(image)
        return {
            "image": image,
            "label": int(self.labels[index]),
            "mask": torch.zeros(1, *image.shape[1:]),
            "target": int(self.targets[index]),
        }


def _load(name: str, root: Path, train: bool, download: bool) -> Dataset:
    cls = TORCHVISION_SETS[name]
    try:
        return cls(root, train=train, download=download)
    except (RuntimeError, OSError) as err:
        if hasattr(cls, "resources"):  # the MNIST family: several .gz files
            files = ", ".join(filename for filename, _ in cls.resources)
            source, folder = cls.mirrors[0], root / name / "raw"
        else:
            files, folder = cls.filename, root
            source = cls.url.rsplit("/", 1)[0] + "/"
        raise DatasetError(
            f"{name} could not be loaded from {root} ({err}). "
            + ("" if download else "Pass download=True to fetch it. ")
            + f"Offline: fetch {files} from {source} on another machine, put it all in {folder} "
            "and pass download=True (files already there are checked and unpacked, not "
            "downloaded again)."
        ) from err
