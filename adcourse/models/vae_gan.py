"""Variational autoencoders, VAE-GAN, AdaCos and attention maps for localisation (chapter 6).

The pieces, in the order the chapter builds them:

- :func:`reparameterize`, :func:`kl_divergence`, :func:`vae_loss` and :class:`VAE` — the variational
  autoencoder of Kingma & Welling (2014): an encoder to μ and log σ², a sample z = μ + σ·ε, a decoder,
  and the loss "reconstruction (BCE) + KL". ``VAE(latent="conv")`` keeps the latent variable as a
  C×h×w map, CAVGA's *convolutional latent variable* (Venkataramanan et al., 2020).
- :func:`train_vaegan` — a VAE-GAN as the source (Muttagi, 2021) writes it: a discriminator (the GAN
  chapter's :class:`~adcourse.models.gans.Critic`) learns to tell images from reconstructions and
  samples, and the autoencoder learns to fool it. The step has Larsen et al.'s (2016) three parts:
  the discriminator's update, the encoder's (VAE loss + attention expansion) and the decoder's
  (reconstruction + adversarial term); the reconstruction term is the source's pixel BCE, not
  Larsen et al.'s error on the discriminator's features.
- :class:`AdaCos` — cosine logits with the adaptive scale of Zhang et al. (2019), s ≈ √2·log(C − 1).
- :func:`grad_cam`, :func:`normalise_maps`, :func:`attention_maps`, :func:`attention_expansion_loss`
  — Grad-CAM (Selvaraju et al., 2017) on the encoder's last feature maps, and CAVGA's loss that
  asks the attention to cover every region of a normal image; at test time 1 − attention is the
  anomaly map.
- Detectors ``vae`` (residual maps of a VAE) and ``cavga`` (attention maps of a convolutional-latent
  VAE-GAN trained with the attention expansion loss), registered for the benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import checks
from ..detectors import Detector, register, smooth_maps
from ..train import batch_to, fit, pick_device, training_generator
from .autoencoders import down_block, up_block
from .gans import Critic, to_signed

# ---------------------------------------------------------------------------------------------
# The variational autoencoder
# ---------------------------------------------------------------------------------------------


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ·ε with ε ~ N(0, I) and σ = exp(½·log σ²): a sample whose gradient reaches μ and log σ²."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu" if generator is not None else mu.device)
    return mu + torch.exp(0.5 * logvar) * eps.to(mu.device)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) of each sample, summed over all non-batch dimensions: shape (N,).

    Closed form: ½ Σ (μ² + σ² − log σ² − 1).
    """
    return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).flatten(1).sum(1)


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The negative ELBO per image, BCE(x, x̂) summed over pixels + β·KL, divided by the pixel count.

    Dividing by the number of pixels D changes no optimum (it scales the whole loss), and puts the
    loss at the scale of a per-pixel BCE so that other terms (adversarial, attention) can be added
    with weights near 1. Returns the batch mean and its parts (``bce``, ``kl``, both per pixel).
    """
    d = x[0].numel()
    bce = F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1)
    kl = kl_divergence(mu, logvar)
    total = ((bce + beta * kl) / d).mean()
    return total, {"bce": (bce / d).mean().detach(), "kl": (kl / d).mean().detach()}


def _depth_for(image_size: int, wanted: int) -> int:
    depth = max((d for d in range(1, wanted + 1) if image_size % 2 ** d == 0), default=0)
    if depth == 0:
        raise ValueError(f"the VAE needs an even image side, got {image_size}")
    return depth


class VAE(nn.Module):
    """Convolutional VAE. ``latent="dense"``: a vector z ∈ R^``latent_dim``; ``latent="conv"``: a map
    z ∈ R^(``latent_dim``×h×w) with h = w = ``image_size``/2^``depth`` (CAVGA's convolutional latent).

    ``forward(x)`` returns a dict: ``x_hat`` (sigmoid output), ``mu``, ``logvar``, ``z`` (sampled in
    training mode, z = μ in eval mode unless ``sample=True``) and ``features`` (the encoder's last
    feature maps, which Grad-CAM reads).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 32, width: int = 16,
                 depth: int = 4, latent: str = "dense"):
        super().__init__()
        if latent not in ("dense", "conv"):
            raise ValueError(f"latent must be 'dense' or 'conv', got {latent!r}")
        depth = _depth_for(image_size, depth)
        self.latent, self.latent_dim, self.image_size = latent, latent_dim, image_size
        channels = [in_channels] + [width * 2 ** i for i in range(depth)]
        side = image_size // 2 ** depth
        self.feature_shape = (channels[-1], side, side)
        self.latent_shape = (latent_dim,) if latent == "dense" else (latent_dim, side, side)
        self.features = nn.Sequential(*[down_block(a, b) for a, b in zip(channels, channels[1:])])
        flat = channels[-1] * side * side
        if latent == "dense":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 2 * latent_dim))
            self.expand = nn.Sequential(nn.Linear(latent_dim, flat), nn.Unflatten(1, self.feature_shape), nn.ReLU())
        else:  # no batch norm after the features: Grad-CAM's per-image gradients stay per image
            self.head = nn.Conv2d(channels[-1], 2 * latent_dim, 3, padding=1)
            self.expand = nn.Sequential(nn.Conv2d(latent_dim, channels[-1], 3, padding=1, bias=False),
                                        nn.BatchNorm2d(channels[-1]), nn.ReLU())
        ups = [up_block(b, a) for a, b in zip(channels[1:-1], channels[2:])][::-1]
        self.decoder = nn.Sequential(self.expand, *ups,
                                     nn.ConvTranspose2d(channels[1], in_channels, 4, stride=2, padding=1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, μ, log σ²)."""
        features = self.features(x)
        mu, logvar = self.head(features).chunk(2, dim=1)
        return features, mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool | None = None, generator: torch.Generator | None = None) -> dict:
        features, mu, logvar = self.encode(x)
        sample = self.training if sample is None else sample
        z = reparameterize(mu, logvar, generator) if sample else mu
        return {"x_hat": self.decode(z), "mu": mu, "logvar": logvar, "z": z, "features": features}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images decoded from z ~ N(0, I), the prior."""
        device = next(self.parameters()).device
        z = torch.randn((n, *self.latent_shape), generator=generator).to(device)
        return self.decode(z)


# ---------------------------------------------------------------------------------------------
# AdaCos
# ---------------------------------------------------------------------------------------------


def adacos_fixed_scale(n_classes: int) -> float:
    """AdaCos's fixed scale s̃ = √2·log(C − 1); zero for two classes (see the chapter's exercise)."""
    if n_classes < 2:
        raise ValueError(f"AdaCos needs at least 2 classes, got {n_classes}")
    return math.sqrt(2) * math.log(n_classes - 1)


class AdaCos(nn.Module):
    """Cosine logits s·cos θ_{i,j} between normalised features and normalised class weights.

    ``dynamic=False``: s stays at :func:`adacos_fixed_scale`. ``dynamic=True`` (the paper's dynamic
    AdaCos): in training, after each call with labels, s ← log B_avg / cos(min(π/4, θ_med)), where
    B_avg is the batch mean of Σ_{k≠y} exp(s·cos θ_k) and θ_med the median angle to the true class.
    Use the logits with ``F.cross_entropy``.
    """

    def __init__(self, in_features: int, n_classes: int, dynamic: bool = True):
        super().__init__()
        self.n_classes, self.dynamic = n_classes, dynamic
        self.weight = nn.Parameter(torch.empty(n_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("scale", torch.tensor(adacos_fixed_scale(n_classes)))

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """cos θ: N×C."""
        return F.normalize(x.flatten(1), dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(x)
        if self.training and self.dynamic and labels is not None:
            with torch.no_grad():
                one_hot = F.one_hot(labels, self.n_classes).bool()
                theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
                b_avg = torch.where(one_hot, torch.zeros_like(cos), torch.exp(self.scale * cos)).sum(1).mean()
                theta_med = theta[one_hot].median()
                self.scale.copy_(torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4)))
        return self.scale * cos


# ---------------------------------------------------------------------------------------------
# Grad-CAM and CAVGA's attention
# ---------------------------------------------------------------------------------------------


def grad_cam(features: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM of a per-image ``target`` (shape (N,)) on ``features`` (N×K×h×w, in its graph).

    α_k = mean over positions of ∂target/∂F_k; map = ReLU(Σ_k α_k F_k): N×h×w, non-negative.
    ``create_graph=True`` keeps the map differentiable, so that a loss on it can train the network.
    Each image's target must depend only on its own features (no batch norm between them).
    """
    grads = torch.autograd.grad(target.sum(), features, create_graph=create_graph, retain_graph=True)[0]
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * features).sum(1))


def normalise_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide each N×h×w map by its maximum: values in [0, 1]."""
    return maps / (maps.flatten(1).amax(1).view(-1, *[1] * (maps.dim() - 1)) + eps)


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """N×h×w → N×size×size, bilinear."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def attention_maps(model: VAE, x: torch.Tensor, create_graph: bool = False, out: dict | None = None) -> torch.Tensor:
    """CAVGA's attention A ∈ [0, 1]^(N×h×w): Grad-CAM of Σ z (the latent variable, z = μ in eval mode)
    on the encoder's last feature maps, normalised by each map's maximum. ``out`` may hold a
    forward pass of ``x`` already computed (with its graph)."""
    if out is None:
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            out = model(x)
            return normalise_maps(grad_cam(out["features"], out["z"].flatten(1).sum(1), create_graph))
    return normalise_maps(grad_cam(out["features"], out["z"].flatten(1).sum(1), create_graph))


def attention_expansion_loss(attention: torch.Tensor) -> torch.Tensor:
    """L_ae = mean over the map of (1 − A): zero when the attention covers the whole (normal) image."""
    return (1 - attention).mean()


def score_cam(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the image's reconstruction error Σ (x − x̂)² on the encoder's features: N×h×w.

    The saliency of the source's VAE-GAN: where in the encoder the anomaly score comes from."""
    with torch.enable_grad():
        out = model(x)
        error = ((out["x_hat"] - x) ** 2).flatten(1).sum(1)
        return grad_cam(out["features"], error)


# ---------------------------------------------------------------------------------------------
# VAE-GAN training
# ---------------------------------------------------------------------------------------------


VAEGAN_LOSSES = ("loss", "bce", "kl", "expansion", "adv", "d_loss", "d_real", "d_fake")


def discriminator_step(discriminator: nn.Module, optimizer: torch.optim.Optimizer, vae: VAE, x: torch.Tensor,
                       x_hat: torch.Tensor, generator: torch.Generator) -> dict:
    """Part 1 of a VAE-GAN step: one update of the discriminator on
    BCE(D(x), 1) + ½[BCE(D(x̂), 0) + BCE(D(x_p), 0)], x_p decoded from prior noise drawn from
    ``generator`` (images are given to D in [−1, 1]). Returns the loss and the mean probability
    that D gives real images (``d_real``) and reconstructions (``d_fake``)."""
    with torch.no_grad():
        prior = vae.decode(torch.randn((len(x), *vae.latent_shape), generator=generator).to(x.device))
    real, fake, fake_p = (discriminator(to_signed(t)) for t in (x, x_hat.detach(), prior))
    d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
              + 0.5 * F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
              + 0.5 * F.binary_cross_entropy_with_logits(fake_p, torch.zeros_like(fake_p)))
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.step()
    return {"d_loss": d_loss.item(), "d_real": torch.sigmoid(real).mean().item(),
            "d_fake": torch.sigmoid(fake).mean().item()}


def encoder_loss(vae: VAE, x: torch.Tensor, out: dict, vae_total: torch.Tensor,
                 expansion_weight: float) -> tuple[torch.Tensor, dict]:
    """Part 2: the encoder's objective, the VAE loss ``vae_total`` + ``expansion_weight``·L_ae
    (CAVGA's attention expansion, on the forward pass ``out`` of ``x``); ``vae_total`` itself when
    the weight is 0. Returns the loss and the value of L_ae."""
    if expansion_weight <= 0:
        return vae_total, {}
    expansion = attention_expansion_loss(attention_maps(vae, x, create_graph=True, out=out))
    return vae_total + expansion_weight * expansion, {"expansion": expansion.item()}


def decoder_loss(vae_total: torch.Tensor, discriminator: nn.Module | None, x_hat: torch.Tensor,
                 adv_weight: float) -> tuple[torch.Tensor, dict]:
    """Part 3: the decoder's objective, the VAE loss + ``adv_weight``·BCE(D(x̂), 1) (the
    non-saturating generator loss); ``vae_total`` itself without a discriminator."""
    if discriminator is None:
        return vae_total, {}
    logits = discriminator(to_signed(x_hat))
    adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return vae_total + adv_weight * adv, {"adv": adv.item()}


def autoencoder_update(optimizer: torch.optim.Optimizer, enc_loss: torch.Tensor, dec_loss: torch.Tensor,
                       enc_params: list, dec_params: list, epoch: int) -> None:
    """Parts 2 and 3 applied in one optimiser step, each loss reaching only its own half of the VAE."""
    if not (torch.isfinite(enc_loss) and torch.isfinite(dec_loss)):
        raise FloatingPointError(f"the VAE-GAN loss became non-finite at epoch {epoch + 1}; lower lr")
    optimizer.zero_grad(set_to_none=True)
    if enc_loss is dec_loss:
        enc_loss.backward()
    else:
        dec_loss.backward(inputs=dec_params, retain_graph=True)
        enc_loss.backward(inputs=enc_params)
    optimizer.step()


def train_vaegan(vae: VAE, discriminator: nn.Module | None, data: torch.Tensor, *, epochs: int, batch_size: int = 32,
                 lr: float = 1e-3, lr_d: float | None = None, beta: float = 1.0, adv_weight: float = 0.02,
                 expansion_weight: float = 0.0, seed: int = 0, device=None,
                 callback: Callable[[int, VAE], dict | None] | None = None) -> dict:
    """Train a VAE-GAN on ``data`` (N×C×H×W in [0, 1]); ``discriminator=None`` trains a plain VAE.

    Each step has three parts, split as in Larsen et al. (2016) (whose reconstruction term compares
    the discriminator's features; here it is the source's pixel BCE):

    1. discriminator: BCE(D(x), 1) + ½[BCE(D(x̂), 0) + BCE(D(x_p), 0)], x̂ a reconstruction and x_p
       decoded from the prior (images are given to D in [−1, 1]);
    2. encoder: the VAE loss (BCE + β·KL per pixel) + ``expansion_weight``·L_ae (CAVGA);
    3. decoder: the VAE's reconstruction term + ``adv_weight``·BCE(D(x̂), 1) (non-saturating).

    The encoder gets no gradient from the adversarial term and the decoder none from KL or L_ae.
    Minibatches and noise come from one generator seeded with ``seed``. ``callback(epoch, vae)`` runs
    after each epoch (with the model in eval mode); a dict it returns is appended to
    ``history["monitor"]``. Returns per-epoch means of every loss.
    """
    device = pick_device(device)
    vae.to(device).train()
    g = torch.Generator().manual_seed(seed)
    enc_params = list(vae.features.parameters()) + list(vae.head.parameters())
    dec_params = list(vae.decoder.parameters())
    opt = torch.optim.Adam(enc_params + dec_params, lr=lr)
    if discriminator is not None:
        discriminator.to(device).train()
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d or lr, betas=(0.5, 0.999))
    history = {k: [] for k in VAEGAN_LOSSES} | {"monitor": []}
    data = data.to(device)
    for epoch in range(epochs):
        sums = dict.fromkeys(VAEGAN_LOSSES, 0.0)
        order = torch.randperm(len(data), generator=g)
        batches = [order[i:i + batch_size] for i in range(0, len(data), batch_size)]
        for idx in batches:
            x = data[idx.to(device)]
            out = vae(x, sample=True, generator=g)
            values = {} if discriminator is None else discriminator_step(discriminator, opt_d, vae, x, out["x_hat"], g)
            vae_total, parts = vae_loss(out["x_hat"], x, out["mu"], out["logvar"], beta)
            enc_loss, enc_values = encoder_loss(vae, x, out, vae_total, expansion_weight)
            dec_loss, dec_values = decoder_loss(vae_total, discriminator, out["x_hat"], adv_weight)
            autoencoder_update(opt, enc_loss, dec_loss, enc_params, dec_params, epoch)
            if discriminator is not None:
                discriminator.zero_grad(set_to_none=True)
            values |= enc_values | dec_values | {"loss": vae_total.item(), "bce": parts["bce"].item(),
                                                 "kl": parts["kl"].item()}
            for key, value in values.items():
                sums[key] += value
        for k in VAEGAN_LOSSES:
            history[k].append(sums[k] / len(batches))
        if callback is not None:
            vae.eval()
            result = callback(epoch, vae)
            if result is not None:
                history["monitor"].append(result)
            vae.train()
    vae.eval()
    if discriminator is not None:
        discriminator.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Localisation helpers
# ---------------------------------------------------------------------------------------------


def iou_at_area(maps: np.ndarray, masks: np.ndarray) -> float:
    """IoU of the thresholded maps with the masks, over all pixels of all images, with the threshold
    that flags as many pixels as the masks hold (so no threshold is tuned on the score itself)."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks).astype(bool)
    k = int(masks.sum())
    if k == 0:
        raise ValueError("the masks hold no defect pixel")
    threshold = np.partition(maps.ravel(), -k)[-k]
    flagged = maps >= threshold
    return float((flagged & masks).sum() / (flagged | masks).sum())


def chance_iou(masks: np.ndarray) -> float:
    """Expected IoU of a random map at the same flagged area: p/(2 − p), p = defect-pixel fraction
    (the intersection is p² of the pixels, the union 2p − p²)."""
    p = float(np.asarray(masks).astype(bool).mean())
    return p / (2 - p)


@torch.no_grad()
def _batched(fn, images: torch.Tensor, device, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAESettings:
    """Settings of :class:`VAEDetector`."""
    latent_dim: int = 64
    width: int = 16
    epochs: int = 15
    batch_size: int = 32
    lr: float = 2e-3
    beta: float = 1.0               # weight of the KL term
    smoothing: float = 2.0          # Gaussian σ of the anomaly maps, in pixels

    def __post_init__(self):
        checks.at_least(self, 1, "latent_dim", "width", "epochs", "batch_size")
        checks.positive(self, "lr")
        checks.non_negative(self, "beta", "smoothing")


@register("vae")
class VAEDetector(Detector):
    """A VAE trained on normal images (BCE + β·KL); pixel score (x − x̂)² with x̂ decoded from μ,
    smoothed; image score the mean of the unsmoothed map, as for the autoencoder baseline."""

    name = "vae"
    Settings = VAESettings
    PROFILES = {"quick": VAESettings(), "full": VAESettings(epochs=300, batch_size=64, lr=1e-3)}
    fitted = ("network",)

    def build(self, input_shape):
        s = self.settings
        checks.square_images(self.name, input_shape)
        self.network = VAE(input_shape[0], input_shape[-1], s.latent_dim, s.width, depth=4).to(self.device)
        self.history: dict = {}

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        loader = DataLoader(train_dataset, batch_size=s.batch_size, shuffle=True,
                            generator=training_generator())

        def loss_fn(model, batch):
            x = batch_to(batch, self.device)["image"]
            out = model(x)
            return vae_loss(out["x_hat"], x, out["mu"], out["logvar"], s.beta)[0]

        self.history = {"loss": fit(self.network, loader, loss_fn, epochs=s.epochs, lr=s.lr,
                                    device=self.device, desc=self.name, amp=False)}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return _batched(lambda x: self.network(x)["x_hat"], images, self.device)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps = ((images - self.reconstruct(images)) ** 2).mean(1).numpy()
        return maps.reshape(len(maps), -1).mean(1), smooth_maps(maps, self.settings.smoothing)


@dataclass(frozen=True)
class CAVGASettings:
    """Settings of :class:`CAVGADetector`: the network, the VAE-GAN training and the maps."""
    latent_channels: int = 8
    width: int = 16
    depth: int = 2                  # halvings down to the convolutional latent map
    adversarial: bool = True        # False: a VAE with the attention expansion loss, no discriminator
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    lr_d: float = 2e-4              # of the discriminator
    beta: float = 1.0               # weight of the KL term
    adv_weight: float = 0.02
    expansion_weight: float = 1.0   # weight of the attention expansion loss L_ae (0: none)
    map_kind: Literal["attention", "residual", "score_cam"] = "attention"
    top_fraction: float = 0.05      # the image score: mean of the map's top fraction of pixels
    smoothing: float = 2.0          # Gaussian σ of the anomaly maps, in pixels

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        if self.adversarial:
            return {}
        return {key: ("adversarial", "adversarial=True") for key in ("lr_d", "adv_weight")}

    def __post_init__(self):
        checks.at_least(self, 1, "latent_channels", "width", "depth", "epochs", "batch_size")
        checks.positive(self, "lr", "lr_d")
        checks.non_negative(self, "beta", "adv_weight", "expansion_weight", "smoothing")
        checks.one_of(self, "map_kind", ("attention", "residual", "score_cam"))
        checks.in_interval(self, "top_fraction", 0, 1, low_open=True)


@register("cavga")
class CAVGADetector(Detector):
    """CAVGA, unsupervised (CAVGA-U): a VAE-GAN with a convolutional latent variable, trained with the
    attention expansion loss; the anomaly map is 1 − A (A: Grad-CAM attention from z, up-sampled).

    ``map_kind`` chooses what ``predict`` returns: ``"attention"`` (1 − A, CAVGA), ``"residual"``
    ((x − x̂)², the reconstruction baseline of the same network) or ``"score_cam"`` (Grad-CAM of the
    reconstruction error); :meth:`predict_with` scores the same network with another kind. The image
    score is the mean of the map's top ``top_fraction`` of pixels.
    ``fit(..., monitor=(images, masks))`` records the IoU and pixel AUROC of the attention maps on
    those images after every epoch (in ``history["monitor"]``).
    """

    name = "cavga"
    Settings = CAVGASettings
    PROFILES = {"quick": CAVGASettings(),
                "full": CAVGASettings(epochs=200, batch_size=64, lr=1e-3)}
    fitted = ("network", "discriminator")

    def build(self, input_shape):
        s = self.settings
        checks.square_images(self.name, input_shape)
        channels, size = input_shape[0], input_shape[-1]
        self.network = VAE(channels, size, s.latent_channels, s.width, s.depth, latent="conv")
        self.discriminator = Critic(channels, size, width=s.width) if s.adversarial else None
        self.history: dict = {}

    def fit_networks(self, train_dataset, monitor=None) -> None:
        """``monitor``: ``(images, masks)`` whose attention maps are measured after every epoch."""
        s = self.settings
        data = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
        callback = None
        if monitor is not None:
            from ..metrics import pixel_auroc
            images, masks = monitor

            def callback(epoch, vae):
                maps = self.anomaly_maps(images, "attention")
                return {"epoch": epoch + 1, "iou": iou_at_area(maps, masks), "pixel_auroc": pixel_auroc(masks, maps)}

        self.history = train_vaegan(self.network, self.discriminator, data, epochs=s.epochs, batch_size=s.batch_size,
                                    lr=s.lr, lr_d=s.lr_d, beta=s.beta, adv_weight=s.adv_weight,
                                    expansion_weight=s.expansion_weight, device=self.device, callback=callback)

    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """A ∈ [0, 1], N×H×W (up-sampled to the image size)."""
        self.network.eval()
        size = images.shape[-1]
        return torch.cat([upsample_maps(attention_maps(self.network, images[i:i + 64].to(self.device)).detach(), size).cpu()
                          for i in range(0, len(images), 64)])

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return _batched(lambda x: self.network(x)["x_hat"], images, self.device)

    def anomaly_maps(self, images: torch.Tensor, kind: str | None = None, smooth: bool = True) -> np.ndarray:
        """N×H×W maps of the given kind (default ``map_kind``), smoothed unless ``smooth=False``."""
        kind = kind or self.settings.map_kind
        if kind == "attention":
            maps = 1 - self.attention(images)
        elif kind == "residual":
            maps = ((images - self.reconstruct(images)) ** 2).mean(1)
        elif kind == "score_cam":
            self.network.eval()
            size = images.shape[-1]
            maps = torch.cat([upsample_maps(score_cam(self.network, images[i:i + 64].to(self.device)).detach(), size).cpu()
                              for i in range(0, len(images), 64)])
        else:
            raise ValueError(f"kind must be 'attention', 'residual' or 'score_cam', got {kind!r}")
        maps = maps.numpy()
        return smooth_maps(maps, self.settings.smoothing) if smooth else maps

    def predict_with(self, images: torch.Tensor, map_kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, maps)`` of the trained network with any ``map_kind`` (see the class), whatever
        the settings' ``map_kind`` is."""
        images = self.check_images(images)
        with torch.no_grad():
            return self._score_with(images, map_kind)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self._score_with(images, self.settings.map_kind)

    def _score_with(self, images: torch.Tensor, map_kind: str) -> tuple[np.ndarray, np.ndarray]:
        maps = self.anomaly_maps(images, map_kind)
        flat = np.sort(maps.reshape(len(maps), -1), axis=1)
        k = max(1, int(round(self.settings.top_fraction * flat.shape[1])))
        return flat[:, -k:].mean(1), maps
