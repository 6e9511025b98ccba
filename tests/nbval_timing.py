"""A pytest plugin for the nbval run of ``make test``: each chapter's time, and a limit on it.

nbval runs every committed notebook top to bottom on a fresh kernel and compares the checked
outputs; it is the run of the chapters that ``make test`` makes (once: the unit tests do not run them
again). This plugin adds up the time of each notebook's cells, kernel start included, writes them to
``artifacts/executed/timings.json`` and fails the run when a chapter takes longer than the limit::

    PYTHONPATH=tests python -m pytest -p nbval_timing --nbval-lax notebooks [--notebook-seconds-limit 300]

The course's aim is about 90 s a chapter on a quiet 2-core CPU. On 2026-12-01 the course machine ran
the same code about half as fast as on 2026-11-23 (ae_l2's quick training: 16.5–19.6 s against 9 s),
and chapters 2 (one protocol for both autoencoders), 5a (minibatch discrimination), 6 (the combined
model, t-SNE, saliency) and 10 (PatchCore) grew: a fresh-clone run there took 22–134 s a chapter, and
chapter 6 took 214 s with other work beside it. The limit stops gross regressions only.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

SECONDS_LIMIT = 300
TIMINGS = Path("artifacts") / "executed" / "timings.json"
_seconds: defaultdict[str, float] = defaultdict(float)


def pytest_addoption(parser):
    parser.addoption("--notebook-seconds-limit", type=float, default=SECONDS_LIMIT,
                     help=f"fail when a notebook's cells take longer than this in all (default {SECONDS_LIMIT})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter()
    yield
    if item.path.suffix == ".ipynb":
        _seconds[item.path.name] += time.perf_counter() - start


def pytest_sessionfinish(session, exitstatus):
    if not _seconds:
        return
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps({name: round(s, 1) for name, s in sorted(_seconds.items())}, indent=2) + "\n")
    limit = session.config.getoption("--notebook-seconds-limit")
    slow = {name: s for name, s in _seconds.items() if s > limit}
    if slow:
        session.config._notebooks_over_limit = slow
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _seconds:
        return
    terminalreporter.section("seconds per notebook (nbval_timing)")
    for name, seconds in sorted(_seconds.items()):
        terminalreporter.write_line(f"{name}: {seconds:.0f} s")
    for name, seconds in getattr(config, "_notebooks_over_limit", {}).items():
        terminalreporter.write_line(f"FAILED {name} took {seconds:.0f} s, over the limit of "
                                    f"{config.getoption('--notebook-seconds-limit'):.0f} s", red=True)
