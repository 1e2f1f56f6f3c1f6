"""The store is private: owner-only files whatever the umask, a home of someone else's
or writable by others refused, and no path read back from the database."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import steadyrun as run
from steadyrun.errors import StoreUnsafe
from steadyrun.store.db import Store

ROOT = os.geteuid() == 0


def _walk(home: Path) -> list[tuple[str, str]]:
    """(mode, path) of everything under ``home`` that is not 0600 (files) / 0700 (dirs)."""
    loose = []
    for dirpath, dirs, files in os.walk(home):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                loose.append((f"{stat.S_IMODE(st.st_mode):04o}", path))
    return loose


def _cli(env: dict[str, str], *args: str, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_every_file_and_folder_is_owner_only_under_umask_000(steadyrun_home, subprocess_env,
                                                             tmp_path):
    # a real run under umask 000: each strategy, a failing task, a closure payload (its
    # pickle goes into the definition), a detached controller (controller.log), a report
    script = textwrap.dedent("""
        import os, sys, time
        os.umask(0)
        import steadyrun as run
        from payloads import add, boom

        def closure(x=3):
            print("closure out"); print("closure err", file=sys.stderr)
            return x * 2

        for strategy in ("subprocess", "process", "thread", "sequential"):
            exp = run.Experiment([run.Task("ok", run.Partial(add, 1, 2)),
                                  run.Task("bad", run.Partial(boom, "no")),
                                  run.Task("fn", closure)],
                                 title=strategy, executor=run.LocalExecutor(strategy=strategy))
            try:
                exp.run()
            except run.ExperimentFailed:
                pass
        exp = run.Experiment([run.Task("ok", run.Partial(add, 1, 2))], title="detached")
        exp.run(detach=True)
        for _ in range(300):
            if run.Experiment.from_id(exp.id).status().state == "succeeded":
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the detached experiment did not end")
        print(exp.id)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    detached = proc.stdout.split()[-1]
    report = subprocess.run(
        [sys.executable, "-c", f"import os; os.umask(0); from steadyrun.cli.main import main; "
                               f"main(['report', {detached!r}])"],
        env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 or "matplotlib" in report.stderr, report.stderr
    home = steadyrun_home
    assert (home / "experiments" / detached / "controller.log").exists()
    names = {p.name for p in home.rglob("*")}
    assert {"steadyrun.db", "definition.yaml", "launch.json", "stdout.log", "stderr.log",
            "result.pkl", "error.json", "payload.pkl"} <= names, names
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert _walk(home) == []


def test_the_store_alone_is_owner_only_under_umask_000(steadyrun_home, subprocess_env):
    script = textwrap.dedent("""
        import os
        os.umask(0)
        from steadyrun.store.db import Store
        store = Store()
        exp = store.create_experiment("u", [{"name": "a b"}], {},
                                      {"definition.yaml": b"x", "tasks/a/payload.pkl": b"p"})
        store.insert_attempt(exp, "a b", 1, state="running")
        store.add_samples(exp, [("a b", 1, 1.0, 0.0, 1, 1, 0, 0, None, None)])
        store.close()
        Store(readonly=True).close()
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (steadyrun_home / "steadyrun.db").exists()
    assert _walk(steadyrun_home.parent) == []


def test_a_world_writable_home_is_refused_with_the_fix(steadyrun_home, subprocess_env):
    Store().close()
    os.chmod(steadyrun_home, 0o777)
    with pytest.raises(StoreUnsafe, match=f"chmod 700 {steadyrun_home}"):
        Store()
    with pytest.raises(StoreUnsafe):
        Store(readonly=True)
    proc = _cli(subprocess_env, "list")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "chmod 700" in proc.stderr
    os.chmod(steadyrun_home, 0o700)
    Store().close()  # fixed as the message says, it opens


@pytest.mark.skipif(not ROOT, reason="giving the home to another user needs root")
def test_a_home_owned_by_someone_else_is_refused(steadyrun_home, subprocess_env):
    store = Store()
    exp_id = store.create_experiment("theirs", [{"name": "a"}], {})
    store.close()
    os.chown(steadyrun_home, 65534, 65534)
    try:
        with pytest.raises(StoreUnsafe, match="chown"):
            Store()
        for args in (("list",), ("status", exp_id), ("resume", exp_id)):
            proc = _cli(subprocess_env, *args)
            assert proc.returncode == 2, (args, proc.stderr)
            assert "Traceback" not in proc.stderr and "uid 65534" in proc.stderr
    finally:
        os.chown(steadyrun_home, 0, 0)


@pytest.mark.skipif(not ROOT, reason="a database of another user needs root to make")
def test_a_database_replaced_by_someone_else_is_refused(steadyrun_home):
    Store().close()
    os.chown(steadyrun_home / "steadyrun.db", 65534, 65534)
    with pytest.raises(StoreUnsafe, match="uid 65534"):
        Store()


class _Trap:
    """Unpickling this creates ``path``: proof that a foreign pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_attempt_folder_in_the_database_is_never_used(tmp_path, subprocess_env):
    from payloads import add

    exp = run.Experiment([run.Task("t", run.Partial(add, 20, 22))], title="victim")
    exp.run()
    evil = tmp_path / "evil"
    (evil / "tasks" / "t" / "1").mkdir(parents=True)
    marker = tmp_path / "unpickled"
    for path in (evil / "result.pkl", evil / "tasks" / "t" / "1" / "result.pkl"):
        path.write_bytes(pickle.dumps(_Trap(str(marker))))
    store = Store()
    db = store.db_path
    store.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE attempts SET dir=?", (str(evil),))
        conn.execute("UPDATE tasks SET dir=?", (str(evil / "tasks" / "t"),))
        conn.execute("UPDATE experiments SET dir=?", (str(evil),))
    conn.close()

    store = Store()
    real = store.attempt_dir(exp.id, "t", 1)
    assert [a.dir for a in store.attempts(exp.id)] == [real]
    assert store.tasks(exp.id)[0].dir == real.parent
    assert store.experiment(exp.id).dir == store.experiment_dir(exp.id)
    store.close()
    assert run.Experiment.from_id(exp.id).results()["t"].value == 42
    proc = _cli(subprocess_env, "status", exp.id)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def test_a_link_out_of_the_experiment_folder_is_refused(tmp_path):
    from payloads import add

    exp = run.Experiment([run.Task("t", run.Partial(add, 1))], title="linked")
    exp.run()
    store = Store()
    task_dir = store.attempt_dir(exp.id, "t", 1).parent
    evil = tmp_path / "evil" / "1"
    evil.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    (evil / "result.pkl").write_bytes(pickle.dumps(_Trap(str(marker))))
    for child in task_dir.iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    task_dir.rmdir()
    task_dir.symlink_to(evil.parent)
    with pytest.raises(StoreUnsafe, match="outside"):
        store.attempt_dir(exp.id, "t", 1)
    with pytest.raises(StoreUnsafe):
        run.Experiment.from_id(exp.id).results()["t"].value  # noqa: B018
    store.close()
    assert not marker.exists()


def test_an_id_that_is_not_a_folder_name_is_never_a_path():
    store = Store()
    with pytest.raises(StoreUnsafe):
        store.experiment_dir("../../etc")
    with pytest.raises(StoreUnsafe):
        store.attempt_dir("..", "t", 1)
