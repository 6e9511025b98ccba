"""Datasets: built-in offline sets, and the real benchmarks loaded on demand.

Every dataset yields dicts with ``image`` (C×H×W floats in [0, 1]), ``label`` (0 normal,
1 anomalous) and ``mask`` (1×H×W of 0/1, all zeros where there is no mask).
"""
from .btad import BTAD, BTAD_PRODUCTS
from .builtin import InMemoryAnomalyDataset, OneClassDigits, TextureDefects
from .coil100 import Coil100OneClass
from .download import DatasetError, cache_dir, download, download_and_extract, safe_extract, sha256sum
from .mvtec import MVTEC_CATEGORIES, MVTecAD
from .torchvision_oneclass import TORCHVISION_SETS, TorchvisionOneClass

__all__ = [
    "BTAD", "BTAD_PRODUCTS", "Coil100OneClass", "DatasetError", "InMemoryAnomalyDataset", "MVTEC_CATEGORIES", "MVTecAD",
    "OneClassDigits", "TORCHVISION_SETS", "TextureDefects", "TorchvisionOneClass", "cache_dir", "download",
    "download_and_extract", "safe_extract", "sha256sum",
]
