"""Spellings users bring from other launchers: the task ``add()`` returns as a dependency,
``dependencies=``, ``run(sequential=True)`` and dry runs from Python."""

from __future__ import annotations

import time

import pytest

import steadyrun as run
from steadyrun.errors import ExperimentFailed, TaskDefinitionError


def stamp(tag: str) -> tuple[str, float, float]:
    start = time.time()
    time.sleep(0.2)
    return tag, start, time.time()


def boom() -> None:
    raise RuntimeError("boom")


def test_task_returned_by_add_is_usable_as_a_dependency() -> None:
    exp = run.Experiment("deps", executor=run.LocalExecutor(strategy="thread"), progress=False)
    first = exp.add(run.Partial(stamp, tag="a"), name="a")
    exp.add(run.Partial(stamp, tag="b"), name="b", dependencies=[first])
    result = exp.run()
    assert result is not None
    assert exp.tasks[1].depends_on == ("a",)
    assert result["b"].value[1] >= result["a"].value[2]  # b started after a ended


def test_depends_on_and_dependencies_together_are_refused() -> None:
    exp = run.Experiment("deps")
    exp.add(run.Partial(stamp, tag="a"), name="a")
    with pytest.raises(TaskDefinitionError, match="not both"):
        exp.add(run.Partial(stamp, tag="b"), name="b", dependencies=["a"], depends_on=["a"])


def test_a_dependency_of_the_wrong_type_is_a_named_error() -> None:
    with pytest.raises(TaskDefinitionError, match="depends_on takes task names"):
        run.Task("b", run.Partial(stamp, tag="b"), depends_on=[3])


def test_sequential_runs_tasks_one_after_another_in_order_added() -> None:
    exp = run.Experiment("seq", executor=run.LocalExecutor(strategy="thread"), progress=False)
    for tag in ("x", "y", "z"):
        exp.add(run.Partial(stamp, tag=tag), name=tag)
    result = exp.run(sequential=True)
    assert result is not None
    spans = [result[t].value for t in ("x", "y", "z")]
    assert spans[1][1] >= spans[0][2] and spans[2][1] >= spans[1][2]


def test_sequential_skips_the_rest_after_a_failure() -> None:
    exp = run.Experiment("seq-fail", executor=run.LocalExecutor(strategy="thread"),
                         progress=False)
    exp.add(run.Partial(boom), name="first", retry=run.Retry(max_attempts=1))
    exp.add(run.Partial(stamp, tag="later"), name="later")
    with pytest.raises(ExperimentFailed):
        exp.run(sequential=True)
    assert exp.result is not None
    assert exp.result["later"].state == "skipped"


def test_dryrun_from_python_prints_and_writes_nothing(
        capsys: pytest.CaptureFixture[str], steadyrun_home) -> None:
    assert run.run(run.Partial(stamp, tag="d"), dryrun=True) is None
    printed = capsys.readouterr().out
    assert "dry run" in printed and "stamp" in printed
    assert not (steadyrun_home / "steadyrun.db").exists()


def test_add_of_many_tasks_stays_linear() -> None:
    exp = run.Experiment("many")
    for i in range(5000):
        exp.add(run.Partial(stamp, tag=str(i)), name=f"t{i}")
    with pytest.raises(TaskDefinitionError, match="two tasks are named 't42'"):
        exp.add(run.Partial(stamp, tag="dup"), name="t42")
