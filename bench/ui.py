"""How long the pages of `steadyrun ui` take on a large store.

Fills a fresh store with 10,000 experiments (bench/store.py's filler, 2 tasks each) and
one experiment of 10,000 tasks (one attempt each), then times requests through the whole
web application (token cookie, routing, store reads, HTML): the experiments page (first
and a deep page, a state filter), the 10,000-task experiment's page (first and last
page of its task table), one snapshot of its live states and one task's page. Prints
the median, min and max of each against the 1 s target; exit status 1 when a median is
over it.

    python bench/ui.py [--experiments 10000] [--tasks 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]
TARGET_MS = 1000.0


def add_big(home: Path, tasks: int) -> str:
    """One finished experiment of ``tasks`` tasks, one attempt each; returns its id."""
    from steadyrun.store.db import Store

    store = Store(home)
    exp_id = store.create_experiment("bench-big", [], {"type": "LocalExecutor"},
                                     {"definition.yaml": b"{}\n"})
    db_path = store.db_path
    store.close()
    now = time.time() - 3600
    res = json.dumps({"cpus": 1})
    task_rows, attempt_rows = [], []
    for t in range(tasks):
        state = "failed" if t % 97 == 0 else "succeeded"
        name = f"trial[i={t}]"
        task_rows.append((exp_id, name, t, state, 1, "[]" if t == 0 else '["trial[i=0]"]',
                          res, f"trial_i_{t}"))
        attempt_rows.append((exp_id, name, 1, state, now + t * 0.3, now + t * 0.3 + 5,
                             "bench-host", res, f"{home}/x/{t}"))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO tasks (exp_id, name, position, state, attempts, depends_on, "
                     "resources, dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", task_rows)
    conn.executemany("INSERT INTO attempts (exp_id, task, number, state, started_at, ended_at, "
                     "host, resources, dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", attempt_rows)
    conn.execute("UPDATE experiments SET state='failed', started_at=?, ended_at=? WHERE id=?",
                 (now, now + tasks * 0.3 + 5, exp_id))
    conn.execute("COMMIT")
    conn.close()
    return exp_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from store import fill  # bench/store.py

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["STEADYRUN_HOME"] = str(home)
        fill(home, args.experiments, 2)
        big = add_big(home, args.tasks)
        from starlette.testclient import TestClient

        from steadyrun.ui.app import create_app

        client = TestClient(create_app("bench", home=home))
        client.get("/?token=bench")
        last = -(-args.tasks // 50)
        paths = {"experiments": "/", "experiments page 100": "/?page=100",
                 "experiments state=failed": "/?state=failed",
                 f"experiment of {args.tasks} tasks": f"/e/{big}",
                 f"  its page {last}": f"/e/{big}?page={last}",
                 "  its live states": f"/e/{big}/states",
                 "  one of its tasks": f"/e/{big}/t/trial[i={args.tasks // 2}]"}
        failed = False
        print(f"{'page':32} {'median':>8} {'min':>8} {'max':>8}  target {TARGET_MS:.0f} ms")
        for label, path in paths.items():
            times = []
            for _ in range(args.runs + 1):
                started = time.perf_counter()
                resp = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
            times = times[1:]
            med = statistics.median(times)
            failed |= med > TARGET_MS
            print(f"{label:32} {med:8.1f} {min(times):8.1f} {max(times):8.1f}"
                  f"{'  OVER' if med > TARGET_MS else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
