"""GANs for anomaly detection (chapter 5): GAN, WGAN(-GP), f-AnoGAN, BiGAN and the fully convolutional BiGAN.

Everything here works on images in [−1, 1] (the generators end in ``tanh``); the detectors
convert the course's [0, 1] images on the way in. The training loops are written out, one per
game, because the order of the critic and generator steps is the lesson of the chapter:

- :func:`train_gan` — the original game, with the non-saturating, saturating or feature-matching
  generator loss (Goodfellow et al., 2014; Salimans et al., 2016);
- :func:`train_wgan` — the Wasserstein critic with weight clipping (Arjovsky et al., 2017) or the
  gradient penalty (Gulrajani et al., 2017), ``n_critic`` critic steps per generator step;
- :func:`train_izif` — f-AnoGAN's second stage: an image → latent encoder trained against a frozen
  WGAN-GP (Schlegl et al., 2019);
- :func:`train_bigan` — BiGAN's three-player game (Donahue et al., 2017); with least-squares losses
  and a reconstruction penalty it is the FCBiGAN of Peccia (2021) (:func:`train_fcbigan`).

Every loop draws its minibatches and noise from one ``torch.Generator`` seeded by ``seed``, in a
fixed order, so that a run repeats exactly on the CPU and the chapter can check that its own loop
gives the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .. import checks
from ..detectors import Detector, ScoringGraph, register
from ..losses import gradient_penalty
from ..train import pick_device

# ---------------------------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------------------------


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [−1, 1], the range of a ``tanh`` generator."""
    return images * 2 - 1


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → [0, 1], for display."""
    return (images + 1) / 2


def random_crops(images: torch.Tensor, size: int, n: int, seed: int = 0, augment: bool = True) -> torch.Tensor:
    """``n`` random ``size``×``size`` crops of N×C×H×W ``images``.

    With ``augment``, each crop is flipped horizontally and vertically and rotated by 90° at random,
    the augmentation of Peccia (2021) for texture patches. Reproducible from ``seed``.
    """
    n_images, _, height, width = images.shape
    if size > min(height, width):
        raise ValueError(f"crop size {size} is larger than the images ({height}×{width})")
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(n_images, (n,), generator=g)
    tops = torch.randint(height - size + 1, (n,), generator=g)
    lefts = torch.randint(width - size + 1, (n,), generator=g)
    flips = torch.randint(2, (n, 3), generator=g) if augment else torch.zeros(n, 3, dtype=torch.long)
    crops = []
    for i, t, l, f in zip(which.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
        crop = images[i, :, t:t + size, l:l + size]
        if f[0]:
            crop = crop.flip(-1)
        if f[1]:
            crop = crop.flip(-2)
        if f[2]:
            crop = crop.rot90(1, dims=(-2, -1))
        crops.append(crop)
    return torch.stack(crops).contiguous()


def sample_batch(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` rows of ``data`` drawn with replacement (indices from ``generator``)."""
    index = torch.randint(len(data), (batch_size,), generator=generator)
    return data[index.to(data.device)]


def sample_latent(batch_size: int, latent_shape, generator: torch.Generator, device=None) -> torch.Tensor:
    """Standard normal noise of shape ``(batch_size, *latent_shape)``, drawn on the CPU from ``generator``."""
    shape = (batch_size, *((latent_shape,) if isinstance(latent_shape, int) else tuple(latent_shape)))
    return torch.randn(shape, generator=generator).to(device)


def _as_signed_images(train_dataset) -> torch.Tensor:
    images = getattr(train_dataset, "images", None)
    if images is None:
        images = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
    return to_signed(images.float())


# ---------------------------------------------------------------------------------------------
# DCGAN-style networks for fixed-size images (GAN, WGAN, f-AnoGAN, BiGAN)
# ---------------------------------------------------------------------------------------------


def _n_halvings(image_size: int) -> int:
    k = round(math.log2(image_size / 4)) if image_size >= 8 else 0
    if k < 1 or 4 * 2 ** k != image_size:
        raise ValueError(f"image_size must be 4·2^k with k ≥ 1 (8, 16, 32, 64, ...), got {image_size}")
    return k


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # layer norm over C×H×W, what WGAN-GP recommends instead of batch norm
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be 'none', 'batch' or 'layer', got {kind!r}")


def down_stack(in_channels: int, image_size: int, width: int, norm: str = "none") -> tuple[nn.Sequential, int]:
    """Strided 4×4 convolutions from ``image_size`` down to 4×4, channels doubling from ``width``.

    Returns the stack (ending in a flatten) and the length of its output vector.
    """
    layers, channels = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
    for _ in range(_n_halvings(image_size) - 1):
        layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=norm == "none"), _norm(norm, 2 * channels),
                   nn.LeakyReLU(0.2)]
        channels *= 2
    return nn.Sequential(*layers, nn.Flatten()), channels * 16


class Generator(nn.Module):
    """DCGAN generator: z ∈ R^d → dense → 4×4 maps → transposed convolutions (×2 each) → tanh image."""

    def __init__(self, latent_dim: int = 32, out_channels: int = 1, image_size: int = 32, width: int = 32):
        super().__init__()
        k = _n_halvings(image_size)
        self.latent_dim, self.top = latent_dim, width * 2 ** (k - 1)
        self.project = nn.Sequential(nn.Linear(latent_dim, self.top * 16, bias=False),
                                     nn.BatchNorm1d(self.top * 16), nn.ReLU())
        layers, channels = [], self.top
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels // 2), nn.ReLU()]
            channels //= 2
        self.body = nn.Sequential(*layers, nn.ConvTranspose2d(channels, out_channels, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, self.top, 4, 4))


class Critic(nn.Module):
    """DCGAN discriminator / WGAN critic: strided convolutions → features → one number per image.

    ``forward`` returns raw scores of shape (N,) (logits for a GAN, critic values for a WGAN);
    ``features`` returns the last hidden layer, used by feature matching and by f-AnoGAN's
    discriminator residual. WGAN-GP's critic must not use batch norm (the penalty is per sample):
    ``norm="none"`` or ``"layer"``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, width: int = 32, norm: str = "none"):
        super().__init__()
        self.body, self.feature_dim = down_stack(in_channels, image_size, width, norm)
        self.head = nn.Linear(self.feature_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


class Encoder(nn.Module):
    """Image → latent vector: the critic's convolutions with a d-dimensional head.

    f-AnoGAN's izi_f encoder mirrors the critic and ends in ``tanh`` (``bounded=True``), although
    the prior it inverts is N(0, I): codes beyond ±1 cannot be reached. BiGAN's encoder is
    unbounded (``bounded=False``).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, latent_dim: int = 32, width: int = 32,
                 norm: str = "none", bounded: bool = True):
        super().__init__()
        self.body, feature_dim = down_stack(in_channels, image_size, width, norm)
        self.head = nn.Linear(feature_dim, latent_dim)
        self.bounded = bounded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.body(x))
        return torch.tanh(z) if self.bounded else z


class BiGANDiscriminator(nn.Module):
    """BiGAN's D(x, z): a convolutional branch for x, a dense branch for z, joined by dense layers.

    The image must be flattened to a vector before it can meet z: this is the layer that keeps a
    BiGAN from being fully convolutional.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, latent_dim: int = 32, width: int = 32,
                 hidden: int = 256):
        super().__init__()
        self.x_branch, feature_dim = down_stack(in_channels, image_size, width)
        self.z_branch = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(nn.Linear(feature_dim + hidden, hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, 1)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Fully convolutional BiGAN (Peccia, 2021)
# ---------------------------------------------------------------------------------------------


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Sub-pixel rearrangement: N×(C·r²)×h×w → N×C×(h·r)×(w·r), as :class:`torch.nn.PixelShuffle`.

    Channel ``c·r² + i·r + j`` of input cell (y, x) becomes pixel (y·r + i, x·r + j) of channel c.
    """
    n, channels, height, width = x.shape
    if channels % factor ** 2:
        raise ValueError(f"{channels} channels cannot be shuffled by a factor {factor}: need a multiple of {factor ** 2}")
    c = channels // factor ** 2
    x = x.view(n, c, factor, factor, height, width)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c, height * factor, width * factor)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """The channels-last memory layout: the same numbers, stored pixel by pixel. Full-resolution
    convolutions run about twice as fast this way on a CPU (oneDNN), so the FCBiGAN's networks keep
    their weights and inputs in it."""
    return x.contiguous(memory_format=torch.channels_last)


class FCEncoder(nn.Module):
    """x (C×H×W) → a latent *map* z (d × H/r × W/r), r = 2^depth; convolutions only.

    Strided 4×4 convolutions halve the resolution ``depth`` times; a 3×3 convolution takes the
    place of the dense layer of a BiGAN encoder. On a training patch z is a small grid; on a
    whole image it is a larger grid, one latent vector for every r×r cell.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 8, width: int = 16, depth: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(depth):
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels = out
        self.net = nn.Sequential(*layers, nn.Conv2d(channels, latent_channels, 3, padding=1))
        self.factor = 2 ** depth
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_channels_last(x))


class FCGenerator(nn.Module):
    """z map (d × h × w) → image (C × h·r × w·r): a 3×3 convolution, then transposed convolutions, tanh.

    Fed a larger noise grid it paints a larger texture: nothing in it depends on the image size.
    """

    def __init__(self, latent_channels: int = 8, out_channels: int = 1, width: int = 16, depth: int = 3):
        super().__init__()
        channels = width * 2 ** (depth - 1)
        layers = [nn.Conv2d(latent_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(depth - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(channels, out_channels, 4, 2, 1), nn.Tanh())
        self.factor = 2 ** depth
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(_channels_last(z))


class FCDiscriminator(nn.Module):
    """D(x, z) with one answer per pixel: N×1×H×W for an N×C×H×W image and its d × H/r × W/r code.

    The z branch is a 1×1 convolution to ``width``·r² channels followed by a pixel shuffle (sub-pixel
    convolution), which brings z to x's resolution without any dense layer; the x branch keeps the
    resolution; after concatenation, dilated 3×3 convolutions (dilations 2 and 4) widen the
    receptive field and a 1×1 convolution gives the per-pixel output.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 8, width: int = 16, factor: int = 8):
        super().__init__()
        self.factor = factor
        self.x_branch = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.LeakyReLU(0.2))
        self.z_branch = nn.Sequential(nn.Conv2d(latent_channels, width * factor ** 2, 1),
                                      nn.PixelShuffle(factor), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2), nn.LeakyReLU(0.2),
                                   nn.Conv2d(2 * width, 2 * width, 3, padding=4, dilation=4), nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(2 * width, 1, 1)
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x, zx = _channels_last(x), self.z_branch(_channels_last(z))
        if zx.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the code {tuple(z.shape[-2:])} × {self.factor} = {tuple(zx.shape[-2:])} does not match "
                             f"the image {tuple(x.shape[-2:])}: image sides must be multiples of {self.factor}")
        return self.joint(torch.cat([self.x_branch(x), zx], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z))


# ---------------------------------------------------------------------------------------------
# Training loops
# ---------------------------------------------------------------------------------------------


def _grad_norm(module: nn.Module) -> float:
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def _check_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(value):
        raise FloatingPointError(f"{what} became {value.item()} at step {step + 1}; lower the learning rate "
                                 "or check the inputs for NaN")


def train_gan(generator: nn.Module, discriminator: nn.Module, data: torch.Tensor, *, steps: int,
              latent_dim: int, loss: str = "non_saturating", batch_size: int = 64, lr: float = 2e-4,
              betas=(0.5, 0.999), seed: int = 0, device=None,
              callback: Callable[[int, nn.Module, nn.Module], None] | None = None) -> dict:
    """The original GAN game: one discriminator step, then one generator step, ``steps`` times.

    Discriminator: minimise BCE(D(x), 1) + BCE(D(G(z)), 0) on logits. Generator, by ``loss``:
    ``"saturating"`` minimises log(1 − σ(D(G(z)))) (the min-max value function itself),
    ``"non_saturating"`` minimises −log σ(D(G(z))), and ``"feature_matching"`` minimises
    ‖mean f(x) − mean f(G(z))‖² with f = ``discriminator.features``.
    Per step the loop draws, from one generator seeded with ``seed``: the real batch, the noise of
    the discriminator step, the noise of the generator step. Returns a history of per-step lists:
    ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (mean σ(D)), ``g_grad_norm``.
    """
    if loss not in ("non_saturating", "saturating", "feature_matching"):
        raise ValueError(f"loss must be 'non_saturating', 'saturating' or 'feature_matching', got {loss!r}")
    device = pick_device(device)
    generator.to(device).train()
    discriminator.to(device).train()
    data = data.to(device)
    g = torch.Generator().manual_seed(seed)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    history = {k: [] for k in ("d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm")}
    for step in range(steps):
        real = sample_batch(data, batch_size, g)
        with torch.no_grad():
            fake = generator(sample_latent(batch_size, latent_dim, g, device))
        real_logits, fake_logits = discriminator(real), discriminator(fake)
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        _check_finite(d_loss, "the discriminator loss", step)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        fake = generator(sample_latent(batch_size, latent_dim, g, device))
        if loss == "feature_matching":
            target = discriminator.features(real).mean(0).detach()
            g_loss = ((discriminator.features(fake).mean(0) - target) ** 2).sum()
        else:
            logits = discriminator(fake)
            if loss == "non_saturating":
                g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            else:  # log(1 − σ(l)) = −BCE(l, 0)
                g_loss = -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        _check_finite(g_loss, "the generator loss", step)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        history["g_grad_norm"].append(_grad_norm(generator))
        opt_g.step()
        history["d_loss"].append(d_loss.item())
        history["g_loss"].append(g_loss.item())
        history["d_real"].append(torch.sigmoid(real_logits).mean().item())
        history["d_fake"].append(torch.sigmoid(fake_logits).mean().item())
        if callback is not None:
            callback(step, generator, discriminator)
    generator.eval()
    discriminator.eval()
    return history


def train_wgan(generator: nn.Module, critic: nn.Module, data: torch.Tensor, *, steps: int, latent_dim: int,
               mode: str = "gp", n_critic: int = 5, gp_weight: float = 10.0, clip: float = 0.01,
               batch_size: int = 64, lr: float = 1e-4, betas=(0.5, 0.9), optimizer: str = "adam", seed: int = 0,
               device=None, callback: Callable[[int, nn.Module, nn.Module], None] | None = None) -> dict:
    """Wasserstein GAN: ``n_critic`` critic steps, then one generator step, ``steps`` times.

    Critic: minimise mean C(G(z)) − mean C(x) (the negative of the Wasserstein estimate), plus
    ``gp_weight``·:func:`adcourse.losses.gradient_penalty` when ``mode="gp"`` (WGAN-GP), or with
    every weight clipped to [−``clip``, ``clip``] after each step when ``mode="clip"`` (the first
    WGAN). Generator: minimise −mean C(G(z)). ``optimizer="adam"`` with ``betas`` (WGAN-GP: (0, 0.9)
    or (0.5, 0.9)); ``"rmsprop"`` is what the first WGAN used with clipping (lr 5e-5).
    Per critic step the loop draws, in this order: the real batch, the noise, the interpolation
    weights of the penalty (``mode="gp"`` only); then the generator step's noise.
    History per generator step: ``critic_loss``, ``wasserstein`` (mean C(x) − mean C(G(z)) of the
    last critic step), ``gp``, ``g_loss``, ``grad_norm`` (mean gradient norm on the interpolates).
    """
    if mode not in ("gp", "clip"):
        raise ValueError(f"mode must be 'gp' or 'clip', got {mode!r}")
    device = pick_device(device)
    generator.to(device).train()
    critic.to(device).train()
    data = data.to(device)
    g = torch.Generator().manual_seed(seed)
    if optimizer == "adam":
        opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
        opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    elif optimizer == "rmsprop":
        opt_c = torch.optim.RMSprop(critic.parameters(), lr=lr)
        opt_g = torch.optim.RMSprop(generator.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {optimizer!r}")
    history = {k: [] for k in ("critic_loss", "wasserstein", "gp", "g_loss", "grad_norm")}
    for step in range(steps):
        for _ in range(n_critic):
            real = sample_batch(data, batch_size, g)
            with torch.no_grad():
                fake = generator(sample_latent(batch_size, latent_dim, g, device))
            distance = critic(real).mean() - critic(fake).mean()
            if mode == "gp":
                penalty, norms = gradient_penalty(critic, real, fake, generator=g, return_norms=True)
            else:
                penalty, norms = torch.zeros((), device=device), None
            c_loss = -distance + gp_weight * penalty
            _check_finite(c_loss, "the critic loss", step)
            opt_c.zero_grad(set_to_none=True)
            c_loss.backward()
            opt_c.step()
            if mode == "clip":
                with torch.no_grad():
                    for p in critic.parameters():
                        p.clamp_(-clip, clip)
        g_loss = -critic(generator(sample_latent(batch_size, latent_dim, g, device))).mean()
        _check_finite(g_loss, "the generator loss", step)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history["critic_loss"].append(c_loss.item())
        history["wasserstein"].append(distance.item())
        history["gp"].append(penalty.item())
        history["g_loss"].append(g_loss.item())
        history["grad_norm"].append(float(norms.mean()) if norms is not None else float("nan"))
        if callback is not None:
            callback(step, generator, critic)
    generator.eval()
    critic.eval()
    return history


def izif_loss(x: torch.Tensor, encoder: nn.Module, generator: nn.Module, critic: nn.Module,
              kappa: float = 1.0) -> torch.Tensor:
    """f-AnoGAN's izi_f objective: MSE(x, G(E(x))) + κ·MSE(f(x), f(G(E(x)))), f = ``critic.features``."""
    x_hat = generator(encoder(x))
    return F.mse_loss(x_hat, x) + kappa * F.mse_loss(critic.features(x_hat), critic.features(x))


def train_izif(encoder: nn.Module, generator: nn.Module, critic: nn.Module, data: torch.Tensor, *, steps: int,
               kappa: float = 1.0, batch_size: int = 64, lr: float = 1e-4, betas=(0.5, 0.999), seed: int = 0,
               device=None) -> list[float]:
    """f-AnoGAN's second stage: train ``encoder`` with G and the critic frozen (eval mode, no gradients
    to their weights) to minimise :func:`izif_loss` on real batches; returns the loss per step."""
    device = pick_device(device)
    encoder.to(device).train()
    for net in (generator, critic):
        net.to(device).eval()
        net.requires_grad_(False)
    data = data.to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr, betas=betas)
    history = []
    for step in range(steps):
        loss = izif_loss(sample_batch(data, batch_size, g), encoder, generator, critic, kappa)
        _check_finite(loss, "the izi_f loss", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
    encoder.eval()
    return history


def train_bigan(encoder: nn.Module, generator: nn.Module, discriminator: nn.Module, data: torch.Tensor, *,
                steps: int, latent_shape, loss: str = "bce", recon_weight: float = 0.0, batch_size: int = 64,
                lr: float = 2e-4, betas=(0.5, 0.999), seed: int = 0, device=None,
                callback: Callable[[int, nn.Module, nn.Module, nn.Module], None] | None = None) -> dict:
    """BiGAN's game between D(x, z) and the pair (E, G); one D step then one (E, G) step per step.

    D learns to tell real pairs (x, E(x)) from fake pairs (G(z), z); E and G are updated together
    to make it fail. ``loss="bce"``: D minimises BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0) and (E, G)
    the same with the labels swapped (Donahue et al., 2017). ``loss="least_squares"`` (FCBiGAN,
    Peccia 2021, eq. 5): D minimises ½(D(x, E(x)) − 1)² + ½D(G(z), z)², G minimises ½(D(G(z), z) − 1)²,
    E minimises ½D(x, E(x))² + ``recon_weight``·|x − G(E(x))| (eq. 6, the reconstruction penalty).
    E's and G's losses are summed and stepped together, so the penalty's gradient reaches G too.
    Means are taken over the batch (and over the pixels of a per-pixel D). ``latent_shape``: shape
    of one z, e.g. ``32`` or ``(8, 4, 4)`` for a latent map. Per step the loop draws: the real
    batch, then the noise (used by both steps). History: ``d_loss``, ``eg_loss``, ``recon`` (mean
    |x − G(E(x))|).
    """
    if loss not in ("bce", "least_squares"):
        raise ValueError(f"loss must be 'bce' or 'least_squares', got {loss!r}")
    device = pick_device(device)
    nets = (encoder, generator, discriminator)
    for net in nets:
        net.to(device).train()
    data = data.to(device)
    g = torch.Generator().manual_seed(seed)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    opt_eg = torch.optim.Adam(list(encoder.parameters()) + list(generator.parameters()), lr=lr, betas=betas)

    def target(out, value):  # the adversarial loss of outputs ``out`` against a label 0 or 1
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(out, torch.full_like(out, float(value)))
        return 0.5 * ((out - value) ** 2).mean()

    history = {"d_loss": [], "eg_loss": [], "recon": []}
    for step in range(steps):
        x = sample_batch(data, batch_size, g)
        z = sample_latent(batch_size, latent_shape, g, device)
        with torch.no_grad():
            z_real, x_fake = encoder(x), generator(z)
        d_loss = target(discriminator(x, z_real), 1) + target(discriminator(x_fake, z), 0)
        _check_finite(d_loss, "the discriminator loss", step)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        z_real, x_fake = encoder(x), generator(z)
        eg_loss = target(discriminator(x, z_real), 0) + target(discriminator(x_fake, z), 1)
        recon = (x - generator(z_real)).abs().mean() if recon_weight > 0 else None
        if recon is not None:
            eg_loss = eg_loss + recon_weight * recon
        _check_finite(eg_loss, "the encoder/generator loss", step)
        opt_eg.zero_grad(set_to_none=True)
        eg_loss.backward()
        opt_eg.step()
        history["d_loss"].append(d_loss.item())
        history["eg_loss"].append(eg_loss.item())
        if recon is None:
            with torch.no_grad():
                recon = (x - generator(z_real)).abs().mean()
        history["recon"].append(recon.item())
        if callback is not None:
            callback(step, encoder, generator, discriminator)
    for net in nets:
        net.eval()
    return history


def train_fcbigan(encoder: FCEncoder, generator: FCGenerator, discriminator: FCDiscriminator, data: torch.Tensor,
                  *, steps: int, recon_weight: float = 1.0, **kwargs) -> dict:
    """FCBiGAN training: :func:`train_bigan` with least-squares losses, the reconstruction penalty and
    a latent *map* whose shape follows the training patches (d × P/r × P/r)."""
    size = data.shape[-1]
    if size % encoder.factor:
        raise ValueError(f"training patches of side {size} must be a multiple of the encoder's factor {encoder.factor}")
    latent_channels = encoder.net[-1].out_channels
    shape = (latent_channels, data.shape[-2] // encoder.factor, size // encoder.factor)
    return train_bigan(encoder, generator, discriminator, data, steps=steps, latent_shape=shape,
                       loss="least_squares", recon_weight=recon_weight, **kwargs)


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def bigan_scores(x: torch.Tensor, encoder: nn.Module, generator: nn.Module, discriminator: nn.Module,
                 alpha: float = 0.5) -> dict:
    """BiGAN's anomaly score A = (1 − α)·L_R + α·L_D per image (Peccia 2021, eq. 4).

    L_R = mean |x − G(E(x))|; L_D = mean |f(x, E(x)) − f(G(E(x)), E(x))| with f the discriminator's
    last hidden layer (the feature version of the source). Returns ``l_r``, ``l_d``, ``score``, ``x_hat``.
    """
    z = encoder(x)
    x_hat = generator(z)
    l_r = (x - x_hat).abs().flatten(1).mean(1)
    l_d = (discriminator.features(x, z) - discriminator.features(x_hat, z)).abs().flatten(1).mean(1)
    return {"l_r": l_r, "l_d": l_d, "score": (1 - alpha) * l_r + alpha * l_d, "x_hat": x_hat}


@torch.no_grad()
def fanogan_scores(x: torch.Tensor, encoder: nn.Module, generator: nn.Module, critic: nn.Module,
                   kappa: float = 1.0) -> dict:
    """f-AnoGAN's scores of N patches: ``residual`` N×H×W maps (x − G(E(x)))² averaged over channels,
    ``score`` = mean residual + κ·mean (f(x) − f(G(E(x))))² per patch, and ``x_hat``."""
    x_hat = generator(encoder(x))
    residual = ((x - x_hat) ** 2).mean(1)
    feature = ((critic.features(x) - critic.features(x_hat)) ** 2).mean(1)
    return {"residual": residual, "score": residual.flatten(1).mean(1) + kappa * feature, "x_hat": x_hat}


@torch.no_grad()
def fcbigan_losses(x: torch.Tensor, encoder: nn.Module, generator: nn.Module, discriminator: nn.Module) -> dict:
    """Per-pixel FCBiGAN losses of whole images (any side that is a multiple of r), in one pass:
    ``l_r`` = (x − G(E(x)))² averaged over channels and ``l_d`` = (D(x, E(x)) − 1)², both N×H×W."""
    z = encoder(x)
    x_hat = generator(z)
    return {"l_r": ((x - x_hat) ** 2).mean(1), "l_d": ((discriminator(x, z) - 1) ** 2)[:, 0], "x_hat": x_hat}


def window_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left corners of ``patch``-wide windows every ``stride`` pixels, the last one flush with the edge."""
    if patch > size:
        raise ValueError(f"patch {patch} is larger than the image side {size}")
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:
        positions.append(size - patch)
    return positions


@torch.no_grad()
def patchwise_maps(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, patch: int,
                   stride: int) -> torch.Tensor:
    """Apply ``fn`` (N×C×P×P → N×K×P×P maps) to every window of ``images`` and average the overlaps.

    The patch-by-patch way of scoring a whole image with a model trained on patches: the output
    has the images' size, N×K×H×W, like a single pass of a fully convolutional model.
    """
    n, _, height, width = images.shape
    total = count = None
    for top in window_positions(height, patch, stride):
        for left in window_positions(width, patch, stride):
            out = fn(images[:, :, top:top + patch, left:left + patch])
            if total is None:
                total = images.new_zeros(n, out.shape[1], height, width)
                count = images.new_zeros(1, 1, height, width)
            total[:, :, top:top + patch, left:left + patch] += out
            count[:, :, top:top + patch, left:left + patch] += 1
    return total / count


class PixelStats:
    """Statistics of the per-pixel losses (L_R, L_D) on normal training images.

    Used to z-score each loss, z(L) = (L − mean) / std, and for the Mahalanobis aggregation
    (mean vector and 2×2 covariance of the pair).
    """

    def __init__(self, l_r, l_d):
        pairs = np.stack([np.asarray(l_r, dtype=np.float64).ravel(), np.asarray(l_d, dtype=np.float64).ravel()], axis=1)
        self.mean = pairs.mean(axis=0)
        self.std = pairs.std(axis=0) + 1e-12
        self.cov = np.cov(pairs, rowvar=False) + 1e-12 * np.eye(2)

    def state(self) -> dict:
        """The statistics as plain numbers (what a saved detector stores)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "cov": self.cov.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "PixelStats":
        """The statistics that :meth:`state` returned, exactly (float64 throughout)."""
        stats = cls.__new__(cls)
        stats.mean, stats.std, stats.cov = (np.asarray(state[k], dtype=np.float64) for k in ("mean", "std", "cov"))
        return stats


AGGREGATIONS = ("max", "linear", "mahalanobis", "l_r", "l_d")


def aggregate_scores(l_r, l_d, stats: PixelStats, method: str = "max", alpha: float = 0.5) -> np.ndarray:
    """Combine per-pixel L_R and L_D maps into one anomaly map (Peccia 2021, §4.2 and §5.2).

    ``max``: max(z(L_D), z(L_R)), the source's reported score; ``linear``: (1 − α)·z(L_R) + α·z(L_D);
    ``mahalanobis``: √((v − μ)ᵀ Σ⁻¹ (v − μ)) of v = (L_R, L_D) with μ, Σ from normal data;
    ``l_r`` / ``l_d``: one z-scored loss alone. z-scores use the statistics of normal training images.
    """
    l_r, l_d = np.asarray(l_r, dtype=np.float64), np.asarray(l_d, dtype=np.float64)
    z_r = (l_r - stats.mean[0]) / stats.std[0]
    z_d = (l_d - stats.mean[1]) / stats.std[1]
    if method == "max":
        return np.maximum(z_r, z_d)
    if method == "linear":
        return (1 - alpha) * z_r + alpha * z_d
    if method == "mahalanobis":
        v = np.stack([l_r - stats.mean[0], l_d - stats.mean[1]], axis=-1)
        inv = np.linalg.inv(stats.cov)
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", v, inv, v), 0))
    if method == "l_r":
        return z_r
    if method == "l_d":
        return z_d
    raise ValueError(f"method must be one of {AGGREGATIONS}, got {method!r}")


def mean_filter(maps: np.ndarray, size: int) -> np.ndarray:
    """Mean filter of ``size``×``size`` over each N×H×W map (reflecting borders); the source uses 48×48."""
    maps = np.asarray(maps, dtype=np.float64)
    return ndimage.uniform_filter(maps, size=(1, size, size), mode="reflect") if size > 1 else maps


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------


def _patch_size(side: int, wanted: int, multiple: int = 1) -> int:
    size = min(wanted, side)
    size -= size % multiple
    if size < multiple:
        raise ValueError(f"images of side {side} are too small for patches that are multiples of {multiple}")
    return size


@dataclass(frozen=True)
class FAnoGANSettings:
    """Settings of :class:`FAnoGANDetector`: the WGAN-GP, the izi_f encoder and the sliding window."""
    patch_size: int = 32        # training crops (lowered to 4·2^k that fits the images)
    n_patches: int = 4096       # random crops drawn once from the training images
    latent_dim: int = 32
    width: int = 16
    gan_steps: int = 120        # generator steps of the WGAN-GP
    n_critic: int = 5           # critic steps per generator step
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    encoder_steps: int = 200
    encoder_lr: float = 1e-3
    kappa: float = 1.0          # weight of the critic-feature residual in a window's score
    stride: int = 8             # of the sliding window at test time, in pixels
    smoothing: float = 2.0      # Gaussian σ of the anomaly maps, in pixels

    def __post_init__(self):
        checks.at_least(self, 8, "patch_size")
        checks.at_least(self, 1, "n_patches", "latent_dim", "width", "gan_steps", "n_critic", "batch_size",
                        "encoder_steps", "stride")
        checks.positive(self, "lr", "encoder_lr")
        checks.non_negative(self, "kappa", "smoothing")
        checks.betas(self)


@register("fanogan")
class FAnoGANDetector(Detector):
    """f-AnoGAN on patches (Schlegl et al., 2019): a WGAN-GP, then an izi_f encoder, then residuals.

    ``fit`` trains a WGAN-GP on random ``patch_size`` crops of the training images (in [−1, 1]),
    freezes it, and trains the encoder on the same crops. ``predict`` slides the patch over each
    image with ``stride``: the pixel map is the image residual (x − G(E(x)))² averaged over the
    windows that cover a pixel (then Gaussian-smoothed), the image score is the largest window
    score A = residual + κ·critic-feature residual.
    """

    name = "fanogan"
    Settings = FAnoGANSettings
    PROFILES = {
        "quick": FAnoGANSettings(),
        "full": FAnoGANSettings(patch_size=64, n_patches=12000, latent_dim=128, width=64, gan_steps=10000,
                                batch_size=64, lr=1e-4, betas=(0.0, 0.9), encoder_steps=10000, encoder_lr=5e-5,
                                stride=16, smoothing=4.0),
    }
    fitted = ("network",)

    def build(self, input_shape):
        s = self.settings
        channels, height, width = input_shape
        side = min(s.patch_size, height, width)
        if side < 8:
            raise ValueError(f"fanogan needs images of at least 8×8 pixels, got {(height, width)}")
        self.patch = 4 * 2 ** int(math.log2(side / 4))  # the generator makes sides 4·2^k
        self.generator = Generator(s.latent_dim, channels, self.patch, s.width)
        self.critic = Critic(channels, self.patch, s.width)
        self.encoder = Encoder(channels, self.patch, s.latent_dim, s.width)
        self.network = nn.ModuleDict({"generator": self.generator, "critic": self.critic, "encoder": self.encoder})
        self.history: dict = {}

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        crops = random_crops(_as_signed_images(train_dataset), self.patch, s.n_patches, seed=0)
        self.history["wgan"] = train_wgan(self.generator, self.critic, crops, steps=s.gan_steps,
                                          latent_dim=s.latent_dim, n_critic=s.n_critic, batch_size=s.batch_size,
                                          lr=s.lr, betas=s.betas, device=self.device)
        self.history["encoder"] = train_izif(self.encoder, self.generator, self.critic, crops,
                                             steps=s.encoder_steps, kappa=s.kappa, batch_size=s.batch_size,
                                             lr=s.encoder_lr, device=self.device)

    def export_graph(self, images: torch.Tensor):
        """Encoder, generator and critic as one patch -> (residual map, score) graph, on a patch."""
        kappa = self.settings.kappa

        def score(x, encoder, generator, critic):
            out = fanogan_scores(x, encoder, generator, critic, kappa)
            return out["residual"], out["score"]
        return ScoringGraph(score, self.encoder, self.generator, self.critic), images[..., :self.patch, :self.patch]

    @torch.no_grad()
    def score_patches(self, patches: torch.Tensor) -> dict:
        """:func:`fanogan_scores` of N×C×P×P patches given in [0, 1]."""
        self.network.eval()
        return fanogan_scores(to_signed(patches.to(self.device)), self.encoder, self.generator, self.critic,
                              self.settings.kappa)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        for start in range(0, len(images), 16):
            batch = images[start:start + 16].to(self.device)
            window_scores = []

            def fn(patches):
                out = self.score_patches(patches)
                window_scores.append(out["score"])
                return out["residual"][:, None]

            maps.append(patchwise_maps(fn, batch, self.patch, self.settings.stride)[:, 0].cpu())
            scores.append(torch.stack(window_scores, dim=1).amax(dim=1).cpu())
        maps = torch.cat(maps).numpy()
        return torch.cat(scores).numpy(), np.stack([ndimage.gaussian_filter(m, self.settings.smoothing) for m in maps])


@dataclass(frozen=True)
class FCBiGANSettings:
    """Settings of :class:`FCBiGANDetector`: the networks, their training, and the scoring."""
    patch_size: int = 32            # training crops (lowered to a multiple of 2^depth that fits)
    n_patches: int = 4096
    latent_channels: int = 8
    width: int = 16                 # of the encoder and generator
    d_width: int = 8                # of the discriminator
    depth: int = 3                  # halvings: the code is 2^depth times smaller than the image
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    recon_weight: float = 1.0       # the reconstruction penalty (0: a fully convolutional BiGAN)
    aggregation: Literal["max", "linear", "mahalanobis", "l_r", "l_d"] = "max"
    alpha: float = 0.5              # weight of z(L_D) in the linear aggregation
    filter_size: int = 8            # of the mean filter on the maps, in pixels

    def __post_init__(self):
        checks.at_least(self, 1, "patch_size", "n_patches", "latent_channels", "width", "d_width", "depth", "steps",
                        "batch_size", "filter_size")
        checks.positive(self, "lr")
        checks.non_negative(self, "recon_weight")
        checks.in_interval(self, "alpha", 0, 1)
        checks.one_of(self, "aggregation", AGGREGATIONS)
        checks.betas(self)


@register("fcbigan")
class FCBiGANDetector(Detector):
    """The fully convolutional BiGAN of Peccia (2021): trained on patches, applied to whole images.

    ``fit`` trains E, G and the per-pixel D on random ``patch_size`` crops (flips and 90° turns,
    intensities in [−1, 1]) with least-squares losses and the reconstruction penalty, then measures
    the statistics of the per-pixel losses L_R and L_D on the whole training images. ``predict``
    runs each whole image through the networks once, z-scores L_R and L_D, aggregates them
    (``aggregation``: max by default, as the source reports; see :func:`aggregate_scores`) and
    smooths with a ``filter_size`` mean filter. The image score is the map's maximum. Being fully
    convolutional, it scores images of any size whose sides are multiples of 2^``depth``.
    """

    name = "fcbigan"
    Settings = FCBiGANSettings
    PROFILES = {
        "quick": FCBiGANSettings(),
        "full": FCBiGANSettings(patch_size=48, n_patches=12000, latent_channels=16, width=32, d_width=32,
                                steps=15000, batch_size=32, lr=1e-4, filter_size=16),
    }
    fitted = ("network", "pixel_statistics")
    any_image_size = True

    def build(self, input_shape):
        s = self.settings
        channels, height, width = input_shape
        factor = 2 ** s.depth
        if height % factor or width % factor:
            raise ValueError(f"fcbigan needs image sides that are multiples of {factor}, got {(height, width)}")
        self.patch = _patch_size(min(height, width), s.patch_size, factor)
        self.encoder = FCEncoder(channels, s.latent_channels, s.width, s.depth)
        self.generator = FCGenerator(s.latent_channels, channels, s.width, s.depth)
        self.discriminator = FCDiscriminator(channels, s.latent_channels, s.d_width, factor)
        self.network = nn.ModuleDict({"encoder": self.encoder, "generator": self.generator,
                                      "discriminator": self.discriminator})
        self.pixel_statistics: dict | None = None
        self.history: dict = {}

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        images = _as_signed_images(train_dataset)
        crops = random_crops(images, self.patch, s.n_patches, seed=0)
        self.history = train_fcbigan(self.encoder, self.generator, self.discriminator, crops, steps=s.steps,
                                     recon_weight=s.recon_weight, batch_size=s.batch_size, lr=s.lr,
                                     betas=s.betas, device=self.device)
        losses = self.pixel_losses(to_unit(images))
        self.pixel_statistics = PixelStats(losses["l_r"], losses["l_d"]).state()

    @property
    def stats(self) -> PixelStats:
        """The :class:`PixelStats` of the training images (saved as plain numbers in ``pixel_statistics``)."""
        return PixelStats.from_state(self.pixel_statistics)

    @torch.no_grad()
    def pixel_losses(self, images: torch.Tensor, batch_size: int = 16) -> dict:
        """Per-pixel L_R and L_D (numpy N×H×W) of whole images given in [0, 1], one pass each."""
        self.network.eval()
        parts = [fcbigan_losses(to_signed(images[i:i + batch_size].to(self.device)), self.encoder, self.generator,
                                self.discriminator) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in ("l_r", "l_d")}

    def export_graph(self, images: torch.Tensor):
        """Encoder, generator and discriminator as one whole image -> (L_R, L_D) graph."""
        def losses(x, encoder, generator, discriminator):
            out = fcbigan_losses(x, encoder, generator, discriminator)
            return out["l_r"], out["l_d"]
        return ScoringGraph(losses, self.encoder, self.generator, self.discriminator), images

    def maps_from_losses(self, losses: dict, aggregation: str | None = None,
                         filter_size: int | None = None) -> np.ndarray:
        """Anomaly maps from :meth:`pixel_losses`, with the settings' aggregation and filter unless given."""
        s = self.settings
        maps = aggregate_scores(losses["l_r"], losses["l_d"], self.stats, aggregation or s.aggregation, s.alpha)
        return mean_filter(maps, s.filter_size if filter_size is None else filter_size)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        factor = 2 ** self.settings.depth
        if images.shape[-2] % factor or images.shape[-1] % factor:
            raise ValueError(f"fcbigan scores images whose sides are multiples of {factor}, got {images.shape[-2]}×"
                             f"{images.shape[-1]} (batch {tuple(images.shape)}); crop or resize them")
        maps = self.maps_from_losses(self.pixel_losses(images))
        return maps.reshape(len(maps), -1).max(axis=1), maps
