"""Evaluation metrics: image AUROC / AUPR / best TPR-TNR, pixel AUROC, PRO curve and AUPRO.

Convention everywhere: label / mask 1 = anomalous, and a higher score means more anomalous.
Inputs may be numpy arrays, lists or torch tensors (any device); results are plain floats.
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve


def _to_numpy(x):
    """numpy array from an array, a list or a torch tensor (on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def image_auroc(labels, scores):
    """Area under the ROC curve of image scores."""
    return float(roc_auc_score(_to_numpy(labels), _to_numpy(scores)))


def image_aupr(labels, scores):
    """Area under the precision-recall curve (average precision), anomalies as positives."""
    return float(average_precision_score(_to_numpy(labels), _to_numpy(scores)))


def best_tpr_tnr(labels, scores):
    """MVTec's original protocol: the threshold that maximises TPR + TNR.

    An image is called anomalous when score >= threshold. Among equally good thresholds the
    highest wins. Returns ``dict(threshold, tpr, tnr)``.
    """
    fpr, tpr, thresholds = roc_curve(_to_numpy(labels), _to_numpy(scores))
    # roc_curve's first point is threshold = inf (nothing flagged): not a usable threshold.
    best = 1 + np.argmax(tpr[1:] - fpr[1:])  # TPR + TNR = TPR + 1 - FPR
    return dict(threshold=float(thresholds[best]), tpr=float(tpr[best]), tnr=float(1 - fpr[best]))


def _pixel_inputs(masks, maps):
    """Check and reshape ground-truth masks and anomaly maps to N×H×W (bool, float)."""
    masks, maps = _to_numpy(masks), _to_numpy(maps)

    def to_nhw(x):
        if x.ndim == 4 and x.shape[1] == 1:  # N×1×H×W
            x = x[:, 0]
        return x[None] if x.ndim == 2 else x  # a single H×W image

    masks, maps = to_nhw(masks), to_nhw(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must have the same shape, "
                         "N×H×W or N×1×H×W")
    if not np.isin(masks, (0, 1)).all():
        raise ValueError(f"masks must be binary (0/1 or bool); found values {np.unique(masks)[:5]}"
                         " (a mask read from a PNG is often 0/255: use mask > 0)")
    maps = maps.astype(np.float64)
    if np.isnan(maps).any():
        raise ValueError("maps contain NaN")
    return masks.astype(bool), maps


def pixel_auroc(masks, maps):
    """ROC AUC over all pixels of all images."""
    masks, maps = _pixel_inputs(masks, maps)
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
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _pixel_inputs(masks, maps)
    if not masks.any():
        raise ValueError("masks have no defect pixel: PRO needs at least one anomalous region")
    if masks.all():
        raise ValueError("masks have no defect-free pixel: the false-positive rate is undefined")

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
    fprs, pros = pro_curve(masks, maps, fpr_limit)
    return min(1.0, float(auc(fprs, pros)) / fpr_limit)  # min: float rounding only
