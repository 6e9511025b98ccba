"""VAE, VAE-GAN, AdaCos, Grad-CAM and the CAVGA detector (chapter 6)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence as torch_kl

from adcourse.data import TextureDefects
from adcourse.detectors import available, create
from adcourse.models.gans import Critic
from adcourse.models.vae_gan import (VAE, AdaCos, CAVGADetector, VAEDetector, adacos_fixed_scale,
                                     attention_expansion_loss, attention_maps, chance_iou, grad_cam, iou_at_area,
                                     kl_divergence, normalise_maps, reparameterize, train_vaegan, vae_loss)


# ---------------------------------------------------------------- reparameterisation and KL

def test_reparameterize_gradient_flows_to_mu_and_logvar():
    torch.manual_seed(0)
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))            # ∂z/∂μ = 1
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)  # ∂z/∂logσ² = ½σε
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)


def test_reparameterize_statistics():
    mu = torch.full((200_000,), 1.5)
    logvar = torch.full((200_000,), math.log(0.25))                      # σ = 0.5
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 1.5) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01
    again = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, again)                                 # seeded: repeatable


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(kl_divergence(mu, logvar), expected.flatten(1).sum(1))
    assert kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0  # prior against itself


def test_vae_loss_is_bce_plus_kl_per_pixel():
    torch.manual_seed(0)
    x, x_hat = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8).clamp(0.01, 0.99)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    total, parts = vae_loss(x_hat, x, mu, logvar, beta=0.5)
    bce = F.binary_cross_entropy(x_hat, x, reduction="sum") / 3 / 64
    kl = kl_divergence(mu, logvar).mean() / 64
    torch.testing.assert_close(total, bce + 0.5 * kl)
    torch.testing.assert_close(parts["bce"], bce)
    torch.testing.assert_close(parts["kl"], kl)


@pytest.mark.parametrize("latent", ["dense", "conv"])
def test_vae_shapes_and_modes(latent):
    torch.manual_seed(0)
    vae = VAE(1, 32, latent_dim=4, width=8, depth=3, latent=latent)
    x = torch.rand(2, 1, 32, 32)
    out = vae(x)
    assert out["x_hat"].shape == x.shape and 0 <= out["x_hat"].min() and out["x_hat"].max() <= 1
    assert out["mu"].shape == (2, *vae.latent_shape)
    assert vae.latent_shape == ((4,) if latent == "dense" else (4, 4, 4))
    vae.eval()
    torch.testing.assert_close(vae(x)["z"], vae(x)["mu"])                # eval: z = μ
    assert vae.sample(3).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError):
        VAE(latent="sparse")


# ---------------------------------------------------------------- AdaCos

def test_adacos_fixed_scale():
    assert adacos_fixed_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))
    assert adacos_fixed_scale(2) == 0.0                                   # the two-class degeneracy
    with pytest.raises(ValueError):
        adacos_fixed_scale(1)


def test_adacos_logits_are_scaled_cosines():
    torch.manual_seed(0)
    head = AdaCos(6, 5, dynamic=False)
    x = torch.randn(7, 6)
    expected = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    logits = head(x, torch.randint(0, 5, (7,)))
    torch.testing.assert_close(logits, adacos_fixed_scale(5) * expected)
    assert logits.abs().max() <= adacos_fixed_scale(5) + 1e-6
    torch.testing.assert_close(head(3.0 * x), logits)                     # invariant to the feature norm


def test_adacos_dynamic_scale_update():
    torch.manual_seed(0)
    head = AdaCos(6, 5, dynamic=True).train()
    x, labels = torch.randn(16, 6), torch.randint(0, 5, (16,))
    s0 = head.scale.item()
    cos = head.cosine(x).detach()
    one_hot = F.one_hot(labels, 5).bool()
    b_avg = torch.where(one_hot, 0.0, torch.exp(s0 * cos)).sum(1).mean()
    theta_med = torch.acos(cos[one_hot].clamp(-1, 1)).median()
    expected = torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
    logits = head(x, labels)
    assert head.scale.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits, head.scale * cos)
    head.eval()
    head(x, labels)
    assert head.scale.item() == pytest.approx(expected.item(), rel=1e-5)  # no update in eval mode


# ---------------------------------------------------------------- Grad-CAM and attention

def test_grad_cam_shape_non_negative_and_formula():
    torch.manual_seed(0)
    features = torch.randn(3, 4, 5, 5, requires_grad=True)
    weights = torch.randn(4)
    target = (features * weights.view(1, 4, 1, 1)).sum((1, 2, 3))          # ∂target/∂F_k = w_k everywhere
    cam = grad_cam(features, target)
    assert cam.shape == (3, 5, 5) and cam.min() >= 0
    torch.testing.assert_close(cam, F.relu((weights.view(1, 4, 1, 1) * features).sum(1)).detach())


def test_attention_maps_in_unit_range_and_differentiable():
    torch.manual_seed(0)
    vae = VAE(1, 16, latent_dim=4, width=8, depth=2, latent="conv")
    x = torch.rand(3, 1, 16, 16)
    out = vae(x)
    a = attention_maps(vae, x, create_graph=True, out=out)
    assert a.shape == (3, 4, 4) and a.min() >= 0 and a.max() <= 1 + 1e-6
    peaks = a.flatten(1).amax(1)
    assert all(abs(p - 1) < 1e-5 or p == 0 for p in peaks.tolist())    # 1, or 0 where ReLU leaves nothing
    loss = attention_expansion_loss(a)
    loss.backward()
    assert vae.features[0][0].weight.grad is not None and vae.features[0][0].weight.grad.abs().sum() > 0
    assert attention_expansion_loss(torch.ones(2, 3, 3)) == 0
    torch.testing.assert_close(normalise_maps(torch.tensor([[[1.0, 4.0]]])), torch.tensor([[[0.25, 1.0]]]))


def test_iou_helpers():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    perfect = masks.astype(float)
    assert iou_at_area(perfect, masks) == 1.0
    assert iou_at_area(-perfect, masks) == 0.0
    p = 4 / 32
    assert chance_iou(masks) == pytest.approx(p / (2 - p))


# ---------------------------------------------------------------- training and detectors

def test_train_vaegan_three_parts_run_and_reduce_loss():
    torch.manual_seed(0)
    data = torch.rand(32, 1, 16, 16) * 0.2 + 0.4
    vae = VAE(1, 16, latent_dim=4, width=8, depth=2, latent="conv")
    critic = Critic(1, 16, width=8)
    history = train_vaegan(vae, critic, data, epochs=3, batch_size=16, lr=3e-3, expansion_weight=1.0,
                           callback=lambda epoch, model: {"epoch": epoch})
    assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0]
    assert all(h > 0 for h in history["d_loss"]) and history["expansion"][0] > 0
    assert history["monitor"] == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]
    assert not vae.training


def test_detectors_registered():
    assert {"vae", "cavga"} <= set(available())


@pytest.mark.parametrize("name, overrides", [("vae", dict(epochs=1)),
                                             ("cavga", dict(epochs=1)),
                                             ("cavga", dict(epochs=1, map_kind="residual", adversarial=False))])
def test_detectors_fit_predict_tiny(name, overrides):
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", n=16)
    test = TextureDefects("brick", "test", n=8)
    detector = create(name, **overrides).fit(train, "quick")
    images = test.images
    scores, maps = detector.predict(images)
    assert scores.shape == (8,) and maps.shape == (8, 64, 64)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert detector.model() is not None


def test_cavga_monitor_records_iou():
    train = TextureDefects("brick", "train", n=16)
    test = TextureDefects("brick", "test", n=8)
    defective = test.labels == 1
    detector = CAVGADetector(epochs=2).fit(train, "quick", monitor=(test.images[defective], test.masks[defective, 0].numpy()))
    monitor = detector.history["monitor"]
    assert [m["epoch"] for m in monitor] == [1, 2]
    assert all(0 <= m["iou"] <= 1 and 0 <= m["pixel_auroc"] <= 1 for m in monitor)
    with pytest.raises(TypeError, match="map_kind"):
        CAVGADetector(map_kind="nope")


def test_vae_detector_settings_override():
    detector = VAEDetector(epochs=1, beta=0.5)
    detector.fit(TextureDefects("brick", "train", n=8), "quick")
    assert detector.settings.beta == 0.5 and len(detector.history["loss"]) == 1


def test_cavga_predict_with_another_map_kind_equals_a_detector_set_to_it():
    train = TextureDefects("brick", "train", n=8)
    images = TextureDefects("brick", "test", n=4).images
    fitted = {}
    for map_kind in ("attention", "residual"):  # map_kind changes nothing in training
        torch.manual_seed(0)
        fitted[map_kind] = create("cavga", device="cpu", epochs=1, width=4, latent_channels=2,
                                  map_kind=map_kind).fit(train)
    detector = fitted["attention"]
    for got, expected in zip(detector.predict_with(images, "residual"), fitted["residual"].predict(images)):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="kind must be"):
        detector.predict_with(images, "nope")


@pytest.mark.parametrize("bad, match", [(dict(top_fraction=0.0), r"top_fraction=0.0 .*\(0, 1\]"),
                                        (dict(lr_d=-1.0), r"lr_d=-1.0"),
                                        (dict(expansion_weight=float("nan")), r"expansion_weight=nan")])
def test_out_of_range_cavga_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        CAVGADetector.Settings(**bad)
