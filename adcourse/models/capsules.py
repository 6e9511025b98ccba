"""Capsule networks for supervised anomaly detection with imbalanced data (chapter 7).

The pieces of Sabour et al.'s CapsNet, written so that later chapters can reuse them:

* :func:`squash` — the capsule non-linearity: keeps a vector's direction, maps its length to [0, 1);
* :func:`dynamic_routing` — routing by agreement on *any* prediction vectors ``u_hat`` of shape
  ``(batch, n_in, n_out, dim)`` (the pyramidal chapter routes pooled features with it);
* :class:`PrimaryCaps`, :class:`DigitCaps`, :class:`CapsNet` — convolution → primary capsules →
  two output capsules (normal, anomaly) → a decoder from the normal capsule;
* :func:`margin_loss`, :func:`capsnet_loss` — the training objective;
* :func:`anomaly_score` — the score of Piciarelli, Mishra and Foresti,
  AS = ‖z_a‖ − ‖z_n‖ + r_l, and :func:`standard_decision`, CapsNet's own rule ‖z_a‖ > ‖z_n‖;
* :class:`CapsNetDetector`, registered as ``capsnet`` (``supervised = True``): it needs a training
  set that holds a few *labelled* anomalies, e.g. ``OneClassDigits(3, "train", anomaly_fraction=0.01)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from .. import checks
from ..detectors import Detector, register, smooth_maps
from ..train import batch_to, fit

NORMAL, ANOMALY = 0, 1  # index of each output capsule
_HALF = (torch.float16, torch.bfloat16)


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """v = ‖s‖² / (1 + ‖s‖²) · s / ‖s‖ along ``dim``: same direction as ``s``, length in [0, 1).

    Short vectors shrink to almost nothing (‖v‖ ≈ ‖s‖²), long ones saturate just below 1, so a
    capsule's length can be read as the probability that its entity is present. ``eps`` keeps the
    gradient finite at s = 0.
    """
    s32 = s.float() if s.dtype in _HALF else s  # half precision (autocast): eps would vanish in float16
    squared = (s32 * s32).sum(dim=dim, keepdim=True)
    return (squared / (1 + squared) * s32 / torch.sqrt(squared + eps)).to(s.dtype)


def dynamic_routing(u_hat: torch.Tensor, iterations: int = 3, return_couplings: bool = False):
    """Routing by agreement (Sabour et al. 2017, Procedure 1) on prediction vectors ``u_hat``.

    ``u_hat``: ``(batch, n_in, n_out, dim)``, the vote û_{j|i} of each input capsule i for each
    output capsule j. Starting from logits b_ij = 0, each iteration computes

        c_ij = softmax_j(b_ij)            (each input shares itself among the outputs)
        s_j  = Σ_i c_ij û_{j|i}           (weighted vote)
        v_j  = squash(s_j)                (output capsule)
        b_ij ← b_ij + û_{j|i} · v_j       (reward the inputs that agree with the output)

    and returns ``v`` of shape ``(batch, n_out, dim)``; with ``return_couplings=True`` also the list
    of the coupling coefficients ``c`` (each ``(batch, n_in, n_out)``) used at every iteration.
    The last iteration's agreement update is skipped: it would not change ``v``.
    """
    if u_hat.dim() != 4:
        raise ValueError(f"u_hat must be (batch, n_in, n_out, dim), got shape {tuple(u_hat.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if u_hat.dtype in _HALF:
        u_hat = u_hat.float()  # routing runs in float32 under mixed precision; v is float32 then
    b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)
    couplings = []
    for r in range(iterations):
        c = torch.softmax(b, dim=2)
        couplings.append(c)
        v = squash(torch.einsum("bij,bijd->bjd", c, u_hat))          # s_j = Σ_i c_ij û_{j|i}
        if r < iterations - 1:
            b = b + torch.einsum("bijd,bjd->bij", u_hat, v)              # agreement û_{j|i} · v_j
    return (v, couplings) if return_couplings else v


class PrimaryCaps(nn.Module):
    """A convolution whose output channels are read as ``n_types`` capsules of ``dim`` numbers.

    Every position of the output grid holds one capsule of each type, so the layer produces
    ``n_types × H' × W'`` capsules (1152 = 32 × 6 × 6 for CapsNet on 28×28 MNIST), squashed.
    Output: ``(batch, n_capsules, dim)``.
    """

    def __init__(self, in_channels: int = 256, n_types: int = 32, dim: int = 8, kernel_size: int = 9, stride: int = 2):
        super().__init__()
        self.n_types, self.dim = n_types, dim
        self.conv = nn.Conv2d(in_channels, n_types * dim, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)                                         # B × (types·dim) × H × W
        b, _, h, w = out.shape
        out = out.view(b, self.n_types, self.dim, h, w).permute(0, 1, 3, 4, 2)  # B × types × H × W × dim
        return squash(out.reshape(b, self.n_types * h * w, self.dim))


class DigitCaps(nn.Module):
    """Output capsules: each input capsule votes û_{j|i} = W_ij u_i for each output, then routing.

    One matrix W_ij of ``out_dim × in_dim`` per pair (input capsule i, output capsule j).
    Input ``(batch, n_in, in_dim)``; output ``(batch, n_out, out_dim)``.
    """

    def __init__(self, n_in: int, in_dim: int = 8, n_out: int = 2, out_dim: int = 16, iterations: int = 3):
        super().__init__()
        self.n_in, self.iterations = n_in, iterations
        self.weight = nn.Parameter(0.01 * torch.randn(n_in, n_out, out_dim, in_dim))

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """û_{j|i} = W_ij u_i: ``(batch, n_in, n_out, out_dim)``."""
        if u.shape[1] != self.n_in:
            raise ValueError(f"DigitCaps was built for {self.n_in} input capsules, got {u.shape[1]}")
        return torch.einsum("ijdk,bik->bijd", self.weight, u)

    def forward(self, u: torch.Tensor, return_couplings: bool = False):
        return dynamic_routing(self.predictions(u), self.iterations, return_couplings)


class CapsNet(nn.Module):
    """Conv → PrimaryCaps → DigitCaps (normal, anomaly) → decoder of three FC layers from the normal capsule.

    The defaults are Sabour et al.'s network as adapted in the source: 256 9×9 convolutions, 32 types
    of 8-d primary capsules (1152 on 28×28 inputs), two 16-d output capsules, 3 routing iterations,
    decoder 16 → 512 → 1024 → C·H·W with a sigmoid. ``forward`` returns a dict: ``capsules``
    (B × 2 × 16), ``lengths`` (B × 2), ``reconstruction`` (B × C × H × W, decoded from the normal
    capsule whatever the label: the decoder is a model of normal images only).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, conv_channels: int = 256,
                 primary_types: int = 32, primary_dim: int = 8, n_classes: int = 2, capsule_dim: int = 16,
                 routing_iterations: int = 3, decoder_hidden: tuple[int, int] = (512, 1024)):
        super().__init__()
        if image_size < 25:
            raise ValueError(f"CapsNet's two 9×9 convolutions need images of at least 25 pixels, got {image_size}")
        self.image_shape = (in_channels, image_size, image_size)
        self.conv = nn.Sequential(nn.Conv2d(in_channels, conv_channels, 9), nn.ReLU())
        self.primary = PrimaryCaps(conv_channels, primary_types, primary_dim)
        grid = (image_size - 8 - 9) // 2 + 1
        self.n_primary = primary_types * grid * grid
        self.digits = DigitCaps(self.n_primary, primary_dim, n_classes, capsule_dim, routing_iterations)
        h1, h2 = decoder_hidden
        self.decoder = nn.Sequential(
            nn.Linear(capsule_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, in_channels * image_size * image_size), nn.Sigmoid())

    def encode(self, x: torch.Tensor, return_couplings: bool = False):
        return self.digits(self.primary(self.conv(x)), return_couplings)

    def forward(self, x: torch.Tensor) -> dict:
        capsules = self.encode(x)
        reconstruction = self.decoder(capsules[:, NORMAL]).view(-1, *self.image_shape)
        return {"capsules": capsules, "lengths": capsules.norm(dim=-1), "reconstruction": reconstruction}


def margin_loss(lengths: torch.Tensor, labels: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                lam: float = 0.5) -> torch.Tensor:
    """L = Σ_k T_k max(0, m⁺ − ‖v_k‖)² + λ (1 − T_k) max(0, ‖v_k‖ − m⁻)², averaged over the batch.

    T_k = 1 for the true class k of the image. The true capsule must be longer than m⁺, the others
    shorter than m⁻; λ < 1 keeps the absent classes from shrinking every capsule early in training.
    """
    target = F.one_hot(labels.long(), lengths.shape[1]).to(lengths.dtype)
    present = target * F.relu(m_plus - lengths) ** 2
    absent = lam * (1 - target) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(dim=1).mean()


def reconstruction_error(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """r_l: the mean squared error of each image, in [0, 1] for images and reconstructions in [0, 1]."""
    return ((images - reconstructions) ** 2).flatten(1).mean(dim=1)


def capsnet_loss(outputs: dict, images: torch.Tensor, labels: torch.Tensor, recon_weight: float = 0.0005,
                 **margin_kwargs) -> torch.Tensor:
    """Margin loss + ``recon_weight`` × the summed squared error of the *normal* images' reconstructions.

    As in Sabour et al., the reconstruction term is a sum over pixels scaled by 0.0005 so that it
    does not dominate the margin loss. Only normal images are reconstructed: the decoder reads the
    normal capsule and should learn what normal images look like (the source trains it on a set
    that is 90–99 % normal; we leave the few anomalies out of this term altogether).
    """
    margin = margin_loss(outputs["lengths"], labels, **margin_kwargs)
    normal = (labels == NORMAL).to(images.dtype)
    squared = ((images - outputs["reconstruction"]) ** 2).flatten(1).sum(dim=1)
    return margin + recon_weight * (normal * squared).sum() / len(images)


def anomaly_score(lengths: torch.Tensor, recon_error: torch.Tensor) -> torch.Tensor:
    """AS = ‖z_a‖ − ‖z_n‖ + r_l (source eq. 3.3): in [−1, 2], higher means more anomalous."""
    return lengths[:, ANOMALY] - lengths[:, NORMAL] + recon_error


def standard_decision(lengths: torch.Tensor) -> torch.Tensor:
    """CapsNet's own rule: anomalous when the anomaly capsule is the longer one (‖z_a‖ > ‖z_n‖)."""
    return lengths[:, ANOMALY] > lengths[:, NORMAL]


def dataset_labels(dataset) -> np.ndarray:
    """The 0/1 labels of a dataset: ``.labels`` when it has them, else read item by item."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == len(dataset):
        return np.asarray(labels, dtype=np.int64)
    return np.array([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


@dataclass(frozen=True)
class CapsNetSettings:
    """Settings of :class:`CapsNetDetector`: the network, its training and the calibrated threshold."""
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    min_steps: int = 80             # at least this many optimiser steps, whatever the training set's size
    conv_channels: int = 16
    primary_types: int = 4
    decoder_hidden: tuple[int, int] = (64, 128)
    routing_iterations: int = 3
    recon_weight: float = 0.0005
    calibration_fraction: float = 0.2   # of the training normals, held out to set the threshold (0: none)
    calibration_quantile: float = 0.95  # the threshold: this quantile of AS on the held-out normals
    smoothing: float = 1.0          # Gaussian σ of the anomaly maps, in pixels
    seed: int = 0

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        if self.calibration_fraction == 0:
            return {"calibration_quantile": ("calibration_fraction", "calibration_fraction > 0")}
        return {}

    def __post_init__(self):
        checks.at_least(self, 1, "epochs", "batch_size", "conv_channels", "primary_types", "routing_iterations")
        checks.at_least(self, 0, "min_steps")
        checks.positive(self, "lr")
        checks.non_negative(self, "recon_weight", "smoothing")
        checks.in_interval(self, "calibration_fraction", 0, 1, high_open=True)
        checks.in_interval(self, "calibration_quantile", 0, 1)
        if len(self.decoder_hidden) != 2 or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                                                    for h in self.decoder_hidden):
            raise ValueError(f"decoder_hidden={self.decoder_hidden!r} is out of range ({type(self).__name__}): "
                             "decoder_hidden must be two layer widths of at least 1")
        object.__setattr__(self, "decoder_hidden", tuple(self.decoder_hidden))


@register("capsnet")
class CapsNetDetector(Detector):
    """Supervised anomaly detection with a two-capsule CapsNet (Piciarelli, Mishra & Foresti).

    ``fit`` trains on a training set that is mostly normal but holds a few labelled anomalies
    (label 1), with the margin loss + reconstruction loss. ``predict`` returns the source's
    anomaly score AS = ‖z_a‖ − ‖z_n‖ + r_l per image and the squared residual of the
    reconstruction (decoded from the normal capsule) as the map.

    A threshold for AS: the source does not say how it thresholds AS to compute accuracies. Here,
    when ``calibration_fraction`` > 0, that fraction of the training *normals* is held out of
    training (seeded), and ``threshold`` is the ``calibration_quantile`` of their AS: a false-alarm
    budget set on normal images only (the anomalies are too few to spare). :meth:`decide` applies it.

    Profiles: ``full`` is the source's network and schedule (256 conv channels, 32 types of primary
    capsules, Adam 1e-3, batch 32, 10 epochs); ``quick`` is a reduced CapsNet (16 conv channels,
    4 types: 144 primary capsules on 28×28, decoder 16 → 64 → 128 → H·W) that trains in seconds on a CPU. Both train for at
    least ``min_steps`` optimiser steps, so that a small training set (built-in digits: ~120 images)
    still sees enough updates.
    """

    name = "capsnet"
    supervised = True
    Settings = CapsNetSettings
    PROFILES = {
        "quick": CapsNetSettings(),
        "full": CapsNetSettings(min_steps=1000, conv_channels=256, primary_types=32, decoder_hidden=(512, 1024)),
    }
    fitted = ("network", "threshold")

    # -- training -----------------------------------------------------------------------------
    def build(self, input_shape):
        s = self.settings
        checks.square_images(self.name, input_shape)
        channels, size = input_shape[0], input_shape[-1]
        torch.manual_seed(s.seed)
        self.network = CapsNet(channels, size, s.conv_channels, s.primary_types,
                               routing_iterations=s.routing_iterations, decoder_hidden=s.decoder_hidden).to(self.device)
        self.history: list[float] = []
        self.threshold: float | None = None
        self.calibration_details: dict | None = None  # lengths, recon_error, score of the held-out normals

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        try:
            labels = dataset_labels(train_dataset)
        except KeyError:
            raise ValueError(f"{self.name} is a supervised method: every training item needs a 'label' "
                             "(0 normal, 1 anomaly)") from None
        n_anomalies = int((labels == 1).sum())
        if n_anomalies == 0:
            raise ValueError(
                f"{self.name} is a supervised method: its training set must hold a few labelled anomalies "
                f"(label 1), but all {len(labels)} training images are normal. Build an imbalanced training "
                "set, e.g. OneClassDigits(normal_class, 'train', anomaly_fraction=0.01) (1 % anomalies from "
                "the other classes), or use a method that trains on normal images only.")
        if not (labels == 0).any():
            raise ValueError(f"{self.name}: all {len(labels)} training images are labelled anomalies (1); "
                             "the training set must be mostly normal images (label 0)")
        rng = np.random.default_rng(s.seed)
        normal_idx = rng.permutation(np.flatnonzero(labels == 0))
        n_cal = int(round(s.calibration_fraction * len(normal_idx)))
        calibration, train_idx = normal_idx[:n_cal], np.sort(np.concatenate([normal_idx[n_cal:], np.flatnonzero(labels == 1)]))
        train_part = Subset(train_dataset, train_idx.tolist()) if n_cal else train_dataset

        loader = DataLoader(train_part, batch_size=s.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(s.seed))
        epochs = max(s.epochs, math.ceil(s.min_steps / max(len(loader), 1)))

        def loss_fn(model, batch):
            batch = batch_to(batch, self.device)
            x, y = batch["image"], torch.as_tensor(batch["label"], device=self.device)
            return capsnet_loss(model(x), x, y, s.recon_weight)

        self.history = fit(self.network, loader, loss_fn, epochs=epochs, lr=s.lr, device=self.device, desc=self.name)
        self.n_train, self.n_train_anomalies, self.epochs = len(train_idx), n_anomalies, epochs
        if n_cal:
            images = torch.stack([train_dataset[int(i)]["image"] for i in calibration])
            cal = self.capsule_outputs(images)
            self.calibration_details = {k: cal[k] for k in ("lengths", "recon_error", "score")}
            self.threshold = float(np.quantile(cal["score"], s.calibration_quantile))

    # -- inference ----------------------------------------------------------------------------
    def details(self, images: torch.Tensor, batch_size: int = 128) -> dict:
        """Everything the chapter plots, as numpy arrays: ``lengths`` (N × 2), ``recon_error`` (N,),
        ``score`` (AS, N), ``standard`` (N, bool: ‖z_a‖ > ‖z_n‖), ``reconstruction`` (N × C × H × W)."""
        return self.capsule_outputs(self.check_images(images), batch_size)

    @torch.no_grad()
    def capsule_outputs(self, images: torch.Tensor, batch_size: int = 128) -> dict:
        """:meth:`details` without the checks of the images (``fit`` calls it on its calibration images)."""
        self.network.eval()
        lengths, recons = [], []
        for i in range(0, len(images), batch_size):
            out = self.network(images[i:i + batch_size].to(self.device))
            lengths.append(out["lengths"].float().cpu())
            recons.append(out["reconstruction"].float().cpu())
        lengths, recons = torch.cat(lengths), torch.cat(recons)
        recon_error = reconstruction_error(images.float().cpu(), recons)
        return {"lengths": lengths.numpy(), "recon_error": recon_error.numpy(),
                "score": anomaly_score(lengths, recon_error).numpy(),
                "standard": standard_decision(lengths).numpy(), "reconstruction": recons.numpy()}

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        d = self.capsule_outputs(images)
        maps = ((images.float().cpu().numpy() - d["reconstruction"]) ** 2).mean(axis=1)
        return d["score"], smooth_maps(maps, self.settings.smoothing)

    def decide(self, images: torch.Tensor) -> np.ndarray:
        """Anomalous (True) when AS exceeds the calibrated ``threshold``."""
        images = self.check_images(images)
        if self.threshold is None:
            raise RuntimeError(f"{self.name}: no threshold; fit with calibration_fraction > 0 or set .threshold")
        return self.capsule_outputs(images)["score"] > self.threshold


# -- the chapter's protocol ----------------------------------------------------------------------
def balanced_accuracy(labels, predictions) -> float:
    """Mean of the true-negative and true-positive rates; equal to accuracy on a balanced test set."""
    labels, predictions = np.asarray(labels).astype(bool), np.asarray(predictions).astype(bool)
    return 0.5 * (float((~predictions[~labels]).mean()) + float(predictions[labels].mean()))


def best_threshold_accuracy(labels, scores) -> float:
    """The best balanced accuracy over every threshold on ``scores``: an optimistic upper bound,
    because the threshold is chosen with the test labels."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float)
    order = np.sort(np.unique(scores))
    cuts = np.concatenate([[order[0] - 1], (order[:-1] + order[1:]) / 2, [order[-1] + 1]])
    return max(balanced_accuracy(labels, scores > t) for t in cuts)


def imbalanced_torchvision(name: str, normal_class: int, anomaly_fraction: float, seed: int = 0, root=None,
                           image_size: int | None = None, download: bool = False, train_base=None,
                           test_base=None) -> tuple[Dataset, Dataset]:
    """The source's protocol on a torchvision set: ``(train, test)``. The training set holds every
    training image of ``normal_class`` plus anomalies drawn (seeded) from the other classes' training
    images, as many as ``anomaly_fraction`` of the normal images (thesis §3.3.1: 10 % or 1 % "of the
    normal data", 600 or 60 for MNIST's 6000; at least one); the test split is the balanced one of
    :class:`~adcourse.data.TorchvisionOneClass`. Raises ``DatasetError`` when the data is not on disk.
    ``train_base`` / ``test_base`` replace the torchvision sets (small stand-ins in tests).
    """
    from ..data import InMemoryAnomalyDataset, TorchvisionOneClass

    normal = TorchvisionOneClass(name, root, normal_class, "train", image_size=image_size, download=download,
                                 base=train_base)
    test = TorchvisionOneClass(name, root, normal_class, "test", image_size=image_size, download=download, seed=seed,
                               base=test_base)
    others = ConcatDataset([TorchvisionOneClass(name, root, c, "train", image_size=image_size, base=normal.base)
                            for c in np.unique(np.asarray(normal.base.targets)).tolist() if c != normal_class])
    n_anomalies = max(1, round(anomaly_fraction * len(normal)))
    drawn = np.random.default_rng(seed).permutation(len(others))[:n_anomalies]
    images = [normal[i]["image"] for i in range(len(normal))] + [others[int(i)]["image"] for i in drawn]
    labels = np.r_[np.zeros(len(normal), dtype=np.int64), np.ones(len(drawn), dtype=np.int64)]
    return InMemoryAnomalyDataset(torch.stack(images), labels), test

