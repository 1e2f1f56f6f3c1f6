"""Gangs on Ray: ``RayExecutor(nodes=2, ...)`` on a real two-node Ray cluster of this
machine (a head with the custom resource ``node1``, a second raylet with ``node2``).

Both nodes have the address 127.0.0.1, so every node sees the attempt folders. Ray is
imported only once the cluster's variables (loopback, auth token) are set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import psutil
import pytest

import ddp_payloads as dp
import ray_cluster
import steadyrun as run
from steadyrun.errors import ExecutorError, InsufficientResources
from steadyrun.executors import executor_from_config
from steadyrun.executors.ray.executor import RayExecutor, RequestUnsatisfiable
from steadyrun.launchers import Torchrun
from steadyrun.store.db import Store
from waiting import wait_for

HAS_TORCH = importlib.util.find_spec("torch") is not None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.timeout(180),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is not installed (pip install 'ray[default]')"),
]
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1: the head (2 CPUs, resource ``node1``) and a second
    raylet (1 CPU, resource ``node2``); their variables are exported for the module."""
    c = ray_cluster.start_cluster(num_cpus=2, resource="node1")
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    try:
        ray_cluster.add_node(c, "node2", num_cpus=1)
        ray_cluster.wait_for_nodes(c, 2)
        ray_cluster.forget_auth_token()  # of a cluster an earlier module started
        try:
            import ray  # noqa: F401
        except ImportError as e:
            pytest.skip(f"Ray cannot be imported: {e}")
        yield c
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
        ray_cluster.forget_auth_token()  # for a cluster a later module starts


def attempts_of(exp_id: str, task: str):
    store = Store()
    try:
        return [a for a in store.attempts(exp_id) if a.task == task]
    finally:
        store.close()


def processes_naming(directory: str | Path) -> list[psutil.Process]:
    """Live processes whose command line names the attempt folder."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(
                    str(directory) in part for part in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def node_of_raylet(cluster, pid: int) -> str:
    """The custom resource of the Ray node whose raylet has ``pid``: its command line
    names that node's temporary folder."""
    cmd = " ".join(psutil.Process(pid).cmdline())
    return next((name for name in cluster.nodes if f"{cluster.temp_dir}/{name}/" in cmd),
                "node1")


def connect(cluster) -> None:
    """Connect this process to the test cluster (an executor closed disconnects it)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)


def node_resources(cluster) -> dict[str, str]:
    """Ray node id -> the custom resource that tells the node apart."""
    import ray

    connect(cluster)
    return {n["NodeID"]: next(k for k in ("node1", "node2") if k in n["Resources"])
            for n in ray.nodes() if n["Alive"]}


def live_groups(cluster) -> list[dict]:
    """The cluster's placement groups that were not removed."""
    from ray.util import placement_group_table

    connect(cluster)
    return [g for g in placement_group_table().values() if g["state"] != "REMOVED"]


# --- options ------------------------------------------------------------------------------


def test_gang_options_are_checked_and_round_trip():
    with pytest.raises(ExecutorError, match="nodes=0"):
        RayExecutor(nodes=0)
    with pytest.raises(ExecutorError, match="not a launcher"):
        RayExecutor(nodes=2, launcher="mpirun")
    assert RayExecutor().gang is None and "nodes" not in RayExecutor().to_config()
    ex = RayExecutor(address="127.0.0.1:1", nodes=2, ntasks_per_node=3,
                     launcher=Torchrun(rdzv_backend="static", max_restarts=1))
    assert ex.gang.size == 6 and ex.gang.launcher.rdzv_backend == "static"
    again = executor_from_config(ex.to_config())
    assert isinstance(again, RayExecutor) and again.to_config() == ex.to_config()
    assert again.gang == ex.gang
    assert RayExecutor(nodes=2, launcher="torchrun").gang.launcher == Torchrun()


def test_a_gang_the_nodes_cannot_hold_is_refused_before_submission(cluster, tmp_path):
    with RayExecutor(address=cluster.address, nodes=3) as ex:
        with pytest.raises(RequestUnsatisfiable, match="needs 3 Ray nodes") as info:
            ex.check(run.Resources(cpus=1), task="wide")
        assert isinstance(info.value, InsufficientResources)
        assert "'wide'" in str(info.value) and "nodes=1, ntasks_per_node=3" in str(info.value)
    # two nodes, but only the head has room for two ranks of one CPU
    with RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=2) as ex:
        with pytest.raises(InsufficientResources, match="1 of the 2 alive"):
            ex.check(run.Resources(cpus=1), task="fat")
        ex.check(run.Resources(cpus=0.5), task="thin")  # fits: 1 CPU per node
    exp = run.Experiment([run.Task("wide", run.Partial(dp.rank_env))],
                         executor=RayExecutor(address=cluster.address, nodes=3),
                         progress=False)
    with pytest.raises(InsufficientResources, match="needs 3 Ray nodes"):
        exp.run()
    assert exp.id is None
    exp.executor.close()


# --- plain ranks --------------------------------------------------------------------------


def test_plain_ranks_on_two_nodes_see_rank_and_world_size(cluster):
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1)
    started = time.monotonic()
    result = run.Experiment([run.Task("where", run.Partial(ray_cluster.rank_where))],
                            executor=ex, progress=False).run()
    took = time.monotonic() - started
    (attempt,) = attempts_of(result.id, "where")
    folder = Path(attempt.dir)
    seen = {}
    for r in (0, 1):
        import pickle

        seen[r] = pickle.loads((folder / "ranks" / str(r) / "result.pkl").read_bytes())
    assert result["where"].value == seen[0]  # the task's value is rank 0's
    assert [(s["RANK"], s["WORLD_SIZE"], s["LOCAL_RANK"], s["GROUP_RANK"])
            for s in seen.values()] == [("0", "2", "0", "0"), ("1", "2", "0", "1")]
    assert seen[0]["MASTER_ADDR"] == seen[1]["MASTER_ADDR"] == "127.0.0.1"
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    # each rank ran under another raylet: on two different Ray nodes
    nodes = {node_of_raylet(cluster, int(s["RAY_RAYLET_PID"])) for s in seen.values()}
    assert nodes == {"node1", "node2"}, seen
    info = json.loads((folder / "ray.json").read_text())
    ids = [n["node_id"] for n in info["nodes"]]
    assert len(set(ids)) == 2 and set(map(node_resources(cluster).get, ids)) == nodes
    ranks = json.loads((folder / "ranks.json").read_text())
    assert [e["kind"] for e in ranks] == [None, None]
    assert not live_groups(cluster)  # the placement group went with the attempt
    print(f"plain 2-node gang: {took:.1f}s")


# --- DDP ----------------------------------------------------------------------------------


@needs_torch
def test_ddp_training_across_two_ray_nodes_matches_one_process(cluster):
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1,
                     launcher="torchrun")
    started = time.monotonic()
    result = run.Experiment([run.Task("ddp", run.Partial(dp.train_ddp, steps=20))],
                            executor=ex, progress=False).run()
    took = time.monotonic() - started
    value = result["ddp"].value
    assert value["rank"] == 0 and value["world_size"] == 2
    reference = dp.train_single(steps=20)
    first, second = value["all_params"]
    assert first == second  # every rank ended with the same model
    assert max(abs(a - b) for a, b in zip(first, reference, strict=True)) < 1e-5
    (attempt,) = attempts_of(result.id, "ddp")
    folder = Path(attempt.dir)
    infos = [json.loads((folder / "ranks" / str(r) / "rank.json").read_text()) for r in (0, 1)]
    assert [i["node_rank"] for i in infos] == [0, 1]
    info = json.loads((folder / "ray.json").read_text())
    where = node_resources(cluster)
    assert sorted(where[n["node_id"]] for n in info["nodes"]) == ["node1", "node2"]
    assert (folder / "samples" / "node-0.jsonl").exists()
    assert (folder / "samples" / "node-1.jsonl").exists()
    assert not live_groups(cluster)
    print(f"DDP on 2 Ray nodes: {took:.1f}s")


# --- failures -----------------------------------------------------------------------------


@needs_torch
def test_a_rank_failing_on_node_two_fails_the_gang_fast_and_leaves_nothing(cluster):
    # under torchrun: its agent on node 1 sees the rank fail, the node's Ray task ends,
    # node 0's task is force-cancelled and its agent ends torchrun and the waiting rank
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1,
                     launcher="torchrun")
    task = run.Task("boom", run.Partial(dp.fail_on_rank, 1, after=1.0),
                    retry=run.Retry(max_attempts=1))
    exp = run.Experiment([task], executor=ex, progress=False)
    result = exp.run(raise_on_failure=False)
    ended = time.time()
    r = result["boom"]
    assert r.state == "failed" and r.kind == "error", r
    (attempt,) = attempts_of(result.id, "boom")
    folder = Path(attempt.dir)
    raised = list(Path(os.environ["STEADYRUN_HOME"]).rglob("raised_at"))
    assert raised, "rank 1 did not raise"
    raised_at = float(raised[0].read_text())
    assert ended - raised_at < 10, f"the gang ended {ended - raised_at:.1f}s after the raise"
    err = json.loads((folder / "error.json").read_text())
    assert err["rank"] == 1 and err["type"] == "ValueError"
    assert "rank 1 of 2" in err["message"] and "rank 1 gives up" in err["message"]
    assert "fail_on_rank" in err["traceback"]
    assert "rank 1" in attempt.message
    wait_for(lambda: not processes_naming(folder), 10, "the gang's processes to end")
    assert not live_groups(cluster)
    print(f"failure reported {ended - raised_at:.1f}s after the raise")


@needs_torch
def test_a_gang_failing_once_is_retried_and_the_second_attempt_succeeds(cluster):
    # plain ranks (the DDP payload's init_process_group reads MASTER_ADDR/PORT)
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1)
    task = run.Task("flaky", run.Partial(dp.train_ddp, steps=6, fail_rank=1,
                                         fail_marker="failed-once"),
                    retry=run.Retry(max_attempts=2, initial_delay=0))
    result = run.Experiment([task], executor=ex, progress=False).run()
    assert result["flaky"].attempts == 2 and result["flaky"].value["world_size"] == 2
    rows = attempts_of(result.id, "flaky")
    assert [(a.state, a.kind) for a in rows] == [("failed", "error"), ("succeeded", None)]
    err = json.loads((Path(rows[0].dir) / "error.json").read_text())
    assert err["rank"] == 1 and "fails on purpose" in err["message"]
    for a in rows:
        assert not processes_naming(a.dir)
    assert not live_groups(cluster)


def test_a_timeout_stops_every_node_of_the_gang(cluster):
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1)
    task = run.Task("stuck", run.Partial(dp.sleep_forever), timeout=4.0,
                    retry=run.Retry(max_attempts=1))
    started = time.monotonic()
    result = run.Experiment([task], executor=ex, progress=False).run(raise_on_failure=False)
    assert time.monotonic() - started < 40
    assert result["stuck"].kind == "timeout", result["stuck"]
    (attempt,) = attempts_of(result.id, "stuck")
    folder = Path(attempt.dir)
    assert (folder / "ranks" / "1" / "rank.json").exists()  # both nodes had started
    wait_for(lambda: not processes_naming(folder), 15, "the gang's processes to end")
    assert not live_groups(cluster)


def _spec(tmp_path: Path, name: str, payload, **resources):
    from steadyrun.executors.base import AttemptSpec

    folder = tmp_path / name
    folder.mkdir()
    return AttemptSpec(attempt_id=f"direct/{name}/1", task=name, number=1, payload=payload,
                       attempt_dir=folder, resources=run.Resources(**resources),
                       env={"STEADYRUN_TASK": name, "STEADYRUN_ATTEMPT": "1"})


def test_launch_returns_at_once_and_a_gang_waits_for_its_placement_group(cluster, tmp_path):
    # straight through the executor: the second gang needs the CPU of node2 that the
    # first holds, so Ray keeps its placement group pending; stopping it then ends it
    # without a rank having started, and stopping the first ends both of its nodes
    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1)
    with ex:
        first = _spec(tmp_path, "first", run.Partial(dp.sleep_forever))
        second = _spec(tmp_path, "second", run.Partial(ray_cluster.rank_where))
        started = time.monotonic()
        assert ex.launch_many([first, second]) == {}
        assert time.monotonic() - started < 3
        assert set(ex.task_ids()) == {first.attempt_id, second.attempt_id}
        outs: list = []  # the gangs move on in wait(), as the engine calls it

        def started_ranks() -> bool:
            outs.extend(ex.wait(0.2))
            return (first.attempt_dir / "ranks" / "1" / "rank.json").exists()

        wait_for(started_ranks, 60, "the first gang's ranks to start")
        outs.extend(ex.wait(1.0))
        assert outs == []
        assert not (second.attempt_dir / "ranks").exists()  # still waiting for its group
        assert len(live_groups(cluster)) == 2
        ex.stop(second.attempt_id, "cancelled")
        out = wait_for(lambda: ex.wait(0.2), 30, "the waiting gang's outcome")
        assert [(o.attempt_id, o.kind) for o in out] == [(second.attempt_id, "cancelled")]
        ex.stop(first.attempt_id, "timeout")
        out = wait_for(lambda: ex.wait(0.2), 30, "the running gang's outcome")
        assert [(o.attempt_id, o.kind) for o in out] == [(first.attempt_id, "timeout")]
        assert ex.task_ids() == {}
    wait_for(lambda: not processes_naming(first.attempt_dir), 15, "the ranks to end")
    assert not live_groups(cluster)


def test_both_ray_nodes_ranks_reach_the_store(cluster):
    import gang_payloads
    from steadyrun.observe.logs import iter_logs

    ex = RayExecutor(address=cluster.address, nodes=2, ntasks_per_node=1)
    exp = run.Experiment("ray-ranks", executor=ex, progress=False)
    exp.add(run.Partial(gang_payloads.chatty_rank, 3.0), name="train")
    result = exp.run(tail_logs=False)["train"]
    assert result.ok and result.value == 0
    assert [(r.rank, r.node_rank, r.kind) for r in result.ranks] == [(0, 0, None),
                                                                      (1, 1, None)]
    store = Store(readonly=True)
    rows = store.samples(exp.id, "train")
    assert {r.rank for r in rows} >= {0, 1} and all(r.host for r in rows), rows[:3]
    assert result.peak_rss is not None and result.peak_rss >= 40 << 20
    assert list(iter_logs(store, exp.id, "train", rank=1, stream="stdout")) == [
        "rank 1 says hi", "rank 1 done"]
