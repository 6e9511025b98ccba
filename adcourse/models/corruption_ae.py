"""Synthetic corruption (chapter 3): AE and AESc trained to return the clean image.

Collin & De Vleeschouwer's recipe (ISPG talk 2020; ICPR 2020): an autoencoder of strided 5×5
convolutions is given a *corrupted* training image and asked for the *clean* one, so it learns to
remove what does not belong to normal images. With skip connections (AESc) the identity mapping is
too easy on clean inputs; the corruption is what stops the network from copying anomalies through
the skips. Anomalies are then found from the residual |x − x̂| or from the uncertainty of Monte
Carlo dropout; the talk's preliminary idea, a Gaussian fitted to the activations of clean images,
is :class:`GaussianActivationScorer`.

Detectors registered for the benchmark: ``ae_stain``, ``aesc_stain`` (residual) and
``aesc_stain_mcd`` (Monte Carlo dropout variance), plus ``aesc_clean`` as the no-corruption
reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import pairwise_distances
from torch import nn
from torch.utils.data import DataLoader

from .. import corruption as _corruption
from .. import checks
from ..detectors import Detector, register, smooth_maps
from ..train import fit

# Training corruptions by name; ``none`` trains a plain (identity) autoencoder.
CORRUPTIONS: dict[str, Callable | None] = {
    "none": None,
    "gaussian": _corruption.gaussian_noise,
    "salt_and_pepper": _corruption.salt_and_pepper,
    "stain": _corruption.stain,
}

# The source's Monte Carlo dropout rates (Keras code of the ICPR paper, depth 6), from the first
# level to the bottleneck: none near the image, more and more towards the bottleneck.
SOURCE_DROPOUT = (0.0, 0.0, 0.1, 0.2, 0.4, 0.5)


def source_dropout(depth: int) -> tuple[float, ...]:
    """The source's dropout rates for a network of ``depth`` levels, aligned at the bottleneck.

    Depth 6 is the source's schedule; a shallower network keeps its deepest rates (depth 4:
    0.1, 0.2, 0.4, 0.5), so that the bottleneck always has 0.5; a deeper one adds levels without
    dropout near the image.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return ((0.0,) * max(0, depth - len(SOURCE_DROPOUT)) + SOURCE_DROPOUT)[-depth:]


def down_block(c_in: int, c_out: int, kernel_size: int = 5) -> nn.Sequential:
    """Halve the resolution: strided ``kernel_size`` convolution, batch norm, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def up_block(c_in: int, c_out: int, kernel_size: int = 5) -> nn.Sequential:
    """Double the resolution: nearest up-sampling ×2, ``kernel_size`` convolution, batch norm, LeakyReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


class AE(nn.Module):
    """The source's baseline autoencoder, fully convolutional.

    Encoder: ``depth`` down blocks with ``width·2^i`` maps (level i has side H / 2^(i+1)).
    Decoder: ``depth − 1`` up blocks back to ``width`` maps at side H/2, then up-sampling ×2,
    a ``kernel_size`` convolution to the image's channels and a sigmoid.

    ``dropout``: one rate for every level, or one rate per level (``source_dropout(depth)`` is the
    source's schedule). Dropout follows every encoder block and every decoder block of the same
    level; it is what Monte Carlo dropout samples at test time. ``forward(x, features=True)``
    also returns the activations of every block (encoder then decoder) for
    :class:`GaussianActivationScorer`.
    """

    skips = False

    def __init__(self, in_channels: int = 1, depth: int = 4, width: int = 16, kernel_size: int = 5,
                 dropout: float | Sequence[float] = 0.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        rates = [float(dropout)] * depth if np.isscalar(dropout) else [float(p) for p in dropout]
        if len(rates) != depth or not all(0 <= p < 1 for p in rates):
            raise ValueError(f"dropout must be one rate in [0, 1) or {depth} of them, got {dropout}")
        self.depth, self.dropout_rates = depth, tuple(rates)
        channels = [width * 2 ** i for i in range(depth)]
        self.encoder = nn.ModuleList(down_block(c_in, c_out, kernel_size)
                                     for c_in, c_out in zip([in_channels] + channels[:-1], channels))
        # decoder[j] takes level depth−1−j to level depth−2−j
        self.decoder = nn.ModuleList(up_block(channels[level + 1], channels[level], kernel_size)
                                     for level in reversed(range(depth - 1)))
        self.encoder_dropout = nn.ModuleList(nn.Dropout(p) for p in rates)
        self.decoder_dropout = nn.ModuleList(nn.Dropout(rates[level]) for level in reversed(range(depth - 1)))
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(channels[0], in_channels, kernel_size, padding=kernel_size // 2),
                                  nn.Sigmoid())

    def forward(self, x: torch.Tensor, features: bool = False):
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"{type(self).__name__} of depth {self.depth} needs sides divisible by "
                             f"{2 ** self.depth}, got {tuple(x.shape[-2:])}")
        skips, acts = [], []
        h = x
        for block, drop in zip(self.encoder, self.encoder_dropout):
            h = drop(block(h))
            skips.append(h)
            acts.append(h)
        for j, (block, drop) in enumerate(zip(self.decoder, self.decoder_dropout)):
            h = drop(block(h))
            acts.append(h)
            if self.skips:  # additive skip from the encoder level of the same resolution
                h = h + skips[self.depth - 2 - j]
        out = self.head(h)
        return (out, acts) if features else out


class AESc(AE):
    """:class:`AE` with additive skip connections: decoder level i + encoder level i (i < depth − 1)."""

    skips = True


ARCHITECTURES = {"ae": AE, "aesc": AESc}


# ---------------------------------------------------------------------------------------------
# Corrupted inputs, clean targets
# ---------------------------------------------------------------------------------------------

def corrupt_batch(images: torch.Tensor, corruption: Callable | str | None, rng: np.random.Generator,
                  **options) -> torch.Tensor:
    """Apply ``corruption(image, rng, **options) -> (corrupted, mask)`` to every image of N×C×H×W.

    ``corruption`` is a function of :mod:`adcourse.corruption` (or one of your own with the same
    signature), a name in :data:`CORRUPTIONS`, or None (no corruption). Returns a new tensor.
    """
    if isinstance(corruption, str):
        if corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {corruption!r}; choose one of {sorted(CORRUPTIONS)}")
        corruption = CORRUPTIONS[corruption]
    if corruption is None:
        return images.clone()
    array = images.detach().cpu().numpy().transpose(0, 2, 3, 1)  # N×H×W×C
    out = []
    for image in array:
        corrupted, _ = corruption(image[..., 0] if image.shape[-1] == 1 else image, rng, **options)
        out.append(np.asarray(corrupted, dtype=np.float32).reshape(image.shape))
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2)).to(images.dtype)


# ---------------------------------------------------------------------------------------------
# Scoring: residual, Monte Carlo dropout, Gaussian of activations
# ---------------------------------------------------------------------------------------------

def residual_map(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """|x − x̂| averaged over channels: N×H×W."""
    return (images - reconstructions).abs().mean(dim=1)


def enable_dropout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Model in eval mode (batch norm uses its running statistics), dropout layers on or off."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train(enabled)
    return model


@torch.no_grad()
def mc_dropout(model: nn.Module, images: torch.Tensor, samples: int = 30, dropout: bool = True,
               batch_size: int = 64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo dropout: ``samples`` stochastic passes with dropout on; per-pixel mean and variance.

    Returns ``(mean, variance)``, both N×C×H×W on the CPU. With ``dropout=False`` every pass is
    the same deterministic network, so the variance is exactly zero. The model is left in eval
    mode with dropout off.
    """
    if samples < 2:
        raise ValueError(f"Monte Carlo dropout needs at least 2 samples, got {samples}")
    device = device or next(model.parameters()).device
    enable_dropout(model, dropout)
    means, variances = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        passes = torch.stack([model(x) for _ in range(samples)])  # T×n×C×H×W
        means.append(passes.mean(0).cpu())
        variances.append(passes.var(0, unbiased=False).cpu())
    enable_dropout(model, False)
    return torch.cat(means), torch.cat(variances)


@torch.no_grad()
def activations(model: AE, images: torch.Tensor, batch_size: int = 64, device=None) -> list[torch.Tensor]:
    """The activation of every block of ``model`` (eval mode, no dropout), each N×C×h×w on the CPU."""
    device = device or next(model.parameters()).device
    enable_dropout(model, False)
    chunks = [model(images[i:i + batch_size].to(device), features=True)[1]
              for i in range(0, len(images), batch_size)]
    return [torch.cat([c[layer] for c in chunks]).cpu() for layer in range(len(chunks[0]))]


class GaussianActivationScorer:
    """The talk's preliminary idea: a Gaussian of each layer's activations of clean images.

    Each layer's activation N×C×h×w becomes one vector per image of at most ``dim`` numbers:

    - ``reduce="sample"`` (the talk): a fixed random mask per layer picks ``dim`` entries of the
      C×h×w activation, the same entries for every image;
    - ``reduce="pool"``: each channel is averaged over space (C numbers), then a fixed random
      subset of ``dim`` channels is kept when C > ``dim``.

    ``fit`` estimates each layer's mean and covariance (Ledoit–Wolf shrinkage, so that a few
    hundred images suffice for 64 dimensions); ``score`` is the sum over layers of the squared
    Mahalanobis distance divided by the layer's dimension, (x − μ)ᵀ Σ⁻¹ (x − μ) / d, whose
    expected value is about 1 per layer for clean images.
    """

    def __init__(self, dim: int = 64, reduce: str = "pool", seed: int = 0):
        if reduce not in ("sample", "pool"):
            raise ValueError(f"reduce must be 'sample' or 'pool', got {reduce!r}")
        self.dim, self.reduce, self.seed = dim, reduce, seed
        self.indices: list[np.ndarray] = []
        self.gaussians: list[LedoitWolf] = []
        # What scoring reads of each layer's Gaussian: its mean and its precision (inverse covariance).
        self.locations: list[np.ndarray] = []
        self.precisions: list[np.ndarray] = []

    def vectors(self, layer: int, activation: torch.Tensor) -> np.ndarray:
        """N×d vectors of one layer's N×C×h×w activation (drawing the layer's mask on first use)."""
        a = activation.detach().cpu().double()
        a = a.mean(dim=(2, 3)) if self.reduce == "pool" else a.flatten(1)
        if layer == len(self.indices):
            rng = np.random.default_rng([self.seed, layer])
            size = a.shape[1]
            self.indices.append(np.sort(rng.choice(size, self.dim, replace=False)) if size > self.dim
                                else np.arange(size))
        return a[:, self.indices[layer]].numpy()

    def fit(self, layer_activations: Sequence[torch.Tensor]) -> "GaussianActivationScorer":
        self.indices, self.gaussians = [], []
        for layer, activation in enumerate(layer_activations):
            if len(activation) < 2:
                raise ValueError("a Gaussian needs at least 2 training images")
            self.gaussians.append(LedoitWolf().fit(self.vectors(layer, activation)))
        self.locations = [g.location_ for g in self.gaussians]
        self.precisions = [g.get_precision() for g in self.gaussians]
        return self

    def state(self) -> dict:
        """Everything scoring needs, as tensors and plain values (what a saved detector stores)."""
        return {"dim": self.dim, "reduce": self.reduce, "seed": self.seed,
                "indices": [torch.from_numpy(np.asarray(i, dtype=np.int64)) for i in self.indices],
                "locations": [torch.from_numpy(loc) for loc in self.locations],
                "precisions": [torch.from_numpy(p) for p in self.precisions]}

    @classmethod
    def from_state(cls, state: dict) -> "GaussianActivationScorer":
        """A scorer that scores exactly as the one whose :meth:`state` this is."""
        scorer = cls(state["dim"], state["reduce"], state["seed"])
        scorer.indices = [i.numpy() for i in state["indices"]]
        scorer.locations = [loc.numpy() for loc in state["locations"]]
        scorer.precisions = [p.numpy() for p in state["precisions"]]
        return scorer

    def layer_scores(self, layer_activations: Sequence[torch.Tensor]) -> np.ndarray:
        """L×N squared Mahalanobis distances divided by each layer's dimension."""
        if not self.locations:
            raise RuntimeError("call fit(...) on activations of clean images first")
        if len(layer_activations) != len(self.locations):
            raise ValueError(f"fitted on {len(self.locations)} layers, got {len(layer_activations)}")
        # The computation of sklearn's EmpiricalCovariance.mahalanobis, on the stored mean and precision.
        layers = zip(self.locations, self.precisions, layer_activations)
        return np.stack([pairwise_distances(self.vectors(i, a), loc[None], metric="mahalanobis", VI=precision)[:, 0] ** 2
                         / len(self.indices[i]) for i, (loc, precision, a) in enumerate(layers)])

    def score(self, layer_activations: Sequence[torch.Tensor]) -> np.ndarray:
        """One score per image: the sum of :meth:`layer_scores` over layers."""
        return self.layer_scores(layer_activations).sum(axis=0)


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------

def _largest_depth(size: int, wanted: int, min_side: int = 4) -> int:
    """The deepest network up to ``wanted`` whose levels divide ``size`` and keep ``min_side`` pixels."""
    depth = wanted
    while depth > 1 and (size % 2 ** depth or size // 2 ** depth < min_side):
        depth -= 1
    if size % 2 ** depth:
        raise ValueError(f"image side {size} must be even; resize the images (image_size=...)")
    return depth


@dataclass(frozen=True)
class CorruptionAESettings:
    """Settings of :class:`CorruptionAEDetector` (``arch``, ``corruption`` and ``scoring`` are fixed by
    the registered variants)."""
    arch: Literal["ae", "aesc"] = "aesc"
    # a name of CORRUPTIONS, or a function fn(image, rng) -> (corrupted, mask) (such a detector cannot be saved)
    corruption: str | Callable = "stain"
    scoring: Literal["residual", "mcd", "gaussian"] = "residual"
    dropout: str | float | tuple[float, ...] = "source"  # "source" (source_dropout), one rate, or one rate per level
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 8
    depth: int = 4                  # lowered to fit the image side
    mc_samples: int = 8             # Monte Carlo dropout passes
    plateau: bool = False           # halve the learning rate on loss plateaus
    corruption_pool: int | None = None  # None: a fresh corruption at every step; K: K versions drawn once
    smoothing: float = 2.0          # Gaussian σ of the anomaly maps, in pixels
    image_score: Literal["max", "mean"] = "max"
    seed: int = 0

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        unused = {}
        if self.scoring != "mcd":
            unused["mc_samples"] = ("scoring", "scoring='mcd'")
        if self.corruption == "none":
            unused["corruption_pool"] = ("corruption", "corruption other than 'none'")
        return unused

    def __post_init__(self):
        checks.one_of(self, "arch", sorted(ARCHITECTURES))
        if isinstance(self.corruption, str):
            checks.one_of(self, "corruption", sorted(CORRUPTIONS))
        elif not callable(self.corruption):
            raise TypeError(f"corruption must be a name of {sorted(CORRUPTIONS)} or a function "
                            f"fn(image, rng) -> (corrupted, mask), got {type(self.corruption).__name__}")
        checks.one_of(self, "scoring", ("residual", "mcd", "gaussian"))
        checks.one_of(self, "image_score", ("max", "mean"))
        rates = self.dropout if isinstance(self.dropout, (tuple, list)) else [self.dropout]
        if self.dropout != "source" and not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1
                                                for p in rates):
            raise ValueError(f"dropout={self.dropout!r} is out of range ({type(self).__name__}): dropout must be "
                             "'source', one rate in [0, 1) or one rate in [0, 1) per level")
        if isinstance(self.dropout, list):
            object.__setattr__(self, "dropout", tuple(self.dropout))
        checks.at_least(self, 1, "epochs", "batch_size", "width", "depth", "corruption_pool")
        checks.at_least(self, 2, "mc_samples")
        checks.positive(self, "lr")
        checks.non_negative(self, "smoothing")


def variant_name(settings: CorruptionAESettings) -> str:
    """``arch_corruption`` (``clean`` for no corruption), with ``_mcd`` for Monte Carlo dropout scoring."""
    corruption = settings.corruption
    label = corruption if isinstance(corruption, str) else getattr(corruption, "__name__", "custom")
    return f"{settings.arch}_{'clean' if label == 'none' else label}" + ("_mcd" if settings.scoring == "mcd" else "")


@register("ae_stain", arch="ae", corruption="stain", scoring="residual")
@register("aesc_stain", arch="aesc", corruption="stain", scoring="residual")
@register("aesc_stain_mcd", arch="aesc", corruption="stain", scoring="mcd")
@register("aesc_clean", arch="aesc", corruption="none", scoring="residual")
class CorruptionAEDetector(Detector):
    """Train :class:`AE` / :class:`AESc` to map corrupted training images to the clean ones.

    ``arch``: ``"ae"`` or ``"aesc"``; ``corruption``: a name of :data:`CORRUPTIONS` or a function
    ``fn(image, rng) -> (corrupted, mask)``; ``scoring``: ``"residual"`` (|x − x̂|),
    ``"mcd"`` (per-pixel variance of ``mc_samples`` Monte Carlo dropout passes) or ``"gaussian"``
    (:class:`GaussianActivationScorer`, image scores only: its maps are None). Every model is
    trained with the source's dropout schedule (``dropout="source"``, see :func:`source_dropout`),
    and ``fit`` also fits the Gaussians of the clean training images' activations, so one trained
    network can be scored all three ways (:meth:`predict_with`).

    Settings (see :class:`CorruptionAESettings`): ``epochs``, ``batch_size``, ``lr``, ``width``,
    ``depth`` (lowered to fit the image side), ``mc_samples``, ``plateau`` (halve the learning rate
    on loss plateaus) and ``corruption_pool``: None draws a fresh corruption for every image at
    every step; an integer K draws K corrupted versions of every training image once, and each step
    picks one of them (faster when drawing is the bottleneck, less varied).

    Maps are Gaussian-smoothed with ``smoothing`` pixels; the image score is the maximum of the
    smoothed map (``image_score="max"``, the official choice for pixel-map methods) or its mean.
    Created directly (not through :func:`~adcourse.detectors.create`), the detector is named after
    its variant, e.g. ``ae_clean`` or ``aesc_gaussian``.
    """

    name = "aesc_stain"
    Settings = CorruptionAESettings
    PROFILES = {
        # quick: seconds per model on a 2-core CPU (64×64 patches, narrow and shallow network).
        "quick": CorruptionAESettings(),
        # full: the source's settings (ICPR 2020): depth 6, 16·2^i maps, batch 16, 250 epochs,
        # Adam 0.01 decayed on plateau, 30 Monte Carlo samples; 8 corruptions per image drawn in advance
        # (drawing a fresh one at every step keeps the GPU waiting for the CPU).
        "full": CorruptionAESettings(epochs=250, batch_size=16, lr=1e-2, width=16, depth=6, mc_samples=30,
                                     plateau=True, corruption_pool=8),
    }
    fitted = ("network", "activation_gaussians")

    def __init__(self, device=None, method: str | None = None, **overrides):
        super().__init__(device, method, **overrides)
        if method is None:
            self.name = variant_name(self.settings_for("quick"))

    def build(self, input_shape):
        s = self.settings
        channels, height, width = input_shape
        depth = _largest_depth(min(height, width), s.depth)
        dropout = source_dropout(depth) if s.dropout == "source" else s.dropout
        self.network = ARCHITECTURES[s.arch](channels, depth, s.width, dropout=dropout).to(self.device)
        self.activation_gaussians: dict | None = None
        self.history: list[float] = []

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        clean = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
        rng = np.random.default_rng(s.seed)
        pool = s.corruption_pool
        if pool:  # draw `pool` corrupted versions of every image once; each step picks one at random
            versions = torch.stack([corrupt_batch(clean, s.corruption, rng) for _ in range(pool)])
        # The loader yields indices into `clean`, so that inputs and targets stay paired.
        loader = DataLoader(torch.arange(len(clean)), batch_size=s.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(s.seed))

        def loss_fn(model, index):
            if pool:
                noisy = versions[torch.from_numpy(rng.integers(0, pool, len(index))), index]
            else:
                noisy = corrupt_batch(clean[index], s.corruption, rng)
            return torch.mean((model(noisy.to(self.device)) - clean[index].to(self.device)) ** 2)

        optimizer = torch.optim.Adam(self.network.parameters(), lr=s.lr)
        if s.plateau:  # the source: Adam 0.01, learning rate halved on plateaus
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=10)
            self.history = []
            for _ in range(s.epochs):
                self.history += fit(self.network, loader, loss_fn, epochs=1, optimizer=optimizer,
                                    device=self.device, progress=False)
                scheduler.step(self.history[-1])
        else:
            self.history = fit(self.network, loader, loss_fn, epochs=s.epochs, optimizer=optimizer,
                               device=self.device, desc=self.name)
        enable_dropout(self.network, False)
        # The Gaussians of the clean training images' activations, for scoring="gaussian".
        self.activation_gaussians = GaussianActivationScorer(seed=s.seed).fit(
            activations(self.network, clean, device=self.device)).state()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Deterministic reconstructions (eval mode, dropout off)."""
        enable_dropout(self.network, False)
        return torch.cat([self.network(images[i:i + batch_size].to(self.device)).cpu()
                          for i in range(0, len(images), batch_size)])

    def _image_scores(self, maps: np.ndarray) -> np.ndarray:
        flat = maps.reshape(len(maps), -1)
        return flat.max(axis=1) if self.settings.image_score == "max" else flat.mean(axis=1)

    def predict_with(self, images: torch.Tensor, scoring: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(scores, maps)`` of the trained network under any ``scoring`` (see the class)."""
        images = self.check_images(images)
        with torch.no_grad():
            return self._score_with(images, scoring)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return self._score_with(images, self.settings.scoring)

    def _score_with(self, images: torch.Tensor, scoring: str) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.settings
        if scoring == "residual":
            maps = smooth_maps(residual_map(images, self.reconstruct(images)).numpy(), s.smoothing)
            return self._image_scores(maps), maps
        if scoring == "mcd":
            if not any(p > 0 for p in self.network.dropout_rates):
                raise ValueError("scoring='mcd' needs a network trained with dropout (dropout='source' or a rate > 0)")
            # The dropout masks come from a generator seeded with `seed`: the same network gives
            # the same scores whatever ran before (without touching the caller's random state).
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(s.seed)
                _, variance = mc_dropout(self.network, images, s.mc_samples, device=self.device)
            maps = smooth_maps(variance.mean(dim=1).numpy(), s.smoothing)
            return self._image_scores(maps), maps
        if scoring == "gaussian":
            scorer = GaussianActivationScorer.from_state(self.activation_gaussians)
            return scorer.score(activations(self.network, images, device=self.device)), None
        raise ValueError(f"scoring must be 'residual', 'mcd' or 'gaussian', got {scoring!r}")

