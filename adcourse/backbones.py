"""Pretrained torchvision networks, used frozen: ImageNet weights when they can be had, a stated
fallback when they cannot.

The course must run offline (its CI has no network), so every loader here tries torchvision's cache
(``torch.hub.get_dir()/checkpoints``), downloads there when ``download`` is true and the network
allows, and otherwise warns once per network and keeps a *seeded random* initialisation, so that runs
repeat. The object records which one it uses in ``.pretrained``.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

_WARNED: set[str] = set()


def load_imagenet_state(url: str, name: str, download: bool = True) -> dict | None:
    """The state dict of torchvision's checkpoint at ``url``, or ``None`` (with one warning per
    ``name``) when it is neither cached nor downloadable."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        if not os.path.exists(path):
            if not download:
                raise FileNotFoundError("not in torchvision's cache and download=False")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # torchvision's file names carry the first digits of the file's SHA-256
            torch.hub.download_url_to_file(url, path, hash_prefix=os.path.basename(url).split("-")[1][:8],
                                           progress=False)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # no network, no cache, corrupted file: say so once, continue
        if name not in _WARNED:
            warnings.warn(f"ImageNet {name} weights could not be loaded ({type(error).__name__}: "
                          f"{str(error)[:100]}); using a seeded, randomly initialised {name} instead. "
                          "To use the real weights, run once with network access and download=True "
                          f"(torchvision caches them under {os.path.dirname(path)}).", stacklevel=3)
            _WARNED.add(name)
        return None


class ImageNetInput(nn.Module):
    """[0, 1] images with 1 or 3 channels -> 3 channels normalised with ImageNet's mean and std."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"expected images with 1 or 3 channels, got {x.shape[1]}")
        return (x - self.mean) / self.std


RESNET18_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNet18Features(nn.Module):
    """Frozen ResNet-18 feature maps after the stages named in ``layers`` (strides 4, 8, 16, 32).

    Only the stages up to the deepest one asked for are kept. ``forward`` returns a list of
    N×C×h×w maps (64, 128, 256, 512 channels for layer1..layer4).
    """

    def __init__(self, layers=("layer1", "layer2", "layer3"), pretrained: bool = True, download: bool = True,
                 seed: int = 0):
        super().__init__()
        from torchvision.models import ResNet18_Weights, resnet18

        unknown = [name for name in layers if name not in RESNET18_STAGES]
        if unknown or not layers:
            raise ValueError(f"unknown ResNet-18 stages {unknown or layers}; choose from {RESNET18_STAGES}")
        self.layers = tuple(layers)
        with torch.random.fork_rng(devices=[]):  # a fixed random init that leaves the global RNG alone
            torch.manual_seed(seed)
            net = resnet18()
        state = load_imagenet_state(ResNet18_Weights.IMAGENET1K_V1.url, "ResNet-18", download) if pretrained else None
        if state is not None:
            net.load_state_dict(state)
        self.pretrained = state is not None
        deepest = max(RESNET18_STAGES.index(name) for name in self.layers)
        self.input = ImageNetInput()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleDict({name: getattr(net, name) for name in RESNET18_STAGES[: deepest + 1]})
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
