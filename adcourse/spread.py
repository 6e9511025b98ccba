"""One trained number is one draw: check it against the committed spread over training seeds.

A figure that comes out of training moves with the training seed, and on another processor it moves
even with the same seed: instruction sets (AVX2, AVX-512), oneDNN/MKL kernels and thread counts
round differently, and training grows those differences. So a chapter never compares a trained
figure exactly. It calls :meth:`Spread.check`, which compares the live run with the same figure
committed over several training seeds (``book/results/spread/<chapter>.json``) and prints one line
that reads as a lesson::

    from adcourse import spread

    figures = spread.Spread("02_autoencoders", profile=profile, data_seed=DATA_SEED, seed=SEED)
    figures.check("ae_l2 image AUROC", 0.764)
    # ae_l2 image AUROC: your run 0.764 (training seed 0); committed 0.781 ± 0.031 over training
    #   seeds 0–4 (0.751–0.812): within the expected spread ✓

The band is ``mean ± (SPREAD_FACTOR · std · sqrt(1 + 1/n) + ROUNDING)``: a prediction interval for
one more draw, as wide as the spread the seeds showed and no wider. A run outside it raises
:class:`OutsideSpread`, so a broken method (scores replaced by noise: image AUROC 0.5) fails the
check of a method that works; ``tests/test_spread.py`` shows both.

:meth:`Spread.compare` says whether a difference the prose draws (``ae_ssim`` against ``ae_l2``)
holds over the seeds: the paired differences, seed by seed, against Student's t at 95 %.

The committed figures are made by running each chapter once per training seed, with the data seed
fixed (the data are the same draw in every run; only the networks' initial weights, the batch order
and the sampled noise change)::

    python -m adcourse.spread collect --seeds 0,1,2,3,4 notebooks/02_autoencoders.ipynb

Seed 0 is the seed the course's settings were developed on; seeds 1–4 were not used to choose
anything, and every line reports them apart. The collection runs the other seeds first, then seed 0
in place, so the committed notebook's outputs are the seed-0 run checked against the final file.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

__all__ = ["DEVELOPMENT_SEED", "OutsideSpread", "ROUNDING", "SPREAD_FACTOR", "Spread", "paired_difference"]

# A draw is expected within mean ± SPREAD_FACTOR prediction standard deviations. With five seeds the
# sample standard deviation is itself uncertain: a new draw lands outside ±k·s·√(1 + 1/n) with
# probability P(|t₄| > k) (Student's t, 4 degrees of freedom): 1.6 % for k = 4, 0.75 % for k = 5,
# 0.4 % for k = 6. With 4, one of about 180 checked figures fell outside on another instruction set
# (ATEN_CPU_CAPABILITY=default, one thread); with 6, ten methods' checks would let scores replaced by
# noise through; 5 keeps both (tests/test_spread.py, book/reproducibility.md).
SPREAD_FACTOR = 5.0
# Added to every band: the figures are printed with three decimals, and a figure whose seeds agree
# exactly (std 0, e.g. an AUROC of 1.000) still moves in its last digits from one processor to another.
ROUNDING = 0.01
DEVELOPMENT_SEED = 0
RECORD_ENV = "ADCOURSE_SPREAD_RECORD"  # set by `collect`: the folder where each run adds its figures
STORED_FOLDER = "spread"               # in book/results/


class OutsideSpread(AssertionError):
    """A trained figure far outside the spread its training seeds showed."""


def _seed_range(seeds: list[int]) -> str:
    seeds = sorted(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def band(values: list[float]) -> tuple[float, float]:
    """The interval where one more draw is expected, from the committed draws ``values``."""
    mean, std = _mean_std(values)
    half = SPREAD_FACTOR * std * math.sqrt(1 + 1 / len(values)) + ROUNDING
    return mean - half, mean + half


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict:
    """``a − b`` seed by seed (both ``{seed: value}`` over the same seeds): the mean difference, its
    standard deviation, Student's t, and the verdict: ``"higher"``/``"lower"`` when the paired t-test
    rejects "no difference" at 5 % (two-sided) *and* the seeds not used to develop the settings agree
    in sign, ``"within the spread"`` otherwise."""
    from scipy import stats

    if set(a) != set(b):
        raise ValueError(f"the two figures were measured on different seeds ({sorted(a)} against {sorted(b)})")
    seeds = sorted(a, key=int)
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = _mean_std(diffs)
    n = len(diffs)
    t = math.inf if std == 0 and mean != 0 else 0.0 if std == 0 else mean / (std / math.sqrt(n))
    critical = float(stats.t.ppf(0.975, n - 1))
    held_out = [d for s, d in zip(seeds, diffs) if int(s) != DEVELOPMENT_SEED]
    held_out_mean = sum(held_out) / len(held_out) if held_out else float("nan")
    holds = abs(t) > critical and held_out and math.copysign(1, held_out_mean) == math.copysign(1, mean)
    verdict = ("higher" if mean > 0 else "lower") if holds else "within the spread"
    return {"mean": mean, "std": std, "t": t, "critical_t": critical, "n": n,
            "held_out_mean": held_out_mean, "verdict": verdict}


class Spread:
    """The committed figures of one chapter, and checks of a live run against them.

    ``profile``, ``data_seed`` and ``seed`` describe the live run: the committed figures are those of
    the quick profile on data seed 0, so a run of another profile or data draw is shown, not checked."""

    def __init__(self, chapter: str, *, profile: str, data_seed: int, seed: int):
        self.chapter, self.profile, self.data_seed, self.seed = chapter, profile, data_seed, seed
        self.record_folder = os.environ.get(RECORD_ENV) or None
        self._stored = None

    # --- the committed file ------------------------------------------------------------------
    def stored(self) -> dict:
        """The chapter's committed figures (while collecting: the file being written)."""
        if self.record_folder:
            path = Path(self.record_folder) / f"{self.chapter}.json"
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"figures": {}}
        if self._stored is None:
            from . import results
            self._stored = results.load_stored(f"{STORED_FOLDER}/{self.chapter}.json")
        return self._stored

    def why_not_compared(self) -> str | None:
        """Why this run cannot be compared with the committed figures, or None when it can."""
        from .train import miniature_active

        if miniature_active():
            return "a miniature run (ADCOURSE_MINIATURE=1): its figures mean nothing"
        stored = self.stored()
        profile, data_seed = stored.get("profile", "quick"), stored.get("data_seed", 0)
        if self.profile != profile:
            return f"the committed figures are of the {profile} profile, this run is {self.profile}"
        if self.data_seed != data_seed:
            return f"the committed figures are on data seed {data_seed}, this run draws its data with seed {self.data_seed}"
        return None

    def values(self, name: str) -> dict[str, float]:
        figures = self.stored().get("figures", {})
        if name not in figures:
            known = ", ".join(sorted(figures)) or "none"
            raise KeyError(f"{self.chapter}: no committed figure {name!r} (committed: {known}); "
                           f"run `python -m adcourse.spread collect notebooks/{self.chapter}.ipynb` "
                           "after adding a check")
        return figures[name]

    # --- recording (while collecting) -------------------------------------------------------------
    def _record(self, name: str, value: float) -> None:
        from .train import write_text_atomic

        path = Path(self.record_folder) / f"{self.chapter}.json"
        stored = self.stored()
        stored.setdefault("figures", {}).setdefault(name, {})[str(self.seed)] = value
        write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=False) + "\n")

    # --- the checks ---------------------------------------------------------------------------------
    def check(self, name: str, value: float) -> None:
        """Print the live ``value`` of the figure ``name`` beside its committed spread; raise
        :class:`OutsideSpread` when it lies outside the band of :func:`band`."""
        value = float(value)
        if not math.isfinite(value):
            raise OutsideSpread(f"{name}: your run gave {value}, not a number: the training diverged")
        if self.record_folder:
            self._record(name, value)
            if self.seed != DEVELOPMENT_SEED:  # the file is not complete before the last run, seed 0's
                print(f"{name}: {value:.3f} (training seed {self.seed}, recorded)")
                return
        reason = self.why_not_compared()
        if reason:
            print(f"{name}: your run {value:.3f} (not compared: {reason})")
            return
        runs = self.values(name)
        seeds = sorted(map(int, runs))
        draws = [runs[str(s)] for s in seeds]
        mean, std = _mean_std(draws)
        low, high = band(draws)
        held_out = [runs[str(s)] for s in seeds if s != DEVELOPMENT_SEED]
        line = (f"{name}: your run {value:.3f} (training seed {self.seed}); committed {mean:.3f} ± {std:.3f} over "
                f"training seeds {_seed_range(seeds)} ({min(draws):.3f}–{max(draws):.3f}")
        if held_out and len(held_out) < len(draws):
            held_mean, held_std = _mean_std(held_out)
            line += f"; seeds {_seed_range([s for s in seeds if s != DEVELOPMENT_SEED])}: {held_mean:.3f} ± {held_std:.3f}"
        line += ")"
        if not low <= value <= high:
            raise OutsideSpread(
                f"{line}: OUTSIDE the expected spread [{low:.3f}, {high:.3f}] (mean ± {SPREAD_FACTOR:g} std·√(1+1/n) "
                f"± {ROUNDING}). A broken or changed method lands here; if you changed the settings on purpose, "
                f"the committed figures no longer describe it: run `python -m adcourse.spread collect "
                f"notebooks/{self.chapter}.ipynb` to measure them again.")
        print(f"{line}: within the expected spread ✓")

    def check_all(self, figures: dict[str, float]) -> None:
        """:meth:`check` each ``{name: value}``; every line is printed before the first failure is raised."""
        failures = []
        for name, value in figures.items():
            try:
                self.check(name, value)
            except OutsideSpread as failure:
                print(f"✗ {failure}")
                failures.append(str(failure))
        if failures:
            raise OutsideSpread(f"{len(failures)} of {len(figures)} figures outside their committed spread "
                                "(the lines above say which)")

    def check_rows(self, rows: dict, keys, *, prefix: str = "") -> None:
        """:meth:`check_all` on the figures ``keys`` of each row of ``{row name: {key: value}}`` (a
        results dict, or a DataFrame's ``.T.to_dict()``), named ``"<prefix><row name> <key>"``;
        missing and NaN values are skipped."""
        figures = {}
        for row_name, row in rows.items():
            label = " / ".join(map(str, row_name)) if isinstance(row_name, tuple) else str(row_name)
            for key in keys:
                value = row.get(key)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    figures[f"{prefix}{label} {key}"] = value
        self.check_all(figures)

    def check_table(self, frame, columns=None, *, prefix: str = "") -> None:
        """:meth:`check_rows` on a pandas DataFrame: each row, the ``columns`` given (default all)."""
        columns = list(frame.columns if columns is None else columns)
        self.check_rows({index: frame.loc[index, columns].to_dict() for index in frame.index}, columns, prefix=prefix)

    def compare(self, a: str, b: str) -> dict:
        """Whether the committed figure ``a`` is higher or lower than ``b`` over the training seeds, or
        the same within the spread (:func:`paired_difference`); prints one line saying so."""
        result = paired_difference(self.values(a), self.values(b))
        says = {"higher": "higher, beyond the spread", "lower": "lower, beyond the spread",
                "within the spread": "no difference beyond the spread"}[result["verdict"]]
        print(f"{a} − {b}: {result['mean']:+.3f} ± {result['std']:.3f} over {result['n']} training seeds "
              f"(seeds other than {DEVELOPMENT_SEED}: {result['held_out_mean']:+.3f}; paired t {result['t']:.1f}, "
              f"5 % level {result['critical_t']:.2f}): {says}")
        return result


# --- collecting the committed figures ------------------------------------------------------------

def _describe_machine(threads: int) -> str:
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, {threads} thread(s) a kernel, torch {torch.__version__}"


def collect(notebook: str | os.PathLike, seeds: list[int], *, threads: int = 2, stored_root: str | os.PathLike | None = None,
            command: str | None = None) -> Path:
    """Run ``notebook`` once per training seed of ``seeds`` (data seed 0, quick profile), recording
    every figure it checks; the other seeds first, in executed copies that are thrown away, then
    :data:`DEVELOPMENT_SEED` in place, checked against the finished file. The file replaces
    ``book/results/spread/<chapter>.json`` only when every run finished."""
    from .notebooks import execute
    from .train import write_text_atomic

    notebook = Path(notebook)
    chapter = notebook.stem
    if DEVELOPMENT_SEED not in seeds:
        raise ValueError(f"seeds {seeds} leave out seed {DEVELOPMENT_SEED}, the one the committed notebook shows")
    target = Path(stored_root or Path(__file__).resolve().parent.parent / "book" / "results") / STORED_FOLDER
    with tempfile.TemporaryDirectory(prefix=f"spread-{chapter}-") as staging:
        header = {"chapter": chapter, "profile": "quick", "data_seed": 0, "development_seed": DEVELOPMENT_SEED,
                  "seeds": sorted(seeds), "command": command, "device": _describe_machine(threads),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "figures": {}}
        (Path(staging) / f"{chapter}.json").write_text(json.dumps(header, indent=1) + "\n")
        previous = os.environ.get(RECORD_ENV)
        os.environ[RECORD_ENV] = staging
        try:
            for seed in [s for s in sorted(seeds) if s != DEVELOPMENT_SEED]:
                seconds = execute(notebook, Path(staging) / notebook.name, parameters={"SEED": seed}, threads=threads)
                print(f"{chapter}: seed {seed} in {seconds:.0f} s", flush=True)
            seconds = execute(notebook, threads=threads)
            print(f"{chapter}: seed {DEVELOPMENT_SEED} in {seconds:.0f} s (in place)", flush=True)
        finally:
            if previous is None:
                os.environ.pop(RECORD_ENV, None)
            else:
                os.environ[RECORD_ENV] = previous
        target.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(target / f"{chapter}.json", (Path(staging) / f"{chapter}.json").read_text())


def main(argv=None) -> int:
    from .bench import parse_seeds

    parser = argparse.ArgumentParser(prog="python -m adcourse.spread",
                                     description="measure a chapter's checked figures over training seeds")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("collect", help="run each notebook once per seed and commit its figures")
    run.add_argument("notebooks", nargs="+")
    run.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2, 3, 4], help="training seeds (default 0,1,2,3,4)")
    run.add_argument("--threads", type=int, default=2, help="the kernel's OMP_NUM_THREADS (default 2)")
    args = parser.parse_args(argv)
    for name in args.notebooks:
        command = (f"python -m adcourse.spread collect --seeds {','.join(map(str, args.seeds))} "
                   f"--threads {args.threads} {name}")
        print(collect(name, args.seeds, threads=args.threads, command=command), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
