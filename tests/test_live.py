"""The live view: frames of an engine and of the store, drawn as a table or plain lines."""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

import steadyrun as run
from steadyrun.engine.ledger import CapacityUse
from steadyrun.engine.snapshot import EngineSnapshot, TaskView
from steadyrun.observe.live import (
    LiveView,
    format_plain,
    frame_from_engine,
    frame_from_store,
    render_table,
    to_text,
    wants_live,
)
from steadyrun.states import FailureKind, TaskState
from steadyrun.store.db import Store

MiB = 1024**2
GiB = 1024**3


def fake_engine(now: float) -> SimpleNamespace:
    """An engine as the view reads it (its snapshot): two running tasks (one sampled, one
    on a backend that names its job), one retrying, one succeeded, one pending behind a
    dependency; capacity 4 CPUs, 8 GiB, no GPU."""
    tasks = [
        TaskView("prepare", TaskState.SUCCEEDED, 1, started_at=now - 60, ended_at=now - 40),
        TaskView("train", TaskState.RUNNING, 2, started_at=now - 30, attempt_id="e1/train/2",
                 attempt_started_at=now - 12.0, cpu_percent=187.5, rss=512 * MiB),
        TaskView("evaluate", TaskState.RUNNING, 1, started_at=now - 3,
                 attempt_id="e1/evaluate/1", attempt_started_at=now - 3.0, detail="job 42"),
        TaskView("flaky", TaskState.RETRYING, 1, kind=FailureKind.ERROR, exit_code=3,
                 due_in=5.0, started_at=now - 5),
        TaskView("report", TaskState.PENDING, 0, waiting_for_dependencies=True),
    ]
    use = CapacityUse(executor="fake", cpus_used=1.5, cpus=4, memory_used=2 * GiB,
                      memory=8 * GiB, gpus_used=0, gpus=0)
    snap = EngineSnapshot(exp_id="e1", tasks=tuple(tasks), capacity=(use,), time=now)
    return SimpleNamespace(snapshot=lambda: snap)


def test_table_shows_tasks_states_resources_and_totals():
    now = time.time()
    frame = frame_from_engine(fake_engine(now), title="mnist", now=now)
    text = to_text(render_table(frame), width=140)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "mnist: running" in text
    for name, state in (("prepare", "succeeded"), ("train", "running"),
                        ("evaluate", "running"), ("flaky", "retrying"),
                        ("report", "pending")):
        assert lines[name].split()[1] == state, lines[name]
    assert lines["train"].split()[2:7] == ["2", "188", "512.0MiB", "-", "12.0s"]
    assert "-" in lines["evaluate"].split()[3:5]  # running, not sampled yet
    assert lines["evaluate"].split()[-2:] == ["job", "42"]  # the backend's detail
    assert "error, exit code 3; retry in 5.0s" in lines["flaky"]
    assert "waiting for dependencies" in lines["report"]
    assert lines["prepare"].split()[-1] == "20.0s"  # how long it ran
    assert ("CPUs 1.5/4 in use | memory 2.0GiB requested of 8.0GiB | tasks use 512.0MiB"
            in text)
    assert "machine " in text and " used of " in text
    # the same frame as plain text has the same cells
    plain = format_plain(frame)
    assert plain.splitlines()[0] == "mnist: running"
    assert "512.0MiB" in plain and "CPUs 1.5/4 in use" in plain


def test_a_long_table_shows_running_tasks_first_and_counts_the_rest():
    now = time.time()
    snap = fake_engine(now).snapshot()
    extra = tuple(TaskView(f"extra{i}", TaskState.SUCCEEDED if i % 2 else TaskState.PENDING)
                  for i in range(30))
    engine = SimpleNamespace(snapshot=lambda: replace(snap, tasks=snap.tasks + extra))
    text = to_text(render_table(frame_from_engine(engine, now=now), max_rows=4), width=140)
    assert "train" in text and "evaluate" in text and "flaky" in text
    assert "extra1 " not in text and "prepare" not in text
    assert "... and 32 more tasks: 16 succeeded, 16 pending" in text


def test_plain_mode_prints_one_line_per_change():
    stream = io.StringIO()
    view = LiveView(stream=stream, live=False)
    assert not view.live
    tr = SimpleNamespace(name="train", attempts=2, kind="oom", exit_code=137, message="")
    view.start()
    view.on_change(tr, "running")
    view.on_change(tr, "retrying")
    view.stop()
    assert stream.getvalue().splitlines() == [
        "[steadyrun] train: running (attempt 2)",
        "[steadyrun] train: retrying (oom, exit code 137)"]


def test_progress_is_live_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("STEADYRUN_PROGRESS", raising=False)
    assert wants_live(io.StringIO()) is False
    tty = SimpleNamespace(isatty=lambda: True)
    assert wants_live(tty) is True
    monkeypatch.setenv("STEADYRUN_PROGRESS", "plain")
    assert wants_live(tty) is False
    monkeypatch.setenv("STEADYRUN_PROGRESS", "live")
    assert wants_live(io.StringIO()) is True


def test_live_view_renders_the_engine_it_watches():
    now = time.time()
    view = LiveView(fake_engine(now), stream=io.StringIO(), live=True, title="t")
    text = view.render(width=140)
    assert "t: running" in text and "512.0MiB" in text and "retry in" in text


def test_experiment_progress_off_a_terminal_is_plain_lines(capsys, monkeypatch):
    monkeypatch.delenv("STEADYRUN_PROGRESS", raising=False)
    exp = run.Experiment([run.Task("add", run.Partial(_add, a=1, b=2))],
                         executor=run.LocalExecutor(strategy="thread"))
    assert exp.run()["add"].value == 3
    err = capsys.readouterr().err
    assert "[steadyrun] add: running (attempt 1)" in err
    assert "[steadyrun] add: succeeded" in err


def test_experiment_with_a_live_view_ends_with_the_final_table(capsys, monkeypatch):
    monkeypatch.setenv("STEADYRUN_PROGRESS", "live")
    exp = run.Experiment([run.Task("add", run.Partial(_add, a=1, b=2))], title="livetest",
                         executor=run.LocalExecutor(strategy="thread"))
    assert exp.run()["add"].value == 3
    err = capsys.readouterr().err
    assert "[steadyrun] add: running" not in err  # a table, not lines
    assert f"{exp.id} (livetest): finished" in err
    assert "add" in err and "succeeded" in err and "CPUs 0/" in err


def test_frame_from_store_reads_states_and_the_latest_sample():
    store = Store()
    exp_id = store.create_experiment(
        "watched", [{"name": "train"}, {"name": "eval", "depends_on": ["train"]}],
        {"type": "LocalExecutor", "cpus": 2, "memory": "4GiB"})
    now = time.time()
    store.update_experiment(exp_id, state="running", started_at=now - 10,
                            controller_pid=os.getpid(), controller_host=socket.gethostname())
    store.update_task(exp_id, "train", state="running", attempts=1)
    store.insert_attempt(exp_id, "train", 1, state="running", started_at=now - 8,
                         resources={"cpus": 1, "memory": "1GiB", "gpus": []})
    store.add_samples(exp_id, [("train", 1, now - 2, 50.0, 100 * MiB, 1, 0, 0, None, None),
                               ("train", 1, now - 1, 99.0, 300 * MiB, 2, 0, 0, None, None)])
    frame = frame_from_store(store, exp_id, now=now)
    store.close()
    text = format_plain(frame)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:4]}
    assert rows["train"][:6] == ["train", "running", "1", "99", "300.0MiB", "-"]
    assert rows["eval"][:3] == ["eval", "pending", "-"]
    assert "CPUs 1/2 in use | memory 1.0GiB requested of 4.0GiB | tasks use 300.0MiB" in text


@pytest.fixture(autouse=True)
def _no_forced_progress(monkeypatch):
    monkeypatch.delenv("STEADYRUN_PROGRESS", raising=False)


def _add(a: int, b: int) -> int:
    return a + b
