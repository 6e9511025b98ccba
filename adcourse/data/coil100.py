"""COIL-100 (Columbia Object Image Library): 100 objects, 72 views each, for the one-class protocol
of the pyramidal chapter's full profile. Not downloadable automatically: the archive is fetched by
hand from the Columbia CAVE page and extracted into the data cache."""
from __future__ import annotations

import re

import numpy as np
import torch
from torch.utils.data import Dataset

from .arguments import DatasetArgumentError, check_choice, check_class_index, check_int, check_root, check_seed
from .download import DatasetError, cache_dir
from .folder import SPLITS, read_pixels, resize_image

_VIEW_NAME = re.compile(r"obj(\d+)__(\d+)\.png", re.IGNORECASE)


class Coil100OneClass(Dataset):
    """COIL-100 in the one-class protocol of the thesis (§5.2.2): object ``normal_object`` (1–100) is
    normal; its 72 views are split 80 %/20 % (seeded); the test split adds as many views of other objects.

    Reads ``root`` (default ``cache_dir()/"coil-100"``) holding the Columbia archive's files
    ``obj<k>__<angle>.png``; images resized to ``image_size`` (120, as the thesis). Raises
    :class:`DatasetError` naming the folder when it is missing or lacks ``normal_object``'s views, and
    :class:`~adcourse.data.arguments.DatasetArgumentError` for a split other than ``"train"`` or ``"test"``.
    """

    def __init__(self, root, normal_object: int, split: str, image_size: int = 120, seed: int = 0):
        root = check_root(root, cache_dir() / "coil-100")
        normal_object = check_class_index("normal_object", normal_object, range(1, 101))
        check_choice("split", split, SPLITS)
        self.image_size = check_int("image_size", image_size, minimum=2)
        seed = check_seed(seed)
        files = sorted(f for f in root.iterdir() if _VIEW_NAME.fullmatch(f.name)) if root.is_dir() else []
        if not files:
            raise DatasetError(f"COIL-100 not found in {root}: download coil-100.zip from the Columbia University "
                               "Image Library (CAVE) page and extract its obj<k>__<angle>.png files there")
        objects = np.array([int(_VIEW_NAME.fullmatch(f.name).group(1)) for f in files])
        if normal_object not in objects:
            present = np.unique(objects)
            raise DatasetError(f"COIL-100 object {normal_object} not found in {root}: no obj{normal_object}__<angle>.png "
                               f"files there ({len(present)} objects present, {present.min()}–{present.max()}). "
                               "Extract the whole coil-100.zip there, or choose an object that is present.")
        if split == "test" and len(np.unique(objects)) < 2:
            raise DatasetArgumentError(f"COIL-100 in {root} holds only object {normal_object}: the test split needs "
                                       "views of other objects as anomalies")
        rng = np.random.default_rng(seed)
        split_of = {}
        for k in np.unique(objects):
            members = rng.permutation(np.flatnonzero(objects == k))
            cut = int(round(0.8 * len(members)))
            split_of[k] = (members[:cut], members[cut:])
        pick = SPLITS.index(split)
        normal = split_of[normal_object][pick]
        chosen, labels = list(normal), [0] * len(normal)
        if split != "train":
            others = np.concatenate([split_of[k][1] for k in split_of if k != normal_object])
            drawn = rng.choice(others, size=min(len(normal), len(others)), replace=False)
            chosen += list(drawn)
            labels += [1] * len(drawn)
        self.files = [files[i] for i in chosen]
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image = resize_image(read_pixels(self.files[index]), self.image_size, self.files[index])
        return {"image": image, "label": int(self.labels[index]), "mask": torch.zeros(1, self.image_size, self.image_size)}
