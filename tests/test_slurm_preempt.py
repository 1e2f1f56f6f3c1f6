"""Preemption on a real Slurm cluster: a job requeued with ``scontrol requeue``, or
warned before its time limit with ``--signal``, ends its attempt ``preempted``; the next
attempt runs as a new job and resumes from what the payload saved in its task folder.

The cluster (``scripts/slurm-up.sh``) is the one-node test cluster; its ``KillWait`` is
short, so a payload has about 2 s to save after SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import preempt_payloads as pp
import requeue_payloads as rp
import steadyrun as run
from slurm_cluster import scontrol_job, wait_for
from steadyrun.attempt.names import CHECKPOINT_FILE, EXIT_PREEMPTED
from steadyrun.errors import ExecutorError
from steadyrun.executors import executor_from_config
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.store.db import Store

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.usefixtures("slurm_cluster")]
FINAL = ("succeeded", "failed", "cancelled")


def work_dir(exp_id: str, task: str) -> Path:
    return Store().experiment_dir(exp_id) / "tasks" / task / "work"


def job_of(exp_id: str, task: str, number: int) -> str:
    folder = Store().attempt_dir(exp_id, task, number)
    return json.loads((folder / "slurm.json").read_text())["key"]


def saved_step(exp_id: str, task: str) -> int:
    try:
        return json.loads((work_dir(exp_id, task) / "step.json").read_text())
    except (OSError, ValueError):
        return 0


def finished(exp: run.Experiment, timeout: float) -> run.Experiment:
    wait_for(lambda: run.Experiment.from_id(exp.id).status().state in FINAL, timeout=timeout,
             what=f"experiment {exp.id} to end", interval=0.5)
    return run.Experiment.from_id(exp.id)


def requeue_when(exp: run.Experiment, task: str, ready) -> tuple[str, float]:
    """``scontrol requeue`` the first attempt's job once ``ready()``; its job id and when."""
    wait_for(ready, timeout=90, what="the payload's progress", interval=0.2)
    job = job_of(exp.id, task, 1)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    return job, time.time()


# --- scontrol requeue --------------------------------------------------------------------


def test_a_requeued_job_resumes_as_a_new_attempt_from_the_saved_step():
    exp = run.Experiment([run.Task("count", run.Partial(rp.count_saving_each_step, 60, 0.5),
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(requeue=True, poll_interval=0.5,
                                                time="00:10:00"))
    exp.run(detach=True)
    job, requeued_at = requeue_when(exp, "count", lambda: saved_step(exp.id, "count") >= 30)
    done = finished(exp, timeout=120)
    task = done.results()["count"]
    assert task.state == "succeeded" and task.value["value"] == 60
    starts = task.value["starts"]
    assert [s["number"] for s in starts] == [1, 2]
    assert starts[1]["previous"] == "preempted" and starts[1]["step"] >= 30  # resumed
    assert starts[1]["job"] != job  # a new job, not the requeued one
    rows = Store().attempts(exp.id, "count")
    assert [(r.state, r.kind) for r in rows] == [("failed", "preempted"), ("succeeded", None)]
    assert rows[0].exit_code == EXIT_PREEMPTED and "requeued" in rows[0].message
    assert scontrol_job(job)["JobState"] == "CANCELLED"  # its rerun never ran the payload
    print(f"\nscontrol requeue -> attempt 1 ended {rows[0].ended_at - requeued_at:.1f}s, "
          f"attempt 2 submitted {rows[1].started_at - requeued_at:.1f}s, "
          f"its payload running {starts[1]['at'] - requeued_at:.1f}s")


def test_a_class_payload_is_checkpointed_when_its_job_is_requeued():
    exp = run.Experiment([run.Task("counter", rp.Counter(40, 0.25),
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(requeue=True, poll_interval=0.5,
                                                time="00:10:00"))
    exp.run(detach=True)
    progress = lambda: work_dir(exp.id, "counter") / "progress"  # noqa: E731
    requeue_when(exp, "counter", lambda: progress().exists()
                 and int(progress().read_text() or 0) >= 10)
    task = finished(exp, timeout=120).results()["counter"]
    assert task.state == "succeeded", task.message
    value = task.value
    assert value["value"] == 40 and value["checkpoints"] == 1
    assert value["starts"][0] == 0 and value["starts"][1] >= 10  # the saved payload ran
    kinds = [r.kind for r in Store().attempts(exp.id, "counter")]
    assert kinds == ["preempted", None]
    assert not (work_dir(exp.id, "counter") / CHECKPOINT_FILE).exists()  # done: removed


def test_a_cancel_still_ends_cancelled_under_requeue():
    exp = run.Experiment([run.Task("count", run.Partial(rp.count_saving_on_preempt, 600, 0.5),
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(requeue=True, poll_interval=0.5,
                                                time="00:10:00"))
    exp.run(detach=True)
    wait_for(lambda: (work_dir(exp.id, "count") / "starts.json").exists(), timeout=60,
             what="the payload to start")
    run.Experiment.from_id(exp.id).cancel()
    done = finished(exp, timeout=60)
    rows = Store().attempts(done.id, "count")
    assert [(r.state, r.kind) for r in rows] == [("cancelled", "cancelled")]
    # the worker took SIGTERM for a preemption and saved; the controller's word wins
    assert (work_dir(exp.id, "count") / "step.json").exists()


# --- the time-limit warning ----------------------------------------------------------------


def test_a_time_limit_warning_lets_the_payload_save_and_the_next_attempt_resume():
    # a 1-minute limit (Slurm's least); the warning comes 20 to 50 s after the start
    # (Slurm checks limits every 30 s), so the task must outlast 50 s: 106 x 0.5 s
    steps = 106
    exp = run.Experiment([run.Task("count", run.Partial(rp.count_saving_on_preempt, steps, 0.5),
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(time="1", signal="USR1@10", poll_interval=0.5))
    started = time.time()
    result = exp.run()
    task = result["count"]
    assert task.value["value"] == steps
    starts = task.value["starts"]
    rows = Store().attempts(result.id, "count")
    assert len(rows) >= 2 and rows[-1].state == "succeeded"
    assert all(r.kind == "preempted" and r.exit_code == EXIT_PREEMPTED for r in rows[:-1])
    assert starts[1]["previous"] == "preempted" and starts[1]["step"] > 0
    assert all(b["step"] >= a["step"] for a, b in zip(starts, starts[1:], strict=False))
    gap = starts[1]["at"] - starts[0]["at"]
    print(f"\nattempts {len(rows)}; attempt 2 started {gap:.1f}s after attempt 1; "
          f"total {time.time() - started:.1f}s")


def test_checkpoint_on_timeout_asks_the_job_to_save_and_the_next_attempt_resumes():
    # the timeout counts from the submission: 8 s leaves the payload time to start
    exp = run.Experiment([run.Task("count", run.Partial(rp.count_saving_on_preempt, 20, 0.5),
                                   timeout="8s", checkpoint_on_timeout=True,
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(poll_interval=0.5, time="00:10:00"))
    result = exp.run()
    task = result["count"]
    assert task.value["value"] == 20
    rows = Store().attempts(result.id, "count")
    assert len(rows) >= 2 and rows[-1].state == "succeeded"
    assert all(r.kind == "preempted" and r.exit_code == EXIT_PREEMPTED for r in rows[:-1])
    starts = task.value["starts"]
    assert starts[1]["previous"] == "preempted" and starts[1]["step"] > 0  # it saved


def test_a_gang_is_asked_to_save_on_every_rank_and_resumes():
    exp = run.Experiment([run.Task("gang", run.Partial(pp.gang_count, 16, 0.5), timeout="6s",
                                   checkpoint_on_timeout=True,
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(ntasks_per_node=2, poll_interval=0.5,
                                                time="00:10:00"))
    result = exp.run()
    assert result["gang"].value["value"] == 16
    assert result["gang"].value["first"] > 0  # rank 0 saved; every rank resumed from it
    rows = Store().attempts(result.id, "gang")
    assert [r.kind for r in rows[:-1]] == ["preempted"] * (len(rows) - 1) and len(rows) >= 2


# --- options -------------------------------------------------------------------------------


def test_signal_and_requeue_show_in_the_script_and_round_trip(tmp_path):
    ex = SlurmExecutor(signal="B:usr2@90", requeue=True, grace_period=20)
    again = executor_from_config(ex.to_config())
    assert (again.signal, again.requeue, again.grace_period) == ("B:usr2@90", True, 20.0)
    folder = tmp_path / "exp" / "tasks" / "t" / "1"
    folder.mkdir(parents=True)
    from steadyrun.executors.base import AttemptSpec

    script = again.dryrun(AttemptSpec("exp/t/1", "t", 1, None, folder))
    assert "#SBATCH --signal=B:USR2@90" in script and "#SBATCH --requeue" in script
    assert "trap 'kill -USR1 \"$STEADYRUN_CHILD\" 2>/dev/null' USR2" in script
    assert "export STEADYRUN_PREEMPT_ON_TERM=1" in script
    assert "export STEADYRUN_STOP_GRACE=20" in script
    plain = SlurmExecutor().dryrun(AttemptSpec("exp/t/1", "t", 1, None, folder))
    assert "#SBATCH --no-requeue" in plain and "--signal" not in plain
    assert "STEADYRUN_PREEMPT_ON_TERM" not in plain
    auto = SlurmExecutor(grace_period=5).dryrun(AttemptSpec(
        "exp/t/1", "t", 1, None, folder, checkpoint_on_timeout=True))
    assert "#SBATCH --signal=B:USR1@30" in auto  # at least 30 s by itself


@pytest.mark.parametrize("value", ["USR1", "USR1@0", "KILL@10", "USR1@-5", "X:USR1@9", 90])
def test_a_bad_signal_is_refused_saying_what_would_do(value):
    with pytest.raises(ExecutorError, match=r"signal=.*NAME@SECONDS.*USR1@90"):
        SlurmExecutor(signal=value)


# --- no controller while it happened ---------------------------------------------------------


def test_a_job_requeued_while_no_controller_ran_comes_out_preempted_on_resume():
    exp = run.Experiment([run.Task("count", run.Partial(rp.count_saving_each_step, 40, 0.5),
                                   retry=run.Retry(max_attempts=1))],
                         executor=SlurmExecutor(requeue=True, poll_interval=0.5,
                                                time="00:10:00"))
    exp.run(detach=True)
    wait_for(lambda: saved_step(exp.id, "count") >= 6, timeout=90, what="the payload's steps")
    os.kill(exp.status().controller["pid"], signal.SIGKILL)
    wait_for(lambda: exp.status().controller["alive"] is False, what="a dead controller")
    job = job_of(exp.id, "count", 1)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    wait_for(lambda: scontrol_job(job)["JobState"] == "PENDING", what="the job requeued")
    result = run.Experiment.from_id(exp.id).resume()
    task = result["count"]
    assert task.value["value"] == 40
    starts = task.value["starts"]
    assert starts[1]["previous"] == "preempted" and starts[1]["step"] >= 6
    rows = Store().attempts(exp.id, "count")
    assert [(r.state, r.kind) for r in rows] == [("failed", "preempted"), ("succeeded", None)]
    assert scontrol_job(job)["JobState"] == "CANCELLED"
