"""The benchmark as many tasks on a Dask cluster: a laptop, a SLURM (PBS, SGE, LSF, HTCondor) queue,
or a scheduler that is already running.

    python -m adcourse.sweep --methods padim,patchcore --data mvtec:all,btad:all --profile full \\
        --seeds 0,1,2 --out results/ --cluster slurm --jobs 20

Every (method, dataset, seed) is one task, run by a Dask worker with :func:`adcourse.bench.run`,
exactly as ``python -m adcourse.bench`` runs it. Dask's own machinery does the scheduling
(``dask.distributed``); ``dask-jobqueue`` starts the workers as batch jobs through the cluster's
queue. ``--cluster`` chooses where:

* ``local`` (default): ``--workers`` processes on this machine, one task each at a time;
* ``slurm``, ``pbs``, ``sge``, ``lsf``, ``htcondor``: ``--jobs`` batch jobs of one worker each,
  configured by dask-jobqueue's own configuration (``~/.config/dask/jobqueue.yaml``, section
  ``jobqueue.slurm``; ``slurm:NAME`` reads the section ``jobqueue.NAME``) and ``--job-option
  key=value`` (any argument of the adapter, e.g. ``walltime=04:00:00``); ``--job-script`` prints the
  script the adapter would submit and stops;
* ``tcp://host:8786``: the workers of a scheduler already running there.

**Nothing finished is lost.** A task writes its row to a file of its own, atomically, under
``<out>/tasks/<dataset>/<method>/seed-<s>.json`` (``--work`` puts them elsewhere), and the sweep merges it at once into the
benchmark's usual results, ``<out>/bench_<profile>_<kind>_<part>.json`` with its Markdown table,
under the lock that ``python -m adcourse.bench --out`` takes. Started again, the sweep skips every
task that has its file. A task that raises is submitted again, ``--retries`` times at most, then
recorded as failed (``seed-<s>.failed.json``, with the error) while the others go on; a worker lost
mid-task costs only that task, which Dask runs again elsewhere. At the end the sweep prints the
time each method took per dataset, and writes it to ``<out>/sweep_times.json`` to size the next one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from . import bench
from .data import DatasetError
from .data.btad import BTAD_PRODUCTS
from .data.mvtec import MVTEC_CATEGORIES
from .corruption import TEXTURES
from .train import resolve_profile, write_text_atomic

# ``kind:all`` expands to every part of that kind.
ALL_PARTS = {"mvtec": MVTEC_CATEGORIES, "btad": BTAD_PRODUCTS, "textures": TEXTURES,
             "digits": tuple(str(c) for c in range(10))}
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                     "htcondor": "HTCondorCluster"}
# Each worker offers one "slot": a task takes it, so a worker runs one task at a time and that task
# gets all the worker's cores (and its GPU), however many threads Dask gives the worker.
SLOT = {"slot": 1}
# Workers write logs, not terminals: no training progress bars there (the sweep draws its own).
WORKER_ENV = {"TQDM_DISABLE": "1"}
INSTALL_HINT = "pip install dask distributed dask-jobqueue (or: pip install 'adcourse[cluster]')"


class Task(NamedTuple):
    """One run of the benchmark: a method on a dataset with one seed."""
    method: str
    data: str
    seed: int

    def file(self, work: Path) -> Path:
        return work / slug(self.data) / self.method / f"seed-{self.seed}.json"

    def failure_file(self, work: Path) -> Path:
        return work / slug(self.data) / self.method / f"seed-{self.seed}.failed.json"

    def __str__(self) -> str:
        return f"{self.method} on {self.data}, seed {self.seed}"


def slug(data: str) -> str:
    """A dataset spec as a file name: ``textures:brick`` → ``textures_brick``; a folder by its name."""
    kind, _, part = data.partition(":")
    if kind.lower() == "folder":
        part = Path(part).expanduser().resolve().name
    return f"{kind.lower()}_{part}".replace(os.sep, "_").replace(":", "_")


def expand_data(specs: list[str]) -> list[str]:
    """``kind:all`` as every part of that kind (``mvtec:all`` → the 15 categories); others as given."""
    if not specs or not all(isinstance(spec, str) and spec.strip() for spec in specs):
        raise ValueError(f"--data must name datasets such as textures:brick,digits:3 or mvtec:all, got {specs!r}")
    expanded = []
    for spec in (spec.strip() for spec in specs):
        kind, _, part = spec.partition(":")
        if part == "all":
            if kind.lower() not in ALL_PARTS:
                raise ValueError(f"--data {spec}: 'all' is known for {', '.join(f'{k}:all' for k in ALL_PARTS)}; "
                                 "name the parts of other kinds one by one")
            expanded += [f"{kind.lower()}:{name}" for name in ALL_PARTS[kind.lower()]]
        elif not part:
            raise ValueError(f"--data {spec!r} needs a part after a colon, e.g. textures:brick or mvtec:all")
        else:
            expanded.append(spec)
    if len(set(expanded)) < len(expanded):
        raise ValueError(f"--data names a dataset twice: {', '.join(expanded)}")
    return expanded


def plan(methods: list[str], data: list[str], seeds: list[int]) -> list[Task]:
    """Every (method, dataset, seed), datasets outermost: each results file fills up as early as it can."""
    return [Task(method, spec, seed) for spec in data for method in methods for seed in seeds]


# --- on the worker ---------------------------------------------------------------------------------

def run_task(task: Task, settings: dict, work: str) -> dict:
    """Run one task with :func:`adcourse.bench.run` and write its file; runs on a Dask worker.

    The task uses as many threads as its worker has (one slot per worker: it has them to itself).
    Returns what the file holds: the task, the settings, and its row (or why the method skipped)."""
    import torch

    try:
        from distributed import get_worker
        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):  # not on a worker: a direct call keeps the caller's threads
        pass
    method = task.method
    overrides = (settings["overrides"] or {}).get(method)
    report = bench.run([method], task.data, settings["profile"], seed=task.seed, data_seed=settings["data_seed"],
                       progress=False, overrides={method: overrides} if overrides else None,
                       validation=settings["validation"],
                       command=f"adcourse.sweep task: {task}")
    entry = report["results"][method]
    payload = {"task": task._asdict(), "settings": settings, "torch": torch.__version__,
               **({"skipped": entry} if "skipped" in entry else {"row": entry["seeds"][str(task.seed)]})}
    write_text_atomic(task.file(Path(work)), json.dumps(payload, indent=2) + "\n")
    task.failure_file(Path(work)).unlink(missing_ok=True)
    return payload


# --- on the client ---------------------------------------------------------------------------------

def read_task(task: Task, work: Path, settings: dict) -> dict | None:
    """The finished task's file, None when it has none; a file of other settings is refused."""
    path = task.file(work)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({error}): delete it to run {task} again") from error
    if payload.get("settings") != settings:
        held = bench.describe_settings(payload.get("settings") or {})
        raise ValueError(f"{path} holds {task} with other settings ({held}) than this sweep's "
                         f"({bench.describe_settings(settings)}). It was left as it is: use another --out, or "
                         "move that folder away.")
    return payload


def merge(tasks: list[Task], work: Path, out: Path, settings: dict, command: str) -> Path | None:
    """Merge the finished tasks of one dataset into its results file, under the benchmark's lock;
    None, and no file, while the dataset has no finished task and no file yet."""
    results: dict[str, dict] = {}
    devices = set()
    for task in tasks:
        payload = read_task(task, work, settings)
        if payload is None:
            continue
        if "skipped" in payload:
            results[task.method] = payload["skipped"]
            continue
        results.setdefault(task.method, {"seeds": {}})["seeds"][str(task.seed)] = payload["row"]
        devices.add(payload["row"].get("device", "unknown"))
    results = bench.merge_results(results, {}, settings["seeds"])
    path = out / f"bench_{settings['profile']}_{slug(settings['data'])}.json"
    if not results and not path.exists():
        return None
    bench.save_report(path, settings, results, device=" / ".join(sorted(devices)) or "none yet", command=command)
    return path


def record_failure(task: Task, work: Path, error: BaseException, attempts: int) -> None:
    payload = {"task": task._asdict(), "attempts": attempts, "error": f"{type(error).__name__}: {error}",
               "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(task.failure_file(work), json.dumps(payload, indent=2) + "\n")


def times(tasks: list[Task], work: Path, settings_of: dict[str, dict]) -> list[dict]:
    """Seconds per (method, dataset): mean over its finished seeds, and their total."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for task in tasks:
        payload = read_task(task, work, settings_of[task.data])
        if payload and "row" in payload:
            seconds.setdefault((task.method, task.data), []).append(payload["row"]["wall_seconds"])
    return [{"method": method, "data": data, "seeds": len(values), "mean_seconds": sum(values) / len(values),
             "total_seconds": sum(values)} for (method, data), values in seconds.items()]


def open_client(cluster: str = "local", workers: int = 2, jobs: int = 1, job_options: dict | None = None):
    """A Dask client for ``cluster`` (see the module's notes) and whether its workers offer a slot."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ValueError(f"the sweep runs on Dask, which is not installed: {INSTALL_HINT}") from error
    if cluster == "local":
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"--workers must be a whole number of at least 1, got {workers!r}")
        # The workers inherit this process's environment when they start (and when a lost one is
        # started again), before they import anything: tqdm reads TQDM_DISABLE at import.
        os.environ.update(WORKER_ENV)
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             resources=SLOT)
        return Client(local), True
    if "://" in cluster:
        client = Client(cluster, timeout="30s")
        offered = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
        return client, bool(offered) and all("slot" in r for r in offered)
    batch = job_cluster(cluster, job_options)
    batch.scale(jobs=jobs)
    return Client(batch), True


def check_cluster(cluster) -> None:
    """``--cluster`` names a kind the sweep knows (it is not started here)."""
    if not isinstance(cluster, str) or not (cluster == "local" or "://" in cluster
                                            or cluster.partition(":")[0] in JOBQUEUE_CLUSTERS):
        raise ValueError(f"--cluster {cluster!r}: use local, a scheduler address such as tcp://host:8786, or one "
                         f"of {', '.join(JOBQUEUE_CLUSTERS)} (optionally :NAME, a section of jobqueue.yaml)")


def job_cluster(cluster: str, job_options: dict | None = None):
    """The dask-jobqueue cluster object for ``slurm`` (or ``slurm:NAME``, a named configuration)."""
    check_cluster(cluster)
    kind, _, name = cluster.partition(":")
    if kind not in JOBQUEUE_CLUSTERS:
        raise ValueError(f"--cluster {cluster!r} is not a batch queue: --job-script needs one of "
                         f"{', '.join(JOBQUEUE_CLUSTERS)}")
    try:
        import dask_jobqueue
    except ImportError as error:
        raise ValueError(f"--cluster {kind} needs dask-jobqueue: {INSTALL_HINT}") from error
    import dask.config

    options = dict(job_options or {})
    section = f"jobqueue.{name or kind}"
    if name:
        own = dask.config.get(section, None)
        if not isinstance(own, dict):
            raise ValueError(f"--cluster {cluster}: there is no section {section} in the Dask configuration "
                             "(~/.config/dask/jobqueue.yaml, or a file in $DASK_CONFIG); add one, or use --cluster "
                             f"{kind} with --job-option")
        # A named section needs only what differs from the adapter's own: the rest comes from jobqueue.<kind>.
        # (Set for the whole process: dask-jobqueue reads it again each time it starts a job.)
        hyphenated = lambda keys: {key.replace("_", "-"): value for key, value in keys.items()}  # noqa: E731
        dask.config.set({section: {**hyphenated(dask.config.get(f"jobqueue.{kind}")), **hyphenated(own)}})

    def configured(option: str) -> list:
        """An option's list from the command line, else from the configuration file's section."""
        value = options.pop(option, None)
        return list(value if value is not None else dask.config.get(f"{section}.{option}", None) or [])

    # one worker process per job, offering one slot: a task has the job's cores and GPU to itself
    options.setdefault("processes", 1)
    options["worker_extra_args"] = [*configured("worker_extra_args"), "--resources", "slot=1"]
    options["job_script_prologue"] = [*configured("job_script_prologue"),
                                      *(f"export {key}={value}" for key, value in WORKER_ENV.items())]
    if name:
        options["config_name"] = name
    try:
        return getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[kind])(**options)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"--cluster {cluster}: dask-jobqueue refused its configuration ({error}). Give cores, "
                         f"memory and the queue in ~/.config/dask/jobqueue.yaml (section jobqueue.{name or kind}) "
                         "or with --job-option, e.g. --job-option cores=8 --job-option memory=32GB") from error


def run(methods: list[str], data: list[str], profile: str = "quick", seeds=(0,), out: str | os.PathLike = "sweep",
        overrides: dict | None = None, data_seed: int | None = None, validation: bool = True, retries: int = 2,
        client=None, work: str | os.PathLike | None = None,
        cluster: str = "local", workers: int = 2, jobs: int = 1, job_options: dict | None = None,
        progress: bool = True, command: str | None = None) -> dict:
    """Run every (method, dataset, seed) not yet finished in ``out`` as a task on a Dask cluster.

    ``work``: the folder of every task's own file (default ``<out>/tasks``). ``client``: an existing
    ``distributed.Client`` (its workers should offer the resource ``slot=1``); otherwise one is opened
    for ``cluster`` and closed at the end. Returns ``{"done": [...],
    "failed": {task: error}, "skipped_finished": n, "files": [...], "times": [...]}``. Every argument
    is checked before anything is submitted."""
    profile = resolve_profile(profile)
    methods = bench.check_methods(methods)
    seeds = bench.check_seeds(list(seeds) if not isinstance(seeds, int) else seeds)
    if data_seed is not None:
        data_seed = bench.check_seeds(data_seed)[0]
    overrides = bench.check_overrides(overrides, methods)
    data = expand_data(list(data))
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"--retries must be a whole number of at least 0, got {retries!r}")
    if client is None:
        check_cluster(cluster)
    if out is None or not str(out).strip():
        raise ValueError("--out must name a folder for the results, such as results/")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the sweep writes a folder of results files: give a folder name")
    work = out / "tasks" if work is None else Path(work).expanduser()
    command = command or f"adcourse.sweep.run(methods={methods}, data={data}, profile={profile!r}, seeds={seeds})"
    settings_of = {spec: bench.run_settings(spec, profile, seeds, data_seed, overrides, validation) for spec in data}
    tasks = plan(methods, data, seeds)
    todo = [task for task in tasks if read_task(task, work, settings_of[task.data]) is None]
    for spec in data:  # results files of other settings are refused before anything runs
        bench.check_results_file(out / f"bench_{profile}_{slug(spec)}.json", settings_of[spec])
    out.mkdir(parents=True, exist_ok=True)
    summary = {"done": [], "failed": {}, "skipped_finished": len(tasks) - len(todo), "files": []}
    start = time.perf_counter()
    own_client = client is None
    before = {key: os.environ.get(key) for key in WORKER_ENV}
    if todo:
        if own_client:
            client, slots = open_client(cluster, workers, jobs, job_options)
        else:
            slots = True
        try:
            _submit_all(client, todo, tasks, work, out, settings_of, retries, slots, progress, command, summary)
        finally:
            if own_client:
                cluster_object = client.cluster
                client.close()
                if cluster_object is not None:
                    cluster_object.close()
                for key, value in before.items():  # what open_client set for the workers
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
    merged = [merge([t for t in tasks if t.data == spec], work, out, settings_of[spec], command) for spec in data]
    summary["files"] = [str(path) for path in merged if path is not None]
    summary["times"] = times(tasks, work, settings_of)
    write_text_atomic(out / "sweep_times.json", json.dumps({
        "command": command, "profile": profile, "wall_clock_seconds": time.perf_counter() - start,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "per_method_and_dataset": summary["times"]}, indent=2) + "\n")
    return summary


def _submit_all(client, todo, tasks, work, out, settings_of, retries, slots, progress, command, summary):
    from distributed import as_completed

    resources = SLOT if slots else None
    attempts: dict[Task, int] = {}

    def submit(task: Task):
        attempts[task] = attempts.get(task, 0) + 1
        return client.submit(run_task, task, settings_of[task.data], str(work), pure=False, resources=resources,
                             key=f"adcourse-sweep-{slug(task.data)}-{task.method}-{task.seed}-{attempts[task]}")

    futures = {}
    for task in todo:
        futures[submit(task)] = task
    bar = tqdm(total=len(todo), desc="tasks", unit="task", disable=not progress)
    queue = as_completed(list(futures))
    for future in queue:
        task = futures.pop(future)
        if future.status == "finished":
            summary["done"].append(task)
            merge([t for t in tasks if t.data == task.data], work, out, settings_of[task.data], command)
            bar.update()
        else:
            error = future.exception()
            if attempts[task] <= retries:
                retry = submit(task)
                futures[retry] = task
                queue.add(retry)
            else:
                record_failure(task, work, error, attempts[task])
                summary["failed"][task] = f"{type(error).__name__}: {error}"
                bar.update()
        # with slots a busy worker runs one task, the others assigned to it wait
        running = sum(min(len(keys), 1 if slots else len(keys)) for keys in client.processing().values())
        bar.set_postfix(done=len(summary["done"]), running=running, failed=len(summary["failed"]))
    bar.close()


def times_table(rows: list[dict]) -> str:
    lines = ["| method | dataset | seeds | mean s per seed | total s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['data']} | {r['seeds']} | {r['mean_seconds']:.1f} | {r['total_seconds']:.1f} |"
              for r in sorted(rows, key=lambda r: (r["data"], r["method"]))]
    return "\n".join(lines) + "\n"


def parse_option(text: str) -> tuple[str, object]:
    """``--job-option walltime=04:00:00`` as ``("walltime", "04:00:00")``; numbers and lists as Python literals."""
    import ast

    name, equals, value = text.partition("=")
    if not (equals and name.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=VALUE, such as walltime=04:00:00 or cores=8")
    try:
        value = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        value = value.strip()
    return name.strip(), value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adcourse.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated, or 'all'")
    parser.add_argument("--data", help="comma-separated, e.g. textures:all,digits:3 or mvtec:all,btad:all")
    parser.add_argument("--profile", default="auto", choices=["auto", "quick", "full"])
    parser.add_argument("--seeds", type=bench.parse_seeds, default=[0], help="comma-separated, e.g. 0,1,2 (default 0)")
    parser.add_argument("--data-seed", type=int, default=None,
                        help="draw the data once with this seed for every seed (default: each seed draws its own)")
    parser.add_argument("--set", dest="settings", type=bench.parse_setting, action="append", default=[],
                        metavar="METHOD.SETTING=VALUE", help="change one setting of one method, as in adcourse.bench")
    parser.add_argument("--no-validation", dest="validation", action="store_false",
                        help="train on every training image, as adcourse.bench --no-validation")
    parser.add_argument("--out", help="folder for the results files (and tasks/ of every task's own)")
    parser.add_argument("--work", default=None, help="folder for every task's own file (default: OUT/tasks)")
    parser.add_argument("--retries", type=int, default=2, help="times a failed task is submitted again (default 2)")
    parser.add_argument("--cluster", default="local",
                        help="local (default), slurm, pbs, sge, lsf, htcondor (:NAME for a named jobqueue.yaml "
                             "section), or a scheduler address such as tcp://host:8786")
    parser.add_argument("--workers", type=int, default=2, help="local: worker processes (default 2)")
    parser.add_argument("--jobs", type=int, default=1, help="slurm etc.: batch jobs, one worker each (default 1)")
    parser.add_argument("--job-option", dest="job_options", type=parse_option, action="append", default=[],
                        metavar="NAME=VALUE", help="slurm etc.: an argument of the dask-jobqueue cluster, e.g. "
                                                   "walltime=04:00:00 (repeatable)")
    parser.add_argument("--job-script", action="store_true",
                        help="slurm etc.: print the job script the adapter would submit, and stop")
    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in ("methods", "data", "out") if getattr(args, name) is None]
    if missing and not args.job_script:
        parser.error(f"{', '.join(missing)} required (only --job-script runs without them)")
    command = " ".join(["python -m adcourse.sweep", *(argv if argv is not None else sys.argv[1:])])
    try:
        if args.job_script:
            batch = job_cluster(args.cluster, dict(args.job_options))
            print(batch.job_script())
            batch.close()
            return 0
        overrides: dict[str, dict] = {}
        for method, name, value in args.settings:
            overrides.setdefault(method, {})[name] = value
        summary = run(args.methods.split(","), args.data.split(","), args.profile, args.seeds, args.out,
                      overrides or None, args.data_seed, args.validation, args.retries, cluster=args.cluster, work=args.work, workers=args.workers,
                      jobs=args.jobs, job_options=dict(args.job_options), command=command)
    except (ValueError, DatasetError) as error:
        parser.exit(2, f"error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\ninterrupted; every finished task is in {args.out}: run the same command to resume\n")
    print(f"\n{len(summary['done'])} tasks run, {summary['skipped_finished']} already finished, "
          f"{len(summary['failed'])} failed; results in {', '.join(summary['files'])}\n")
    print(times_table(summary["times"]))
    for task, error in summary["failed"].items():
        print(f"failed: {task}: {error}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
