"""The benchmark: every method trained and evaluated on the same data, in one table.

    python -m adcourse.bench --methods ae_l2,ae_ssim --data textures:brick --profile quick --out results.json

``--data`` names a dataset and its part: ``textures:brick``, ``digits:3`` (normal class 3),
``mvtec:bottle``, ``btad:01``, ``mnist:0``, ``fashionmnist:0``, ``kmnist:0``, ``cifar10:0``.
Results are written after every method (JSON, plus a Markdown table beside it), so a run that is
interrupted resumes from the methods already finished when started again with the same
``--out``, ``--data``, ``--profile`` and ``--seed``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import detectors, metrics
from .data import (BTAD, MVTecAD, OneClassDigits, TextureDefects, TorchvisionOneClass, TORCHVISION_SETS,
                   DatasetError)
from .train import count_parameters, pick_device, resolve_profile, seed_everything, write_text_atomic

# Built-in data sizes per profile: quick keeps a 2-core CPU busy for about a minute per method.
TEXTURE_SIZES = {"quick": dict(train=256, test=128), "full": dict(train=2048, test=512)}
REAL_IMAGE_SIZE = {"quick": 128, "full": 256}


# Share of labelled anomalies in the training set of supervised methods (the capsule chapter's 10 %).
SUPERVISED_ANOMALY_FRACTION = 0.1


def load_data(spec: str, profile: str = "quick", seed: int = 0, anomaly_fraction: float = 0.0):
    """``(train_dataset, test_dataset)`` for a ``kind:part`` spec such as ``textures:brick``.

    ``anomaly_fraction`` > 0 mixes labelled anomalies into the training set (for supervised
    methods); only the digit sets support it, others raise ``ValueError``.
    """
    kind, _, part = spec.partition(":")
    kind = kind.lower()
    if not part:
        raise ValueError(f"--data {spec!r} needs a part after a colon, e.g. textures:brick, digits:3, mvtec:bottle")
    profile = resolve_profile(profile)
    if anomaly_fraction and kind != "digits":
        raise ValueError(f"--data {spec!r} has no labelled anomalies for training; supervised methods run on digits:<class>")
    if kind == "textures":
        n = TEXTURE_SIZES[profile]
        return (TextureDefects(part, "train", n=n["train"], seed=seed),
                TextureDefects(part, "test", n=n["test"], seed=seed))
    if kind == "digits":
        return (OneClassDigits(_class_index(spec, part), "train", anomaly_fraction, image_size=32, seed=seed),
                OneClassDigits(_class_index(spec, part), "test", image_size=32, seed=seed))
    if kind == "mvtec":
        size = REAL_IMAGE_SIZE[profile]
        return MVTecAD(None, part, "train", image_size=size), MVTecAD(None, part, "test", image_size=size)
    if kind == "btad":
        size = REAL_IMAGE_SIZE[profile]
        return BTAD(None, part, "train", image_size=size), BTAD(None, part, "test", image_size=size)
    names = {name.lower(): name for name in TORCHVISION_SETS}
    if kind in names:
        size = 32  # even sides for the convolutional models; MNIST's 28 is up-sampled
        return tuple(TorchvisionOneClass(names[kind], None, _class_index(spec, part), split, image_size=size, seed=seed)
                     for split in ("train", "test"))
    raise ValueError(f"unknown dataset kind {kind!r} in --data {spec!r}; use one of "
                     f"textures, digits, mvtec, btad, {', '.join(names)}")


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


def evaluate(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> dict:
    """Every metric of chapter 1; pixel metrics only where the test set has defect masks."""
    best = metrics.best_tpr_tnr(labels, scores)
    result = {"image_auroc": metrics.image_auroc(labels, scores), "image_aupr": metrics.image_aupr(labels, scores),
              "best_tpr": best["tpr"], "best_tnr": best["tnr"], "pixel_auroc": None, "aupro": None}
    if masks.any() and maps is not None:
        if maps.shape != masks.shape:
            raise ValueError(f"anomaly maps of shape {maps.shape} do not match the masks {masks.shape}")
        result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
        result["aupro"] = metrics.aupro(masks, maps)
    return result


# Images timed on the CPU after a GPU run (the whole test set can take long there).
CPU_LATENCY_IMAGES = 32


def run_method(name: str, train, test_batch, profile: str, seed: int, device=None) -> dict:
    """Train one method, score the test set and evaluate; then time it where it can run (CPU,
    and on a GPU in fp32 and fp16) and export its network to ONNX."""
    images, labels, masks = test_batch
    seed_everything(seed)
    dev = pick_device(device)
    detector = detectors.create(name, device=dev)
    with PeakMemory(dev) as peak:
        start = time.perf_counter()
        detector.fit(train, profile=profile)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores, maps = detector.predict(images)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        inference_ms = 1000 * (time.perf_counter() - start) / len(images)
    row = {
        **evaluate(labels, np.asarray(scores), masks, None if maps is None else np.asarray(maps)),
        "parameters": count_parameters(detector.model()) if detector.model() is not None else 0,
        "train_seconds": train_seconds,
        "inference_ms_per_image": inference_ms,
        "cpu_ms_per_image": None, "gpu_ms_per_image": None, "gpu_fp16_ms_per_image": None,
        "peak_memory_mb": peak.mb,
        "supervised": detector.supervised,
        "supervision": detector.supervision,
    }
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


COLUMNS = [("image_auroc", "image AUROC", ".3f"), ("image_aupr", "AUPR", ".3f"), ("best_tpr", "best TPR", ".3f"),
           ("best_tnr", "best TNR", ".3f"), ("pixel_auroc", "pixel AUROC", ".3f"), ("aupro", "AUPRO", ".3f"),
           ("parameters", "parameters", ","), ("train_seconds", "train s", ".1f"),
           ("cpu_ms_per_image", "CPU ms / image", ".2f"), ("gpu_ms_per_image", "GPU ms / image", ".2f"),
           ("gpu_fp16_ms_per_image", "GPU fp16 ms / image", ".2f"), ("peak_memory_mb", "peak MB", ".0f"),
           ("onnx_mb", "ONNX MB", ".1f"), ("supervision", "needs", "")]


def markdown_table(report: dict) -> str:
    header = "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in report["results"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |")
            continue
        cells = ["—" if row.get(key) is None else format(row[key], fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results_json(name: str, payload: dict, start: str | os.PathLike = ".") -> Path:
    """Write ``payload`` to ``book/results/<name>.json`` of the course checkout that contains
    ``start`` (the folder with ``_toc.yml``; ``start`` itself if none), atomically."""
    here = Path(start).resolve()
    root = next((p for p in (here, *here.parents) if (p / "_toc.yml").is_file()), here)
    return write_text_atomic(root / "book" / "results" / f"{name}.json", json.dumps(payload, indent=2, sort_keys=True))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run(methods: list[str], data: str, profile: str = "quick", seed: int = 0, out: str | os.PathLike | None = None,
        device=None, progress: bool = True, command: str | None = None) -> dict:
    """Run the benchmark; with ``out``, resume from and save to that JSON file after every method."""
    profile = resolve_profile(profile)
    for name in methods:  # check every name before any training
        if name not in detectors.available():
            raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(detectors.available())}")
    settings = {"data": data, "profile": profile, "seed": seed}
    report = {**settings, "device": describe_device(pick_device(device)), "command": command,
              "torch": torch.__version__, "results": {}}
    out = Path(out) if out else None
    if out and out.exists():
        previous = json.loads(out.read_text())
        if {k: previous.get(k) for k in settings} == settings:
            report["results"] = {k: v for k, v in previous.get("results", {}).items() if k in methods}
    train, test = load_data(data, profile, seed)
    test_batch = stack(test)
    todo = [m for m in methods if m not in report["results"]]
    for name in tqdm(todo, desc="methods", **({} if progress else {"disable": True})):
        start = time.perf_counter()
        if detectors.create(name).supervised:
            try:
                supervised_train, _ = load_data(data, profile, seed, SUPERVISED_ANOMALY_FRACTION)
            except ValueError as reason:
                report["results"][name] = {"skipped": str(reason), "supervised": True}
                continue
            report["results"][name] = run_method(name, supervised_train, test_batch, profile, seed, device)
        else:
            report["results"][name] = run_method(name, train, test_batch, profile, seed, device)
        # everything the method cost this run: training, scoring, the extra timings and the export
        report["results"][name]["wall_seconds"] = time.perf_counter() - start
        report["wall_seconds"] = sum(row.get("wall_seconds", 0) for row in report["results"].values())
        report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        if out:
            write_text_atomic(out, json.dumps(report, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), markdown_table(report))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", required=True, help=f"comma-separated, or 'all': {', '.join(detectors.available())}")
    parser.add_argument("--data", required=True, help="e.g. textures:brick, digits:3, mvtec:bottle, btad:01, mnist:0")
    parser.add_argument("--profile", default="auto", choices=["auto", "quick", "full"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", default=None, help="JSON file for the results (a .md table is written beside it)")
    args = parser.parse_args(argv)
    methods = detectors.available() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        command = " ".join(["python -m adcourse.bench", *(argv if argv is not None else sys.argv[1:])])
        report = run(methods, args.data, args.profile, args.seed, args.out, args.device, command=command)
    except (ValueError, DatasetError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"\n{args.data}, profile {report['profile']}, device {report['device']}, "
          f"{report.get('wall_seconds', 0):.0f} s for {len(report['results'])} methods\n")
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
