"""The convolutional autoencoder baseline of chapter 2."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..detectors import Detector, register, smooth_maps
from ..losses import ssim_loss, ssim_map
from ..train import batch_to, fit


def down_block(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution: 4×4 convolution of stride 2, batch norm, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution: 4×4 transposed convolution of stride 2, batch norm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """Encoder of strided convolutions → dense code of ``latent_dim`` → mirrored decoder, sigmoid out.

    The dense bottleneck is what stops the network from learning the identity: everything it
    reconstructs must pass through ``latent_dim`` numbers, so it can only keep what is typical of
    the training images. The input side must be divisible by 2**``depth``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 64,
                 width: int = 16, depth: int = 4):
        super().__init__()
        if image_size % 2 ** depth:
            raise ValueError(f"image_size={image_size} must be divisible by 2**depth={2 ** depth}")
        channels = [in_channels] + [width * 2 ** i for i in range(depth)]
        self.feature_shape = (channels[-1], image_size // 2 ** depth, image_size // 2 ** depth)
        flat = channels[-1] * self.feature_shape[1] * self.feature_shape[2]
        self.encoder = nn.Sequential(*[down_block(a, b) for a, b in zip(channels, channels[1:])],
                                     nn.Flatten(), nn.Linear(flat, latent_dim))
        ups = [up_block(b, a) for a, b in zip(channels[1:-1], channels[2:])][::-1]
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat), nn.Unflatten(1, self.feature_shape), *ups,
            nn.ConvTranspose2d(channels[1], in_channels, 4, stride=2, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AutoencoderDetector(Detector):
    """Reconstruction baseline: train a :class:`ConvAutoencoder` on normal images, score residuals.

    ``loss="l2"``: MSE training, pixel score (x − x̂)²; ``loss="ssim"``: SSIM training, pixel score
    1 − SSIM(x, x̂). Maps are smoothed with a Gaussian of ``smoothing`` pixels; the image score is
    the mean of the unsmoothed map (for ``l2``, the image's reconstruction MSE), as in the sources.
    """

    # quick: a minute on a 2-core CPU; full: a GPU run of real length.
    PROFILES = {"quick": dict(epochs=30, batch_size=32, lr=2e-3), "full": dict(epochs=300, batch_size=64, lr=1e-3)}

    def __init__(self, loss: str = "l2", latent_dim: int = 64, smoothing: float = 2.0, device=None, **overrides):
        if loss not in ("l2", "ssim"):
            raise ValueError(f"loss must be 'l2' or 'ssim', got {loss!r}")
        self.loss, self.latent_dim, self.smoothing = loss, latent_dim, smoothing
        self.name = f"ae_{loss}"
        super().__init__(device, **overrides)
        self.history: list[float] = []

    def fit(self, train_dataset, profile: str = "quick") -> "AutoencoderDetector":
        settings = self.profile_settings(profile)
        channels, size = train_dataset[0]["image"].shape[0], train_dataset[0]["image"].shape[-1]
        depth = max((d for d in range(1, 5) if size % 2 ** d == 0), default=None)  # 64 → 4, 28 → 2
        if depth is None:
            raise ValueError(f"{self.name} needs an even image side, got {size}; resize the images (image_size=...)")
        self.network = ConvAutoencoder(channels, size, self.latent_dim, depth=depth).to(self.device)
        loader = DataLoader(train_dataset, batch_size=settings["batch_size"], shuffle=True,
                            generator=torch.Generator().manual_seed(0))

        def loss_fn(model, batch):
            x = batch_to(batch, self.device)["image"]
            x_hat = model(x)
            return ssim_loss(x_hat, x) if self.loss == "ssim" else torch.mean((x_hat - x) ** 2)

        self.history = fit(self.network, loader, loss_fn, epochs=settings["epochs"], lr=settings["lr"],
                           device=self.device, desc=self.name)
        return self

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        self.network.eval()
        return torch.cat([self.network(images[i:i + batch_size].to(self.device)).cpu()
                          for i in range(0, len(images), batch_size)])

    def residual_maps(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """N×H×W pixel scores before smoothing."""
        if self.loss == "ssim":
            return (1 - ssim_map(reconstructions, images)).mean(dim=1)
        return ((images - reconstructions) ** 2).mean(dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps = self.residual_maps(images, self.reconstruct(images)).numpy()
        return maps.reshape(len(maps), -1).mean(axis=1), smooth_maps(maps, self.smoothing)


register("ae_l2")(lambda **kw: AutoencoderDetector(loss="l2", **kw))
register("ae_ssim")(lambda **kw: AutoencoderDetector(loss="ssim", **kw))
