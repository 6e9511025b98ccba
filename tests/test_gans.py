"""Chapter 5: GAN building blocks, the gradient penalty, the fully convolutional BiGAN and its scores."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from adcourse.data import TextureDefects
from adcourse.detectors import available, create
from adcourse.losses import gradient_penalty
from adcourse.models import gans


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


# --- gradient penalty ---------------------------------------------------------------------------

def test_gradient_penalty_of_a_linear_critic():
    """f(x) = w·x + b has gradient w everywhere: penalty (‖w‖ − 1)², known gradient with respect to w."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    w = critic[1].weight
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    penalty, norms = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0), return_norms=True)
    norm_w = w.detach().norm()
    torch.testing.assert_close(norms, norm_w.expand(5))
    torch.testing.assert_close(penalty, (norm_w - 1) ** 2)
    penalty.backward()
    torch.testing.assert_close(w.grad, 2 * (norm_w - 1) * w.detach() / norm_w)
    assert critic[1].bias.grad is None or torch.all(critic[1].bias.grad == 0)


def test_gradient_penalty_is_zero_for_a_unit_gradient_and_needs_equal_shapes():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([[0.6, 0.0, 0.8, 0.0]]))  # ‖w‖ = 1
    x = torch.randn(3, 1, 2, 2)
    assert gradient_penalty(critic, x, torch.randn(3, 1, 2, 2)).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, x, torch.randn(2, 1, 2, 2))


def test_gradient_penalty_of_a_per_pixel_critic():
    """A 1×1 convolution of weight a gives a map whose sum has gradient a at every pixel: norm |a|·√(HW)."""
    critic = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        critic.weight.fill_(0.25)
    penalty, norms = gradient_penalty(critic, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), return_norms=True)
    torch.testing.assert_close(norms, torch.full((2,), 0.25 * 4))
    torch.testing.assert_close(penalty, torch.tensor(0.0))


def test_gradient_penalty_interpolates_between_real_and_fake():
    """With a critic that records its input, every interpolate lies on the segment real→fake."""
    seen = []

    def critic(x):
        seen.append(x.detach())
        return x.flatten(1).sum(1)

    real, fake = torch.zeros(6, 1, 2, 2), torch.ones(6, 1, 2, 2)
    gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(1))
    mixed = seen[0]
    per_sample = mixed.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one ε per sample
    assert torch.all((mixed >= 0) & (mixed <= 1)) and per_sample[:, 0].unique().numel() == 6


# --- pixel shuffle and the fully convolutional networks --------------------------------------------

@pytest.mark.parametrize("factor", [2, 3, 8])
def test_pixel_shuffle_matches_torch(factor):
    x = torch.randn(2, 3 * factor ** 2, 4, 5)
    out = gans.pixel_shuffle(x, factor)
    assert out.shape == (2, 3, 4 * factor, 5 * factor)
    torch.testing.assert_close(out, nn.PixelShuffle(factor)(x))
    torch.testing.assert_close(nn.PixelUnshuffle(factor)(out), x)


def test_pixel_shuffle_places_each_channel_in_its_sub_pixel():
    x = torch.arange(4.0).view(1, 4, 1, 1)  # one cell, channels 0..3
    assert gans.pixel_shuffle(x, 2)[0, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(ValueError, match="multiple of 4"):
        gans.pixel_shuffle(torch.zeros(1, 6, 2, 2), 2)


@pytest.mark.parametrize("height,width", [(32, 32), (48, 48), (64, 64), (40, 56)])
def test_fully_convolutional_shapes(height, width):
    torch.manual_seed(0)
    enc, gen = gans.FCEncoder(1, 4, 8, 3), gans.FCGenerator(4, 1, 8, 3)
    disc = gans.FCDiscriminator(1, 4, 4, factor=8)
    x = torch.rand(2, 1, height, width) * 2 - 1
    z = enc(x)
    assert z.shape == (2, 4, height // 8, width // 8)
    assert gen(z).shape == x.shape
    assert disc(x, z).shape == (2, 1, height, width)  # one answer per pixel


def test_fc_discriminator_rejects_a_code_of_the_wrong_size():
    disc = gans.FCDiscriminator(1, 4, 4, factor=8)
    with pytest.raises(ValueError, match="does not match"):
        disc(torch.zeros(1, 1, 32, 32), torch.zeros(1, 4, 5, 5))


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_dcgan_shapes(size):
    torch.manual_seed(0)
    gen, critic = gans.Generator(8, 3, size, 8), gans.Critic(3, size, 8)
    enc = gans.Encoder(3, size, 8, 8)
    x = gen(torch.randn(4, 8))
    assert x.shape == (4, 3, size, size) and x.abs().max() <= 1
    assert critic(x).shape == (4,) and critic.features(x).shape == (4, critic.feature_dim)
    z = enc(x)
    assert z.shape == (4, 8) and z.abs().max() <= 1
    disc = gans.BiGANDiscriminator(3, size, 8, 8)
    assert disc(x, z).shape == (4,)
    with pytest.raises(ValueError, match="4·2"):
        gans.Generator(8, 1, 24)


# --- scores ---------------------------------------------------------------------------------------

def _stats():
    rng = np.random.default_rng(0)
    l_r = rng.gamma(2.0, 0.5, size=(4, 8, 8))
    l_d = 0.3 * l_r + rng.gamma(1.0, 0.2, size=(4, 8, 8))
    return l_r, l_d, gans.PixelStats(l_r, l_d)


def test_aggregations_by_hand():
    l_r, l_d, stats = _stats()
    z_r = (l_r - l_r.mean()) / l_r.std()
    z_d = (l_d - l_d.mean()) / l_d.std()
    np.testing.assert_allclose(gans.aggregate_scores(l_r, l_d, stats, "l_r"), z_r, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gans.aggregate_scores(l_r, l_d, stats, "max"), np.maximum(z_r, z_d), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gans.aggregate_scores(l_r, l_d, stats, "linear", alpha=0.25), 0.75 * z_r + 0.25 * z_d,
                               rtol=1e-9, atol=1e-9)
    v = np.stack([l_r - l_r.mean(), l_d - l_d.mean()], -1)
    cov = np.cov(np.stack([l_r.ravel(), l_d.ravel()]))
    expected = np.sqrt(np.einsum("...i,ij,...j->...", v, np.linalg.inv(cov), v))
    np.testing.assert_allclose(gans.aggregate_scores(l_r, l_d, stats, "mahalanobis"), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="method"):
        gans.aggregate_scores(l_r, l_d, stats, "mean")


def test_mahalanobis_with_uncorrelated_losses_is_the_norm_of_the_z_scores():
    rng = np.random.default_rng(1)
    l_r, l_d = rng.normal(size=(2, 200, 200))
    stats = gans.PixelStats(l_r, l_d)
    stats.cov = np.diag(stats.std ** 2)  # force the correlation to zero
    z = np.hypot(*(gans.aggregate_scores(l_r, l_d, stats, m) for m in ("l_r", "l_d")))
    np.testing.assert_allclose(gans.aggregate_scores(l_r, l_d, stats, "mahalanobis"), z, rtol=1e-9)


def test_mean_filter():
    maps = np.zeros((1, 9, 9))
    maps[0, 4, 4] = 9.0
    out = gans.mean_filter(maps, 3)
    np.testing.assert_allclose(out[0, 3:6, 3:6], np.ones((3, 3)))
    assert out.sum() == pytest.approx(9.0)
    np.testing.assert_allclose(gans.mean_filter(np.full((2, 5, 5), 2.0), 4), 2.0)


def test_patchwise_maps_and_windows():
    assert gans.window_positions(64, 32, 8) == [0, 8, 16, 24, 32]
    assert gans.window_positions(40, 32, 16) == [0, 8]
    images = torch.rand(2, 1, 40, 48)
    torch.testing.assert_close(gans.patchwise_maps(lambda p: p, images, 32, 16), images)


def test_bigan_score_combines_its_two_terms():
    torch.manual_seed(0)
    enc, gen = gans.Encoder(1, 16, 8, 8, bounded=False), gans.Generator(8, 1, 16, 8).eval()
    disc = gans.BiGANDiscriminator(1, 16, 8, 8)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    out = gans.bigan_scores(x, enc, gen, disc, alpha=0.3)
    torch.testing.assert_close(out["score"], 0.7 * out["l_r"] + 0.3 * out["l_d"])
    torch.testing.assert_close(out["l_r"], (x - gen(enc(x))).abs().flatten(1).mean(1))


def test_random_crops_are_reproducible():
    images = torch.rand(3, 1, 20, 20)
    a, b = gans.random_crops(images, 8, 10, seed=3), gans.random_crops(images, 8, 10, seed=3)
    assert a.shape == (10, 1, 8, 8) and torch.equal(a, b)
    plain = gans.random_crops(images, 20, 2, seed=0, augment=False)
    assert all(any(torch.equal(p, im) for im in images) for p in plain)


# --- training loops and detectors -----------------------------------------------------------------

def test_training_loops_run_and_repeat():
    data = torch.rand(32, 1, 16, 16) * 2 - 1

    def wgan(mode):
        torch.manual_seed(0)
        gen, critic = gans.Generator(4, 1, 16, 4), gans.Critic(1, 16, 4)
        history = gans.train_wgan(gen, critic, data, steps=2, latent_dim=4, mode=mode, n_critic=2, batch_size=8,
                                  clip=0.05)
        return history, critic

    first, _ = wgan("gp")
    again, _ = wgan("gp")
    assert first == again and all(np.isfinite(first["grad_norm"]))
    _, clipped = wgan("clip")
    assert all(p.abs().max() <= 0.05 for p in clipped.parameters())
    torch.manual_seed(0)
    gen, disc = gans.Generator(4, 1, 16, 4), gans.Critic(1, 16, 4, norm="batch")
    history = gans.train_gan(gen, disc, data, steps=2, latent_dim=4, loss="feature_matching", batch_size=8)
    assert len(history["g_loss"]) == 2 and all(v >= 0 for v in history["g_loss"])


def test_detectors_fit_and_predict_on_a_tiny_dataset():
    assert {"fanogan", "fcbigan"} <= set(available())
    train = TextureDefects("brick", "train", n=16)
    test = TextureDefects("brick", "test", n=4)
    torch.manual_seed(0)
    fc = create("fcbigan", device="cpu", steps=2, n_patches=32, batch_size=4, width=4, d_width=4,
                latent_channels=2, aggregation="mahalanobis").fit(train, "quick")
    scores, maps = fc.predict(test.images)
    assert scores.shape == (4,) and maps.shape == (4, 64, 64) and np.isfinite(maps).all()
    torch.manual_seed(0)
    fa = create("fanogan", device="cpu", gan_steps=1, n_critic=1, encoder_steps=1, n_patches=32, batch_size=4,
                width=4, latent_dim=4, stride=16).fit(train, "quick")
    scores, maps = fa.predict(test.images)
    assert scores.shape == (4,) and maps.shape == (4, 64, 64) and np.isfinite(scores).all()
    assert fa.model() is not None and fc.model() is not None


def test_pixel_stats_survive_their_plain_state():
    rng = np.random.default_rng(0)
    stats = gans.PixelStats(rng.random((3, 8, 8)), rng.random((3, 8, 8)) ** 2)
    restored = gans.PixelStats.from_state(stats.state())
    for key in ("mean", "std", "cov"):
        np.testing.assert_array_equal(getattr(restored, key), getattr(stats, key))


@pytest.mark.parametrize("name, bad, match", [("fcbigan", dict(alpha=1.5), r"alpha=1.5 is out of range.*\[0, 1\]"),
                                              ("fcbigan", dict(betas=(0.5, 1.0)), r"betas=\(0.5, 1.0\)"),
                                              ("fcbigan", dict(filter_size=0), r"filter_size=0"),
                                              ("fanogan", dict(patch_size=4), r"patch_size=4 .*at least 8"),
                                              ("fanogan", dict(encoder_lr=0.0), r"encoder_lr=0.0 .*> 0")])
def test_out_of_range_gan_settings_are_refused(name, bad, match):
    cls = {"fanogan": gans.FAnoGANDetector, "fcbigan": gans.FCBiGANDetector}[name]
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(cls.PROFILES["quick"], **bad)
