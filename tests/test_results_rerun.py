"""Lost results and reruns: a missing or damaged ``result.pkl`` is a named error that
says which file and how to get the value back, and ``resume --rerun`` reruns tasks by
name (succeeded ones too) or all of them, keeping the earlier attempts' folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

import payloads
import steadyrun as run
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(120)


def _experiment(tmp_path) -> tuple[str, object]:
    effects = tmp_path / "effects.txt"
    tasks = [run.Task("train", run.Partial(payloads.side_effect, str(effects), "train")),
             run.Task("evaluate", run.Partial(payloads.side_effect, str(effects), "evaluate"),
                      depends_on=["train"])]
    exp = run.Experiment(tasks, title="rerun", executor=run.LocalExecutor(cpus=2),
                         tail_logs=False)
    assert exp.run().ok
    assert exp.id is not None
    return exp.id, effects


def _result_file(exp_id: str, task: str, number: int):
    store = Store()
    try:
        return store.attempt_dir(exp_id, task, number) / "result.pkl"
    finally:
        store.close()


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=90, cwd=tmp_path,
                              stdin=subprocess.DEVNULL)

    return call


def test_a_deleted_result_is_a_named_error_with_the_file_and_the_rerun_command(tmp_path):
    exp_id, _ = _experiment(tmp_path)
    path = _result_file(exp_id, "train", 1)
    path.unlink()
    result = run.Experiment.from_id(exp_id).results()["train"]
    assert result.state == "succeeded"
    with pytest.raises(run.ResultUnavailable) as info:
        _ = result.value
    e = info.value
    assert isinstance(e, run.SteadyrunError)
    assert e.task == "train" and e.path == str(path)
    assert str(path) in str(e) and "missing" in str(e)
    assert f"steadyrun resume {exp_id} --rerun train" in str(e)
    assert "--rerun all" in str(e)
    # the other task's value is still there
    assert run.Experiment.from_id(exp_id).results()["evaluate"].value == "evaluate"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_result_is_the_same_error_never_a_raw_eoferror(tmp_path, damage):
    exp_id, _ = _experiment(tmp_path)
    path = _result_file(exp_id, "train", 1)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a pickle",
                      "empty": b""}[damage])
    with pytest.raises(run.ResultUnavailable) as info:
        _ = run.Experiment.from_id(exp_id).results()["train"].value
    assert type(info.value) is run.ResultUnavailable
    assert "truncated or corrupt" in str(info.value) and str(path) in str(info.value)
    assert "--rerun train" in str(info.value)


def test_resume_rerun_task_runs_a_succeeded_task_again_and_its_result_is_back(tmp_path, cli):
    exp_id, effects = _experiment(tmp_path)
    first = _result_file(exp_id, "train", 1)
    first.unlink()
    proc = cli("resume", exp_id, "--rerun", "train", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert effects.read_text().split() == ["train", "evaluate", "train"]  # only train ran
    result = run.Experiment.from_id(exp_id).results()
    assert result["train"].value == "train" and result["train"].attempts == 2
    assert result["evaluate"].value == "evaluate" and result["evaluate"].attempts == 1
    assert first.parent.is_dir()  # the earlier attempt's folder is kept
    assert _result_file(exp_id, "train", 2).exists()
    status = run.Experiment.from_id(exp_id).status()
    assert status.state == "succeeded"
    assert [t.state for t in status.tasks] == ["succeeded", "succeeded"]


def test_resume_rerun_all_runs_every_task_again(tmp_path, cli):
    exp_id, effects = _experiment(tmp_path)
    proc = cli("resume", exp_id, "--rerun", "all", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(effects.read_text().split()) == ["evaluate", "evaluate", "train", "train"]
    result = run.Experiment.from_id(exp_id).results()
    assert {n: r.attempts for n, r in result.items()} == {"train": 2, "evaluate": 2}
    assert result["evaluate"].value == "evaluate"


def test_resume_rerun_in_python_by_name(tmp_path):
    exp_id, effects = _experiment(tmp_path)
    result = run.Experiment.from_id(exp_id).resume(rerun=["evaluate"], tail_logs=False)
    assert result is not None and result.ok
    assert result["evaluate"].value == "evaluate" and result["evaluate"].attempts == 2
    assert effects.read_text().split() == ["train", "evaluate", "evaluate"]


def test_an_unknown_task_name_is_an_error_listing_close_matches(tmp_path, cli):
    exp_id, effects = _experiment(tmp_path)
    proc = cli("resume", exp_id, "--rerun", "trian")
    assert proc.returncode != 0
    assert "'trian'" in proc.stderr and "did you mean 'train'" in proc.stderr, proc.stderr
    assert "evaluate" in proc.stderr  # the tasks there are
    with pytest.raises(run.TaskDefinitionError, match="did you mean 'evaluate'"):
        run.Experiment.from_id(exp_id).resume(rerun="evaluat")
    # nothing changed: no task reopened, nothing ran, no controller left behind
    status = run.Experiment.from_id(exp_id).status()
    assert status.state == "succeeded" and not status.controller["alive"]
    assert [t.state for t in status.tasks] == ["succeeded", "succeeded"]
    assert effects.read_text().split() == ["train", "evaluate"]
