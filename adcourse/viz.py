"""Figures for the course: image grids, heat-map overlays, ROC / PR / PRO curves.

Images are C×H×W (1 or 3 channels) or H×W, as numpy arrays or torch tensors. Every function
returns its matplotlib Figure and never calls ``plt.show()``.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from . import metrics
from .metrics import _to_numpy


def _to_hwc(image):
    """H×W for one channel, H×W×3 for colour, from C×H×W or H×W."""
    image = _to_numpy(image).astype(np.float32)
    if image.ndim == 3:
        if image.shape[0] not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels first (C×H×W), got shape {image.shape}")
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return image


def _draw(ax, image, cmap="gray", vmin=None, vmax=None, title=None):
    """Show one image without ticks. Colour images are mapped from [vmin, vmax] (default [0, 1])."""
    image = _to_hwc(image)
    if image.ndim == 3:
        low, high = (0.0 if vmin is None else vmin), (1.0 if vmax is None else vmax)
        image = np.clip((image - low) / max(high - low, 1e-12), 0, 1)
    ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set(xticks=[], yticks=[], title=title or "")


def _grid_axes(nrows, ncols, size=1.6):
    return plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)


def show_grid(images, titles=None, nrow=8, cmap="gray", vmin=None, vmax=None):
    """Grid of images, ``nrow`` per row (as in torchvision's make_grid).

    ``vmin``/``vmax``: value range shown; by default each grey image uses its own range and
    colour images are taken to be in [0, 1].
    """
    images = list(images)
    ncols = min(nrow, len(images))
    fig, axes = _grid_axes(math.ceil(len(images) / ncols), ncols)
    titles = titles or [None] * len(images)
    for ax, image, title in zip(axes.flat, images, titles):
        _draw(ax, image, cmap, vmin, vmax, title)
    for ax in axes.flat[len(images):]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig


def reconstruction_grid(images, reconstructions, residuals=None, n=8):
    """Rows: input, reconstruction, |residual| for the first ``n`` images of N×C×H×W batches.

    Input and reconstruction share the inputs' value range, so a darker reconstruction looks
    darker; residuals share one colour scale across the row. Default residual: |x − x̂|
    averaged over channels.
    """
    images, reconstructions = _to_numpy(images)[:n], _to_numpy(reconstructions)[:n]
    if residuals is None:
        residuals = np.abs(images - reconstructions).mean(axis=1)  # N×C×H×W -> N×H×W
    residuals = np.abs(_to_numpy(residuals)[:n].astype(np.float32))
    if residuals.ndim == 4:
        residuals = residuals.mean(axis=1)
    low, high = float(images.min()), float(images.max())
    fig, axes = _grid_axes(3, len(images))
    for column, (image, reconstruction, residual) in enumerate(zip(images, reconstructions, residuals)):
        _draw(axes[0, column], image, vmin=low, vmax=high)
        _draw(axes[1, column], reconstruction, vmin=low, vmax=high)
        _draw(axes[2, column], residual, cmap="inferno", vmin=0, vmax=float(residuals.max()))
    for row, name in enumerate(["input", "reconstruction", "|residual|"]):
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    return fig


def overlay_heatmap(image, heatmap, mask=None, ax=None, alpha=0.5, cmap="jet"):
    """Image with a heat map on top and the ground-truth mask outlined.

    A heat map of lower resolution (e.g. one value per patch) is stretched over the image.
    """
    ax = ax or plt.subplots(figsize=(3, 3))[1]
    image = _to_numpy(image)
    height, width = image.shape[-2:]
    _draw(ax, image, vmin=float(image.min()), vmax=float(image.max()))
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the image's own pixel grid
    ax.imshow(_to_hwc(heatmap), cmap=cmap, alpha=alpha, extent=extent, interpolation="bilinear")
    if mask is not None:
        mask = _to_hwc(mask)
        if mask.shape != (height, width):
            raise ValueError(f"mask {mask.shape} must be the image's size {(height, width)}")
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="white", linewidths=1)
    return ax.figure


def _curve_axes(ax, xlabel, ylabel, xlim=(0, 1)):
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=xlim, ylim=(0, 1.02))
    sns.despine(ax=ax)
    return ax


def _legend_label(label, metric, value):
    return f"{label} ({metric} = {value:.3f})" if label else f"{metric} = {value:.3f}"


def plot_roc(labels, scores, ax=None, label=None):
    """ROC curve of image scores; the legend gives the AUROC. The chance line is drawn once."""
    ax = _curve_axes(ax, "false-positive rate", "true-positive rate")
    if not ax.lines:
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance (0.5)")
    fpr, tpr, _ = roc_curve(_to_numpy(labels), _to_numpy(scores))
    ax.plot(fpr, tpr, label=_legend_label(label, "AUROC", metrics.image_auroc(labels, scores)))
    ax.legend(loc="lower right")
    return ax.figure


def plot_pr(labels, scores, ax=None, label=None):
    """Precision-recall curve (anomalies positive); the legend gives the AUPR (average precision).

    Chance is the share of anomalies, drawn once per axes.
    """
    ax = _curve_axes(ax, "recall", "precision")
    labels = _to_numpy(labels)
    if not ax.lines:
        share = float(np.mean(labels))
        ax.axhline(share, ls="--", color="grey", lw=1, label=f"chance ({share:.3f})")
    precision, recall, _ = precision_recall_curve(labels, _to_numpy(scores))
    ax.plot(recall, precision, drawstyle="steps-post",
            label=_legend_label(label, "AUPR", metrics.image_aupr(labels, scores)))
    ax.legend(loc="lower left")
    return ax.figure


def plot_pro(masks, maps, fpr_limit=0.3, ax=None, label=None):
    """PRO curve up to ``fpr_limit``; the legend gives the normalised AUPRO.

    Chance (PRO = FPR) is drawn once per axes; its normalised area is fpr_limit / 2.
    """
    ax = _curve_axes(ax, "false-positive rate", "per-region overlap", xlim=(0, fpr_limit))
    if not ax.lines:
        ax.plot([0, fpr_limit], [0, fpr_limit], "--", color="grey", lw=1,
                label=f"chance ({fpr_limit / 2:.3f})")
    fprs, pros = metrics.pro_curve(masks, maps, fpr_limit)
    area = min(1.0, auc(fprs, pros) / fpr_limit)  # = metrics.aupro, without a second pass
    ax.plot(fprs, pros, label=_legend_label(label, "AUPRO", area))
    ax.legend(loc="lower right")
    return ax.figure
