"""The benchmark: every method trained and evaluated on the same data, in one table.

    python -m adcourse.bench --methods ae_l2,ae_ssim --data textures:brick --profile quick --seeds 0,1,2 --out results.json

``--data`` names a dataset and its part: ``textures:brick``, ``digits:3`` (normal class 3),
``mvtec:bottle``, ``btad:01``, ``mnist:0``, ``fashionmnist:0``, ``kmnist:0``, ``cifar10:0``, or
``folder:<path>``, a folder of one's own in MVTec AD's layout (``train/good``, ``test/good``,
``test/<defect>``, optional masks in ``ground_truth/<defect>/<stem>_mask.png``; see
:class:`adcourse.data.MVTecLayoutFolder`). ``--seeds 0,1,2`` runs every method once per seed, the
data drawn with that seed too (``--seed 3`` is the same as ``--seeds 3``; the default is seed 0).
``--set ae_ssim.epochs=30`` changes one setting of one method's profile (repeatable; recorded in
the file, so runs with other settings are never mixed). ``--data-seed 0`` draws the data once, with seed 0, for every training seed: the spread over the
seeds is then the training's alone (initial weights, batch order, noise), where without it the
spread is that of the data draw and the training together.

``--out results.json`` is written after every finished (method, seed), with a Markdown table beside
it (``results.md``: mean ± standard deviation over the seeds, then image AUROC per defect type).
Started again with the same ``--out``, a run keeps every finished (method, seed) and runs only the
rest: an interrupted run resumes, another ``--methods`` list adds its methods to the file, and more
``--seeds`` (``0,1,2`` on a file of seed 0) add the missing seeds to every method. A file made with
other ``--data`` or ``--profile``, or holding a seed this run does not name, is refused, never
overwritten, and so is a file that is not such a results file. The JSON::

    {"data": "textures:brick", "profile": "quick", "seeds": [0, 1, 2],
     "data_seed": null,                                 # null: each seed draws its own data; a number: one draw
     "device": ..., "torch": ..., "command": ...,       # of the latest run (each row has its own device)
     "date": ..., "wall_seconds": ...,                  # the latest write; the seconds of every row together
     "results": {
       "ae_l2": {
         "image_auroc": 0.91, "image_aupr": ..., "best_tpr": ..., "best_tnr": ...,
         "pixel_auroc": ..., "aupro": ...,               # mean over the seeds; None: not measured
         "per_defect": {"perlin": 0.62, "scratch": 0.97, ...},
                                                         # image AUROC of each defect type against every
                                                         # normal test image, mean (absent for digits)
         "std": {"image_auroc": 0.01, ..., "per_defect": {...}},
                                                         # sample standard deviation over the seeds
                                                         # (None with a single seed)
         "parameters": ..., "train_seconds": ..., "cpu_ms_per_image": ..., "gpu_ms_per_image": ...,
         "gpu_fp16_ms_per_image": ..., "peak_memory_mb": ..., "onnx_mb": ..., "wall_seconds": ...,
                                                         # cost, mean over the seeds
         "backbone": "...",                              # the pretrained network that ran; None: none
         "supervised": false, "supervision": "normal images",
         "seeds": {"0": {...}, "1": {...}, "2": {...}}   # each seed's own row: the figures above and its device
       },
       "capsnet": {"skipped": "why", "supervised": true}
     }}

A method whose seeds are not all finished holds only ``seeds`` until they are.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import difflib
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from . import detectors, metrics
from .data import (BTAD, MVTecAD, MVTecLayoutFolder, OneClassDigits, TextureDefects, TorchvisionOneClass,
                   TORCHVISION_SETS, DatasetError)
from .data.folder import VALIDATION
from .train import (MINIATURE_NOTE, count_parameters, miniature, miniature_active, pick_device, resolve_profile,
                    seed_everything, write_text_atomic)

# Built-in data sizes per profile: quick keeps a 2-core CPU busy for about a minute per method.
TEXTURE_SIZES = {"quick": dict(train=256, test=128), "full": dict(train=2048, test=512)}
REAL_IMAGE_SIZE = {"quick": 128, "full": 256}


# Share of labelled anomalies in the training set of supervised methods (the capsule chapter's 10 %).
SUPERVISED_ANOMALY_FRACTION = 0.1

# Data whose images do not depend on the seed: loaded once for every seed of a run.
UNSEEDED_KINDS = ("mvtec", "btad", "folder")


# Normal images held out of training in every benchmark run, to fix the threshold a factory would
# use (metrics.normal_threshold on them alone): the textures' band of rows above the test rows, a share
# of the training images elsewhere (a folder's own validation/good/ when it has one).
VALIDATION_ROWS = 0.15
VALIDATION_SIZES = {"quick": 64, "full": 256}
VALIDATION_FRACTION = {"digits": 0.2, "mvtec": 0.1, "btad": 0.1, "folder": 0.1, "torchvision": 0.1}


class Splits(NamedTuple):
    """The datasets of one benchmark run; ``validation`` is None when none is held out."""
    train: Any
    validation: Any
    test: Any


def load_splits(spec: str, profile: str = "quick", seed: int = 0, anomaly_fraction: float = 0.0,
                validation: bool = True) -> Splits:
    """Training, normal validation and test sets for a ``kind:part`` spec such as ``textures:brick``.

    ``validation``: hold out normal images apart from training and test (see ``VALIDATION_ROWS``
    and ``VALIDATION_FRACTION``); with ``False`` training keeps them and ``validation`` is None.
    ``anomaly_fraction`` > 0 mixes labelled anomalies into the training set (for supervised
    methods); only the digit sets support it, others raise ``ValueError``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"--data must be a 'kind:part' string such as textures:brick, got {spec!r}")
    kind, _, part = spec.partition(":")
    kind = kind.lower()
    if not part:
        raise ValueError(f"--data {spec!r} needs a part after a colon, e.g. textures:brick, digits:3, mvtec:bottle, "
                         "folder:path/to/images")
    profile = resolve_profile(profile)
    if anomaly_fraction and kind != "digits":
        raise ValueError(f"--data {spec!r} has no labelled anomalies for training; supervised methods run on digits:<class>")
    names = {name.lower(): name for name in TORCHVISION_SETS}
    if kind not in ("textures", "digits", "mvtec", "btad", "folder", *names):
        raise ValueError(f"unknown dataset kind {kind!r} in --data {spec!r}; use one of "
                         f"textures, digits, mvtec, btad, folder, {', '.join(names)}")
    fraction = VALIDATION_FRACTION["torchvision" if kind in names else kind] if validation and kind != "textures" else 0.0

    def make(split: str):
        if kind == "textures":
            n = miniature({**TEXTURE_SIZES[profile], "validation": VALIDATION_SIZES[profile]}, profile)
            return TextureDefects(part, split, n=n[split], seed=seed, validation_rows=VALIDATION_ROWS if validation else 0.0)
        if kind == "digits":
            return OneClassDigits(_class_index(spec, part), split, anomaly_fraction if split == "train" else 0.0,
                                  image_size=32, seed=seed, validation_fraction=fraction)
        size = REAL_IMAGE_SIZE[profile]
        if kind == "folder":
            return MVTecLayoutFolder(part, split, image_size=size, validation_fraction=fraction)
        if kind in ("mvtec", "btad"):
            loader = MVTecAD if kind == "mvtec" else BTAD
            return loader(None, part, split, image_size=size, validation_fraction=fraction)
        # even sides for the convolutional models; MNIST's 28 is up-sampled
        return TorchvisionOneClass(names[kind], None, _class_index(spec, part), split, image_size=32, seed=seed,
                                   validation_fraction=fraction)

    return Splits(make("train"), make(VALIDATION) if validation else None, make("test"))


def load_data(spec: str, profile: str = "quick", seed: int = 0, anomaly_fraction: float = 0.0):
    """``(train_dataset, test_dataset)`` for a ``kind:part`` spec, nothing held out of training
    (:func:`load_splits` with ``validation=False``)."""
    splits = load_splits(spec, profile, seed, anomaly_fraction, validation=False)
    return splits.train, splits.test


def _class_index(spec: str, part: str) -> int:
    if not part.isdigit() or not 0 <= int(part) <= 9:
        raise ValueError(f"--data {spec!r}: the normal class must be a digit 0–9")
    return int(part)


def stack(dataset) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All images, labels and masks of a dataset as one batch."""
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    labels = np.array([item["label"] for item in items])
    masks = torch.stack([item["mask"] for item in items])[:, 0].numpy()
    return images, labels, masks


def defect_types(dataset) -> np.ndarray | None:
    """Every test image's defect type (``"good"`` for normal ones), or None for a set without types."""
    types = getattr(dataset, "defect_types", None)
    return None if types is None else np.asarray(types, dtype=str)


def check_seeds(seed) -> list[int]:
    """One seed or several as a sorted list of distinct ints of at least 0."""
    seeds = [seed] if _is_int(seed) else list(seed) if isinstance(seed, Sequence) and not isinstance(seed, str) else None
    if not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be whole numbers of at least 0, such as 0 or [0, 1, 2]; got {seed!r}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds {list(seeds)} name a seed twice: give each once")
    return sorted(int(s) for s in seeds)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _return_freed_memory_to_the_system() -> None:
    """glibc keeps freed memory for reuse, so a method that runs after a bigger one would not grow
    the resident set at all; ``malloc_trim`` hands the freed pages back first. Best effort: other
    C libraries simply skip it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of what runs inside ``with PeakMemory(device) as peak:``, in MB, as ``peak.mb``.

    On CUDA: the allocator's peak above what was allocated on entry. On a CPU: the process's resident
    set, sampled every 5 ms by a background thread, minus what it was on entry (after freed memory
    is handed back), so each method of a run gets its own figure — the process-wide maximum of
    ``getrusage`` never goes down. The CPU figure is approximate (to some ten MB: memory that an
    earlier method left to the allocator can be reused); ``None`` where ``/proc`` is missing.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        _return_freed_memory_to_the_system()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self._rss() is not None:
            self._start = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2 ** 20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.mb = max(self._peak, self._rss()) / 2 ** 20 - self._start / 2 ** 20


def latency_ms(detector, images: torch.Tensor, half: bool = False, repeats: int = 3) -> float:
    """Median milliseconds per image of ``detector.predict`` on ``images`` (after one warm-up call),
    in fp32 or, with ``half``, under CUDA's fp16 autocast."""
    device = detector.device
    context = (torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext())
    times = []
    with context:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            detector.predict(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[1:])) / len(images)


@contextlib.contextmanager
def _silenced_stdout():
    """Send file descriptor 1 to /dev/null: when an export fails, the TorchScript exporter's C++
    logger (always on in this PyTorch, a bug of its own) prints the whole graph there."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def onnx_size_mb(module: torch.nn.Module | None, example: torch.Tensor) -> tuple[float | None, str | None]:
    """``(size in MB, None)`` of ``module`` exported to ONNX with ``example`` as input, or
    ``(None, why)`` when it has no single-image-batch forward that the exporter can trace."""
    if module is None:
        return None, "no network to export"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        try:
            with warnings.catch_warnings(), _silenced_stdout():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter: the newer one needs onnxscript, which the course
                # does not install.
                torch.onnx.export(module.eval(), (example,), str(path), dynamo=False)
        except Exception as error:  # an exporter failure is a result to report, not a crash
            return None, f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        return path.stat().st_size / 2 ** 20, None


def evaluate(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray, defects=None,
             validation_scores: np.ndarray | None = None, validation_maps: np.ndarray | None = None,
             aupro_limits: tuple[float, ...] = (0.3,)) -> dict:
    """Every metric of chapter 1; pixel metrics only where the test set has defect masks.

    ``best_tpr``/``best_tnr`` are the oracle's operating point (its threshold chosen on the test set).
    Given the scores of normal validation images, also what a threshold fixed on them alone gives
    (mean + 3 standard deviations, MVTec AD 2's rule): ``val_tpr``, ``val_tnr``, ``val_f1`` of the
    test images, and from the validation maps' pixels ``segf1`` with ``seg_precision`` and
    ``seg_recall``. AUPRO is integrated up to each false-positive rate of ``aupro_limits``: ``aupro``
    for 0.3, ``aupro_<limit>`` for the others (the benchmark asks for 0.3 and 0.05). With
    ``defects`` (each image's defect type, ``"good"`` for normal ones), also ``per_defect``: the image
    AUROC of each defect type's anomalies against every normal image. A figure asked for that cannot
    be measured (no masks) is None."""
    best = metrics.best_tpr_tnr(labels, scores)
    aupro_keys = {limit: "aupro" if limit == 0.3 else f"aupro_{limit:g}" for limit in aupro_limits}
    result = {"image_auroc": metrics.image_auroc(labels, scores), "image_aupr": metrics.image_aupr(labels, scores),
              "best_tpr": best["tpr"], "best_tnr": best["tnr"], "pixel_auroc": None, **dict.fromkeys(aupro_keys.values())}
    if validation_scores is not None:
        point = metrics.operating_point(labels, scores, metrics.normal_threshold(validation_scores))
        result.update(val_tpr=point["tpr"], val_tnr=point["tnr"], val_f1=point["f1"])
    if validation_maps is not None:
        result.update(dict.fromkeys(("segf1", "seg_precision", "seg_recall")))
    if masks.any() and maps is not None:
        if maps.shape != masks.shape:
            raise ValueError(f"anomaly maps of shape {maps.shape} do not match the masks {masks.shape}")
        result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
        for limit, key in aupro_keys.items():
            result[key] = metrics.aupro(masks, maps, fpr_limit=limit)
        if validation_maps is not None:
            pixels = metrics.segmentation_f1(masks, maps, metrics.normal_threshold(validation_maps))
            result.update(segf1=pixels["f1"], seg_precision=pixels["precision"], seg_recall=pixels["recall"])
    if defects is not None:
        labels, scores, defects = np.asarray(labels), np.asarray(scores), np.asarray(defects)
        if len(defects) != len(labels):
            raise ValueError(f"{len(defects)} defect types for {len(labels)} test images")
        normal = labels == 0
        result["per_defect"] = {str(kind): metrics.image_auroc(labels[normal | (defects == kind)],
                                                               scores[normal | (defects == kind)])
                                for kind in sorted(set(defects[labels == 1]))}
    return result


# The false-positive limits of every AUPRO in a benchmark row: 0.3 (MVTec AD) and 0.05 (MVTec AD 2).
AUPRO_LIMITS = (0.3, 0.05)


# Images timed on the CPU after a GPU run (the whole test set can take long there).
CPU_LATENCY_IMAGES = 32


def run_method(name: str, train, test_batch, profile: str, seed: int, device=None, defects=None,
               overrides: dict | None = None, validation_images: torch.Tensor | None = None) -> dict:
    """Train one method (with ``overrides`` of its settings), score the test set (and the normal
    ``validation_images``, for the thresholds a factory would use) and evaluate (per defect type too,
    given ``defects``); then time it where it can run (CPU, and on a GPU in fp32 and fp16) and export
    its network to ONNX."""
    images, labels, masks = test_batch
    seed_everything(seed)
    dev = pick_device(device)
    detector = detectors.create(name, device=dev, **(overrides or {}))
    with PeakMemory(dev) as peak:
        start = time.perf_counter()
        detector.fit(train, profile=profile)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores, maps = detector.predict(images)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        inference_ms = 1000 * (time.perf_counter() - start) / len(images)
        validation_scores, validation_maps = (None, None) if validation_images is None else \
            detector.predict(validation_images)
    try:
        quality = evaluate(labels, np.asarray(scores), masks, None if maps is None else np.asarray(maps), defects,
                           None if validation_scores is None else np.asarray(validation_scores),
                           None if validation_maps is None else np.asarray(validation_maps), AUPRO_LIMITS)
    except ValueError as error:
        raise ValueError(f"{name}, seed {seed}: {error}") from error
    row = {
        **quality,
        "parameters": count_parameters(detector.model()) if detector.model() is not None else 0,
        "train_seconds": train_seconds,
        "inference_ms_per_image": inference_ms,
        "cpu_ms_per_image": None, "gpu_ms_per_image": None, "gpu_fp16_ms_per_image": None,
        "peak_memory_mb": peak.mb,
        "backbone": getattr(detector, "backbone_name", None),
        "supervised": detector.supervised,
        "supervision": detector.supervision,
        "device": describe_device(dev),
    }
    if overrides:
        row["overrides"] = dict(overrides)
    if dev.type == "cuda":
        row["gpu_ms_per_image"] = inference_ms
        row["gpu_fp16_ms_per_image"] = _guarded(lambda: latency_ms(detector, images, half=True), row, "gpu_fp16")
        row["cpu_ms_per_image"] = _guarded(lambda: latency_ms(detector.to("cpu"), images[:CPU_LATENCY_IMAGES],
                                                              repeats=1), row, "cpu")
    elif dev.type == "cpu":
        row["cpu_ms_per_image"] = inference_ms
    row["onnx_mb"], why = onnx_size_mb(*detector.export_graph(images[:1].to(detector.device)))
    if why:
        row["onnx_error"] = why
    return row


def _guarded(measure, row: dict, what: str):
    """Run one timing; a failure (e.g. an op without fp16 support) is noted in the row, not raised."""
    try:
        return measure()
    except Exception as error:
        row[f"{what}_error"] = f"{type(error).__name__}: {str(error)[:120]}"
        return None


# the first four are measured on every run; the rest where the run has them (validation images, masks)
QUALITY = ("image_auroc", "image_aupr", "best_tpr", "best_tnr", "val_tpr", "val_tnr", "val_f1", "pixel_auroc",
           "aupro", "aupro_0.05", "segf1", "seg_precision", "seg_recall")
COST = ("parameters", "train_seconds", "inference_ms_per_image", "cpu_ms_per_image", "gpu_ms_per_image",
        "gpu_fp16_ms_per_image", "peak_memory_mb", "onnx_mb", "wall_seconds")


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; None where a run did not measure it, std None for one run."""
    if not values or any(value is None for value in values):
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def summarize(rows: dict[str, dict]) -> dict:
    """A method's entry from its rows per seed (``{"0": row, ...}``): the mean of every figure, the
    standard deviation of the quality figures (``std``), what the method is, and the rows themselves."""
    runs = list(rows.values())
    entry, spread = {}, {}
    for key in QUALITY:
        entry[key], spread[key] = _mean_std([run.get(key) for run in runs])
    if any("per_defect" in run for run in runs):
        kinds = sorted(set().union(*(run.get("per_defect", {}) for run in runs)))
        pairs = {kind: _mean_std([run.get("per_defect", {}).get(kind) for run in runs]) for kind in kinds}
        entry["per_defect"] = {kind: mean for kind, (mean, _) in pairs.items()}
        spread["per_defect"] = {kind: deviation for kind, (_, deviation) in pairs.items()}
    entry["std"] = spread
    for key in COST:
        entry[key] = _mean_std([run.get(key) for run in runs])[0]
    if entry["parameters"] is not None:
        entry["parameters"] = round(entry["parameters"])
    backbones = sorted({str(run["backbone"]) for run in runs if run.get("backbone") is not None})
    entry["backbone"] = " / ".join(backbones) if backbones else None
    entry.update({key: runs[0][key] for key in ("supervised", "supervision") if key in runs[0]})
    entry.update({key: value for key, value in runs[0].items() if key.endswith("_error") or key == "overrides"})
    entry["seeds"] = rows
    return entry


COLUMNS = [("backbone", "backbone", ""), ("image_auroc", "image AUROC", ".3f"), ("image_aupr", "AUPR", ".3f"),
           ("best_tpr", "oracle TPR", ".3f"), ("best_tnr", "oracle TNR", ".3f"), ("val_tpr", "val. TPR", ".3f"),
           ("val_tnr", "val. TNR", ".3f"), ("val_f1", "val. F1", ".3f"), ("pixel_auroc", "pixel AUROC", ".3f"),
           ("aupro", "AU-PRO@0.3", ".3f"), ("aupro_0.05", "AU-PRO@0.05", ".3f"), ("segf1", "SegF1", ".3f"),
           ("parameters", "parameters", ","), ("train_seconds", "train s", ".1f"),
           ("cpu_ms_per_image", "CPU ms / image", ".2f"), ("gpu_ms_per_image", "GPU ms / image", ".2f"),
           ("gpu_fp16_ms_per_image", "GPU fp16 ms / image", ".2f"), ("peak_memory_mb", "peak MB", ".0f"),
           ("onnx_mb", "ONNX MB", ".1f"), ("supervision", "needs", "")]


def _cell(value, deviation, fmt: str) -> str:
    if value is None:
        return "—"
    return format(value, fmt) + ("" if deviation is None else f" ± {format(deviation, fmt)}")


def _unfinished(row: dict) -> bool:
    """An entry whose seeds are not all done yet holds only its rows per seed."""
    return "skipped" not in row and "image_auroc" not in row


def markdown_table(report: dict) -> str:
    """The results as Markdown: one row per method (quality figures as mean ± standard deviation over
    the seeds), then the image AUROC per defect type where the test set has types."""
    header = "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in report["results"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |")
        elif _unfinished(row):
            lines.append(f"| {name} | unfinished: {len(row.get('seeds', {}))} of {len(report.get('seeds', []))} seeds "
                         "done; run the same command again to finish |")
        else:
            spread = row.get("std", {})
            lines.append(f"| {name} | " + " | ".join(_cell(row.get(key), spread.get(key), fmt)
                                                    for key, _, fmt in COLUMNS) + " |")
    lines += ["", "Oracle TPR/TNR: the best pair over every threshold of the test set (chosen with its labels). "
              "Val.: at the threshold fixed on normal validation images alone (mean + 3 standard deviations of "
              "their scores; for SegF1, of their pixels), as a factory would. AU-PRO@L: the area under the PRO "
              "curve up to a false-positive rate of L, divided by L."]
    typed = {name: row for name, row in report["results"].items() if row.get("per_defect")}
    if typed:
        kinds = sorted(set().union(*(row["per_defect"] for row in typed.values())))
        lines += ["", "Image AUROC per defect type (each type's anomalies against every normal test image):", "",
                  "| method | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
        for name, row in typed.items():
            spread = row.get("std", {}).get("per_defect", {})
            lines.append(f"| {name} | " + " | ".join(_cell(row["per_defect"].get(kind), spread.get(kind), ".3f")
                                                    for kind in kinds) + " |")
    return "\n".join(lines) + "\n"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def check_methods(methods) -> list[str]:
    """Registered method names, each once, in the order given (``"all"``: every one); a clear error
    for anything else."""
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, Sequence) or not all(isinstance(name, str) for name in methods):
        raise ValueError(f"methods must be a list of method names, got {methods!r}")
    methods = list(dict.fromkeys(name.strip() for name in methods if name.strip()))
    known = detectors.available()
    if methods == ["all"]:
        return known
    if not methods:
        raise ValueError(f"no method given; name one or more, comma-separated, or 'all': {', '.join(known)}")
    unknown = [name for name in methods if name not in known]
    if unknown:
        closest = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        hints = [f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") for name, close in closest.items()]
        raise ValueError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                         f"registered methods: {', '.join(known)}")
    return methods


def check_overrides(overrides, methods: list[str]) -> dict[str, dict]:
    """``{method: {setting: value}}`` for methods of this run, each accepted by the method itself."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict) or not all(isinstance(value, dict) for value in overrides.values()):
        raise ValueError(f"overrides must map method names to settings, such as {{'ae_l2': {{'epochs': 1}}}}; "
                         f"got {overrides!r}")
    for name, settings in overrides.items():
        if name not in methods:
            raise ValueError(f"overrides name {name!r}, which this run does not include (methods: {', '.join(methods)})")
        try:
            detectors.create(name, device="cpu", **settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"overrides for {name}: {error}") from error
    return {name: dict(settings) for name, settings in overrides.items() if settings}


def check_device(device) -> None:
    """``device`` (None: the best available) must name a device this machine has."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"--device {device!r} is not a device: use cuda, mps or cpu") from error
    mps = getattr(torch.backends, "mps", None)
    if (dev.type == "cuda" and not torch.cuda.is_available()) or \
            (dev.type == "mps" and not (mps is not None and mps.is_available())):
        raise ValueError(f"--device {device}: this machine has no {dev.type.upper()} device; use cpu")


def check_out(out) -> Path | None:
    """``--out`` as a Path: a JSON file name, not a folder, not the ``.md`` table's own name."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ValueError(f"--out must be a file name such as results.json, got {out!r}")
    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name for the results, such as {out / 'results.json'}")
    if out.suffix.lower() == ".md":
        raise ValueError(f"--out {out} ends in .md, the name of the Markdown table written beside the JSON; "
                         f"use {out.with_suffix('.json')}")
    return out


def describe_settings(settings: dict) -> str:
    """The settings of a results file in words, as its refusals name them."""
    seeds = settings.get("seeds")
    seeds = ",".join(str(s) for s in seeds) if isinstance(seeds, list) else repr(seeds)
    drawn = "" if settings.get("data_seed") is None else f", data seed {settings['data_seed']}"
    changed = "" if not settings.get("overrides") else f", settings changed {settings['overrides']}"
    validation = {True: "", False: ", nothing held out for validation (--no-validation)",
                  None: ", written before validation images were held out of training"}.get(settings.get("validation"), "")
    return f"--data {settings.get('data')}, --profile {settings.get('profile')}, seeds {seeds}{drawn}{changed}{validation}"


def previous_results(out: Path, settings: dict) -> dict:
    """The results already in ``out`` when it was made with the same ``settings``; {} when there is
    no such file. Any other file is refused, naming it and what it holds: it is never overwritten."""
    if not out.exists():
        return {}
    keep = "It was left as it is: choose another --out, or move that file away."
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"--out {out} is not valid JSON ({error}). {keep}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--out {out} cannot be read ({error}). {keep}") from error
    if not isinstance(previous, dict) or not isinstance(previous.get("results"), dict) or not all(
            isinstance(row, dict) and isinstance(row.get("seeds", {}), dict)
            and all(isinstance(run, dict) for run in row.get("seeds", {}).values())
            for row in previous["results"].values()):
        raise ValueError(f"--out {out} is not a results file of adcourse.bench (no 'results' table). {keep}")
    if "seeds" not in previous:
        raise ValueError(f"--out {out} was written by an earlier adcourse.bench (one 'seed', rows without 'seeds'). {keep}")
    held = {key: previous.get(key) for key in settings}
    # a file of fewer seeds is extended (its rows kept, the missing seeds run); one that would lose seeds is not
    adds_seeds = isinstance(held["seeds"], list) and set(held["seeds"]) < set(settings["seeds"])
    if {**held, "seeds": settings["seeds"] if adds_seeds else held["seeds"]} != settings:
        raise ValueError(f"--out {out} holds results of {describe_settings(held)} ({len(previous['results'])} methods), "
                         f"not of this run's {describe_settings(settings)}. {keep}")
    return previous["results"]


# The first line of every Markdown table the benchmark writes: a .md without it is someone else's file.
TABLE_MARKER = "<!-- written by adcourse.bench beside {json}: rewritten on every run, edit the JSON's run instead -->"


def _lock(out: Path) -> FileLock:
    """The lock every writer of ``out`` takes (a hidden file beside it), so that runs sharing one
    results file queue for it instead of overwriting each other's rows."""
    return FileLock(str(out.with_name(f".{out.name}.lock")))


def check_table(out: Path) -> None:
    """Refuse to overwrite a Markdown file beside ``out`` that the benchmark did not write."""
    table = out.with_suffix(".md")
    if not table.exists():
        return
    try:
        first = table.read_text(encoding="utf-8").lstrip().split("\n", 1)[0]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--out {out}: the table {table} beside it cannot be read ({error}); it was left as it "
                         "is: choose another --out, or move that file away.") from error
    # written by the benchmark: its marker, or the bare table of versions before the marker
    if not (first.startswith("<!-- written by adcourse.bench") or first.startswith("| method |")):
        raise ValueError(f"--out {out} would overwrite {table}, which the benchmark did not write (it begins "
                         f"{first[:60]!r}). It was left as it is: choose another --out, or move that file away.")


def merge_results(ours: dict, theirs: dict, seeds: list[int]) -> dict:
    """Every finished (method, seed) row of two result tables of the same run settings: rows of one
    seed found in both are the same run, ours is kept; a method's summary is made again once all
    its seeds are in."""
    merged = {}
    for name in [*theirs, *(name for name in ours if name not in theirs)]:
        mine, other = ours.get(name, {}), theirs.get(name, {})
        if "skipped" in mine or "skipped" in other:
            merged[name] = mine if "skipped" in mine else other
            continue
        rows = {**other.get("seeds", {}), **mine.get("seeds", {})}
        rows = {str(k): rows[str(k)] for k in seeds if str(k) in rows}
        merged[name] = summarize(rows) if len(rows) == len(seeds) else {"seeds": rows}
    return merged


SETTINGS = ("data", "profile", "seeds", "data_seed", "overrides", "validation")


def _settings_of(report: dict) -> dict:
    return {key: report.get(key) for key in SETTINGS}


def _take_in_file(report: dict, out: Path) -> None:
    """Merge into ``report`` the rows another run on ``out`` wrote there; the caller holds the lock."""
    report["results"] = merge_results(report["results"], previous_results(out, _settings_of(report)), report["seeds"])


def _refresh(report: dict, out: Path | None) -> None:
    """Take in the rows that other runs on ``out`` have finished since this one read it."""
    if out is not None:
        with _lock(out):
            _take_in_file(report, out)


def _stamp(report: dict) -> None:
    report["wall_seconds"] = sum(row.get("wall_seconds", 0) for entry in report["results"].values()
                                 for row in entry.get("seeds", {}).values())
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _save(report: dict, out: Path | None) -> None:
    """Stamp the report (date, the wall time of every row) and write it to ``out`` with its table.
    Under ``out``'s lock, the rows another run wrote there meanwhile are merged in first: whatever
    the interleaving of runs on one file, no finished row is lost."""
    if out is None:
        _stamp(report)
        return
    try:
        with _lock(out):
            _take_in_file(report, out)
            _stamp(report)
            check_table(out)
            write_text_atomic(out, json.dumps(report, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), TABLE_MARKER.format(json=out.name) + "\n\n" + markdown_table(report))
    except OSError as error:  # the lock or the files
        raise ValueError(f"cannot write --out {out}: {error}") from error


def _new_report(settings: dict, results: dict, device: str, command: str | None) -> dict:
    """A results file's contents: the run's settings, where and how it ran, and its results."""
    return {**settings, "device": device, "command": command, "torch": torch.__version__, "results": results,
            **({"miniature": MINIATURE_NOTE} if settings["profile"] == "full" and miniature_active() else {})}


def run_settings(data: str, profile: str, seeds: list[int], data_seed: int | None, overrides: dict | None,
                 validation: bool) -> dict:
    """The settings that identify a results file, as its JSON holds them (a tuple setting reads back
    as a list), so that a run finds its own file."""
    if not isinstance(validation, bool):
        raise ValueError(f"validation must be True or False, got {validation!r}")
    return json.loads(json.dumps({"data": data, "profile": profile, "seeds": seeds, "data_seed": data_seed,
                                  "overrides": overrides or None, "validation": validation}))


def check_results_file(out: Path, settings: dict) -> None:
    """Refuse, before anything runs, a results file (or a table beside it) that a run with these
    ``settings`` must not write to."""
    check_table(out)
    previous_results(out, settings)


def save_report(out: Path, settings: dict, results: dict, *, device: str, command: str | None) -> dict:
    """Merge finished ``results`` (method → entry, as :func:`merge_results` makes them) of a run with
    ``settings`` into the results file ``out`` and its table, under the lock every writer of ``out``
    takes: how runs made elsewhere (``adcourse.sweep``'s tasks) come into the usual file."""
    report = _new_report(settings, results, device, command)
    _save(report, out)
    return report


def _check_both_classes(data: str, labels: np.ndarray) -> None:
    if len(np.unique(labels)) < 2:
        kind = "normal" if labels.size and labels[0] == 0 else "anomalous"
        hint = (" Put normal test images in test/good/ and defective ones in test/<defect>/."
                if data.lower().startswith("folder:") else "")
        raise ValueError(f"--data {data}: the test set holds only {kind} images ({labels.size}); the image metrics "
                         f"need normal and anomalous test images.{hint}")


def run(methods: list[str], data: str, profile: str = "quick", seed: int | Sequence[int] = 0,
        out: str | os.PathLike | None = None, device=None, progress: bool = True, command: str | None = None,
        overrides: dict[str, dict] | None = None, data_seed: int | None = None, validation: bool = True) -> dict:
    """Run the benchmark: every method of ``methods`` on ``data``, once per seed of ``seed`` (one int
    or several), the data drawn with each seed, or once with ``data_seed`` when it is given;
    ``overrides`` (``{"ae_l2": {"epochs": 1}}``) replace settings of the profile. ``validation``:
    hold normal validation images out of training and report the operating point of a threshold fixed
    on them (:func:`load_splits`); ``False`` trains on them too and reports the oracle's alone. With
    ``out``, keep what that JSON file already holds for the same settings, and save to it after every
    finished (method, seed). Every argument is checked before any training."""
    if not isinstance(data, str) or not data.strip():
        raise ValueError(f"--data must name a dataset such as textures:brick or folder:path/to/images, got {data!r}")
    profile = resolve_profile(profile)
    methods = check_methods(methods)
    seeds = check_seeds(seed)
    if data_seed is not None:
        data_seed = check_seeds(data_seed)[0]
    overrides = check_overrides(overrides, methods)
    check_device(device)
    out = check_out(out)
    settings = run_settings(data, profile, seeds, data_seed, overrides, validation)
    if out:
        check_table(out)
    results = previous_results(out, settings) if out else {}
    report = _new_report(settings, results, describe_device(pick_device(device)), command)
    data_of_seed = {}

    def data_for(seed: int):
        seed = seed if data_seed is None else data_seed
        key = None if data.partition(":")[0].lower() in UNSEEDED_KINDS else seed
        if key not in data_of_seed:
            splits = load_splits(data, profile, seed, validation=validation)
            batch = stack(splits.test)
            _check_both_classes(data, batch[1])
            normal = None if splits.validation is None else stack(splits.validation)[0]
            data_of_seed[key] = splits.train, batch, defect_types(splits.test), normal
        return data_of_seed[key]

    data_for(seeds[0])  # the data's errors before any training
    _save(report, out)  # and the file's
    todo = [(name, s) for name in methods if "skipped" not in results.get(name, {})
            for s in seeds if str(s) not in results.get(name, {}).get("seeds", {})]
    for name, s in tqdm(todo, desc="methods × seeds", **({} if progress else {"disable": True})):
        _refresh(report, out)  # another run on the same --out may have done it meanwhile
        results = report["results"]
        if "skipped" in results.get(name, {}) or str(s) in results.get(name, {}).get("seeds", {}):
            continue
        start = time.perf_counter()
        train, test_batch, defects, validation_images = data_for(s)
        if detectors.create(name).supervised:
            try:
                train = load_splits(data, profile, s if data_seed is None else data_seed, SUPERVISED_ANOMALY_FRACTION,
                                    validation).train
            except ValueError as reason:
                results[name] = {"skipped": str(reason), "supervised": True}
                _save(report, out)
                continue
        row = run_method(name, train, test_batch, profile, s, device, defects, overrides.get(name), validation_images)
        # everything the method cost this seed: training, scoring, the extra timings and the export
        row["wall_seconds"] = time.perf_counter() - start
        rows = {**results.get(name, {}).get("seeds", {}), str(s): row}
        rows = {str(k): rows[str(k)] for k in seeds if str(k) in rows}
        results[name] = summarize(rows) if len(rows) == len(seeds) else {"seeds": rows}
        _save(report, out)
    return report


def parse_setting(text: str) -> tuple[str, str, object]:
    """``--set ae_ssim.epochs=30`` as ``("ae_ssim", "epochs", 30)`` (argparse type); the value is read
    as a Python literal (numbers, tuples, True/False/None), or kept as text."""
    import ast

    target, equals, value = text.partition("=")
    method, dot, name = target.partition(".")
    if not (equals and dot and method.strip() and name.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: write METHOD.SETTING=VALUE, such as ae_ssim.epochs=30")
    try:
        value = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        value = value.strip()
    return method.strip(), name.strip(), value


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as a list of ints (argparse type)."""
    try:
        return check_seeds([int(part) for part in text.split(",") if part.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers of at least 0, comma-separated and each "
                                         "once, such as 0,1,2") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", required=True, help=f"comma-separated, or 'all': {', '.join(detectors.available())}")
    parser.add_argument("--data", required=True,
                        help="e.g. textures:brick, digits:3, mvtec:bottle, btad:01, mnist:0, folder:path/to/images")
    parser.add_argument("--profile", default="auto", choices=["auto", "quick", "full"])
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 0)")
    seeds.add_argument("--seeds", type=parse_seeds, default=None,
                       help="several seeds, comma-separated, e.g. 0,1,2: mean ± standard deviation over them")
    parser.add_argument("--data-seed", type=int, default=None,
                        help="draw the data once with this seed for every --seeds (default: each seed draws its own)")
    parser.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                        metavar="METHOD.SETTING=VALUE",
                        help="change one setting of one method's profile, e.g. ae_ssim.epochs=30 (repeatable; "
                             "recorded in the results file)")
    parser.add_argument("--no-validation", dest="validation", action="store_false",
                        help="train on every training image; report the oracle's operating point only (by default "
                             "normal validation images are held out to fix a threshold on, see load_splits)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", default=None, help="JSON file for the results (a .md table is written beside it); "
                                                   "a second run with the same --out adds to it")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    seed = args.seeds if args.seeds is not None else (0 if args.seed is None else args.seed)
    try:
        command = " ".join(["python -m adcourse.bench", *(argv if argv is not None else sys.argv[1:])])
        overrides = {}
        for method, name, value in args.settings:
            overrides.setdefault(method, {})[name] = value
        report = run(methods, args.data, args.profile, seed, args.out, args.device, command=command,
                     data_seed=args.data_seed, validation=args.validation,
                     **({"overrides": overrides} if overrides else {}))
    except (ValueError, DatasetError) as error:
        parser.exit(2, f"error: {error}\n")
    except KeyboardInterrupt:
        kept = f"every finished (method, seed) is in {args.out}: run the same command to resume" if args.out else \
            "nothing was saved (no --out)"
        parser.exit(130, f"\ninterrupted; {kept}\n")
    print(f"\n{args.data}, profile {report['profile']}, seeds {','.join(map(str, report['seeds']))}, "
          f"device {report['device']}, {report.get('wall_seconds', 0):.0f} s for {len(report['results'])} methods\n")
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
