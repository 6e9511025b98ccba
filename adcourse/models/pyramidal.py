"""Pyramidal autoencoders (chapter 8): the stacked pyramidal AE and PIADE (Mishra 2021, ch. 4 and 5).

The pieces, written so that the chapter can check each against its own written-out version:

* :class:`SEBlock` — squeeze-and-excitation (Hu et al.): global average per channel (squeeze),
  ``s = sigmoid(W2 relu(W1 z))`` (excitation), every channel multiplied by its gate ``s_c``;
* :class:`SEResNet` — the first stages of a frozen ResNet-18 (:class:`adcourse.backbones.ResNet18Features`:
  ImageNet weights when they can be had, a warned, seeded random fallback otherwise) with an optional
  trainable :class:`SEBlock` after the stem and after each stage;
* :class:`PyramidPooling` — adaptive average pooling to several grid sizes, each followed by a 1×1
  convolution and batch norm (and ReLU for the stacked AE);
* :class:`PyramidalAE` — chapter 4: pyramid pooling to 1, 2, 3, 6 bins, four small encoders to R⁸, one
  *shared* up-sampling block, concatenation with the ResNet features, transposed-convolution decoder;
* :class:`PIADE` — chapter 5: SE-ResNet → pyramid pooling to 8×8, 4×4, 2×2, 1×1 with 1×1 convolutions →
  8-d features routed by agreement (:func:`adcourse.models.capsules.dynamic_routing`, the capsule
  chapter's) to two 64-d instantiation vectors; the first is decoded in training, the longest at test;
* :class:`VGG11Features`, :func:`piade_loss` — MSE + λ₁·perceptual (VGG-11's first four layers) +
  λ₂·(1 − SSIM), per image: the training loss and the anomaly score;
* detectors ``pyramidal_ae`` and ``piade``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import ImageNetInput, ResNet18Features, load_imagenet_state
from ..detectors import Detector, register, smooth_maps
from ..losses import ssim_map
from ..train import batch_to, fit, resolve_profile
from .capsules import dynamic_routing

STAGE_CHANNELS = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


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


class SEResNet(nn.Module):
    """Frozen ResNet-18 stem and stages up to ``last_stage``, with trainable SE blocks between them.

    ``maxpool=False`` drops the stem's max pooling (the stacked AE of chapter 4 does, and small
    images need it). With ``se=False`` this is the plain frozen extractor. ``forward`` returns the last
    stage's N×C×h×w map; ``out_channels`` is C.
    """

    def __init__(self, last_stage: str = "layer2", maxpool: bool = True, se: bool = True, reduction: int = 4,
                 pretrained: bool = True, download: bool = True, seed: int = 0):
        super().__init__()
        self.backbone = ResNet18Features(layers=(last_stage,), pretrained=pretrained, download=download, seed=seed)
        self.pretrained = self.backbone.pretrained
        self.maxpool = maxpool
        names = ["stem", *self.backbone.stages.keys()]
        self.se = nn.ModuleDict({n: SEBlock(STAGE_CHANNELS[n], reduction) for n in names}) if se else None
        self.out_channels = STAGE_CHANNELS[last_stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.backbone.stem if self.maxpool else self.backbone.stem[:3]
        h = stem(self.backbone.input(x))
        if self.se is not None:
            h = self.se["stem"](h)
        for name, stage in self.backbone.stages.items():
            h = stage(h)
            if self.se is not None:
                h = self.se[name](h)
        return h


def backbone_plan(image_size: int) -> tuple[str, bool]:
    """(last ResNet stage, keep the max pooling) giving an 8×8 feature map where possible:
    16 px → layer1 without max pooling, 32 → layer2 without, 64 → layer2 with, larger → all of ResNet-18
    (layer4, as PIADE at 120×120, whose map is then 4×4)."""
    if image_size <= 16:
        return "layer1", False
    if image_size <= 32:
        return "layer2", False
    if image_size <= 64:
        return "layer2", True
    return "layer4", True


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


def _backbone(in_channels: int, image_size: int, last_stage: str | None, maxpool: bool | None, se: bool,
              pretrained: bool, download: bool, seed: int) -> tuple[SEResNet, int, int]:
    """The SE-ResNet both pyramidal models start from (stage and max pooling from :func:`backbone_plan`
    unless given), its channel count and the side of its feature map."""
    plan = backbone_plan(image_size)
    backbone = SEResNet(last_stage or plan[0], plan[1] if maxpool is None else maxpool, se=se,
                        pretrained=pretrained, download=download, seed=seed)
    with torch.no_grad():
        side = backbone(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
    return backbone, backbone.out_channels, side


# --- chapter 4: stacked pyramidal autoencoder ------------------------------------------------------
class PyramidalAE(nn.Module):
    """Stacked AE with pyramidal features (Mishra 2021, ch. 4, Fig. 4.1).

    Frozen ResNet-18 features → :class:`PyramidPooling` to ``bins`` (1, 2, 3, 6) with ``pool_channels``
    → one small encoder per level (3×3 conv to 16, 3×3 conv to 8, 1×1 conv to 8, global average: a code
    in R⁸) → one up-sampling block *shared* by the four codes (Linear 8→128, BN, ReLU, Linear →
    ``up_channels``·h·w, ReLU) → the four maps concatenated with the ResNet features (``skip``) →
    :class:`UpDecoder`. ``forward`` returns ``{"reconstruction", "codes"}`` (codes: N×4×8).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, last_stage: str | None = None,
                 maxpool: bool | None = None, bins=(1, 2, 3, 6), pool_channels: int = 64, code_dim: int = 8,
                 up_channels: int = 16, skip: bool = True, decoder_width: int = 64, pretrained: bool = True,
                 download: bool = True, seed: int = 0):
        super().__init__()
        self.backbone, c, self.h = _backbone(in_channels, image_size, last_stage, maxpool, False, pretrained,
                                             download, seed)
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

    def __init__(self, in_channels: int = 1, image_size: int = 32, last_stage: str | None = None,
                 maxpool: bool | None = None, se: bool = True, bins=(8, 4, 2, 1), pool_channels: int = 64,
                 in_dim: int = 8, n_vectors: int = 2, vector_dim: int = 64, routing_iterations: int = 3,
                 up_channels: int = 32, skip: bool = True, decoder_width: int = 64, pretrained: bool = True,
                 download: bool = True, seed: int = 0):
        super().__init__()
        self.backbone, c, self.h = _backbone(in_channels, image_size, last_stage, maxpool, se, pretrained,
                                             download, seed)
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
    """Frozen ``features[:4]`` of VGG-11 (conv 3→64, ReLU, max pool, conv 64→128): the loss network of
    both pyramidal models. ImageNet weights through :func:`load_imagenet_state` when they can be had,
    else a warned, seeded random initialisation; ``.pretrained`` says which."""

    def __init__(self, n_layers: int = 4, pretrained: bool = True, download: bool = True, seed: int = 0):
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        with torch.random.fork_rng(devices=[]):  # only the layers used: VGG-11's classifier alone is 120 M weights
            torch.manual_seed(seed)
            features = tv_vgg.make_layers(tv_vgg.cfgs["A"])[:n_layers]
        state = load_imagenet_state(tv_vgg.VGG11_Weights.IMAGENET1K_V1.url, "VGG-11", download) if pretrained else None
        if state is not None:
            features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.") and k[len("features."):] in features.state_dict()})
        self.pretrained = state is not None
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


def piade_loss(x: torch.Tensor, x_hat: torch.Tensor, vgg: nn.Module | None = None, perceptual_weight: float = 1.0,
               ssim_weight: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """L = MSE + λ₁·mean (F(x) − F(x̂))² + λ₂·(1 − SSIM) per image (eq. 5.5); λ₂ = 0 gives the
    chapter-4 loss (eq. 4.4). ``reduction="none"`` returns the N per-image losses (the anomaly score)."""
    loss = ((x - x_hat) ** 2).flatten(1).mean(1)
    if perceptual_weight and vgg is not None:
        loss = loss + perceptual_weight * ((vgg(x) - vgg(x_hat)) ** 2).flatten(1).mean(1)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim_map(x_hat, x)).flatten(1).mean(1)
    return loss.mean() if reduction == "mean" else loss


# --- detectors ------------------------------------------------------------------------------------
class _PyramidalDetector(Detector):
    """Shared fit/predict: train on normal images with :func:`piade_loss`, score with the same loss
    per image; the map is the pixel part, (x − x̂)² + λ₂(1 − SSIM map), Gaussian-smoothed."""

    PROFILES: dict = {}
    MODEL_KEYS: tuple = ()

    def __init__(self, perceptual_weight: float = 1.0, ssim_weight: float = 1.0, smoothing: float = 1.0,
                 pretrained: bool = True, download: bool | None = None, device=None, **overrides):
        self.perceptual_weight, self.ssim_weight, self.smoothing = perceptual_weight, ssim_weight, smoothing
        # ImageNet weights are downloaded by the full profile only (unless asked): a quick run or a
        # test uses them when they are cached and never reaches for the network.
        self.pretrained, self._download = pretrained, download
        super().__init__(device, **overrides)
        self.history: list[float] = []

    def build(self, channels: int, size: int, settings: dict) -> nn.Module:
        raise NotImplementedError

    def fit(self, train_dataset, profile: str = "quick"):
        settings = self.profile_settings(profile)
        self.download = resolve_profile(profile) == "full" if self._download is None else self._download
        channels, size = train_dataset[0]["image"].shape[0], train_dataset[0]["image"].shape[-1]
        self.network = self.build(channels, size, settings).to(self.device)
        self.vgg = VGG11Features(pretrained=self.pretrained, download=self.download).to(self.device) \
            if self.perceptual_weight else None
        loader = DataLoader(train_dataset, batch_size=settings["batch_size"], shuffle=True, drop_last=len(train_dataset) > settings["batch_size"],
                            generator=torch.Generator().manual_seed(0))
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 1e-4))

        def loss_fn(model, batch):
            x = batch_to(batch, self.device)["image"]
            return piade_loss(x, model(x)["reconstruction"], self.vgg, self.perceptual_weight, self.ssim_weight)

        self.history = fit(self.network, loader, loss_fn, epochs=settings["epochs"], optimizer=optimizer,
                           device=self.device, desc=self.name)
        return self

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
        out = [piade_loss(images[i:i + 128].to(self.device), reconstructions[i:i + 128].to(self.device), self.vgg,
                          self.perceptual_weight, self.ssim_weight, reduction="none").cpu()
               for i in range(0, len(images), 128)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        recon = self.outputs(images)["reconstruction"]
        maps = ((images - recon) ** 2).mean(1)
        if self.ssim_weight:
            maps = maps + self.ssim_weight * (1 - ssim_map(recon, images)).mean(1)
        return self.scores(images, recon), smooth_maps(maps.numpy(), self.smoothing)


class PyramidalAEDetector(_PyramidalDetector):
    """The stacked pyramidal AE of chapter 4, trained with MSE + λ·perceptual (λ₂ = 0 by default)."""

    name = "pyramidal_ae"
    PROFILES = {"quick": dict(epochs=20, batch_size=32, lr=1e-3),
                "full": dict(epochs=200, batch_size=120, lr=1e-4)}   # thesis Table 4.3: 1e-4, wd 1e-4, 120, 600
    MODEL_KEYS = ("last_stage", "maxpool", "bins", "pool_channels", "code_dim", "up_channels", "skip", "decoder_width")

    def __init__(self, perceptual_weight: float = 1.0, ssim_weight: float = 0.0, **kwargs):
        super().__init__(perceptual_weight=perceptual_weight, ssim_weight=ssim_weight, **kwargs)

    def build(self, channels, size, settings):
        return PyramidalAE(channels, size, pretrained=self.pretrained, download=self.download,
                           **{k: settings[k] for k in self.MODEL_KEYS if k in settings})


class PIADEDetector(_PyramidalDetector):
    """PIADE, trained with MSE + λ₁·perceptual + λ₂·(1 − SSIM); that loss per image is the score."""

    name = "piade"
    PROFILES = {"quick": dict(epochs=20, batch_size=32, lr=1e-3, pool_channels=16),
                "full": dict(epochs=400, batch_size=120, lr=1e-3)}   # thesis Table 5.1
    MODEL_KEYS = ("last_stage", "maxpool", "se", "bins", "pool_channels", "in_dim", "n_vectors", "vector_dim",
                  "routing_iterations", "up_channels", "skip", "decoder_width")

    def build(self, channels, size, settings):
        return PIADE(channels, size, pretrained=self.pretrained, download=self.download,
                     **{k: settings[k] for k in self.MODEL_KEYS if k in settings})


register("pyramidal_ae")(lambda **kw: PyramidalAEDetector(**kw))
register("piade")(lambda **kw: PIADEDetector(**kw))
