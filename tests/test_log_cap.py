"""Bounded logs: an attempt that prints without end keeps its head and tail under the
executor's ``max_log_bytes``, with a line saying what was dropped, whatever the strategy;
``steadyrun logs`` reads any log in constant memory, from its end with ``--tail``, and
follows it with ``-f``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import logcap_payloads as lp
import steadyrun as run
from steadyrun.attempt import logcap
from steadyrun.attempt.logread import LogReader
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(300)

MIB = 1 << 20
_MARKER = re.compile(rb"\[steadyrun: (\d+) bytes of output dropped here \(stream bytes "
                     rb"(\d+) to (\d+)\); this log keeps the first (\d+) bytes and the "
                     rb"last (\d+) \(max_log_bytes=(\d+)\)\]\n")


def _attempt_dir(exp_id: str, task: str, number: int = 1) -> Path:
    store = Store()
    try:
        return store.attempt_dir(exp_id, task, number)
    finally:
        store.close()


def _run(tasks: list[run.Task], may_fail: bool = False,
         **executor: object) -> tuple[str, run.ExperimentResult]:
    exp = run.Experiment(tasks, executor=run.LocalExecutor(**executor), tail_logs=False)
    result = exp.run(raise_on_failure=not may_fail)
    assert exp.id is not None
    return exp.id, result


def _check_capped(log: Path, total: int, cap: int) -> None:
    """``log`` keeps its head and tail under ``cap``, with a marker that adds up."""
    data = log.read_bytes()
    assert len(data) <= cap + 300, len(data)
    assert data.startswith(b"FIRST\n") and data.endswith(b"LAST\n")
    m = _MARKER.search(data)
    assert m is not None, data[cap // 2 - 100: cap // 2 + 300]
    dropped, start, end, head, tail, cap_seen = map(int, m.groups())
    assert (start, head, cap_seen) == (cap // 2, cap // 2, cap)
    assert dropped == end - start == total - head - tail
    newline = data[head - 1:head] != b"\n"  # a line cut by the head ends before it
    assert m.start() == head + newline and data[head:m.start()] == b"\n" * newline
    assert len(data) == m.end() + tail
    assert tail >= (cap - cap // 2) // 2  # at least half of what the tail may hold
    assert not [p for p in os.listdir(log.parent) if ".part-" in p]  # joined


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_a_task_printing_a_gib_keeps_head_and_tail_under_a_small_cap(strategy):
    free = shutil.disk_usage(os.environ["STEADYRUN_HOME"].rsplit("/", 1)[0]).free
    assert free > 64 * MIB  # the log stays small: this is what the test checks
    started = time.monotonic()
    exp_id, result = _run([run.Task("loud", run.Partial(lp.spew_fd, 1024))],
                          strategy=strategy, max_log_bytes="1MiB")
    total = result["loud"].value
    assert total == 6 + 1024 * MIB + 5
    folder = _attempt_dir(exp_id, "loud")
    _check_capped(folder / "stdout.log", total, MIB)
    assert (folder / "stderr.log").read_bytes() == b"on stderr\n"
    print(f"{strategy}: 1 GiB through a 1 MiB cap in {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("strategy", ["thread", "sequential"])
def test_in_process_attempts_are_capped_too(strategy):
    exp_id, result = _run([run.Task("loud", run.Partial(lp.spew_print, 64))],
                          strategy=strategy, max_log_bytes=256 * 1024)
    folder = _attempt_dir(exp_id, "loud")
    _check_capped(folder / "stdout.log", result["loud"].value, 256 * 1024)
    assert (folder / "stderr.log").read_text() == "on stderr\n"


@pytest.mark.parametrize("strategy", ["thread", "subprocess"])
def test_a_scripts_output_is_capped(strategy):
    script = run.Script(inline="echo FIRST; yes | head -c 50000000; echo; echo LAST")
    exp_id, _ = _run([run.Task("script", script)], strategy=strategy,
                     max_log_bytes=64 * 1024)
    log = _attempt_dir(exp_id, "script") / "stdout.log"
    _check_capped(log, 6 + 50_000_000 + 1 + 5, 64 * 1024)


def test_a_killed_worker_leaves_a_joined_capped_log():
    task = run.Task("hangs", run.Partial(lp.spew_then_hang, 8), timeout="3s")
    exp_id, result = _run([task], may_fail=True, strategy="subprocess",
                          max_log_bytes=64 * 1024)
    assert result["hangs"].kind == "timeout"
    data = (_attempt_dir(exp_id, "hangs") / "stdout.log").read_bytes()
    assert data.startswith(b"FIRST\n") and data.endswith(b"LAST\n")
    assert _MARKER.search(data) and len(data) <= 64 * 1024 + 300
    assert not [p for p in os.listdir(_attempt_dir(exp_id, "hangs")) if ".part-" in p]


def test_no_cap_keeps_everything():
    exp_id, result = _run([run.Task("loud", run.Partial(lp.spew_fd, 4))],
                          strategy="subprocess", max_log_bytes=None)
    log = _attempt_dir(exp_id, "loud") / "stdout.log"
    assert log.stat().st_size == result["loud"].value
    assert b"[steadyrun:" not in log.read_bytes()


def test_a_bad_cap_is_a_clear_error():
    with pytest.raises(run.ExecutorError, match="max_log_bytes"):
        run.LocalExecutor(max_log_bytes=100)
    with pytest.raises(run.ExecutorError, match="max_log_bytes"):
        run.LocalExecutor(max_log_bytes="lots")
    assert run.LocalExecutor(max_log_bytes="2MiB").max_log_bytes == 2 * MIB
    assert run.LocalExecutor().max_log_bytes == logcap.DEFAULT_MAX_LOG_BYTES


@pytest.mark.slow
def test_a_gib_at_the_default_cap():
    exp_id, result = _run([run.Task("loud", run.Partial(lp.spew_fd, 1024))])
    log = _attempt_dir(exp_id, "loud") / "stdout.log"
    _check_capped(log, result["loud"].value, logcap.DEFAULT_MAX_LOG_BYTES)


# --- reading ------------------------------------------------------------------------------


def test_a_reader_follows_a_capped_log_across_rotation_and_join(tmp_path):
    path = str(tmp_path / "stdout.log")
    writer = logcap.CappedLog(path, 8192)
    reader = LogReader(path)
    seen = bytearray()

    def drain() -> None:
        while chunk := reader.read(1000):
            seen.extend(chunk)

    lines = [f"line {i}\n".encode() for i in range(3000)]
    for i, line in enumerate(lines):
        writer.write(line)
        if i % 997 == 0:  # read along, slower than the tail rotates
            drain()
    drain()
    writer.close()  # the parts are joined into the log meanwhile
    drain()
    text = bytes(seen)
    assert text.startswith(b"line 0\n") and text.endswith(b"line 2999\n")
    assert b"bytes of output dropped here" in text
    # nothing is shown twice: line numbers only go up
    numbers = [int(x) for x in re.findall(rb"line (\d+)\n", text)]
    assert numbers == sorted(set(numbers))
    # a fresh reader of the joined log reads head, marker, tail; --tail reads the end
    with LogReader(path) as again:
        assert again.read(1 << 20) == Path(path).read_bytes()
    with LogReader(path) as last:
        last.seek_last_lines(2)
        assert last.read() == b"line 2998\nline 2999\n"


@pytest.fixture
def logs_cli(subprocess_env, steadyrun_home):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))
    return [sys.executable, "-m", "steadyrun", "logs"], env


def _peak_rss_of(cmd: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``cmd`` under a fresh interpreter whose only child it is; return the child's
    peak RSS in bytes (getrusage of its children) and the last bytes it printed."""
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)\n"
             "tail = b''\n"
             "while chunk := p.stdout.read(1 << 20):\n"
             "    tail = (tail + chunk)[-4096:]\n"
             "assert p.wait() == 0\n"
             "sys.stdout.buffer.write(tail)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True,
                         timeout=240, check=True).stdout
    head, _, rss = out.rstrip(b"\n").rpartition(b"\n")
    return int(rss) * 1024, head + b"\n"


def test_logs_reads_a_gib_log_in_constant_memory(logs_cli, tmp_path):
    exp_id, _ = _run([run.Task("t", run.Partial(lp.spew_fd, 0))], strategy="subprocess")
    log = _attempt_dir(exp_id, "t") / "stdout.log"
    with open(log, "r+b") as f:  # 1 GiB, sparse: no disk used, every byte still read
        f.truncate(1 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + b"".join(f"end {i}\n".encode() for i in range(10)))
    cmd, env = logs_cli
    started = time.monotonic()
    rss, tail = _peak_rss_of([*cmd, exp_id, "t", "--stream", "stdout"], env)
    took = time.monotonic() - started
    print(f"steadyrun logs on a 1 GiB log: peak RSS {rss / MIB:.1f} MiB, {took:.1f}s")
    assert tail.endswith(b"end 8\nend 9\n")
    assert rss < 100 * 1000 * 1000
    rss, tail = _peak_rss_of([*cmd, exp_id, "t", "--stream", "stdout", "-n", "3"], env)
    assert tail == b"end 7\nend 8\nend 9\n" and rss < 100 * 1000 * 1000


def test_logs_follow_prints_new_output_until_the_task_ends(logs_cli):
    exp = run.Experiment([run.Task("slow", run.Partial(lp.slow_lines, 20, 0.15))],
                         executor=run.LocalExecutor(), tail_logs=False)
    exp.run(detach=True)
    assert exp.id is not None
    cmd, env = logs_cli
    proc = subprocess.Popen([*cmd, exp.id, "slow", "-f"], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    seen_at = time.monotonic()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    ended_at = time.monotonic()
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert lines == [f"line {i}" for i in range(20)] + ["done"]
    assert ended_at - seen_at > 1.0  # the first line came while the task still ran
    assert run.Experiment.from_id(exp.id).status().state == "succeeded"
