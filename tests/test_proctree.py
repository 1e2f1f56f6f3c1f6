"""kill_tree on real process trees: grandchildren, reparented orphans, SIGTERM-proof code."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from steadyrun.attempt.proctree import is_gone, kill_tree

pytestmark = pytest.mark.timeout(60)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_kills_children_and_grandchildren():
    # bash runs a background sleep (a grandchild of ours) and a python child of its own
    script = (f"sleep 1000 & {sys.executable} -c 'import time; time.sleep(1000)' & "
              "sleep 1000; wait")
    root = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        _wait_for(lambda: len(_descendants(root.pid)) >= 3)
        tree = [root.pid, *_descendants(root.pid)]
        killed = kill_tree(root.pid, grace=2.0)
        assert set(tree) <= set(killed)
        for pid in tree:
            assert is_gone(pid), f"pid {pid} survived"
        assert root.wait(5) != 0  # the status is still ours to read: kill_tree never reaps
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


def test_kills_reparented_orphans_through_the_process_group():
    # the subshell exits at once; its sleep is reparented away from our tree
    root = subprocess.Popen(["bash", "-c", "(sleep 1000 &); sleep 1000"],
                            start_new_session=True)
    try:
        def orphans() -> list[psutil.Process]:
            out = []
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if (os.getpgid(p.pid) == root.pid and p.pid != root.pid
                            and p.pid not in _descendants(root.pid)):
                        out.append(p)
                except (ProcessLookupError, PermissionError):
                    continue
            return out

        _wait_for(lambda: len(orphans()) >= 1)
        stray = [p.pid for p in orphans()]
        killed = kill_tree(root.pid, grace=2.0)
        for pid in stray:
            assert pid in killed
            assert is_gone(pid)
    finally:
        if root.poll() is None:
            root.kill()
        root.wait()


def test_sigterm_proof_process_gets_sigkill_after_grace():
    code = ("import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(1000)")
    root = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert root.stdout.readline().strip() == b"ready"
        t0 = time.monotonic()
        killed = kill_tree(root.pid, grace=0.5)
        elapsed = time.monotonic() - t0
        assert root.pid in killed
        assert 0.4 <= elapsed < 5
        assert root.wait(5) == -9
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
        root.stdout.close()


def test_missing_process_is_not_an_error():
    p = subprocess.Popen(["true"])
    p.wait()
    assert kill_tree(p.pid, grace=0.1) == []
    assert is_gone(p.pid)


def test_never_signals_our_own_process_group():
    # a child in our group (no new session): the group must not be killpg'ed
    child = subprocess.Popen(["sleep", "1000"])
    try:
        killed = kill_tree(child.pid, grace=1.0)
        assert killed == [child.pid]
        assert child.wait(5) == -15
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


SUBREAPER_WITH_DAEMONS = """
import os, signal, subprocess, sys, time
from steadyrun.attempt.guard import keep_descendants
assert keep_descendants()
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the snapshot can save us now
subprocess.run(["bash", "-c", "( setsid sleep 1000 & ) ; ( sleep 1000 & )"], check=True)
print("ready", flush=True)
time.sleep(1000)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux")
def test_daemons_of_a_subreaper_are_in_the_snapshot(subprocess_env):
    # a worker is its payload's subreaper: setsid and double-forked daemons stay its
    # descendants, so kill_tree finds them though they left its session and group
    proc = subprocess.Popen([sys.executable, "-c", SUBREAPER_WITH_DAEMONS], env=subprocess_env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        _wait_for(lambda: len(_descendants(proc.pid)) >= 2)
        daemons = _descendants(proc.pid)
        assert any(os.getsid(p) != os.getsid(proc.pid) for p in daemons)  # the setsid one
        ended = kill_tree(proc.pid, grace=0.5)
        assert set(daemons) <= set(ended)
        assert proc.wait(5) == -9  # SIGTERM ignored: SIGKILL after the grace
        _wait_for(lambda: all(is_gone(p) for p in daemons))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
