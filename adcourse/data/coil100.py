"""COIL-100 (Columbia Object Image Library): 100 objects, 72 views each, for the one-class protocol
of the pyramidal chapter's full profile. Not downloadable automatically: the archive is fetched by
hand from the Columbia CAVE page and extracted into the data cache."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .download import DatasetError, cache_dir


class Coil100OneClass(Dataset):
    """COIL-100 in the one-class protocol of the thesis (§5.2.2): object ``normal_object`` (1–100) is
    normal; its 72 views are split 80 %/20 % (seeded); the test split adds as many views of other objects.

    Reads ``root`` (default ``cache_dir()/"coil-100"``) holding the Columbia archive's files
    ``obj<k>__<angle>.png``; images resized to ``image_size`` (120, as the thesis). Raises
    :class:`DatasetError` naming the folder when it is missing.
    """

    def __init__(self, root, normal_object: int, split: str, image_size: int = 120, seed: int = 0):
        root = Path(root) if root is not None else cache_dir() / "coil-100"
        files = sorted(root.glob("obj*__*.png")) if root.is_dir() else []
        if not files:
            raise DatasetError(f"COIL-100 not found in {root}: download coil-100.zip from the Columbia University "
                               "Image Library (CAVE) page and extract its obj<k>__<angle>.png files there")
        objects = np.array([int(re.match(r"obj(\d+)__", f.name).group(1)) for f in files])
        rng = np.random.default_rng(seed)
        split_of = {}
        for k in np.unique(objects):
            members = rng.permutation(np.flatnonzero(objects == k))
            cut = int(round(0.8 * len(members)))
            split_of[k] = (members[:cut], members[cut:])
        pick = 0 if split == "train" else 1
        normal = split_of[normal_object][pick]
        chosen, labels = list(normal), [0] * len(normal)
        if split != "train":
            others = np.concatenate([split_of[k][1] for k in split_of if k != normal_object])
            drawn = rng.choice(others, size=min(len(normal), len(others)), replace=False)
            chosen += list(drawn)
            labels += [1] * len(drawn)
        self.files = [files[i] for i in chosen]
        self.labels = np.array(labels, dtype=np.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with Image.open(self.files[index]) as im:
            im = im.convert("RGB").resize((self.image_size, self.image_size))
            image = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {"image": image, "label": int(self.labels[index]), "mask": torch.zeros(1, self.image_size, self.image_size)}
