"""Pyramidal autoencoders (chapter 8): the stacked pyramidal AE and PIADE (Mishra 2021, ch. 4 and 5).

The pieces, written so that the chapter can check each against its own written-out version:

* :class:`SEBlock` — squeeze-and-excitation (Hu et al.): global average per channel (squeeze),
  ``s = sigmoid(W2 relu(W1 z))`` (excitation), every channel multiplied by its gate ``s_c``;
* :class:`SEBackbone` — the first stages of a frozen pretrained network with an optional trainable
  :class:`SEBlock` after the stem and after each stage: the thesis's ResNet-18 in the full profile when
  torchvision has its weights, the shipped EfficientNet-Lite0 in the quick profile and otherwise
  (:func:`adcourse.backbones.choose_network`);
* :class:`PyramidPooling` — adaptive average pooling to several grid sizes, each followed by a 1×1
  convolution and batch norm (and ReLU for the stacked AE);
* :class:`PyramidalAE` — chapter 4: pyramid pooling to 1, 2, 3, 6 bins, four small encoders to R⁸, one
  *shared* up-sampling block, concatenation with the ResNet features, transposed-convolution decoder;
* :class:`PIADE` — chapter 5: SE-ResNet → pyramid pooling to 8×8, 4×4, 2×2, 1×1 with 1×1 convolutions →
  8-d features routed by agreement (:func:`adcourse.models.capsules.dynamic_routing`, the capsule
  chapter's) to two 64-d instantiation vectors; the first is decoded in training, the longest at test;
* :class:`VGG11Features`, :func:`perceptual_network`, :func:`piade_loss` — MSE + λ₁·perceptual (VGG-11's
  first four layers, or the shipped network's first stage) + λ₂·(1 − SSIM), per image: the training
  loss and the anomaly score;
* detectors ``pyramidal_ae`` and ``piade``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import checks
from ..backbones import (BACKBONE_CHOICES, EfficientNetLite0Features, ImageNetInput, ResNetFeatures, choose_network,
                         load_imagenet_state, unread_download)
from ..detectors import Detector, register, smooth_maps
from ..losses import ssim_map
from ..train import batch_to, fit, training_generator
from .capsules import dynamic_routing



# --- squeeze and excitation ------------------------------------------------------------------------
class SEBlock(nn.Module):
    """Squeeze-and-excitation: ``x · s`` with ``s = σ(W₂ δ(W₁ z))`` and ``z`` the channel means (eqs. 5.1–5.2).

    ``reduction`` sets the hidden size C/r of the excitation (the thesis writes C/4; Hu et al. and the
    published PIADE code use 16).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation vector ``s`` (N×C), each entry in (0, 1)."""
        z = x.mean(dim=(2, 3))                                   # squeeze: N×C
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))      # excitation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]                # channel re-weighting


# Output stride -> (the ResNet's last stage, keep its stem's max pooling).
RESNET_PLAN = {2: ("layer1", False), 4: ("layer2", False), 8: ("layer2", True), 16: ("layer3", True),
               32: ("layer4", True)}
# Output stride -> how many EfficientNet-Lite0 blocks it takes (the stem alone has stride 2).
LITE0_PLAN = {2: 1, 4: 3, 8: 5, 16: 11, 32: 16}


def backbone_pieces(network: nn.Module, stride: int) -> list[tuple[str, nn.Module, int]]:
    """(name, module, output channels) of the stem and the stages of a frozen ``network``
    (:class:`ResNetFeatures` or :class:`EfficientNetLite0Features`) up to output ``stride``, in order.

    ResNet: for strides 2 and 4 the stem drops its max pooling (as the stacked AE does on small
    images), so layer1 ends at stride 2 and layer2 at 4; otherwise layer2 ends at 8, layer3 at 16,
    layer4 at 32. EfficientNet-Lite0: the stem, then its groups of blocks, one per stride.
    """
    if stride not in LITE0_PLAN:
        raise ValueError(f"feature stride must be one of {tuple(LITE0_PLAN)}, got {stride}")
    if isinstance(network, ResNetFeatures):
        last, maxpool = RESNET_PLAN[stride]
        pieces = [("stem", nn.Sequential(network.input, *(network.stem if maxpool else network.stem[:3])), 64)]
        for name, channels in network.stage_channels.items():
            pieces.append((name, network.stages[name], channels))
            if name == last:
                return pieces
    pieces, start = [("stem", nn.Sequential(network.input, network.stem), 32)], 0
    for block_stride, end in LITE0_PLAN.items():
        blocks = network.blocks[start:end]
        pieces.append((f"stride{block_stride}", blocks, blocks[-1].project.conv.out_channels))
        start = end
        if block_stride == stride:
            return pieces


class SEBackbone(nn.Module):
    """A frozen pretrained network up to output ``stride``, with trainable SE blocks between its stages.

    ``backbone``: ``"shipped"``, ``"source"`` (the thesis's ResNet-18) or ``"random"`` (a labelled
    control), see :func:`adcourse.backbones.choose_network`. With ``se=False`` this is the plain frozen
    extractor. ``forward`` returns the N×C×h×w map at ``stride``; ``out_channels`` is C, ``name``
    says which network it is and ``pretrained`` whether it holds ImageNet weights.
    """

    def __init__(self, backbone: str = "shipped", stride: int = 8, se: bool = True, reduction: int = 4,
                 download: bool = False, seed: int = 0):
        super().__init__()
        last = RESNET_PLAN[stride][0] if stride in RESNET_PLAN else None
        network = choose_network(backbone, lambda pretrained: ResNetFeatures("resnet18", (last,), pretrained, download, seed),
                                 lambda: EfficientNetLite0Features((f"stride{stride}",)))
        self.name, self.pretrained = network.name, network.pretrained
        names, modules, channels = zip(*backbone_pieces(network, stride))
        self.stages = nn.ModuleDict(zip(names, modules)).requires_grad_(False)
        self.se = nn.ModuleDict({n: SEBlock(c, reduction) for n, c in zip(names, channels)}) if se else None
        self.out_channels = channels[-1]

    def train(self, mode: bool = True):  # the pretrained stages stay in eval mode (batch-norm statistics fixed)
        super().train(mode)
        self.stages.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for name, stage in self.stages.items():
            h = stage(h)
            if self.se is not None:
                h = self.se[name](h)
        return h


def backbone_plan(image_size: int) -> int:
    """The output stride that gives an 8×8 feature map where possible: 16 px → 2, 32 → 4, 64 → 8,
    larger → 32 (all of the network, as PIADE at 120×120, whose map is then 4×4)."""
    if image_size <= 16:
        return 2
    if image_size <= 32:
        return 4
    if image_size <= 64:
        return 8
    return 32


# --- pyramid pooling ------------------------------------------------------------------------------
class PyramidPooling(nn.Module):
    """For each ``bins`` size k: adaptive average pooling to k×k, 1×1 convolution to ``out_channels``
    (no bias), batch norm, and ReLU when ``relu``. ``forward`` returns the list of N×out×k×k maps;
    :meth:`flat` concatenates them flattened (N × out·Σk²)."""

    def __init__(self, in_channels: int, out_channels: int = 64, bins=(8, 4, 2, 1), relu: bool = False):
        super().__init__()
        self.bins = tuple(bins)
        self.out_channels = out_channels
        self.levels = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                          nn.BatchNorm2d(out_channels), *([nn.ReLU()] if relu else []))
            for k in self.bins)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.flatten(1) for m in self(x)], dim=1)

    @property
    def n_values(self) -> int:
        return self.out_channels * sum(k * k for k in self.bins)

    def pool_with_matrices(self, size: int) -> None:
        """Swap each level's adaptive pooling of ``size``×``size`` maps for :class:`GridAveragePool`
        (the same numbers), so that the TorchScript-based ONNX exporter can trace every level."""
        for level, k in zip(self.levels, self.bins):
            level[0] = GridAveragePool(size, k).to(level[1].weight.device)


class GridAveragePool(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` on square ``size``×``size`` maps written as P·X·Pᵀ, where row i of P
    averages the cells ⌊i·size/bins⌋ … ⌈(i+1)·size/bins⌉ − 1, PyTorch's regions (they overlap when
    ``bins`` does not divide ``size``). The same numbers, in a form the TorchScript-based ONNX exporter
    can trace: it refuses adaptive pooling to a grid that does not divide the map (3 and 6 of 8)."""

    def __init__(self, size: int, bins: int):
        super().__init__()
        matrix = torch.zeros(bins, size)
        for i in range(bins):
            start, stop = (i * size) // bins, -(-(i + 1) * size // bins)
            matrix[i, start:stop] = 1.0 / (stop - start)
        self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x @ self.matrix.T


# --- decoder shared by both models ---------------------------------------------------------------
class UpDecoder(nn.Module):
    """Transposed convolutions (4×4, stride 2, BN, ReLU) from an h×h map to ``image_size``, a 3×3
    convolution to the image channels and a sigmoid; a final bilinear resize when the size is not
    h·2^k (e.g. 120 from 4)."""

    def __init__(self, in_channels: int, feature_size: int, image_size: int, out_channels: int, width: int = 64):
        super().__init__()
        steps = max(0, math.ceil(math.log2(image_size / feature_size)))
        layers, c = [], in_channels
        for i in range(steps):
            c_out = max(16, width // 2 ** i)
            layers += [nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
        layers += [nn.Conv2d(c, out_channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.image_size = image_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.net(h)
        if out.shape[-1] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal initialisation of every trainable convolution and linear layer (as the thesis)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.weight.requires_grad:
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _backbone(in_channels: int, image_size: int, feature_stride: int | None, se: bool, backbone: str,
              download: bool, seed: int) -> tuple[SEBackbone, int, int]:
    """The SE backbone both pyramidal models start from (stride from :func:`backbone_plan` unless
    given), its channel count and the side of its feature map."""
    network = SEBackbone(backbone, feature_stride or backbone_plan(image_size), se=se, download=download, seed=seed)
    with torch.no_grad():
        side = network(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
    return network, network.out_channels, side


# --- chapter 4: stacked pyramidal autoencoder ------------------------------------------------------
class PyramidalAE(nn.Module):
    """Stacked AE with pyramidal features (Mishra 2021, ch. 4, Fig. 4.1).

    Frozen ResNet-18 features → :class:`PyramidPooling` to ``bins`` (1, 2, 3, 6) with ``pool_channels``
    → one small encoder per level (3×3 conv to 16, 3×3 conv to 8, 1×1 conv to 8, global average: a code
    in R⁸) → one up-sampling block *shared* by the four codes (Linear 8→128, BN, ReLU, Linear →
    ``up_channels``·h·w, ReLU) → the four maps concatenated with the ResNet features (``skip``) →
    :class:`UpDecoder`. ``forward`` returns ``{"reconstruction", "codes"}`` (codes: N×4×8).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, feature_stride: int | None = None,
                 bins=(1, 2, 3, 6), pool_channels: int = 64, code_dim: int = 8, up_channels: int = 16,
                 skip: bool = True, decoder_width: int = 64, backbone: str = "shipped", download: bool = False,
                 seed: int = 0):
        super().__init__()
        self.backbone, c, self.h = _backbone(in_channels, image_size, feature_stride, False, backbone, download, seed)
        self.pyramid = PyramidPooling(c, pool_channels, bins, relu=True)
        self.encoders = nn.ModuleList(nn.Sequential(
            nn.Conv2d(pool_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, code_dim, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()) for _ in self.pyramid.bins)
        self.up_channels, self.skip = up_channels, skip
        self.upsample = nn.Sequential(nn.Linear(code_dim, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                      nn.Linear(128, up_channels * self.h * self.h), nn.ReLU())
        dec_in = len(self.pyramid.bins) * up_channels + (c if skip else 0)
        self.decoder = UpDecoder(dec_in, self.h, image_size, in_channels, decoder_width)
        orthogonal_init(nn.ModuleList([self.pyramid, self.encoders, self.upsample, self.decoder]))

    def forward(self, x: torch.Tensor) -> dict:
        features = self.backbone(x)
        codes = torch.stack([enc(level) for enc, level in zip(self.encoders, self.pyramid(features))], dim=1)
        n, k, d = codes.shape
        ups = self.upsample(codes.reshape(n * k, d)).reshape(n, k * self.up_channels, self.h, self.h)  # shared
        h = torch.cat([ups, features], dim=1) if self.skip else ups
        return {"reconstruction": self.decoder(h), "codes": codes}


# --- chapter 5: PIADE -----------------------------------------------------------------------------
class PIADE(nn.Module):
    """Pyramidal Image Anomaly DEtector (Mishra 2021, ch. 5, Fig. 5.1).

    SE-ResNet-18 features (``se``) → :class:`PyramidPooling` to ``bins`` (8, 4, 2, 1) with 1×1
    convolutions to ``pool_channels`` and BN → all values cut into ``n_caps`` 8-d features u_i → votes
    û_{j|i} = W_ij u_i for ``n_vectors`` instantiation vectors of ``vector_dim`` → routing by agreement
    (:func:`dynamic_routing`) → v (N × n_vectors × vector_dim). The vector decoded is v₀ in training and
    the longest at test (:meth:`select`) → Linear ``vector_dim``→128→512→``up_channels``·h·w → concatenated
    with the ResNet features (``skip``) → :class:`UpDecoder`.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, feature_stride: int | None = None,
                 se: bool = True, bins=(8, 4, 2, 1), pool_channels: int = 64, in_dim: int = 8, n_vectors: int = 2,
                 vector_dim: int = 64, routing_iterations: int = 3, up_channels: int = 32, skip: bool = True,
                 decoder_width: int = 64, backbone: str = "shipped", download: bool = False, seed: int = 0):
        super().__init__()
        self.backbone, c, self.h = _backbone(in_channels, image_size, feature_stride, se, backbone, download, seed)
        self.pyramid = PyramidPooling(c, pool_channels, bins, relu=False)
        if self.pyramid.n_values % in_dim:
            raise ValueError(f"{self.pyramid.n_values} pooled values cannot be cut into {in_dim}-d features")
        self.in_dim, self.n_caps = in_dim, self.pyramid.n_values // in_dim
        self.n_vectors, self.vector_dim, self.routing_iterations = n_vectors, vector_dim, routing_iterations
        self.W = nn.Parameter(0.05 * torch.randn(self.n_caps, n_vectors, vector_dim, in_dim))
        self.up_channels, self.skip = up_channels, skip
        self.upsample = nn.Sequential(nn.Linear(vector_dim, 128), nn.ReLU(), nn.Linear(128, 512), nn.ReLU(),
                                      nn.Linear(512, up_channels * self.h * self.h), nn.ReLU())
        self.decoder = UpDecoder(up_channels + (c if skip else 0), self.h, image_size, in_channels, decoder_width)
        orthogonal_init(nn.ModuleList([self.pyramid, self.upsample, self.decoder]))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ResNet feature map, the N × n_caps × 8 pyramid features)."""
        fmap = self.backbone(x)
        return fmap, self.pyramid.flat(fmap).reshape(len(x), self.n_caps, self.in_dim)

    def route(self, u: torch.Tensor, return_couplings: bool = False):
        u_hat = torch.einsum("ijdk,bik->bijd", self.W, u)        # votes û_{j|i} = W_ij u_i
        return dynamic_routing(u_hat, self.routing_iterations, return_couplings=return_couplings)

    def select(self, v: torch.Tensor, longest: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen vector N×vector_dim, its index N): v₀ in training, the longest at test."""
        longest = (not self.training) if longest is None else longest
        index = v.norm(dim=-1).argmax(dim=1) if longest else torch.zeros(len(v), dtype=torch.long, device=v.device)
        return v[torch.arange(len(v), device=v.device), index], index

    def decode(self, vector: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        ups = self.upsample(vector).reshape(len(vector), self.up_channels, self.h, self.h)
        return self.decoder(torch.cat([ups, fmap], dim=1) if self.skip else ups)

    def forward(self, x: torch.Tensor, longest: bool | None = None) -> dict:
        fmap, u = self.features(x)
        v = self.route(u)
        chosen, index = self.select(v, longest)
        return {"reconstruction": self.decode(chosen, fmap), "vectors": v, "chosen": index}


# --- losses ---------------------------------------------------------------------------------------
class VGG11Features(nn.Module):
    """Frozen ``features[:4]`` of VGG-11 (conv 3→64, ReLU, max pool, conv 64→128): the thesis's loss
    network of both pyramidal models. ``pretrained=True``: ImageNet weights through
    :func:`load_imagenet_state` (an error when they cannot be had); ``False``: seeded random (a control)."""

    def __init__(self, n_layers: int = 4, pretrained: bool = True, download: bool = True, seed: int = 0):
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        with torch.random.fork_rng(devices=[]):  # only the layers used: VGG-11's classifier alone is 120 M weights
            torch.manual_seed(seed)
            features = tv_vgg.make_layers(tv_vgg.cfgs["A"])[:n_layers]
        if pretrained:
            state = load_imagenet_state(tv_vgg.VGG11_Weights.IMAGENET1K_V1.url, "VGG-11", download)
            features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.") and k[len("features."):] in features.state_dict()})
        self.pretrained = pretrained
        self.name = "VGG-11 (ImageNet, torchvision)" if pretrained else f"VGG-11 (random, seed {seed}: a control)"
        self.input = ImageNetInput()
        self.features = features
        for i, m in enumerate(self.features):
            if isinstance(m, nn.ReLU):
                self.features[i] = nn.ReLU(inplace=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.input(x))


def perceptual_network(backbone: str = "shipped", download: bool = False) -> nn.Module:
    """The loss network of :func:`piade_loss` by :func:`adcourse.backbones.choose_network`: VGG-11's first
    four layers (the thesis's, 128 channels at half resolution) or the shipped EfficientNet-Lite0's
    stride-2 stage (16 channels at half resolution)."""
    return choose_network(backbone, lambda pretrained: VGG11Features(pretrained=pretrained, download=download),
                          lambda: EfficientNetLite0Features(("stride2",)))


def piade_loss(x: torch.Tensor, x_hat: torch.Tensor, vgg: nn.Module | None = None, perceptual_weight: float = 1.0,
               ssim_weight: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """L = MSE + λ₁·mean (F(x) − F(x̂))² + λ₂·(1 − SSIM) per image (eq. 5.5); λ₂ = 0 gives the
    chapter-4 loss (eq. 4.4). ``reduction="none"`` returns the N per-image losses (the anomaly score)."""
    loss = ((x - x_hat) ** 2).flatten(1).mean(1)
    if perceptual_weight and vgg is not None:
        for f_x, f_x_hat in zip(_as_list(vgg(x)), _as_list(vgg(x_hat))):
            loss = loss + perceptual_weight * ((f_x - f_x_hat) ** 2).flatten(1).mean(1)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim_map(x_hat, x)).flatten(1).mean(1)
    return loss.mean() if reduction == "mean" else loss


def _as_list(features) -> list[torch.Tensor]:
    return features if isinstance(features, list) else [features]


# --- detectors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PyramidalAESettings:
    """Settings of :class:`PyramidalAEDetector` (training, loss, scoring, network)."""
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    perceptual_weight: float = 1.0
    ssim_weight: float = 0.0
    smoothing: float = 1.0
    backbone: str = "shipped"          # see adcourse.backbones.choose_network
    download: bool = False
    feature_stride: int | None = None  # None: backbone_plan(image size)
    bins: tuple[int, ...] = (1, 2, 3, 6)
    pool_channels: int = 64
    code_dim: int = 8
    up_channels: int = 16
    skip: bool = True
    decoder_width: int = 64

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        return unread_download(self)

    def __post_init__(self):
        _check_common(self)


@dataclass(frozen=True)
class PIADESettings:
    """Settings of :class:`PIADEDetector` (training, loss, scoring, network)."""
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    perceptual_weight: float = 1.0
    ssim_weight: float = 1.0
    smoothing: float = 1.0
    backbone: str = "shipped"
    download: bool = False
    feature_stride: int | None = None
    se: bool = True
    bins: tuple[int, ...] = (8, 4, 2, 1)
    pool_channels: int = 16
    in_dim: int = 8
    n_vectors: int = 2
    vector_dim: int = 64
    routing_iterations: int = 3
    up_channels: int = 32
    skip: bool = True
    decoder_width: int = 64

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        return unread_download(self)

    def __post_init__(self):
        _check_common(self)


def _check_common(s) -> None:
    checks.at_least(s, 1, "epochs", "batch_size")
    checks.positive(s, "lr")
    if s.backbone not in BACKBONE_CHOICES:
        raise ValueError(f"backbone must be one of {BACKBONE_CHOICES}, got {s.backbone!r}")
    if s.feature_stride not in (None, *LITE0_PLAN):
        raise ValueError(f"feature_stride must be None or one of {tuple(LITE0_PLAN)}, got {s.feature_stride}")
    checks.non_negative(s, "weight_decay", "perceptual_weight", "ssim_weight", "smoothing")


class _PyramidalDetector(Detector):
    """Shared fit/score: train on normal images with :func:`piade_loss`, score with the same loss
    per image; the map is the pixel part, (x − x̂)² + λ₂(1 − SSIM map), Gaussian-smoothed."""

    NETWORK_KEYS: tuple = ()
    fitted = ("network",)

    def build(self, input_shape):
        s = self.settings
        network_args = {key: getattr(s, key) for key in self.NETWORK_KEYS}
        self.network = self.network_class(input_shape[0], input_shape[-1], backbone=s.backbone, download=s.download,
                                          **network_args).to(self.device)
        self.vgg = perceptual_network(s.backbone, s.download).to(self.device) if s.perceptual_weight else None
        self.backbone_name = self.network.backbone.name + (f"; loss network {self.vgg.name}" if self.vgg else "")
        self.history: list[float] = []

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        loader = DataLoader(train_dataset, batch_size=s.batch_size, shuffle=True, drop_last=len(train_dataset) > s.batch_size,
                            generator=training_generator())
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)

        def loss_fn(model, batch):
            x = batch_to(batch, self.device)["image"]
            return piade_loss(x, model(x)["reconstruction"], self.vgg, s.perceptual_weight, s.ssim_weight)

        self.history = fit(self.network, loader, loss_fn, epochs=s.epochs, optimizer=optimizer,
                           device=self.device, desc=self.name)

    def export_graph(self, images: torch.Tensor):
        """A copy of the network whose pyramid pooling is :class:`GridAveragePool` (exportable)."""
        network = copy.deepcopy(self.network)
        network.pyramid.pool_with_matrices(network.h)
        return network, images

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, batch_size: int = 128) -> dict:
        """The network's outputs (eval mode) for all ``images``, on the CPU."""
        self.network.eval()
        parts = [self.network(images[i:i + batch_size].to(self.device)) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}

    @torch.no_grad()
    def scores(self, images: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
        s = self.settings
        out = [piade_loss(images[i:i + 128].to(self.device), reconstructions[i:i + 128].to(self.device), self.vgg,
                          s.perceptual_weight, s.ssim_weight, reduction="none").cpu()
               for i in range(0, len(images), 128)]
        return torch.cat(out).numpy()

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        recon = self.outputs(images)["reconstruction"]
        maps = ((images - recon) ** 2).mean(1)
        if self.settings.ssim_weight:
            maps = maps + self.settings.ssim_weight * (1 - ssim_map(recon, images)).mean(1)
        return self.scores(images, recon), smooth_maps(maps.numpy(), self.settings.smoothing)


@register("pyramidal_ae")
class PyramidalAEDetector(_PyramidalDetector):
    """The stacked pyramidal AE of chapter 4, trained with MSE + λ·perceptual (λ₂ = 0 by default)."""

    name = "pyramidal_ae"
    Settings = PyramidalAESettings
    # thesis Table 4.3: lr 1e-4, weight decay 1e-4, batch 120, 600 epochs (full: 200)
    PROFILES = {"quick": PyramidalAESettings(),
                "full": PyramidalAESettings(epochs=200, batch_size=120, lr=1e-4, backbone="source", download=True)}
    network_class = PyramidalAE
    NETWORK_KEYS = ("feature_stride", "bins", "pool_channels", "code_dim", "up_channels", "skip", "decoder_width")


@register("piade")
class PIADEDetector(_PyramidalDetector):
    """PIADE, trained with MSE + λ₁·perceptual + λ₂·(1 − SSIM); that loss per image is the score."""

    name = "piade"
    Settings = PIADESettings
    # thesis Table 5.1 (full: its learning rate and batch, 400 epochs)
    PROFILES = {"quick": PIADESettings(),
                "full": PIADESettings(epochs=400, batch_size=120, pool_channels=64, backbone="source", download=True)}
    network_class = PIADE
    NETWORK_KEYS = ("feature_stride", "se", "bins", "pool_channels", "in_dim", "n_vectors", "vector_dim",
                    "routing_iterations", "up_channels", "skip", "decoder_width")
