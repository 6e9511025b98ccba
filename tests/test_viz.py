import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adcourse import metrics, viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scored_images():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(10)]
    return labels, labels + rng.normal(0, 0.8, 30)


@pytest.fixture
def scored_pixels():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 3:8] = masks[1, 10:14, 10:12] = True
    return masks, masks + rng.normal(0, 0.7, masks.shape)


def test_show_grid_grey_and_colour():
    images = torch.rand(5, 1, 8, 8)
    fig = viz.show_grid(images, titles=list("abcde"), nrow=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 5  # 2×3 grid, the spare axes removed
    assert [ax.get_title() for ax in fig.axes] == list("abcde")
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), images[4, 0])

    fig = viz.show_grid(np.random.default_rng(0).random((2, 3, 8, 6)))
    assert len(fig.axes) == 2 and fig.axes[0].images[0].get_array().shape == (8, 6, 3)


def test_show_grid_rejects_wrong_channels():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        viz.show_grid(np.zeros((2, 4, 8, 8)))


def test_reconstruction_grid_rows_and_residual():
    images, reconstructions = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    fig = viz.reconstruction_grid(images, reconstructions, n=4)
    axes = np.array(fig.axes).reshape(3, 4)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["input", "reconstruction", "|residual|"]
    expected = (images[1] - reconstructions[1]).abs().mean(0)
    np.testing.assert_allclose(axes[2, 1].images[0].get_array(), expected, rtol=1e-6)

    given = torch.rand(6, 1, 8, 8)
    fig = viz.reconstruction_grid(images, reconstructions, residuals=given, n=8)
    assert len(fig.axes) == 18
    np.testing.assert_allclose(fig.axes[-1].images[0].get_array(), given[5, 0])


def test_overlay_heatmap_draws_image_heat_and_outline():
    image, mask = torch.rand(3, 32, 32), torch.zeros(1, 32, 32)
    mask[0, 8:16, 8:20] = 1
    fig = viz.overlay_heatmap(image, torch.rand(8, 8), mask=mask)  # low-resolution heat map
    (ax,) = fig.axes
    assert len(ax.images) == 2 and ax.images[1].get_extent() == [-0.5, 31.5, 31.5, -0.5]
    assert len(ax.collections) == 1  # the mask's contour

    fig, axes = plt.subplots(1, 2)
    assert viz.overlay_heatmap(image[0], torch.rand(32, 32), ax=axes[1]) is fig
    assert len(axes[1].images) == 2 and not axes[1].collections and not axes[0].images


def test_overlay_heatmap_rejects_mask_of_other_size():
    with pytest.raises(ValueError, match="mask"):
        viz.overlay_heatmap(np.zeros((16, 16)), np.zeros((16, 16)), mask=np.zeros((8, 8)))


def legend_texts(fig):
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_plot_roc_and_pr_show_their_areas(scored_images):
    labels, scores = scored_images
    fig = viz.plot_roc(labels, scores, label="AE")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2  # chance + curve
    assert legend_texts(fig)[1] == f"AE (AUROC = {metrics.image_auroc(labels, scores):.3f})"

    fig = viz.plot_pr(labels, scores)
    assert len(fig.axes[0].lines) == 2
    assert legend_texts(fig) == ["chance (0.333)", f"AUPR = {metrics.image_aupr(labels, scores):.3f}"]


def test_plot_pro_shows_aupro_and_shares_axes(scored_pixels):
    masks, maps = scored_pixels
    fig = viz.plot_pro(masks, maps, label="A")
    ax = fig.axes[0]
    viz.plot_pro(masks, -maps, ax=ax, label="B")
    assert len(fig.axes) == 1 and len(ax.lines) == 3  # chance drawn once, two curves
    assert ax.get_xlim() == (0, 0.3)
    assert legend_texts(fig) == ["chance (0.150)", f"A (AUPRO = {metrics.aupro(masks, maps):.3f})",
                                 f"B (AUPRO = {metrics.aupro(masks, -maps):.3f})"]
    np.testing.assert_allclose(ax.lines[1].get_xydata().T, metrics.pro_curve(masks, maps))
