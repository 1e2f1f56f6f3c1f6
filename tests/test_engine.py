"""The engine's decisions, with a fake executor and a fake clock (no real processes)."""

from __future__ import annotations

import pytest

from fake_executor import FakeClock, FakeExecutor
from steadyrun.engine.loop import Engine
from steadyrun.errors import InvalidTransition
from steadyrun.states import ATTEMPT_TRANSITIONS, TASK_TRANSITIONS, transition
from steadyrun.store.db import Store
from steadyrun.task import Degrade, Resources, Retry, Task


def noop() -> None:
    return None


def make(tasks, scripts=None, **executor_kw):
    clock = FakeClock()
    ex = FakeExecutor(clock=clock, scripts=scripts or {}, **executor_kw)
    store = Store()
    exp_id = store.create_experiment("t", [{"name": t.name} for t in tasks], {})
    engine = Engine(store, exp_id, tasks, ex, clock=clock, handle_sigint=False)
    return engine, ex, clock, store, exp_id


def test_dependencies_run_in_dag_order():
    tasks = [Task("c", noop, depends_on=["b"]), Task("b", noop, depends_on=["a"]),
             Task("a", noop)]
    engine, ex, *_ = make(tasks)
    runs = engine.run()
    assert ex.names_in_launch_order() == ["a", "b", "c"]
    assert all(r.state == "succeeded" for r in runs.values())
    assert runs["c"].value == "value of c"


def test_admission_never_exceeds_cpu_capacity():
    tasks = [Task(f"t{i}", noop, resources=Resources(cpus=1)) for i in range(5)]
    tasks.append(Task("big", noop, resources=Resources(cpus=2)))
    engine, ex, *_ = make(tasks, cpus=2)
    engine.run()
    assert ex.max_concurrent == 2
    big = next(r for r in ex.launches if r.spec.task == "big")
    overlapping = [r for r in ex.launches
                   if r.spec.task != "big" and r.at < big.ends and r.ends > big.at]
    assert overlapping == []


def test_memory_admission_by_bookkeeping_and_measured_availability():
    gib = 1024**3
    scripts = {"a": lambda n: (10.0, None), "b": lambda n: (1.0, None)}
    tasks = [Task("a", noop, resources=Resources(cpus=0.5, memory=3 * gib)),
             Task("b", noop, resources=Resources(cpus=0.5, memory=2 * gib))]
    engine, ex, clock, store, exp_id = make(tasks, scripts, memory=4 * gib)
    engine.run()
    a, b = ex.launches
    assert b.at >= a.ends  # 3 + 2 GiB > 4 GiB: b waited for a
    # measured availability below the request also makes a task wait (event recorded)
    tasks = [Task("c", noop, resources=Resources(memory=gib))]
    engine, ex, clock, store, exp_id = make(tasks, memory=4 * gib, available=gib // 2)
    ex.scripts = {}
    original_wait = ex.wait

    def wait_then_free(timeout):
        if clock.now > 1005:
            ex.available = 2 * gib
        return original_wait(timeout)

    ex.wait = wait_then_free
    engine.run()
    assert ex.launches[0].at > 1005
    assert [e.kind for e in store.events(exp_id)].count("waiting_for_memory") == 1


def test_retry_backoff_delays_follow_the_policy():
    retry = Retry(max_attempts=4, backoff=2.0, initial_delay=1.0, max_delay=3.0, jitter=0)
    scripts = {"flaky": lambda n: (0.5, "error" if n < 4 else None)}
    engine, ex, *_ = make([Task("flaky", noop, retry=retry)], scripts)
    runs = engine.run()
    starts = [r.at for r in ex.launches]
    gaps = [round(b - a - 0.5, 6) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps == [1.0, 2.0, 3.0]  # 1, 2, then capped at 3
    assert runs["flaky"].state == "succeeded" and runs["flaky"].attempts == 4


def test_a_task_in_backoff_does_not_block_others():
    retry = Retry(max_attempts=2, initial_delay=100, jitter=0)
    scripts = {"slowretry": lambda n: (1.0, "error" if n == 1 else None),
               "other": lambda n: (5.0, None)}
    tasks = [Task("slowretry", noop, retry=retry, resources=Resources(cpus=1)),
             Task("other", noop, depends_on=["first"], resources=Resources(cpus=1)),
             Task("first", noop, resources=Resources(cpus=1))]
    engine, ex, *_ = make(tasks, scripts)
    engine.run()
    other = next(r for r in ex.launches if r.spec.task == "other")
    second = [r for r in ex.launches if r.spec.task == "slowretry"][1]
    assert other.ends < second.at  # other ran and finished during slowretry's backoff


def test_final_failure_skips_transitive_dependants_only():
    scripts = {"bad": lambda n: (1.0, "error")}
    tasks = [Task("bad", noop), Task("child", noop, depends_on=["bad"]),
             Task("grandchild", noop, depends_on=["child"]), Task("free", noop)]
    engine, ex, clock, store, exp_id = make(tasks, scripts)
    runs = engine.run()
    assert runs["bad"].state == "failed" and runs["bad"].kind == "error"
    assert runs["child"].state == "skipped" and runs["grandchild"].state == "skipped"
    assert runs["free"].state == "succeeded"
    assert store.experiment(exp_id).state == "failed"
    assert "bad" in ex.names_in_launch_order()
    assert "child" not in ex.names_in_launch_order()


def test_timeout_stops_the_attempt_at_its_deadline():
    scripts = {"slow": lambda n: (100.0, None)}
    engine, ex, clock, store, exp_id = make([Task("slow", noop, timeout=5)], scripts)
    runs = engine.run()
    (aid, kind, at), = ex.stops
    assert kind == "timeout" and at == pytest.approx(ex.launches[0].at + 5)
    assert runs["slow"].state == "failed" and runs["slow"].kind == "timeout"
    attempt, = store.attempts(exp_id, "slow")
    assert attempt.state == "failed" and attempt.kind == "timeout"


def test_lost_is_retried_by_default_and_counted_apart():
    scripts = {"t": lambda n: (1.0, "lost" if n == 1 else None)}
    engine, ex, *_ = make([Task("t", noop)], scripts)
    runs = engine.run()
    assert runs["t"].state == "succeeded" and runs["t"].attempts == 2 and runs["t"].lost == 1


def test_errors_are_not_retried_without_a_policy():
    scripts = {"t": lambda n: (1.0, "error")}
    engine, ex, *_ = make([Task("t", noop)], scripts)
    runs = engine.run()
    assert runs["t"].attempts == 1 and runs["t"].state == "failed"
    assert runs["t"].error is not None and runs["t"].error.kind == "error"


def test_cancel_stops_running_and_cancels_pending():
    scripts = {"long": lambda n: (100.0, None)}
    tasks = [Task("long", noop), Task("after", noop, depends_on=["long"])]
    engine, ex, clock, store, exp_id = make(tasks, scripts)
    original_wait = ex.wait

    def wait_and_cancel(timeout):
        if clock.now > 1010:
            engine.request_cancel()
        return original_wait(timeout)

    ex.wait = wait_and_cancel
    runs = engine.run()
    assert [k for _, k, _ in ex.stops] == ["cancelled"]
    assert runs["long"].state == "cancelled" and runs["after"].state == "cancelled"
    assert store.experiment(exp_id).state == "cancelled"
    assert store.attempts(exp_id, "long")[0].state == "cancelled"


def test_memory_degradation_raises_the_request_until_capacity():
    gib = 1024**3
    scripts = {"t": lambda n: (1.0, "oom" if n < 3 else None)}
    task = Task("t", noop, resources=Resources(memory=1 * gib),
                degrade=Degrade(memory_factor=3.0), retry=Retry(max_attempts=5, jitter=0))
    engine, ex, clock, store, exp_id = make([task], scripts, memory=4 * gib)
    runs = engine.run()
    assert [r.spec.resources.memory for r in ex.launches] == [gib, 3 * gib, 4 * gib]
    assert runs["t"].state == "succeeded"
    assert [a.changes for a in store.attempts(exp_id, "t")][1] == {
        "before": 2, "memory": [gib, 3 * gib]}


def test_gpus_are_handed_out_by_index_and_returned():
    scripts = {"a": lambda n: (5.0, None), "b": lambda n: (5.0, None),
               "c": lambda n: (1.0, None)}
    tasks = [Task(n, noop, resources=Resources(cpus=0, gpus=1)) for n in "abc"]
    engine, ex, *_ = make(tasks, scripts, gpus=[0, 1])
    engine.run()
    by_task = {r.spec.task: r for r in ex.launches}
    assert sorted(by_task["a"].spec.gpus + by_task["b"].spec.gpus) == [0, 1]
    assert by_task["c"].at >= 5 + by_task["a"].at  # waited for a free GPU
    assert len(by_task["c"].spec.gpus) == 1


def test_every_state_change_is_stored_in_order():
    scripts = {"t": lambda n: (1.0, "error" if n == 1 else None)}
    engine, ex, clock, store, exp_id = make(
        [Task("t", noop, retry=Retry(max_attempts=2, jitter=0))], scripts)
    engine.run()
    kinds = [e.kind for e in store.events(exp_id) if e.task == "t"]
    assert kinds == ["running", "retry_scheduled", "retrying", "running", "succeeded"]
    assert [a.state for a in store.attempts(exp_id, "t")] == ["failed", "succeeded"]


def test_state_machine_rejects_illegal_changes():
    assert transition(TASK_TRANSITIONS, "t", "pending", "running") == "running"
    with pytest.raises(InvalidTransition, match="succeeded -> running"):
        transition(TASK_TRANSITIONS, "t", "succeeded", "running")
    with pytest.raises(InvalidTransition):
        transition(ATTEMPT_TRANSITIONS, "a", "failed", "succeeded")


def test_a_launch_that_fails_is_lost_and_retried_while_others_start():
    engine, ex, clock, store, exp_id = make([Task("x", noop), Task("y", noop)])
    original = ex.launch
    calls = {"x": 0}

    def flaky_launch(spec):
        if spec.task == "x":
            calls["x"] += 1
            if calls["x"] == 1:
                raise RuntimeError("backend refused")
        original(spec)

    ex.launch = flaky_launch
    runs = engine.run()
    assert runs["x"].state == "succeeded" and runs["x"].attempts == 2 and runs["x"].lost == 1
    assert runs["y"].attempts == 1
    first, = [a for a in store.attempts(exp_id, "x") if a.number == 1]
    assert first.kind == "lost" and "backend refused" in first.message


def make_dep(tasks, scripts=None, **kw):
    from fake_executor import FakeDependencyExecutor

    clock = FakeClock()
    ex = FakeDependencyExecutor(clock=clock, scripts=scripts or {}, cpus=4, **kw)
    store = Store()
    exp_id = store.create_experiment("t", [{"name": t.name} for t in tasks], {})
    return Engine(store, exp_id, tasks, ex, clock=clock, handle_sigint=False), ex, store, exp_id


def test_dependants_are_submitted_early_behind_their_dependencies():
    scripts = {"a": lambda n: (5.0, None), "b": lambda n: (2.0, None)}
    engine, ex, store, exp_id = make_dep(
        [Task("a", noop), Task("b", noop, depends_on=["a"], timeout=3)], scripts)
    runs = engine.run()
    a, b = ex.launches
    assert b.at == a.at and b.spec.depends_on_jobs == [f"job-{a.spec.attempt_id}"]
    assert b.ends == a.ends + 2.0  # held by the backend until a succeeded
    assert runs["b"].state == "succeeded" and ex.stops == []  # its timeout began at a's end


def test_an_early_dependant_is_withdrawn_and_skipped_when_its_dependency_fails():
    scripts = {"a": lambda n: (5.0, "error")}
    engine, ex, store, exp_id = make_dep(
        [Task("a", noop), Task("b", noop, depends_on=["a"])], scripts)
    runs = engine.run()
    assert runs["a"].state == "failed" and runs["b"].state == "skipped"
    attempt, = store.attempts(exp_id, "b")
    assert attempt.state == "cancelled" and "dependency" in attempt.message


def test_an_early_dependant_follows_its_dependency_through_a_retry():
    scripts = {"a": lambda n: (5.0, "error" if n == 1 else None), "b": lambda n: (1.0, None)}
    engine, ex, store, exp_id = make_dep(
        [Task("a", noop, retry=Retry(max_attempts=2, initial_delay=1, jitter=0)),
         Task("b", noop, depends_on=["a"], retry=Retry(max_attempts=1))], scripts)
    runs = engine.run()
    assert runs["a"].attempts == 2 and runs["b"].state == "succeeded"
    b_attempts = [a.state for a in store.attempts(exp_id, "b")]
    assert b_attempts == ["cancelled", "succeeded"]  # withdrawn, not held against b


def test_a_pass_admits_no_more_than_free_slots_so_time_limits_start_at_launch():
    # 3 tasks of 4 s with a 5 s limit on a backend that runs one at a time: handed all
    # at once, two would wait inside the backend and time out there
    scripts = {f"t{i}": lambda n: (4.0, None) for i in range(3)}
    tasks = [Task(f"t{i}", noop, resources=Resources(cpus=0.1), timeout=5) for i in range(3)]
    engine, ex, clock, store, exp_id = make(tasks, scripts, cpus=4, slots=1)
    runs = engine.run()
    assert ex.max_queued == 0 and ex.stops == []
    assert [r.at for r in ex.launches] == [1000.0, 1004.0, 1008.0]
    assert all(r.state == "succeeded" for r in runs.values())


def test_crash_points_come_between_the_commits_they_name(monkeypatch):
    import steadyrun.engine.loop as loop

    engine, ex, clock, store, exp_id = make([Task("t", noop)])
    seen = []

    def spy(name):
        rows = [(a.state, a.pid) for a in store.attempts(exp_id, "t")]
        seen.append((name, rows, len(ex.launches)))

    monkeypatch.setattr(loop, "crash_point", spy)
    engine.run()
    assert seen == [("attempt-recorded", [("running", None)], 0),
                    ("launched", [("running", None)], 1),
                    ("outcome-received", [("running", 10000)], 1)]
    assert [(a.state, a.pid) for a in store.attempts(exp_id, "t")] == [("succeeded", 10000)]


@pytest.mark.parametrize(("exc", "final"), [(RuntimeError("a bug in a backend"), "failed"),
                                            (KeyboardInterrupt(), "cancelled")])
def test_an_exception_out_of_the_loop_closes_executors_and_settles_everything(exc, final):
    scripts = {"long": lambda n: (100.0, None)}
    tasks = [Task("long", noop), Task("after", noop, depends_on=["long"]),
             Task("wide", noop, resources=Resources(cpus=2))]
    engine, ex, clock, store, exp_id = make(tasks, scripts, cpus=2)
    original_wait = ex.wait

    def wait_then_raise(timeout):
        if clock.now > 1010:
            raise exc
        return original_wait(timeout)

    ex.wait = wait_then_raise
    with pytest.raises(type(exc)):
        engine.run()
    assert ex.closed == 1  # closing is what kills the trees still running
    row = store.experiment(exp_id)
    assert row.state == final and row.controller_pid is None and row.ended_at is not None
    attempt, = store.attempts(exp_id, "long")
    tasks_by_name = {t.name: t for t in store.tasks(exp_id)}
    if final == "failed":
        assert (attempt.state, attempt.kind) == ("failed", "lost")
        assert "RuntimeError: a bug in a backend" in attempt.message
        assert (tasks_by_name["long"].state, tasks_by_name["long"].kind) == ("failed", "lost")
        assert tasks_by_name["after"].state == tasks_by_name["wide"].state == "pending"
    else:
        assert (attempt.state, attempt.kind) == ("cancelled", "cancelled")
        assert {t.state for t in tasks_by_name.values()} == {"cancelled"}
    assert engine.runs["long"].state == tasks_by_name["long"].state
    assert "controller_stopped" in [e.kind for e in store.events(exp_id)]


def test_a_store_error_mid_pass_settles_from_what_was_committed(monkeypatch):
    import sqlite3

    engine, ex, clock, store, exp_id = make([Task("t", noop)])
    original = store.update_task
    failures = []

    def flaky_update_task(exp, name, **fields):
        if fields.get("state") == "succeeded" and not failures:
            failures.append(name)
            raise sqlite3.OperationalError("disk I/O error")
        return original(exp, name, **fields)

    monkeypatch.setattr(store, "update_task", flaky_update_task)
    with pytest.raises(sqlite3.OperationalError):
        engine.run()
    # the pass that failed was rolled back: the attempt was still running in the store
    attempt, = store.attempts(exp_id, "t")
    assert (attempt.state, attempt.kind) == ("failed", "lost")
    assert store.tasks(exp_id)[0].state == "failed"
    assert store.experiment(exp_id).state == "failed"


def test_preempted_attempts_are_retried_without_counting():
    scripts = {"t": lambda n: (1.0, "preempted" if n < 3 else None)}
    engine, ex, clock, store, exp_id = make(
        [Task("t", noop, retry=Retry(max_attempts=1, initial_delay=2, jitter=0))], scripts)
    runs = engine.run()
    assert runs["t"].state == "succeeded" and runs["t"].attempts == 3
    assert [(a.state, a.kind) for a in store.attempts(exp_id, "t")] == [
        ("failed", "preempted"), ("failed", "preempted"), ("succeeded", None)]
    starts = [r.at for r in ex.launches]  # retried at once: no backoff after a preemption
    assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == [1.0, 1.0]


def test_snapshot_is_a_frozen_view_of_tasks_and_capacity():
    import dataclasses

    scripts = {"flaky": lambda n: (1.0, "error" if n == 1 else None),
               "long": lambda n: (20.0, None)}
    tasks = [Task("flaky", noop, retry=Retry(max_attempts=2, initial_delay=10, jitter=0)),
             Task("long", noop, resources=Resources(cpus=0.5, memory="1GiB")),
             Task("after", noop, depends_on=["long"])]
    engine, ex, clock, store, exp_id = make(tasks, scripts)
    taken = []

    def on_change(tr, state):
        if (tr.name, state) == ("flaky", "retrying"):
            taken.append(engine.snapshot())

    engine.on_change = on_change
    engine.run()
    snap, = taken
    views = {v.name: v for v in snap.tasks}
    assert views["flaky"].state == "retrying" and views["flaky"].kind == "error"
    assert views["flaky"].due_in == 10.0 and views["flaky"].attempts == 1
    assert views["long"].state == "running" and views["long"].attempt_id == f"{exp_id}/long/1"
    assert views["after"].waiting_for_dependencies and not snap.finished
    use, = snap.capacity
    assert (use.executor, use.cpus_used, use.cpus, use.memory_used) == ("fake", 0.5, 2, 1024**3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.tasks[0].state = "failed"
    assert engine.snapshot().finished


DOUBLE_CTRL_C = """
import steadyrun as run

tasks = [run.Task("long", run.Script(inline="trap '' TERM; sleep 120")),
         run.Task("after", run.Script(inline="true"), depends_on=["long"])]
executor = run.LocalExecutor(strategy="subprocess", grace_period=5.0)
run.Experiment(tasks, title="double-ctrl-c", executor=executor).run()
"""


@pytest.mark.timeout(120)
def test_a_second_ctrl_c_ends_the_controller_and_leaves_nothing_running(subprocess_env):
    import signal
    import subprocess
    import sys

    import psutil

    from waiting import wait_for

    proc = subprocess.Popen([sys.executable, "-c", DOUBLE_CTRL_C], env=subprocess_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = Store()
    try:
        attempt = wait_for(lambda: [a for a in _attempts(store, "double-ctrl-c")
                                    if a.pid is not None], 60, "the attempt's worker pid")[0]
        worker = psutil.Process(attempt.pid)
        tree = wait_for(lambda: [worker, *worker.children(recursive=True)]
                        if any(p.name() == "sleep" for p in worker.children(recursive=True))
                        else None, 30, "the task's sleep")
        exp_id = attempt.exp_id
        proc.send_signal(signal.SIGINT)  # cancels; the task ignores SIGTERM, so it lingers
        wait_for(lambda: {t.name: t.state for t in store.tasks(exp_id)}["after"]
                 == "cancelled", 30, "the first Ctrl-C to cancel what had not started")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the impatient second one
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    row = store.experiment(exp_id)
    assert row.state == "cancelled" and row.controller_pid is None
    attempt, = store.attempts(exp_id, "long")
    assert attempt.state == "cancelled" and "interrupted" in attempt.message
    assert "controller_stopped" in [e.kind for e in store.events(exp_id)]
    assert {t.name: t.state for t in store.tasks(exp_id)} == {"long": "cancelled",
                                                              "after": "cancelled"}
    wait_for(lambda: not [p for p in tree if _alive(p)], 30, "the task's processes to end")
    store.close()


def _attempts(store, title):
    return [a for row in store.list_experiments(title=title)
            for a in store.attempts(row.id)]


def _alive(process):
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_snapshot_carries_the_backend_detail_of_a_running_attempt():
    engine, ex, store, exp_id = make_dep([Task("a", noop)], {"a": lambda n: (5.0, None)})
    details = []

    def on_change(tr, state):
        details.append(engine.snapshot().tasks[0].detail)

    engine.on_change = on_change
    engine.run()
    assert details == [f"job-{exp_id}/a/1", None]  # running, then succeeded
