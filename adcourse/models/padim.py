"""A feature-based reference that needs no training: PaDiM (Defard et al., 2021).

Every image goes through a frozen, pretrained CNN; the feature maps of three stages are brought to
the resolution of the first and concatenated, so each position p of the map holds one vector
x_p (a random subset of ``d`` of its channels, as in the paper). On the normal training images
PaDiM fits one Gaussian per position, N(μ_p, Σ_p + εI), and scores a test position by its
Mahalanobis distance

    M(x_p) = sqrt((x_p − μ_p)ᵀ (Σ_p + εI)⁻¹ (x_p − μ_p)).

The distance map, up-sampled to the image and smoothed, is the anomaly map; its maximum is the
image score. Nothing is learned by gradient descent: ``fit`` is one pass over the training set.

Offline (as on the course's CI), the ImageNet weights of ResNet-18 cannot be downloaded and
:class:`adcourse.backbones.ResNet18Features` falls back to a seeded random initialisation; the
detector then measures how far random convolutional features get, and the report says which
weights were used (``detector.backbone.pretrained``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import ResNet18Features
from ..detectors import Detector, register, smooth_maps


def gaussian_per_position(features: torch.Tensor, epsilon: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """N×D×h×w features -> means (h·w)×D and inverse covariances (h·w)×D×D, one Gaussian per position.

    ε·I regularises the covariance (the paper's ε = 0.01), which is singular when there are fewer
    images than dimensions.
    """
    n, d, h, w = features.shape
    if n < 2:
        raise ValueError("a Gaussian per position needs at least 2 training images")
    x = features.permute(2, 3, 0, 1).reshape(h * w, n, d).double()
    mean = x.mean(1)
    centred = x - mean[:, None]
    covariance = centred.transpose(1, 2) @ centred / (n - 1) + epsilon * torch.eye(d, dtype=x.dtype)
    return mean.float(), torch.linalg.inv(covariance).float()


def mahalanobis_map(features: torch.Tensor, mean: torch.Tensor, inverse_covariance: torch.Tensor) -> torch.Tensor:
    """N×D×h×w features -> N×h×w Mahalanobis distances to the per-position Gaussians."""
    n, d, h, w = features.shape
    delta = features.permute(2, 3, 0, 1).reshape(h * w, n, d) - mean[:, None]
    squared = torch.einsum("pnd,pde,pne->pn", delta, inverse_covariance, delta).clamp(min=0)
    return squared.sqrt().T.reshape(n, h, w)


class PaDiMDetector(Detector):
    """PaDiM on ResNet-18 stages 1–3 (64 + 128 + 256 channels, ``d`` of them kept at random)."""

    name = "padim"
    trains = False
    strict_settings = True
    # Quick and full differ only in how many channels they keep: nothing is trained.
    PROFILES = {"quick": dict(d=100, epsilon=0.01, smoothing=4.0, pretrained=True, download=False),
                "full": dict(d=100, epsilon=0.01, smoothing=4.0, pretrained=True, download=True)}

    def __init__(self, device=None, seed: int = 0, **overrides):
        super().__init__(device, **overrides)
        self.seed = seed

    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """N×C×H×W images -> N×d×(H/4)×(W/4): three stages at the first stage's resolution."""
        out = []
        for i in range(0, len(images), batch_size):
            maps = self.backbone(images[i:i + batch_size].to(self.device))
            size = maps[0].shape[-2:]
            stacked = torch.cat([maps[0], *(F.interpolate(m, size=size, mode="nearest") for m in maps[1:])], 1)
            out.append(stacked[:, self.channels.to(stacked.device)].cpu())
        return torch.cat(out)

    @torch.no_grad()
    def fit(self, train_dataset, profile: str = "quick") -> "PaDiMDetector":
        s = self.profile_settings(profile)
        self.backbone = ResNet18Features(("layer1", "layer2", "layer3"), pretrained=s["pretrained"],
                                         download=s["download"], seed=self.seed).to(self.device)
        total = 64 + 128 + 256
        if not 1 <= s["d"] <= total:
            raise ValueError(f"d={s['d']} must be between 1 and {total} (the channels of stages 1–3)")
        generator = torch.Generator().manual_seed(self.seed)
        self.channels = torch.randperm(total, generator=generator)[: s["d"]].sort().values
        images = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
        self.mean, self.inverse_covariance = gaussian_per_position(self.embed(images), s["epsilon"])
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        distances = mahalanobis_map(self.embed(images), self.mean, self.inverse_covariance)
        maps = F.interpolate(distances[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = smooth_maps(maps.numpy(), self.settings["smoothing"])
        return maps.reshape(len(maps), -1).max(1), maps

    def model(self):
        return self.backbone


register("padim")(lambda **kw: PaDiMDetector(**kw))
