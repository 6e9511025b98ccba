"""``adcourse.sweep`` on a real Dask cluster of two worker processes on this machine.

The sweep must give the results that ``adcourse.bench`` gives run the ordinary way, skip what is
finished when started again, record a failing task and finish the rest, and lose nothing when a
worker is killed mid-run. The SLURM adapter is exercised as far as a machine without a queue
allows: the job script it would submit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import threading
import time

import pytest
import torch
from distributed import Client, LocalCluster

from adcourse import bench, sweep

METHODS = ["ae_l2", "ae_ssim"]
DATA = ["digits:0", "textures:brick"]
SEEDS = [0, 1]
TINY = {"ae_l2": {"epochs": 1}, "ae_ssim": {"epochs": 1}}
# what must be the same however a task was run; times and memory are measurements of the moment
SAME = (*bench.QUALITY, "per_defect", "parameters", "backbone", "supervised", "supervision", "overrides")


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           resources=sweep.SLOT)
    with Client(cluster) as connected:
        yield connected
    cluster.close()


@pytest.fixture(scope="module")
def swept(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    summary = sweep.run(METHODS, DATA, "quick", SEEDS, out, overrides=TINY, client=client, progress=False)
    return out, summary


def comparable(row: dict) -> dict:
    return {key: row.get(key) for key in SAME}


def test_sweep_equals_the_ordinary_benchmark(swept, tmp_path):
    out, summary = swept
    assert len(summary["done"]) == len(METHODS) * len(DATA) * len(SEEDS) and not summary["failed"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker of the cluster ran
    try:
        for data in DATA:
            ordinary = bench.run(METHODS, data, "quick", SEEDS, tmp_path / f"{sweep.slug(data)}.json",
                                 overrides=TINY, progress=False)
            merged = json.loads((out / f"bench_quick_{sweep.slug(data)}.json").read_text())
            assert {key: merged[key] for key in bench.SETTINGS} == \
                {key: ordinary[key] for key in bench.SETTINGS}
            for method in METHODS:
                assert comparable(merged["results"][method]) == comparable(ordinary["results"][method])
                assert merged["results"][method]["std"] == ordinary["results"][method]["std"]
                for seed in map(str, SEEDS):
                    assert comparable(merged["results"][method]["seeds"][seed]) == \
                        comparable(ordinary["results"][method]["seeds"][seed])
            assert (out / f"bench_quick_{sweep.slug(data)}.md").read_text().startswith("<!-- written by adcourse.bench")
    finally:
        torch.set_num_threads(threads)
    timed = {(row["method"], row["data"]): row for row in json.loads((out / "sweep_times.json").read_text())
             ["per_method_and_dataset"]}
    assert set(timed) == {(m, d) for m in METHODS for d in DATA}
    assert all(row["seeds"] == len(SEEDS) and row["total_seconds"] > 0 for row in timed.values())


def test_a_restart_skips_finished_tasks(swept, client):
    out, _ = swept
    before = {path: path.read_text() for path in (out / "tasks").rglob("*.json")}
    summary = sweep.run(METHODS, DATA, "quick", SEEDS, out, overrides=TINY, client=client, progress=False)
    assert summary["done"] == [] and summary["skipped_finished"] == len(before) == 8
    assert {path: path.read_text() for path in (out / "tasks").rglob("*.json")} == before


def test_a_sweep_of_other_settings_is_refused_before_it_runs(swept, client):
    out, _ = swept
    with pytest.raises(ValueError, match="other settings"):
        sweep.run(METHODS, DATA, "quick", SEEDS, out, overrides={"ae_l2": {"epochs": 2}}, client=client,
                  progress=False)


def test_a_failing_task_is_retried_then_recorded_and_the_rest_finish(client, tmp_path):
    missing = tmp_path / "no_such_folder"
    summary = sweep.run(["ae_l2"], ["digits:8", f"folder:{missing}"], "quick", [0], tmp_path / "out",
                        overrides={"ae_l2": {"epochs": 1}}, retries=1, client=client, progress=False)
    failed = sweep.Task("ae_l2", f"folder:{missing}", 0)
    assert summary["done"] == [sweep.Task("ae_l2", "digits:8", 0)] and list(summary["failed"]) == [failed]
    record = json.loads(failed.failure_file(tmp_path / "out" / "tasks").read_text())
    assert record["attempts"] == 2 and "no_such_folder" in record["error"]
    merged = json.loads((tmp_path / "out" / "bench_quick_digits_8.json").read_text())
    assert "image_auroc" in merged["results"]["ae_l2"]
    assert not (tmp_path / "out" / "bench_quick_folder_no_such_folder.json").exists()


def test_a_killed_worker_loses_no_finished_result(client, tmp_path):
    out = tmp_path / "out"
    tasks = sweep.plan(METHODS, ["digits:8"], [0, 1, 2])
    settings = {"ae_l2": {"epochs": 4}, "ae_ssim": {"epochs": 4}}  # tasks of a few seconds, to be killed in
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(sweep.run(
        METHODS, ["digits:8"], "quick", [0, 1, 2], out, overrides=settings, client=client, progress=False)))
    runner.start()
    finished, deadline = [], time.monotonic() + 120
    while not finished and time.monotonic() < deadline:
        finished = [task for task in tasks if task.file(out / "tasks").exists()]
        time.sleep(0.05)
    assert finished, "no task finished within two minutes"
    kept = {task: task.file(out / "tasks").read_text() for task in finished}
    busy = [address for address, keys in client.processing().items() if keys]
    pids = client.run(os.getpid, workers=busy[:1])
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=240)
    assert not runner.is_alive()
    assert busy, "no worker was running a task when one was to be killed"
    assert not outcome["failed"] and outcome["skipped_finished"] == 0
    assert all(task.file(out / "tasks").read_text() == text for task, text in kept.items())
    merged = json.loads((out / "bench_quick_digits_8.json").read_text())
    assert all(len(merged["results"][method]["seeds"]) == 3 and "image_auroc" in merged["results"][method]
               for method in METHODS)
    client.wait_for_workers(2, timeout=60)  # the nanny started the killed worker again


def test_the_slurm_adapter_writes_the_job_script_it_would_submit():
    options = {"cores": 8, "memory": "32GB", "walltime": "04:00:00", "queue": "gpu",
               "job_extra_directives": ["--gres=gpu:1"]}
    cluster = sweep.job_cluster("slurm", {**options, "scheduler_options": {"dashboard_address": None}})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1",
                 "export TQDM_DISABLE=1"):
        assert line in script
    worker = script.strip().splitlines()[-1]
    assert "--nthreads 8" in worker and "--resources slot=1" in worker  # one task per job, all its cores


def test_the_books_named_configuration_gives_the_job_script_it_promises():
    """The jobqueue.yaml of book/cluster.md, as printed there: a named section with only what differs
    from jobqueue.slurm (underscores and all) builds the job script the page describes."""
    import re

    import dask.config
    import yaml

    page = (Path(__file__).resolve().parents[1] / "book" / "cluster.md").read_text()
    configuration = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    # merged into the configuration as Dask merges a YAML file (section by section, the defaults kept)
    with dask.config.set({f"jobqueue.{name}": section for name, section in configuration["jobqueue"].items()}):
        cluster = sweep.job_cluster("slurm:adcourse-gpu", {"scheduler_options": {"dashboard_address": None}})
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    for line in ("#SBATCH -J adcourse", "#SBATCH -p gpu", "#SBATCH -A my-project", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1", "source ~/adcourse/.venv/bin/activate",
                 "export ADCOURSE_DATA=/project/datasets/adcourse", "export TQDM_DISABLE=1"):
        assert line in script
    # the configuration's own prologue is kept, the sweep's line added after it
    assert script.index("source ~/adcourse/.venv/bin/activate") < script.index("export TQDM_DISABLE=1")
    worker = script.strip().splitlines()[-1]
    assert "--nthreads 8" in worker and "--resources slot=1" in worker and "--death-timeout 120" in worker
    assert "--cluster slurm:adcourse-gpu --job-script" in page  # the command the page gives to check it


def test_a_named_section_that_does_not_exist_is_refused_naming_it():
    with pytest.raises(ValueError, match="no section jobqueue.no-such-section"):
        sweep.job_cluster("slurm:no-such-section")


@pytest.mark.parametrize("arguments, message", [
    (dict(data=["mvtec"]), "needs a part"),
    (dict(data=["folder:all"]), "'all' is known for"),
    (dict(data=["digits:0", "digits:0"]), "twice"),
    (dict(retries=-1), "--retries"),
    (dict(methods=["ae_l3"]), "ae_l2"),
])
def test_bad_arguments_are_refused_before_a_cluster_starts(tmp_path, arguments, message):
    call = {**dict(methods=["ae_l2"], data=["digits:0"], profile="quick", seeds=[0], out=tmp_path / "out",
                   cluster="no-such-cluster", progress=False), **arguments}
    with pytest.raises(ValueError, match=message):
        sweep.run(**call)
    assert not (tmp_path / "out").exists()


def test_an_unknown_cluster_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="local, a scheduler address"):
        sweep.run(["ae_l2"], ["digits:0"], "quick", [0], tmp_path / "out", cluster="kubernetes", progress=False)
    assert not (tmp_path / "out").exists()


def test_all_expands_to_every_part():
    assert len(sweep.expand_data(["mvtec:all", "btad:all"])) == 15 + 3
    assert sweep.expand_data(["textures:all"]) == ["textures:brick", "textures:grass", "textures:gravel"]
