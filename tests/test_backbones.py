import warnings

import pytest
import torch

from adcourse.backbones import ImageNetInput, ResNet18Features


def test_resnet18_stages_have_the_documented_strides_and_channels(offline_weights):
    with pytest.warns(UserWarning, match="seeded, randomly initialised ResNet-18"):
        net = ResNet18Features(layers=("layer1", "layer2", "layer3", "layer4"))
    assert not net.pretrained
    maps = net(torch.rand(2, 1, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
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
    assert net.pretrained
    torch.testing.assert_close(net.stem[0].weight, fake["conv1.weight"])


def test_imagenet_input_repeats_grey_and_rejects_other_channel_counts():
    grey = torch.rand(2, 1, 8, 8)
    out = ImageNetInput()(grey)
    torch.testing.assert_close(out, ImageNetInput()(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageNetInput()(torch.rand(1, 2, 8, 8))
