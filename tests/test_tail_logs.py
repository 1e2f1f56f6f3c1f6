"""Foreground runs show each task's output while it runs, as ``name | line``.

Real experiments in child interpreters whose stdout the test reads as it comes: a task
waits for a file the test creates only after it has seen the task's first line, so a
passing test proves the line was shown while the task was still running.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG
from steadyrun.errors import SteadyrunError
from steadyrun.observe.tail import LogTail
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(180)

TASKS = textwrap.dedent('''
    import os, sys, time

    def talk(n=2, go="", pause=0.05):
        """Prints line 1..n; before line 2 waits for the file ``go`` (when given)."""
        for i in range(1, int(n) + 1):
            if i == 2 and go:
                deadline = time.monotonic() + 120
                while not os.path.exists(go) and time.monotonic() < deadline:
                    time.sleep(0.02)
            print(f"line {i}")  # no flush: the worker line-buffers stdout
            time.sleep(float(pause))
        return int(n)

    def flaky():
        """Fails on its first attempt, succeeds on the next."""
        attempt = os.environ["STEADYRUN_ATTEMPT"]
        print(f"try {attempt}")
        if attempt == "1":
            print("first try fails", file=sys.stderr)
            raise SystemExit(3)
        return attempt

    def needs_file(path=""):
        """Fails until ``path`` exists."""
        if not os.path.exists(path):
            raise RuntimeError("not yet")
        print("found it")
        return 1
''')

DRIVE = textwrap.dedent('''
    import sys
    import steadyrun as run
    from tail_tasks import talk, flaky

    mode, strategy, go = sys.argv[1], sys.argv[2], sys.argv[3]
    ex = run.LocalExecutor(strategy=strategy)
    if mode == "flaky":
        exp = run.Experiment([run.Task("flaky", run.Partial(flaky),
                                       retry=run.Retry(max_attempts=2, initial_delay=0.0))],
                             executor=ex)
    else:
        exp = run.Experiment([run.Task("alpha", run.Partial(talk, n=3, go=go)),
                              run.Task("beta", run.Partial(talk, n=3, go=go))],
                             executor=ex, tail_logs=(mode != "off"))
    result = exp.run()
    print("DONE", result["flaky" if mode == "flaky" else "alpha"].value, flush=True)
''')


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tail_tasks.py").write_text(TASKS)
    (tmp_path / "drive.py").write_text(DRIVE)
    return tmp_path


@pytest.fixture
def env(subprocess_env: dict[str, str], steadyrun_home: Path) -> dict[str, str]:
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))
    env.pop("PYTHONUNBUFFERED", None)  # the worker line-buffers by itself
    env.pop("STEADYRUN_PROGRESS", None)
    env.pop("NO_COLOR", None)
    return env


class Child:
    """A child interpreter whose stdout lines are collected as they arrive."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._err_reader = threading.Thread(
            target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._err_reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, *texts: str, timeout: float = 60.0) -> None:
        """Read stdout until every one of ``texts`` was seen as a whole line."""
        deadline = time.monotonic() + timeout
        while not all(t in self.lines for t in texts):
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"{texts} not all seen; stdout so far: {self.lines}; "
                                     f"stderr: {''.join(self._stderr)[-2000:]}")
            self.lines.append(line)

    def finish(self, timeout: float = 120.0) -> tuple[int, list[str], str]:
        code = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        self._err_reader.join(10)
        return code, self.lines, "".join(self._stderr)


@pytest.mark.parametrize("strategy", ["subprocess", "process", "thread"])
def test_a_task_line_shows_while_the_task_still_runs(workdir, env, strategy):
    go = workdir / "go"
    child = Child([sys.executable, "drive.py", "on", strategy, str(go)], env, workdir)
    child.wait_for("alpha | line 1", "beta  | line 1")  # names padded to one width
    # both tasks now wait for `go`: nothing after line 1 can have been printed
    assert not any("line 2" in line for line in child.lines)
    go.touch()
    code, lines, err = child.finish()
    assert code == 0, err
    for name in ("alpha", "beta "):
        shown = [line for line in lines if line.startswith(name + " | ")]
        assert shown == [f"{name} | line {i}" for i in (1, 2, 3)]  # once each, in order
    assert lines[-1] == "DONE 3"
    assert not any(line.startswith("line ") for line in lines)  # never echoed bare
    assert "[steadyrun] alpha: running (attempt 1)" in err
    assert "[steadyrun] alpha: succeeded" in err


def test_tail_logs_false_prints_no_task_lines(workdir, env):
    (workdir / "go").touch()
    child = Child([sys.executable, "drive.py", "off", "subprocess", str(workdir / "go")],
                  env, workdir)
    code, lines, err = child.finish()
    assert code == 0, err
    assert lines == ["DONE 3"]
    assert "line 1" not in err
    assert "[steadyrun] alpha: succeeded" in err  # progress lines stay


def test_a_retry_shows_an_attempt_header_and_stderr_lines(workdir, env):
    child = Child([sys.executable, "drive.py", "flaky", "subprocess", ""], env, workdir)
    code, lines, err = child.finish()
    assert code == 0, err
    assert lines[:3] == ["flaky | try 1", "flaky | --- attempt 2 ---", "flaky | try 2"]
    assert "flaky ! first try fails" in err
    # the failure is shown before the task's state changes that follow it
    assert err.index("flaky ! first try fails") < err.index("[steadyrun] flaky: retrying")


def test_cli_run_shows_the_output_and_quiet_hides_it(workdir, env):
    (workdir / "go").touch()
    argv = [sys.executable, "-m", "steadyrun", "run", "tail_tasks:talk", "n=2"]
    child = Child(argv, env, workdir)
    code, lines, err = child.finish()
    assert code == 0, err
    assert "talk | line 1" in lines and "talk | line 2" in lines
    assert "[steadyrun] talk: succeeded" in err

    child = Child([*argv, "--quiet"], env, workdir)
    code, lines, err = child.finish()
    assert code == 0, err
    assert not any("line 1" in line for line in lines) and "line 1" not in err
    assert "[steadyrun]" not in err


def test_cli_resume_shows_the_output_of_what_runs_again(workdir, env):
    flag = workdir / "flag"
    argv = [sys.executable, "-m", "steadyrun"]
    first = Child([*argv, "run", "tail_tasks:needs_file", f"path={flag}"], env, workdir)
    code, _, err = first.finish()
    assert code == 1 and "needs_file ! RuntimeError: not yet" in err
    flag.touch()
    store = Store(env["STEADYRUN_HOME"])
    exp_id = store.list_experiments(limit=1)[0].id
    store.close()
    again = Child([*argv, "resume", exp_id], env, workdir)
    code, lines, err = again.finish()
    assert code == 0, err
    assert "needs_file | --- attempt 2 ---" in lines and "needs_file | found it" in lines


def test_log_tail_reads_whole_lines_and_the_rest_at_the_end(tmp_path):
    attempt = tmp_path / "attempt"
    attempt.mkdir()
    out, err = io.StringIO(), io.StringIO()
    tail = LogTail(["t", "longer"], out=out, err=err, interval=0.02).start()
    try:
        tail.follow("t", 1, attempt)
        with open(attempt / STDOUT_LOG, "a") as f:
            f.write("one\ntw")
            f.flush()
            _wait(lambda: "one" in out.getvalue())
            assert out.getvalue() == "t      | one\n"  # "tw" waits for its line end
            f.write("o\nthree")
        with open(attempt / STDERR_LOG, "w") as f:
            f.write("oops\n")
        _wait(lambda: "two" in out.getvalue())
        tail.end("t")
        _wait(lambda: "three" in out.getvalue())
        tail.follow("t", 2, attempt / "again")  # a retry in a folder without logs yet
    finally:
        tail.stop()
    assert out.getvalue() == ("t      | one\nt      | two\nt      | three\n"
                              "t      | --- attempt 2 ---\n")
    assert err.getvalue() == "t      ! oops\n"


def test_a_progress_bar_shows_its_last_state(tmp_path):
    out = io.StringIO()
    with LogTail(["bar"], out=out, err=io.StringIO(), interval=0.02) as tail:
        tail.follow("bar", 1, tmp_path)
        (tmp_path / STDOUT_LOG).write_bytes(b"\r 10%\r 50%\r100%\ndone\r\n")
        _wait(lambda: "done" in out.getvalue())
    assert out.getvalue() == "bar | 100%\nbar | done\n"


def test_progress_must_be_one_of_the_choices():
    import steadyrun as run

    with pytest.raises(SteadyrunError, match="progress='table'"):
        run.Experiment([run.Task("x", run.Partial(os.getpid))], progress="table")


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
