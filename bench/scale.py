"""Cost per task, controller memory and store size of a large experiment, next to
``concurrent.futures``, raw Ray and Dask on the same no-op payload (``work.noop``).

    python bench/scale.py --tasks 100000 [--strategy thread,process] [--workers 2]
                          [--skip ray,dask] [--skip-baselines] [--define list|sweep]
                          [--json rows.json] [--profile DIR] [--keep]

Every measurement runs in a fresh process of its own, so that one's imports and memory
are not charged to the next. "RSS" is that process's own peak (``getrusage`` when it
ends): the controller's for steadyrun (the ``process`` strategy's workers are not
counted), the driver's for Ray and Dask (their workers and daemons are not counted).
"setup" is what comes before the measured part (making the task list; starting Ray or
the Dask cluster and warming their workers), "seconds" the measured part, "ms/task"
seconds / tasks, "proc s" the process's whole life, interpreter start included.

steadyrun: ``Experiment([Task(f"t{i}", Partial(noop, i=i)) ...])`` (``--define sweep``:
``sweep(Task("t", Partial(noop, i=0)), {"i": range(N)})``) on ``LocalExecutor(strategy,
max_workers=--workers)`` with ``progress=False, monitor_interval=None``, in a fresh
``STEADYRUN_HOME``; "seconds" is the wall of ``.run()``. Then the store: allocated
blocks (``st_blocks * 512``, as ``du`` counts them) of the experiment's folder, its
folders included, and of the store's files beside it (the database with -wal and -shm),
the number of files and folders, and bytes per attempt beyond logs (``*.log`` files left
out); and the wall of ``steadyrun status ID``, ``status ID --all`` (to /dev/null; shown
as n/a where the flag does not exist) and ``resume ID`` with nothing left to do (medians
of ``--repeat`` runs).

Baselines (Ray and Dask skipped, with a note, when their package is missing), each with
``--workers`` workers: ThreadPoolExecutor ``map`` (chunksize does not apply to threads)
and ProcessPoolExecutor ``map`` with chunksize 1 and with N / (workers * 10) (the pools'
start counted); raw Ray (``ray.init(num_cpus=workers)``,
``ray.remote`` calls, ``ray.get`` per chunk of 10,000); Dask (``LocalCluster`` of
``workers`` single-threaded worker processes, ``client.map`` + ``client.gather`` per
chunk of 10,000).

Targets (from the scale work) are printed under each steadyrun row, met or missed:
thread <= 0.1 ms/task, process <= 0.2 ms/task, RSS <= 250 MB, <= 1 KiB per attempt
beyond logs, status <= 0.3 s, resume <= 1 s. ``--profile DIR`` runs the experiment
under cProfile (the controller's main thread only; figures of a profiled run are
inflated) and writes ``DIR/scale-<strategy>-<N>.txt`` (top 40 by cumulative and by
own time) and ``.pstats``; then ``-status`` and ``-resume`` files of one ``steadyrun
status`` and one ``resume`` under cProfile. The stores are removed at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
CHUNK = 10_000  # tasks submitted at once to Ray and Dask
TARGETS = {  # name -> (row key, limit, unit)
    "thread": ("ms_per_task", 0.1, "ms/task"),
    "process": ("ms_per_task", 0.2, "ms/task"),
    "rss": ("rss_mb", 250.0, "RSS MB"),
    "store": ("bytes_per_attempt", 1024.0, "B/attempt"),
    "status": ("status_s", 0.3, "status s"),
    "resume": ("resume_s", 1.0, "resume s"),
}
BASELINES = ("futures", "ray", "dask")
PACKAGES = {"ray": "ray", "dask": "distributed"}


# ---------------------------------------------------------------- in the child process

def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_steadyrun(a: argparse.Namespace) -> dict[str, Any]:
    from work import noop

    import steadyrun as run

    start = time.perf_counter()
    if a.define == "sweep":
        tasks = run.sweep(run.Task("t", run.Partial(noop, i=0)), {"i": list(range(a.tasks))})
        last = f"t[i={a.tasks - 1}]"
    else:
        tasks = [run.Task(f"t{i}", run.Partial(noop, i=i)) for i in range(a.tasks)]
        last = f"t{a.tasks - 1}"
    exp = run.Experiment(tasks, title=f"scale-{a.strategy}-{a.tasks}", progress=False,
                         monitor_interval=None,
                         executor=run.LocalExecutor(strategy=a.strategy,
                                                    max_workers=a.workers))
    del tasks
    setup = time.perf_counter() - start
    prof = None
    if a.profile_out:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    start = time.perf_counter()
    result = exp.run()
    seconds = time.perf_counter() - start
    if prof is not None:
        prof.disable()
        _write_profile(prof, Path(a.profile_out), f"{a.strategy}, {a.tasks} tasks, "
                       f"{seconds:.2f} s under the profiler")
    assert result is not None  # not detached
    if result[last].value != a.tasks - 1:
        raise SystemExit(f"wrong result for {last}: {result[last].value!r}")
    return {"id": exp.id, "setup_s": setup, "seconds": seconds, "profiled": prof is not None}


def _write_profile(prof: Any, out: Path, title: str) -> None:
    import io
    import pstats

    prof.dump_stats(str(out.with_suffix(".pstats")))
    text = io.StringIO()
    text.write(f"# cProfile of Experiment.run(), controller main thread: {title}\n")
    for key in ("cumulative", "tottime"):
        text.write(f"\n## top 40 by {key}\n")
        pstats.Stats(prof, stream=text).sort_stats(key).print_stats(40)
    out.write_text(text.getvalue())


def child_futures(a: argparse.Namespace) -> dict[str, Any]:
    import concurrent.futures as cf

    from work import noop

    pool_cls = cf.ThreadPoolExecutor if a.strategy == "thread" else cf.ProcessPoolExecutor
    start = time.perf_counter()
    with pool_cls(max_workers=a.workers) as pool:
        values = list(pool.map(noop, range(a.tasks), chunksize=a.chunksize))
    seconds = time.perf_counter() - start
    assert values[-1] == a.tasks - 1
    return {"setup_s": 0.0, "seconds": seconds}


def child_ray(a: argparse.Namespace) -> dict[str, Any]:
    import ray
    from work import noop

    start = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop: Any = ray.remote(num_cpus=1, max_retries=0)(noop)
        ray.get([remote_noop.remote(i) for i in range(20)])  # workers started
        setup = time.perf_counter() - start
        start = time.perf_counter()
        for lo in range(0, a.tasks, CHUNK):
            values = ray.get([remote_noop.remote(i)
                              for i in range(lo, min(a.tasks, lo + CHUNK))])
        seconds = time.perf_counter() - start
        assert values[-1] == a.tasks - 1
    finally:
        ray.shutdown()
    return {"setup_s": setup, "seconds": seconds}


def child_dask(a: argparse.Namespace) -> dict[str, Any]:
    from distributed import Client, LocalCluster
    from work import noop

    start = time.perf_counter()
    with LocalCluster(n_workers=a.workers, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(noop, range(20), pure=False))  # workers started
        setup = time.perf_counter() - start
        start = time.perf_counter()
        for lo in range(0, a.tasks, CHUNK):
            values = client.gather(client.map(noop, range(lo, min(a.tasks, lo + CHUNK)),
                                              pure=False))
        seconds = time.perf_counter() - start
        assert values[-1] == a.tasks - 1
    return {"setup_s": setup, "seconds": seconds}


CHILDREN = {"steadyrun": child_steadyrun, "futures": child_futures, "ray": child_ray,
            "dask": child_dask}


def child_main(a: argparse.Namespace) -> None:
    sys.path.insert(0, a.src)
    sys.path.insert(0, str(HERE))
    row = CHILDREN[a.child](a)
    row["rss_mb"] = _rss_mb()
    Path(a.result_file).write_text(json.dumps(row))


# ---------------------------------------------------------------- in the parent process

def spawn(kind: str, a: argparse.Namespace, work: Path, label: str,
          env: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Run one measurement in a child process; its row, or one with ``error`` set."""
    result_file = work / f"{label}.json"
    log = work / f"{label}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--tasks", str(a.tasks), "--workers", str(a.workers),
           "--result-file", str(result_file), "--define", a.define, "--src", a.src]
    for key, value in extra.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timer = threading.Timer(a.timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid)  # whatever it left behind (a stray worker or daemon)
    row: dict[str, Any] = {"name": label, "tasks": a.tasks,
                           "proc_s": time.perf_counter() - start}
    if proc.returncode != 0 or not result_file.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-30:]
        row["error"] = f"exit {proc.returncode}: {tail[-1] if tail else '(no output)'}"
        row["log_tail"] = tail
        return row
    row.update(json.loads(result_file.read_text()))
    row["ms_per_task"] = row["seconds"] / a.tasks * 1e3
    return row


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)


def child_env(src: str, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [src, str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if home is not None:
        env["STEADYRUN_HOME"] = str(home)
    return env


def store_size(home: Path, exp_id: str, tasks: int) -> dict[str, Any]:
    """Allocated bytes (folders' own blocks included), files and folders of the
    experiment's folder, and the store's files beside it (the database with -wal and
    -shm, and whatever else the store keeps there)."""
    blocks = logs = files = folders = 0
    exp_dir = home / "experiments" / exp_id
    for root, _dirs, names in os.walk(exp_dir):
        folders += 1
        blocks += os.lstat(root).st_blocks * 512
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            blocks += st.st_blocks * 512
            if name.endswith(".log"):
                logs += st.st_blocks * 512
    for entry in os.scandir(home):
        if entry.is_file(follow_symlinks=False):
            files += 1
            blocks += entry.stat(follow_symlinks=False).st_blocks * 512
    db = home / "steadyrun.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            attempts = conn.execute("SELECT count(*) FROM attempts WHERE exp_id=?",
                                    (exp_id,)).fetchone()[0]
    except sqlite3.Error:
        attempts = tasks  # a schema this does not know: one attempt per task
    return {"store_bytes": blocks, "log_bytes": logs, "files": files, "folders": folders,
            "attempts": attempts,
            "bytes_per_attempt": (blocks - logs) / max(1, attempts)}


def cli_wall(args: list[str], env: dict[str, str], repeat: int) -> tuple[float | None, str]:
    """Median wall of ``steadyrun ARGS`` (output to /dev/null); None when it fails."""
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            return None, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}"
        if walls[-1] > 10:
            break  # slow enough that one run says it
    return statistics.median(walls), ""


def profile_cli(args: list[str], env: dict[str, str], out: Path) -> None:
    """``steadyrun ARGS`` once more under cProfile: the top 40 lines into ``out``."""
    import io
    import pstats

    raw = out.with_suffix(".pstats")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(raw), "-m", "steadyrun",
                    *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, check=False)
    if not raw.exists():
        return
    text = io.StringIO()
    text.write(f"# cProfile of `steadyrun {' '.join(args)}`\n")
    for key in ("cumulative", "tottime"):
        text.write(f"\n## top 40 by {key}\n")
        pstats.Stats(str(raw), stream=text).sort_stats(key).print_stats(40)
    out.write_text(text.getvalue())


def measure_steadyrun(strategy: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    home = work / f"home-{strategy}"
    env = child_env(a.src, home)
    profile_out = None
    if a.profile:
        Path(a.profile).mkdir(parents=True, exist_ok=True)
        profile_out = str(Path(a.profile).resolve() / f"scale-{strategy}-{a.tasks}.txt")
    row = spawn("steadyrun", a, work, f"steadyrun {strategy}", env, strategy=strategy,
                profile_out=profile_out)
    row["strategy"] = strategy
    if "error" in row:
        return row
    row.update(store_size(home, row["id"], a.tasks))
    notes = []
    for key, args, repeat in (("status_s", ["status", row["id"]], a.repeat),
                              ("status_all_s", ["status", row["id"], "--all"], a.repeat),
                              ("resume_s", ["resume", row["id"], "--quiet"], a.repeat)):
        row[key], why = cli_wall(args, env, repeat)
        if why:
            notes.append(f"{' '.join(args[:1] + args[2:])}: {' '.join(why.split())}")
    row["notes"] = notes
    if profile_out:
        for cmd in (["status", row["id"]], ["resume", row["id"], "--quiet"]):
            profile_cli(cmd, env, Path(profile_out).with_name(
                f"scale-{strategy}-{a.tasks}-{cmd[0]}.txt"))
    if not a.keep:
        shutil.rmtree(home, ignore_errors=True)
    return row


def measure_baselines(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    env = child_env(a.src)
    skip = set(a.skip)
    big = max(1, a.tasks // (a.workers * 10))
    plan: list[tuple[str, str, dict[str, Any]]] = []
    if "futures" not in skip:
        plan += [("futures", "futures thread", {"strategy": "thread", "chunksize": 1}),
                 ("futures", "futures process c=1", {"strategy": "process", "chunksize": 1}),
                 ("futures", f"futures process c={big}",
                  {"strategy": "process", "chunksize": big})]
    for kind in ("ray", "dask"):
        if kind in skip:
            continue
        if importlib.util.find_spec(PACKAGES[kind]) is None:
            rows.append({"name": kind, "tasks": a.tasks,
                         "error": f"skipped: package {PACKAGES[kind]!r} is not installed"})
            continue
        plan.append((kind, f"raw {kind}", {}))
    for kind, label, extra in plan:
        print(f"  {label} ...", file=sys.stderr, flush=True)
        rows.append(spawn(kind, a, work, label, env, **extra))
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def targets_line(row: dict[str, Any]) -> str:
    parts = []
    for name in (row["strategy"], "rss", "store", "status", "resume"):
        key, limit, unit = TARGETS.get(name, (None, None, None))
        if key is None:
            continue
        value = row.get(key)
        verdict = "n/a" if value is None else ("met" if value <= limit else "MISSED")
        parts.append(f"{unit} <= {limit:g}: {verdict} ({_fmt(value, '.3g')})")
    return "    targets: " + "; ".join(parts)


def print_table(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    head = (f"{'name':<24}{'tasks':>8}{'setup s':>9}{'seconds':>9}{'ms/task':>9}"
            f"{'proc s':>8}{'RSS MB':>8}{'store MB':>9}{'files':>8}{'dirs':>8}"
            f"{'B/att':>7}{'status':>8}{'st.all':>8}{'resume':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<24}{r['tasks']:>8}  {r['error'][:400]}")
            continue
        mb = r.get("store_bytes")
        print(f"{r['name']:<24}{r['tasks']:>8}{r['setup_s']:>9.2f}{r['seconds']:>9.2f}"
              f"{r['ms_per_task']:>9.3f}{r['proc_s']:>8.1f}{r['rss_mb']:>8.0f}"
              f"{_fmt(None if mb is None else mb / 2**20, '.1f'):>9}"
              f"{_fmt(r.get('files'), 'd'):>8}{_fmt(r.get('folders'), 'd'):>8}"
              f"{_fmt(r.get('bytes_per_attempt'), '.0f'):>7}{_fmt(r.get('status_s'), '.2f'):>8}"
              f"{_fmt(r.get('status_all_s'), '.2f'):>8}{_fmt(r.get('resume_s'), '.2f'):>8}")
        if "strategy" in r:
            if r.get("profiled"):
                print("    (run under cProfile: times inflated)")
            print(targets_line(r))
            for note in r.get("notes", []):
                print(f"    note: {note[:300]}")
    load = os.getloadavg()
    print(f"(workers={a.workers}, cores={os.cpu_count()}, load average at the end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; status/resume: median of "
          f"{a.repeat}; B/att: store bytes beyond *.log per attempt)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--strategy", default="thread,process",
                    help="steadyrun strategies, comma-separated (empty: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip", default="", help="baselines to leave out: futures,ray,dask")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--define", choices=("list", "sweep"), default="list",
                    help="how the steadyrun tasks are made: a list of Task, or run.sweep")
    ap.add_argument("--repeat", type=int, default=3, help="runs of status and resume")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--profile", metavar="DIR", help="profile the steadyrun runs into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the stores (their path printed)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    ap.add_argument("--src", default=str(SRC),
                    help="the steadyrun sources to measure (default: this checkout's src; "
                         "e.g. an export of another commit, to compare)")
    # the child side
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--result-file", help=argparse.SUPPRESS)
    ap.add_argument("--chunksize", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.src = str(Path(a.src).resolve())
    if a.child:
        a.strategy = a.strategy.split(",")[0]
        child_main(a)
        return
    a.skip = [s.strip() for s in a.skip.split(",") if s.strip()]
    unknown = set(a.skip) - set(BASELINES)
    if unknown:
        ap.error(f"--skip: unknown {', '.join(sorted(unknown))}; choose from "
                 f"{', '.join(BASELINES)}")
    if a.tasks < 1:
        ap.error("--tasks must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="steadyrun-scale-"))
    rows = []
    try:
        for strategy in [s.strip() for s in a.strategy.split(",") if s.strip()]:
            print(f"  steadyrun {strategy}, {a.tasks} tasks ...", file=sys.stderr, flush=True)
            rows.append(measure_steadyrun(strategy, a, work))
        if not a.skip_baselines:
            rows += measure_baselines(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, a)
    if a.keep:
        print(f"(stores and logs kept in {work})")
    if a.json:
        Path(a.json).write_text(json.dumps({"load": os.getloadavg(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
