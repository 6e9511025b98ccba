"""Implicit neural representations (chapter 4): SIREN, from fitting one image to inpainting.

An image is a function f(y, x) of its pixel coordinates; a SIREN (Sitzmann et al., 2020) is a
multilayer perceptron with sine activations that represents such a function, derivatives included.
Yelisieiev (2021) turns it into an anomaly detector: cut the centre out of an image, encode the
rest with *crop convolutions* (kernels that see the cut-out centre only by a few pixels), let a
SIREN conditioned on that code paint the centre back, and compare. Trained on normal images only,
the painting is what a normal centre would look like.

Contents: :class:`SineLayer`, :class:`Siren`, :class:`ReluMLP` (with optional positional
encoding), :func:`coordinate_grid`, :func:`gradient` / :func:`laplacian` (autograd),
:class:`CropConv2d`, :class:`CropConvEncoder`, :class:`SirenInpainter`,
:class:`TripletDiscriminator`, :func:`rotate`, :func:`psnr`, and the detector
:class:`SirenInpaintDetector` (registered ``siren_inpaint``, settings :class:`SirenInpaintSettings`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..backbones import BACKBONE_CHOICES, unread_download
from ..detectors import Detector, NotFittedError, register, smooth_maps
from ..losses import cosine_distance, perceptual_features, perceptual_loss, style_loss, triplet_loss
from ..train import training_generator


# ---------------------------------------------------------------------------------------------
# An image as a function of its coordinates
# ---------------------------------------------------------------------------------------------


def coordinate_grid(height: int, width: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (height·width)×2 pixel-centre coordinates of an image, (row, column), each in [−1, 1].

    Row-major order, so ``values.reshape(height, width)`` puts a network's outputs back on the grid.
    """
    width = height if width is None else width
    rows = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    cols = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(range² / MSE)."""
    mse = torch.mean((prediction.detach().float() - target.detach().float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


class SineLayer(nn.Module):
    """y = sin(ω₀·(W x + b)), initialised so that every layer's pre-activations stay ~N(0, 1).

    First layer (``is_first``): W ~ U(−1/n, 1/n), so that ω₀·W x spans several periods of the sine
    over inputs in [−1, 1]. Other layers: W ~ U(−√(6/n)/ω₀, √(6/n)/ω₀); with inputs distributed
    like sin of a normal variable (arcsine, variance ½), ω₀·W x then has variance
    n · ½ · (6/n)/3 = 1 (Sitzmann et al., 2020, Sec. 3.2 and supplement 1.5). The bias keeps
    PyTorch's default U(−1/√n, 1/√n), as the reference code does.
    """

    def __init__(self, in_features: int, out_features: int, omega_0: float = 30.0, is_first: bool = False,
                 bias: bool = True):
        super().__init__()
        self.in_features, self.omega_0, self.is_first = in_features, float(omega_0), is_first
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.reset_weights()

    def weight_bound(self) -> float:
        n = self.in_features
        return 1 / n if self.is_first else math.sqrt(6 / n) / self.omega_0

    @torch.no_grad()
    def reset_weights(self) -> None:
        bound = self.weight_bound()
        self.linear.weight.uniform_(-bound, bound)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """ω₀·(W x + b): the argument of the sine."""
        return self.omega_0 * self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.preactivation(x))


class Siren(nn.Module):
    """Φ(x) = W_n (φ_{n−1} ∘ … ∘ φ_0)(x) + b_n with sine layers φ_i (Sitzmann et al., 2020).

    ``hidden_layers`` counts the sine layers after the first one, as in the reference code: the
    defaults give 1 + 3 sine layers of 256 and a linear output, the image-fitting network of the
    paper. The last linear layer is initialised like a hidden layer (U(±√(6/n)/ω₀)).
    """

    def __init__(self, in_features: int = 2, hidden_features: int = 256, hidden_layers: int = 3,
                 out_features: int = 1, first_omega_0: float = 30.0, hidden_omega_0: float = 30.0):
        super().__init__()
        layers = [SineLayer(in_features, hidden_features, first_omega_0, is_first=True)]
        layers += [SineLayer(hidden_features, hidden_features, hidden_omega_0) for _ in range(hidden_layers)]
        self.layers = nn.ModuleList(layers)
        self.last = nn.Linear(hidden_features, out_features)
        with torch.no_grad():
            bound = math.sqrt(6 / hidden_features) / hidden_omega_0
            self.last.weight.uniform_(-bound, bound)

    def forward(self, coords: torch.Tensor, first_shift: torch.Tensor | None = None) -> torch.Tensor:
        """``coords``: (..., in_features). ``first_shift`` (broadcastable to the first layer's
        W x + b) is added inside the first sine: how a code conditions the network (see
        :class:`SirenInpainter`)."""
        first = self.layers[0]
        pre = first.linear(coords)
        if first_shift is not None:
            pre = pre + first_shift
        h = torch.sin(first.omega_0 * pre)
        for layer in self.layers[1:]:
            h = layer(h)
        return self.last(h)

    @torch.no_grad()
    def preactivations(self, coords: torch.Tensor) -> list[torch.Tensor]:
        """The argument of every sine, layer by layer (to look at their distribution)."""
        out, h = [], coords
        for layer in self.layers:
            pre = layer.preactivation(h)
            out.append(pre)
            h = torch.sin(pre)
        return out


def positional_encoding(coords: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """γ(x) = (x, sin(2⁰πx), cos(2⁰πx), …, sin(2^{L−1}πx), cos(2^{L−1}πx)) per coordinate (NeRF)."""
    if n_frequencies <= 0:
        return coords
    freqs = (2.0 ** torch.arange(n_frequencies, device=coords.device, dtype=coords.dtype)) * math.pi
    angles = coords[..., None] * freqs  # (..., d, L)
    encoded = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-3)
    return torch.cat([coords, encoded], dim=-1)


class ReluMLP(nn.Module):
    """The baseline coordinate network: ReLU MLP, optionally on a positional encoding of its input.

    Same depth convention as :class:`Siren` (1 + ``hidden_layers`` hidden layers, linear output).
    """

    def __init__(self, in_features: int = 2, hidden_features: int = 256, hidden_layers: int = 3,
                 out_features: int = 1, n_frequencies: int = 0):
        super().__init__()
        self.n_frequencies = n_frequencies
        width_in = in_features * (1 + 2 * n_frequencies)
        dims = [width_in] + [hidden_features] * (hidden_layers + 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden_features, out_features))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.net(positional_encoding(coords, self.n_frequencies))


def gradient(y: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """∂y/∂x for every point: y is (..., 1) computed from x (..., d) with ``requires_grad``."""
    return torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), create_graph=create_graph)[0]


def laplacian(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Δy = Σ_i ∂²y/∂x_i² by autograd (twice), shape (..., 1)."""
    grad = gradient(y, x, create_graph=True)
    total = torch.zeros_like(y)
    for i in range(x.shape[-1]):
        total = total + gradient(grad[..., i:i + 1], x, create_graph=True)[..., i:i + 1]
    return total


def fit_image(model: nn.Module, image: torch.Tensor, steps: int, lr: float = 1e-4,
              log_every: int = 10) -> dict:
    """Fit a coordinate network to one H×W image in [0, 1] (target rescaled to [−1, 1], as in the
    paper). Full-batch Adam on every pixel. Returns ``dict(steps, psnr)`` measured every
    ``log_every`` steps (PSNR in dB on the [0, 1] scale) and the final ``reconstruction``."""
    h, w = image.shape[-2:]
    coords = coordinate_grid(h, w, device=image.device)
    target = (image.reshape(-1, 1) - 0.5) * 2
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    log_steps, log_psnr = [], []
    for step in range(1, steps + 1):
        out = model(coords)
        loss = torch.mean((out - target) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            log_steps.append(step)
            log_psnr.append(10 * math.log10(4 / max(loss.item(), 1e-12)))  # range 2 on [−1, 1]
    with torch.no_grad():
        reconstruction = (model(coords).reshape(h, w) / 2 + 0.5).clamp(0, 1)
    return {"steps": log_steps, "psnr": log_psnr, "reconstruction": reconstruction}


# ---------------------------------------------------------------------------------------------
# Crop convolutions and the conditional SIREN (the inpainting generator)
# ---------------------------------------------------------------------------------------------


def hole_bounds(size: int, fraction: float) -> tuple[int, int]:
    """[start, stop) of the central ``fraction`` of a side, rounded as ``corruption.center_crop``."""
    hole = int(round(int(size) * fraction))  # int(): during ONNX tracing a side can be a tensor
    start = (size - hole) // 2
    return start, start + hole


def centre_mask(height: int, width: int, fraction: float = 0.5, device=None) -> torch.Tensor:
    """H×W bool, True in the central square cut out by ``adcourse.corruption.center_crop``."""
    r0, r1 = hole_bounds(height, fraction)
    c0, c1 = hole_bounds(width, fraction)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[r0:r1, c0:c1] = True
    return mask


class CropConv2d(nn.Conv2d):
    """A convolution whose kernels touch the cut-out centre by at most ``overlap`` pixels.

    Ordinary convolution, then every output position whose window reaches more than ``overlap``
    pixels deep into the central hole (``hole_fraction`` of each side, recomputed at this layer's
    resolution) is set to zero. Outputs near the hole see only its first ``overlap`` rows or
    columns; outputs further in see nothing of it. Stacked with ``overlap`` = 1 and stride 2, the
    zeroed outputs of one layer are exactly the hole of the next, so the whole encoder never
    depends on input pixels deeper than ``overlap`` inside the hole (Yelisieiev 2021, Sec. 4.1.1;
    the reference code masks outputs in the same way).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2,
                 padding: int = 1, hole_fraction: float = 0.5, overlap: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.hole_fraction, self.overlap = hole_fraction, overlap
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def _depth_ok(self, size: int, device) -> torch.Tensor:
        """Per output index along one axis: does the window reach ≤ ``overlap`` pixels into the hole?"""
        start, stop = hole_bounds(size, self.hole_fraction)
        inside = torch.zeros(1, 1, size, device=device)
        inside[..., start:stop] = 1
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        counts = F.conv1d(F.pad(inside, (p, p)), torch.ones(1, 1, k, device=device), stride=s)[0, 0]
        return counts <= self.overlap

    def valid_mask(self, height: int, width: int, device=None) -> torch.Tensor:
        """(H_out, W_out) float, 1 where the output is kept."""
        rows, cols = self._depth_ok(height, device), self._depth_ok(width, device)
        return (rows[:, None] | cols[None, :]).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.valid_mask(x.shape[-2], x.shape[-1], x.device)


class CropConvEncoder(nn.Module):
    """Image with its centre cut out → code of ``code_dim`` numbers.

    ``depth`` blocks of 3×3 stride-2 (crop) convolution → ReLU → batch norm (the order of the
    reference code), then one linear layer. ``crop=False`` gives the same network with plain
    convolutions: the comparison of Sec. 5.4 of the thesis.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, code_dim: int = 128, width: int = 32,
                 depth: int = 3, hole_fraction: float = 0.5, overlap: int = 1, crop: bool = True):
        super().__init__()
        if image_size % 2 ** depth:
            raise ValueError(f"image_size={image_size} must be divisible by 2**depth={2 ** depth}")
        self.crop = crop
        blocks: list[nn.Module] = []
        channels = [in_channels] + [width * 2 ** min(i, 1) for i in range(depth)]
        for a, b in zip(channels, channels[1:]):
            conv = (CropConv2d(a, b, 3, 2, 1, hole_fraction, overlap) if crop
                    else nn.Conv2d(a, b, 3, stride=2, padding=1))
            blocks += [conv, nn.ReLU(), nn.BatchNorm2d(b)]
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** depth
        self.linear = nn.Linear(channels[-1] * side * side, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


class SirenInpainter(nn.Module):
    """The generator of the thesis: crop-convolution encoder → code z → SIREN(coordinates, z) → centre.

    ``forward(cut)`` takes images whose centre is cut out (N×C×S×S) and returns the painted centre
    (N×C×h×h, values on the [0, 1] scale, unclamped). ``coords`` optionally restricts the painting
    to some of the hole's pixels (k×2 coordinates in [−1, 1] over the hole): a coordinate network
    can be trained on a random subset of pixels. Concatenating z to every coordinate, as the
    thesis does, equals adding W_z z to the first layer's pre-activation; that shift is computed
    once per image here. Initialisation: the coordinate weights as a plain SIREN's first layer
    (U(±1/2)), the code weights U(±1/(2 + code_dim)); the literal concatenation would give the
    coordinates U(±1/(2 + code_dim)) too, and with it almost no spatial frequency at the start.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, hole_fraction: float = 0.5,
                 code_dim: int = 128, hidden_features: int = 128, hidden_layers: int = 3,
                 encoder_width: int = 32, encoder_depth: int = 3, crop: bool = True, overlap: int = 1,
                 first_omega_0: float = 30.0):
        super().__init__()
        self.in_channels, self.image_size, self.hole_fraction = in_channels, image_size, hole_fraction
        self.hole = hole_bounds(image_size, hole_fraction)
        self.hole_size = self.hole[1] - self.hole[0]
        self.encoder = CropConvEncoder(in_channels, image_size, code_dim, encoder_width, encoder_depth,
                                       hole_fraction, overlap, crop)
        self.decoder = Siren(2, hidden_features, hidden_layers, in_channels, first_omega_0=first_omega_0)
        # The code's share of the first layer (the thesis concatenates z to (y, x)); same init.
        self.code_to_first = nn.Linear(code_dim, hidden_features, bias=False)
        with torch.no_grad():
            self.code_to_first.weight.uniform_(-1 / (2 + code_dim), 1 / (2 + code_dim))
        self.register_buffer("hole_coords", coordinate_grid(self.hole_size), persistent=False)

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """Zero the central hole (``adcourse.corruption.center_crop`` on a batch)."""
        r0, r1 = self.hole
        out = images.clone()
        out[..., r0:r1, r0:r1] = 0
        return out

    def forward(self, cut: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        z = self.encoder(cut)
        shift = self.code_to_first(z)[:, None, :]  # (N, 1, hidden)
        pts = self.hole_coords if coords is None else coords
        out = self.decoder(pts[None], first_shift=shift)  # (N, k, C); target scaled to [−1, 1]
        out = out / 2 + 0.5
        if coords is not None:
            return out.transpose(1, 2)  # (N, C, k)
        return out.transpose(1, 2).reshape(len(cut), self.in_channels, self.hole_size, self.hole_size)

    def paint(self, images: torch.Tensor) -> torch.Tensor:
        """Cut the centre out, paint it back (clamped to [0, 1]), paste it into the image."""
        r0, r1 = self.hole
        out = images.clone()
        out[..., r0:r1, r0:r1] = self(self.cut(images)).clamp(0, 1)
        return out


# ---------------------------------------------------------------------------------------------
# The discriminator as anomaly estimator
# ---------------------------------------------------------------------------------------------


class TripletDiscriminator(nn.Module):
    """Image → embedding: three 5×5 convolutions with PReLU and 2×2 max-pooling, dropout, linear.

    Trained with the triplet loss on cosine distance (Yelisieiev 2021, Sec. 4.1.3):
    L = max(d(I, I_rot) − d(I, I_rec) + m, 0); the anomaly score is d(D(I), D(I_rec)).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, width: int = 16, embedding_dim: int = 64,
                 dropout: float = 0.2):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size={image_size} must be divisible by 8")
        layers: list[nn.Module] = []
        channels = [in_channels, width, 2 * width, 4 * width]
        for a, b in zip(channels, channels[1:]):
            layers += [nn.Conv2d(a, b, 5, padding=2), nn.PReLU(b), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.Dropout(dropout), nn.Flatten())
        self.embed = nn.Linear(4 * width * (image_size // 8) ** 2, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle (degrees, counter-clockwise) about the centre, reflecting at
    the borders so that rotated textures have no black corners."""
    theta = torch.deg2rad(degrees.to(images))
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)], 1)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Scoring whole images: a sliding centre
# ---------------------------------------------------------------------------------------------


def window_offsets(size: int, hole: int, stride: int) -> list[int]:
    """Top-left positions (in an image padded by (window − hole)/2 on each side) of the windows
    whose holes cover every pixel of a side of ``size``; the last hole ends at the border."""
    starts = list(range(0, size - hole + 1, stride))
    if starts[-1] != size - hole:
        starts.append(size - hole)
    return starts


def pad_for_windows(images: torch.Tensor, window: int, hole: int) -> torch.Tensor:
    """Reflect-pad by (window − hole)/2 so that a window's hole can sit on any part of the image."""
    pad = (window - hole) // 2
    return F.pad(images, (pad, pad, pad, pad), mode="reflect")


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SirenInpaintSettings:
    """Settings of :class:`SirenInpaintDetector`: the generator's training, its network, its loss, the
    discriminator, the hole and the scores."""
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3                   # the generator's
    hidden_features: int = 96          # the SIREN decoder's width ...
    hidden_layers: int = 2             # ... and its sine layers after the first
    code_dim: int = 64
    encoder_width: int = 16
    first_omega_0: float = 10.0
    coords_per_step: int | None = 256  # hole pixels the MSE sees per step (None: all of them)
    perceptual_weight: float = 0.0
    style_weight: float = 0.0
    backbone: str = "shipped"          # the loss network, see adcourse.losses.perceptual_features
    download: bool = False             # may the "source" loss network (VGG-16) download its weights?
    discriminator: Literal["joint", "after"] | None = None  # trained with the generator, after it, or not at all
    disc_epochs: int = 3               # for discriminator="after"
    disc_lr: float = 1e-3
    disc_width: int = 8
    margin: float = 0.1                # of the triplet loss
    max_rotation: float = 90.0         # degrees: the positives are rotations within ± this angle
    adversarial_weight: float = 0.0    # with discriminator="joint": the generator's pull towards I in D's eyes
    hole_fraction: float = 0.5         # side of the cut-out centre, as a fraction of the image's
    crop: bool = True                  # crop convolutions in the encoder (False: plain ones)
    overlap: int = 1                   # pixels a crop convolution may reach into the hole
    smoothing: float = 2.0             # Gaussian σ of the anomaly maps, in pixels
    image_score: Literal["max", "mean"] = "mean"
    score: Literal["residual", "discriminator"] = "residual"
    stride: int | None = None          # of the sliding centre (None: half the hole)

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        unused = {}
        # (disc_lr, disc_width, margin and max_rotation are also read by train_discriminator() after fit)
        if self.discriminator != "after":
            unused["disc_epochs"] = ("discriminator", "discriminator='after'")
        if self.discriminator != "joint":
            unused["adversarial_weight"] = ("discriminator", "discriminator='joint'")
        if self.perceptual_weight == 0 and self.style_weight == 0:
            unused.update({key: ("perceptual_weight", "perceptual_weight > 0 or style_weight > 0")
                           for key in ("backbone", "download")})
        else:
            unused.update(unread_download(self))
        if not self.crop:
            unused["overlap"] = ("crop", "crop=True")
        return unused

    def __post_init__(self):
        checks.at_least(self, 1, "epochs", "batch_size", "hidden_features", "code_dim", "encoder_width",
                        "coords_per_step", "disc_width", "stride")
        checks.at_least(self, 0, "hidden_layers", "disc_epochs", "overlap")
        checks.positive(self, "lr", "disc_lr", "first_omega_0")
        checks.non_negative(self, "perceptual_weight", "style_weight", "margin", "max_rotation",
                            "adversarial_weight", "smoothing")
        checks.one_of(self, "backbone", BACKBONE_CHOICES)
        checks.one_of(self, "discriminator", (None, "joint", "after"))
        checks.in_interval(self, "hole_fraction", 0, 1, low_open=True, high_open=True)
        checks.one_of(self, "image_score", ("max", "mean"))
        checks.one_of(self, "score", ("residual", "discriminator"))


@register("siren_inpaint")
class SirenInpaintDetector(Detector):
    """Anomaly detection by inpainting with a SIREN (Yelisieiev 2021), scored over the whole image.

    Training, on normal images: random windows of the image's size are cut from the image padded
    by reflection (so that the hole can fall on any part of it, borders included); their centre is
    cut out and painted back by a :class:`SirenInpainter` trained with MSE + ``perceptual_weight``
    · perceptual + ``style_weight`` · style, computed on the maps of a frozen loss network
    (:func:`adcourse.losses.perceptual_features`: VGG-16 as in the thesis with ``backbone="source"``
    when torchvision has its weights, the shipped EfficientNet-Lite0 otherwise; ``backbone_name`` says
    which one ran, None when both weights are 0 and no loss network is used).
    ``discriminator="joint"`` trains a :class:`TripletDiscriminator` alongside, as the thesis does,
    on (I, rotated I, painted I) with the triplet loss (``adversarial_weight`` > 0 also lets the
    generator pull its paintings towards I in the discriminator's eyes); ``"after"`` trains it for
    ``disc_epochs`` once the generator is done (cheaper); ``None`` trains none.

    Scoring: the inpainter only judges the centre, so each test image is covered by a sliding
    centre: windows whose holes tile the image with ``stride`` (half the hole by default, so that
    every pixel is painted by 1 to 4 windows, averaged). Pixel map = squared difference between
    the image and its painting, Gaussian-smoothed; image score = ``image_score`` (``"mean"`` or
    ``"max"``) of the smoothed map, or, with ``score="discriminator"``, the largest cosine distance
    between the discriminator's embeddings of a window and of its painted version
    (:meth:`predict_with` scores either way, whatever the settings say).
    """

    name = "siren_inpaint"
    Settings = SirenInpaintSettings
    # quick: well under a minute on a 2-core CPU, the MSE term only. full: the thesis' network sizes and
    # losses, for a GPU (an estimated 3–5 minutes on one H100 for 2048 patches; not yet measured).
    PROFILES = {
        "quick": SirenInpaintSettings(),
        "full": SirenInpaintSettings(epochs=150, lr=1e-4, hidden_features=512, hidden_layers=3, code_dim=512,
                                     encoder_width=64, coords_per_step=None, perceptual_weight=0.01,
                                     style_weight=0.1, backbone="source", download=True, discriminator="joint",
                                     disc_epochs=50, disc_lr=1e-4, disc_width=32, adversarial_weight=0.1),
    }
    # backbone_name: the loss network that trained the generator, kept with a saved detector
    fitted = ("network", "discriminator", "backbone_name")

    def build(self, input_shape):
        s = self.settings
        checks.square_images(self.name, input_shape)
        channels, size = input_shape[0], input_shape[-1]
        self.network = SirenInpainter(channels, size, s.hole_fraction, s.code_dim, s.hidden_features,
                                      s.hidden_layers, s.encoder_width, crop=s.crop, overlap=s.overlap,
                                      first_omega_0=s.first_omega_0).to(self.device)
        self.discriminator = self._new_discriminator(channels, size) if s.discriminator is not None else None
        self.loss_network: nn.Module | None = None  # created by fit_networks: training needs it, scoring does not
        self.backbone_name = None
        self.history: dict[str, list[float]] = {"generator": [], "discriminator": []}

    def _new_discriminator(self, channels: int, size: int) -> TripletDiscriminator:
        return TripletDiscriminator(channels, size, width=self.settings.disc_width).to(self.device)

    def load_fitted_state(self, state: dict) -> None:
        # train_discriminator() may have added a discriminator after fit (or a user removed it): follow the file
        if state.get("discriminator") is None:
            self.discriminator = None
        elif self.discriminator is None:
            self.discriminator = self._new_discriminator(self.input_shape[0], self.input_shape[-1])
        super().load_fitted_state(state)

    # -- training -------------------------------------------------------------------------
    def fit_networks(self, train_dataset) -> None:
        """Train the generator (and a ``"joint"`` discriminator with it), then an ``"after"`` discriminator."""
        s = self.settings
        images = torch.stack([train_dataset[i]["image"] for i in range(len(train_dataset))])
        if s.perceptual_weight > 0 or s.style_weight > 0:
            self.loss_network = perceptual_features(s.backbone, s.download).to(self.device)
            self.backbone_name = self.loss_network.name
        opt_d = (torch.optim.Adam(self.discriminator.parameters(), lr=s.disc_lr)
                 if self.discriminator is not None else None)
        generator = training_generator()
        self._train_generator(images, generator, opt_d)
        if s.discriminator == "after":
            self._train_discriminator(images, s.disc_epochs, generator, opt_d)
        if self.discriminator is not None:
            self.discriminator.eval()

    @staticmethod
    def _windows(padded: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """One random window of side ``size`` per padded image."""
        span = padded.shape[-1] - size + 1
        tops = torch.randint(0, span, (len(padded),), generator=generator)
        lefts = torch.randint(0, span, (len(padded),), generator=generator)
        return torch.stack([p[:, t:t + size, l:l + size] for p, t, l in zip(padded, tops, lefts)])

    def _paste(self, x: torch.Tensor, painted: torch.Tensor) -> torch.Tensor:
        """x with its hole replaced by ``painted``, differentiably (no in-place write)."""
        r0, r1 = self.network.hole
        keep = torch.ones_like(x)
        keep[..., r0:r1, r0:r1] = 0
        return x * keep + F.pad(painted, (r0, x.shape[-1] - r1, r0, x.shape[-2] - r1))

    def _train_generator(self, images: torch.Tensor, generator: torch.Generator, opt_d) -> None:
        """The generator's epochs: random windows, cut and painted back (:meth:`_generator_step`)."""
        s = self.settings
        size = images.shape[-1]
        padded = pad_for_windows(images, size, self.network.hole_size)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=s.lr)
        joint = s.discriminator == "joint"
        for _ in range(s.epochs):
            order = torch.randperm(len(images), generator=generator)
            g_total = d_total = 0.0
            batches = 0
            self.network.train()
            for start in range(0, len(order), s.batch_size):
                x = self._windows(padded[order[start:start + s.batch_size]], size, generator).to(self.device)
                g_loss, d_loss = self._generator_step(x, optimizer, generator, opt_d if joint else None)
                g_total += g_loss
                d_total += d_loss
                batches += 1
            self.history["generator"].append(g_total / batches)
            if joint:
                self.history["discriminator"].append(d_total / batches)
        self.network.eval()

    def _inpainting_loss(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(MSE on the painted centre, x with its painted centre) for a batch of windows ``x``.

        A coordinate network can learn from a random subset of the hole's pixels
        (``coords_per_step``); the painted image is then not made (None). The perceptual and style
        terms and the discriminator need the whole painting, so with them every pixel is painted.
        """
        s = self.settings
        r0, r1 = self.network.hole
        n_coords = self.network.hole_size ** 2
        cut = self.network.cut(x)
        target = x[..., r0:r1, r0:r1]
        whole = (self.loss_network is not None or s.discriminator == "joint" or not s.coords_per_step
                 or s.coords_per_step >= n_coords)
        if whole:
            painted = self.network(cut)
            return torch.mean((painted - target) ** 2), self._paste(x, painted)
        idx = torch.randperm(n_coords, generator=generator)[:s.coords_per_step].to(self.device)
        painted = self.network(cut, self.network.hole_coords[idx])
        return torch.mean((painted - target.flatten(2)[..., idx]) ** 2), None

    def _generator_step(self, x: torch.Tensor, optimizer, generator: torch.Generator, opt_d) -> tuple[float, float]:
        """One step on a batch of windows: L = MSE + perceptual + style (+ adversarial); with ``opt_d``
        (``discriminator="joint"``) a triplet step of the discriminator first. Returns both losses."""
        s = self.settings
        loss, recon = self._inpainting_loss(x, generator)
        if self.loss_network is not None:
            feats_x = [f.detach() for f in self.loss_network(x)]
            feats_r = self.loss_network(recon)
            loss = loss + s.perceptual_weight * perceptual_loss(feats_r, feats_x) \
                + s.style_weight * style_loss(feats_r, feats_x)
        d_loss = 0.0
        if opt_d is not None:
            d_loss = self._discriminator_step(x, recon, opt_d, generator)
            if s.adversarial_weight > 0:  # the generator pulls its painting towards I in D's eyes
                self.discriminator.eval()
                adv = cosine_distance(self.discriminator(x).detach(), self.discriminator(recon)).mean()
                loss = loss + s.adversarial_weight * adv
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: the loss became {loss.item()} at epoch "
                                     f"{len(self.history['generator']) + 1}; lower the learning rate (lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item(), d_loss

    def _discriminator_step(self, x, recon, optimizer, generator) -> float:
        """One triplet step: I (anchor) close to its rotation (positive), far from its painting (negative)."""
        limit = self.settings.max_rotation  # the thesis: angles in [−90°, 90°]
        angles = ((torch.rand(len(x), generator=generator) * 2 - 1) * limit).to(self.device)
        self.discriminator.train()
        d = self.discriminator
        loss = triplet_loss(d(x), d(rotate(x, angles)), d(recon.detach()), margin=self.settings.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def train_discriminator(self, images: torch.Tensor, epochs: int, lr: float | None = None,
                            generator: torch.Generator | None = None, optimizer=None) -> list[float]:
        """Train (or go on training) the triplet discriminator against the frozen generator of a fitted
        detector; a new one when there is none.

        ``images``: N×C×H×W normal training images. Returns the mean triplet loss of each epoch.
        """
        if self.input_shape is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load() first")
        return self._train_discriminator(self.check_images(images), epochs, generator, optimizer, lr)

    def _train_discriminator(self, images: torch.Tensor, epochs: int, generator: torch.Generator | None = None,
                             optimizer=None, lr: float | None = None) -> list[float]:
        s = self.settings
        if self.discriminator is None:
            self.discriminator = self._new_discriminator(images.shape[1], images.shape[-1])
        optimizer = optimizer or torch.optim.Adam(self.discriminator.parameters(), lr=lr or s.disc_lr)
        generator = generator or torch.Generator().manual_seed(1)
        padded = pad_for_windows(images, images.shape[-1], self.network.hole_size)
        self.network.eval()
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(order), s.batch_size):
                x = self._windows(padded[order[start:start + s.batch_size]], images.shape[-1], generator)
                x = x.to(self.device)
                with torch.no_grad():
                    recon = self.network.paint(x)
                total += self._discriminator_step(x, recon, optimizer, generator)
                batches += 1
            losses.append(total / batches)
        self.history["discriminator"] += losses
        self.discriminator.eval()
        return losses

    # -- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def paint_windows(self, images: torch.Tensor, batch_size: int = 256):
        """Paint every image with the sliding centre.

        Returns ``(painting, coverage, d_scores)``: the averaged painting (N×C×H×W), how many
        windows painted each pixel (1×1×H×W), and each image's largest discriminator distance
        (N,) or None without a discriminator.
        """
        self.network.eval()
        if self.discriminator is not None:
            self.discriminator.eval()
        size = images.shape[-1]
        hole = self.network.hole_size
        r0, r1 = self.network.hole
        stride = self.settings.stride or max(hole // 2, 1)
        padded = pad_for_windows(images, size, hole)
        starts = window_offsets(size, hole, stride)
        painting = torch.zeros_like(images)
        coverage = torch.zeros(1, 1, *images.shape[-2:])
        d_scores = None if self.discriminator is None else torch.full((len(images),), -float("inf"))
        for top in starts:
            for left in starts:
                windows = padded[..., top:top + size, left:left + size]
                holes, dists = [], []
                for i in range(0, len(images), batch_size):
                    w = windows[i:i + batch_size].to(self.device)
                    painted = self.network.paint(w)
                    holes.append(painted[..., r0:r1, r0:r1].cpu())
                    if self.discriminator is not None:
                        dists.append(cosine_distance(self.discriminator(w), self.discriminator(painted)).cpu())
                painting[..., top:top + hole, left:left + hole] += torch.cat(holes)
                coverage[..., top:top + hole, left:left + hole] += 1
                if d_scores is not None:
                    d_scores = torch.maximum(d_scores, torch.cat(dists))
        return painting / coverage, coverage, d_scores

    def predict_with(self, images: torch.Tensor, score: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, maps)`` with ``score="residual"`` or ``"discriminator"`` (see the class), whatever
        the settings' ``score`` is."""
        images = self.check_images(images)
        with torch.no_grad():
            return self._score_with(images, score)

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self._score_with(images, self.settings.score)

    def _score_with(self, images: torch.Tensor, score: str) -> tuple[np.ndarray, np.ndarray]:
        if score not in ("residual", "discriminator"):
            raise ValueError(f"score must be 'residual' or 'discriminator', got {score!r}")
        painting, _, d_scores = self.paint_windows(images)
        maps = smooth_maps(((images - painting) ** 2).mean(dim=1).numpy(), self.settings.smoothing)
        if score == "discriminator":
            if d_scores is None:
                raise ValueError("score='discriminator' needs a discriminator: fit with discriminator='joint' "
                                 "or 'after', or call train_discriminator(...)")
            return d_scores.numpy(), maps
        flat = maps.reshape(len(maps), -1)
        return (flat.max(axis=1) if self.settings.image_score == "max" else flat.mean(axis=1)), maps
