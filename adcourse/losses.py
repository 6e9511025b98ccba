"""Losses and similarity maps shared by the chapters."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """A normalised 2-D Gaussian window of ``size``×``size`` (SSIM's local weighting)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
             data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-pixel SSIM of two N×C×H×W batches (Wang et al., 2004), same size as the input.

    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), where the local
    means, variances and covariance are Gaussian-weighted over a ``window_size`` window and
    C1 = (k1·L)², C2 = (k2·L)² with L the data range. Borders are handled by reflection padding,
    as torchmetrics does, so that the map equals ``structural_similarity_index_measure(...,
    return_full_image=True)``.
    """
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma, x.dtype, x.device).expand(channels, 1, -1, -1)
    pad = window_size // 2
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))

    def local_mean(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = (local_mean(x * x) - mu_x ** 2).clamp(min=0)
    var_y = (local_mean(y * y) - mu_y ** 2).clamp(min=0)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """1 − mean SSIM: zero for identical images."""
    return 1 - ssim_map(x, y, **kwargs).mean()
