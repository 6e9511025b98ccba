"""Losses and similarity maps shared by the chapters."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbones import EfficientNetLite0Features, ImageNetInput, choose_network, load_imagenet_state


def gaussian_kernel(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``size`` taps."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """A normalised 2-D Gaussian window of ``size``×``size`` (SSIM's local weighting)."""
    g = gaussian_kernel(size, sigma, dtype, device)
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
    # The 2-D Gaussian window is separable: two 1-D passes give the same local means, much faster.
    g = gaussian_kernel(window_size, sigma, x.dtype, x.device)
    rows, cols = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    pad = window_size // 2
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))

    def local_mean(t):
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = (local_mean(x * x) - mu_x ** 2).clamp(min=0)
    var_y = (local_mean(y * y) - mu_y ** 2).clamp(min=0)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """1 − mean SSIM: zero for identical images."""
    return 1 - ssim_map(x, y, **kwargs).mean()


def mixture_nll(x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``x`` under a mixture of K diagonal Gaussians (chapter 9).

    −log Σ_k w_k N(x | μ_k, diag σ_k²) with w = softmax(logits), computed stably as
    −logsumexp_k [log w_k + log N(x | μ_k, σ_k)]. Shapes: ``x`` …×D, ``logits`` …×K,
    ``means`` and ``scales`` …×K×D (scales > 0); returns … (one value per vector).
    """
    import math

    z = (x.unsqueeze(-2) - means) / scales
    log_normal = (-0.5 * z ** 2 - torch.log(scales)).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)
    return -torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_normal, dim=-1)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None,
                     return_norms: bool = False):
    """WGAN-GP's penalty (Gulrajani et al., 2017): E[(‖∇ critic(x̂)‖₂ − 1)²] (chapter 5).

    x̂ = ε·real + (1 − ε)·fake with one ε ~ U[0, 1] per sample (drawn from ``generator`` when
    given), and the gradient is taken with respect to x̂, one norm per sample. ``create_graph``
    keeps the penalty differentiable, so that adding ``λ·penalty`` to the critic's loss trains the
    critic towards gradient norm 1 on the lines between real and fake samples. A critic with a
    map as output (one value per pixel) is differentiated through the sum of its map. With
    ``return_norms`` the per-sample gradient norms are returned too (detached).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} batches must have the same shape")
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps_device = generator.device if generator is not None else real.device
    eps = torch.rand(shape, generator=generator, dtype=real.dtype, device=eps_device).to(real.device)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    penalty = ((norms - 1) ** 2).mean()
    return (penalty, norms.detach()) if return_norms else penalty


# --- Perceptual and style losses, triplet loss (chapter 4, SIREN inpainting) ----------------------

VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}


class VGGFeatures(torch.nn.Module):
    """Frozen VGG-16 feature maps at ``layers`` (Johnson et al. 2016; the loss network of chapter 4).

    Inputs are N×C×H×W in [0, 1] (grey images are repeated to three channels), normalised with
    ImageNet's mean and standard deviation; ``forward`` returns the list of maps, shallow to deep.
    With ``pretrained=True`` the ImageNet weights come from torchvision's cache
    (``torch.hub.get_dir()/checkpoints``), downloaded there first when ``download`` is true (528 MB);
    when they cannot be had, :class:`adcourse.backbones.WeightsUnavailable` is raised (never a silent
    random network). ``pretrained=False`` gives a random initialisation seeded by ``seed``: a control,
    named so in ``name``. :func:`perceptual_features` picks the loss network by the course's one rule.
    """

    def __init__(self, layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"), pretrained: bool = True,
                 download: bool = True, seed: int = 0):
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-16 layers {unknown}; choose from {list(VGG16_LAYERS)}")
        self.layers = tuple(layers)
        last = max(VGG16_LAYERS[name] for name in self.layers)
        with torch.random.fork_rng(devices=[]):  # a fixed random init that leaves the global RNG alone
            torch.manual_seed(seed)
            features = tv_vgg.make_layers(tv_vgg.cfgs["D"])[: last + 1]
        if pretrained:
            state = load_imagenet_state(tv_vgg.VGG16_Weights.IMAGENET1K_V1.url, "VGG-16", download)
            features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.") and k[len("features."):] in features.state_dict()})
        self.pretrained = pretrained
        self.name = "VGG-16 (ImageNet, torchvision)" if pretrained else f"VGG-16 (random, seed {seed}: a control)"
        for i, module in enumerate(features):
            if isinstance(module, torch.nn.ReLU):
                features[i] = torch.nn.ReLU(inplace=False)
        self.features = features.eval().requires_grad_(False)
        self.input = ImageNetInput()

    def train(self, mode: bool = True):  # always frozen, always in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.input(x)
        wanted = {VGG16_LAYERS[name]: name for name in self.layers}
        out = []
        for i, module in enumerate(self.features):
            h = module(h)
            if i in wanted:
                out.append(h)
        return out


# The shipped network's maps at strides 2 to 16: four maps, like VGG-16's four layers (strides 1 to 8).
SHIPPED_LOSS_STAGES = ("stride2", "stride4", "stride8", "stride16")


def perceptual_features(backbone: str = "shipped", download: bool = False) -> torch.nn.Module:
    """The loss network of the perceptual and style losses, by :func:`adcourse.backbones.choose_network`:
    VGG-16 at relu1_2 … relu4_3 (the source's, :class:`VGGFeatures`) or the shipped EfficientNet-Lite0
    at ``SHIPPED_LOSS_STAGES`` (16, 24, 40 and 112 channels). Either returns a list of maps; ``name``
    says which one it is."""
    return choose_network(backbone, lambda pretrained: VGGFeatures(pretrained=pretrained, download=download),
                          lambda: EfficientNetLite0Features(SHIPPED_LOSS_STAGES))


def _paired(features_x: list[torch.Tensor], features_y: list[torch.Tensor]):
    if len(features_x) != len(features_y):
        raise ValueError(f"the two lists of feature maps must come from the same layers, got {len(features_x)} "
                         f"and {len(features_y)} maps")
    return zip(features_x, features_y)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G = Ψ Ψᵀ / (C·H·W) for N×C×H×W feature maps Ψ: the C×C channel correlations (the 'style')."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def perceptual_loss(features_x: list[torch.Tensor], features_y: list[torch.Tensor]) -> torch.Tensor:
    """Σ_p mean |Ψ_p(x) − Ψ_p(y)| over the layers p (L1 as in Yelisieiev 2021, eq. of Sec. 4.2;
    the reference code uses the squared error). Any number of maps, from any loss network."""
    return sum(torch.mean(torch.abs(a - b)) for a, b in _paired(features_x, features_y))


def style_loss(features_x: list[torch.Tensor], features_y: list[torch.Tensor]) -> torch.Tensor:
    """Σ_p mean |G(Ψ_p(x)) − G(Ψ_p(y))|: the perceptual loss on Gram matrices (Johnson et al. 2016)."""
    return sum(torch.mean(torch.abs(gram_matrix(a) - gram_matrix(b))) for a, b in _paired(features_x, features_y))


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 − cos(a, b) for each row of two N×D batches: 0 for the same direction, 2 for opposite."""
    return 1 - F.cosine_similarity(a, b, dim=-1, eps=eps)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.1,
                 distance=None) -> torch.Tensor:
    """mean over the batch of max(d(anchor, positive) − d(anchor, negative) + margin, 0).

    ``distance`` defaults to :func:`cosine_distance`. In chapter 4 the anchor is an image I, the
    positive its rotation, the negative its reconstruction (Yelisieiev 2021, Sec. 4.1.3).
    """
    distance = cosine_distance if distance is None else distance
    return torch.clamp(distance(anchor, positive) - distance(anchor, negative) + margin, min=0).mean()
