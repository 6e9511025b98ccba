"""Synthetic defects and corruptions.

Every function has the signature ``fn(image, rng, **options) -> (corrupted, mask)``:

- ``image``: float array H×W or H×W×C with values in [0, 1] (it is not modified);
- ``rng``: a ``numpy.random.Generator``, the only source of randomness, so a seed fixes the defect;
- ``corrupted``: a new float32 array of the same shape, clipped to [0, 1];
- ``mask``: a bool array H×W, True where the defect changed the image.

They make the test defects of :class:`adcourse.data.TextureDefects` (with exact masks) and the
training corruptions of the synthetic-corruption chapter.

A mistake in the arguments raises a ``ValueError`` or ``TypeError`` that names it: an image outside
[0, 1], with NaN, channels first or smaller than 4×4 pixels; an ``rng`` that is not a Generator (a
seed: use ``np.random.default_rng(seed)``); a fraction, size or range outside its bounds or given
largest first.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import interpolate, ndimage
from skimage import data as skdata
from skimage import draw


# The smallest image side the defects are drawn on (a Perlin grid, a scratch's curve need a few pixels).
MIN_SIDE = 4


def _as_float_image(image, what: str = "image") -> np.ndarray:
    if hasattr(image, "detach"):  # a torch tensor (on any device)
        image = image.detach().cpu().numpy()
    try:
        array = np.asarray(image, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(f"expected the {what} as an array of numbers, got {type(image).__name__}") from error
    if array.ndim not in (2, 3):
        raise ValueError(f"expected the {what} of shape H×W or H×W×C, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] > 4:
        hint = ": it looks channels-first (C×H×W); use image.transpose(1, 2, 0)" if array.shape[0] <= 4 else ""
        raise ValueError(f"expected the {what} of shape H×W×C with at most 4 channels last, got shape {array.shape}{hint}")
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(f"the {what} of shape {array.shape} is too small: at least {MIN_SIDE}×{MIN_SIDE} pixels")
    if not np.isfinite(array).all():
        raise ValueError(f"the {what} contains NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"expected pixel values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
            "divide 8-bit images by 255 first")
    return array


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator such as np.random.default_rng(0), got {type(rng).__name__}")


def _number(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float between ``low`` and ``high`` (ends open or closed), else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _range(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           integers: bool = False) -> tuple:
    """A ``(smallest, largest)`` pair inside the interval from ``low`` to ``high``, smallest first."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair (smallest, largest), got {value!r}")
    if integers and not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value):
        raise TypeError(f"{name} must be a pair of whole numbers, got {value!r}")
    first, second = (_number(name, v, low, high, low_open=low_open, high_open=high_open) for v in value)
    if first > second:
        raise ValueError(f"{name} must be (smallest, largest), got {value!r}: use {tuple(value)[::-1]}")
    return (int(first), int(second)) if integers else (first, second)


def _positive_pair(name: str, value) -> tuple[int, int]:
    """Two whole numbers of at least 1, in any order (a shape, a grid)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1 for v in value):
        raise ValueError(f"{name} must be two whole numbers of at least 1, got {value!r}")
    return int(value[0]), int(value[1])


def _blend(image: np.ndarray, fill: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha·fill + (1 − alpha)·image``, with an H×W alpha broadcast over the channels."""
    if image.ndim == 3:
        alpha = alpha[..., None]
    return np.clip(alpha * fill + (1 - alpha) * image, 0, 1).astype(np.float32)


def stain(image, rng: np.random.Generator, axis_range=(0.06, 0.2), n_contour=20, jitter=0.1,
          blur=True, noise_std=0.05):
    """Irregular blurred ellipse filled with noisy grey (Collin & De Vleeschouwer, ICPR 2020).

    An ellipse with semi-axes drawn from ``axis_range`` (fractions of the image side), random
    rotation and centre; ``n_contour`` points of its contour are pushed in or out by up to
    ``jitter`` of the ellipse's diagonal and joined by a periodic cubic spline; the inside is filled
    with Gaussian noise around a grey level drawn in [10, 220] / 255; the edge is softened with a
    Gaussian blur of σ = 0.15 × the longest axis. The mask is where the blend weight is ≥ 0.5.
    """
    image = _as_float_image(image)
    _check_rng(rng)
    axis_range = _range("axis_range", axis_range, 0, 1, low_open=True)
    if isinstance(n_contour, (bool, np.bool_)) or not isinstance(n_contour, (int, np.integer)) or n_contour < 4:
        raise ValueError(f"n_contour must be a whole number of at least 4 (a closed cubic spline), got {n_contour!r}")
    _number("jitter", jitter, 0, 1, high_open=True)
    _number("noise_std", noise_std, 0, np.inf)
    h, w = image.shape[:2]
    side = min(h, w)
    axes = rng.uniform(*axis_range, size=2) * side
    centre = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w])
    angle = rng.uniform(0, np.pi)

    t = np.linspace(0, 2 * np.pi, n_contour, endpoint=False)
    radius_jitter = 1 + rng.uniform(-jitter, jitter, n_contour) * np.hypot(*axes) / axes.mean()
    ex, ey = axes[0] * np.cos(t) * radius_jitter, axes[1] * np.sin(t) * radius_jitter
    rows = centre[0] + ex * np.sin(angle) + ey * np.cos(angle)
    cols = centre[1] + ex * np.cos(angle) - ey * np.sin(angle)
    # Periodic cubic spline through the jittered points: a smooth, closed, irregular contour.
    spline, _ = interpolate.splprep([np.append(rows, rows[0]), np.append(cols, cols[0])], s=0, per=True)
    smooth_rows, smooth_cols = interpolate.splev(np.linspace(0, 1, 200), spline)
    alpha = np.zeros((h, w), dtype=np.float32)
    alpha[draw.polygon(smooth_rows, smooth_cols, shape=(h, w))] = 1.0
    if blur:
        alpha = ndimage.gaussian_filter(alpha, sigma=0.15 * axes.max())
        alpha /= max(alpha.max(), 1e-6)

    channels = image.shape[2:] if image.ndim == 3 else ()
    grey = rng.uniform(10, 220, size=channels or 1) / 255
    fill = np.clip(grey + rng.normal(0, noise_std, size=image.shape), 0, 1)
    mask = alpha >= 0.5
    if not mask.any():  # a stain too thin to cover a pixel: keep at least its centre
        mask[int(centre[0]), int(centre[1])] = True
        alpha[mask] = 1.0
    return _blend(image, fill, alpha), mask


def scratch(image, rng: np.random.Generator, width_range=(1, 3)):
    """A thin curved line across part of the image, darker or brighter than its surroundings.

    The curve is a quadratic Bézier between two random points; its intensity is chosen to contrast
    with the local mean so that it is a visible defect on any texture.
    """
    image = _as_float_image(image)
    _check_rng(rng)
    width_range = _range("width_range", width_range, 1, max(image.shape[:2]), integers=True)
    h, w = image.shape[:2]
    start, control, end = rng.uniform([0.1 * h, 0.1 * w], [0.9 * h, 0.9 * w], size=(3, 2))
    t = np.linspace(0, 1, 4 * (h + w))[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end
    mask = np.zeros((h, w), dtype=bool)
    mask[np.clip(curve[:, 0].astype(int), 0, h - 1), np.clip(curve[:, 1].astype(int), 0, w - 1)] = True
    width = int(rng.integers(width_range[0], width_range[1] + 1))
    if width > 1:
        mask = ndimage.binary_dilation(mask, iterations=width - 1)
    local_mean = image[mask].mean()
    level = rng.uniform(0.0, 0.15) if local_mean > 0.5 else rng.uniform(0.85, 1.0)
    return _blend(image, np.full(image.shape, level, np.float32), mask.astype(np.float32)), mask


@functools.lru_cache(maxsize=None)
def texture_photo(name: str) -> np.ndarray:
    """A grayscale texture photograph shipped with scikit-image, as float32 in [0, 1]."""
    if not isinstance(name, str) or name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose one of {sorted(TEXTURES)}")
    photo = getattr(skdata, name)()
    if photo.ndim == 3:
        photo = photo.mean(axis=2)
    photo = photo.astype(np.float32)
    return photo / 255.0 if photo.max() > 1 else photo


# Real photographs of textures shipped inside scikit-image: no network needed.
TEXTURES = ("brick", "grass", "gravel")


def _foreign_source(image: np.ndarray, source, rng: np.random.Generator) -> np.ndarray:
    """A texture different from the image's: ``source`` if given, else a random built-in one."""
    if source is None:
        source = texture_photo(str(rng.choice(TEXTURES)))
    source = _as_float_image(source, "source texture")
    if image.ndim == 3 and source.ndim == 2:
        source = np.repeat(source[..., None], image.shape[2], axis=2)
    if image.ndim == 2 and source.ndim == 3:
        source = source.mean(axis=2)
    return source


def _random_crop(source: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if source.shape[0] < h or source.shape[1] < w:
        raise ValueError(f"the source texture {source.shape[:2]} is smaller than the patch ({h}, {w})")
    top = rng.integers(0, source.shape[0] - h + 1)
    left = rng.integers(0, source.shape[1] - w + 1)
    return source[top:top + h, left:left + w]


def foreign_patch(image, rng: np.random.Generator, source=None, size_range=(0.15, 0.35)):
    """A rectangle of another texture pasted at a random place (side: ``size_range`` of the image)."""
    image = _as_float_image(image)
    _check_rng(rng)
    size_range = _range("size_range", size_range, 0, 1, low_open=True)
    h, w = image.shape[:2]
    ph, pw = (rng.uniform(*size_range, size=2) * (h, w)).astype(int).clip(2)
    top, left = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = _random_crop(_foreign_source(image, source, rng), ph, pw, rng)
    # Match the patch's mean to the image's so that the defect is a change of texture, not of brightness.
    patch = np.clip(patch - patch.mean() + image.mean(), 0, 1)
    corrupted = image.copy()
    corrupted[top:top + ph, left:left + pw] = patch
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + ph, left:left + pw] = True
    return corrupted, mask


def perlin_noise(shape, rng: np.random.Generator, scale=(4, 4)) -> np.ndarray:
    """2-D Perlin (gradient) noise on a ``scale`` grid of random unit gradients, values ≈ [−1, 1]."""
    _check_rng(rng)
    h, w = _positive_pair("shape", shape)
    gy, gx = _positive_pair("scale", scale)
    angles = rng.uniform(0, 2 * np.pi, size=(gy + 1, gx + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, gy, h, endpoint=False)[:, None] * np.ones((1, w))
    x = np.linspace(0, gx, w, endpoint=False)[None, :] * np.ones((h, 1))
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0

    def corner(dy, dx):  # dot product of the corner's gradient with the offset to the pixel
        g = gradients[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3  # noqa: E731 (Perlin's quintic)
    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * np.sqrt(2)


def perlin(image, rng: np.random.Generator, source=None, coverage_range=(0.03, 0.15), opacity_range=(0.6, 1.0)):
    """A Perlin-noise-shaped region filled with another texture (as in DRAEM's simulated anomalies).

    The noise is thresholded at the quantile that leaves ``coverage_range`` of the image inside;
    the region is filled with a crop of another texture blended at a random opacity.
    """
    image = _as_float_image(image)
    _check_rng(rng)
    coverage_range = _range("coverage_range", coverage_range, 0, 1, low_open=True, high_open=True)
    opacity_range = _range("opacity_range", opacity_range, 0, 1, low_open=True)
    h, w = image.shape[:2]
    # A grid as fine as the pixels would make the noise zero everywhere: at most one cell per two pixels.
    scale = tuple(min(int(s), max(1, min(h, w) // 2)) for s in rng.choice([2, 4, 8], size=2))
    noise = perlin_noise((h, w), rng, scale)
    mask = noise > np.quantile(noise, 1 - rng.uniform(*coverage_range))
    if not mask.any():  # a coverage below one pixel: keep the noise's peak
        mask.flat[np.argmax(noise)] = True
    fill = _random_crop(_foreign_source(image, source, rng), h, w, rng)
    alpha = mask * rng.uniform(*opacity_range)
    return _blend(image, fill, alpha.astype(np.float32)), mask


def center_crop(image, rng: np.random.Generator | None = None, fraction=0.5, fill=0.0):
    """Cut out the central square (``fraction`` of each side): the inpainting mask of the SIREN chapter.

    ``rng`` is unused (the cut is always central); it is accepted so that every corruption has the
    same signature. ``fraction`` lies strictly between 0 and 1, and ``fill`` (the value of the cut
    pixels) in [0, 1].
    """
    image = _as_float_image(image)
    if rng is not None:
        _check_rng(rng)
    _number("fraction", fraction, 0, 1, low_open=True, high_open=True)
    _number("fill", fill, 0, 1)
    h, w = image.shape[:2]
    ch, cw = int(round(h * fraction)), int(round(w * fraction))
    if min(ch, cw) < 1:
        raise ValueError(f"fraction={fraction} of an image of {h}×{w} pixels cuts no pixel: use at least "
                         f"{0.5 / min(h, w):.2g}")
    top, left = (h - ch) // 2, (w - cw) // 2
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + ch, left:left + cw] = True
    corrupted = image.copy()
    corrupted[mask] = fill
    return corrupted, mask


def gaussian_noise(image, rng: np.random.Generator, std=0.1):
    """Additive Gaussian noise on every pixel (the mask covers the whole image)."""
    image = _as_float_image(image)
    _check_rng(rng)
    _number("std", std, 0, np.inf, low_open=True, high_open=True)
    corrupted = np.clip(image + rng.normal(0, std, size=image.shape), 0, 1).astype(np.float32)
    return corrupted, np.ones(image.shape[:2], dtype=bool)


def salt_and_pepper(image, rng: np.random.Generator, amount=0.05):
    """A fraction ``amount`` (in (0, 1]) of the pixels set to 0 or 1 at random; at least one pixel."""
    image = _as_float_image(image)
    _check_rng(rng)
    _number("amount", amount, 0, 1, low_open=True)
    mask = rng.random(image.shape[:2]) < amount
    if not mask.any():  # a small image and a small amount: still a defect
        mask.flat[rng.integers(mask.size)] = True
    values = rng.integers(0, 2, size=int(mask.sum())).astype(np.float32)
    corrupted = image.copy()
    corrupted[mask] = values[:, None] if image.ndim == 3 else values  # same value on every channel
    return corrupted, mask


# The defects that make the test split of TextureDefects, drawn in turn.
DEFECTS = {"stain": stain, "scratch": scratch, "foreign_patch": foreign_patch, "perlin": perlin}
