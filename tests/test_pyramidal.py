"""Pyramidal autoencoders (chapter 8): SE block, pyramid pooling, routing, vector selection, detectors."""
import numpy as np
import pytest
import torch

from adcourse import bench, detectors
from adcourse.data import TextureDefects
from adcourse.models import capsules
from adcourse.backbones import EfficientNetLite0Features
from adcourse.models.pyramidal import (PIADE, GridAveragePool, PIADEDetector, PyramidalAE, PyramidalAEDetector, PyramidPooling,
                                       SEBackbone, SEBlock, VGG11Features, backbone_plan, perceptual_network, piade_loss)

SHIPPED = dict(backbone="shipped", download=False)   # the quick profile's encoder: ImageNet weights, offline


# -- squeeze and excitation --------------------------------------------------------------------
def test_se_block_shape_gate_range_and_hand_computation():
    torch.manual_seed(0)
    se = SEBlock(8, reduction=4)
    x = torch.randn(3, 8, 5, 6)
    y = se(x)
    assert y.shape == x.shape
    s = se.gate(x)
    assert s.shape == (3, 8) and torch.all(s > 0) and torch.all(s < 1)
    # by hand: z_c = mean over H, W; s = σ(W2 relu(W1 z + b1) + b2); y_c = s_c · x_c
    z = x.sum(dim=(2, 3)) / (5 * 6)
    hidden = torch.clamp(z @ se.fc1.weight.T + se.fc1.bias, min=0)
    s_hand = 1 / (1 + torch.exp(-(hidden @ se.fc2.weight.T + se.fc2.bias)))
    torch.testing.assert_close(s, s_hand)
    for n in range(3):
        for c in range(8):
            torch.testing.assert_close(y[n, c], s_hand[n, c] * x[n, c])
    assert se.fc1.out_features == 2                      # C/4 as in the thesis (eq. 5.2)


@pytest.mark.parametrize("backbone,stages,channels", [
    ("random", {"stem", "layer1", "layer2"}, 128),                  # the thesis's ResNet-18 (a random control here)
    ("shipped", {"stem", "stride2", "stride4"}, 24)])              # EfficientNet-Lite0, ImageNet weights
def test_se_backbone_inserts_trainable_se_in_a_frozen_network(backbone, stages, channels):
    torch.manual_seed(0)
    net = SEBackbone(backbone, stride=4, se=True)
    assert set(net.se.keys()) == stages and net.out_channels == channels
    assert net.pretrained == (backbone == "shipped") and ("random" in net.name) == (backbone == "random")
    assert not any(p.requires_grad for p in net.stages.parameters())
    assert all(p.requires_grad for p in net.se.parameters())
    out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, channels, 8, 8)
    out.sum().backward()
    assert net.se["stem"].fc1.weight.grad is not None    # gradients reach the first SE through frozen stages
    net.train()
    assert not net.stages.training and net.se.training   # frozen batch-norm statistics, trainable SE
    plain = SEBackbone(backbone, stride=4, se=False)
    assert plain.se is None and sum(p.numel() for p in plain.parameters() if p.requires_grad) == 0


@pytest.mark.parametrize("backbone", ["shipped", "random"])
def test_backbone_plan_gives_8x8_maps_for_small_images(backbone):
    for size, stride in ((16, 2), (32, 4), (64, 8), (120, 32)):
        assert backbone_plan(size) == stride
    for size in (16, 32, 64):
        net = SEBackbone(backbone, backbone_plan(size), se=False)
        assert net(torch.rand(1, 1, size, size)).shape[-1] == 8


# -- pyramid pooling ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 13])
def test_pyramid_pooling_output_sizes(size):
    pool = PyramidPooling(32, 64, bins=(8, 4, 2, 1))
    maps = pool(torch.randn(2, 32, size, size))
    assert [tuple(m.shape) for m in maps] == [(2, 64, k, k) for k in (8, 4, 2, 1)]
    assert pool.flat(torch.randn(2, 32, size, size)).shape == (2, 64 * 85) and pool.n_values == 64 * 85
    psp = PyramidPooling(16, 4, bins=(1, 2, 3, 6), relu=True).eval()
    assert [m.shape[-1] for m in psp(torch.randn(1, 16, 12, 12))] == [1, 2, 3, 6]


def test_pyramid_level_is_average_pool_then_1x1_conv():
    torch.manual_seed(0)
    pool = PyramidPooling(3, 2, bins=(2,)).eval()
    x = torch.randn(1, 3, 4, 4)
    pooled = x.reshape(1, 3, 2, 2, 2, 2).mean(dim=(3, 5))            # 2×2 blocks averaged
    conv = torch.einsum("oc,bchw->bohw", pool.levels[0][1].weight[:, :, 0, 0], pooled)
    bn = pool.levels[0][2]
    expected = (conv - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
    torch.testing.assert_close(pool(x)[0], expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])


@pytest.mark.parametrize("size,bins", [(8, 3), (8, 6), (8, 4), (7, 3), (4, 6), (5, 1)])
def test_grid_average_pool_is_adaptive_average_pooling(size, bins):
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(GridAveragePool(size, bins)(x), torch.nn.AdaptiveAvgPool2d(bins)(x))


# -- PIADE: routing and the vector decoded ------------------------------------------------------
def tiny_piade(**kw):
    torch.manual_seed(0)
    return PIADE(1, 16, pool_channels=8, vector_dim=16, up_channels=4, decoder_width=16, **SHIPPED, **kw)


def test_piade_routes_with_the_capsule_chapters_routing(monkeypatch):
    model = tiny_piade().eval()
    x = torch.rand(3, 1, 16, 16)
    _, u = model.features(x)
    assert u.shape == (3, model.n_caps, 8) and model.n_caps == 8 * 85 // 8
    v, couplings = model.route(u, return_couplings=True)
    assert v.shape == (3, 2, 16)
    for c in couplings:                                   # each feature shares itself among the 2 vectors
        torch.testing.assert_close(c.sum(dim=2), torch.ones(3, model.n_caps))
    u_hat = torch.einsum("ijdk,bik->bijd", model.W, u)
    torch.testing.assert_close(v, capsules.dynamic_routing(u_hat, 3))
    calls = []
    original = capsules.dynamic_routing
    monkeypatch.setattr("adcourse.models.pyramidal.dynamic_routing",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    model(x)
    assert calls, "PIADE must call adcourse.models.capsules.dynamic_routing"
    assert torch.all(v.norm(dim=-1) < 1)                  # squashed


def test_piade_decodes_first_vector_in_training_and_longest_at_test():
    model = tiny_piade()
    v = torch.tensor([[[0.1, 0.0], [0.0, 0.9]], [[0.8, 0.0], [0.3, 0.0]], [[0.0, 0.5], [0.5, 0.1]]])
    model.train()
    chosen, index = model.select(v)
    assert index.tolist() == [0, 0, 0]
    torch.testing.assert_close(chosen, v[:, 0])
    model.eval()
    chosen, index = model.select(v)
    assert index.tolist() == [1, 0, 1]
    torch.testing.assert_close(chosen, torch.stack([v[0, 1], v[1, 0], v[2, 1]]))
    x = torch.rand(4, 1, 16, 16)
    out = model(x)
    lengths = out["vectors"].norm(dim=-1)
    assert torch.equal(out["chosen"], lengths.argmax(dim=1))
    assert out["reconstruction"].shape == x.shape
    assert torch.all((out["reconstruction"] >= 0) & (out["reconstruction"] <= 1))
    one = tiny_piade(n_vectors=1).eval()
    assert one(x)["vectors"].shape == (4, 1, 16) and torch.all(one(x)["chosen"] == 0)


def test_pyramidal_ae_shapes_and_shared_upsampling():
    torch.manual_seed(0)
    model = PyramidalAE(1, 32, pool_channels=8, up_channels=4, decoder_width=16, **SHIPPED).eval()
    out = model(torch.rand(2, 1, 32, 32))
    assert out["reconstruction"].shape == (2, 1, 32, 32) and out["codes"].shape == (2, 4, 8)
    assert len(model.encoders) == 4 and isinstance(model.upsample, torch.nn.Sequential)   # one block, shared
    assert PyramidalAE(3, 120, pool_channels=8, up_channels=4, decoder_width=16, **SHIPPED).eval()(
        torch.rand(1, 3, 120, 120))["reconstruction"].shape == (1, 3, 120, 120)


def test_piade_loss_terms_and_per_image_reduction():
    torch.manual_seed(0)
    vgg = VGG11Features(pretrained=False, download=False)
    assert not vgg.pretrained and len(vgg.features) == 4 and vgg.name == "VGG-11 (random, seed 0: a control)"
    x = torch.rand(3, 1, 16, 16)
    assert piade_loss(x, x.clone(), vgg).abs().item() < 1e-5
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    per_image = piade_loss(x, noisy, vgg, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(per_image.mean(), piade_loss(x, noisy, vgg))
    mse_only = piade_loss(x, noisy, None, 0, 0, reduction="none")
    torch.testing.assert_close(mse_only, ((x - noisy) ** 2).mean(dim=(1, 2, 3)))
    assert torch.all(per_image > mse_only)


# -- detectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("pyramidal_ae", PyramidalAEDetector), ("piade", PIADEDetector)])
def test_detectors_fit_predict_on_tiny_data(name, cls):
    assert name in detectors.available()
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", patch_size=16, n=16)
    test = TextureDefects("brick", "test", patch_size=16, n=8)
    detector = detectors.create(name, device="cpu", epochs=1, batch_size=8, pool_channels=8, decoder_width=16)
    assert isinstance(detector, cls)
    detector.fit(train, "quick")
    lite0 = "EfficientNet-Lite0 (ImageNet, shipped wheel)"
    assert detector.backbone_name == f"{lite0}; loss network {lite0}"  # the quick profile: shipped, offline
    assert len(detector.history) == 1 and np.isfinite(detector.history[0])
    scores, maps = detector.predict(test.images)
    assert scores.shape == (8,) and maps.shape == (8, 16, 16)
    assert np.all(np.isfinite(scores)) and np.all(np.isfinite(maps))
    assert detector.model() is detector.network


@pytest.mark.parametrize("name", ["pyramidal_ae", "piade"])
def test_exported_graph_computes_what_the_network_computes_and_exports(name):
    train = TextureDefects("brick", "train", patch_size=32, n=8)
    detector = detectors.create(name, device="cpu", epochs=1, batch_size=8, pool_channels=8, decoder_width=16).fit(train)
    graph, example = detector.export_graph(train.images[:2])
    with torch.no_grad():
        torch.testing.assert_close(graph.eval()(example)["reconstruction"],
                                   detector.network.eval()(example)["reconstruction"])
    size, why = bench.onnx_size_mb(graph, example[:1])
    assert why is None and size > 0


def test_the_loss_network_follows_the_one_rule(offline_weights):
    shipped = perceptual_network("shipped")
    assert isinstance(shipped, EfficientNetLite0Features) and shipped.pretrained and shipped.strides == [2]
    random = perceptual_network("random")
    assert isinstance(random, VGG11Features) and not random.pretrained and "random" in random.name
    with pytest.warns(UserWarning, match="VGG-11 weights could not be loaded.*Using EfficientNet-Lite0"):
        assert isinstance(perceptual_network("source", download=True), EfficientNetLite0Features)


@pytest.mark.parametrize("bad", [dict(smoothing=-1.0), dict(weight_decay=-1e-4), dict(perceptual_weight=-1.0),
                                 dict(ssim_weight=float("nan"))])
def test_negative_weights_and_smoothing_are_refused_when_the_detector_is_created(bad):
    for name in ("pyramidal_ae", "piade"):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* is (out of range|not finite)"):
            detectors.create(name, **bad)
