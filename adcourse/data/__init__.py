"""Datasets: built-in offline sets, and the real benchmarks loaded on demand.

Every dataset yields dicts with ``image`` (C×H×W floats in [0, 1]), ``label`` (0 normal,
1 anomalous) and ``mask`` (1×H×W of 0/1, all zeros where there is no mask); sets whose anomalies
have types (the built-in textures, MVTec AD, BTAD, folders of one's own) add ``defect``, the type's
name (``"good"`` for normal images), and hold every item's in ``defect_types``.

A mistake in a loader's arguments raises :class:`DatasetArgumentError` (also a ``ValueError``) or
:class:`DatasetTypeError` (also a ``TypeError``); data missing or damaged on disk raises
:class:`DatasetError`. All three are ``DatasetError`` s and name the value or file and the fix.
"""
from .arguments import DatasetArgumentError, DatasetTypeError
from .btad import BTAD, BTAD_PRODUCTS
from .builtin import InMemoryAnomalyDataset, OneClassDigits, TextureDefects
from .coil100 import Coil100OneClass
from .download import DatasetError, cache_dir, download, download_and_extract, safe_extract, sha256sum
from .folder import MVTecLayoutFolder, read_pixels
from .mvtec import MVTEC_CATEGORIES, MVTecAD
from .torchvision_oneclass import TORCHVISION_SETS, TorchvisionOneClass

__all__ = [
    "BTAD", "BTAD_PRODUCTS", "Coil100OneClass", "DatasetArgumentError", "DatasetError", "DatasetTypeError",
    "InMemoryAnomalyDataset", "MVTEC_CATEGORIES", "MVTecAD", "MVTecLayoutFolder", "OneClassDigits", "TORCHVISION_SETS",
    "TextureDefects", "TorchvisionOneClass", "cache_dir", "download", "download_and_extract", "read_pixels",
    "safe_extract", "sha256sum",
]
