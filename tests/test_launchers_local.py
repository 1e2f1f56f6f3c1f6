"""Gangs on this machine: ``LocalExecutor(ntasks_per_node=N, launcher=...)`` runs each
attempt as N real rank processes (torchrun's agent, or plain processes), with the
``torch.distributed`` environment, one result, and every rank stopped when one fails."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

import ddp_payloads as dp
import steadyrun as run
from steadyrun.errors import ExecutorError, InsufficientResources
from steadyrun.executors.local.executor import LocalExecutor
from steadyrun.launchers import Gang, Torchrun, read_gang, resolve_gang
from steadyrun.store.db import Store

HAS_TORCH = __import__("importlib").util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def _attempt_dir(exp: run.Experiment, task: str, number: int) -> Path:
    home = Path(os.environ["STEADYRUN_HOME"])
    return home / "experiments" / exp.id / "tasks" / task / str(number)


def _processes_of(directory: Path) -> list[psutil.Process]:
    """Live processes whose command line names the attempt folder."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(directory) in part for part in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            continue
    return found


# --- options -----------------------------------------------------------------------------


def test_gang_options_are_checked_with_named_errors():
    with pytest.raises(ExecutorError, match="strategy='subprocess'"):
        LocalExecutor(strategy="thread", ntasks_per_node=2)
    with pytest.raises(ExecutorError, match="ntasks_per_node=0"):
        LocalExecutor(ntasks_per_node=0)
    with pytest.raises(ExecutorError, match="not a launcher"):
        LocalExecutor(launcher="mpirun")
    with pytest.raises(ExecutorError, match="disagree"):
        LocalExecutor(ntasks_per_node=2, launcher=Torchrun(nproc_per_node=3))
    with pytest.raises(ExecutorError, match="rdzv_backend"):
        Torchrun(rdzv_backend="etcd-v9")
    assert LocalExecutor().gang is None
    assert resolve_gang(1, 1, None, "X") is None
    g = LocalExecutor(launcher=Torchrun(nproc_per_node=4)).gang
    assert g is not None and g.size == 4 and g.launcher is not None


def test_gang_round_trips_through_the_stored_config():
    ex = LocalExecutor(ntasks_per_node=3, launcher=Torchrun(max_restarts=2, rdzv_port=29999))
    again = LocalExecutor.from_config({k: v for k, v in ex.to_config().items() if k != "type"})
    assert again.gang == ex.gang
    plain = LocalExecutor(ntasks_per_node=2)
    assert LocalExecutor.from_config(
        {k: v for k, v in plain.to_config().items() if k != "type"}).gang == Gang(1, 2)


def test_a_gang_that_can_never_fit_is_refused_before_anything_starts():
    exp = run.Experiment("too-big", executor=LocalExecutor(cpus=2, ntasks_per_node=2))
    exp.add(run.Partial(dp.rank_env), name="t", resources=run.Resources(cpus=2))
    with pytest.raises(InsufficientResources, match=r"cpus=4.*2 ranks of cpus=2"):
        exp.run()


# --- plain ranks -------------------------------------------------------------------------


def test_plain_ranks_get_the_distributed_environment_and_rank_0s_value():
    exp = run.Experiment("plain", executor=LocalExecutor(ntasks_per_node=3))
    exp.add(run.Partial(dp.rank_env), name="env", resources=run.Resources(cpus=0.5))
    result = exp.run(tail_logs=False)["env"]
    assert result.ok
    assert result.value["RANK"] == "0" and result.value["WORLD_SIZE"] == "3"
    d = _attempt_dir(exp, "env", 1)
    ends = json.loads((d / "ranks.json").read_text())
    assert [e["rank"] for e in ends] == [0, 1, 2] and all(e["kind"] is None for e in ends)
    import pickle

    for r in range(3):
        env = pickle.loads((d / "ranks" / str(r) / "result.pkl").read_bytes())
        assert env["RANK"] == str(r) and env["LOCAL_RANK"] == str(r)
        assert env["LOCAL_WORLD_SIZE"] == "3" and env["MASTER_ADDR"] == "127.0.0.1"
        assert env["MASTER_PORT"] and env["MASTER_PORT"].isdigit()
    assert read_gang(d) == Gang(1, 3)


def test_two_gangs_that_share_the_machine_run_one_after_the_other():
    """Admission counts every rank: two 2-rank gangs of 1 CPU per rank on 2 CPUs never
    overlap."""
    exp = run.Experiment("admit", executor=LocalExecutor(cpus=2, ntasks_per_node=2))
    for name in ("a", "b"):
        exp.add(run.Partial(dp.rank_env), name=name)
    exp.run(tail_logs=False)
    rows = {r.task: r for r in Store().attempts(exp.id)}
    a, b = sorted(rows.values(), key=lambda r: r.started_at)
    assert b.started_at >= a.ended_at - 0.05


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_and_names_itself():
    exp = run.Experiment("fails", executor=LocalExecutor(ntasks_per_node=3, grace_period=2))
    exp.add(run.Partial(dp.fail_on_rank, 2), name="t", resources=run.Resources(cpus=0.5))
    result = exp.run(tail_logs=False, raise_on_failure=False)["t"]
    assert result.state == "failed" and result.kind == "error"
    d = _attempt_dir(exp, "t", 1)
    raised = float((d.parent / "work" / "raised_at").read_text())
    row = Store().attempts(exp.id)[0]
    assert row.ended_at - raised < 10, row.ended_at - raised
    assert "rank 2 of 3" in result.error.message and "gives up" in result.error.message
    tb = result.error.remote_traceback or ""
    assert "ValueError" in tb and "fail_on_rank" in tb
    assert not _processes_of(d)
    ends = {e["rank"]: e for e in json.loads((d / "ranks.json").read_text())}
    assert ends[2]["kind"] == "error" and ends[0]["kind"] == "lost"


@pytest.mark.slow
def test_a_gang_past_its_timeout_is_stopped_whole():
    exp = run.Experiment("slow", executor=LocalExecutor(ntasks_per_node=2, grace_period=1))
    exp.add(run.Partial(dp.sleep_forever), name="t", timeout="3s")
    t0 = time.monotonic()
    result = exp.run(tail_logs=False, raise_on_failure=False)["t"]
    assert result.kind == "timeout" and time.monotonic() - t0 < 15
    assert not _processes_of(_attempt_dir(exp, "t", 1))


def _no_memory_cgroup() -> str | None:
    from steadyrun.attempt import memcg

    if os.geteuid() != 0:
        return "memory cgroups need root"
    found = memcg.mechanism()
    return None if found.kind == "kernel" else f"no memory cgroup here: {found.reason}"


@pytest.mark.skipif(_no_memory_cgroup() is not None, reason=_no_memory_cgroup() or "")
def test_a_rank_over_the_gangs_memory_is_oom_and_named():
    """The gang's memory cgroup holds every rank's request together; the rank the
    kernel kills is the one named, not a rank stopped after it."""
    exp = run.Experiment("oom", executor=LocalExecutor(ntasks_per_node=2, grace_period=1))
    exp.add(run.Partial(dp.grow_on_rank, 1, 700), name="t",
            resources=run.Resources(cpus=0.5, memory="200MiB", enforce=True))
    result = exp.run(tail_logs=False, raise_on_failure=False)["t"]
    assert result.kind == "oom", result.message
    assert "limit 400.0MiB" in result.message
    assert "rank 1 of 2" in result.message and "SIGKILL" in result.message
    assert not _processes_of(_attempt_dir(exp, "t", 1))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [None, "torchrun"])
def test_ranks_die_with_an_agent_killed_outright(launcher):
    """SIGKILL gives the node agent no chance to stop its ranks: the kernel does
    (a cancelled cluster task is killed this way)."""
    if launcher == "torchrun" and not HAS_TORCH:
        pytest.skip("torch is not installed")
    import signal
    import threading

    from waiting import wait_for

    exp = run.Experiment("agent-killed", executor=LocalExecutor(ntasks_per_node=2,
                                                                 launcher=launcher))
    exp.add(run.Partial(dp.sleep_forever), name="t", resources=run.Resources(cpus=0.5),
            retry=run.Retry(max_attempts=1))
    results: list = []
    runner = threading.Thread(target=lambda: results.append(
        exp.run(tail_logs=False, raise_on_failure=False)))
    runner.start()
    d = wait_for(lambda: exp.id and _attempt_dir(exp, "t", 1), 30, "the attempt folder")
    wait_for(lambda: all((d / "ranks" / str(r) / "rank.json").exists() for r in (0, 1)),
             60, "both ranks to start")
    agent = json.loads((d / "identity.json").read_text())["pid"]
    ranks = [json.loads((d / "ranks" / str(r) / "rank.json").read_text())["pid"]
             for r in (0, 1)]
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                             != psutil.STATUS_ZOMBIE for p in ranks), 10,
             "the ranks to die with their agent")
    runner.join(60)
    assert results and results[0]["t"].kind == "lost"
    assert not _processes_of(d)


# --- torch ---------------------------------------------------------------------------------


@needs_torch
@pytest.mark.slow
def test_ddp_on_two_local_ranks_averages_gradients():
    exp = run.Experiment("ddp", executor=LocalExecutor(ntasks_per_node=2, launcher="torchrun"))
    exp.add(run.Partial(dp.train_ddp, steps=15), name="train")
    result = exp.run(tail_logs=False)["train"]
    value = result.value
    assert value["rank"] == 0 and value["world_size"] == 2
    reference = dp.train_single(steps=15)
    first, second = value["all_params"]
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) == 0.0
    assert max(abs(a - b) for a, b in zip(first, reference, strict=True)) < 1e-5


@needs_torch
@pytest.mark.slow
def test_torchrun_rank_failure_fails_fast_and_a_retry_succeeds():
    exp = run.Experiment("retry", executor=LocalExecutor(ntasks_per_node=2, launcher="torchrun"))
    exp.add(run.Partial(dp.train_ddp, steps=200, fail_rank=1, fail_marker="failed-once"),
            name="train", retry=run.Retry(max_attempts=2, initial_delay=0))
    result = exp.run(tail_logs=False)["train"]
    assert result.ok and result.attempts == 2
    first = json.loads((_attempt_dir(exp, "train", 1) / "error.json").read_text())
    assert first["rank"] == 1 and "fails on purpose" in first["message"]
    assert "train_ddp" in first["traceback"]
    assert not _processes_of(_attempt_dir(exp, "train", 1))


@needs_torch
@pytest.mark.slow
def test_init_process_group_with_no_arguments_works_on_plain_ranks():
    exp = run.Experiment("init", executor=LocalExecutor(ntasks_per_node=2))
    exp.add(run.Partial(dp.init_default_group), name="t")
    value = exp.run(tail_logs=False)["t"].value
    assert value == {"rank": 0, "sum": 1.0, "world_size": 2}
