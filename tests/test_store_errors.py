"""A store that fails says so in one line: a damaged database, a read-only copy or
mount, a store that does not exist, an empty id. Never a raw ``sqlite3`` traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import steadyrun as run
from steadyrun.errors import ExperimentNotFound, StoreCorrupt, StoreReadOnly
from steadyrun.store.db import Store

ROOT = os.geteuid() == 0


def _cli(env: dict[str, str], home: Path, *args: str,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steadyrun", *args],
                          env=dict(env, STEADYRUN_HOME=str(home)), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def real_store(steadyrun_home: Path) -> tuple[Path, str]:
    """A store with a real run and enough tasks that the tasks table spans pages."""
    from payloads import add

    exp = run.Experiment([run.Task("t", run.Partial(add, 1, 2))], title="real")
    exp.run()
    store = Store()
    for i in range(6):
        store.create_experiment(f"filler{i}", [{"name": f"task-{i}-{j}-" + "x" * 60}
                                               for j in range(40)], {})
    store.close()
    return steadyrun_home, str(exp.id)


def _clobber_tasks_pages(db: Path, count: int = 2) -> list[int]:
    """Overwrite ``count`` pages of the tasks table (leaves first, then its root)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = [r[0] for r in conn.execute(
        "SELECT pageno FROM dbstat WHERE name='tasks' ORDER BY pagetype='internal', pageno")]
    conn.close()
    assert len(pages) > count, pages
    with open(db, "r+b") as f:
        for page in pages[:count]:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)
    return pages[:count]


def test_a_damaged_database_is_named_and_never_written(real_store, tmp_path, subprocess_env):
    home, exp_id = real_store
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    _clobber_tasks_pages(copy / "steadyrun.db")
    before = (copy / "steadyrun.db").read_bytes()

    for args in (("list",), ("status", exp_id)):
        line = _one_clear_line(_cli(subprocess_env, copy, *args))
        assert "damaged" in line and ".recover" in line, line
    line = _one_clear_line(_cli(subprocess_env, copy, "resume", exp_id))
    assert "damaged" in line
    line = _one_clear_line(_cli(subprocess_env, copy, "run", "--", "true"))
    assert "damaged" in line
    assert (copy / "steadyrun.db").read_bytes() == before

    with pytest.raises(StoreCorrupt, match="will not write"):
        Store(copy)


def test_a_damaged_read_is_checked_then_refused_for_writing(real_store, tmp_path):
    home, exp_id = real_store
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    store = Store(copy)  # opened before the damage: the open check passed
    _clobber_tasks_pages(copy / "steadyrun.db")
    with pytest.raises(StoreCorrupt):
        for row in store.list_experiments():
            store.tasks(row.id)
    with pytest.raises(StoreCorrupt, match="will not write"):
        store.add_event(exp_id, "note")
    store.close()


def test_a_read_only_copy_can_be_read(real_store, tmp_path, subprocess_env):
    home, exp_id = real_store
    copy = tmp_path / "archive"
    shutil.copytree(home, copy)
    subprocess.run(["chmod", "-R", "a-w", str(copy)], check=True)
    try:
        for args in (("list",), ("status", exp_id), ("logs", exp_id)):
            proc = _cli(subprocess_env, copy, *args)
            assert proc.returncode == 0, (args, proc.stderr)
        assert exp_id in _cli(subprocess_env, copy, "list").stdout
        store = Store(copy, readonly=True)
        assert store.experiment(exp_id).state == "succeeded"
        with pytest.raises(StoreReadOnly):
            store.add_event(exp_id, "note")
        store.close()
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)


@contextlib.contextmanager
def _read_only_mount(source: Path, at: Path):
    """``source`` copied onto a tmpfs at ``at``, then remounted read-only."""
    at.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(at)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(source, at / "home")
        subprocess.run(["mount", "-o", "remount,ro", str(at)], check=True)
        yield at / "home"
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


@pytest.mark.skipif(not ROOT, reason="mounting a read-only file system needs root")
def test_a_store_on_a_read_only_mount_can_be_read_but_not_written(real_store, tmp_path,
                                                                 subprocess_env):
    home, exp_id = real_store
    with _read_only_mount(home, tmp_path / f"ro-{uuid.uuid4().hex[:6]}") as ro:
        before = sorted(os.listdir(ro))
        for args in (("list",), ("status", exp_id), ("logs", exp_id)):
            proc = _cli(subprocess_env, ro, *args)
            assert proc.returncode == 0, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
        line = _one_clear_line(_cli(subprocess_env, ro, "report", exp_id))
        assert "--out" in line
        line = _one_clear_line(_cli(subprocess_env, ro, "resume", exp_id))
        assert "cannot write" in line or "read-only" in line
        proc = _cli(subprocess_env, ro, "cancel", exp_id)  # nothing to write: it says so
        assert proc.returncode == 0 and "nothing to cancel" in proc.stdout, proc.stderr
        assert sorted(os.listdir(ro)) == before
        store = Store(ro)  # a writable open falls back to reading
        assert store.readonly and store.experiment(exp_id).state == "succeeded"
        store.close()


def test_read_commands_on_a_missing_store_create_nothing(tmp_path, subprocess_env):
    home = tmp_path / "nowhere" / "home"
    proc = _cli(subprocess_env, home, "list")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout
    assert "does not exist" in proc.stderr  # stdout stays empty; stderr says why
    line = _one_clear_line(_cli(subprocess_env, home, "status", "abc"))
    assert "does not exist" in line
    _one_clear_line(_cli(subprocess_env, home, "logs", "abc"))
    assert not (tmp_path / "nowhere").exists()
    assert run.list_experiments(home=home) == []
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_an_empty_id_matches_nothing(blank, real_store, subprocess_env):
    home, exp_id = real_store
    line = _one_clear_line(_cli(subprocess_env, home, "cancel", blank))
    assert "empty" in line
    _one_clear_line(_cli(subprocess_env, home, "status", blank))
    with pytest.raises(ExperimentNotFound, match="empty"):
        Store().resolve_id(blank)
    assert Store().experiment(exp_id).state == "succeeded"
