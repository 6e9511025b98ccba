"""VT-ADL of chapter 9: a vision transformer that reconstructs the image and a Gaussian mixture
density network that scores every encoded patch (Mishra et al., 2021).

Pieces, in the order the chapter builds them::

    PatchEmbed            image -> N patch vectors -> linear embedding (eq. 6.3 of the thesis)
    attention             softmax(Q K^T / sqrt(d)) V, written out (eq. 6.1)
    MultiHeadSelfAttention, TransformerBlock (pre-LN, GELU MLP, no dropout), ViTEncoder
    ConvDecoder           reconstruction vector -> transposed convolutions -> image
    MixtureDensityNetwork K diagonal Gaussians per patch position; NLL by log-sum-exp
    VTADL                 all of it; VTADLDetector registered as ``vtadl`` for the benchmark

Two deliberate departures from the published code, both discussed in the chapter: the mixture is
conditioned on the patch position (not on the vector it scores, which lets it put a mean on that
vector and stop discriminating), and its loss is the mixture negative log-likelihood (the code
minimises a weighted sum of per-component NLLs; :func:`weighted_component_nll` keeps that variant
for the side-by-side comparison).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import checks
from ..detectors import Detector, register, smooth_maps
from ..losses import mixture_nll, ssim_loss, ssim_map
from ..train import batch_to, fit, training_generator

CONDITIONS = ("position", "none", "vector")
MDN_LOSSES = ("mixture", "weighted_components")


# ----------------------------------------------------------------------------------------------
# From patches to tokens
# ----------------------------------------------------------------------------------------------

def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B×C×H×W images -> B×N×(C·P·P) flattened patches, row by row (N = H·W / P²)."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}×{w} is not divisible into patches of {patch_size}×{patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch_size * patch_size)


class PatchEmbed(nn.Module):
    """Cut the image into P×P patches and map each flattened patch linearly to ``dim`` numbers.

    The same thing as a convolution with kernel = stride = P (the chapter shows it).
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, in_channels: int = 1, dim: int = 64):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.n_patches = self.grid ** 2
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected {self.image_size}×{self.image_size} images, got {tuple(images.shape[-2:])}")
        return self.proj(patchify(images, self.patch_size))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention: ``softmax(q kᵀ / √d) v`` and the weights (…×N×N)."""
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


class MultiHeadSelfAttention(nn.Module):
    """``heads`` attentions in parallel on ``dim / heads``-dimensional projections, then mixed."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mixed, weights = attention(q, k, v)  # B×heads×N×(d/heads), B×heads×N×N
        y = self.out(mixed.transpose(1, 2).reshape(b, n, d))
        return (y, weights) if return_attention else y


class TransformerBlock(nn.Module):
    """Pre-LN block: z' = MSA(LN(z)) + z, then z'' = MLP(LN(z')) + z' (eqs. 6.4–6.5); no dropout."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        a, weights = self.attn(self.norm1(x), return_attention=True)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return (x, weights) if return_attention else x


class ViTEncoder(nn.Module):
    """Patch embedding + learned positional embedding + ``depth`` blocks + a final LayerNorm.

    No class token: VT-ADL scores every patch, and the published code drops its class token too.
    ``forward`` returns the B×N×D encoded patches (and, if asked, each layer's attention weights).
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, in_channels: int = 1, dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp_dim: int = 128):
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, dim)
        self.n_patches, self.grid = self.patch_embed.n_patches, self.patch_embed.grid
        self.pos_embedding = nn.Parameter(torch.randn(1, self.n_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # Per-channel statistics of the training images (set_input_statistics): the encoder reads
        # standardised pixels. Mean 0 and std 1 (the default) leave the images as they are.
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))

    @torch.no_grad()
    def set_input_statistics(self, images: torch.Tensor) -> None:
        """Standardise the encoder's input with the per-channel mean and std of ``images``."""
        self.input_mean.copy_(images.mean((0, 2, 3), keepdim=True))
        self.input_std.copy_(images.std((0, 2, 3), keepdim=True).clamp(min=1e-6))

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        images = (images - self.input_mean) / self.input_std
        x = self.patch_embed(images) + self.pos_embedding
        maps = []
        for block in self.blocks:
            x, weights = block(x, return_attention=True)
            maps.append(weights)
        x = self.norm(x)
        return (x, maps) if return_attention else x


# ----------------------------------------------------------------------------------------------
# The reconstruction path
# ----------------------------------------------------------------------------------------------

def decoder_plan(image_size: int, max_ups: int = 7) -> tuple[int, int]:
    """``(start, n_up)``: the decoder starts at start×start and doubles n_up times to image_size.

    As many doublings as the side allows while the start stays at least 4 pixels: 64 -> (4, 4),
    512 -> (4, 7), 48 -> (6, 3), 28 -> (7, 2).
    """
    n_up = 0
    while n_up < max_ups and image_size % 2 ** (n_up + 1) == 0 and image_size // 2 ** (n_up + 1) >= 4:
        n_up += 1
    return image_size // 2 ** n_up, n_up


class ConvDecoder(nn.Module):
    """Reconstruction vector -> image with transposed convolutions only.

    The vector is read as a ``recon_dim``×1×1 map; a first transposed convolution (kernel = start)
    spreads it to start×start, then stride-2 transposed convolutions double the side, each followed
    by batch norm and ReLU except the last, which ends in ``output`` (sigmoid for images in [0, 1],
    tanh for images in [−1, 1] as in the published model). For 64×64 that is 5 transposed
    convolutions, as in the thesis.
    """

    def __init__(self, recon_dim: int = 128, out_channels: int = 1, image_size: int = 64, width: int = 16,
                 output: str = "sigmoid"):
        super().__init__()
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"output must be 'sigmoid' or 'tanh', got {output!r}")
        start, n_up = decoder_plan(image_size)
        if n_up == 0:
            raise ValueError(f"image_size={image_size} must be even (and at least 8) for the decoder")
        channels = [min(width * 2 ** (n_up - 1 - i), width * 8) for i in range(n_up)]
        layers = [nn.Unflatten(1, (recon_dim, 1, 1)),
                  nn.ConvTranspose2d(recon_dim, channels[0], start, bias=False),
                  nn.BatchNorm2d(channels[0]), nn.ReLU()]
        for a, b in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1),
                   nn.Sigmoid() if output == "sigmoid" else nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return self.net(vector)


# ----------------------------------------------------------------------------------------------
# The mixture density network
# ----------------------------------------------------------------------------------------------

def weighted_component_nll(x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor,
                           scales: torch.Tensor) -> torch.Tensor:
    """The published code's MDN loss: Σ_k w_k · (−log N(x | μ_k, σ_k)), not −log Σ_k w_k N(x | μ_k, σ_k).

    By Jensen's inequality it is an upper bound of the mixture NLL; its minimum puts all the weight
    on the single best component, so the "mixture" is trained as one Gaussian at a time. Shapes as
    in :func:`adcourse.losses.mixture_nll`.
    """
    log_normal = (-0.5 * ((x.unsqueeze(-2) - means) / scales) ** 2 - torch.log(scales)
                  - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -(torch.softmax(logits, dim=-1) * log_normal).sum(-1)


class MixtureDensityNetwork(nn.Module):
    """K diagonal Gaussians over the ``dim``-dimensional encoded patch, from a small network.

    Weights w = softmax(a_w) (eq. 6.7), scales σ = softplus(a_σ) + ``min_scale`` (eq. 6.8, with a
    floor for numerical safety), means μ = a_μ (linear). What the network reads (``condition``):

    - ``"position"`` (default): a learned embedding of the patch position — one mixture per
      position, with the heads shared across positions;
    - ``"none"``: a single learned input — one mixture for every patch;
    - ``"vector"``: the encoded patch itself, as in the published code. The chapter shows why this
      is a trap: the network can put a mean on the very vector it scores.

    :meth:`forward` returns ``(logits, means, scales)`` of shapes B×N×K, B×N×K×D, B×N×K×D.
    """

    def __init__(self, dim: int = 64, n_components: int = 10, n_positions: int = 64,
                 condition: str = "position", hidden: int = 64, min_scale: float = 1e-3):
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        self.dim, self.n_components, self.n_positions = dim, n_components, n_positions
        self.condition, self.min_scale = condition, min_scale
        self._cache = None  # inference-time parameters (see parameters_per_context)
        if condition == "position":
            self.context = nn.Embedding(n_positions, hidden)
        elif condition == "none":
            self.context = nn.Parameter(torch.randn(1, hidden))
        else:
            self.context = nn.Linear(dim, hidden)
        self.body = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.weight_head = nn.Linear(hidden, n_components)
        self.mean_head = nn.Linear(hidden, n_components * dim)
        self.scale_head = nn.Linear(hidden, n_components * dim)
        with torch.no_grad():  # start the means spread like LayerNorm outputs, the scales near 1
            self.mean_head.bias.normal_()
            self.scale_head.bias.fill_(0.5)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start every component on a randomly drawn training vector with the data's spread.

        A mixture fitted by gradient descent from random means leaves most components far from
        the data, where they get no responsibility and never move ("dead" components); EM
        implementations start from k-means for the same reason. ``x``: …×D encoded patches.
        """
        flat = x.reshape(-1, self.dim)
        picks = flat[torch.randperm(len(flat), generator=generator)[: self.n_components]]
        if len(picks) < self.n_components:  # fewer vectors than components: repeat them
            picks = picks[torch.arange(self.n_components) % len(picks)]
        std = flat.std(0).clamp(min=2 * self.min_scale)
        self.mean_head.weight.mul_(0.01)
        self.mean_head.bias.copy_(picks.reshape(-1))
        self.scale_head.weight.mul_(0.01)
        inverse_softplus = torch.log(torch.expm1(std - self.min_scale))
        self.scale_head.bias.copy_(inverse_softplus.repeat(self.n_components))
        self.weight_head.weight.mul_(0.01)
        self.weight_head.bias.zero_()

    def parameters_per_context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, means, scales)`` once per context: N×K, N×K×D, N×K×D for ``"position"``,
        1×K, 1×K×D, 1×K×D for ``"none"``, B×N×K(×D) for ``"vector"``.

        When the mixture does not depend on the input and no gradient is needed (inference), the
        parameters are computed once and reused until a weight changes.
        """
        if self.condition == "vector" or torch.is_grad_enabled():
            return self._compute_parameters(x)
        key = (x.shape[-2] if self.condition == "position" else None, x.device, x.dtype,
               tuple(p._version for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute_parameters(x))
        return self._cache[1]

    def _compute_parameters(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, d = x.shape[-2], x.shape[-1]
        if self.condition == "vector":
            h = self.body(self.context(x))  # B×N×hidden: one mixture per vector
        elif self.condition == "position":
            if n != self.n_positions:
                raise ValueError(f"the mixture was built for {self.n_positions} patch positions, got {n}")
            h = self.body(self.context.weight)  # N×hidden: one mixture per position
        else:
            h = self.body(self.context)  # 1×hidden: one mixture for all
        k = self.n_components
        logits = self.weight_head(h)
        means = self.mean_head(h).reshape(*h.shape[:-1], k, d)
        scales = F.softplus(self.scale_head(h)).reshape(*h.shape[:-1], k, d) + self.min_scale
        return logits, means, scales

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n = x.shape[:2]
        logits, means, scales = self.parameters_per_context(x)
        if self.condition != "vector":  # the same mixture for every image (and every position if "none")
            logits, means, scales = (t.expand(b, n, *t.shape[1:]) for t in (logits, means, scales))
        return logits, means, scales

    def nll(self, x: torch.Tensor, loss: str = "mixture") -> torch.Tensor:
        """B×N negative log-likelihood of every encoded patch (``loss="weighted_components"``:
        the published code's weighted sum of per-component NLLs instead).

        When the mixture does not depend on the vector (``"position"``, ``"none"``), the squared
        distances are expanded, Σ_d (x−μ)²/σ² = Σ_d x²/σ² − 2xμ/σ² + μ²/σ², into three matrix
        products, so that no B×N×K×D tensor is formed: the same numbers as
        :func:`adcourse.losses.mixture_nll`, several times faster.
        """
        if loss not in MDN_LOSSES:
            raise ValueError(f"loss must be one of {MDN_LOSSES}, got {loss!r}")
        if self.condition == "vector":
            params = self(x)
            return mixture_nll(x, *params) if loss == "mixture" else weighted_component_nll(x, *params)
        logits, means, scales = self.parameters_per_context(x)
        precision = scales ** -2
        spec = "bnd,nkd->bnk" if self.condition == "position" else "bnd,kd->bnk"
        means_, precision_ = (means, precision) if self.condition == "position" else (means[0], precision[0])
        squared = (torch.einsum(spec, x * x, precision_) - 2 * torch.einsum(spec, x, means_ * precision_)
                   + (means * means * precision).sum(-1))
        log_normal = -0.5 * squared - torch.log(scales).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)
        log_weights = torch.log_softmax(logits, dim=-1)
        if loss == "mixture":
            return -torch.logsumexp(log_weights + log_normal, dim=-1)
        return -(log_weights.exp() * log_normal).sum(-1)

    def distribution(self, x: torch.Tensor) -> torch.distributions.MixtureSameFamily:
        """The same mixture as a ``torch.distributions`` object (for checks and sampling)."""
        logits, means, scales = self(x)
        components = torch.distributions.Independent(torch.distributions.Normal(means, scales), 1)
        return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits), components)


# ----------------------------------------------------------------------------------------------
# VT-ADL
# ----------------------------------------------------------------------------------------------

class VTADL(nn.Module):
    """ViT encoder -> (a) projection to a reconstruction vector -> decoder -> image,
    (b) mixture density network -> negative log-likelihood of every encoded patch.

    Gaussian noise of standard deviation ``noise_std`` is added to the encoded patches that the
    mixture scores, in training mode only. ``forward`` returns a dict: ``tokens`` (B×N×D),
    ``reconstruction`` (B×C×H×W), ``nll`` (B×N).
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, in_channels: int = 1, dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp_dim: int = 128, recon_dim: int = 128,
                 n_components: int = 10, condition: str = "position", noise_std: float = 0.2,
                 mdn_loss: str = "mixture", mdn_hidden: int = 64, decoder_width: int = 16,
                 output: str = "sigmoid", detach_mdn: bool = True):
        super().__init__()
        if mdn_loss not in MDN_LOSSES:
            raise ValueError(f"mdn_loss must be one of {MDN_LOSSES}, got {mdn_loss!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.image_size, self.patch_size = image_size, patch_size
        self.noise_std, self.mdn_loss, self.detach_mdn = noise_std, mdn_loss, detach_mdn
        self.encoder = ViTEncoder(image_size, patch_size, in_channels, dim, depth, heads, mlp_dim)
        self.grid = self.encoder.grid
        self.project = nn.Linear(self.encoder.n_patches * dim, recon_dim)  # the learned projection matrix
        self.decoder = ConvDecoder(recon_dim, in_channels, image_size, decoder_width, output)
        # The encoder's output scale is arbitrary (a LayerNorm with a learned gain), so the mixture
        # reads each feature standardised over the batch (running statistics at test time): a noise
        # of 0.2 then means 0.2 of each feature's spread, and the encoder cannot make the NLL
        # arbitrarily small by shrinking its features.
        self.standardise = nn.BatchNorm1d(dim, affine=False)
        self.mdn = MixtureDensityNetwork(dim, n_components, self.encoder.n_patches, condition, mdn_hidden)

    def add_noise(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens + N(0, noise_std²) in training mode; tokens unchanged in eval mode."""
        if self.training and self.noise_std > 0:
            return tokens + self.noise_std * torch.randn_like(tokens)
        return tokens

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The B×N×D vectors the mixture scores: encoded patches, each feature standardised."""
        b, n, d = tokens.shape
        return self.standardise(tokens.reshape(b * n, d)).reshape(b, n, d)

    @torch.no_grad()
    def init_mixture(self, images: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the standardisation's statistics from ``images`` and start the mixture on them."""
        tokens = self.encoder(images).flatten(0, 1)
        self.standardise.running_mean.copy_(tokens.mean(0))
        self.standardise.running_var.copy_(tokens.var(0))
        self.mdn.init_from_data((tokens - tokens.mean(0)) / tokens.std(0).clamp(min=1e-5), generator)

    def forward(self, images: torch.Tensor) -> dict:
        tokens = self.encoder(images)
        reconstruction = self.decoder(self.project(tokens.flatten(1)))
        features = self.features(tokens.detach() if self.detach_mdn else tokens)
        nll = self.mdn.nll(self.add_noise(features), loss=self.mdn_loss)
        return {"tokens": tokens, "features": features, "reconstruction": reconstruction, "nll": nll}

    def heatmap(self, nll: torch.Tensor) -> torch.Tensor:
        """B×N patch NLLs -> B×H×W map by bilinear up-sampling of the grid×grid patch scores."""
        grid = nll.reshape(-1, 1, self.grid, self.grid)
        return F.interpolate(grid, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)[:, 0]


def vtadl_loss(model: VTADL, images: torch.Tensor, mse_weight: float = 5.0, ssim_weight: float = 0.5,
               nll_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Eq. 6.11: NLL + 5·MSE + 0.5·(1 − SSIM), with the NLL as nats per patch dimension.

    The thesis writes −LL with no normalisation; dividing by the patch dimension D keeps the
    mixture term on the scale of the reconstruction terms whatever D is (its code instead sums
    the NLL over the 64 patches and 512 dimensions, which outweighs 5·MSE by orders of magnitude).
    Returns the total and its three parts (detached floats).
    """
    out = model(images)
    mse = torch.mean((out["reconstruction"] - images) ** 2)
    if ssim_weight:
        # The batch folded into the channels: the same mean SSIM (each channel has its own window),
        # computed by a depthwise convolution, whose backward pass is ~8× faster on a CPU.
        b, c, h, w = images.shape
        ssim_term = ssim_loss(out["reconstruction"].reshape(1, b * c, h, w), images.reshape(1, b * c, h, w))
    else:
        ssim_term = torch.zeros((), device=images.device)
    nll = out["nll"].mean() / out["features"].shape[-1]
    total = nll_weight * nll + mse_weight * mse + ssim_weight * ssim_term
    return total, {"nll": nll.item(), "mse": mse.item(), "ssim": ssim_term.item()}


def refit_mixture(model: VTADL, images: torch.Tensor, steps: int = 300, lr: float = 2e-2, batch_size: int = 32,
                  seed: int = 0, reinit: bool = True) -> list[float]:
    """Fit only the mixture, for ``steps`` Adam steps, on the final (frozen) features of ``images``.

    During training the encoder's features keep moving, and a mixture trained alongside them lags
    behind (its components get stranded where the features used to be). With the stop-gradient
    the encoder never sees the mixture, so fitting it again on the features the detector will
    actually score changes nothing else. ``reinit`` first puts the components back on randomly
    drawn feature vectors (:meth:`MixtureDensityNetwork.init_from_data`). Noise is added as in
    training. Returns the loss (NLL per dimension) of every step.
    """
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.features(model.encoder(images[i:i + 64].to(device)))
                           for i in range(0, len(images), 64)])
    generator = torch.Generator().manual_seed(seed)
    if reinit:
        model.mdn.init_from_data(feats[:64], generator)
    optimizer = torch.optim.Adam(model.mdn.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = feats[torch.randint(0, len(feats), (min(batch_size, len(feats)),), generator=generator)]
        if model.noise_std > 0:
            x = x + model.noise_std * torch.randn(x.shape, generator=generator).to(device)
        loss = model.mdn.nll(x, loss=model.mdn_loss).mean() / x.shape[-1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VTADLSettings:
    """Settings of :class:`VTADLDetector`: the model (:class:`VTADL`'s arguments), its training,
    the refit of the mixture and the maps."""
    # the model
    patch_size: int | None = None   # None: an 8×8 grid of patches
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    recon_dim: int = 128
    n_components: int = 10
    mdn_hidden: int = 64
    decoder_width: int = 16
    condition: Literal["position", "none", "vector"] = "position"
    noise_std: float = 0.2
    mdn_loss: Literal["mixture", "weighted_components"] = "mixture"
    detach_mdn: bool = True         # the mixture's gradient does not reach the encoder
    # training
    epochs: int = 8                 # 0: an untrained encoder (the chapter's control), the mixture still refitted
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    mse_weight: float = 5.0
    ssim_weight: float = 0.0
    nll_weight: float = 1.0
    mdn_lr_factor: float = 10.0     # the mixture's learning rate, as a multiple of lr
    standardise_input: bool = True  # the encoder reads pixels standardised with the training images' statistics
    refit_steps: int = 300          # of the mixture on the final features (0: none)
    refit_lr: float = 2e-2
    smoothing: float = 2.0          # Gaussian σ of the anomaly maps, in pixels

    def unused(self) -> dict[str, tuple[str, str]]:
        """The settings these leave unread (see :class:`adcourse.detectors.Detector`)."""
        return {"refit_lr": ("refit_steps", "refit_steps > 0")} if self.refit_steps == 0 else {}

    def __post_init__(self):
        checks.at_least(self, 1, "patch_size", "dim", "depth", "heads", "mlp_dim", "recon_dim", "n_components",
                        "mdn_hidden", "decoder_width", "batch_size")
        checks.at_least(self, 0, "epochs", "refit_steps")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads} ({type(self).__name__}): "
                             "each attention head gets dim / heads numbers")
        checks.one_of(self, "condition", CONDITIONS)
        checks.one_of(self, "mdn_loss", MDN_LOSSES)
        checks.positive(self, "lr", "mdn_lr_factor", "refit_lr")
        checks.non_negative(self, "weight_decay", "noise_std", "mse_weight", "ssim_weight", "nll_weight", "smoothing")


@register("vtadl")
class VTADLDetector(Detector):
    """VT-ADL trained on normal images; heat map = up-sampled per-patch NLL, smoothed.

    Training: eq. 6.11 (NLL + 5·MSE + 0.5·(1 − SSIM); the quick profile drops the SSIM term) with
    Adam and weight decay, the encoder reading standardised pixels and the mixture started on
    encoded training patches; by default the mixture's gradient does not reach the encoder
    (``detach_mdn=True``: measured in chapter 9, joint training spoils the features), and after
    training the mixture is fitted again on the final features (``refit_steps``, see
    :func:`refit_mixture`).

    Image score: the sum of three standardised parts — reconstruction MSE, the SSIM term
    1 − SSIM, and the maximum patch NLL — each centred and divided by its spread on the training
    images (the published code adds the raw values, whose scales differ by orders of magnitude).
    ``patch_size=None`` picks an 8×8 grid of patches, as P = 64 on 512×512 images in the thesis.
    Every argument of :class:`VTADL` and every training setting is a field of :class:`VTADLSettings`.
    """

    name = "vtadl"
    Settings = VTADLSettings
    PROFILES = {
        # quick: about 10 s on one CPU core, 64×64 textures. No SSIM term: in a run this short it
        # holds the decoder at the mean image (chapter 9 measures it); the full profile keeps it.
        "quick": VTADLSettings(),
        # full: the published sizes (dim 512, depth 6, 8 heads, MLP 1024, K = 150), Adam 1e-4 with
        # weight decay 1e-4 and batch 8 as in table 6.1; 400 epochs in the thesis, 200 here.
        "full": VTADLSettings(epochs=200, batch_size=8, lr=1e-4, dim=512, depth=6, heads=8, mlp_dim=1024,
                              recon_dim=512, n_components=150, decoder_width=32, smoothing=4.0, ssim_weight=0.5,
                              refit_steps=1000, refit_lr=1e-2),
    }
    fitted = ("network", "score_scale")

    def build(self, input_shape):
        s = self.settings
        checks.square_images(self.name, input_shape)
        channels, size = input_shape[0], input_shape[-1]
        patch = s.patch_size or max(size // 8, 1)
        self.network = VTADL(size, patch, channels, dim=s.dim, depth=s.depth, heads=s.heads, mlp_dim=s.mlp_dim,
                             recon_dim=s.recon_dim, n_components=s.n_components, condition=s.condition,
                             noise_std=s.noise_std, mdn_loss=s.mdn_loss, mdn_hidden=s.mdn_hidden,
                             decoder_width=s.decoder_width, detach_mdn=s.detach_mdn).to(self.device)
        self.score_scale: dict | None = None  # part -> (mean, spread) on the training images
        self.history: list[float] = []
        self.refit_history: list[float] = []

    def fit_networks(self, train_dataset) -> None:
        s = self.settings
        loader = DataLoader(train_dataset, batch_size=s.batch_size, shuffle=True,
                            generator=training_generator())
        with torch.no_grad():  # standardise the input; start the mixture on encoded training patches
            first = torch.stack([train_dataset[i]["image"] for i in range(min(len(train_dataset), 256))])
            if s.standardise_input:
                self.network.encoder.set_input_statistics(first.to(self.device))
            self.network.init_mixture(first.to(self.device), training_generator())
        mdn_params = list(self.network.mdn.parameters())
        ids = {id(p) for p in mdn_params}
        others = [p for p in self.network.parameters() if id(p) not in ids]
        optimizer = torch.optim.Adam([{"params": others}, {"params": mdn_params, "lr": s.lr * s.mdn_lr_factor}],
                                     lr=s.lr, weight_decay=s.weight_decay)

        def loss_fn(model, batch):
            return vtadl_loss(model, batch_to(batch, self.device)["image"], s.mse_weight, s.ssim_weight,
                              s.nll_weight)[0]

        self.history = fit(self.network, loader, loss_fn, epochs=s.epochs, optimizer=optimizer,
                           device=self.device, desc=self.name)
        train_images = torch.stack([train_dataset[i]["image"] for i in range(min(len(train_dataset), 512))])
        if s.refit_steps:
            self.refit_history = refit_mixture(self.network, train_images, s.refit_steps, s.refit_lr, s.batch_size)
        parts = self.score_parts(train_images)
        self.score_scale = {k: (float(v.mean()), float(v.std()) + 1e-8) for k, v in parts.items()
                            if k != "heatmap"}

    @torch.no_grad()
    def score_parts(self, images: torch.Tensor, batch_size: int = 64) -> dict:
        """Per image: ``mse``, ``ssim`` (1 − SSIM), ``max_nll``; and the raw ``heatmap`` (N×H×W)."""
        self.network.eval()
        parts = {"mse": [], "ssim": [], "max_nll": [], "heatmap": []}
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(self.device)
            out = self.network(x)
            r = out["reconstruction"]
            parts["mse"].append(((r - x) ** 2).flatten(1).mean(1).cpu())
            parts["ssim"].append((1 - ssim_map(r, x)).flatten(1).mean(1).cpu())
            parts["max_nll"].append(out["nll"].max(1).values.cpu())
            parts["heatmap"].append(self.network.heatmap(out["nll"]).cpu())
        return {k: torch.cat(v).numpy() for k, v in parts.items()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        self.network.eval()
        return torch.cat([self.network(images[i:i + batch_size].to(self.device))["reconstruction"].cpu()
                          for i in range(0, len(images), batch_size)])

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        parts = self.score_parts(images)
        scores = sum((parts[k] - mean) / std for k, (mean, std) in self.score_scale.items())
        return scores, smooth_maps(parts["heatmap"], self.settings.smoothing)
