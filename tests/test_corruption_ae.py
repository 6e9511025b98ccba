"""Chapter 3: AE / AESc, corrupted training inputs, MC dropout and the Gaussian-activation score."""
import numpy as np
import pytest
import torch

from adcourse import detectors
from adcourse.corruption import stain
from adcourse.data import TextureDefects
from adcourse.models.corruption_ae import (AE, AESc, CorruptionAEDetector, GaussianActivationScorer, activations,
                                           corrupt_batch, mc_dropout, residual_map, source_dropout)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


@pytest.mark.parametrize("cls", [AE, AESc])
@pytest.mark.parametrize("channels,size,depth", [(1, 64, 4), (3, 32, 3), (1, 16, 1)])
def test_models_keep_the_input_shape_and_range(cls, channels, size, depth):
    torch.manual_seed(0)
    model = cls(channels, depth=depth, width=4).eval()
    x = torch.rand(2, channels, size, size)
    out, acts = model(x, features=True)
    assert out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1  # sigmoid output
    # one activation per encoder block, then one per decoder block
    assert len(acts) == 2 * depth - 1
    expected = [(4 * 2 ** i, size // 2 ** (i + 1)) for i in range(depth)]
    expected += [(4 * 2 ** level, size // 2 ** (level + 1)) for level in reversed(range(depth - 1))]
    assert [(a.shape[1], a.shape[-1]) for a in acts] == expected


def test_five_by_five_strided_convolutions_as_in_the_source():
    model = AE(1, depth=4, width=16)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert [c.stride for c in model.encoder.modules() if isinstance(c, torch.nn.Conv2d)] == [(2, 2)] * 4
    assert [c.out_channels for c in model.encoder.modules() if isinstance(c, torch.nn.Conv2d)] == [16, 32, 64, 128]


def test_wrong_sides_and_dropout_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        AE(1, depth=4)(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="dropout"):
        AE(1, depth=4, dropout=(0.1, 0.2))


def test_ae_and_aesc_share_weights_and_differ_only_by_the_skips():
    torch.manual_seed(0)
    ae, aesc = AE(1, depth=3, width=4).eval(), AESc(1, depth=3, width=4).eval()
    assert ae.state_dict().keys() == aesc.state_dict().keys()  # skips add no parameters
    aesc.load_state_dict(ae.state_dict())
    x = torch.rand(2, 1, 32, 32)
    assert not torch.allclose(ae(x), aesc(x))


def test_skip_connections_carry_the_input_past_a_cut_bottleneck():
    """With the deepest block's weights zeroed, the bottleneck is the same for every input.

    The AE's output then no longer depends on the input; the AESc's still does, through the skips.
    """
    torch.manual_seed(0)
    x1, x2 = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    outputs = {}
    for cls in (AE, AESc):
        torch.manual_seed(0)
        model = cls(1, depth=3, width=4).eval()
        with torch.no_grad():
            model.encoder[-1][0].weight.zero_()
        outputs[cls] = model(x1), model(x2)
    torch.testing.assert_close(*outputs[AE])
    assert (outputs[AESc][0] - outputs[AESc][1]).abs().max() > 1e-3


def test_source_dropout_schedule():
    assert source_dropout(6) == (0.0, 0.0, 0.1, 0.2, 0.4, 0.5)  # the source's depth-6 network
    assert source_dropout(4) == (0.1, 0.2, 0.4, 0.5)  # aligned at the bottleneck
    assert source_dropout(8) == (0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.5)
    assert AESc(1, depth=4, dropout=source_dropout(4)).dropout_rates == (0.1, 0.2, 0.4, 0.5)


def test_mc_dropout_variance_is_zero_with_dropout_off():
    torch.manual_seed(0)
    model = AESc(1, depth=2, width=4, dropout=0.3)
    x = torch.rand(3, 1, 16, 16)
    mean, variance = mc_dropout(model, x, samples=5, dropout=False)
    assert variance.shape == x.shape
    assert torch.count_nonzero(variance) == 0
    torch.testing.assert_close(mean, model.eval()(x).detach())
    # a network without dropout layers active is deterministic too
    _, variance = mc_dropout(AESc(1, depth=2, width=4, dropout=0.0), x, samples=5)
    assert torch.count_nonzero(variance) == 0


def test_mc_dropout_variance_is_positive_with_dropout_on_and_batch_norm_frozen():
    torch.manual_seed(0)
    model = AESc(1, depth=2, width=4, dropout=0.3)
    x = torch.rand(3, 1, 16, 16)
    running_mean = model.encoder[0][1].running_mean.clone()
    _, variance = mc_dropout(model, x, samples=6)
    assert variance.min() >= 0 and variance.mean() > 0
    torch.testing.assert_close(model.encoder[0][1].running_mean, running_mean)  # BN stayed in eval mode
    assert not any(m.training for m in model.modules())  # left in eval mode, dropout off


def test_gaussian_activation_score_is_the_mahalanobis_distance():
    rng = np.random.default_rng(0)
    cov = np.diag([1.0, 4.0, 0.25])
    train = torch.from_numpy(rng.multivariate_normal([1.0, -2.0, 0.5], cov, size=2000))[:, :, None, None]
    scorer = GaussianActivationScorer(dim=64, reduce="pool").fit([train])
    mu = train[:, :, 0, 0].numpy().mean(axis=0)
    precision = np.linalg.inv(scorer.gaussians[0].covariance_)
    test = torch.tensor([[1.0, -2.0, 0.5], [3.0, -2.0, 0.5], [1.0, 2.0, 0.5]], dtype=torch.float64)[:, :, None, None]
    diff = test[:, :, 0, 0].numpy() - mu
    expected = np.einsum("ni,ij,nj->n", diff, precision, diff) / 3
    np.testing.assert_allclose(scorer.score([test]), expected, rtol=1e-6)
    # the mean scores ~0; 2 standard deviations along any axis score ~4/3
    np.testing.assert_allclose(scorer.score([test]), [0.0, 4 / 3, 4 / 3], atol=0.1)


def test_gaussian_activation_scorer_sums_layers_and_keeps_its_masks():
    torch.manual_seed(0)
    layers = [torch.randn(300, 8, 4, 4), torch.randn(300, 16, 2, 2)]
    scorer = GaussianActivationScorer(dim=10, reduce="sample", seed=1).fit(layers)
    assert [len(i) for i in scorer.indices] == [10, 10]  # 10 of 128 and 10 of 64 entries
    masks = [i.copy() for i in scorer.indices]
    normal = [layer[:20] for layer in layers]
    shifted = [layer[:20] + 3.0 for layer in layers]
    per_layer = scorer.layer_scores(normal)
    assert per_layer.shape == (2, 20)
    np.testing.assert_allclose(scorer.score(normal), per_layer.sum(axis=0))
    assert scorer.score(shifted).min() > scorer.score(normal).max()
    assert all((a == b).all() for a, b in zip(masks, scorer.indices))  # same masks at test time
    with pytest.raises(ValueError, match="layers"):
        scorer.score(normal[:1])


def test_corrupt_batch_corrupts_inputs_only_and_is_seeded():
    images = torch.rand(4, 1, 32, 32) * 0.2 + 0.4
    a = corrupt_batch(images, "stain", np.random.default_rng(0))
    b = corrupt_batch(images, stain, np.random.default_rng(0))
    torch.testing.assert_close(a, b)
    assert a.shape == images.shape and not torch.equal(a, images)
    assert (a != images).flatten(1).any(1).all()  # every image got a stain
    torch.testing.assert_close(corrupt_batch(images, None, np.random.default_rng(0)), images)
    colour = corrupt_batch(torch.rand(2, 3, 16, 16), "salt_and_pepper", np.random.default_rng(0))
    assert colour.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_batch(images, "jpeg", np.random.default_rng(0))


def test_residual_map():
    x, x_hat = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    x_hat[:, 0] = 0.3
    torch.testing.assert_close(residual_map(x, x_hat), torch.full((2, 4, 4), 0.1))


@pytest.fixture(scope="module")
def tiny():
    return (TextureDefects("brick", "train", patch_size=32, n=16),
            TextureDefects("brick", "test", patch_size=32, n=8))


@pytest.mark.parametrize("name", ["ae_stain", "aesc_stain", "aesc_stain_mcd", "aesc_clean"])
def test_registered_detectors_fit_and_predict(name, tiny):
    train, test = tiny
    assert name in detectors.available()
    torch.manual_seed(0)
    mcd = dict(mc_samples=3) if name.endswith("_mcd") else {}  # read only by Monte Carlo dropout scoring
    detector = detectors.create(name, device="cpu", epochs=1, width=4, batch_size=8, **mcd)
    detector.fit(train, profile="quick")
    scores, maps = detector.predict(test.images)
    assert scores.shape == (8,) and maps.shape == (8, 32, 32)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert detector.model() is not None


def test_one_network_scored_three_ways(tiny):
    train, test = tiny
    torch.manual_seed(0)
    detector = CorruptionAEDetector(arch="aesc", corruption="gaussian", epochs=1, width=4, batch_size=8, mc_samples=3).fit(train)
    for scoring in ("residual", "mcd"):
        scores, maps = detector.predict_with(test.images, scoring)
        assert scores.shape == (8,) and maps.shape == (8, 32, 32)
    first, _ = detector.predict_with(test.images, "mcd")
    torch.rand(3)  # whatever ran in between, the Monte Carlo passes use the detector's seed
    np.testing.assert_array_equal(detector.predict_with(test.images, "mcd")[0], first)
    scores, maps = detector.predict_with(test.images, "gaussian")
    assert scores.shape == (8,) and maps is None
    assert detector.network.depth == 3  # lowered from the profile's 4 so that the bottleneck keeps 4×4
    assert len(activations(detector.network, test.images)) == 2 * 3 - 1
    no_dropout = CorruptionAEDetector(arch="aesc", corruption="none", dropout=0.0, epochs=1, width=4, batch_size=8).fit(train)
    with pytest.raises(ValueError, match="dropout"):
        no_dropout.predict_with(test.images, "mcd")


def test_detector_refuses_bad_options():
    with pytest.raises(ValueError, match="corruption"):
        CorruptionAEDetector(corruption="jpeg")
    with pytest.raises(TypeError, match="scoring"):
        CorruptionAEDetector(scoring="ssim")
    with pytest.raises(TypeError, match="arch"):
        CorruptionAEDetector(arch="unet")


def test_gaussian_activation_scorer_state_scores_as_sklearn():
    torch.manual_seed(0)
    layers = [torch.randn(300, 8, 4, 4), torch.randn(300, 16, 2, 2)]
    scorer = GaussianActivationScorer(dim=10, reduce="sample", seed=1).fit(layers)
    test = [layer[:20] + 0.5 for layer in layers]
    by_sklearn = np.stack([g.mahalanobis(scorer.vectors(i, a)) / 10
                           for i, (g, a) in enumerate(zip(scorer.gaussians, test))])
    np.testing.assert_array_equal(scorer.layer_scores(test), by_sklearn)
    restored = GaussianActivationScorer.from_state(scorer.state())
    np.testing.assert_array_equal(restored.layer_scores(test), by_sklearn)


def test_saved_detector_scores_all_three_ways_as_the_original(tiny, tmp_path):
    train, test = tiny
    torch.manual_seed(0)
    detector = detectors.create("aesc_stain_mcd", device="cpu", epochs=1, width=4, batch_size=8, mc_samples=3).fit(train)
    loaded = detectors.load(detector.save(tmp_path / "aesc.pt"))
    for scoring in ("residual", "mcd", "gaussian"):
        scores, maps = detector.predict_with(test.images, scoring)
        loaded_scores, loaded_maps = loaded.predict_with(test.images, scoring)
        np.testing.assert_array_equal(loaded_scores, scores)
        assert (maps is None) == (loaded_maps is None) and (maps is None or np.array_equal(loaded_maps, maps))


def test_a_corruption_function_trains_but_cannot_be_saved(tiny, tmp_path):
    train, test = tiny

    def half_stain(image, rng):
        return stain(image, rng)

    detector = CorruptionAEDetector(arch="ae", corruption=half_stain, device="cpu", epochs=1, width=4, batch_size=8)
    assert detector.name == "ae_half_stain"
    scores, maps = detector.fit(train).predict(test.images)
    assert scores.shape == (8,) and np.isfinite(maps).all()
    with pytest.raises(TypeError, match=r"\['corruption'\].*named options"):
        detector.save(tmp_path / "custom.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, match", [(dict(dropout=1.0), r"dropout=1.0 is out of range"),
                                        (dict(mc_samples=1), r"mc_samples=1 is out of range.*at least 2"),
                                        (dict(corruption_pool=0), r"corruption_pool=0"),
                                        (dict(epochs=0), r"epochs=0 is out of range.*at least 1")])
def test_out_of_range_settings_are_refused_at_creation(bad, match):
    with pytest.raises(ValueError, match=match):
        CorruptionAEDetector(**bad)


def test_a_rate_of_the_wrong_type_inside_the_tuple_is_refused_at_creation():
    with pytest.raises(TypeError, match=r"dropout=\(0.1, 'x'\) should be of type .*tuple\[float, \.\.\.\], "
                                        r"not tuple of float, str"):
        CorruptionAEDetector(dropout=(0.1, "x"))
