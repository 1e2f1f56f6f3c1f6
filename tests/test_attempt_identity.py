"""Every attempt records who runs it before its payload starts; a worker whose controller
died does not run its payload; a pool worker dies with its controller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from steadyrun.attempt import folder, worker
from steadyrun.attempt.outcome import outcome_of
from steadyrun.attempt.proctree import is_gone
from steadyrun.config import Partial
from steadyrun.executors import LocalExecutor
from steadyrun.executors.base import AttemptSpec, Outcome
from waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def _identity_here() -> dict:
    """What the payload finds in its own identity file (written before it started)."""
    ident = folder.read_identity(os.environ["ATTEMPT_DIR_FOR_TEST"])
    assert ident is not None, "no identity file when the payload started"
    return {"pid": ident.pid, "me": os.getpid(), "pool": ident.pool,
            "controller_pid": ident.controller_pid, "attempt_id": ident.attempt_id,
            "alive": ident.alive()}


def touch_then_return(path: str) -> str:
    Path(path).write_text("ran")
    return "ran"


def hard_exit(code: int) -> None:
    os._exit(code)


def write_pid_and_sleep(pid_file: str, marker: str, seconds: float) -> str:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker).write_text("finished")
    return "finished"


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


def _run(ex: LocalExecutor, spec: AttemptSpec, timeout: float = 60.0) -> Outcome:
    ex.launch(spec)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for out in ex.wait(0.5):
            if out.attempt_id == spec.attempt_id:
                return out
    raise AssertionError("no outcome")


def _value(out: Outcome, spec: AttemptSpec):
    if out.has_value:
        return out.value
    import pickle

    return pickle.loads((spec.attempt_dir / folder.RESULT_FILE).read_bytes())


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_identity_is_written_before_the_payload_starts(tmp_path, strategy):
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    ex = LocalExecutor(strategy, max_workers=1, grace_period=1.0)
    try:
        spec = AttemptSpec("a-ident", "t", 1, Partial(_identity_here), d,
                           env={"ATTEMPT_DIR_FOR_TEST": str(d)})
        out = _run(ex, spec)
        assert out.ok, out.message
        seen = _value(out, spec)
    finally:
        os.environ.pop("ATTEMPT_DIR_FOR_TEST", None)
        ex.close()
    assert seen["attempt_id"] == "a-ident" and seen["alive"]
    assert seen["pid"] == seen["me"] == out.pid
    assert seen["controller_pid"] == os.getpid()
    assert seen["pool"] is (strategy == "process")


def test_worker_does_not_run_the_payload_when_its_controller_is_gone(tmp_path, subprocess_env):
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    marker = tmp_path / "ran"
    worker.write_payload(Partial(touch_then_return, str(marker)), d, prefer="pickle")
    # the controller named here is not the worker's parent: it is as if it had died
    env = dict(subprocess_env, STEADYRUN_CONTROLLER_PID=str(os.getpid()),
               STEADYRUN_ATTEMPT_ID="a-gone")
    rc = subprocess.run(["sh", "-c", f'{sys.executable} -m steadyrun.attempt.worker "$1"; '
                         'exit $?', "sh", str(d)], env=env, timeout=60).returncode
    assert rc == worker.EXIT_CONTROLLER_GONE
    assert not marker.exists() and not folder.has_result(d)
    ident = folder.read_identity(d)
    assert ident is not None and ident.attempt_id == "a-gone"
    assert ident.controller_pid == os.getpid()
    assert outcome_of("a-gone", exit_code=rc, error=folder.read_error(d)).kind == "lost"


def test_worker_runs_when_its_controller_is_its_parent(tmp_path, subprocess_env):
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    marker = tmp_path / "ran"
    worker.write_payload(Partial(touch_then_return, str(marker)), d, prefer="pickle")
    env = dict(subprocess_env, STEADYRUN_CONTROLLER_PID=str(os.getpid()))
    rc = subprocess.run([sys.executable, "-m", "steadyrun.attempt.worker", str(d)], env=env,
                        timeout=60).returncode
    assert rc == 0 and marker.read_text() == "ran"


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_hard_exit_in_the_payload_is_an_error_with_its_code(tmp_path, strategy):
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    ex = LocalExecutor(strategy, max_workers=1, grace_period=1.0)
    try:
        out = _run(ex, AttemptSpec("a-exit", "t", 1, Partial(hard_exit, 7), d))
        assert out.kind == "error" and out.exit_code == 7, out
        assert "exited with code 7" in out.message
        d0 = tmp_path / "attempt0"
        d0.mkdir(mode=0o700)
        out = _run(ex, AttemptSpec("a-exit0", "t", 1, Partial(hard_exit, 0), d0))
        assert out.kind == "error" and "left no" in out.message  # no result: not a success
    finally:
        ex.close()


def test_pool_worker_dies_with_its_controller(tmp_path, subprocess_env):
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    pid_file, marker = tmp_path / "payload.pid", tmp_path / "finished"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from steadyrun.config import Partial
        from steadyrun.executors import LocalExecutor
        from steadyrun.executors.base import AttemptSpec
        from test_attempt_identity import write_pid_and_sleep
        ex = LocalExecutor("process", max_workers=1)
        ex.launch(AttemptSpec("a-pool", "t", 1, Partial(write_pid_and_sleep,
                  {str(pid_file)!r}, {str(marker)!r}, 4.0), Path({str(d)!r})))
        while True:
            ex.wait(1.0)
    """)
    controller = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env)
    try:
        wait_for(pid_file.exists, 30, "the payload to start on a pool worker")
        ident = folder.read_identity(d)
        assert ident is not None and ident.pool and ident.alive()
        assert ident.controller_pid == controller.pid
        assert int(pid_file.read_text()) == ident.pid
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        wait_for(lambda: is_gone(ident.pid), 10, "the pool worker to end with its controller")
        time.sleep(4.5)  # past the moment the payload would have finished
        assert not marker.exists() and not folder.has_result(d)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()


def test_free_slots_and_pids_right_after_launch(tmp_path):
    def spec(i: int) -> AttemptSpec:
        d = tmp_path / f"a{i}"
        d.mkdir(mode=0o700)
        return AttemptSpec(f"a{i}", "t", 1, Partial(sleep_for, 30.0), d)

    sub = LocalExecutor("subprocess", max_workers=2, grace_period=0.5)
    pool = LocalExecutor("process", max_workers=2, grace_period=0.5)
    threads = LocalExecutor("thread", max_workers=2, grace_period=0.5)
    seq = LocalExecutor("sequential")
    try:
        assert LocalExecutor("subprocess").free_slots() is None
        n = 0
        for ex in (sub, pool, threads):
            assert ex.free_slots() == 2
            s = spec(n := n + 1)
            ex.launch(s)
            assert ex.free_slots() == 1
            if ex is not threads:  # in-process attempts have no process of their own
                assert s.attempt_id in ex.pids()
            ex.stop(s.attempt_id, "cancelled")
        assert seq.free_slots() == 1
        seq.launch(spec(n + 1))
        assert seq.free_slots() == 0
        seq.stop(f"a{n + 1}", "cancelled")
        assert seq.free_slots() == 1
    finally:
        for ex in (sub, pool, threads, seq):
            ex.close()


