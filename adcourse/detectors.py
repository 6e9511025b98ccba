"""The protocol every method of the course implements, and the registry the benchmark reads.

A detector is trained on a dataset of normal images (``fit``) and then scores images
(``predict``): one score per image and one anomaly map per image, higher meaning more anomalous::

    detector = create("ae_l2")
    detector.fit(train_dataset, profile="quick")
    image_scores, anomaly_maps = detector.predict(images)   # (N,), (N, H, W)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import ndimage


_REGISTRY: dict[str, Callable[..., "Detector"]] = {}


def register(name: str):
    """Class decorator: make a detector available to :func:`create` and the benchmark by ``name``."""
    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"a detector named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return decorator


def _load_methods() -> None:
    """Import every model family: each registers its detectors when imported."""
    import adcourse.models  # noqa: F401


def available() -> list[str]:
    """Names of every registered detector."""
    _load_methods()
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> "Detector":
    """A new, untrained detector; ``kwargs`` go to its constructor (``device=...`` for all)."""
    _load_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)


class Detector:
    """Base class: ``fit(train_dataset, profile)`` then ``predict(images) -> (scores, maps)``.

    ``supervised`` says whether ``fit`` needs labelled anomalies in the training set; ``trains`` is
    false for methods that only collect statistics of a frozen, pretrained network.
    """

    name: str = "detector"
    supervised: bool = False
    trains: bool = True
    device: torch.device = torch.device("cpu")

    PROFILES: dict = {}
    strict_settings: bool = False  # True: an override that no profile knows is an error

    def __init__(self, device=None, **overrides):
        """``device``: where to train and score (default: CUDA when there is one, see
        :func:`adcourse.train.pick_device`); ``overrides``: settings that replace the profile's."""
        from .train import pick_device

        if self.strict_settings:
            unknown = set(overrides) - set(self.PROFILES["quick"])
            if unknown:
                raise ValueError(f"unknown {self.name} settings {sorted(unknown)}; known: {sorted(self.PROFILES['quick'])}")
        self.device = pick_device(device)
        self.overrides = overrides

    def fit(self, train_dataset, profile: str = "quick") -> "Detector":
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def profile_settings(self, profile: str) -> dict:
        """The settings of ``profile`` (quick/full/auto, see :func:`adcourse.train.resolve_profile`)
        with the constructor's overrides on top; kept as ``self.settings``."""
        from .train import resolve_profile

        self.settings = {**self.PROFILES[resolve_profile(profile)], **self.overrides}
        return self.settings

    def model(self) -> torch.nn.Module | None:
        """The network that scores images, for parameter counts and ONNX export."""
        return getattr(self, "network", None)

    def export_graph(self, images: torch.Tensor) -> tuple[torch.nn.Module | None, torch.Tensor]:
        """The network to export to ONNX and an input to trace it with: by default :meth:`model`
        on ``images``. Methods whose networks do not map an image batch to an output on their
        own (several networks, patches) return a :class:`ScoringGraph` instead."""
        return self.model(), images

    @property
    def supervision(self) -> str:
        """What the method needs to be trained, in words (a column of the benchmark)."""
        if self.supervised:
            return "normal images + labelled anomalies"
        return "normal images" if self.trains else "normal images, no training (pretrained features)"

    def to(self, device) -> "Detector":
        """Move a trained detector to ``device``: every network it holds, and where ``predict`` works."""
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self


class ScoringGraph(torch.nn.Module):
    """``forward(x) = score(x, *networks)``: the networks of a method joined into one graph for export."""

    def __init__(self, score: Callable, *networks: torch.nn.Module):
        super().__init__()
        self.score = score
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor):
        return self.score(x, *self.networks)


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each N×H×W anomaly map: single noisy pixels should not decide a score."""
    return np.stack([ndimage.gaussian_filter(m, sigma) for m in maps]) if sigma > 0 else maps
