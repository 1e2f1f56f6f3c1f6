"""Randomized crash trials: a detached controller SIGKILLed at a random moment, then
resumed to the end. Counted after every trial: duplicate side effects, lost tasks (not
succeeded at the end) and orphans; all must be zero.

Each trial draws everything (strategy, tasks, their lengths and dependencies, the kill
delay) from its own fixed seed, printed on failure: ``CRASH_SEED=N pytest -m crash -k
random`` replays one seed (the kill still lands at the machine's own pace).

One duplicate is legitimate and told apart exactly: the side effect is a payload's last
step, but the attempt only counts as finished once the worker has written its result
after it; a worker killed in between (by the SIGKILL of its controller, or by the resume
reclaiming it) leaves a side effect and no result, and the task rightly runs again. Such
an earlier effect was written within moments before that kill, by an attempt the store
calls lost, with no result file; any other duplicate fails the trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import defaultdict

import pytest

import crash_payloads as cp
import steadyrun as run
from crash_helpers import (
    Reaper,
    assert_no_late_results,
    attempts,
    detach,
    state,
    unique_title,
)
from waiting import wait_for

pytestmark = [pytest.mark.crash, pytest.mark.timeout(90)]

TRIALS = 30
SEED_BASE = 20261203
STRATEGIES = ["sequential", "thread", "process", "subprocess"]
#: how close before a kill an effect without a result may be (the worker was between
#: its side effect and its result file): generous next to the ~1 ms it takes
KILL_WINDOW = 0.25


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


def seeds() -> list[int]:
    if os.environ.get("CRASH_SEED"):
        return [int(os.environ["CRASH_SEED"])]
    return [SEED_BASE + i for i in range(TRIALS)]


def plan(seed: int) -> dict:
    rng = random.Random(seed)
    strategy = rng.choice(STRATEGIES)
    names = [f"t{i}" for i in range(rng.randint(2, 4))]
    tasks = []
    for i, name in enumerate(names):
        depends = [names[i - 1]] if i and rng.random() < 0.3 else []
        tasks.append({"name": name, "hold": round(rng.uniform(0.1, 0.5), 3),
                      "depends_on": depends})
    return {"seed": seed, "strategy": strategy, "tasks": tasks,
            "kill_after": round(rng.uniform(0.0, 1.5), 3)}


def excused(lines: list[list[str]], exp_id: str,
            windows: list[tuple[float, float]]) -> list[str]:
    """Earlier effects of a task that a kill cut off between its side effect and its
    result (see the module docs): each must lie in one of the kill ``windows``, come
    from an attempt the store calls lost (or from one whose pid was never recorded) and
    have left no result. Returns them described; raises for any other duplicate."""
    rows = attempts(exp_id)
    lost = {a.pid for a in rows if a.kind == "lost" and a.pid is not None}
    recorded = {a.pid for a in rows if a.pid is not None}
    notes = []
    by_task: dict[str, list[list[str]]] = defaultdict(list)
    for fields in lines:
        by_task[fields[0]].append(fields)
    for name, found in by_task.items():
        for fields in sorted(found, key=lambda f: float(f[2]))[:-1]:
            pid, at = int(fields[1]), float(fields[2])
            near = [w for w in windows if w[0] <= at <= w[1]]
            ok = near and (pid in lost or pid not in recorded)
            assert ok, (f"task {name} has a duplicate side effect: pid {pid} at {at:.3f} "
                        f"(kill windows {windows}; lost attempt pids {sorted(lost)}); "
                        "attempts: " + "; ".join(
                            f"{a.task}#{a.number} {a.state}/{a.kind} pid={a.pid} "
                            f"{a.message or ''}" for a in rows))
            notes.append(f"{name}: effect at {at:.3f} cut off in the kill window {near[0]}")
    return notes


@pytest.mark.parametrize("seed", seeds())
def test_random_kill_then_resume(tmp_path, reaper, seed):
    trial = plan(seed)
    print("trial", json.dumps(trial))
    effects, starts = tmp_path / "effects", tmp_path / "starts"
    tasks = [run.Task(t["name"], run.Partial(cp.effect, str(effects), t["name"],
                                             hold=t["hold"], starts=str(starts)),
                      resources=run.Resources(cpus=0.5), depends_on=t["depends_on"])
             for t in trial["tasks"]]
    exp = run.Experiment(tasks, title=unique_title(f"random{seed}"), progress=False,
                         executor=run.LocalExecutor(strategy=trial["strategy"]))
    controller = detach(exp, reaper)
    detached = time.monotonic()
    # the kill lands at the drawn moment, wherever the run is by then
    time.sleep(max(0.0, detached + trial["kill_after"] - time.monotonic()))
    killed_at = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(controller, signal.SIGKILL)
    wait_for(lambda: not reaper.alive([controller]), 10, "the controller to die")
    reaper.track(int(f[1]) for f in cp.read_lines(starts))

    before = {t.name: t.state for t in run.Experiment.from_id(exp.id).status().tasks}
    print("at the kill:", before, "effects:", [f[0] for f in cp.read_lines(effects)])
    # the resume reclaims what the killed run left: from its start to its first attempt
    resumed_at = time.time()
    if state(exp.id) != "succeeded":
        result = run.Experiment.from_id(exp.id).resume(raise_on_failure=False)
        assert result is not None
    new = [a.started_at for a in attempts(exp.id) if a.started_at and a.started_at >= resumed_at]
    windows = [(killed_at - KILL_WINDOW, killed_at + 0.05),
               (resumed_at, min(new, default=time.time()))]
    names = [t["name"] for t in trial["tasks"]]
    final = {t.name: t.state for t in run.Experiment.from_id(exp.id).status().tasks}
    lost_tasks = [n for n in names if final.get(n) != "succeeded"]
    assert not lost_tasks, f"seed {seed}: tasks not succeeded at the end: {final}"
    assert state(exp.id) == "succeeded"

    reaper.assert_no_leftovers(f"seed {seed}: after the resume")
    workers = [int(f[1]) for f in cp.read_lines(starts)]
    reaper.assert_gone([p for p in workers if p != os.getpid()], f"seed {seed}: workers")
    lines = cp.read_lines(effects)
    counts = defaultdict(int)
    for fields in lines:
        counts[fields[0]] += 1
    assert sorted(counts) == sorted(names), f"seed {seed}: effects {dict(counts)}"
    notes = excused(lines, exp.id, windows)
    for note in notes:
        print("excused:", note)
    assert_no_late_results(exp.id)
