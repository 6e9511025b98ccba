"""Chapter 4: SIREN, its initialisation and derivatives, crop convolutions, the losses, the detector."""
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from adcourse import bench, detectors
from adcourse.backbones import EfficientNetLite0Features, WeightsUnavailable
from adcourse.data import OneClassDigits, TextureDefects
from adcourse.detectors import NotFittedError
from adcourse.losses import (VGG16_LAYERS, VGGFeatures, cosine_distance, gram_matrix, perceptual_features, perceptual_loss,
                             style_loss, triplet_loss)
from adcourse.models.siren import (CropConv2d, CropConvEncoder, ReluMLP, SineLayer, Siren, SirenInpainter,
                                   SirenInpaintDetector, TripletDiscriminator, centre_mask, coordinate_grid,
                                   fit_image, gradient, laplacian, pad_for_windows, positional_encoding,
                                   rotate, window_offsets)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


# -- an image as a function -------------------------------------------------------------------

def test_coordinate_grid_is_row_major_in_minus_one_one():
    grid = coordinate_grid(3, 4)
    assert grid.shape == (12, 2)
    assert grid.min() == -1 and grid.max() == 1
    torch.testing.assert_close(grid[1], torch.tensor([-1.0, -1 / 3]))  # same row, next column
    torch.testing.assert_close(grid[4], torch.tensor([0.0, -1.0]))  # next row


def test_positional_encoding_values():
    x = torch.tensor([[0.5, -0.25]])
    enc = positional_encoding(x, 2)
    assert enc.shape == (1, 2 + 2 * 2 * 2)
    torch.testing.assert_close(enc[0, :2], x[0])
    # first coordinate, frequency 2^1·π: sin(π·0.5·2) = sin(π) = 0 and cos = −1
    expected = torch.tensor([math.sin(math.pi * 0.5), math.cos(math.pi * 0.5), math.sin(2 * math.pi * 0.5),
                             math.cos(2 * math.pi * 0.5)])
    got = enc[0, 2:].reshape(2, 2, 2)[0].flatten()  # (coordinate 0) × (L) × (sin, cos)
    torch.testing.assert_close(got, expected)


# -- initialisation -------------------------------------------------------------------------

def test_sine_layer_weight_bounds():
    torch.manual_seed(0)
    first = SineLayer(2, 4096, omega_0=30, is_first=True)
    hidden = SineLayer(256, 4096, omega_0=30)
    for layer, bound in [(first, 1 / 2), (hidden, math.sqrt(6 / 256) / 30)]:
        w = layer.linear.weight
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.99 * bound  # uniform on the whole interval, not a narrower one
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # std of U(−b, b) = b/√3


def test_siren_preactivations_stay_standard_normal_through_depth():
    torch.manual_seed(0)
    net = Siren(1, 1024, hidden_layers=5)
    x = torch.linspace(-1, 1, 1024)[:, None]
    # The paper's analysis ignores the biases: without them every hidden pre-activation is ~N(0, 1)
    # (exactly 1 after the first layer, then slightly less: Var sin(z) = (1 − e^{−2}) / 2 < ½ for
    # z ~ N(0, 1), and the variance settles near 0.8 instead of growing or vanishing).
    with torch.no_grad():
        for layer in net.layers:
            layer.linear.bias.zero_()
    stds = [p.std().item() for p in net.preactivations(x)[1:]]  # every layer after the first
    assert abs(stds[0] - 1) < 0.05
    assert all(0.85 < s < 1.05 for s in stds), stds
    assert abs(stds[-1] / stds[1] - 1) < 0.05  # stationary through depth
    # With PyTorch's default biases (kept by the reference code), ω₀·b adds a variance ω₀²/(3n).
    torch.manual_seed(0)
    net = Siren(1, 1024, hidden_layers=5)
    pre = net.preactivations(x)
    assert abs(pre[1].std().item() - math.sqrt(1 + 30 ** 2 / (3 * 1024))) < 0.05
    assert all(0.9 < p.std().item() < 1.25 and abs(p.mean().item()) < 0.1 for p in pre[1:])
    # Without the special initialisation (PyTorch's default, sin(30·x) everywhere) they explode.
    torch.manual_seed(0)
    naive = Siren(1, 1024, hidden_layers=5)
    for layer in naive.layers:
        layer.linear.reset_parameters()
    assert all(p.std() > 5 for p in naive.preactivations(x)[1:])


# -- derivatives ------------------------------------------------------------------------------

def test_gradient_and_laplacian_helpers_on_a_known_function():
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = (torch.sin(3 * x[:, 0]) + x[:, 1] ** 3)[:, None]
    grad = gradient(y, x)
    torch.testing.assert_close(grad, torch.stack([3 * torch.cos(3 * x[:, 0]), 3 * x[:, 1] ** 2], -1).detach())
    torch.testing.assert_close(laplacian(y, x), (-9 * torch.sin(3 * x[:, 0]) + 6 * x[:, 1])[:, None].detach())


def _small_siren64():
    torch.manual_seed(0)
    return Siren(2, 16, hidden_layers=2, first_omega_0=5.0, hidden_omega_0=5.0).double()


def test_siren_derivatives_pass_gradcheck():
    net = _small_siren64()
    x = (torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: net(c), (x,))
    # The gradient field of a SIREN, checked in its turn: second derivatives by autograd are right.
    assert torch.autograd.gradcheck(lambda c: gradient(net(c), c), (x,))


def test_siren_laplacian_matches_finite_differences():
    net = _small_siren64()
    x = (torch.rand(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    h = 1e-4
    with torch.no_grad():
        f = net(x)
        fd = sum(net(x + h * e) - 2 * f + net(x - h * e) for e in torch.eye(2, dtype=torch.float64)) / h ** 2
    x.requires_grad_(True)
    auto = laplacian(net(x), x).detach()
    assert auto.abs().max() > 1  # a non-trivial Laplacian ...
    torch.testing.assert_close(auto, fd, atol=1e-4 * auto.abs().max().item(), rtol=1e-4)  # ... found by both


def test_relu_mlp_has_zero_laplacian():
    torch.manual_seed(0)
    net = ReluMLP(2, 32, 2).double()
    x = torch.rand(10, 2, dtype=torch.float64).requires_grad_(True)
    assert laplacian(net(x), x).abs().max() == 0  # piecewise linear: no curvature to learn from


def test_siren_fits_an_image_better_than_a_relu_mlp():
    torch.manual_seed(0)
    image = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    siren = fit_image(Siren(2, 32, 2), image, steps=150, lr=1e-3)
    torch.manual_seed(0)
    relu = fit_image(ReluMLP(2, 32, 2), image, steps=150, lr=1e-3)
    assert siren["psnr"][-1] > relu["psnr"][-1] + 10
    assert siren["reconstruction"].shape == (16, 16)


# -- crop convolutions ------------------------------------------------------------------------

def test_crop_conv_zeroes_exactly_the_next_hole():
    conv = CropConv2d(1, 4, 3, stride=2, padding=1, hole_fraction=0.5, overlap=1)
    kept = conv.valid_mask(64, 64)
    assert kept.shape == (32, 32)
    assert torch.equal(kept == 0, centre_mask(32, 32, 0.5))


def _input_gradient(encoder, x):
    x = x.clone().requires_grad_(True)
    encoder(x).sum().backward()
    return x.grad[0, 0].abs()


@pytest.mark.parametrize("train_mode", [False, True])
def test_crop_conv_encoder_never_sees_the_deep_centre(train_mode):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    hole = centre_mask(64, 64, 0.5)
    deep = torch.zeros_like(hole)
    deep[17:47, 17:47] = True  # more than one pixel (the overlap) inside the hole [16, 48)
    crop = CropConvEncoder(1, 64, code_dim=8, width=4, crop=True, overlap=1).train(train_mode)
    grad = _input_gradient(crop, x)
    assert grad[deep].max() == 0
    assert grad[hole & ~deep].max() > 0  # the ring of one pixel it may touch
    assert grad[~hole].max() > 0
    # Changing the deep centre cannot change the code at all.
    y = x.clone()
    y[..., deep] = torch.rand(int(deep.sum()))
    torch.testing.assert_close(crop(y), crop(x))
    # Plain convolutions look everywhere: the centre leaks into the code.
    plain = CropConvEncoder(1, 64, code_dim=8, width=4, crop=False).train(train_mode)
    assert _input_gradient(plain, x)[deep].max() > 0


def test_inpainter_paints_only_the_hole():
    torch.manual_seed(0)
    net = SirenInpainter(1, 32, code_dim=8, hidden_features=16, hidden_layers=1, encoder_width=4).eval()
    x = torch.rand(3, 1, 32, 32)
    painted = net.paint(x)
    hole = centre_mask(32, 32, 0.5)
    torch.testing.assert_close(painted[..., ~hole], x[..., ~hole])
    assert net(net.cut(x)).shape == (3, 1, 16, 16)
    some = net.hole_coords[:5]
    torch.testing.assert_close(net(net.cut(x), some), net(net.cut(x)).flatten(2)[..., :5])


# -- losses ------------------------------------------------------------------------------------

def test_cosine_distance_and_triplet_loss_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    same, orthogonal = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 3.0], [0.0, 3.0]])
    torch.testing.assert_close(cosine_distance(a, same), torch.zeros(2))  # scale does not matter
    torch.testing.assert_close(cosine_distance(a, orthogonal), torch.ones(2))
    torch.testing.assert_close(cosine_distance(a, -a), 2 * torch.ones(2))
    # satisfied by more than the margin → 0; violated → d(a,p) − d(a,n) + m
    assert triplet_loss(a, same, orthogonal, margin=0.1).item() == 0
    torch.testing.assert_close(triplet_loss(a, orthogonal, same, margin=0.1), torch.tensor(1.1))
    # inside the margin: 0 − 0.05 + 0.1
    near = torch.tensor([[math.cos(0.3155), math.sin(0.3155)]] * 2)  # cosine distance ≈ 0.0494
    expected = 0.1 - cosine_distance(a, near)[0]
    torch.testing.assert_close(triplet_loss(a, same, near, margin=0.1), expected)


def test_triplet_loss_gradient_pushes_the_negative_away():
    a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.1]])
    n = torch.tensor([[1.0, 0.2]], requires_grad=True)
    triplet_loss(a, p, n, margin=0.5).backward()
    with torch.no_grad():
        moved = n - 0.1 * n.grad
    assert cosine_distance(a, moved) > cosine_distance(a, n.detach())


def test_gram_matrix_formula_and_spatial_invariance():
    f = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.einsum("nchw,ndhw->ncd", f, f) / (3 * 4 * 5)
    torch.testing.assert_close(gram_matrix(f), expected)
    shuffled = f.flatten(2)[..., torch.randperm(20)].reshape(f.shape)
    torch.testing.assert_close(gram_matrix(shuffled), gram_matrix(f))  # style ignores where things are


def test_vgg_features_random_control_is_seeded_named_and_losses_behave():
    state = torch.random.get_rng_state()
    vgg = VGGFeatures(layers=("relu1_2", "relu2_2"), pretrained=False)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    again = VGGFeatures(layers=("relu1_2", "relu2_2"), pretrained=False)
    assert not vgg.pretrained and vgg.name == "VGG-16 (random, seed 0: a control)"
    for a, b in zip(vgg.parameters(), again.parameters()):
        assert torch.equal(a, b)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    fx, fy = vgg(x), vgg(y)
    assert [f.shape[1:] for f in fx] == [(64, 32, 32), (128, 16, 16)]
    assert perceptual_loss(fx, fx).item() == 0 and style_loss(fx, fx).item() == 0
    assert perceptual_loss(fx, fy) > 0 and style_loss(fx, fy) > 0
    z = x.clone().requires_grad_(True)
    (perceptual_loss(vgg(z), fy) + style_loss(vgg(z), fy)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_features_without_weights_raise_instead_of_turning_random(offline_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning and no random network: an error that says what to do
        for download in (True, False):
            with pytest.raises(WeightsUnavailable, match="ImageNet VGG-16 weights could not be loaded.*download=True"):
                VGGFeatures(layers=("relu1_2",), pretrained=True, download=download)


def test_vgg_features_load_cached_weights_without_downloading(monkeypatch, tmp_path):
    reference = VGGFeatures(pretrained=False, seed=5)  # every layer up to relu4_3
    fake_state = {f"features.{k}": v + 1 for k, v in reference.features.state_dict().items()}
    fake_state["classifier.0.weight"] = torch.zeros(1)
    (tmp_path / "checkpoints").mkdir()
    torch.save(fake_state, tmp_path / "checkpoints" / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)  # calling it would fail the test
    vgg = VGGFeatures(layers=("relu1_2",), pretrained=True, download=False)
    assert vgg.pretrained and vgg.name == "VGG-16 (ImageNet, torchvision)"
    torch.testing.assert_close(vgg.features[0].weight, reference.features[0].weight + 1)
    # the loss network of the "source" backbone is then this VGG-16, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = perceptual_features("source", download=False)
    assert isinstance(source, VGGFeatures) and source.pretrained and source.layers == tuple(VGG16_LAYERS)


def test_shipped_loss_network_gives_four_maps_that_both_losses_take():
    net = perceptual_features("shipped")
    assert isinstance(net, EfficientNetLite0Features) and net.pretrained
    assert net.name == "EfficientNet-Lite0 (ImageNet, shipped wheel)"
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    fx, fy = net(x), net(y)
    assert [tuple(f.shape[1:]) for f in fx] == [(16, 16, 16), (24, 8, 8), (40, 4, 4), (112, 2, 2)]
    assert perceptual_loss(fx, fx).item() == 0 and style_loss(fx, fx).item() == 0
    assert perceptual_loss(fx, fy) > 0 and style_loss(fx, fy) > 0
    with pytest.raises(ValueError, match="same layers, got 4 and 3 maps"):
        perceptual_loss(fx, fy[:3])
    with pytest.raises(ValueError, match="same layers, got 2 and 4 maps"):
        style_loss(fx[:2], fy)


def test_loss_network_rule_random_is_named_and_source_offline_falls_back_with_a_warning(offline_weights):
    random = perceptual_features("random")
    assert isinstance(random, VGGFeatures) and not random.pretrained and "random" in random.name
    with pytest.warns(UserWarning, match="VGG-16 weights could not be loaded.*Using EfficientNet-Lite0"):
        fallback = perceptual_features("source", download=True)
    assert isinstance(fallback, EfficientNetLite0Features) and fallback.pretrained
    with pytest.raises(ValueError, match="backbone must be one of"):
        perceptual_features("imagenet")


# -- discriminator, rotation, windows -----------------------------------------------------------

def test_rotate_by_right_angles_is_exact_and_counter_clockwise():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    torch.testing.assert_close(rotate(x, torch.tensor([0.0, 0.0])), x)
    r = rotate(x, torch.tensor([90.0, -90.0]))
    torch.testing.assert_close(r[0], torch.rot90(x[0], 1, (-2, -1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(r[1], torch.rot90(x[1], -1, (-2, -1)), atol=1e-4, rtol=0)


def test_triplet_discriminator_shapes():
    d = TripletDiscriminator(1, 64, width=4, embedding_dim=16)
    assert d(torch.rand(3, 1, 64, 64)).shape == (3, 16)


def test_sliding_centre_covers_every_pixel():
    assert window_offsets(64, 32, 16) == [0, 16, 32]
    assert window_offsets(64, 32, 32) == [0, 32]
    assert window_offsets(30, 16, 8) == [0, 8, 14]
    x = torch.rand(1, 1, 64, 64)
    assert pad_for_windows(x, 64, 32).shape[-1] == 96


# -- the detector -------------------------------------------------------------------------------

def test_siren_inpaint_is_registered_with_typed_settings():
    assert "siren_inpaint" in detectors.available()
    assert isinstance(detectors.create("siren_inpaint"), SirenInpaintDetector)
    with pytest.raises(TypeError, match="unknown siren_inpaint setting 'epoch'; did you mean 'epochs'"):
        SirenInpaintDetector(epoch=3)
    with pytest.raises(TypeError, match="unknown siren_inpaint setting 'vgg_pretrained'"):
        detectors.create("siren_inpaint", vgg_pretrained=False)  # the loss network is chosen by backbone=
    quick, full = SirenInpaintDetector.PROFILES["quick"], SirenInpaintDetector.PROFILES["full"]
    assert quick == SirenInpaintDetector.Settings()
    assert (quick.backbone, quick.download, quick.perceptual_weight, quick.style_weight) == ("shipped", False, 0, 0)
    assert (full.backbone, full.download, full.discriminator) == ("source", True, "joint")


@pytest.mark.parametrize("bad", [dict(hole_fraction=1.0), dict(hole_fraction=0.0), dict(coords_per_step=0),
                                 dict(first_omega_0=0.0), dict(margin=-0.1), dict(backbone="imagenet"),
                                 dict(stride=0), dict(disc_lr=-1e-3)])
def test_out_of_range_settings_fail_when_the_detector_is_created(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=rf"{name}=.* is out of range \(SirenInpaintSettings\)"):
        detectors.create("siren_inpaint", **bad)


def test_wrong_choices_are_refused_by_type():
    for bad in (dict(discriminator="both"), dict(score="max"), dict(image_score="median")):
        with pytest.raises(TypeError, match=f"{next(iter(bad))}="):
            detectors.create("siren_inpaint", **bad)


TINY = dict(epochs=1, batch_size=8, hidden_features=16, hidden_layers=1, code_dim=8, encoder_width=4,
            disc_width=4)


def test_detector_fit_predict_on_textures():
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", n=16)
    test = TextureDefects("brick", "test", n=6)
    det = detectors.create("siren_inpaint", device="cpu", discriminator="after", disc_epochs=1, **TINY).fit(train, "quick")
    scores, maps = det.predict(test.images)
    assert scores.shape == (6,) and maps.shape == (6, 64, 64)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert len(det.history["generator"]) == 1 and len(det.history["discriminator"]) == 1
    assert det.backbone_name is None and det.loss_network is None  # quick: MSE only, no loss network
    d_scores, d_maps = det.predict_with(test.images, "discriminator")
    assert d_scores.shape == (6,) and (d_scores >= 0).all() and (d_scores <= 2).all()
    np.testing.assert_array_equal(d_maps, maps)  # the discriminator gives image scores only
    np.testing.assert_array_equal(det.predict_with(test.images, "residual")[0], scores)
    with pytest.raises(ValueError, match="score must be 'residual' or 'discriminator', got 'max'"):
        det.predict_with(test.images, "max")
    by_setting = dataclasses.replace(det.settings, score="discriminator")
    det.settings = by_setting
    np.testing.assert_array_equal(det.predict(test.images)[0], d_scores)


def test_the_split_fit_repeats_exactly_and_each_fit_starts_a_new_history():
    train = TextureDefects("brick", "train", n=8, patch_size=32)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        det = detectors.create("siren_inpaint", device="cpu", discriminator="joint", **TINY).fit(train)
        runs.append((det.history, det.predict(train.images[:2])[0]))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]["generator"]) == len(runs[0][0]["discriminator"]) == 1
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    det.fit(train)
    assert len(det.history["generator"]) == 1


def test_a_discriminator_trained_after_fit_is_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", n=8, patch_size=32)
    det = detectors.create("siren_inpaint", device="cpu", **TINY)
    with pytest.raises(NotFittedError, match=r"call fit\(\) or load\(\) first"):
        det.train_discriminator(train.images, 1)
    det.fit(train)
    assert det.discriminator is None
    with pytest.raises(ValueError, match="needs a discriminator"):
        det.predict_with(train.images[:2], "discriminator")
    losses = det.train_discriminator(train.images, 2)
    assert len(losses) == 2 and det.history["discriminator"] == losses
    with pytest.raises(ValueError, match="1-channel images of 32×32"):
        det.train_discriminator(train.images.expand(-1, 3, -1, -1), 1)
    d_scores, _ = det.predict_with(train.images[:3], "discriminator")
    loaded = detectors.load(det.save(tmp_path / "siren.pt"), device="cpu")
    np.testing.assert_array_equal(loaded.predict_with(train.images[:3], "discriminator")[0], d_scores)
    np.testing.assert_array_equal(loaded.predict(train.images[:3])[0], det.predict(train.images[:3])[0])


def test_oblong_images_are_refused_before_any_network_is_built():
    from adcourse.data import InMemoryAnomalyDataset

    oblong = InMemoryAnomalyDataset(torch.rand(4, 1, 32, 48), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="siren_inpaint needs square images, got 32×48"):
        detectors.create("siren_inpaint", device="cpu", **TINY).fit(oblong)


def test_the_inpainter_exports_to_onnx():
    train = TextureDefects("brick", "train", n=8)
    det = detectors.create("siren_inpaint", device="cpu", **TINY).fit(train, "quick")
    size, why = bench.onnx_size_mb(*det.export_graph(train.images[:1]))
    assert why is None  # the weights are in it, with the constant coordinate grid beside them
    assert size > 4 * sum(p.numel() for p in det.network.parameters()) / 2 ** 20


def test_detector_joint_training_with_perceptual_and_style_on_digits():
    torch.manual_seed(0)
    train = OneClassDigits(3, "train", image_size=32)
    small = torch.utils.data.Subset(train, range(8))
    settings = {**TINY, "discriminator": "joint", "perceptual_weight": 0.01, "style_weight": 0.1,
                "adversarial_weight": 0.1}
    det = SirenInpaintDetector(device="cpu", **settings).fit(small, "quick")
    assert isinstance(det.loss_network, EfficientNetLite0Features) and det.loss_network.pretrained
    assert det.backbone_name == "EfficientNet-Lite0 (ImageNet, shipped wheel)"  # the quick profile's backbone
    scores, maps = det.predict(train.images[:4])
    assert scores.shape == (4,) and maps.shape == (4, 32, 32)
    control = SirenInpaintDetector(device="cpu", backbone="random", **settings).fit(small, "quick")
    assert isinstance(control.loss_network, VGGFeatures) and not control.loss_network.pretrained
    assert control.backbone_name == "VGG-16 (random, seed 0: a control)"
