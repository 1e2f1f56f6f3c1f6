"""A task's context inside its attempts: ``run.task_dir()``, ``$STEADYRUN_TASK_DIR`` and
thread counts that follow ``Resources.cpus``. Real processes, real store."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import context_payloads as cp
import steadyrun as run
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(120)

STRATEGIES = ["subprocess", "process", "thread"]


def work_dir(exp_id: str, task: str) -> Path:
    return Store().experiment_dir(exp_id) / "tasks" / task / "work"


@pytest.fixture(autouse=True)
def no_thread_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests decide which thread variables the user has set."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "STEADYRUN_TASK_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_task_dir_is_the_same_across_a_retry():
    exp = run.Experiment([run.Task("train", run.Partial(cp.checkpoint_then_fail_once),
                                   retry=run.Retry(max_attempts=2, initial_delay=0.0))],
                         executor=run.LocalExecutor(strategy="subprocess"))
    result = exp.run()
    expected = work_dir(result.id, "train")
    assert result["train"].attempts == 2
    assert result["train"].value == {"task_dir": str(expected), "checkpoint": str(expected)}
    assert stat.S_IMODE(expected.stat().st_mode) == 0o700


def test_task_dir_is_the_same_after_a_resume(tmp_path):
    flag = tmp_path / "not-yet"
    flag.touch()
    exp = run.Experiment([run.Task("train", run.Partial(cp.leave_checkpoint, str(flag)))],
                         title="ctx-resume", executor=run.LocalExecutor(strategy="process"))
    first = exp.run(raise_on_failure=False)
    assert first["train"].state == "failed"
    flag.unlink()
    again = run.Experiment.from_id(first.id).resume()
    assert again["train"].value == f"half:{work_dir(first.id, 'train')}"
    assert again["train"].attempts == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_script_gets_the_task_dir_in_its_environment(strategy):
    script = run.Script(inline='printf %s "$STEADYRUN_TASK_DIR" > "$STEADYRUN_TASK_DIR/seen"')
    exp = run.Experiment([run.Task("sh", script)],
                         executor=run.LocalExecutor(strategy=strategy))
    result = exp.run()
    seen = work_dir(result.id, "sh") / "seen"
    assert seen.read_text() == str(seen.parent)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_python_payload_sees_its_task_dir(strategy):
    tasks = [run.Task(f"t{i}", run.Partial(cp.where)) for i in range(3)]
    result = run.Experiment(tasks, executor=run.LocalExecutor(strategy=strategy,
                                                              max_workers=3)).run()
    for i in range(3):  # each thread answers for its own task
        where = result[f"t{i}"].value
        assert where["task_dir"] == str(work_dir(result.id, f"t{i}"))
        if strategy != "thread":  # threads share the controller's environment
            assert where["env"] == where["task_dir"]


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_thread_variables_follow_the_cpus_requested(strategy):
    exp = run.Experiment([run.Task("w", run.Partial(cp.where),
                                   resources=run.Resources(cpus=1.5))],
                         executor=run.LocalExecutor(strategy=strategy, cpus=2))
    where = exp.run()["w"].value
    assert (where["omp"], where["mkl"], where["openblas"]) == ("2", "2", "2")


def test_a_value_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    exp = run.Experiment([
        run.Task("w", run.Partial(cp.where), resources=run.Resources(cpus=1)),
        run.Task("sh", run.Script(inline='printf %s "$OMP_NUM_THREADS/$MKL_NUM_THREADS" '
                                         '> "$STEADYRUN_TASK_DIR/threads"',
                                  env={"MKL_NUM_THREADS": "7"}),
                 resources=run.Resources(cpus=1)),
    ], executor=run.LocalExecutor(strategy="subprocess"))
    result = exp.run()
    where = result["w"].value
    assert (where["omp"], where["mkl"]) == ("5", "1")
    assert (work_dir(result.id, "sh") / "threads").read_text() == "5/7"


def test_the_pool_restores_the_environment_between_attempts():
    # one pool worker runs both: the second must not take the first's value for the user's
    exp = run.Experiment([
        run.Task("one", run.Partial(cp.where), resources=run.Resources(cpus=1)),
        run.Task("two", run.Partial(cp.where), resources=run.Resources(cpus=2),
                 depends_on=["one"]),
    ], executor=run.LocalExecutor(strategy="process", max_workers=1, cpus=2))
    result = exp.run()
    assert result["one"].value["omp"] == "1" and result["two"].value["omp"] == "2"
    assert result["two"].value["task_dir"] == str(work_dir(result.id, "two"))


def test_torch_follows_the_request_when_already_imported():
    torch = pytest.importorskip("torch")
    del torch
    exp = run.Experiment([
        run.Task("load", run.Partial(cp.torch_threads_after_import),
                 resources=run.Resources(cpus=1)),
        run.Task("again", run.Partial(cp.torch_threads), resources=run.Resources(cpus=2),
                 depends_on=["load"]),
    ], executor=run.LocalExecutor(strategy="process", max_workers=1, cpus=2))
    result = exp.run()
    assert result["load"].value == {"threads": 1, "omp": "1"}  # read at import
    assert result["again"].value == {"threads": 2, "omp": "2"}  # set_num_threads


def test_task_dir_outside_an_attempt_is_a_named_error():
    with pytest.raises(run.NotInAttempt, match="inside a running attempt"):
        run.task_dir()
    assert issubclass(run.NotInAttempt, run.SteadyrunError)


def test_import_stays_light(subprocess_env):
    code = ("import sys, steadyrun; "
            "assert 'steadyrun.attempt.context' not in sys.modules; "
            "assert callable(steadyrun.task_dir)")
    subprocess.run([sys.executable, "-c", code], env=subprocess_env, check=True)
    assert run.task_dir.__module__ == "steadyrun.attempt.context"


def test_a_worker_started_through_a_link_finds_the_task_folder(tmp_path, subprocess_env):
    # a Slurm job runs the worker on SUBMISSION/i, a link to the attempt folder
    from steadyrun.attempt import worker

    attempt = tmp_path / "exp" / "tasks" / "train" / "3"
    attempt.mkdir(parents=True)
    worker.write_payload(run.Partial(cp.where), attempt)
    link = tmp_path / "submission" / "0"
    link.parent.mkdir()
    link.symlink_to(attempt)
    env = {**subprocess_env, "STEADYRUN_CPUS": "3"}
    proc = subprocess.run([sys.executable, "-m", "steadyrun.attempt.worker", str(link)],
                          env=env, timeout=60)
    assert proc.returncode == 0
    import pickle

    where = pickle.loads((attempt / "result.pkl").read_bytes())
    assert where["task_dir"] == str(attempt.parent / "work") == where["env"]
    assert where["omp"] == "3"


def test_a_ray_node_without_the_store_keeps_a_task_folder_of_its_own(tmp_path, monkeypatch):
    import pickle
    import tempfile

    import cloudpickle

    from steadyrun.executors.ray.task import run_attempt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's temporary folder
    info = {"attempt_id": "e/t/1", "attempt_dir": "/not/on/this/node", "shared_fs": False,
            "env": {"STEADYRUN_EXPERIMENT": "e", "STEADYRUN_TASK": "t", "STEADYRUN_CPUS": "1"}}
    seen = []
    for _ in range(2):  # two attempts on this node: the same folder
        out = run_attempt(cloudpickle.dumps(run.Partial(cp.where)), info)
        seen.append(pickle.loads(out["value_bytes"])["task_dir"])
    assert seen[0] == seen[1] == str(tmp_path / f"steadyrun-work-{os.getuid()}" / "e" / "t")
    assert stat.S_IMODE(os.stat(seen[0]).st_mode) == 0o700
    assert "STEADYRUN_TASK_DIR" not in os.environ  # restored after each attempt
