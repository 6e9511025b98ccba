"""A feature-based reference that needs no training: PaDiM (Defard et al., 2021).

Every image goes through a frozen, pretrained CNN; the feature maps of three stages are brought to
the resolution of the first and concatenated, so each position p of the map holds one vector
x_p (a random subset of ``d`` of its channels, as in the paper). On the normal training images
PaDiM fits one Gaussian per position, N(μ_p, Σ_p + εI), and scores a test position by its
Mahalanobis distance

    M(x_p) = sqrt((x_p − μ_p)ᵀ (Σ_p + εI)⁻¹ (x_p − μ_p)).

The distance map, up-sampled to the image and smoothed, is the anomaly map; its maximum is the
image score. Nothing is learned by gradient descent: ``fit`` is one pass over the training set.

The source uses ResNet-18 (stages 1–3, strides 4, 8, 16) or Wide-ResNet-50. The quick profile uses
the same strides of the shipped EfficientNet-Lite0 (24 + 40 + 112 channels, ImageNet weights that
install offline) on images up-sampled ``input_scale``×; the full profile uses ResNet-18 when
torchvision has its weights, the shipped network otherwise (:func:`adcourse.backbones.choose_network`).
``detector.backbone_name`` says which one ran.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..backbones import BACKBONE_CHOICES, staged_features, unread_download
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


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Images up-sampled ``scale``× (bilinear): small patches give the network more positions to see."""
    return images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PaDiMSettings:
    """Settings of :class:`PaDiMDetector`."""
    backbone: str = "shipped"        # see adcourse.backbones.choose_network
    download: bool = False           # may the "source" backbone download torchvision's weights?
    strides: tuple[int, ...] = (4, 8, 16)    # the stages whose maps are stacked (ResNet-18 layer1..layer3)
    input_scale: int = 2
    d: int = 100                     # channels kept at random
    epsilon: float = 0.01
    smoothing: float = 4.0
    seed: int = 0

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        return unread_download(self)

    def __post_init__(self):
        if self.backbone not in BACKBONE_CHOICES:
            raise ValueError(f"backbone must be one of {BACKBONE_CHOICES}, got {self.backbone!r}")
        if self.input_scale < 1 or self.d < 1 or self.epsilon <= 0:
            raise ValueError(f"input_scale and d must be ≥ 1 and epsilon > 0, got {self.input_scale}, {self.d}, {self.epsilon}")
        checks.non_negative(self, "smoothing")


@register("padim")
class PaDiMDetector(Detector):
    """PaDiM on three stages of a frozen pretrained network (``d`` of their channels kept at random)."""

    name = "padim"
    trains = False
    Settings = PaDiMSettings
    # Nothing is trained; the full profile asks for the source's network (ResNet-18) at 1×.
    PROFILES = {"quick": PaDiMSettings(),
                "full": PaDiMSettings(backbone="source", download=True, input_scale=1)}
    fitted = ("channels", "mean", "inverse_covariance")

    def build(self, input_shape):
        s = self.settings
        self.backbone = staged_features(s.backbone, s.strides, "resnet18", s.download, s.seed).to(self.device)
        self.backbone_name = self.backbone.name
        total = sum(self.backbone.out_channels)
        if s.d > total:
            raise ValueError(f"d={s.d} must be at most {total}, the channels of {self.backbone.name} at strides {s.strides}")
        generator = torch.Generator().manual_seed(s.seed)
        self.channels = torch.randperm(total, generator=generator)[: s.d].sort().values

    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """N×C×H×W images -> N×d×h×w: the stages at the first stage's resolution, ``d`` channels kept."""
        out = []
        for i in range(0, len(images), batch_size):
            maps = self.backbone(upsample(images[i:i + batch_size].to(self.device), self.settings.input_scale))
            size = maps[0].shape[-2:]
            stacked = torch.cat([maps[0], *(F.interpolate(m, size=size, mode="nearest") for m in maps[1:])], 1)
            out.append(stacked[:, self.channels.to(stacked.device)].cpu())
        return torch.cat(out)

    @torch.no_grad()
    def fit_networks(self, train_dataset) -> None:
        images = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
        self.mean, self.inverse_covariance = gaussian_per_position(self.embed(images), self.settings.epsilon)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        distances = mahalanobis_map(self.embed(images), self.mean, self.inverse_covariance)
        maps = F.interpolate(distances[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = smooth_maps(maps.numpy(), self.settings.smoothing)
        return maps.reshape(len(maps), -1).max(1), maps

    def model(self):
        return self.backbone
