"""Training utilities: device choice, seeding, a plain fit loop, atomic checkpoints."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA, then Apple's MPS, then the CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_generator() -> torch.Generator:
    """A generator for a training's own draws (batch order, initial mixture centres), seeded with the
    training seed: ``torch.initial_seed()``, the seed of the last :func:`seed_everything`. So a
    detector fitted after ``seed_everything(3)`` shuffles its batches as seed 3, and the spread over
    training seeds includes the batch order, not the initial weights alone."""
    return torch.Generator().manual_seed(torch.initial_seed())


def resolve_profile(profile: str = "auto") -> str:
    """``"auto"`` becomes ``"full"`` when CUDA is present and ``"quick"`` otherwise."""
    if profile not in ("auto", "quick", "full"):
        raise ValueError(f"profile must be 'auto', 'quick' or 'full', got {profile!r}")
    if profile == "auto":
        return "full" if torch.cuda.is_available() else "quick"
    return profile


def describe_profile(profile: str = "auto") -> str:
    """The profile a notebook runs, and why: the first thing every chapter prints."""
    resolved = resolve_profile(profile)
    if profile == "auto":
        reason = "CUDA is available" if resolved == "full" else "no CUDA device was found"
        text = f"Profile: {resolved} (PROFILE='auto' and {reason})"
    else:
        text = f"Profile: {resolved} (set explicitly)"
    if resolved == "full" and miniature_active():
        text += (f", in miniature ({MINIATURE_VARIABLE}=1: a few steps on a few images, to test the code; "
                 "its figures mean nothing)")
    return text


# --- the full profile in miniature ---------------------------------------------------------------
# A full run is hours on a GPU, so a crash in its code (a data set's layout, a source protocol, the
# saving of results) would first be met by a reader. With ADCOURSE_MINIATURE=1 the full profile keeps
# its code paths and network sizes but trains for a few steps on a few images: the tests run every
# chapter that way (tests/test_full_profile.py). The rule goes by the setting's name, so one rule
# serves the detectors' settings, the benchmark's data sizes and every chapter's settings table.
MINIATURE_VARIABLE = "ADCOURSE_MINIATURE"
# written into every result of such a run, so that it is never mistaken for a real run's figures
MINIATURE_NOTE = "ADCOURSE_MINIATURE=1: a few steps on a few images; the figures mean nothing"
MINIATURE_COUNTS = {"n_train": 16, "n_test": 16, "train": 16, "test": 16, "validation": 16, "n_digits": 100, "n_patches": 256,
                    "adacos_normal": 8, "adacos_per_defect": 2, "mc_samples": 2, "fit_side": 64,
                    "batch": 4, "batch_size": 4, "n_critic": 1, "n_judge": 64, "n_probe": 16}
# lists whose every entry is another training (classes, fractions, variants): the first two
MINIATURE_FIRST_TWO = {"classes", "digit_classes", "cifar_classes", "coil_objects", "fractions",
                       "torchvision_fractions", "components", "patch_sizes", "live_methods",
                       "live_data", "more_textures", "textures"}


def miniature_active() -> bool:
    """Whether ``ADCOURSE_MINIATURE`` asks for the full profile in miniature."""
    return os.environ.get(MINIATURE_VARIABLE, "0") not in ("", "0")


def _miniature_value(name: str, value):
    if isinstance(value, dict):
        return {key: _miniature_value(key, item) for key, item in value.items()}
    if isinstance(value, bool):
        return False if "download" in name else value  # a test never reaches for the network
    if isinstance(value, int) and name.endswith("epochs"):
        return min(value, 1)
    if isinstance(value, int) and name.endswith("steps"):
        return min(value, 5)
    if isinstance(value, int) and name in MINIATURE_COUNTS:
        return min(value, MINIATURE_COUNTS[name])
    if isinstance(value, list) and name in MINIATURE_FIRST_TWO:
        return value[:2]
    return value


def miniature(settings, profile: str = "full"):
    """``settings`` (a dict, nested dicts included, or a settings dataclass) as they are, or, when
    ``ADCOURSE_MINIATURE=1``, with training lengths cut to a few steps (``*epochs`` to 1, ``*steps`` to
    at most 5), batches and data counts to a few images (:data:`MINIATURE_COUNTS`), lists of separate trainings to
    their first two (:data:`MINIATURE_FIRST_TWO`) and downloads off. Network sizes stay.

    ``profile``: the profile ``settings`` belong to; only the full one is cut (the quick one is small
    already, and its figures are the ones the tests check)."""
    if not miniature_active() or profile != "full":
        return settings
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        fields = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
        return dataclasses.replace(settings, **{name: _miniature_value(name, value) for name, value in fields.items()})
    if isinstance(settings, dict):
        return _miniature_value("", settings)
    raise TypeError(f"miniature() takes a dict or a settings dataclass, got {type(settings).__name__}")


def fit(model: torch.nn.Module, loader: Iterable, loss_fn: Callable, *, epochs: int,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3,
        device: torch.device | str | None = None, amp: bool = True, desc: str = "train",
        progress: bool = True) -> list[float]:
    """Train ``model`` for ``epochs`` passes over ``loader``; return the mean loss of each epoch.

    ``loss_fn(model, batch)`` computes the loss of one batch (moving the batch to the model's
    device is its job, via ``batch_to``), so that any method's objective fits the same loop.
    Mixed precision is used on CUDA when ``amp`` is true. A NaN or infinite loss stops training at
    once with an error that says where it happened.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = []
    # Only an explicit "no" disables the bar here, so that TQDM_DISABLE=1 can silence it in logs.
    bar = tqdm(range(epochs), desc=desc, leave=False, **({} if progress else {"disable": True}))
    for epoch in bar:
        total, count = 0.0, 0
        for step, batch in enumerate(loader):
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    "lower the learning rate, check the inputs for NaN, or clip the gradients")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total, count = total + loss.item(), count + 1
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.4g}")
    model.eval()
    return history


def batch_to(batch: dict, device) -> dict:
    """Move every tensor of a batch dict to ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; when the block ends without an error, the file written
    there replaces ``path`` in one rename, readable by everyone (0644). A reader never sees a
    half-written file, and a failure leaves the old one in place and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, **extra) -> Path:
    """Write the model's weights (and plain ``extra`` values) atomically: temp file, then rename.

    An interrupted save never leaves a truncated checkpoint in place of a good one.
    """
    with atomic_output(path) as tmp:
        torch.save({"state_dict": model.state_dict(), **extra}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, map_location="cpu") -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model`` (``weights_only=True``).

    Returns the extra values that were saved with them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train the model first or check the path")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise RuntimeError(f"{path} is not a readable adcourse checkpoint: {refusal_reason(error)}; "
                           "delete it and train again") from error
    model.load_state_dict(payload.pop("state_dict"))
    return payload


def refusal_reason(error: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line. torch's own message
    advises retrying with ``weights_only=False``, which would run whatever program the file holds:
    that advice is never passed on."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds Python objects other than tensors and plain values (it asks for {found.group(1)}), which "
                "a weights-only load refuses to run: it is not a file of weights, and may be a program")
    if isinstance(error, pickle.UnpicklingError):
        return "it is not a file that torch.save wrote (damaged, cut short, or of another kind)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "weights_only" in first:
        first = ""
    return f"{type(error).__name__}" + (f": {first[:150]}" if first else "")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``; with ``trainable_only``, only those that require a gradient
    (the weights of a frozen backbone are left out)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

