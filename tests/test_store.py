"""The SQLite store: WAL, private folders, atomic experiment creation, reads from a
second process."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from steadyrun.errors import ExperimentNotFound, StoreError
from steadyrun.store.db import Store, atomic_write, task_dir_name


def test_database_is_wal_and_folders_are_private(steadyrun_home):
    store = Store()
    assert store.home == steadyrun_home
    mode = sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    exp_id = store.create_experiment("t", [{"name": "a"}], {"type": "X"},
                                     {"definition.yaml": b"x: 1\n"})
    path = store.insert_attempt(exp_id, "a", 1, state="running")
    for p in (store.home, store.experiment_dir(exp_id), path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p
    assert (store.experiment_dir(exp_id) / "definition.yaml").read_bytes() == b"x: 1\n"


def test_failed_creation_leaves_no_folder_and_no_rows():
    store = Store()
    with pytest.raises(StoreError, match="UNIQUE"):
        store.create_experiment("dup", [{"name": "a"}, {"name": "a"}], {},
                                {"definition.yaml": b"x"})
    assert list(store.experiments_dir.iterdir()) == []
    assert store.list_experiments() == []


def test_unknown_experiment_is_a_named_error():
    with pytest.raises(ExperimentNotFound, match="no experiment with id 'nope'"):
        Store().experiment("nope")


def test_unusable_home_is_a_named_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="STEADYRUN_HOME"):
        Store(blocker / "home")


def test_a_second_process_reads_what_the_first_committed(subprocess_env):
    store = Store()
    exp_id = store.create_experiment("shared", [{"name": "a"}], {})
    with store.transaction():
        store.update_task(exp_id, "a", state="running", attempts=1)
        store.add_event(exp_id, "running", task="a", attempt=1, data={"x": 1})
    code = ("from steadyrun.store.db import Store; s = Store(); "
            f"t = s.tasks({exp_id!r})[0]; e = s.events({exp_id!r})[0]; "
            "print(t.state, t.attempts, e.kind, e.data['x'])")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out == ["running", "1", "running", "1"]


def test_rolled_back_transaction_writes_nothing():
    store = Store()
    exp_id = store.create_experiment("t", [{"name": "a"}], {})
    with pytest.raises(RuntimeError), store.transaction():
        store.update_task(exp_id, "a", state="running")
        raise RuntimeError("boom")
    assert store.tasks(exp_id)[0].state == "pending"


def test_list_filters_and_orders_newest_first():
    store = Store()
    ids = [store.create_experiment(title, [], {}) for title in ("a", "b", "a")]
    assert [r.id for r in store.list_experiments(title="a")] == [ids[2], ids[0]]
    store.update_experiment(ids[1], state="failed")
    assert [r.id for r in store.list_experiments(state="failed")] == [ids[1]]
    assert len(store.list_experiments(limit=2)) == 2


def test_task_folder_names_are_safe_and_distinct():
    assert task_dir_name("train") == "train"
    odd = ["a/b", "a b", "a\nb", "..", "x$(rm -rf /)"]
    names = [task_dir_name(n) for n in odd]
    assert all("/" not in n and "\n" not in n and n not in (".", "..") for n in names)
    assert len(set(names)) == len(names)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "r.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.bin"]
