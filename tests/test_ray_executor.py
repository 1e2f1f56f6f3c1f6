"""RayExecutor against a real Ray head node on loopback (one cluster for the module).

Skipped only when Ray is not installed (``pip install -e '.[dev]'`` installs it). Ray is
imported only once the cluster's variables (loopback, auth token) are set: Ray reads
them at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import payloads
import ray_cluster
import steadyrun as run
from steadyrun.errors import ExecutorError, InsufficientResources
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.ray.executor import RayExecutor, RequestUnsatisfiable, _classify
from steadyrun.store.db import Store
from waiting import collect_outcomes, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is not installed (pip install 'ray[default]')"),
]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU head node on 127.0.0.1 with token auth; its variables are exported to this
    process (and so to the controllers it starts) for the module."""
    c = ray_cluster.start_cluster(num_cpus=2)
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    ray_cluster.forget_auth_token()  # a token an earlier cluster of this process left
    try:
        try:
            import ray  # noqa: F401
        except ImportError as e:
            pytest.skip(f"Ray cannot be imported: {e}")
        yield c
    finally:
        _disconnect()
        ray_cluster.stop_cluster(c)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()



def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def attempts_of(exp_id: str, task: str):
    store = Store()
    try:
        return [a for a in store.attempts(exp_id) if a.task == task]
    finally:
        store.close()


def test_import_steadyrun_does_not_import_ray(subprocess_env):
    code = ("import sys, steadyrun, steadyrun.executors.ray.executor as r\n"
            "ex = r.RayExecutor(address='127.0.0.1:1', namespace='n')\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n"
            "print(ex.to_config()['address'])")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "127.0.0.1:1"


def test_options_are_checked_and_config_round_trips():
    with pytest.raises(ExecutorError, match="address"):
        RayExecutor(address="")
    with pytest.raises(ExecutorError, match="sample_interval"):
        RayExecutor(sample_interval=-1)
    ex = RayExecutor(address="ray://10.0.0.1:10001", namespace="team", runtime_env={
        "env_vars": {"A": "1"}}, log_limit="2MiB", shared_fs=False)
    again = executor_from_config(ex.to_config())
    assert isinstance(again, RayExecutor) and again.to_config() == ex.to_config()


def test_ray_failures_map_to_steadyrun_kinds(cluster):
    import ray.exceptions as rx

    assert _classify(rx.WorkerCrashedError())[0] == "lost"
    assert _classify(rx.NodeDiedError("node 1 died"))[0] == "lost"
    assert _classify(rx.LocalRayletDiedError())[0] == "lost"
    assert _classify(rx.ActorDiedError())[0] == "lost"
    kind, message = _classify(rx.OutOfMemoryError("memory monitor killed it"))
    assert kind == "oom" and "memory monitor" in message
    assert _classify(rx.TaskCancelledError())[0] == "cancelled"
    assert _classify(rx.RuntimeEnvSetupError("no such pip package"))[0] == "error"


EXPERIMENT_FILE = """
    import json, sys
    import payloads
    import steadyrun as run
    from steadyrun.executors.ray.executor import RayExecutor

    def square(x):  # lives in __main__: shipped by value
        return x * x

    mode = sys.argv[1]
    if mode == "local":
        executor = run.LocalExecutor(cpus=2)
    elif mode == "ray-local":
        executor = RayExecutor(num_cpus=2)
    else:
        executor = RayExecutor(address=mode)
    tasks = [
        run.Task("add", run.Partial(payloads.add, 1, b=2)),
        run.Task("config", run.Config(payloads.add, 2, b=3)),
        run.Task("main_fn", run.Partial(square, 7)),
        run.Task("script", run.Script(inline="echo from-script; echo oops >&2")),
        run.Task("after", run.Partial(payloads.add, 10, b=5), depends_on=["add", "main_fn"]),
        *run.sweep(run.Task("sweep", run.Partial(payloads.add, 100, b=0)), {"b": [1, 2]}),
    ]
    exp = run.Experiment(tasks, title="same-file", executor=executor, progress=False)
    result = exp.run()
    import os
    ray_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    print(json.dumps({
        "values": {n: r.value for n, r in result.items()},
        "attempts": {n: r.attempts for n, r in result.items()},
        "script_log": list(exp.logs("script")),
        "ray_still_connected": ray_up}))
"""


def _gcs_servers() -> set[int]:
    found = set()
    for p in psutil.process_iter(["name"]):
        if (p.info["name"] or "").startswith("gcs_server"):
            found.add(p.pid)
    return found


def test_same_experiment_file_gives_the_same_results_locally_and_on_ray(
        cluster, tmp_path, subprocess_env):
    script = tmp_path / "exp.py"
    script.write_text(textwrap.dedent(EXPERIMENT_FILE))
    before = _gcs_servers()
    outputs = {}
    ray_tmp = tempfile.mkdtemp(prefix="sr-rl-")  # the local instance's session folder
    try:
        for mode in ("local", cluster.address, "ray-local"):
            proc = subprocess.run([sys.executable, str(script), mode],
                                  env={**subprocess_env, "RAY_TMPDIR": ray_tmp},
                                  capture_output=True, text=True, timeout=90)
            assert proc.returncode == 0, f"{mode}: {proc.stderr[-3000:]}"
            outputs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    local = outputs["local"]
    assert local["values"]["after"] == 15 and local["values"]["main_fn"] == 49
    for mode in (cluster.address, "ray-local"):
        got = outputs[mode]
        assert got["values"] == local["values"], mode
        assert got["attempts"] == local["attempts"], mode
        assert sorted(got["script_log"]) == sorted(local["script_log"]), mode
        assert not got["ray_still_connected"], mode
    assert "from-script" in local["script_log"] and "oops" in local["script_log"]
    # the local Ray instance was shut down with its executor; the cluster still runs
    assert wait_for(lambda: _gcs_servers() == before, 15, "the local Ray to stop")
    assert ray_cluster.cluster_processes(cluster)


def _spec(tmp_path: Path, name: str, payload, **resources) -> AttemptSpec:
    folder = tmp_path / name
    folder.mkdir()
    return AttemptSpec(attempt_id=f"direct/{name}/1", task=name, number=1, payload=payload,
                       attempt_dir=folder, resources=run.Resources(**resources),
                       env={"STEADYRUN_TASK": name, "STEADYRUN_ATTEMPT": "1"})



def test_ray_honours_cpu_requests_two_2cpu_tasks_run_one_after_the_other(cluster, tmp_path):
    # straight through the executor, without the engine's admission: Ray itself must
    # keep the second 2-CPU task waiting until the first has finished
    log = tmp_path / "times.txt"
    ex = RayExecutor(address=cluster.address)
    with ex:
        cap = ex.capacity()
        assert cap.cpus == 2 and cap.memory > 0 and cap.gpus == []
        specs = [_spec(tmp_path, name, run.Partial(payloads.record, str(log), name, 1.0),
                       cpus=2, memory="64MiB") for name in ("first", "second")]
        assert ex.launch_many(specs) == {}
        assert len(ex.task_ids()) == 2 and ex.pids() == {}
        outcomes = collect_outcomes(ex, 2)
    assert all(o.ok for o in outcomes.values()), outcomes
    assert {o.value for o in outcomes.values()} == {"first", "second"}
    times: dict[str, dict[str, float]] = {}
    for line in log.read_text().split("\n"):
        if line:
            what, name, t = line.split()
            times.setdefault(name, {})[what] = float(t)
    a, b = sorted(times.values(), key=lambda t: t["start"])
    assert b["start"] >= a["end"] - 0.05, times  # no overlap


def test_an_impossible_request_is_rejected_before_submission(cluster, tmp_path):
    ex = RayExecutor(address=cluster.address)
    with ex:
        with pytest.raises(RequestUnsatisfiable) as info:
            ex.check(run.Resources(cpus=1, memory="1TiB"), task="huge")
        message = str(info.value)
        assert "'huge'" in message and "memory=1.0TiB" in message
        assert "largest" in message and "127.0.0.1 with cpus=2" in message
        assert isinstance(info.value, InsufficientResources)
        spec = _spec(tmp_path, "greedy", run.Partial(payloads.add, 1), cpus=64)
        with pytest.raises(ExecutorError, match="'greedy' asks for cpus=64"):
            ex.launch(spec)
        assert ex.task_ids() == {}  # nothing reached Ray
        assert not (tmp_path / "greedy" / "ray.json").exists()
    # through an experiment: refused before anything is recorded or started
    exp = run.Experiment([run.Task("huge", run.Partial(payloads.add, 1),
                                   resources=run.Resources(cpus=64))],
                         executor=RayExecutor(address=cluster.address), progress=False)
    with pytest.raises(InsufficientResources, match="'huge' asks for cpus=64"):
        exp.run()
    assert exp.id is None
    exp.executor.close()


def test_a_raising_task_is_retried_by_steadyrun_and_each_attempt_counted_once(
        cluster, tmp_path):
    marker = tmp_path / "calls"
    task = run.Task("flaky", run.Partial(payloads.fail_until, str(marker), 3),
                    retry=run.Retry(max_attempts=3, initial_delay=0.1, jitter=0))
    ex = RayExecutor(address=cluster.address, shared_fs=False)
    result = run.Experiment([task], executor=ex, progress=False).run()
    assert result["flaky"].value == 3 and result["flaky"].attempts == 3
    assert marker.read_text() == "3"  # Ray retried nothing behind steadyrun's back
    assert len(Path(str(marker) + ".times").read_text().split()) == 3
    rows = attempts_of(result.id, "flaky")
    assert [(a.state, a.kind) for a in rows] == [("failed", "error"), ("failed", "error"),
                                                 ("succeeded", None)]
    task_ids = set()
    for a in rows[:2]:
        err = json.loads((Path(a.dir) / "error.json").read_text())
        assert err["type"] == "ValueError" and "fails on purpose" in err["message"]
        assert "fail_until" in err["traceback"]
        task_ids.add(json.loads((Path(a.dir) / "ray.json").read_text())["task_id"])
    assert (Path(rows[2].dir) / "result.pkl").exists()
    assert len(task_ids) == 2


def test_a_sigkilled_worker_is_lost_and_retried(cluster, tmp_path):
    marker = tmp_path / "kills"
    task = run.Task("victim", run.Partial(ray_cluster.die_once, str(marker)),
                    retry=run.Retry(max_attempts=2, on=("lost",), initial_delay=0.1))
    result = run.Experiment([task], executor=RayExecutor(address=cluster.address),
                            progress=False).run()
    assert result["victim"].value == "survived after 1 kill(s)"
    rows = attempts_of(result.id, "victim")
    assert [(a.state, a.kind) for a in rows] == [("failed", "lost"), ("succeeded", None)]
    assert "WorkerCrashedError" in rows[0].message


def test_a_timeout_force_cancels_the_running_ray_task(cluster, tmp_path):
    pidfile = tmp_path / "pid"
    task = run.Task("slow", run.Partial(ray_cluster.write_pid_and_sleep, str(pidfile), 60),
                    timeout=2.0, retry=run.Retry(max_attempts=1))
    started = time.time()
    result = run.Experiment([task], executor=RayExecutor(address=cluster.address),
                            progress=False).run(raise_on_failure=False)
    assert time.time() - started < 30
    r = result["slow"]
    assert r.state == "failed" and r.kind == "timeout", r
    pid = int(pidfile.read_text())
    wait_for(lambda: gone(pid), 15, "the Ray worker to be killed")
    (attempt,) = attempts_of(result.id, "slow")
    assert attempt.kind == "timeout"
    # same machine: the worker wrote into the attempt folder, so the output survived
    assert "sleeping" in (Path(attempt.dir) / "stdout.log").read_text()


def test_logs_results_and_samples_come_back_to_the_local_attempt_folders(cluster, tmp_path):
    ex = RayExecutor(address=cluster.address, shared_fs=False, log_limit="4KiB",
                     sample_interval=0.2)
    tasks = [run.Task("chatty", run.Partial(payloads.chatty, 3, 0.3)),
             run.Task("loud", run.Partial(ray_cluster.shout, 300)),
             run.Task("where", run.Partial(ray_cluster.where))]
    exp = run.Experiment(tasks, executor=ex, progress=False)
    result = exp.run()
    assert result["chatty"].value == 3 and result["loud"].value == 300
    info = result["where"].value
    assert info["task"] == "where" and info["attempt"] == "1" and info["pid"] != os.getpid()
    logs = list(exp.logs("chatty"))
    assert logs[:3] == ["line 0", "line 1", "line 2"] and "to stderr" in logs
    (chatty,) = attempts_of(result.id, "chatty")
    folder = Path(chatty.dir)
    assert (folder / "result.pkl").exists()
    ray_info = json.loads((folder / "ray.json").read_text())
    assert ray_info["shared_fs"] is False and ray_info["task_id"] and ray_info["pid"]
    samples = json.loads((folder / "samples.json").read_text())
    assert samples["pid"] == ray_info["pid"] and len(samples["samples"]) >= 3
    assert samples["peaks"]["peak_rss"] > 0
    assert all(s["rss"] > 0 for s in samples["samples"])
    # the node's samples become the task's like local ones: peaks, samples table
    assert result["chatty"].peak_rss == samples["peaks"]["peak_rss"] == chatty.peak_rss
    from steadyrun.store.db import Store

    assert len(Store().samples(result.id, "chatty")) == len(samples["samples"])
    (loud,) = attempts_of(result.id, "loud")
    text = (Path(loud.dir) / "stdout.log").read_text()
    assert text.startswith("[steadyrun] the first ")
    assert len(text) < 4096 + 200 and text.rstrip().endswith("x")
    assert "00000299 " in text and "00000000 " not in text
    assert (Path(loud.dir) / "stderr.log").read_text() == "done shouting\n"


CONTROL_FILE = """
    import json, sys, time
    import steadyrun as run

    exp = run.Experiment.from_id(sys.argv[1])
    pidfile = sys.argv[2]
    import os
    deadline = time.time() + 60
    while time.time() < deadline:
        states = {t.name: t.state for t in exp.status().tasks}
        if states["quick"] == "succeeded" and states["long"] == "running" \\
                and os.path.exists(pidfile):
            break
        time.sleep(0.2)
    status = exp.status()
    logs = list(exp.logs("quick"))
    said = exp.cancel(wait=30)
    final = exp.status()
    print(json.dumps({"during": {t.name: t.state for t in status.tasks},
                      "executor": status.tasks[1].executor, "logs": logs, "cancel": said,
                      "final": {t.name: t.state for t in final.tasks},
                      "state": final.state}))
"""


def test_a_detached_ray_experiment_is_followed_and_cancelled_from_another_process(
        cluster, tmp_path, subprocess_env):
    pidfile = tmp_path / "long.pid"
    ex = RayExecutor(address=cluster.address, namespace="steadyrun-tests")
    exp = run.Experiment([
        run.Task("quick", run.Partial(payloads.chatty, 2)),
        run.Task("long", run.Partial(ray_cluster.write_pid_and_sleep, str(pidfile), 120),
                 depends_on=["quick"])], title="ray-detached", executor=ex, progress=False)
    assert exp.run(detach=True) is None
    ex.close()  # capacity() connected this process; the controller has its own connection
    script = tmp_path / "control.py"
    script.write_text(textwrap.dedent(CONTROL_FILE))
    proc = subprocess.run([sys.executable, str(script), exp.id, str(pidfile)],
                          env=subprocess_env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["during"] == {"quick": "succeeded", "long": "running"}, seen
    assert seen["executor"] == "ray"
    assert "line 0" in seen["logs"] and "to stderr" in seen["logs"]
    assert seen["cancel"].startswith("cancelled"), seen
    assert seen["final"]["long"] == "cancelled" and seen["state"] == "cancelled", seen
    wait_for(lambda: gone(int(pidfile.read_text())), 15, "the cancelled task's worker to die")
    store = Store()
    try:
        row = store.experiment(exp.id)
        wait_for(lambda: row.controller_pid is None or gone(row.controller_pid), 20,
                 "the controller to exit")
    finally:
        store.close()


def test_a_detached_experiment_without_address_starts_ray_in_its_controller(
        cluster, monkeypatch):
    import ray

    _disconnect()
    before = _gcs_servers()
    ray_tmp = tempfile.mkdtemp(prefix="sr-rc-")  # the controller's Ray session folder
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    exp = run.Experiment([run.Task("where", run.Partial(ray_cluster.where))],
                         title="ray-detached-local", progress=False,
                         executor=RayExecutor(num_cpus=1))
    assert exp.run(detach=True) is None
    controller = exp.status().controller["pid"]
    assert not ray.is_initialized()  # the capacity check did not start a Ray here
    wait_for(lambda: exp.status().state in ("succeeded", "failed", "cancelled"), 60,
             "the detached experiment to end")
    status = exp.status()
    assert status.state == "succeeded", status
    value = exp.results()["where"].value
    assert value["task"] == "where" and value["pid"] not in (os.getpid(), controller)
    wait_for(lambda: gone(controller), 30, "the controller to exit")
    # its Ray went with it; the test cluster was left alone
    assert wait_for(lambda: _gcs_servers() == before, 15, "the controller's Ray to stop")
    assert ray_cluster.cluster_processes(cluster)
    shutil.rmtree(ray_tmp, ignore_errors=True)
