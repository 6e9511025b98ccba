import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as label_regions
from sklearn.metrics import roc_auc_score

from adcourse import metrics


def reference_aupro(masks, maps, fpr_limit=0.3):
    """Slow and obvious: every distinct score as threshold, PRO and FPR counted directly."""
    masks, maps = np.asarray(masks, bool), np.asarray(maps, float)
    regions = [label_regions(mask, connectivity=2) for mask in masks]  # 8-connectivity
    region_masks = [r == k for r in regions for k in range(1, r.max() + 1)]
    region_images = [i for i, r in enumerate(regions) for _ in range(r.max())]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        pro = np.mean([(predicted[i] & c).sum() / c.sum() for i, c in zip(region_images, region_masks)])
        fpr = (predicted & ~masks).sum() / (~masks).sum()
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return area / fpr_limit


def random_blobs(rng, n=3, size=12, good_images=1):
    """Masks of a few random blobs per image; the last ``good_images`` images are defect-free."""
    noise = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 1.5, 1.5))
    masks = noise > np.quantile(noise, 0.8)
    masks[n - good_images:] = False
    return masks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["random", "correlated", "ties"])
def test_aupro_matches_reference(seed, kind):
    rng = np.random.default_rng(seed)
    masks = random_blobs(rng)
    maps = {"random": rng.random(masks.shape),
            "correlated": masks + rng.normal(0, 0.6, masks.shape),
            "ties": np.round(masks + rng.normal(0, 0.8, masks.shape))}[kind]
    for fpr_limit in (0.3, 0.05, 1.0):
        assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(
            reference_aupro(masks, maps, fpr_limit), abs=1e-6)


def test_aupro_always_in_unit_interval_and_matches_reference():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n, h, w = rng.integers(1, 4), rng.integers(2, 9), rng.integers(2, 9)
        masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.6)
        masks.flat[0], masks.flat[-1] = True, False  # at least one defect and one normal pixel
        maps = [rng.random(masks.shape), rng.integers(0, 3, masks.shape), masks * 1.0,
                np.zeros(masks.shape), masks + rng.random(masks.shape) * 0.5][seed % 5]
        fpr_limit = rng.uniform(0.01, 1.0)
        fprs, pros = metrics.pro_curve(masks, maps, fpr_limit)
        value = metrics.aupro(masks, maps, fpr_limit)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(reference_aupro(masks, maps, fpr_limit), abs=1e-9)
        assert fprs[0] == pros[0] == 0.0 and fprs[-1] == pytest.approx(fpr_limit)
        assert np.all(np.diff(fprs) >= 0) and np.all(np.diff(pros) >= 0) and pros.max() <= 1.0


def test_perfect_map_gives_one():
    masks = random_blobs(np.random.default_rng(0))
    assert metrics.aupro(masks, masks * 5.0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.aupro(masks, masks * 5.0, fpr_limit=1e-4) == pytest.approx(1.0, abs=1e-12)


def test_constant_map_gives_the_diagonal():
    # One threshold flags every pixel: the curve is the straight line (0, 0)-(1, 1), PRO = FPR.
    # Area up to 0.3 is 0.3²/2 = 0.045, normalised by 0.3: 0.15 (= fpr_limit / 2).
    masks = random_blobs(np.random.default_rng(1))
    assert metrics.aupro(masks, np.full(masks.shape, 0.7)) == pytest.approx(0.15)
    assert metrics.aupro(masks, np.zeros(masks.shape), fpr_limit=0.1) == pytest.approx(0.05)


def test_one_region_by_hand():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # one 2×2 region, 12 defect-free pixels
    heat = np.zeros((4, 4))
    heat[:2, :2] = [[4, 3], [2, 1]]
    heat[3, 3] = 2.5  # one false positive between the region's scores
    fprs, pros = metrics.pro_curve(mask[None], heat[None])
    np.testing.assert_allclose(fprs, [0, 0, 0, 1 / 12, 1 / 12, 1 / 12, 0.3])
    np.testing.assert_allclose(pros, [0, 0.25, 0.5, 0.5, 0.75, 1, 1])
    # area = 1/12 · 0.5 (from the false positive) + (0.3 − 1/12) · 1, divided by 0.3
    assert metrics.aupro(mask, heat) == pytest.approx(1 - 1 / 7.2)


def test_regions_are_8_connected_within_an_image_only():
    masks = np.zeros((2, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region of 2 pixels
    masks[1, 1, 1] = masks[1, 1, 2] = masks[1, 1, 3] = True  # another image, same place
    heat = np.zeros((2, 5, 5))
    heat[0, 0, 0] = 1.0  # flags half of the first region only
    fprs, pros = metrics.pro_curve(masks, heat, fpr_limit=1.0)
    assert pros[1] == pytest.approx((1 / 2 + 0) / 2)  # 4-connected: 1/3; joined across images: 1/5
    assert fprs[1] == 0.0


def test_false_positives_counted_on_good_images():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    heat = masks * 2.0
    heat[1] = 1.0  # every pixel of the good image flagged before the rest of image 0
    fprs, pros = metrics.pro_curve(masks, heat, fpr_limit=1.0)
    np.testing.assert_allclose(fprs, [0, 0, 16 / 28, 1])
    np.testing.assert_allclose(pros, [0, 1, 1, 1])


def test_accepts_channel_dim_and_torch():
    masks = random_blobs(np.random.default_rng(2))
    maps = masks + np.random.default_rng(3).normal(0, 1, masks.shape)
    expected = metrics.aupro(masks, maps)
    assert metrics.aupro(torch.from_numpy(masks[:, None]), torch.from_numpy(maps[:, None])) == expected
    assert metrics.pixel_auroc(torch.from_numpy(masks).int(), torch.from_numpy(maps)) == \
        pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(4)
    masks = random_blobs(rng, n=4, size=16)
    maps = masks + rng.normal(0, 1.0, masks.shape)
    value = metrics.pixel_auroc(masks[:, None], maps[:, None])
    assert value == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert 0.6 < value < 1.0


@pytest.mark.parametrize("masks, maps, message", [
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), "no defect pixel"),
    (np.ones((2, 4, 4)), np.zeros((2, 4, 4)), "no defect-free pixel"),
    (np.eye(4)[None], np.zeros((1, 4, 5)), "same shape"),
    (np.eye(4)[None] * 255, np.zeros((1, 4, 4)), "binary"),
    (np.eye(4)[None], np.full((1, 4, 4), np.nan), "NaN"),
])
def test_bad_pixel_inputs_raise(masks, maps, message):
    with pytest.raises(ValueError, match=message):
        metrics.aupro(masks, maps)


def test_bad_fpr_limit_raises():
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(np.eye(4), np.eye(4), fpr_limit=0)


def test_image_metrics_by_hand():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.9]
    # anomaly 0.9 beats all three normals, 0.5 beats two of them: 5 of 6 pairs
    assert metrics.image_auroc(labels, scores) == pytest.approx(5 / 6)
    # ranked: 0.9 (hit, precision 1), 0.6, 0.5 (hit, precision 2/3): AP = (1 + 2/3) / 2
    assert metrics.image_aupr(labels, scores) == pytest.approx(5 / 6)
    # threshold 0.5 flags both anomalies and one normal: TPR 1, TNR 2/3, the best sum (5/3)
    assert metrics.best_tpr_tnr(labels, scores) == pytest.approx(dict(threshold=0.5, tpr=1, tnr=2 / 3))


def test_image_metrics_accept_torch_and_perfect_separation():
    labels, scores = torch.tensor([0, 1, 0, 1]), torch.tensor([0.2, 0.8, 0.1, 0.7])
    assert metrics.image_auroc(labels, scores) == 1.0
    assert metrics.image_aupr(labels, scores) == 1.0
    assert metrics.best_tpr_tnr(labels, scores) == pytest.approx(dict(threshold=0.7, tpr=1, tnr=1))


@pytest.mark.parametrize("metric", [metrics.image_auroc, metrics.image_aupr, metrics.best_tpr_tnr],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("labels, present", [([0, 0, 0], "0"), ([1, 1, 1], "1")])
def test_image_metrics_on_one_class_say_what_is_missing(metric, labels, present):
    with pytest.raises(ValueError, match=rf"^{metric.__name__} needs both normal \(0\) and anomalous \(1\) "
                                         rf"labels; got only {present}$"):
        metric(labels, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 1, 2], [0.1, 0.2, 0.3], r"labels must be binary, 0 \(normal\) or 1 \(anomalous\); found values \[2\]"),
    ([0, 1], [0.1, 0.2, 0.3], "2 labels but 3 scores"),
    ([0, 1], [0.1, float("nan")], r"scores must be finite; NaN or infinite at image\(s\) \[1\]"),
    ([0, 1], [0.1, float("inf")], "scores must be finite"),
    ([0, 1], [[0.1], [0.2]], r"must be 1-D.*\(use .ravel\(\)\)"),
    ([0, 1], ["a", "b"], "scores must be numbers"),
    ([], [], "got no labels at all"),
])
def test_image_metrics_refuse_malformed_inputs(labels, scores, message):
    for metric in (metrics.image_auroc, metrics.image_aupr, metrics.best_tpr_tnr):
        with pytest.raises(ValueError, match=message):
            metric(labels, scores)


@pytest.mark.parametrize("metric", [metrics.pixel_auroc, metrics.aupro, metrics.pro_curve], ids=lambda f: f.__name__)
def test_pixel_metrics_on_one_class_say_what_is_missing(metric):
    with pytest.raises(ValueError, match=rf"^{metric.__name__} needs both defect-free \(0\) and defect \(1\) pixels; "
                                         r"got only 0 \(no defect pixel\)$"):
        metric(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"got only 1 \(no defect-free pixel\)"):
        metric(np.ones((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="maps must be finite"):
        metric(np.eye(4)[None], np.full((1, 4, 4), np.inf))
