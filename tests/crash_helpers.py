"""Shared machinery of the crash suite: controllers to start and kill, processes to
track and reap, side effects to count.

Every pid a test learns about goes through :class:`Reaper`, which remembers the
process's start time (a reused pid is never mistaken for it) and SIGKILLs whatever is
still alive when the test ends, so a failing test leaves no daemons behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

import steadyrun as run
import steadyrun.engine.crashpoints as crashpoints
from crash_payloads import read_lines
from steadyrun.store.db import Store
from waiting import wait_for

# This process must never crash on purpose: the crash point is read at import, above,
# and only ever set in the environment of the controllers the tests start.
assert not os.environ.get(crashpoints.CRASH_ENV), "the test process has a crash point set"

TESTS_DIR = Path(__file__).resolve().parent
STEADYRUN_BIN = str(Path(sys.executable).parent / "steadyrun")
FINAL = ("succeeded", "failed", "cancelled")


def unique_title(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- processes ---------------------------------------------------------------------------


def start_time(pid: int) -> float | None:
    """The start time of a live (non-zombie) process, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class Reaper:
    """Pids a test saw, each with its start time, and child processes it started."""

    def __init__(self, home: str | None = None) -> None:
        self.home = home or os.environ["STEADYRUN_HOME"]
        self.known: dict[int, float | None] = {}
        self.procs: list[subprocess.Popen[Any]] = []

    def track(self, pids: Iterable[int]) -> list[int]:
        """Remember ``pids`` (the first sighting fixes the start time; a pid already
        gone then stays gone, whatever later reuses it); returns them."""
        pids = [int(p) for p in pids]
        for pid in pids:
            if pid not in self.known and pid != os.getpid():
                self.known[pid] = start_time(pid)
        return pids

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(*args, **kwargs)
        self.procs.append(proc)
        self.track([proc.pid])
        return proc

    def alive(self, pids: Iterable[int]) -> list[int]:
        """Those of ``pids`` that still run (zombies do not count) as the same process
        that was first seen under that pid."""
        out = []
        for pid in self.track(pids):
            if pid == os.getpid():
                continue
            now, seen = start_time(pid), self.known[pid]
            if now is not None and seen is not None and abs(now - seen) < 1.0:
                out.append(pid)
        return out

    def describe(self, pids: Iterable[int]) -> str:
        parts = []
        for pid in pids:
            try:
                parts.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}")
            except psutil.Error:
                parts.append(f"{pid}: (gone)")
        return "; ".join(parts)

    def assert_gone(self, pids: Iterable[int], what: str, grace: float = 3.0) -> None:
        """Fail naming the survivors when any of ``pids`` still runs after ``grace``."""
        pids = list(pids)
        deadline = time.monotonic() + grace
        while True:
            left = self.alive(pids)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert not left, f"{what}: still running: {self.describe(left)}"

    def assert_no_leftovers(self, what: str, grace: float = 3.0) -> None:
        """Fail naming them when processes started under this test's store still run
        after ``grace`` seconds."""
        deadline = time.monotonic() + grace
        while True:
            left = leftovers(self.home)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.track(left)
        assert not left, f"{what}: processes left running: {self.describe(left)}"

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        self.track(leftovers(self.home))
        for pid in self.alive(list(self.known)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.wait(10)


# --- controllers -------------------------------------------------------------------------


def detach(exp: run.Experiment, reaper: Reaper, crash_at: str | None = None) -> int:
    """``exp.run(detach=True)``, with ``STEADYRUN_CRASH_AT`` set in the controller's
    environment only; returns the controller's pid."""
    saved = os.environ.get(crashpoints.CRASH_ENV)
    if crash_at is not None:
        os.environ[crashpoints.CRASH_ENV] = crash_at
    try:
        exp.run(detach=True)
    finally:
        if saved is None:
            os.environ.pop(crashpoints.CRASH_ENV, None)
        else:
            os.environ[crashpoints.CRASH_ENV] = saved
    pid = exp.status().controller["pid"]
    assert pid is not None, "the detached experiment has no controller"
    reaper.track([pid])
    return pid


def kill_controller(exp_id: str, reaper: Reaper) -> tuple[int, float]:
    """SIGKILL the experiment's controller and wait until it is dead; returns its pid
    and when the signal was sent."""
    status = run.Experiment.from_id(exp_id).status()
    pid = status.controller["pid"]
    assert pid is not None and status.controller["alive"], (
        f"experiment {exp_id} has no live controller to kill ({status.state})")
    reaper.track([pid])
    sent = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not reaper.alive([pid]), 10, f"controller {pid} to die")
    wait_for(lambda: run.Experiment.from_id(exp_id).status().controller["alive"] is not True,
             10, "the store to see the controller dead")
    return pid, sent


def state(exp_id: str) -> str:
    return run.Experiment.from_id(exp_id).status().state


def task_states(exp_id: str) -> dict[str, str]:
    return {t.name: t.state for t in run.Experiment.from_id(exp_id).status().tasks}


def attempts(exp_id: str) -> list[Any]:
    store = Store()
    try:
        return store.attempts(exp_id)
    finally:
        store.close()


def events(exp_id: str) -> list[Any]:
    store = Store()
    try:
        return store.events(exp_id)
    finally:
        store.close()


def wait_final(exp_id: str, timeout: float = 60.0) -> str:
    return wait_for(lambda: (s := state(exp_id)) in FINAL and s, timeout,
                    f"experiment {exp_id} to end")


def driver_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child interpreter that imports steadyrun and the test helpers."""
    env = dict(os.environ)
    src = str(TESTS_DIR.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (src, str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env.pop(crashpoints.CRASH_ENV, None)
    env.update(extra or {})
    return env


DRIVER = """
import json, sys
import steadyrun as run
import crash_payloads
spec = json.loads(sys.argv[1])
exp = run.Experiment(crash_payloads.build_tasks(spec), title=spec["title"], progress=False,
                     executor=run.LocalExecutor(**spec.get("executor", {})))
try:
    exp.run(raise_on_failure=False)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("ended", exp.result.state, flush=True)
"""


def start_driver(spec: dict[str, Any], reaper: Reaper,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A child process that runs the experiment of ``spec`` in the foreground (it is
    the controller)."""
    return reaper.popen([sys.executable, "-c", DRIVER, json.dumps(spec)],
                        env=driver_env(env), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)


def experiment_of(title: str, timeout: float = 30.0) -> str:
    """The id of the experiment with this title, once it exists."""
    return wait_for(lambda: (rows := run.list_experiments(title=title)) and rows[0].id,
                    timeout, f"experiment {title!r} to be created")


# --- side effects --------------------------------------------------------------------------


def effect_counts(effects: Path) -> Counter[str]:
    return Counter(fields[0] for fields in read_lines(effects))


def started_pids(starts: Path) -> list[int]:
    return [int(fields[1]) for fields in read_lines(starts)]


def pids_in(pidfile: Path) -> list[int]:
    return [int(fields[0]) for fields in read_lines(pidfile)]


def assert_exactly_once(effects: Path, names: Iterable[str]) -> None:
    counts = effect_counts(effects)
    names = sorted(names)
    wrong = {n: counts.get(n, 0) for n in names if counts.get(n, 0) != 1}
    extra = sorted(set(counts) - set(names))
    text = effects.read_text() if effects.exists() else "(no effects file)"
    assert not wrong and not extra, (
        f"side effects not exactly once: {wrong or ''} {extra or ''}\n{text}")


def assert_no_late_results(exp_id: str) -> None:
    """No attempt the store calls failed or lost has a result written afterwards (a
    leftover that went on running after it was given up)."""
    late = [f"{a.task}#{a.number} ({a.kind})" for a in attempts(exp_id)
            if a.state in ("failed", "cancelled") and (Path(a.dir) / "result.pkl").exists()]
    assert not late, f"attempts given up that later wrote a result: {late}"


def resume(exp_id: str) -> run.ExperimentResult:
    """Resume in this process (no crash point can be set here) and return the result."""
    result = run.Experiment.from_id(exp_id).resume(raise_on_failure=False)
    assert result is not None
    return result


def leftovers(home: str) -> list[int]:
    """Live processes (not this one, not zombies) whose ``STEADYRUN_HOME`` is ``home``:
    everything a test's controllers, workers and payloads started inherits it."""
    me, out = os.getpid(), []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("STEADYRUN_HOME") == home:
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


class Release:
    """Create the file ``gate`` once ``predicate()`` is true (polled in a thread), so a
    payload held on it goes on only after, say, a resume recorded its new attempt."""

    def __init__(self, gate: Path, predicate: Callable[[], Any], timeout: float = 60.0):
        self.gate, self.predicate, self.timeout = gate, predicate, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if self.predicate():
                    self.gate.touch()
                    return
            except Exception:  # the store is being written: look again
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> Release:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def has_attempt(exp_id: str, task: str, number: int) -> bool:
    """True once the store recorded attempt ``number`` of ``task``."""
    return any(a.task == task and a.number == number for a in attempts(exp_id))


def controller_log(exp_id: str) -> str:
    """The tail of the background controller's log, for failure messages."""
    folder = Path(run.Experiment.from_id(exp_id).status().dir)
    try:
        return (folder / "controller.log").read_text()[-3000:]
    except OSError:
        return "(no controller.log)"


def wait_while_driven(exp_id: str, predicate: Callable[[], Any], what: str,
                      timeout: float = 30.0) -> Any:
    """Like ``wait_for``, but fail at once (with the controller's log) when the
    experiment's controller died or the experiment ended before ``predicate`` held."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        status = run.Experiment.from_id(exp_id).status()
        if status.controller["alive"] is not True or status.state in FINAL:
            value = predicate()
            if value:
                return value
            raise AssertionError(
                f"experiment {exp_id} is {status.state} with no live controller while "
                f"waiting for {what}; controller.log:\n{controller_log(exp_id)}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
