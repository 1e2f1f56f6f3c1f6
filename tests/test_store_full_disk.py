"""A store whose disk fills: a clear error, the experiment settled (not left
``running``), the controller out cleanly, and ``resume`` finishing once there is space.

The store lives on a small tmpfs, so this needs root (and a kernel that lets it mount)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from steadyrun.store.db import Store

pytestmark = pytest.mark.slow

PAYLOAD = textwrap.dedent("""
    import time

    def work(which, path="", mib=8, seconds=4.0):
        if which == "fill":  # writes until the disk is full (on a small one)
            with open(path, "wb") as f:
                for _ in range(mib * 16):
                    f.write(b"x" * 65536)
                    f.flush()
            return "filled"
        time.sleep(seconds)  # an unrelated task, running meanwhile
        return "done"
""")

DRIVER = textwrap.dedent("""
    import sys
    import steadyrun as run
    from steadyrun.errors import SteadyrunError
    from fullpayload import work

    tasks = [run.Task("fill", run.Partial(work, "fill", sys.argv[1])),
             run.Task("other", run.Partial(work, "other"))]
    exp = run.Experiment(tasks, title="full", executor=run.LocalExecutor())
    try:
        exp.run()
    except run.ExperimentFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except SteadyrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
""")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs at a temporary folder; always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    at = tmp_path / "disk"
    at.mkdir(mode=0o700)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs",
                           str(at)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def test_a_full_disk_settles_the_experiment_and_resume_finishes(small_disk, tmp_path,
                                                                subprocess_env):
    code = tmp_path / "code"
    code.mkdir()
    (code / "fullpayload.py").write_text(PAYLOAD)
    (code / "driver.py").write_text(DRIVER)
    home = small_disk / "home"
    (small_disk / "scratch").mkdir()
    env = dict(subprocess_env, STEADYRUN_HOME=str(home),
               PYTHONPATH=os.pathsep.join([str(code), subprocess_env["PYTHONPATH"]]))

    proc = subprocess.run([sys.executable, str(code / "driver.py"),
                           str(small_disk / "scratch" / "big.bin")], env=env, cwd=code,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), out  # out cleanly: a named error, no crash
    assert "sqlite3" not in out, out
    # the task's own traceback (its OSError) may show in its live output; ours never
    ours = [line for line in out.splitlines() if not line.startswith(("fill ", "other "))]
    assert not any("Traceback" in line for line in ours), out
    if proc.returncode == 2:
        assert "full" in proc.stderr and str(home) in proc.stderr, out

    store = Store(home, readonly=True)
    row, = store.list_experiments()
    assert row.state == "failed", row.state  # settled: not left running
    assert row.controller_pid is None
    assert {t.state for t in store.tasks(row.id)} <= {"failed", "succeeded"}
    assert all(a.state != "running" for a in store.attempts(row.id))
    store.close()
    status = subprocess.run([sys.executable, "-m", "steadyrun", "status", row.id], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr

    # space is freed: resume runs what did not finish
    (small_disk / "scratch" / "big.bin").unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = subprocess.run([sys.executable, "-m", "steadyrun", "resume", row.id, "--quiet"],
                             env=env, cwd=code, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store = Store(home, readonly=True)
    assert store.experiment(row.id).state == "succeeded"
    assert {t.state for t in store.tasks(row.id)} == {"succeeded"}
    store.close()
