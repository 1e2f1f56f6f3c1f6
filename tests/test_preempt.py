"""Preemption and checkpoints on this machine: ``timeout`` with
``checkpoint_on_timeout=True`` asks the attempt to save (SIGUSR1, the grace period), the
attempt ends ``preempted`` and the next one resumes from its checkpoint, without counting
against ``Retry.max_attempts``. Real worker processes, real store, no mocks."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import preempt_payloads as pp
import steadyrun as run
from steadyrun.attempt import preempt
from steadyrun.attempt.names import CHECKPOINT_FILE, EXIT_PREEMPTED
from steadyrun.attempt.outcome import outcome_of
from steadyrun.errors import TaskDefinitionError
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(180)


def attempts_of(exp_id: str, task: str) -> list:
    return Store().attempts(exp_id, task)


def work_dir(exp_id: str, task: str) -> Path:
    return Store().experiment_dir(exp_id) / "tasks" / task / "work"


def checkpointing(name: str, payload, *, timeout: str = "3s", grace: float = 5.0,
                  retry: run.Retry | None = None) -> run.Experiment:
    task = run.Task(name, payload, timeout=timeout, checkpoint_on_timeout=True,
                    retry=retry or run.Retry(max_attempts=1))
    return run.Experiment([task], executor=run.LocalExecutor(grace_period=grace))


def test_a_timeout_with_checkpoint_resumes_from_the_saved_step(cli_status):
    exp = checkpointing("count", run.Partial(pp.count_saving_on_preempt, 10, 0.5))
    result = exp.run()  # Retry(max_attempts=1): preemptions are not held against it
    task = result["count"]
    assert task.value["value"] == 10
    starts = task.value["starts"]
    assert starts[0] == {"number": 1, "preempted": False, "previous": None, "step": 0}
    assert starts[1]["preempted"] and starts[1]["previous"] == "preempted"
    assert 0 < starts[1]["step"] < 10  # resumed where the first attempt saved
    rows = attempts_of(result.id, "count")
    assert [r.kind for r in rows[:-1]] == ["preempted"] * (len(rows) - 1)
    assert rows[-1].state == "succeeded" and task.attempts == len(rows) >= 2
    assert rows[0].exit_code == EXIT_PREEMPTED
    assert "checkpoint_on_timeout" in rows[0].message
    assert "preempted)" in cli_status(result.id)


def test_a_class_payload_is_checkpointed_and_its_next_payload_runs():
    exp = checkpointing("counter", pp.Counter(10, 0.5))
    result = exp.run()
    value = result["counter"].value
    assert value["value"] == 10
    assert value["starts"][0] == 0 and len(value["starts"]) >= 2
    assert value["starts"][1] > 0  # the saved payload ran, with the step it had reached
    assert value["checkpoints"] == len(value["starts"]) - 1
    assert attempts_of(result.id, "counter")[0].kind == "preempted"
    assert not (work_dir(result.id, "counter") / CHECKPOINT_FILE).exists()  # done: removed


def test_a_loop_that_polls_should_stop_saves_and_its_early_return_is_dropped():
    exp = checkpointing("poll", run.Partial(pp.count_polling, 10, 0.5))
    result = exp.run()
    assert result["poll"].value["value"] == 10  # never the early return
    starts = result["poll"].value["starts"]
    assert starts[1]["step"] > 0
    assert attempts_of(result.id, "poll")[0].kind == "preempted"


def test_max_preemptions_bounds_the_retries():
    exp = checkpointing("slow", run.Partial(pp.count_saving_on_preempt, 1000, 0.5),
                        timeout="1s", retry=run.Retry(max_attempts=1, max_preemptions=1))
    result = exp.run(raise_on_failure=False)
    task = result["slow"]
    assert task.state == "failed" and task.kind == "preempted"
    assert task.attempts == 2  # the first preemption is retried, the second is not
    assert "max_preemptions=1" in task.message
    assert [r.kind for r in attempts_of(result.id, "slow")] == ["preempted", "preempted"]


def test_a_resume_after_too_many_preemptions_resumes_from_the_checkpoint():
    exp = checkpointing("count", run.Partial(pp.count_saving_on_preempt, 6, 0.5),
                        retry=run.Retry(max_attempts=1, max_preemptions=0))
    first = exp.run(raise_on_failure=False)
    assert first["count"].state == "failed" and first["count"].kind == "preempted"
    again = run.Experiment.from_id(first.id).resume()
    value = again["count"].value
    assert value["value"] == 6
    assert value["starts"][-1]["preempted"] and value["starts"][-1]["step"] > 0


def test_a_payload_that_ignores_the_signal_is_ended_after_the_grace_period(tmp_path):
    marker = tmp_path / "ran"
    exp = checkpointing("deaf", run.Partial(pp.ignore_everything, str(marker)),
                        timeout="1s", grace=1.0, retry=run.Retry(max_preemptions=0))
    started = time.monotonic()
    result = exp.run(raise_on_failure=False)
    took = time.monotonic() - started
    task = result["deaf"]
    assert task.state == "failed" and task.kind == "preempted" and task.attempts == 1
    row = attempts_of(result.id, "deaf")[0]
    assert row.kind == "preempted" and row.exit_code == EXIT_PREEMPTED  # its own timer
    error = json.loads((row.dir / "error.json").read_text())
    assert error["kind"] == "preempted" and "grace period of 1s" in error["message"]
    assert took < 20, f"the attempt was not ended after its grace period ({took:.1f}s)"
    assert marker.read_text() == "1\n"


def test_sigusr1_to_a_worker_preempts_its_attempt(tmp_path, subprocess_env):
    """What a cluster backend relies on: SIGUSR1 alone, with no engine behind it."""
    from steadyrun.attempt.worker import write_payload

    attempt = tmp_path / "exp" / "tasks" / "count" / "1"
    attempt.mkdir(parents=True)
    write_payload(pp.Counter(1000, 0.1), attempt, prefer="pickle")
    env = dict(subprocess_env, STEADYRUN_ATTEMPT="1", STEADYRUN_STOP_GRACE="5")
    proc = subprocess.Popen([sys.executable, "-m", "steadyrun.attempt.worker", str(attempt)],
                            env=env)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=30) == EXIT_PREEMPTED
    finally:
        proc.kill()
    error = json.loads((attempt / "error.json").read_text())
    assert error["kind"] == "preempted"
    saved = attempt.parent / "work" / CHECKPOINT_FILE
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert outcome_of("a", exit_code=proc.returncode, error=error).kind == "preempted"


def test_a_gang_forwards_the_signal_to_its_ranks_and_reports_preempted():
    task = run.Task("gang", run.Partial(pp.gang_count, 12, 0.5), timeout="3s",
                    checkpoint_on_timeout=True, retry=run.Retry(max_attempts=1))
    # rank 1 saves nothing: it is ended after the grace period
    exp = run.Experiment([task], executor=run.LocalExecutor(ntasks_per_node=2,
                                                            grace_period=2.0))
    result = exp.run()
    assert result["gang"].value["value"] == 12
    assert result["gang"].value["first"] > 0  # rank 0 resumed from the saved step
    rows = attempts_of(result.id, "gang")
    assert rows[0].kind == "preempted"
    ranks = json.loads((rows[0].dir / "ranks.json").read_text())
    assert {r["kind"] for r in ranks} == {"preempted"}


# --- rules without a run -------------------------------------------------------------


def test_checkpoint_on_timeout_is_refused_where_the_signal_cannot_reach():
    with pytest.raises(TaskDefinitionError, match="needs a timeout"):
        run.Task("t", pp.Counter(1, 0.0), checkpoint_on_timeout=True)
    task = run.Task("t", pp.Counter(1, 0.0), timeout="1s", checkpoint_on_timeout=True)
    for strategy in ("thread", "process", "sequential"):
        exp = run.Experiment([task], executor=run.LocalExecutor(strategy=strategy))
        with pytest.raises(TaskDefinitionError, match="strategy='subprocess'"):
            exp.run()


def test_a_checkpoint_others_may_write_is_never_loaded(tmp_path):
    attempt = tmp_path / "exp" / "tasks" / "t" / "2"
    attempt.mkdir(parents=True)
    work = attempt.parent / "work"
    work.mkdir(mode=0o700)
    saved = work / CHECKPOINT_FILE
    import cloudpickle

    saved.write_bytes(cloudpickle.dumps("from the checkpoint"))
    os.chmod(saved, 0o600)
    assert preempt.resume("original", str(attempt)) == "from the checkpoint"
    os.chmod(saved, 0o620)  # group-writable: someone else could have put code there
    assert preempt.resume("original", str(attempt)) == "original"
    os.chmod(saved, 0o600)
    os.chmod(work, 0o755)  # a folder others may enter is not owner-only
    assert preempt.resume("original", str(attempt)) == "original"


def test_the_exit_status_and_the_record_map_to_preempted_for_every_executor():
    assert outcome_of("a", exit_code=EXIT_PREEMPTED).kind == "preempted"
    assert outcome_of("a", error={"type": "Preempted", "message": "m",
                                  "kind": "preempted"}).kind == "preempted"
    assert outcome_of("a", exit_code=1, error={"type": "E", "message": "m"}).kind == "error"


def test_a_preemption_past_the_bound_fails_and_none_waits_for_a_backoff():
    from steadyrun.engine.decisions import Action, next_step
    from steadyrun.states import FailureKind

    policy = run.Retry(max_attempts=1, max_preemptions=2, initial_delay=30.0)
    for n, action in ((1, Action.RETRY), (2, Action.RETRY), (3, Action.FAIL)):
        step = next_step(FailureKind.PREEMPTED, policy=policy, attempts_made=5,
                         preemptions=n)
        assert step.action is action and not step.counted and not step.backoff


def test_retry_validates_max_preemptions():
    assert run.Retry().max_preemptions == 10
    with pytest.raises(TaskDefinitionError, match="max_preemptions"):
        run.Retry(max_preemptions=-1)


def test_attempt_outside_an_attempt_says_so(monkeypatch):
    monkeypatch.delenv("STEADYRUN_ATTEMPT", raising=False)
    with pytest.raises(run.NotInAttempt):
        run.attempt()
    monkeypatch.setenv("STEADYRUN_ATTEMPT", "3")
    monkeypatch.setenv("STEADYRUN_PREVIOUS_KIND", "preempted")
    monkeypatch.setenv("STEADYRUN_PREEMPTIONS", "2")
    info = run.attempt()
    assert (info.number, info.preempted, info.preemptions) == (3, True, 2)
    with pytest.raises(AttributeError):
        info.number = 4  # type: ignore[misc]
    assert run.should_stop() is False


@pytest.fixture
def cli_status(subprocess_env, steadyrun_home):
    def status(exp_id: str) -> str:
        env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))
        proc = subprocess.run([sys.executable, "-m", "steadyrun", "status", exp_id], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return status
