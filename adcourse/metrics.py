"""Evaluation metrics: image AUROC / AUPR / best TPR-TNR, pixel AUROC, PRO curve and AUPRO, and
operating points at a threshold fixed on normal images only (image TPR/TNR/F1, SegF1).

``best_tpr_tnr`` chooses its threshold on the *test* set, knowing the labels: an oracle that no
production line has. :func:`normal_threshold` fixes a threshold the way MVTec AD 2's protocol does,
from the scores of held-out normal validation images only (mean + 3 standard deviations, or a
quantile); :func:`operating_point` and :func:`segmentation_f1` then say what that threshold gives.

Convention everywhere: label / mask 1 = anomalous, and a higher score means more anomalous.
Inputs may be numpy arrays, lists or torch tensors (any device); results are plain floats.

Every metric checks its inputs and raises a ``ValueError`` that says what is wrong: labels other
than 0/1, one label per score, NaN or infinite scores, and a single class (an AUROC needs normal
and anomalous images, a pixel AUROC defect and defect-free pixels).
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve


def _to_numpy(x):
    """numpy array from an array, a list or a torch tensor (on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def _classes(values: np.ndarray, metric: str, what: str, names: tuple[str, str]) -> None:
    """``values`` (image labels, or mask pixels) must be 0/1 and hold both."""
    if values.size and not np.isin(values, (0, 1)).all():
        found = np.unique(values[~np.isin(values, (0, 1))])[:5]
        hint = " (a mask read from a PNG is often 0/255: use mask > 0)" if what == "masks" else ""
        raise ValueError(f"{metric}: {what} must be binary, 0 ({names[0]}) or 1 ({names[1]}); found values "
                         f"{found.tolist()}{hint}")
    present = np.unique(values).astype(int).tolist()
    if len(present) < 2:
        unit = "labels" if what == "labels" else "pixels"
        got = f"only {present[0]}" if present else f"no {unit} at all"
        if what == "masks" and present:
            got += " (no defect pixel)" if present == [0] else " (no defect-free pixel)"
        raise ValueError(f"{metric} needs both {names[0]} (0) and {names[1]} (1) {unit}; got {got}")


def _image_inputs(labels, scores, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one 0/1 label and one finite score per image, both classes present."""
    labels, scores = _to_numpy(labels), _to_numpy(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"{metric}: labels and scores must be 1-D, one per image; got shapes {labels.shape} and "
                         f"{scores.shape}" + (" (use .ravel())" if 1 in scores.shape[1:] else ""))
    if len(labels) != len(scores):
        raise ValueError(f"{metric}: {len(labels)} labels but {len(scores)} scores; give one of each per image")
    try:
        scores = scores.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{metric}: scores must be numbers, got {scores.dtype}") from error
    _classes(labels, metric, "labels", ("normal", "anomalous"))
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"{metric}: scores must be finite; NaN or infinite at image(s) {bad[:5].tolist()}")
    return labels.astype(int), scores


def image_auroc(labels, scores):
    """Area under the ROC curve of image scores."""
    labels, scores = _image_inputs(labels, scores, "image_auroc")
    return float(roc_auc_score(labels, scores))


def image_aupr(labels, scores):
    """Area under the precision-recall curve (average precision), anomalies as positives."""
    labels, scores = _image_inputs(labels, scores, "image_aupr")
    return float(average_precision_score(labels, scores))


def best_tpr_tnr(labels, scores):
    """MVTec's original protocol: the threshold that maximises TPR + TNR.

    An image is called anomalous when score >= threshold. Among equally good thresholds the
    highest wins. Returns ``dict(threshold, tpr, tnr)``.
    """
    labels, scores = _image_inputs(labels, scores, "best_tpr_tnr")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    # roc_curve's first point is threshold = inf (nothing flagged): not a usable threshold.
    best = 1 + np.argmax(tpr[1:] - fpr[1:])  # TPR + TNR = TPR + 1 - FPR
    return dict(threshold=float(thresholds[best]), tpr=float(tpr[best]), tnr=float(1 - fpr[best]))


def _pixel_inputs(masks, maps, metric: str):
    """Check and reshape ground-truth masks and anomaly maps to N×H×W (bool, float); the masks
    must hold defect and defect-free pixels."""
    masks, maps = _to_numpy(masks), _to_numpy(maps)

    def to_nhw(x):
        if x.ndim == 4 and x.shape[1] == 1:  # N×1×H×W
            x = x[:, 0]
        return x[None] if x.ndim == 2 else x  # a single H×W image

    masks, maps = to_nhw(masks), to_nhw(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"{metric}: masks {masks.shape} and maps {maps.shape} must have the same shape, "
                         "N×H×W or N×1×H×W")
    _classes(masks, metric, "masks", ("defect-free", "defect"))
    try:
        maps = maps.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{metric}: maps must be numbers, got {maps.dtype}") from error
    if not np.isfinite(maps).all():
        raise ValueError(f"{metric}: maps must be finite; they contain NaN or infinite values")
    return masks.astype(bool), maps


def pixel_auroc(masks, maps):
    """ROC AUC over all pixels of all images."""
    masks, maps = _pixel_inputs(masks, maps, "pixel_auroc")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def pro_curve(masks, maps, fpr_limit=0.3):
    """Per-region overlap (PRO) against false-positive rate, from (0, 0) up to ``fpr_limit``.

    Official MVTec definition. Regions C_k are the 8-connected components of every mask. At
    threshold t a pixel is predicted anomalous when map >= t, and
        PRO(t) = 1/K · Σ_k |P(t) ∩ C_k| / |C_k|        (mean over all K regions of all images)
        FPR(t) = |P(t) \\ defects| / |defect-free pixels|  (good images included)
    Every distinct map value is a threshold. The last point is interpolated at ``fpr_limit``.
    Returns ``(fprs, pros)``, both non-decreasing.
    """
    return _pro_curve(masks, maps, fpr_limit, "pro_curve")


def _pro_curve(masks, maps, fpr_limit, metric: str):
    """:func:`pro_curve`, its errors naming ``metric``."""
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, (int, float, np.integer, np.floating)) \
            or not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    masks, maps = _pixel_inputs(masks, maps, metric)

    within_image = np.zeros((3, 3, 3), dtype=int)
    within_image[1] = 1  # 3×3 ones: 8-connected inside an image, never across images
    regions, n_regions = ndimage.label(masks, structure=within_image)  # 0 = defect-free
    sizes = np.bincount(regions.ravel())  # sizes[0] = number of defect-free pixels
    pixel_weight = 1.0 / (sizes * n_regions)  # a pixel of C_k adds 1/(|C_k|·K) to PRO
    pixel_weight[0] = 0.0

    # Lower the threshold through every pixel score once: sort descending, then cumulate.
    order = np.argsort(-maps.ravel())
    scores, regions = maps.ravel()[order], regions.ravel()[order]
    pros = np.minimum(np.cumsum(pixel_weight[regions]), 1.0)  # min: float rounding only
    fprs = np.cumsum(regions == 0) / sizes[0]
    # Tied scores share one threshold: keep the last pixel of each group of ties.
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    fprs, pros = np.r_[0.0, fprs[last_of_tie]], np.r_[0.0, pros[last_of_tie]]

    inside = np.searchsorted(fprs, fpr_limit, side="right")  # points with FPR <= limit
    if inside < len(fprs):  # interpolate the segment that crosses the limit
        f0, f1, p0, p1 = fprs[inside - 1], fprs[inside], pros[inside - 1], pros[inside]
        fprs = np.r_[fprs[:inside], fpr_limit]
        pros = np.r_[pros[:inside], p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)]
    return fprs, pros


def aupro(masks, maps, fpr_limit=0.3):
    """Area under the PRO curve up to ``fpr_limit`` (trapezoid rule), divided by ``fpr_limit``."""
    fprs, pros = _pro_curve(masks, maps, fpr_limit, "aupro")
    return min(1.0, float(auc(fprs, pros)) / fpr_limit)  # min: float rounding only


# -- operating points fixed on normal images only ---------------------------------------------------
def normal_threshold(normal_scores, rule: str = "mean+3std", quantile: float = 0.99) -> float:
    """A threshold from the scores (or map values) of normal validation images only: no anomaly,
    no test label is seen. ``rule``: ``"mean+3std"`` (MVTec AD 2's: mean + 3 sample standard
    deviations) or ``"quantile"`` (the ``quantile`` of the normal scores: about 1 − ``quantile`` of
    normal images flagged). Scores at or above the threshold are called anomalous."""
    scores = _to_numpy(normal_scores).astype(np.float64).ravel()
    if scores.size < 2:
        raise ValueError(f"normal_threshold needs the scores of at least 2 normal images, got {scores.size}; "
                         "hold out normal validation images")
    if not np.isfinite(scores).all():
        raise ValueError("normal_threshold: the normal scores must be finite; they contain NaN or infinite values")
    if rule == "mean+3std":
        return float(scores.mean() + 3 * scores.std(ddof=1))
    if rule == "quantile":
        if isinstance(quantile, bool) or not 0 < quantile < 1:
            raise ValueError(f"normal_threshold: quantile must be in (0, 1), got {quantile!r}")
        return float(np.quantile(scores, quantile))
    raise ValueError(f"normal_threshold: rule must be 'mean+3std' or 'quantile', got {rule!r}")


def _finite_threshold(threshold, metric: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not np.isfinite(threshold):
        raise ValueError(f"{metric}: threshold must be a finite number (e.g. from normal_threshold), got {threshold!r}")
    return float(threshold)


def _rates(truth: np.ndarray, flagged: np.ndarray) -> dict:
    positives, negatives = truth.sum(), (~truth).sum()
    hits = (truth & flagged).sum()
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / positives
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return dict(tpr=float(recall), tnr=float(((~truth) & (~flagged)).sum() / negatives),
                precision=float(precision), f1=float(f1))


def operating_point(labels, scores, threshold) -> dict:
    """What a fixed ``threshold`` gives on test images: images with score >= threshold are called
    anomalous. Returns ``dict(threshold, tpr, tnr, precision, f1)`` (anomalies as positives;
    precision and F1 are 0 when nothing is flagged)."""
    labels, scores = _image_inputs(labels, scores, "operating_point")
    threshold = _finite_threshold(threshold, "operating_point")
    return dict(threshold=threshold, **_rates(labels == 1, scores >= threshold))


def segmentation_f1(masks, maps, threshold) -> dict:
    """SegF1 (MVTec AD 2): pixels with map >= ``threshold`` are called defective, and precision,
    recall and their F1 are counted over every pixel of the test set together (not image by image).
    Returns ``dict(threshold, precision, recall, f1)``."""
    masks, maps = _pixel_inputs(masks, maps, "segmentation_f1")
    threshold = _finite_threshold(threshold, "segmentation_f1")
    rates = _rates(masks.ravel(), maps.ravel() >= threshold)
    return dict(threshold=threshold, precision=rates["precision"], recall=rates["tpr"], f1=rates["f1"])
