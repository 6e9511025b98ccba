"""The protocol every method of the course implements, and the registry the benchmark reads.

A detector is trained on a dataset of normal images (``fit``) and then scores images
(``predict``): one score per image and one anomaly map per image, higher meaning more anomalous::

    detector = create("ae_l2", epochs=5)          # settings: the quick profile's, with epochs=5
    detector.fit(train_dataset, profile="quick")
    image_scores, anomaly_maps = detector.predict(images)   # (N,), (N, H, W)
    detector.save("ae_l2.pt")
    same = load("ae_l2.pt")                       # scores exactly like ``detector``

Every detector keeps its settings in one frozen dataclass (``Settings``), with a quick and a full
instance in ``PROFILES`` beside the class, in the spirit of minGPT's ``get_default_config()``.
Constructor keywords override fields of that dataclass (through :func:`dataclasses.replace`); an
unknown name is an error that names the closest field. ``fit`` resolves the profile into
``detector.settings``; ``predict`` reads only what ``fit`` or :func:`load` left behind.

This module imports no model: each model file imports it and registers its classes with
``@register("name")``; :mod:`adcourse` imports the model files once, which fills the registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import typing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage

from .train import refusal_reason

# name -> (class, the settings that make this variant)
_REGISTRY: dict[str, tuple[type["Detector"], dict[str, Any]]] = {}

SAVE_FORMAT = 1


class NotFittedError(RuntimeError):
    """``predict`` or ``save`` on a detector that was neither fitted nor loaded."""


def register(name: str, **variant):
    """Class decorator: make a detector available to :func:`create` and the benchmark as ``name``.

    ``variant`` fixes settings that define this variant; stack the decorator to register several::

        @register("ae_l2", loss="l2")
        @register("ae_ssim", loss="ssim")
        class AutoencoderDetector(Detector): ...
    """
    def decorator(cls):
        if name in _REGISTRY and not _same_definition(_REGISTRY[name][0], cls):
            taken = _REGISTRY[name][0]
            raise ValueError(f"a detector named {name!r} is already registered, by {taken.__module__}.{taken.__qualname__}; "
                             f"register {cls.__name__} under another name, or first remove the old one with "
                             f"adcourse.detectors.unregister({name!r})")
        if not (isinstance(cls, type) and issubclass(cls, Detector) and dataclasses.is_dataclass(cls.Settings)):
            raise TypeError(f"register({name!r}) decorates a Detector subclass whose Settings is a dataclass, "
                            f"got {getattr(cls, '__name__', cls)!r}")
        _check_setting_names(cls, name, variant)
        _REGISTRY[name] = (cls, dict(variant))
        return cls
    return decorator


def _same_definition(registered: type, cls: type) -> bool:
    """Whether ``cls`` is ``registered`` or its definition run again (a notebook cell re-run): same
    module, same qualified name. Registering it again replaces the old class."""
    return registered is cls or (registered.__module__, registered.__qualname__) == (cls.__module__, cls.__qualname__)


def unregister(name: str) -> None:
    """Remove the detector registered as ``name`` (to register another class under that name)."""
    _lookup(name)
    del _REGISTRY[name]


def available() -> list[str]:
    """Names of every registered detector."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type["Detector"], dict[str, Any]]:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}{hint} Registered methods: {', '.join(available())}")
    return _REGISTRY[name]


def create(name: str, device=None, **overrides) -> "Detector":
    """A new, unfitted detector ``name``; ``overrides`` replace fields of its settings."""
    cls, variant = _lookup(name)
    fixed = {key: value for key, value in overrides.items() if key in variant and value != variant[key]}
    if fixed:
        key = next(iter(fixed))
        others = [n for n, (c, v) in _REGISTRY.items() if c is cls and v.get(key) == fixed[key]]
        hint = f"; use {others[0]!r} instead" if others else ""
        raise ValueError(f"{name} is the variant with {key}={variant[key]!r}; it cannot be changed to {fixed[key]!r}{hint}")
    detector = cls(device=device, method=name, **{**overrides, **variant})
    _check_settings_matter(detector, name, overrides, variant)
    return detector


def _check_settings_matter(detector: "Detector", method: str, overrides: dict, variant: dict) -> None:
    """Refuse an override that changes nothing for this variant (``Settings.unused()``), under both
    profiles: the setting that would make it matter is named."""
    cls = type(detector)
    per_profile = []
    for profile in ("quick", "full"):
        try:
            settings = detector.settings_for(profile)
        except ValueError:  # a value only one profile takes (see _check_setting_values)
            continue
        per_profile.append((settings, settings.unused() if hasattr(settings, "unused") else {}))
    for key, value in overrides.items():
        if key in variant or not per_profile or not all(key in unused for _, unused in per_profile):
            continue
        settings, unused = per_profile[0]
        switch, needed = unused[key]
        have = f"{switch}={getattr(settings, switch)!r}"
        if switch in variant:
            others = [n for n, (c, v) in _REGISTRY.items() if c is cls and v.get(switch) != variant[switch]]
            fix = f"{switch} is fixed by the variant {method}: choose one with {needed}" + \
                  (f" ({', '.join(others)})" if others else "")
        else:
            fix = f"set {needed} too, or leave {key} out"
        raise ValueError(f"{method} setting {key}={value!r} changes nothing: it is read only with {needed}, and this "
                         f"detector has {have}; {fix}")


def load(path: str | os.PathLike, device=None) -> "Detector":
    """A detector saved with :meth:`Detector.save`, ready to ``predict`` on ``device``."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise FileNotFoundError(f"no saved detector at {path}; save one with detector.save({str(path)!r})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable adcourse detector file: {refusal_reason(error)}. "
                         "Save the detector again, or load a file saved by detector.save()") from error
    if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT or "method" not in payload \
            or not isinstance(payload.get("settings"), dict):
        raise ValueError(f"{path} is not a detector saved by adcourse (format {SAVE_FORMAT}); save the detector again")
    cls, variant = _lookup(payload["method"])
    altered = {key: payload["settings"].get(key) for key, value in variant.items() if payload["settings"].get(key) != value}
    if altered:
        key = next(iter(altered))
        raise ValueError(f"{path} says it holds a {payload['method']} detector, whose {key} is {variant[key]!r}, but its "
                         f"settings have {key}={altered[key]!r}: the file was changed after it was saved. "
                         "Save the detector again")
    detector = cls(device=device, method=payload["method"], **payload["settings"])
    detector.settings = detector.settings_for("quick")  # every field is an override: the profile is irrelevant
    detector.input_shape = tuple(payload["input_shape"])
    detector.build(detector.input_shape)
    detector.load_fitted_state(payload["state"])
    return detector.to(detector.device)


def _type_ok(value, expected) -> bool:
    """Whether ``value`` fits the annotation ``expected`` (plain types, unions, Optional, tuples)."""
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_type_ok(value, arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(expected)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(item, args[0]) for item in value)
        if args and origin is tuple:
            return len(value) == len(args) and all(_type_ok(item, arg) for item, arg in zip(value, args))
        return True
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # an annotation this check does not understand (callables, …): trust the caller


def _check_setting_names(cls, method: str, overrides: dict) -> None:
    """Every override must name a field of ``cls.Settings`` and fit its type."""
    known = {field.name: field for field in dataclasses.fields(cls.Settings)}
    hints = typing.get_type_hints(cls.Settings)
    for key, value in overrides.items():
        if key not in known:
            close = closest_settings(key, known)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise TypeError(f"unknown {method} setting {key!r}{hint} Known settings: {', '.join(sorted(known))}")
        if not _type_ok(value, hints[key]):
            raise TypeError(f"{method} setting {key}={value!r} should be of type {_type_name(hints[key])}, "
                            f"not {_describe_type(value)}")
        if not all(math.isfinite(number) for number in _numbers(value)):
            default = getattr(cls.PROFILES.get("quick"), key, None) if cls.PROFILES else None
            example = f" such as {default!r} (the quick profile's)" if default is not None else ""
            raise ValueError(f"{method} setting {key}={value!r} is not finite: give a finite number{example}")


# Names people reach for, grouped by meaning: a misspelt setting is answered with the method's own
# field of the same meaning (fcbigan's training length is ``steps``, not a look-alike such as ``depth``).
_SYNONYMS = (
    {"epochs", "epoch", "n_epochs", "num_epochs", "max_epochs", "steps", "n_steps", "num_steps", "step",
     "iterations", "iters", "n_iter", "max_iter", "gan_steps", "encoder_steps"},
    {"lr", "learning_rate", "lrate", "step_size", "lr_g", "lr_gen"},
    {"batch_size", "batch", "batchsize", "bs", "n_batch"},
    {"latent_dim", "z_dim", "latent", "latent_size", "nz", "code_dim", "code_size", "latent_channels"},
    {"seed", "random_state", "random_seed", "rng"},
    {"smoothing", "sigma", "blur", "gaussian_sigma"},
    {"width", "channels", "base_channels", "n_filters", "filters", "hidden"},
)


def closest_settings(key: str, known) -> list[str]:
    """The fields of ``known`` that ``key`` most likely meant: the same name in another case or
    number, a field of the same meaning (``_SYNONYMS``), else one spelt alike."""
    normal = str(key).lower().replace("-", "_").strip()
    fields = sorted(known)
    same = [f for f in fields if f.lower() in (normal, normal + "s", normal.removesuffix("s"))]
    if same:
        return same[:1]
    for group in _SYNONYMS:
        if normal in group:
            meaning = [f for f in fields if f in group]
            if meaning:
                return meaning
    alike = {f for f in fields if min(len(f), len(normal)) >= 3 and (normal.startswith(f) or f.startswith(normal))}
    alike |= set(difflib.get_close_matches(normal, fields, n=3, cutoff=0.75))
    return sorted(alike, key=lambda f: -difflib.SequenceMatcher(None, normal, f).ratio())[:1]


def _numbers(value) -> list[float]:
    """The floats in a setting's value (itself, or inside a tuple or list)."""
    if isinstance(value, (tuple, list)):
        return [number for item in value for number in _numbers(item)]
    return [float(value)] if isinstance(value, (float, np.floating)) else []


def _describe_type(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {', '.join(type(item).__name__ for item in value) or 'nothing'}"
    return type(value).__name__


def _check_setting_values(detector: "Detector") -> None:
    """Refuse, when the detector is created, an override whose value is out of range (the checks in
    ``Settings.__post_init__``) rather than at ``fit``. A value that only the quick profile refuses
    (a combination with the quick values) is left to ``fit(..., "quick")``: the full profile may take it."""
    try:
        detector.settings_for("quick")
    except ValueError as quick_error:
        try:
            detector.settings_for("full")
        except ValueError:
            raise quick_error from None


def _type_name(annotation) -> str:
    if typing.get_args(annotation):  # tuple[int, ...], int | None: the whole annotation
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class Detector:
    """Base class: ``fit(train_dataset, profile)`` then ``predict(images) -> (scores, maps)``.

    A subclass defines:

    * ``Settings``, a frozen dataclass, and ``PROFILES = {"quick": ..., "full": ...}``, two instances;
    * ``build(input_shape)``: create the networks (untrained) for C×H×W images, from ``self.settings``;
    * ``fit_networks(train_dataset)``: train them, and compute every statistic the scores need;
    * ``score(images)``: the scores and maps of a batch, reading only what ``build`` and
      ``fit_networks`` (or :func:`load`) left behind;
    * ``fitted``: the names of the attributes that hold the fitted state (networks, tensors, numbers),
      saved by :meth:`save`.

    ``Settings`` may define ``unused()``: the settings that its values leave unread, as
    ``{name: (the setting that decides, the value that would make it matter)}``; :func:`create`
    refuses those as overrides when neither profile reads them.

    ``supervised`` says whether ``fit`` needs labelled anomalies in the training set; ``trains`` is
    false for methods that only collect statistics of a frozen, pretrained network.
    ``backbone_name`` says which pretrained network a method ran on (``None``: it uses none).
    ``any_image_size``: ``predict`` accepts another image size than ``fit`` saw (fully convolutional).
    """

    name: str = "detector"
    Settings: type = None
    PROFILES: dict = {}
    fitted: tuple[str, ...] = ()
    supervised: bool = False
    trains: bool = True
    any_image_size: bool = False
    min_train_images: int = 2
    backbone_name: str | None = None

    def __init__(self, device=None, method: str | None = None, **overrides):
        """``device``: where to train and score (default: CUDA when there is one, see
        :func:`adcourse.train.pick_device`); ``overrides``: fields of ``Settings`` that replace the
        profile's. ``method``: the registered name (set by :func:`create`)."""
        from .train import pick_device

        self.name = method or getattr(type(self), "name", type(self).__name__)
        _check_setting_names(type(self), self.name, overrides)
        self.overrides = overrides
        _check_setting_values(self)
        self.device = pick_device(device)
        self.settings = None  # the profile is chosen by fit()
        self.input_shape: tuple[int, int, int] | None = None

    # -- settings ---------------------------------------------------------------------------------
    def settings_for(self, profile: str = "quick"):
        """The settings of ``profile`` (quick/full/auto, see :func:`adcourse.train.resolve_profile`)
        with the constructor's overrides on top."""
        from .train import miniature, resolve_profile

        resolved = resolve_profile(profile)
        settings = dataclasses.replace(self.PROFILES[resolved], **self.overrides)
        return miniature(settings, resolved)

    # -- fit and predict --------------------------------------------------------------------------
    def fit(self, train_dataset, profile: str = "quick", **options) -> "Detector":
        """Train on ``train_dataset`` (items ``{"image": C×H×W tensor in [0, 1], ...}``) with the
        settings of ``profile``; ``options`` go to :meth:`fit_networks`. Every training image is
        checked as it is read (:func:`check_pixels`)."""
        self._check_fit_options(options)
        n = _length(train_dataset, "training set")
        if n < self.min_train_images:
            raise ValueError(f"{self.name} needs at least {self.min_train_images} training images, got {n}; "
                             "pass a training set of normal images")
        first = train_dataset[0]
        if not isinstance(first, dict) or "image" not in first:
            raise TypeError(f"a training set's items must be dicts with an 'image' tensor (C×H×W), got {type(first).__name__}")
        shape = tuple(first["image"].shape)
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"training images must be C×H×W with 1 or 3 channels, got shape {shape}")
        check_pixels(first["image"], "training image 0")
        self.settings = self.settings_for(profile)
        self.input_shape = None
        self.build(shape)
        self.fit_networks(CheckedImages(train_dataset), **options)
        self.input_shape = shape
        return self

    def _check_fit_options(self, options: dict) -> None:
        """Options of ``fit`` are those of :meth:`fit_networks`; a setting given here is a slip."""
        known = {field.name for field in dataclasses.fields(self.Settings)}
        misplaced = [key for key in options if key in known]
        if misplaced:
            given = ", ".join(f"{key}={options[key]!r}" for key in misplaced)
            raise TypeError(f"{given}: settings go to create(), not fit(); write "
                            f"adcourse.detectors.create({self.name!r}, {given}).fit(train_dataset)")
        parameters = inspect.signature(self.fit_networks).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return
        accepted = list(parameters)[1:]  # after the training set
        unknown = [key for key in options if key not in accepted]
        if unknown:
            takes = f"takes only {', '.join(accepted)}" if accepted else "takes no options"
            close = closest_settings(unknown[0], known)
            hint = f"; for the setting {close[0]!r}, pass it to create()" if close else ""
            raise TypeError(f"{self.name}.fit() got the option {unknown[0]!r}, but it {takes} besides the training "
                            f"set and the profile{hint}")

    def predict(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        """``(scores, maps)`` of an N×C×H×W batch in [0, 1]: N image scores and N×H×W anomaly maps."""
        images = self.check_images(images)
        with torch.no_grad():
            return self.score(images)

    def check_images(self, images) -> torch.Tensor:
        """``images`` as a float tensor that this fitted detector can score, or a clear error."""
        if self.input_shape is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load() first")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape N×C×H×W, got {type(images).__name__}")
        if images.dim() == 3:
            raise ValueError(f"images must be a batch N×C×H×W, got shape {tuple(images.shape)}; "
                             "for one image use image[None]")
        if images.dim() != 4 or len(images) == 0:
            raise ValueError(f"images must be a non-empty batch N×C×H×W, got shape {tuple(images.shape)}")
        check_pixels(images, "images")
        channels, height, width = self.input_shape
        if images.shape[1] != channels:
            fix = ("images.mean(1, keepdim=True)" if channels == 1 else "images.expand(-1, 3, -1, -1)")
            raise ValueError(f"{self.name} was fitted on {channels}-channel images of {height}×{width}, got "
                             f"{images.shape[1]} channels (batch {tuple(images.shape)}); convert them, e.g. {fix}")
        if not self.any_image_size and tuple(images.shape[-2:]) != (height, width):
            raise ValueError(f"{self.name} was fitted on images of {height}×{width}, got "
                             f"{images.shape[-2]}×{images.shape[-1]} (batch {tuple(images.shape)}); resize them, "
                             f"e.g. torch.nn.functional.interpolate(images, size=({height}, {width}), mode='bilinear')")
        return images.float()

    def build(self, input_shape: tuple[int, int, int]) -> None:
        raise NotImplementedError

    def fit_networks(self, train_dataset) -> None:
        raise NotImplementedError

    def score(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    # -- save and load ----------------------------------------------------------------------------
    def fitted_state(self) -> dict:
        """What :meth:`save` writes besides the settings: every attribute named in ``fitted`` (a
        network's state dict, a tensor on the CPU, or a plain value)."""
        state = {}
        for key in self.fitted:
            value = getattr(self, key)
            if isinstance(value, torch.nn.Module):
                state[key] = {name: t.detach().cpu() for name, t in value.state_dict().items()}
            elif isinstance(value, torch.Tensor):
                state[key] = value.detach().cpu()
            else:
                state[key] = value
        return state

    def load_fitted_state(self, state: dict) -> None:
        """The inverse of :meth:`fitted_state`, on networks that :meth:`build` has just created."""
        missing = [key for key in self.fitted if key not in state]
        if missing:
            raise ValueError(f"the saved {self.name} detector lacks {missing}; save it again with this version")
        for key in self.fitted:
            current = getattr(self, key, None)
            if isinstance(current, torch.nn.Module):
                current.load_state_dict(state[key])
            else:
                setattr(self, key, state[key])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted detector (settings, weights, statistics) to ``path`` atomically."""
        from .train import atomic_output

        if self.input_shape is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load() before save()")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / (self.name + '.pt')}")
        settings = dataclasses.asdict(self.settings)
        unsaveable = [k for k, v in settings.items() if not isinstance(v, (int, float, str, bool, type(None), tuple, list))]
        if unsaveable:
            raise TypeError(f"{self.name} settings {unsaveable} hold Python objects that a weights-only file "
                            "cannot store; use the named options (strings) instead to save this detector")
        payload = {"format": SAVE_FORMAT, "method": self.name, "settings": settings,
                   "input_shape": list(self.input_shape), "state": self.fitted_state()}
        with atomic_output(path) as tmp:
            torch.save(payload, tmp)
        return path

    # -- the rest ---------------------------------------------------------------------------------
    def model(self) -> torch.nn.Module | None:
        """The network that scores images, for parameter counts and ONNX export."""
        return getattr(self, "network", None)

    def export_graph(self, images: torch.Tensor) -> tuple[torch.nn.Module | None, torch.Tensor]:
        """The network to export to ONNX and an input to trace it with: by default :meth:`model`
        on ``images``. Methods whose networks do not map an image batch to an output on their
        own (several networks, patches) return a :class:`ScoringGraph` instead."""
        return self.model(), images

    @property
    def supervision(self) -> str:
        """What the method needs to be trained, in words (a column of the benchmark)."""
        if self.supervised:
            return "normal images + labelled anomalies"
        return "normal images" if self.trains else "normal images, no training (pretrained features)"

    def to(self, device) -> "Detector":
        """Move a detector to ``device``: every network and tensor it holds, and where ``predict`` works."""
        self.device = torch.device(device)
        for key, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    def __repr__(self) -> str:
        state = "fitted on " + "×".join(map(str, self.input_shape)) if self.input_shape else "not fitted"
        return f"<{type(self).__name__} {self.name!r}, {state}, device {self.device}>"


# Pixels may lie this far outside [0, 1]: float rounding, not a scale. Anything beyond is refused.
PIXEL_TOLERANCE = 1e-4


def check_pixels(images: torch.Tensor, what: str = "images") -> None:
    """Refuse images that are not finite floats in [0, 1] (within :data:`PIXEL_TOLERANCE`, for
    rounding), with the range found and the likely fix: a 0-255 or 0-65535 scale, a [−1, 1] one,
    values pushed slightly outside by noise or resampling (clamp them), or anything else."""
    if not images.is_floating_point():
        raise TypeError(f"{what} must be floats in [0, 1], got {images.dtype}; divide by 255 (uint8) first")
    finite = torch.isfinite(images)
    if not finite.all():
        bad = int((~finite).sum())
        raise ValueError(f"{what}: {bad} NaN or infinite value{'s' if bad > 1 else ''} (of {images.numel()}); "
                         "pixels must be finite numbers in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if low >= -PIXEL_TOLERANCE and high <= 1 + PIXEL_TOLERANCE:
        return
    found = f"{what}: values from {low:.6g} to {high:.6g}, but the detectors read pixels in [0, 1]"
    if low >= -0.2 and high <= 1.2:
        fix = "they lie slightly outside, as after added noise or bicubic resizing: clamp them with images.clamp(0, 1)"
    elif low >= -PIXEL_TOLERANCE and 1 < high <= 255:
        fix = "they look like 0-255 pixels: divide them by 255"
    elif low >= -PIXEL_TOLERANCE and 255 < high <= 65535:
        fix = "they look like 16-bit pixels: divide them by 65535"
    elif -1 - PIXEL_TOLERANCE <= low < 0 and high <= 1 + PIXEL_TOLERANCE:
        fix = "they look like pixels in [-1, 1]: map them with (images + 1) / 2"
    else:
        fix = ("rescale them, e.g. (images - images.min()) / (images.max() - images.min()); images normalised with "
               "ImageNet's mean and std must be un-normalised first (the detectors normalise for themselves)")
    raise ValueError(f"{found}; {fix}")


class CheckedImages(torch.utils.data.Dataset):
    """``dataset`` whose items' images are checked with :func:`check_pixels` as they are read, so that
    no training image on the wrong scale goes unnoticed, at no extra pass over the data. Other
    attributes are the dataset's own."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if isinstance(item, dict) and isinstance(item.get("image"), torch.Tensor):
            check_pixels(item["image"], f"training image {index}")
        return item

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _length(dataset, what: str) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise TypeError(f"the {what} must be a dataset with len() and [i] (e.g. adcourse.data.TextureDefects), "
                        f"got {type(dataset).__name__}") from None


class ScoringGraph(torch.nn.Module):
    """``forward(x) = score(x, *networks)``: the networks of a method joined into one graph for export."""

    def __init__(self, score: Callable, *networks: torch.nn.Module):
        super().__init__()
        self.score = score
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor):
        return self.score(x, *self.networks)


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each N×H×W anomaly map: single noisy pixels should not decide a score."""
    return np.stack([ndimage.gaussian_filter(m, sigma) for m in maps]) if sigma > 0 else maps
