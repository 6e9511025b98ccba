"""Resolution, stages and bank size of the training-free detectors: the sweep behind chapter 10's
quality-against-time figure.

PaDiM and PatchCore read a frozen network's maps. Which maps (the stages, by stride) and at what
resolution (the image up-sampled ``input_scale`` times before the network) decide how small a
defect can be and still change a feature vector; PatchCore's ``coreset_fraction`` decides how much
of the normal training patches it remembers. The sweep runs the benchmark once per setting and
texture (``adcourse.bench``, so every figure is the benchmark's own: image AUROC, pixel AUROC,
AUPRO, fit seconds, milliseconds per image, peak memory), over several seeds, and gathers the rows
into one table::

    python -m adcourse.resolution --seeds 0,1,2 --out book/results/resolution/sweep.json

Each (method, setting, texture) is a benchmark file in ``--work`` (default ``.scratch/resolution``),
so an interrupted sweep resumes where it stopped; ``--out`` gets the gathered table (JSON and a
Markdown table beside it). :func:`load` reads it as a pandas frame.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import bench, detectors
from .train import write_text_atomic

TEXTURES = ("brick", "grass", "gravel")
SCALES = (1, 2, 4)
STAGES = {"padim": ((4, 8, 16), (8, 16)), "patchcore": ((4, 8), (8, 16))}
CORESET_FRACTIONS = (0.001, 0.01, 0.05)
FIGURES = ("image_auroc", "pixel_auroc", "aupro", "train_seconds", "cpu_ms_per_image", "peak_memory_mb")


def grid(methods=("padim", "patchcore")) -> list[tuple[str, dict]]:
    """Every (method, settings) of the sweep: input scale × stages for both methods, PatchCore with
    the quick profile's bank; then PatchCore's other banks (:data:`CORESET_FRACTIONS`) at the finest
    setting, ×4 on strides 8+16. PatchCore's finer pair (4+8) is not run at ×4: it holds four times
    the patches of ×4 on 8+16, and choosing its coreset alone would outlast the quick budget."""
    settings = []
    for method in methods:
        bank = {"coreset_fraction": quick_bank()} if method == "patchcore" else {}
        for scale in SCALES:
            for strides in STAGES[method]:
                if method == "patchcore" and strides == (4, 8) and scale == 4:
                    continue
                settings.append((method, {"input_scale": scale, "strides": strides, **bank}))
        if method == "patchcore":
            settings += [(method, {"input_scale": 4, "strides": (8, 16), "coreset_fraction": fraction})
                         for fraction in CORESET_FRACTIONS if fraction != bank["coreset_fraction"]]
    return settings


def quick_bank() -> float:
    """PatchCore's coreset fraction in the quick profile."""
    return detectors.create("patchcore").settings_for("quick").coreset_fraction


def label(method: str, config: dict) -> str:
    """A file-name-safe name of one setting: ``patchcore_x4_s8-16_c0.01``."""
    text = f"{method}_x{config['input_scale']}_s{'-'.join(map(str, config['strides']))}"
    return text + f"_c{config['coreset_fraction']:g}" if "coreset_fraction" in config else text


def sweep(seeds=(0, 1, 2), work: str | Path = ".scratch/resolution", methods=("padim", "patchcore"),
          textures=TEXTURES, progress: bool = True, only=None) -> list[dict]:
    """Run the grid on every texture (one benchmark file each, resumable) and return one row per
    (method, setting, texture): the mean and standard deviation over ``seeds`` of :data:`FIGURES`.
    ``only``: the :func:`label` s of the settings to run (default: all of the grid)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    settings = grid(methods)
    if only is not None:
        unknown = sorted(set(only) - {label(m, c) for m, c in settings})
        if unknown:
            raise ValueError(f"--only: no setting of the grid is called {', '.join(unknown)}; the grid's are "
                             f"{', '.join(label(m, c) for m, c in settings)}")
        settings = [(m, c) for m, c in settings if label(m, c) in only]
    rows = []
    for method, config in settings:
        for texture in textures:
            out = work / f"{label(method, config)}_{texture}.json"
            # resolution is judged on the test set: training keeps the validation band, as in the committed sweep
            report = bench.run([method], f"textures:{texture}", "quick", seed=list(seeds), out=out,
                               overrides={method: config}, progress=progress, validation=False)
            entry = report["results"][method]
            row = {"method": method, **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                   "texture": texture, "seeds": list(seeds), "backbone": entry.get("backbone")}
            for figure in FIGURES:
                row[figure] = entry.get(figure)
                row[figure + "_std"] = entry.get("std", {}).get(figure) if figure in bench.QUALITY else None
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| method | scale | strides | coreset | texture | image AUROC | pixel AUROC | AUPRO | fit s | "
            "ms / image | peak MB |")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        def cell(key, fmt=".3f"):
            std = row.get(key + "_std")
            return "—" if row[key] is None else format(row[key], fmt) + ("" if std is None else f" ± {std:{fmt}}")
        coreset = "—" if row.get("coreset_fraction") is None else f"{row['coreset_fraction']:g}"
        lines.append(f"| {row['method']} | ×{row['input_scale']} | {'+'.join(map(str, row['strides']))} | {coreset} | "
                     f"{row['texture']} | {cell('image_auroc')} | {cell('pixel_auroc')} | {cell('aupro')} | "
                     f"{cell('train_seconds', '.1f')} | {cell('cpu_ms_per_image', '.1f')} | "
                     f"{cell('peak_memory_mb', '.0f')} |")
    return "\n".join(lines) + "\n"


def load(name: str = "resolution/sweep.json"):
    """The committed sweep as a pandas frame, one row per (method, setting, texture)."""
    import pandas as pd

    from .results import load_stored

    frame = pd.DataFrame(load_stored(name)["rows"])
    frame["strides"] = frame["strides"].map(lambda s: "+".join(map(str, s)))
    return frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.resolution", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each draws its own data)")
    parser.add_argument("--methods", default="padim,patchcore")
    parser.add_argument("--textures", default=",".join(TEXTURES))
    parser.add_argument("--only", default=None, help="comma-separated labels of settings (e.g. padim_x4_s8-16) to run "
                                                     "instead of the whole grid")
    parser.add_argument("--work", default=".scratch/resolution", help="folder of the benchmark files, one per run")
    parser.add_argument("--out", required=True, help="JSON file of the gathered table (a .md table beside it)")
    args = parser.parse_args(argv)
    try:
        seeds = bench.parse_seeds(args.seeds)
        methods = [m for m in args.methods.split(",") if m]
        unknown = sorted(set(methods) - set(STAGES))
        if unknown:
            raise ValueError(f"--methods: the sweep covers {', '.join(STAGES)}, not {', '.join(unknown)}")
        textures = [t for t in args.textures.split(",") if t]
        if set(textures) - set(TEXTURES):
            raise ValueError(f"--textures: one of {', '.join(TEXTURES)}, got {args.textures}")
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    try:
        rows = sweep(seeds, args.work, methods, textures, only=None if args.only is None else args.only.split(","))
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m adcourse.resolution " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = {"command": command, "profile": "quick", "seeds": seeds, "device": bench.describe_device(bench.pick_device(None)),
              "date": time.strftime("%Y-%m-%d"), "sweep_seconds": time.perf_counter() - start, "rows": rows}
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown(rows))
    print(f"{len(rows)} rows written to {out} ({out.with_suffix('.md')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
