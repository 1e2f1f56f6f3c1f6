"""LocalExecutor, every strategy, against real threads, processes and signals."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from steadyrun.attempt.proctree import is_gone
from steadyrun.config import Config, Partial, Script
from steadyrun.errors import ExecutorError
from steadyrun.executors import LocalExecutor
from steadyrun.executors.base import AttemptSpec, Outcome
from waiting import wait_for

pytestmark = pytest.mark.timeout(60)

STRATEGIES = ["sequential", "thread", "process", "subprocess"]


# payloads (module level so worker processes import them by path)

def returns_value(x: int = 20) -> dict:
    return {"answer": x + 22}


def raises() -> None:
    raise ValueError("boom from the payload")


def no_memory() -> None:
    raise MemoryError("could not allocate")


def exits_3() -> None:
    sys.exit(3)


def sleeps() -> None:
    time.sleep(1000)


def spawns_tree() -> None:
    subprocess.Popen(["bash", "-c", "sleep 1000 & sleep 1000 & wait"])
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    time.sleep(1000)


def talks() -> int:
    print("payload-stdout", flush=True)
    print("payload-stderr", file=sys.stderr, flush=True)
    os.system("echo child-stdout; echo child-stderr >&2")
    return 1


def cuda_env() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def task_env() -> str | None:
    return os.environ.get("STEADYRUN_TEST_VAR")


def make_list(n: int) -> list[int]:
    return list(range(n))


# helpers

class Runner:
    def __init__(self, ex: LocalExecutor, tmp_path: Path) -> None:
        self.ex, self.tmp = ex, tmp_path
        self.n = 0

    def launch(self, payload, **kw) -> AttemptSpec:
        self.n += 1
        d = self.tmp / f"attempt-{self.n}"
        d.mkdir(mode=0o700)
        spec = AttemptSpec(f"a{self.n}", "task", 1, payload, d, **kw)
        self.ex.launch(spec)
        return spec

    def outcomes(self, count: int, timeout: float = 30.0) -> dict[str, Outcome]:
        got: dict[str, Outcome] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            assert time.monotonic() < deadline, f"only {len(got)} of {count} outcomes"
            for o in self.ex.wait(0.5):
                assert o.attempt_id not in got, "two outcomes for one attempt"
                got[o.attempt_id] = o
        return got

    def run(self, payload, **kw) -> tuple[Outcome, AttemptSpec]:
        spec = self.launch(payload, **kw)
        return self.outcomes(1)[spec.attempt_id], spec


def value_of(out: Outcome, spec: AttemptSpec):
    if out.has_value:
        return out.value
    return pickle.loads((spec.attempt_dir / "result.pkl").read_bytes())



@pytest.fixture(params=STRATEGIES)
def runner(request, tmp_path):
    ex = LocalExecutor(request.param, max_workers=2, grace_period=1.0)
    ex.open()
    yield Runner(ex, tmp_path)
    ex.close()


def make_runner(tmp_path: Path, strategy: str, **kw) -> Runner:
    kw.setdefault("grace_period", 1.0)
    ex = LocalExecutor(strategy, **kw)
    ex.open()
    return Runner(ex, tmp_path)


# --- every strategy ---------------------------------------------------------------------


def test_success_with_value(runner):
    out, spec = runner.run(Partial(returns_value, x=20))
    assert out.ok and out.kind is None
    assert value_of(out, spec) == {"answer": 42}
    assert (spec.attempt_dir / "result.pkl").exists()


def test_plain_callable_and_lambda(runner):
    out, spec = runner.run(returns_value)
    assert value_of(out, spec) == {"answer": 42}
    base = 5
    out, spec = runner.run(lambda: base * 2)
    assert value_of(out, spec) == 10


def test_config_payload_value_is_the_built_object(runner):
    out, spec = runner.run(Config(make_list, n=3))
    assert value_of(out, spec) == [0, 1, 2]


def test_error_carries_the_remote_traceback(runner):
    out, _ = runner.run(raises)
    assert out.kind == "error"
    assert out.error.type == "ValueError"
    assert "boom from the payload" in out.error.message
    assert "in raises" in out.error.traceback


def test_memory_error_is_oom(runner):
    out, _ = runner.run(no_memory)
    assert out.kind == "oom" and out.error.oom


def test_script_payload(runner):
    out, spec = runner.run(Script(inline="echo script-out; exit 4"))
    assert out.kind == "error" and out.exit_code == 4
    assert "script-out" in (spec.attempt_dir / "stdout.log").read_text()


def test_many_attempts_each_get_one_outcome(runner):
    specs = [runner.launch(Partial(returns_value, x=i)) for i in range(12)]
    got = runner.outcomes(12)
    for i, spec in enumerate(specs):
        assert value_of(got[spec.attempt_id], spec) == {"answer": i + 22}


def test_stop_before_start_reports_the_kind(tmp_path):
    for strategy in ("sequential", "thread", "process", "subprocess"):
        r = make_runner(tmp_path / strategy, strategy, max_workers=1)
        (tmp_path / strategy).mkdir()
        try:
            first = r.launch(sleeps if strategy != "sequential" else returns_value)
            queued = r.launch(returns_value)
            r.ex.stop(queued.attempt_id, "cancelled")
            if strategy != "sequential":
                r.ex.stop(first.attempt_id, "cancelled")
            got = r.outcomes(1 if strategy == "sequential" else 2)
            assert got[queued.attempt_id].kind == "cancelled"
        finally:
            r.ex.close()


# --- subprocess -------------------------------------------------------------------------


@pytest.fixture
def sub(tmp_path):
    r = make_runner(tmp_path, "subprocess")
    yield r
    r.ex.close()


def test_subprocess_value_stays_in_result_file(sub):
    out, spec = sub.run(returns_value)
    assert out.ok and not out.has_value and out.exit_code == 0
    assert value_of(out, spec) == {"answer": 42}
    assert (spec.attempt_dir / "payload.pkl").exists()  # same interpreter: the fast format


def test_subprocess_sys_exit_3_is_an_error_with_exit_code_3(sub):
    out, _ = sub.run(exits_3)
    assert out.kind == "error" and out.exit_code == 3


def test_subprocess_oom_exit_code(sub):
    out, _ = sub.run(no_memory)
    assert out.kind == "oom" and out.exit_code == 3


def test_subprocess_killed_from_outside_is_lost(sub):
    spec = sub.launch(sleeps)
    wait_for(lambda: spec.attempt_id in sub.ex.pids())
    os.kill(sub.ex.pids()[spec.attempt_id], signal.SIGKILL)
    out = sub.outcomes(1)[spec.attempt_id]
    assert out.kind == "lost"
    assert out.message == "killed by signal SIGKILL"


def test_subprocess_stop_kills_every_descendant(sub):
    spec = sub.launch(spawns_tree)
    wait_for(lambda: spec.attempt_id in sub.ex.pids())
    root = sub.ex.pids()[spec.attempt_id]
    wait_for(lambda: len(psutil.Process(root).children(recursive=True)) >= 4)
    tree = [root] + [p.pid for p in psutil.Process(root).children(recursive=True)]
    sub.ex.stop(spec.attempt_id, "timeout")
    out = sub.outcomes(1)[spec.attempt_id]
    assert out.kind == "timeout"
    for pid in tree:
        assert is_gone(pid), f"pid {pid} outlived its attempt"
    assert sub.ex.pids() == {}


def test_subprocess_logs_include_child_processes(sub):
    out, spec = sub.run(talks)
    assert out.ok
    stdout = (spec.attempt_dir / "stdout.log").read_text()
    stderr = (spec.attempt_dir / "stderr.log").read_text()
    assert "payload-stdout" in stdout and "child-stdout" in stdout
    assert "payload-stderr" in stderr and "child-stderr" in stderr


def test_subprocess_exports_gpus_and_env(tmp_path):
    r = make_runner(tmp_path, "subprocess", gpus=2)  # declared capacity: no real GPU needed
    try:
        out, spec = r.run(cuda_env, gpus=[1])
        assert value_of(out, spec) == "1"
        out, spec = r.run(cuda_env)
        assert value_of(out, spec) == ""  # GPUs exist but none were asked for: hidden
        out, spec = r.run(task_env, env={"STEADYRUN_TEST_VAR": "from-spec"})
        assert value_of(out, spec) == "from-spec"
    finally:
        r.ex.close()


def test_subprocess_leftover_background_children_are_killed(sub, tmp_path):
    pid_file = tmp_path / "bg.pid"
    script = Script(inline='sleep 1000 & echo $! > "$PID_FILE"; exit 0',
                    env={"PID_FILE": str(pid_file)})
    spec = sub.launch(script)
    out = sub.outcomes(1)[spec.attempt_id]
    assert out.ok
    bg = int(pid_file.read_text())
    wait_for(lambda: is_gone(bg), timeout=5)


def test_subprocess_max_workers_queues(tmp_path):
    r = make_runner(tmp_path, "subprocess", max_workers=1)
    try:
        a = r.launch(sleeps)
        b = r.launch(returns_value)
        wait_for(lambda: a.attempt_id in r.ex.pids())
        assert set(r.ex.pids()) == {a.attempt_id}
        r.ex.stop(a.attempt_id, "cancelled")
        got = r.outcomes(2)
        assert got[a.attempt_id].kind == "cancelled" and got[b.attempt_id].ok
    finally:
        r.ex.close()


def test_close_kills_running_attempts(tmp_path):
    r = make_runner(tmp_path, "subprocess")
    spec = r.launch(spawns_tree)
    wait_for(lambda: spec.attempt_id in r.ex.pids())
    root = r.ex.pids()[spec.attempt_id]
    wait_for(lambda: len(psutil.Process(root).children(recursive=True)) >= 4)
    tree = [root] + [p.pid for p in psutil.Process(root).children(recursive=True)]
    r.ex.close()
    r.ex.close()  # idempotent
    for pid in tree:
        assert is_gone(pid)


# --- process pool -----------------------------------------------------------------------


@pytest.fixture
def pool(tmp_path):
    r = make_runner(tmp_path, "process", max_workers=2)
    yield r
    r.ex.close()


def test_process_stop_replaces_the_worker_and_the_pool_goes_on(pool):
    spec = pool.launch(spawns_tree)
    wait_for(lambda: spec.attempt_id in pool.ex.pids())
    wpid = pool.ex.pids()[spec.attempt_id]
    wait_for(lambda: len(psutil.Process(wpid).children(recursive=True)) >= 4)
    tree = [wpid] + [p.pid for p in psutil.Process(wpid).children(recursive=True)]
    pool.ex.stop(spec.attempt_id, "timeout")
    assert pool.outcomes(1)[spec.attempt_id].kind == "timeout"
    for pid in tree:
        assert is_gone(pid)
    specs = [pool.launch(Partial(returns_value, x=i)) for i in range(4)]
    got = pool.outcomes(4)
    assert [got[s.attempt_id].value for s in specs] == [{"answer": i + 22} for i in range(4)]
    assert wpid not in {o.pid for o in got.values()}


def test_process_worker_killed_from_outside_is_lost(pool):
    spec = pool.launch(sleeps)
    wait_for(lambda: spec.attempt_id in pool.ex.pids())
    os.kill(pool.ex.pids()[spec.attempt_id], signal.SIGKILL)
    out = pool.outcomes(1)[spec.attempt_id]
    assert out.kind == "lost" and "SIGKILL" in out.message
    out, _ = pool.run(returns_value)  # a replacement took its place
    assert out.value == {"answer": 42}


def test_process_workers_are_reused(pool):
    outs = [pool.run(returns_value)[0] for _ in range(6)]
    assert len({o.pid for o in outs}) <= 2


def test_process_exports_gpus_and_restores_env(tmp_path):
    r = make_runner(tmp_path, "process", max_workers=1, gpus=2)
    try:
        assert r.run(cuda_env, gpus=[0, 1])[0].value == "0,1"
        assert r.run(task_env, env={"STEADYRUN_TEST_VAR": "x"})[0].value == "x"
        assert r.run(task_env)[0].value is None  # not leaked into the next attempt
    finally:
        r.ex.close()


def test_process_logs_include_child_processes(pool):
    out, spec = pool.run(talks)
    assert out.ok
    assert "child-stdout" in (spec.attempt_dir / "stdout.log").read_text()
    assert "payload-stderr" in (spec.attempt_dir / "stderr.log").read_text()


# --- thread and sequential --------------------------------------------------------------


def test_thread_stop_reports_at_once_and_drops_the_late_result(tmp_path):
    r = make_runner(tmp_path, "thread", max_workers=1)
    try:
        slow = r.launch(lambda: time.sleep(0.5) or "late")
        time.sleep(0.1)
        r.ex.stop(slow.attempt_id, "timeout")
        assert r.outcomes(1, timeout=0.3)[slow.attempt_id].kind == "timeout"
        out, _ = r.run(returns_value)  # a replacement thread serves the pool
        assert out.value == {"answer": 42}
        time.sleep(0.6)
        assert r.ex.wait(0.1) == []  # the abandoned thread's result never shows up
    finally:
        r.ex.close()


def test_thread_stop_kills_a_running_script(tmp_path):
    r = make_runner(tmp_path, "thread", max_workers=1)
    try:
        spec = r.launch(Script(inline="sleep 1000"))
        wait_for(lambda: _script_pid(spec) is not None)
        pid = _script_pid(spec)
        r.ex.stop(spec.attempt_id, "cancelled")
        assert r.outcomes(1)[spec.attempt_id].kind == "cancelled"
        wait_for(lambda: is_gone(pid), timeout=5)
    finally:
        r.ex.close()


def _script_pid(spec: AttemptSpec) -> int | None:
    from steadyrun.attempt import worker

    return worker.running_script_pid(spec.attempt_dir)


def test_sequential_runs_one_attempt_per_wait(tmp_path):
    r = make_runner(tmp_path, "sequential")
    try:
        a = r.launch(returns_value)
        b = r.launch(raises)
        first = r.ex.wait(0)
        assert [o.attempt_id for o in first] == [a.attempt_id]
        second = r.ex.wait(0)
        assert [o.attempt_id for o in second] == [b.attempt_id]
        t0 = time.monotonic()
        assert r.ex.wait(0.05) == []
        assert time.monotonic() - t0 >= 0.04
    finally:
        r.ex.close()


# --- options ----------------------------------------------------------------------------


def test_unknown_strategy_lists_the_four():
    with pytest.raises(ExecutorError) as info:
        LocalExecutor("fork")
    for name in STRATEGIES:
        assert name in str(info.value)


def test_bad_options():
    with pytest.raises(ExecutorError, match="max_workers"):
        LocalExecutor(max_workers=0)
    with pytest.raises(ExecutorError, match="grace_period"):
        LocalExecutor(grace_period=-1)


def test_capacity_config_and_missing_folder(tmp_path):
    ex = LocalExecutor("thread", cpus=3, memory="2GiB", gpus=[4])
    cap = ex.capacity()
    assert (cap.cpus, cap.memory, cap.gpus) == (3.0, 2 * 1024**3, [4])
    assert ex.to_config() == {"type": "LocalExecutor", "strategy": "thread",
                              "max_workers": None, "cpus": 3, "memory": "2GiB",
                              "gpus": [4], "grace_period": 5.0,
                              "max_log_bytes": 256 * 1024 * 1024}
    assert ex.available_memory() > 0
    with pytest.raises(ExecutorError, match="does not exist"):
        ex.launch(AttemptSpec("a", "t", 1, returns_value, tmp_path / "nope"))
    ex.close()


def test_unpicklable_payload_is_refused_at_launch(tmp_path):
    import threading

    lock = threading.Lock()
    for strategy in ("process", "subprocess"):
        r = make_runner(tmp_path / strategy, strategy)
        (tmp_path / strategy).mkdir()
        try:
            with pytest.raises(ExecutorError, match="payload"):
                r.launch(lambda: lock)
        finally:
            r.ex.close()
