"""AUPRO against an independent, brute-force evaluation of its definition (issue 28).

The brute force shares no code with ``adcourse.metrics``: regions come from scikit-image's labelling
(8-connectivity, image by image), every distinct map value is tried as a threshold one at a time,
PRO and FPR are counted directly from the predicted set, and the area is summed segment by segment
up to the limit. Adversarial cases: ties, rings, one-pixel defects, all-normal images, constant
maps, diagonal-only regions, huge and tiny regions in one image; five FPR limits each."""
import numpy as np
import pytest
from skimage.measure import label

from adcourse import metrics

LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


def brute_force_pro_points(masks: np.ndarray, maps: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, PRO) at every distinct threshold, highest first, after the point (0, 0)."""
    regions = []
    for index, mask in enumerate(masks):
        labelled = label(mask, connectivity=2)
        regions += [(index, labelled == k) for k in range(1, labelled.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        pro = sum((predicted[i] & region).sum() / region.sum() for i, region in regions) / len(regions)
        points.append(((predicted & normal).sum() / normal.sum(), pro))
    return points


def brute_force_aupro(points, limit: float) -> float:
    area = 0.0
    for (f0, p0), (f1, p1) in zip(points, points[1:]):
        if f1 <= limit:
            area += (f1 - f0) * (p0 + p1) / 2
            continue
        if f0 < limit:
            at_limit = p0 + (p1 - p0) * (limit - f0) / (f1 - f0)
            area += (limit - f0) * (p0 + at_limit) / 2
        break
    return area / limit


def _disk(size, centre, radius):
    y, x = np.mgrid[:size, :size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


def _cases():
    rng = np.random.default_rng(0)
    size = 20
    noise = lambda n=3: rng.random((n, size, size))  # noqa: E731
    cases = {}
    blob = np.zeros((3, size, size), bool)
    blob[0, 5:9, 5:9] = True
    cases["one blob, random map"] = blob, noise()
    cases["one blob, map = mask + noise"] = blob, blob + 0.5 * noise()
    cases["ties: map quantised to 8 levels"] = blob, np.floor(8 * (blob * 0.3 + noise())) / 8
    cases["ties: map of 0/1 only"] = blob, (noise() > 0.7).astype(float)
    cases["constant map"] = blob, np.full((3, size, size), 0.25)
    ring = np.zeros((2, size, size), bool)
    ring[0] = _disk(size, (10, 10), 7) & ~_disk(size, (10, 10), 4)
    ring_map = noise(2)
    ring_map[0][_disk(size, (10, 10), 4)] += 1.0  # the hole lights up, the ring does not
    cases["ring with a lit hole"] = ring, ring_map
    cases["ring, map = ring + noise"] = ring, ring + 0.8 * noise(2)
    one = np.zeros((3, size, size), bool)
    one[1, 7, 11] = True
    cases["one-pixel defect"] = one, noise()
    cases["one-pixel defect found exactly"] = one, one * 2.0 + 0.1 * noise()
    normal_images = np.zeros((6, size, size), bool)
    normal_images[5, 2:4, 2:12] = True
    cases["five all-normal images and one defective"] = normal_images, noise(6)
    diagonal = np.zeros((2, size, size), bool)
    diagonal[0, np.arange(3, 15), np.arange(3, 15)] = True  # one region under 8-connectivity, 12 under 4
    cases["diagonal-only region"] = diagonal, diagonal * 0.4 + noise(2)
    two_touching = np.zeros((2, size, size), bool)
    two_touching[0, 2:6, 2:6] = True
    two_touching[0, 6:9, 6:9] = True  # touches the first at one corner
    cases["two squares meeting at a corner"] = two_touching, noise(2)
    mixed = np.zeros((2, size, size), bool)
    mixed[0, :, :12] = True  # huge
    mixed[0, 17, 17] = True  # tiny, same image
    mixed[1, 15:17, 3:5] = True
    cases["huge and tiny regions in one image"] = mixed, noise(2) + 0.3 * mixed
    same_place = np.zeros((3, size, size), bool)
    same_place[:, 8:11, 8:11] = True  # the same spot in three images: three regions, not one
    cases["same spot in three images"] = same_place, noise()
    border = np.zeros((2, size, size), bool)
    border[0, 0:3, :] = True
    cases["region along the border"] = border, noise(2)
    thin = np.zeros((2, size, size), bool)
    thin[1, 10, 2:18] = True
    cases["thin line"] = thin, noise(2) + 0.2 * thin
    perfect = blob.copy()
    cases["perfect map"] = perfect, perfect.astype(float)
    cases["inverted map"] = perfect, 1.0 - perfect
    cases["negative and huge offsets"] = blob, 1e6 + noise() - 5 * blob
    many = rng.random((4, size, size)) > 0.93
    cases["many scattered regions"] = many, noise(4) + 0.2 * many
    cases["integer map 0-3"] = many, rng.integers(0, 4, (4, size, size)).astype(float)
    for seed in (1, 2):
        r = np.random.default_rng(seed)
        masks = np.stack([_disk(size, r.integers(3, 17, 2), r.integers(1, 5)) for _ in range(3)])
        masks[2] = False
        cases[f"random disks {seed}"] = masks, r.random((3, size, size)) + 0.3 * masks
    return cases


CASES = _cases()


def test_there_are_at_least_twenty_adversarial_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_aupro_agrees_with_the_brute_force_definition(name):
    masks, maps = CASES[name]
    points = brute_force_pro_points(masks, maps)
    for limit in LIMITS:
        expected = brute_force_aupro(points, limit)
        assert abs(metrics.aupro(masks, maps, fpr_limit=limit) - expected) <= 1e-12, (name, limit)


@pytest.mark.parametrize("name", ["ties: map quantised to 8 levels", "diagonal-only region", "ring with a lit hole"])
def test_the_image_order_does_not_move_aupro(name):
    masks, maps = CASES[name]
    order = np.random.default_rng(3).permutation(len(masks))
    for limit in LIMITS:
        assert metrics.aupro(masks[order], maps[order], limit) == pytest.approx(metrics.aupro(masks, maps, limit),
                                                                                 abs=1e-12)


# -- operating points fixed on normal images ------------------------------------------------------
def test_normal_threshold_rules():
    normal = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert metrics.normal_threshold(normal) == pytest.approx(0.3 + 3 * np.std(normal, ddof=1))
    assert metrics.normal_threshold(normal, "quantile", 0.5) == pytest.approx(0.3)
    for bad, message in [(([0.1],), "at least 2 normal images"), (([0.1, np.nan],), "finite"),
                         ((normal, "max"), "rule must be"), ((normal, "quantile", 1.0), r"quantile must be in \(0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            metrics.normal_threshold(*bad)


def test_operating_point_agrees_with_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + 0.4 * labels
    threshold = metrics.normal_threshold(scores[labels == 0], "quantile", 0.9)
    point = metrics.operating_point(labels, scores, threshold)
    flagged = scores >= threshold
    assert point["tpr"] == pytest.approx(recall_score(labels, flagged))
    assert point["tnr"] == pytest.approx(recall_score(1 - labels, ~flagged))
    assert point["precision"] == pytest.approx(precision_score(labels, flagged))
    assert point["f1"] == pytest.approx(f1_score(labels, flagged))
    nothing = metrics.operating_point(labels, scores, scores.max() + 1)
    assert nothing["tpr"] == 0 and nothing["tnr"] == 1 and nothing["f1"] == 0
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        metrics.operating_point(labels, scores, float("nan"))


def test_segmentation_f1_pools_every_pixel_and_agrees_with_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    masks, maps = CASES["huge and tiny regions in one image"]
    threshold = 0.9
    seg = metrics.segmentation_f1(masks, maps, threshold)
    truth, flagged = masks.ravel(), maps.ravel() >= threshold
    assert seg["f1"] == pytest.approx(f1_score(truth, flagged))
    assert seg["precision"] == pytest.approx(precision_score(truth, flagged))
    assert seg["recall"] == pytest.approx(recall_score(truth, flagged))
