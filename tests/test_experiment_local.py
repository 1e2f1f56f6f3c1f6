"""Experiments on the real local executor: real subprocesses, signals and the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import payloads
import steadyrun as run
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(120)


def spans(path: Path) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for line in path.read_text().splitlines():
        what, name, t = line.split()
        (starts if what == "start" else ends)[name] = float(t)
    return {n: (starts[n], ends[n]) for n in starts}


def test_seed_shape_runs_a_partial_and_returns_its_value():
    exp = run.Experiment([run.Task("add", run.Partial(payloads.add, 2, b=3))])
    result = exp.run()
    assert result["add"].value == 5
    assert result["add"].state == "succeeded" and result["add"].attempts == 1
    assert result["add"].duration is not None and result["add"].duration > 0


def test_context_manager_shape_and_dag_order(tmp_path):
    log = tmp_path / "order.log"
    with run.Experiment("dag", executor=run.LocalExecutor(strategy="subprocess")) as exp:
        exp.add(run.Partial(payloads.record, str(log), "c"), name="c", depends_on=["b"])
        exp.add(run.Partial(payloads.record, str(log), "b"), name="b", depends_on=["a"])
        exp.add(run.Partial(payloads.record, str(log), "a"), name="a")
        result = exp.run()
    s = spans(log)
    assert s["a"][1] <= s["b"][0] and s["b"][1] <= s["c"][0]
    assert [result[n].value for n in "abc"] == ["a", "b", "c"]


@pytest.mark.parametrize("strategy", ["sequential", "thread", "process", "subprocess"])
def test_every_strategy_returns_values_and_reports_errors(strategy):
    exp = run.Experiment([
        run.Task("ok", run.Partial(payloads.add, 40, b=2)),
        run.Task("bad", run.Partial(payloads.boom, "kaput")),
    ], executor=run.LocalExecutor(strategy=strategy))
    result = exp.run(raise_on_failure=False)
    assert result["ok"].value == 42
    bad = result["bad"]
    assert bad.state == "failed" and bad.kind == "error"
    assert "RuntimeError: kaput" in bad.error.remote_traceback
    assert "about to fail" in bad.error.log_tail


def test_admission_two_one_cpu_tasks_together_then_a_two_cpu_task_alone(tmp_path):
    log = tmp_path / "spans.log"
    ex = run.LocalExecutor(cpus=2)
    tasks = [run.Task(n, run.Partial(payloads.record, str(log), n, 1.0),
                      resources=run.Resources(cpus=c)) for n, c in
             (("one_a", 1), ("one_b", 1), ("two", 2))]
    run.Experiment(tasks, executor=ex).run()
    s = spans(log)
    a, b, two = s["one_a"], s["one_b"], s["two"]
    assert a[0] < b[1] and b[0] < a[1], "the two 1-CPU tasks overlapped"
    assert two[0] >= max(a[1], b[1]) - 0.05, "the 2-CPU task waited for both"


def test_memory_request_waits_for_free_memory_and_oversized_fails_early(tmp_path):
    log = tmp_path / "spans.log"
    ex = run.LocalExecutor(cpus=2, memory="3GiB")
    tasks = [run.Task(n, run.Partial(payloads.record, str(log), n, 0.8),
                      resources=run.Resources(cpus=0.5, memory="2GiB")) for n in ("m1", "m2")]
    run.Experiment(tasks, executor=ex).run()
    s = spans(log)
    first, second = sorted(s.values())
    assert second[0] >= first[1] - 0.05, "2 + 2 GiB > 3 GiB: the second waited"

    home = Path(os.environ["STEADYRUN_HOME"])
    before = sorted((home / "experiments").iterdir())
    big = run.Task("huge", run.Partial(payloads.add, 1), resources=run.Resources(memory="4GiB"))
    with pytest.raises(run.InsufficientResources) as info:
        run.Experiment([big], executor=ex).run()
    msg = str(info.value)
    assert "'huge'" in msg and "memory=4.0GiB" in msg and "memory=3.0GiB" in msg
    assert sorted((home / "experiments").iterdir()) == before, "nothing was written"


def test_retries_wait_the_measured_backoff(tmp_path):
    marker = str(tmp_path / "count")
    retry = run.Retry(max_attempts=3, backoff=2.0, initial_delay=0.5, jitter=0.0)
    result = run.Experiment([run.Task("flaky", run.Partial(payloads.fail_until, marker, 3),
                                      retry=retry)]).run()
    assert result["flaky"].value == 3 and result["flaky"].attempts == 3
    times = [float(t) for t in Path(marker + ".times").read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # each gap is the backoff delay plus one process start and finish (< 0.5 s here)
    assert 0.5 <= gaps[0] < 1.0 and 1.0 <= gaps[1] < 1.5, gaps


def test_failure_kinds_are_produced_for_real(tmp_path):
    pidfile = tmp_path / "pids"
    tasks = [
        run.Task("raise", run.Partial(payloads.boom)),
        run.Task("exit3", run.Partial(payloads.exit_with, 3)),
        run.Task("sigkill", run.Partial(payloads.kill_self)),
        run.Task("oom", run.Partial(payloads.out_of_memory)),
        run.Task("timeout", run.Partial(payloads.spawn_children_and_sleep, str(pidfile)),
                 timeout=3),
    ]
    result = run.Experiment(tasks, executor=run.LocalExecutor(cpus=5)).run(
        raise_on_failure=False)
    assert result["raise"].kind == "error"
    assert result["exit3"].kind == "error" and result["exit3"].exit_code == 3
    assert result["sigkill"].kind == "lost" and result["sigkill"].attempts == 2
    assert result["oom"].kind == "oom"
    assert result["timeout"].kind == "timeout"
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) >= 4
    time.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"orphans left: {alive}"


def test_experiment_failed_lists_every_failure_with_its_details():
    tasks = [run.Task("a", run.Partial(payloads.boom, "first")),
             run.Task("b", run.Partial(payloads.exit_with, 7)),
             run.Task("after", run.Partial(payloads.add, 1), depends_on=["a"])]
    with pytest.raises(run.ExperimentFailed) as info:
        run.Experiment(tasks).run()
    err = info.value
    assert {f.task for f in err.failures} == {"a", "b"}
    text = str(err)
    assert "RuntimeError: first" in text and "exit code 7" in text
    assert "exiting with 7" in text  # the log tail
    assert err.result["after"].state == "skipped"


def test_run_returns_the_value_or_raises_task_failed_with_remote_traceback():
    assert run.run(run.Partial(payloads.add, 1, b=2)) == 3
    with pytest.raises(run.TaskFailed) as info:
        run.run(run.Partial(payloads.boom, "remote problem"))
    assert "remote problem" in info.value.remote_traceback
    assert "payloads.py" in info.value.remote_traceback


def test_lambda_payload_is_shipped_with_cloudpickle():
    offset = 10
    assert run.run(lambda: offset + 1) == 11


def test_every_state_change_is_in_the_store():
    result = run.Experiment([run.Task("t", run.Partial(payloads.add, 1))], title="rec").run()
    store = Store()
    assert store.experiment(result.id).state == "succeeded"
    assert [e.kind for e in store.events(result.id)] == ["running", "succeeded"]
    attempt, = store.attempts(result.id, "t")
    assert attempt.state == "succeeded" and attempt.ended_at >= attempt.started_at
    assert (Path(attempt.dir) / "result.pkl").exists()


def test_gpu_assignment_with_a_fake_nvml(monkeypatch):
    class FakeNVML:  # no GPU here: a fake NVML library reporting two devices
        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            pass

        def nvmlShutdown(self):
            pass

        def nvmlDeviceGetCount(self):
            return 2

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    ex = run.LocalExecutor(cpus=4)
    assert ex.capacity().gpus == [0, 1]
    tasks = [run.Task(f"g{i}", run.Partial(payloads.visible_devices),
                      resources=run.Resources(gpus=1)) for i in range(2)]
    tasks.append(run.Task("both", run.Partial(payloads.visible_devices),
                          resources=run.Resources(gpus=2)))
    result = run.Experiment(tasks, executor=ex).run()
    assert sorted([result["g0"].value, result["g1"].value]) == ["0", "1"]
    assert result["both"].value == "0,1"


def test_ctrl_c_cancels_running_attempts_and_records_them(tmp_path, subprocess_env):
    pidfile = tmp_path / "pids"
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(f"""
        import steadyrun as run, payloads
        exp = run.Experiment([
            run.Task("long", run.Partial(payloads.spawn_children_and_sleep, {str(pidfile)!r})),
            run.Task("after", run.Partial(payloads.add, 1), depends_on=["long"]),
        ], title="ctrlc")
        try:
            exp.run()
        except KeyboardInterrupt:
            print("ID", exp.id, flush=True)
            raise SystemExit(130)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert pidfile.exists(), proc.stderr.read() if proc.poll() is not None else "no pids"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    exp_id = out.split("ID ", 1)[1].split()[0]
    store = Store()
    assert store.experiment(exp_id).state == "cancelled"
    states = {t.name: t.state for t in store.tasks(exp_id)}
    assert states == {"long": "cancelled", "after": "cancelled"}
    assert store.attempts(exp_id, "long")[0].kind == "cancelled"
    pids = [int(p) for p in pidfile.read_text().split()]
    time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_bad_graphs_are_rejected_before_anything_is_written():
    home = Path(os.environ["STEADYRUN_HOME"])
    with pytest.raises(run.TaskDefinitionError, match="cycle: a -> b -> a"):
        run.Experiment([run.Task("a", payloads.add, depends_on=["b"]),
                        run.Task("b", payloads.add, depends_on=["a"])]).run()
    with pytest.raises(run.TaskDefinitionError, match="depends on 'nope'"):
        run.Experiment([run.Task("a", payloads.add, depends_on=["nope"])]).run()
    with pytest.raises(run.TaskDefinitionError, match="two tasks are named 'a'"):
        run.Experiment([run.Task("a", payloads.add), run.Task("a", payloads.add)])
    assert not (home / "experiments").exists() or not list((home / "experiments").iterdir())
