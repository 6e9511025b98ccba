"""Built-in datasets that need no network: texture photographs and handwritten digits.

Both are real images shipped inside packages the course already depends on:
scikit-image's texture photographs (``brick``, ``grass``, ``gravel``) and scikit-learn's
handwritten digits (``load_digits``, 1797 images of 8×8 pixels).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from ..corruption import DEFECTS, TEXTURES, texture_photo
from .arguments import (DatasetArgumentError, check_choice, check_class_index, check_fraction, check_int, check_seed,
                        held_out_count)
from .folder import ALL_SPLITS, VALIDATION


class InMemoryAnomalyDataset(Dataset):
    """Images, labels and masks held as tensors; items are dicts ``image``, ``label``, ``mask``
    (and ``defect`` when the defect types are known).

    ``images``: N×C×H×W floats in [0, 1]; ``labels``: N ints (0 normal, 1 anomalous);
    ``masks``: N×1×H×W of 0/1, all zeros where there is no defect or no mask; ``defect_types``: N
    names (``"good"`` for normal images), or None where the set has no defect types.
    """

    def __init__(self, images: torch.Tensor, labels, masks: torch.Tensor | None = None, defect_types=None):
        self.images = images.float()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.masks = torch.zeros_like(self.images[:, :1]) if masks is None else masks.float()
        self.defect_types = None if defect_types is None else [str(name) for name in defect_types]
        sizes = {len(self.images), len(self.labels), len(self.masks)}
        if len(sizes | ({len(self.defect_types)} if defect_types is not None else set())) > 1:
            raise ValueError(f"{len(self.images)} images, {len(self.labels)} labels and {len(self.masks)} masks"
                             + ("" if defect_types is None else f" and {len(self.defect_types)} defect types"))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], "label": int(self.labels[index]), "mask": self.masks[index]}
        if self.defect_types is not None:
            item["defect"] = self.defect_types[index]
        return item


class TextureDefects(InMemoryAnomalyDataset):
    """Patches of a real texture photograph; test patches carry synthetic defects with exact masks.

    The photograph is split by rows: training patches come from the top ``train_rows`` of it,
    test patches from the rest, so that no test pixel was seen in training. With ``validation_rows``
    > 0 the band of that height just above the test rows is held out of training: ``split=
    "validation"`` draws normal patches from it alone (64 by default), which shares no pixel with
    training or test patches (the default, 0, trains on all of the top ``train_rows``). Half of the test patches
    receive a defect from :data:`adcourse.corruption.DEFECTS` (stain, scratch, foreign patch, Perlin
    region; drawn in turn), the other half stay normal; ``defect_types`` (and each item's ``defect``)
    names it, ``"good"`` for normal patches. Everything is drawn from ``seed``.
    """

    def __init__(self, texture: str = "brick", split: str = "train", patch_size: int = 64,
                 n: int | None = None, seed: int = 0, train_rows: float = 0.6, defects=None,
                 validation_rows: float = 0.0):
        check_choice("texture", texture, TEXTURES)
        check_choice("split", split, ALL_SPLITS)
        patch_size = check_int("patch_size", patch_size, minimum=8)
        n = None if n is None else check_int("n", n)
        seed = check_seed(seed)
        check_fraction("train_rows", train_rows, low_open=True)
        check_fraction("validation_rows", validation_rows, high=train_rows)
        if split == VALIDATION and not validation_rows:
            raise DatasetArgumentError("split='validation' needs validation_rows > 0, such as 0.15: the band of rows "
                                       "above the test rows that training then leaves out")
        defects = list(DEFECTS) if defects is None else [defects] if isinstance(defects, str) else list(defects)
        if not defects:
            raise DatasetArgumentError(f"defects is empty: name at least one of {', '.join(DEFECTS)}, or pass None for all")
        for name in defects:
            check_choice("defect", name, tuple(DEFECTS))
        photo = texture_photo(texture)
        boundary = int(photo.shape[0] * train_rows)
        held = int(photo.shape[0] * (train_rows - validation_rows))
        region = {"train": photo[:held], VALIDATION: photo[held:boundary], "test": photo[boundary:]}[split]
        if min(region.shape) < patch_size:
            raise ValueError(f"patch_size={patch_size} does not fit the {split} region {region.shape} of "
                             f"{texture!r}; use a patch_size of at most {min(region.shape)}")
        n = {"train": 256, "test": 128, VALIDATION: 64}[split] if n is None else n
        # Different seeds per split so that the splits draw different positions and defects.
        rng = np.random.default_rng([seed, ALL_SPLITS.index(split)])
        tops = rng.integers(0, region.shape[0] - patch_size + 1, size=n)
        lefts = rng.integers(0, region.shape[1] - patch_size + 1, size=n)
        patches = np.stack([region[t:t + patch_size, l:l + patch_size] for t, l in zip(tops, lefts)])
        masks = np.zeros_like(patches, dtype=bool)
        labels = np.zeros(n, dtype=np.int64)
        defect_types = ["good"] * n
        if split == "test":
            others = [t for t in TEXTURES if t != texture]
            for k, i in enumerate(rng.permutation(n)[: n // 2]):
                name = defects[k % len(defects)]
                options = {"source": texture_photo(others[k % len(others)])} if name in ("foreign_patch", "perlin") else {}
                patches[i], masks[i] = DEFECTS[name](patches[i], rng, **options)
                labels[i] = 1
                defect_types[i] = name
        self.texture = texture
        super().__init__(torch.from_numpy(patches)[:, None], labels, torch.from_numpy(masks)[:, None], defect_types)


class OneClassDigits(InMemoryAnomalyDataset):
    """scikit-learn's handwritten digits in the one-class protocol, up-sampled to ``image_size``.

    Each class is split 2/3 for training and 1/3 for testing (seeded). The training split holds
    the ``normal_class`` only; with ``anomaly_fraction`` > 0 it also holds that fraction of digits
    from the other classes, labelled 1 (the imbalanced supervised protocol of the capsule chapter;
    at least one anomaly when the fraction is positive). The test split is balanced: every test
    image of the normal class and as many drawn from the other classes. ``digits`` keeps each
    image's true class. Digits have no defect types: items carry no ``defect`` and ``defect_types``
    is None.

    ``normal_class`` is an int from 0 to 9 (a string such as ``"3"`` is refused with the int to pass).
    """

    def __init__(self, normal_class: int = 0, split: str = "train", anomaly_fraction: float = 0.0,
                 image_size: int = 28, seed: int = 0, validation_fraction: float = 0.0):
        normal_class = check_class_index("normal_class", normal_class, range(10))
        check_choice("split", split, ALL_SPLITS)
        anomaly_fraction = check_fraction("anomaly_fraction", anomaly_fraction)
        validation_fraction = check_fraction("validation_fraction", validation_fraction, high=0.5, high_open=False)
        if split == VALIDATION and not validation_fraction:
            raise DatasetArgumentError("split='validation' needs validation_fraction > 0, such as 0.2: the share of "
                                       "the normal class's training digits held out of training")
        image_size = check_int("image_size", image_size)
        seed = check_seed(seed)
        digits = load_digits()
        rng = np.random.default_rng(seed)
        train_idx, test_idx = [], []
        for c in range(10):
            members = rng.permutation(np.flatnonzero(digits.target == c))
            cut = (2 * len(members)) // 3
            train_idx.append(members[:cut])
            test_idx.append(members[cut:])
        if validation_fraction:  # the last of the normal class's training digits, after the same draws
            normal_train = train_idx[normal_class]
            count = held_out_count(validation_fraction, len(normal_train), f"digit {normal_class}")
            train_idx[normal_class], held = normal_train[:-count], normal_train[-count:]
            if split == VALIDATION:
                train_idx, anomaly_fraction = [held], 0.0
        pool = np.concatenate(test_idx if split == "test" else train_idx)
        normal = pool[digits.target[pool] == normal_class]
        others = rng.permutation(pool[digits.target[pool] != normal_class])
        if split != "test":
            n_anomalies = 0 if anomaly_fraction == 0 else max(1, round(anomaly_fraction * len(normal) / (1 - anomaly_fraction)))
        else:
            n_anomalies = len(normal)
        chosen = np.concatenate([normal, others[:n_anomalies]])
        images = torch.from_numpy(digits.images[chosen] / 16.0).float()[:, None]
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
        self.digits = digits.target[chosen]
        self.normal_class = normal_class
        super().__init__(images, (self.digits != normal_class).astype(np.int64))
