"""Memory requests held by the kernel: an attempt in a memory cgroup of its own is
stopped at its limit and reported as ``oom`` from the cgroup's counters; where no cgroup
can be made the engine samples it every 0.1 s instead. Real cgroups, real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import memcg_payloads as payloads
import steadyrun as run
from steadyrun.attempt import memcg
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(120)
MiB = 2**20
REQUEST = 100 * MiB


def _kernel_reason() -> str | None:
    if os.geteuid() != 0:
        return "memory cgroups need root"
    found = memcg.mechanism()
    return None if found.kind == "kernel" else f"no memory cgroup here: {found.reason}"


kernel = pytest.mark.skipif(_kernel_reason() is not None, reason=_kernel_reason() or "")


def _enforced(memory: int | str = REQUEST) -> run.Resources:
    return run.Resources(memory=memory, enforce=True)


def _record(attempt: object) -> dict[str, object]:
    return json.loads((Path(attempt.dir) / memcg.MEMORY_FILE).read_text())  # type: ignore[attr-defined]


def _assert_gone(records: list[dict[str, object]]) -> None:
    for rec in records:
        path = str(rec["path"])
        assert not os.path.exists(path), path
        parent = os.path.dirname(path)  # other runs may hold it; never an empty one of ours
        if os.path.isdir(parent):
            assert not [n for n in os.listdir(parent)
                        if n.startswith(os.path.basename(path).split("_")[0])]


def _over_request_tasks() -> list[run.Task]:
    once = run.Retry(max_attempts=1)
    script = run.Script(inline=f"python3 -c '{payloads.ALLOCATE_SCRIPT}' 400")
    return [run.Task("python", run.Partial(payloads.allocate_in_steps, 400),
                     resources=_enforced(), retry=once),
            run.Task("script", script, resources=_enforced(), retry=once)]


@kernel
@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_four_times_the_request_is_stopped_by_the_kernel_at_its_limit(strategy):
    exp = run.Experiment(_over_request_tasks(), title="memcg",
                         executor=run.LocalExecutor(strategy=strategy))
    result = exp.run(raise_on_failure=False)
    store = Store()
    records = []
    for name in ("python", "script"):
        task = result[name]
        assert task.state == "failed" and task.kind == "oom", (name, task.kind, task.error)
        assert "OOM killer" in task.error.message and "limit 100.0MiB" in task.error.message
        attempt, = store.attempts(result.id, name)
        assert attempt.kind == "oom"
        rec = _record(attempt)
        records.append(rec)
        assert rec["mechanism"] == "kernel" and rec["limit"] == REQUEST
        assert rec["oom_kills"] >= 1
        assert rec["peak"] is not None and rec["peak"] < 1.2 * REQUEST, rec
        if attempt.peak_rss is not None:  # what sampling saw, when it saw anything
            assert attempt.peak_rss < 1.2 * REQUEST, attempt.peak_rss
    kinds = [e.data["mechanism"] for e in store.events(result.id)
             if e.kind == "memory_enforced"]
    assert kinds == ["kernel", "kernel"]
    _assert_gone(records)


@kernel
def test_a_task_under_its_request_succeeds_and_its_cgroup_is_removed():
    task = run.Task("small", run.Partial(payloads.allocate_in_steps, 30), resources=_enforced())
    result = run.Experiment([task]).run()
    assert result["small"].value == 30
    attempt, = Store().attempts(result.id, "small")
    rec = _record(attempt)
    assert rec["oom_kills"] == 0 and rec["limit"] == REQUEST
    assert 30 * MiB <= rec["peak"] <= REQUEST  # the worker was charged from its start
    _assert_gone([rec])


@kernel
def test_kernel_oom_degrades_the_batch_and_the_retry_fits():
    task = run.Task(
        "train", run.Partial(payloads.allocate_batch, batch_size=400),
        resources=_enforced("300MiB"),
        degrade=run.Degrade(param="batch_size", factor=0.5, minimum=1),
        retry=run.Retry(max_attempts=3, initial_delay=0.1, jitter=0))
    result = run.Experiment([task], title="degrade").run()
    assert result["train"].value == 200 and result["train"].attempts == 2
    first, second = Store().attempts(result.id, "train")
    assert first.kind == "oom" and _record(first)["oom_kills"] >= 1
    assert second.state == "succeeded" and second.changes == {
        "before": 2, "batch_size": [400, 200]}
    _assert_gone([_record(first), _record(second)])


def test_without_a_cgroup_the_engine_samples_and_stops_the_task_as_oom(monkeypatch):
    monkeypatch.setenv(memcg.ROOT_ENV, "/nonexistent/cgroup-root")
    found = memcg.mechanism()
    assert found.kind == "sampling" and "does not exist" in found.reason
    assert found.describe().startswith("sampling every 0.1 s")
    assert memcg.create("exp/task/1", REQUEST) is None
    task = run.Task("python", run.Partial(payloads.allocate_in_steps, 400, pause=0.05),
                    resources=_enforced(), retry=run.Retry(max_attempts=1))
    result = run.Experiment([task], title="sampled").run(raise_on_failure=False)
    assert result["python"].kind == "oom"
    assert "sampled every 0.1 s" in result["python"].error.message
    store = Store()
    attempt, = store.attempts(result.id, "python")
    assert not (Path(attempt.dir) / memcg.MEMORY_FILE).exists()
    enforced = [e for e in store.events(result.id) if e.kind == "memory_enforced"]
    assert len(enforced) == 1
    data = enforced[0].data
    assert data["mechanism"] == "sampling" and data["rss"] > REQUEST
    # 0.1 s sampling of a tree that grows 10 MiB every 50 ms stops it well short of 400
    assert data["rss"] < 2 * REQUEST, data


def test_the_mechanism_in_force_is_shown_by_steadyrun_resources():
    from click.testing import CliRunner

    from steadyrun.cli.main import app

    out = CliRunner().invoke(app, ["resources", "--cpu-interval", "0"])
    assert out.exit_code == 0, out.output
    assert f"memory enforcement: {memcg.mechanism().describe()}" in out.output


def _subfolders(path: str) -> list[str]:
    return [n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))]


@kernel
def test_cgroups_of_a_controller_that_is_gone_are_swept_and_live_ones_kept():
    found = memcg._home()
    assert not isinstance(found, str)
    parent = f"{found[1]}/steadyrun"
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    leftover, mine = f"{parent}/{dead}-old_task_1", f"{parent}/{os.getpid()}-new_task_1"
    os.makedirs(leftover, exist_ok=True)
    os.makedirs(mine, exist_ok=True)
    try:
        memcg._sweep(parent)
        assert not os.path.exists(leftover) and os.path.isdir(mine)
    finally:
        for path in (leftover, mine):
            if os.path.isdir(path):
                os.rmdir(path)
        memcg._remove_parent(parent)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/pids"),
                    reason="the pids cgroup needs root and cgroup v1's pids hierarchy")
def test_the_pids_cgroup_and_its_parent_go_when_the_attempt_leaves():
    from steadyrun.attempt import cgroup

    path = cgroup.enter("memcg-test/task/1")
    assert path is not None and os.path.isdir(path)
    cgroup.leave(path)
    assert not os.path.exists(path)
    parent = os.path.dirname(path)  # stays only while another attempt's cgroup is in it
    assert not os.path.isdir(parent) or _subfolders(parent)


@kernel
def test_adaptive_batch_size_inside_the_attempt_sizes_to_the_request():
    task = run.Task("fit", run.Partial(payloads.adaptive_batch, 400),
                    resources=_enforced("300MiB"), retry=run.Retry(max_attempts=1))
    result = run.Experiment([task]).run()
    size = result["fit"].value  # the cgroup's limit is the memory it may use
    assert 100 <= size <= 0.8 * 300, size
    attempt, = Store().attempts(result.id, "fit")
    assert _record(attempt)["oom_kills"] == 0
