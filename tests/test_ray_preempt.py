"""A Ray node lost or drained under a running attempt, on a real Ray cluster of this
machine: a head with no CPUs (it runs nothing, so it is never the node stopped) and
worker nodes of one CPU each. All nodes have the address 127.0.0.1, so they see the
attempt folders and the task's folder, as nodes on a shared filesystem do.

- The node's raylet is killed: the attempt that had saved a checkpoint in
  ``run.task_dir()`` is ``preempted`` and the next one resumes from it on the other
  node (``Retry(max_attempts=1)`` is enough); one that saved nothing is ``lost``.
- The node is drained (``ray drain-node``): the attempt is asked to save (SIGUSR1), a
  class payload's ``checkpoint()`` is saved and the next attempt runs it elsewhere.

Each test takes one node away; the fixture adds a fresh one so that two are usable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest

import ray_cluster
import steadyrun as run
from steadyrun.attempt.names import CHECKPOINT_FILE, EXIT_PREEMPTED
from steadyrun.store.db import Store
from waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.timeout(240),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is not installed (pip install 'ray[default]')"),
]


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs and two worker nodes (1 CPU each)."""
    c = ray_cluster.start_cluster(num_cpus=0)
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    state = {"cluster": c, "usable": 0, "alive": 1, "added": 0}
    try:
        ray_cluster.forget_auth_token()  # of a cluster an earlier module started
        yield state
    finally:
        if "ray" in __import__("sys").modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        ray_cluster.stop_cluster(c)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def nodes(cluster):
    """Two usable worker nodes (fresh ones joined for those an earlier test took);
    call ``nodes["take"](alive=...)`` once the test has taken one away."""
    c = cluster["cluster"]
    while cluster["usable"] < 2:
        cluster["added"] += 1
        ray_cluster.add_node(c, f"w{cluster['added']}", num_cpus=1)
        cluster["usable"] += 1
        cluster["alive"] += 1
    ray_cluster.wait_for_nodes(c, cluster["alive"])

    def take(alive: bool) -> None:
        cluster["usable"] -= 1
        if not alive:
            cluster["alive"] -= 1

    return {"cluster": c, "take": take}


def executor(c: ray_cluster.Cluster) -> run.RayExecutor:
    return run.RayExecutor(address=c.address, sample_interval=0.5)


def where(folder: Path, attempt: int, timeout: float = 60.0) -> dict:
    path = folder / f"{attempt}.json"
    wait_for(path.exists, timeout=timeout, what=f"attempt {attempt} to start")
    return json.loads(path.read_text())


def detached(exp: run.Experiment) -> None:
    """Run ``exp`` in a background thread of this process (see :func:`finished`)."""
    import threading

    box: dict = {}

    def go() -> None:
        try:
            box["result"] = exp.run(raise_on_failure=False)
        except BaseException as e:  # reported by the test
            box["error"] = e

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    exp.box, exp.thread = box, thread  # type: ignore[attr-defined]


def finished(exp: run.Experiment, timeout: float = 150.0):
    exp.thread.join(timeout)  # type: ignore[attr-defined]
    box = exp.box  # type: ignore[attr-defined]
    assert not exp.thread.is_alive(), "the experiment did not finish"  # type: ignore
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_a_killed_node_with_a_checkpoint_is_preempted_and_resumes_elsewhere(nodes, tmp_path):
    task = run.Task("count", run.Partial(ray_cluster.count_saving_each_step, 16, 0.5,
                                         str(tmp_path)),
                    retry=run.Retry(max_attempts=1))
    exp = run.Experiment([task], executor=executor(nodes["cluster"]), progress=False)
    detached(exp)
    first = where(tmp_path, 1)
    wait_for(lambda: _saved_step(exp) >= 3, timeout=30, what="three saved steps")
    os.kill(first["raylet_pid"], signal.SIGKILL)  # the node dies under the attempt
    nodes["take"](alive=False)
    result = finished(exp)
    value = result["count"].value
    assert result["count"].state == "succeeded", result["count"].message
    assert value["value"] == 16
    assert value["first"] >= 3  # resumed from the saved step, not from 0
    assert value["node_id"] != first["node_id"]  # on the other node
    rows = Store().attempts(result.id, "count")
    assert [r.kind for r in rows] == ["preempted", None], [(r.kind, r.message) for r in rows]
    assert "NodeDiedError" in rows[0].message and "checkpoint" in rows[0].message


def _saved_step(exp: run.Experiment) -> int:
    try:
        path = Store().experiment_dir(exp.id) / "tasks" / "count" / "work" / "step.json"
        return json.loads(path.read_text())
    except Exception:  # not started yet, or nothing saved yet
        return 0


def test_a_killed_node_without_a_checkpoint_is_lost_and_retried(nodes, tmp_path):
    # long enough that Ray sees the node dead before the task could end: a worker
    # outlives its raylet for a moment, and a task that ends then has succeeded
    task = run.Task("plain", run.Partial(ray_cluster.count_without_saving, 12, 0.5,
                                         str(tmp_path)),
                    retry=run.Retry(max_attempts=2, initial_delay=0.1))
    exp = run.Experiment([task], executor=executor(nodes["cluster"]), progress=False)
    detached(exp)
    first = where(tmp_path, 1)
    time.sleep(1.0)
    os.kill(first["raylet_pid"], signal.SIGKILL)
    nodes["take"](alive=False)
    result = finished(exp)
    assert result["plain"].state == "succeeded", result["plain"].message
    assert result["plain"].value["node_id"] != first["node_id"]
    rows = Store().attempts(result.id, "plain")
    assert [r.kind for r in rows] == ["lost", None], [(r.kind, r.message) for r in rows]
    assert "NodeDiedError" in rows[0].message and "checkpoint" not in rows[0].message


def test_a_drained_node_checkpoints_a_class_payload_that_resumes_elsewhere(nodes, tmp_path):
    payload = ray_cluster.CheckpointedCounter(40, 0.25, str(tmp_path))
    task = run.Task("counter", payload, retry=run.Retry(max_attempts=1))
    exp = run.Experiment([task], executor=executor(nodes["cluster"]), progress=False)
    detached(exp)
    first = where(tmp_path, 1)
    time.sleep(1.0)
    ray_cluster.drain_node(nodes["cluster"], first["node_id"])
    nodes["take"](alive=True)  # draining: alive, but Ray schedules nothing new there
    result = finished(exp)
    task_result = result["counter"]
    assert task_result.state == "succeeded", task_result.message
    value = task_result.value
    assert value["value"] == 40
    assert value["checkpoints"] == 1 and value["starts"][0] == 0
    assert 0 < value["starts"][1] < 40  # the saved payload ran, from the step it reached
    assert value["nodes"][0] == first["node_id"] != value["nodes"][1]
    rows = Store().attempts(result.id, "counter")
    assert [r.kind for r in rows] == ["preempted", None], [(r.kind, r.message) for r in rows]
    assert "preempted" in rows[0].message
    work = Store().experiment_dir(result.id) / "tasks" / "counter" / "work"
    assert not (work / CHECKPOINT_FILE).exists()  # the task is done: removed
    error = json.loads((rows[0].dir / "error.json").read_text())
    assert error["kind"] == "preempted" and error["exit_code"] == EXIT_PREEMPTED
