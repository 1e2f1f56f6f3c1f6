"""No process outlives its task: daemons a payload starts (a ``setsid`` one and a
double-forked one) are gone after a timeout, a cancel, Ctrl-C or a normal end, on every
local strategy; and a double Ctrl-C leaves nothing running and a resumable experiment.

Each case runs the experiment in the foreground of a child process (the controller),
so Ctrl-C can be sent to it and whatever it leaves behind is visible from here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import crash_payloads as cp
from crash_helpers import (
    FINAL,
    Reaper,
    assert_exactly_once,
    experiment_of,
    pids_in,
    resume,
    start_driver,
    state,
    task_states,
    unique_title,
)
from waiting import wait_for

pytestmark = [pytest.mark.crash, pytest.mark.timeout(120)]

STRATEGIES = ["sequential", "thread", "process", "subprocess"]
ENDINGS = ["normal", "timeout", "cancel", "ctrl-c"]


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


def finish(driver, timeout: float = 60.0) -> tuple[str, str]:
    try:
        out, err = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        raise AssertionError(f"the controller process did not exit:\n{err[-2000:]}") from None
    return out, err


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_daemons_do_not_outlive_their_task(tmp_path, reaper, strategy, ending):
    pid_fn, pid_sh = tmp_path / "fn.pids", tmp_path / "sh.pids"
    # an in-process payload blocks the sequential loop: keep its hold short
    hold = {"normal": 0.0, "timeout": 3.0}.get(ending, 30.0)
    if strategy == "sequential" and ending != "normal":
        hold = 1.5
    timeout = 1.0 if ending == "timeout" else None
    title = unique_title(f"daemons-{strategy}-{ending}")
    spec = {"title": title, "executor": {"strategy": strategy, "grace_period": 1.0},
            "tasks": [
                {"name": "fn", "kind": "daemons", "timeout": timeout,
                 "args": {"pidfile": str(pid_fn), "hold": hold}},
                {"name": "sh", "kind": "daemons_script", "timeout": timeout,
                 "args": {"pidfile": str(pid_sh), "hold": hold}}]}
    driver = start_driver(spec, reaper)
    exp_id = experiment_of(title)
    if ending in ("cancel", "ctrl-c"):
        # each payload records itself and its two daemons; sequential runs one at a time
        pidfiles = [pid_fn] if strategy == "sequential" else [pid_fn, pid_sh]
        wait_for(lambda: all(len(pids_in(p)) >= 3 for p in pidfiles), 30,
                 "the payloads to start their daemons")
        reaper.track(pids_in(pid_fn) + pids_in(pid_sh))
        if ending == "cancel":
            from steadyrun import Experiment

            Experiment.from_id(exp_id).cancel(wait=30)
        else:
            os.kill(driver.pid, signal.SIGINT)
    out, err = finish(driver)
    recorded = reaper.track(pids_in(pid_fn) + pids_in(pid_sh))
    daemons = [p for p in recorded if p != driver.pid]
    if ending == "normal":  # each payload started its two daemons
        assert len(daemons) >= 4, (recorded, err[-2000:])

    reaper.assert_gone(daemons, f"{strategy}/{ending}: the payloads' daemons")
    reaper.assert_no_leftovers(f"{strategy}/{ending}")
    final = state(exp_id)
    assert final in FINAL, f"the experiment was left {final}"
    if ending == "normal":
        assert final == "succeeded", (final, out, err[-2000:])
    elif ending == "timeout" and strategy != "sequential":
        states = task_states(exp_id)
        assert final == "failed" and states == {"fn": "failed", "sh": "failed"}, states
    elif ending == "cancel":
        assert final == "cancelled", final
    elif ending == "ctrl-c":
        assert driver.returncode != 0 and final == "cancelled", (driver.returncode, final)


def test_double_ctrl_c_stops_everything_and_resume_finishes(tmp_path, reaper):
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    pidfile = tmp_path / "pids"
    title = unique_title("double-ctrl-c")
    spec = {"title": title, "executor": {"strategy": "subprocess"},
            "tasks": [
                {"name": "work", "kind": "effect",
                 "args": {"effects": str(effects), "name": "work", "starts": str(starts),
                          "gate": str(gate)}},
                {"name": "daemons", "kind": "daemons",
                 "args": {"pidfile": str(pidfile), "gate": str(gate)}}]}
    driver = start_driver(spec, reaper)
    exp_id = experiment_of(title)
    wait_for(lambda: len(pids_in(pidfile)) >= 3 and starts.exists(), 30,
             "both tasks to run, one with its daemons")
    tree = reaper.track(pids_in(pidfile) + [int(f[1]) for f in cp.read_lines(starts)])

    os.kill(driver.pid, signal.SIGINT)
    time.sleep(0.2)  # the second Ctrl-C comes 0.2 s after the first, as a user's would
    os.kill(driver.pid, signal.SIGINT)
    finish(driver, 30)
    reaper.assert_gone(tree, "the workers and daemons after a double Ctrl-C")
    reaper.assert_no_leftovers("after a double Ctrl-C")
    assert state(exp_id) == "cancelled"
    assert not effects.exists(), "a task interrupted before its side effect wrote it"

    gate.touch()
    result = resume(exp_id)
    assert result.ok, result
    assert_exactly_once(effects, ["work"])
    reaper.assert_no_leftovers("after the resume")
