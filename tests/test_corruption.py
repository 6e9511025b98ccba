import numpy as np
import pytest

from adcourse import corruption

IMAGE = np.random.default_rng(0).uniform(0.2, 0.8, size=(64, 64)).astype(np.float32)
FUNCTIONS = [corruption.stain, corruption.scratch, corruption.foreign_patch, corruption.perlin,
             corruption.center_crop, corruption.gaussian_noise, corruption.salt_and_pepper]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(64, 64), (48, 64, 3)])
def test_contract(fn, shape):
    image = np.random.default_rng(1).uniform(0.2, 0.8, size=shape).astype(np.float32)
    before = image.copy()
    out, mask = fn(image, np.random.default_rng(2))
    assert out.shape == image.shape and out.dtype == np.float32
    assert mask.shape == shape[:2] and mask.dtype == bool and mask.any()
    assert 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(image, before)  # the input is never modified
    changed = np.abs(out - image).reshape(*shape[:2], -1).max(axis=-1) > 1e-6
    # Outside the mask the image is (almost) untouched: only a blurred stain's faint halo remains.
    if (~mask).any():
        assert changed[~mask].mean() < (0.25 if fn is corruption.stain else 1e-9)
    assert changed[mask].mean() > 0.5


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_seeded(fn):
    a = fn(IMAGE, np.random.default_rng(7))
    b = fn(IMAGE, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_stain_size_follows_axis_range():
    areas = {r: np.mean([corruption.stain(IMAGE, np.random.default_rng(s), axis_range=r, blur=False)[1].mean()
                         for s in range(20)]) for r in [(0.05, 0.08), (0.2, 0.25)]}
    small, large = areas[(0.05, 0.08)], areas[(0.2, 0.25)]
    assert small < large
    # an ellipse with semi-axes a, b has area πab: check the order of magnitude of the big one
    assert 0.5 * np.pi * 0.2 ** 2 < large < 2 * np.pi * 0.25 ** 2


def test_center_crop_is_central():
    out, mask = corruption.center_crop(IMAGE, fraction=0.5)
    assert mask.sum() == 32 * 32 and mask[16:48, 16:48].all()
    assert (out[mask] == 0).all()


def test_perlin_noise_is_smooth_and_bounded():
    noise = corruption.perlin_noise((64, 64), np.random.default_rng(0), (4, 4))
    assert np.abs(noise).max() <= 1.5
    assert np.abs(np.diff(noise, axis=0)).max() < 0.3  # neighbouring pixels are close


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        corruption.stain(IMAGE * 255, np.random.default_rng(0))
    with pytest.raises(ValueError, match="H×W"):
        corruption.scratch(np.zeros(5), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown texture"):
        corruption.texture_photo("marble")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, float("nan")])
def test_center_crop_refuses_a_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        corruption.center_crop(IMAGE, fraction=fraction)


def test_center_crop_refuses_what_cuts_nothing_and_fills_outside_the_range():
    with pytest.raises(ValueError, match="cuts no pixel"):
        corruption.center_crop(IMAGE, fraction=0.001)
    with pytest.raises(TypeError, match="fraction must be a number"):
        corruption.center_crop(IMAGE, fraction="0.5")
    with pytest.raises(ValueError, match=r"fill must be in \[0, 1\]"):
        corruption.center_crop(IMAGE, fill=255)


@pytest.mark.parametrize("fn, options, error, message", [
    (corruption.stain, dict(axis_range=(0.2, 0.1)), ValueError, r"\(smallest, largest\).*use \(0.1, 0.2\)"),
    (corruption.stain, dict(axis_range=(0, 0.1)), ValueError, r"axis_range must be in \(0, 1\]"),
    (corruption.stain, dict(axis_range=0.1), TypeError, "axis_range must be a pair"),
    (corruption.stain, dict(n_contour=3), ValueError, "n_contour"),
    (corruption.stain, dict(noise_std=-0.1), ValueError, "noise_std"),
    (corruption.scratch, dict(width_range=(0, 2)), ValueError, "width_range"),
    (corruption.scratch, dict(width_range=(1.5, 2)), TypeError, "whole numbers"),
    (corruption.foreign_patch, dict(size_range=(0.2, 1.5)), ValueError, "size_range"),
    (corruption.perlin, dict(coverage_range=(0.5, 1.0)), ValueError, r"coverage_range must be in \(0, 1\)"),
    (corruption.perlin, dict(opacity_range=(0, 0.5)), ValueError, "opacity_range"),
    (corruption.gaussian_noise, dict(std=0), ValueError, "std"),
    (corruption.salt_and_pepper, dict(amount=1.5), ValueError, "amount"),
    (corruption.salt_and_pepper, dict(amount=0), ValueError, "amount"),
])
def test_sizes_and_ranges_out_of_bounds_are_refused(fn, options, error, message):
    with pytest.raises(error, match=message):
        fn(IMAGE, np.random.default_rng(0), **options)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("image, error, message", [
    (np.zeros((3, 64, 64), np.float32), ValueError, r"channels-first.*transpose\(1, 2, 0\)"),
    (np.zeros((3, 3), np.float32), ValueError, "too small"),
    (np.full((16, 16), np.nan, np.float32), ValueError, "NaN"),
    (np.zeros((2, 16, 16, 1), np.float32), ValueError, "H×W"),
    ("an image", TypeError, "array of numbers"),
])
def test_every_function_refuses_images_of_the_wrong_kind(fn, image, error, message):
    with pytest.raises(error, match=message):
        fn(image, np.random.default_rng(0))


@pytest.mark.parametrize("fn", [f for f in FUNCTIONS if f is not corruption.center_crop], ids=lambda f: f.__name__)
def test_a_seed_in_place_of_a_generator_is_refused(fn):
    with pytest.raises(TypeError, match=r"np.random.default_rng"):
        fn(IMAGE, 0)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_small_images_still_get_a_defect(fn):
    small = np.random.default_rng(1).uniform(0.2, 0.8, size=(8, 8)).astype(np.float32)
    assert all(fn(small, np.random.default_rng(seed))[1].any() for seed in range(50))
