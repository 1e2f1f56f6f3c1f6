"""No attempt leaves a process behind, on any strategy: daemons a payload starts (a
``setsid`` one and a double-forked one) are gone once its outcome arrives, whether the
payload returned, timed out or was cancelled, and whether it is a Script or Python."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from steadyrun.attempt.proctree import is_gone
from steadyrun.config import Partial, Script
from steadyrun.executors import LocalExecutor
from steadyrun.executors.base import AttemptSpec, Outcome
from waiting import wait_for

pytestmark = pytest.mark.timeout(90)

# Each daemon writes its own pid; the subshells around them exit at once, so the first
# ends up in a session of its own and both are orphans of their starter.
DAEMONS = ("( setsid bash -c 'echo $$ >> \"$PIDS\"; exec sleep 300' & ) ; "
           "( bash -c 'echo $$ >> \"$PIDS\"; exec sleep 300' & )")
SCRIPT = DAEMONS + '\nuntil [ "$(cat "$PIDS" 2>/dev/null | wc -l)" -ge 2 ]; do sleep 0.02; done\n' \
    + 'if [ "$HOLD" = 1 ]; then sleep 60; fi\n'


def python_daemons(pids: str, forks: bool, hold: bool) -> str:
    """Start the shell daemons; with ``forks`` also a daemon of its own by a double
    fork and ``setsid``; wait until every daemon wrote its pid; then hold or return."""
    subprocess.run(["bash", "-c", DAEMONS], env={**os.environ, "PIDS": pids}, check=True)
    expected = 2
    if forks:
        expected = 3
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                with open(pids, "a") as f:
                    f.write(f"{os.getpid()}\n")
                time.sleep(300)
            os._exit(0)
        os.waitpid(child, 0)
    deadline = time.monotonic() + 20
    while _lines(pids) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    if hold:
        time.sleep(60)
    return "started"


def _lines(path: str) -> int:
    try:
        return len(Path(path).read_text().split())
    except FileNotFoundError:
        return 0


def _payload(kind: str, pids: Path, hold: bool, strategy: str):
    if kind == "script":
        return Script(inline=SCRIPT, env={"PIDS": str(pids), "HOLD": "1" if hold else "0"})
    # processes forked (not exec'd) by Python code in the controller carry no tag
    forks = strategy in ("process", "subprocess")
    return Partial(python_daemons, str(pids), forks, hold)


def _outcome(ex: LocalExecutor, attempt_id: str, timeout: float = 60.0) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for out in ex.wait(0.5):
            if out.attempt_id == attempt_id:
                return out
    raise AssertionError(f"no outcome for {attempt_id}")


def _daemon_pids(pids: Path, count: int) -> list[int]:
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= count, 30,
             "the payload's daemons to start")
    return [int(p) for p in pids.read_text().split()]


CASES = [(strategy, kind, end)
         for strategy in ("subprocess", "process", "thread", "sequential")
         for kind in ("script", "python")
         # a sequential attempt runs inside wait(): nothing can stop it while it runs
         for end in (("exit",) if strategy == "sequential" else ("exit", "timeout", "cancelled"))]


@pytest.mark.parametrize(("strategy", "kind", "end"), CASES)
def test_no_daemon_outlives_its_attempt(tmp_path, strategy, kind, end):
    pids = tmp_path / "pids"
    folder = tmp_path / "attempt"
    folder.mkdir(mode=0o700)
    ex = LocalExecutor(strategy, max_workers=2, grace_period=1.0)
    ex.open()
    daemons: list[int] = []
    try:
        payload = _payload(kind, pids, end != "exit", strategy)
        spec = AttemptSpec(f"orphans-{strategy}-{kind}-{end}", "t", 1, payload, folder)
        ex.launch(spec)
        count = 3 if kind == "python" and strategy in ("process", "subprocess") else 2
        if end == "exit":
            out = _outcome(ex, spec.attempt_id)
            assert out.ok, out.message
            daemons = _daemon_pids(pids, count)
        else:
            daemons = _daemon_pids(pids, count)
            ex.stop(spec.attempt_id, end)
            out = _outcome(ex, spec.attempt_id)
            assert out.kind == end
        wait_for(lambda: all(is_gone(p) for p in daemons), 10,
                 f"daemons {daemons} to end with their attempt")
    finally:
        ex.close()
        _kill_all(daemons)


def test_executor_close_ends_the_daemons_of_running_attempts(tmp_path):
    ex = LocalExecutor("subprocess", grace_period=1.0)
    ex.open()
    pid_files: list[Path] = []
    for i, kind in enumerate(("script", "python")):
        folder = tmp_path / f"attempt-{i}"
        folder.mkdir(mode=0o700)
        pid_files.append(tmp_path / f"pids-{i}")
        ex.launch(AttemptSpec(f"close-{i}", "t", 1,
                              _payload(kind, pid_files[-1], True, "subprocess"), folder))
    daemons = _daemon_pids(pid_files[0], 2) + _daemon_pids(pid_files[1], 3)
    try:
        ex.close()
        wait_for(lambda: all(is_gone(p) for p in daemons), 10, "daemons to end on close")
    finally:
        _kill_all(daemons)


def _kill_all(pids: list[int]) -> None:
    """Never leave a daemon to the next test, even when this one failed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_worker_killed_from_outside_is_lost_and_leaves_no_daemon(tmp_path, strategy, sig):
    # SIGTERM: the worker ends its tree itself; SIGKILL: it cannot, the executor finds
    # the daemons by the attempt's tag
    pids = tmp_path / "pids"
    folder = tmp_path / "attempt"
    folder.mkdir(mode=0o700)
    ex = LocalExecutor(strategy, max_workers=1, grace_period=1.0)
    ex.open()
    daemons: list[int] = []
    try:
        # a process forked without exec by a pool worker's payload carries no tag: only a
        # cgroup finds it after a SIGKILL, where one can be made
        forks = strategy == "subprocess" or sig == signal.SIGTERM or _cgroups_usable()
        spec = AttemptSpec("killed", "t", 1, Partial(python_daemons, str(pids), forks, True),
                           folder)
        ex.launch(spec)
        daemons = _daemon_pids(pids, 3 if forks else 2)
        os.kill(ex.pids()[spec.attempt_id], sig)
        out = _outcome(ex, spec.attempt_id)
        assert out.kind == "lost" and signal.Signals(sig).name in out.message, out
        wait_for(lambda: all(is_gone(p) for p in daemons), 10,
                 f"daemons {daemons} to end with their killed worker")
    finally:
        ex.close()
        _kill_all(daemons)


def _cgroups_usable() -> bool:
    from steadyrun.attempt import cgroup

    path = cgroup.enter(f"probe-{os.getpid()}")
    if path is None:
        return False
    cgroup.leave(path)
    return True
