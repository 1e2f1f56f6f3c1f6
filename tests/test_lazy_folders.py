"""Big experiments keep nothing on disk that is not needed: an attempt that runs in the
controller (``thread``, ``sequential``) gets a folder only when it has something to
keep, and a small return value lives in the store's database. Real store, real
threads."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import scale_payloads as sp
import steadyrun as run
from steadyrun.errors import ResultUnavailable, StoreUnsafe
from steadyrun.store.db import Store
from steadyrun.store.results import experiment_result

pytestmark = pytest.mark.timeout(120)


def _run(tasks: list[run.Task], strategy: str = "thread") -> run.ExperimentResult:
    return run.Experiment(tasks, title="lazy", executor=run.LocalExecutor(strategy=strategy),
                          progress=False, tail_logs=False,
                          monitor_interval=None).run(raise_on_failure=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("strategy", ["thread", "sequential"])
def test_silent_attempts_with_small_values_leave_no_folder(strategy: str) -> None:
    result = _run([run.Task(f"t{i}", run.Partial(sp.small, i=i)) for i in range(20)],
                  strategy)
    assert [result[f"t{i}"].value for i in range(20)] == [i * 2 for i in range(20)]
    tasks = Store().experiment_dir(result.id) / "tasks"
    # at most the task's definition file (a payload that YAML cannot hold); no attempts
    assert [p for p in _files(tasks) if os.sep in p and not p.endswith("payload.pkl")] == []
    # read back by another process's view of the store: from the database
    again = experiment_result(Store(), result.id)
    assert [again[f"t{i}"].value for i in range(20)] == [i * 2 for i in range(20)]


def test_what_an_attempt_keeps_gets_a_private_folder() -> None:
    result = _run([run.Task("big", run.Partial(sp.big, i=1)),
                   run.Task("loud", run.Partial(sp.loud, i=2)),
                   run.Task("saves", run.Partial(sp.saves, i=3)),
                   run.Task("fails", run.Partial(sp.fails, i=4))])
    tasks = Store().experiment_dir(result.id) / "tasks"
    assert (tasks / "big" / "1" / "result.pkl").is_file()
    assert experiment_result(Store(), result.id)["big"].value == "x" * 8193
    assert (tasks / "loud" / "1" / "stdout.log").read_text() == "line from 2\n"
    assert not (tasks / "loud" / "1" / "result.pkl").exists()  # small: in the database
    assert Path(result["saves"].value).read_text() == "3"
    assert Path(result["saves"].value).parent == tasks / "saves" / "work"
    assert not (tasks / "saves" / "1").exists()
    assert (tasks / "fails" / "1" / "error.json").is_file()
    assert "bad 4" in result["fails"].error.remote_traceback
    for path in (tasks / "big", tasks / "big" / "1", tasks / "loud" / "1",
                 tasks / "saves" / "work", tasks / "fails" / "1"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in (tasks / "big" / "1" / "result.pkl", tasks / "loud" / "1" / "stdout.log"):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_link_put_where_a_lazy_folder_goes_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    exp = run.Experiment(
        [run.Task("plant", run.Partial(sp.plant_link, target=str(outside), task="loud")),
         run.Task("loud", run.Partial(sp.loud, i=1), depends_on=["plant"])],
        title="link", executor=run.LocalExecutor(strategy="thread"), progress=False,
        tail_logs=False, monitor_interval=None)
    result = exp.run(raise_on_failure=False)
    with pytest.raises(StoreUnsafe, match="leads outside"):  # its folder is not read
        _ = result["loud"].error
    states = {t.name: (t.state, t.message) for t in Store().tasks(exp.id)}
    assert states["plant"][0] == "succeeded"
    assert states["loud"][0] == "failed" and "not a folder" in states["loud"][1]
    assert list(outside.iterdir()) == []  # nothing written through the link


def test_a_store_without_the_result_column_still_reads(tmp_path: Path) -> None:
    result = _run([run.Task("t", run.Partial(sp.big, i=0))])
    db = Store().db_path
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE attempts DROP COLUMN result")
    os.chmod(db.parent, 0o500)
    try:
        view = Store(readonly=True)
        assert experiment_result(view, result.id)["t"].value == "x" * 8192
    finally:
        os.chmod(db.parent, 0o700)


def test_a_damaged_small_value_is_named_not_returned() -> None:
    result = _run([run.Task("t", run.Partial(sp.small, i=3))])
    with sqlite3.connect(Store().db_path) as conn:
        conn.execute("UPDATE attempts SET result=? WHERE exp_id=?", (b"\x80\x05garbage", result.id))
    with pytest.raises(ResultUnavailable, match="store's record of its last attempt"):
        _ = experiment_result(Store(), result.id)["t"].value
