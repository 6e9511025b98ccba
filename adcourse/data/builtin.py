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
from .download import closest_name_error

SPLITS = ("train", "test")


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise closest_name_error(what, value, tuple(str(c) for c in choices))


class InMemoryAnomalyDataset(Dataset):
    """Images, labels and masks held as tensors; items are dicts ``image``, ``label``, ``mask``.

    ``images``: N×C×H×W floats in [0, 1]; ``labels``: N ints (0 normal, 1 anomalous);
    ``masks``: N×1×H×W of 0/1, all zeros where there is no defect or no mask.
    """

    def __init__(self, images: torch.Tensor, labels, masks: torch.Tensor | None = None):
        self.images = images.float()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.masks = torch.zeros_like(self.images[:, :1]) if masks is None else masks.float()
        if not len(self.images) == len(self.labels) == len(self.masks):
            raise ValueError(f"{len(self.images)} images, {len(self.labels)} labels and {len(self.masks)} masks")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index]), "mask": self.masks[index]}


class TextureDefects(InMemoryAnomalyDataset):
    """Patches of a real texture photograph; test patches carry synthetic defects with exact masks.

    The photograph is split by rows: training patches come from the top ``train_rows`` of it,
    test patches from the rest, so that no test pixel was seen in training. Half of the test patches
    receive a defect from :data:`adcourse.corruption.DEFECTS` (stain, scratch, foreign patch, Perlin
    region; drawn in turn), the other half stay normal. Everything is drawn from ``seed``.
    """

    def __init__(self, texture: str = "brick", split: str = "train", patch_size: int = 64,
                 n: int | None = None, seed: int = 0, train_rows: float = 0.6, defects=None):
        _check_choice("texture", texture, TEXTURES)
        _check_choice("split", split, SPLITS)
        defects = list(DEFECTS) if defects is None else list(defects)
        for name in defects:
            _check_choice("defect", name, DEFECTS)
        photo = texture_photo(texture)
        boundary = int(photo.shape[0] * train_rows)
        region = photo[:boundary] if split == "train" else photo[boundary:]
        if min(region.shape) < patch_size:
            raise ValueError(f"patch_size={patch_size} does not fit the {split} region {region.shape} of "
                             f"{texture!r}; use a patch_size of at most {min(region.shape)}")
        n = (256 if split == "train" else 128) if n is None else n
        # Different seeds per split so that train and test draw different positions and defects.
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        tops = rng.integers(0, region.shape[0] - patch_size + 1, size=n)
        lefts = rng.integers(0, region.shape[1] - patch_size + 1, size=n)
        patches = np.stack([region[t:t + patch_size, l:l + patch_size] for t, l in zip(tops, lefts)])
        masks = np.zeros_like(patches, dtype=bool)
        labels = np.zeros(n, dtype=np.int64)
        self.defect_types = ["good"] * n
        if split == "test":
            others = [t for t in TEXTURES if t != texture]
            for k, i in enumerate(rng.permutation(n)[: n // 2]):
                name = defects[k % len(defects)]
                options = {"source": texture_photo(others[k % len(others)])} if name in ("foreign_patch", "perlin") else {}
                patches[i], masks[i] = DEFECTS[name](patches[i], rng, **options)
                labels[i] = 1
                self.defect_types[i] = name
        self.texture = texture
        super().__init__(torch.from_numpy(patches)[:, None], labels, torch.from_numpy(masks)[:, None])


class OneClassDigits(InMemoryAnomalyDataset):
    """scikit-learn's handwritten digits in the one-class protocol, up-sampled to ``image_size``.

    Each class is split 2/3 for training and 1/3 for testing (seeded). The training split holds
    the ``normal_class`` only; with ``anomaly_fraction`` > 0 it also holds that fraction of digits
    from the other classes, labelled 1 (the imbalanced supervised protocol of the capsule chapter;
    at least one anomaly when the fraction is positive). The test split is balanced: every test
    image of the normal class and as many drawn from the other classes. ``digits`` keeps each
    image's true class.
    """

    def __init__(self, normal_class: int = 0, split: str = "train", anomaly_fraction: float = 0.0,
                 image_size: int = 28, seed: int = 0):
        _check_choice("normal_class", normal_class, range(10))
        _check_choice("split", split, SPLITS)
        if not 0 <= anomaly_fraction < 1:
            raise ValueError(f"anomaly_fraction must be in [0, 1), got {anomaly_fraction}")
        digits = load_digits()
        rng = np.random.default_rng(seed)
        train_idx, test_idx = [], []
        for c in range(10):
            members = rng.permutation(np.flatnonzero(digits.target == c))
            cut = (2 * len(members)) // 3
            train_idx.append(members[:cut])
            test_idx.append(members[cut:])
        pool = np.concatenate(train_idx if split == "train" else test_idx)
        normal = pool[digits.target[pool] == normal_class]
        others = rng.permutation(pool[digits.target[pool] != normal_class])
        if split == "train":
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
