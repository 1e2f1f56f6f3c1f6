"""How long the `steadyrun` command takes on a large store.

Fills a fresh store (a temporary ``STEADYRUN_HOME``) with 10,000 experiments of 10 tasks
each (one attempt and two events per task), then times whole processes, start to exit:
``steadyrun list``, ``steadyrun status ID`` (by a unique prefix) and ``steadyrun --help``.
Prints the median, min and max of each next to its target. Exit status 1 when a median
is over its target.

    python bench/store.py [--experiments 10000] [--tasks 10] [--runs 5]

The store is filled through ``Store`` (schema, one experiment made the ordinary way) and
one ``executemany`` transaction on ``store.db_path`` for the rest. The newest experiment
is ``running`` with a live controller (this process), so ``list`` also pays for checking
that a controller is alive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
TARGETS_MS = {"list": 300.0, "status": 300.0, "help": 250.0}
STATES = ("succeeded",) * 8 + ("failed", "cancelled")


def fill(home: Path, experiments: int, tasks: int) -> tuple[str, float]:
    """Fill the store at ``home``; returns the id of an experiment in the middle and the
    seconds it took."""
    from steadyrun.store.db import Store

    started = time.perf_counter()
    store = Store(home)
    # one made the ordinary way: its folder and definition exist as a real one's would
    store.create_experiment("bench-real", [{"name": f"t{i}", "depends_on": [], "resources": {},
                                            "fingerprint": None} for i in range(tasks)],
                            {"type": "LocalExecutor"}, {"definition.yaml": b"{}\n"})
    db_path = store.db_path
    store.close()

    now = time.time()
    exp_rows, task_rows, attempt_rows, event_rows = [], [], [], []
    executor = json.dumps({"type": "LocalExecutor", "strategy": "subprocess"})
    resources = json.dumps({"cpus": 1, "memory": None, "gpus": 0})
    for n in range(experiments):
        exp_id = f"bench-{n:06d}-{n * 7919 % 65536:04x}"
        created = now - (experiments - n) * 60.0
        state = STATES[n % len(STATES)]
        exp_dir = str(home / "experiments" / exp_id)
        exp_rows.append((exp_id, f"bench-{n % 50}", state, created, created + 1.0,
                         created + 50.0, executor, exp_dir))
        for t in range(tasks):
            name = f"train[lr={t}]"
            t_state = "failed" if state == "failed" and t == tasks - 1 else (
                "cancelled" if state == "cancelled" and t >= tasks // 2 else "succeeded")
            kind = {"failed": "error", "cancelled": "cancelled"}.get(t_state)
            message = "RuntimeError: boom" if t_state == "failed" else ""
            task_rows.append((exp_id, name, t, t_state, 1, kind, "[]", resources, None,
                              f"train_lr_{t}", message))
            attempt_rows.append((exp_id, name, 1, t_state, kind, 1 if kind == "error" else 0,
                                 created + 1.0 + t, created + 5.0 + t, 10000 + t, "bench-host",
                                 "local/subprocess", resources, "{}", None, message,
                                 f"{exp_dir}/tasks/train_lr_{t}/1"))
            event_rows.append((exp_id, name, 1, created + 1.0 + t, "running", "{}"))
            event_rows.append((exp_id, name, 1, created + 5.0 + t, t_state, "{}"))

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO experiments (id, title, state, created_at, started_at, "
                     "ended_at, executor, dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", exp_rows)
    conn.executemany("INSERT INTO tasks (exp_id, name, position, state, attempts, kind, "
                     "depends_on, resources, fingerprint, dir, message) VALUES "
                     "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", task_rows)
    conn.executemany("INSERT INTO attempts (exp_id, task, number, state, kind, exit_code, "
                     "started_at, ended_at, pid, host, executor, resources, changes, error, "
                     "message, dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     attempt_rows)
    conn.executemany("INSERT INTO events (exp_id, task, attempt, ts, kind, data) VALUES "
                     "(?, ?, ?, ?, ?, ?)", event_rows)
    # the newest is running, driven by a live controller: this process
    newest = exp_rows[-1][0]
    conn.execute("UPDATE experiments SET state='running', ended_at=NULL WHERE id=?", (newest,))
    _mark_controller(conn, newest)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return exp_rows[experiments // 2][0], time.perf_counter() - started


def time_command(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall-clock milliseconds of ``argv`` from start to exit, ``runs`` times (after one
    warm-up run). Raises when the command fails."""
    samples = []
    for i in range(runs + 1):
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True,
                              stdin=subprocess.DEVNULL)
        elapsed = (time.perf_counter() - started) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                               f"{proc.stderr.decode()[-2000:]}")
        if i:
            samples.append(elapsed)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    sys.path.insert(0, str(SRC))
    home = Path(tempfile.mkdtemp(prefix="steadyrun-bench-store-"))
    try:
        middle, seconds = fill(home, args.experiments, args.tasks)
        print(f"filled {home}: {args.experiments} experiments x {args.tasks} tasks "
              f"in {seconds:.1f}s")
        env = dict(os.environ, STEADYRUN_HOME=str(home))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
        script = Path(sys.executable).parent / "steadyrun"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "steadyrun"]
        cases = {
            "list": [*command, "list"],
            "status": [*command, "status", middle[:12]],
            "help": [*command, "--help"],
        }
        print(f"command: {' '.join(command)}   ({args.runs} runs each, after a warm-up)\n")
        print(f"{'case':<28} {'median ms':>10} {'min':>7} {'max':>7} {'target':>7}  verdict")
        over = False
        for case, argv in cases.items():
            samples = time_command(argv, env, args.runs)
            median = statistics.median(samples)
            ok = median < TARGETS_MS[case]
            over |= not ok
            shown = " ".join(argv[len(command):])
            print(f"steadyrun {shown:<18} {median:>10.0f} {min(samples):>7.0f} "
                  f"{max(samples):>7.0f} {TARGETS_MS[case]:>7.0f}  "
                  f"{'ok' if ok else 'OVER TARGET'}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if over else 0


def _mark_controller(conn: sqlite3.Connection, exp_id: str) -> None:
    import socket

    try:
        import psutil

        started = psutil.Process().create_time()
    except ImportError:
        started = None
    conn.execute("UPDATE experiments SET controller_pid=?, controller_host=?, "
                 "controller_started=?, heartbeat=? WHERE id=?",
                 (os.getpid(), socket.gethostname(), started, time.time(), exp_id))


if __name__ == "__main__":
    sys.exit(main())
