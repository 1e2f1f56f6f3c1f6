"""Process-tree sampling on real processes; a fake NVML (FakeNVML) for the GPU fields."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_nvml import FakeNVML, two_gpus
from steadyrun.attempt.proctree import kill_tree
from steadyrun.errors import TaskDefinitionError
from steadyrun.observe.monitor import AttemptMonitor, Monitor, Peaks, ProcessTreeSampler, TreeSample

MiB = 1024**2
GiB = 1024**3

# A root that starts one child and waits for it. The child says "ready", waits for "go",
# then does its work (allocate, or spin) and exits.
ROOT = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]]).wait()
"""
WAIT_FOR_GO = """
import pathlib, sys, time
d = pathlib.Path(sys.argv[1])
(d / "ready").touch()
while not (d / "go").exists():
    time.sleep(0.01)
"""
ALLOCATE = WAIT_FOR_GO + """
x = bytearray(b"\\x01") * (300 * 2**20)   # every page written: 300 MiB of RSS
(d / "allocated").touch()
time.sleep(1.5)
"""
SPIN = WAIT_FOR_GO + """
end = time.monotonic() + 1.5
while time.monotonic() < end:
    pass
"""
# the child spins and starts a grandchild that spins too: two busy processes keep the
# tree above 50% even when other tests share the two cores
SPIN_TWO = WAIT_FOR_GO + """
import subprocess
spin = "import time\\nend = time.monotonic() + 1.5\\nwhile time.monotonic() < end: pass"
grandchild = subprocess.Popen([sys.executable, "-c", spin])
end = time.monotonic() + 1.5
while time.monotonic() < end:
    pass
grandchild.wait()
"""
SLEEP = WAIT_FOR_GO.replace('(d / "go").exists()', "False")


def _start(child_code: str, folder: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ROOT, child_code, str(folder)], **kwargs)


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        kill_tree(p.pid, grace=0.5)
        p.wait()


# --- ProcessTreeSampler -----------------------------------------------------------------


def test_peak_rss_of_a_tree_includes_its_child(tmp_path, procs):
    """Peak tree RSS minus the tree's RSS before the child allocates is the 300 MiB the
    child allocated, within 10%; the tree holds the root and the child."""
    procs.append(root := _start(ALLOCATE, tmp_path))
    sampler = ProcessTreeSampler(gpu=False)
    _wait_for(tmp_path / "ready")
    for _ in range(3):
        before = sampler.sample({"job": root.pid})["job"]
        time.sleep(0.05)
    assert before.processes == 2 and before.pid == root.pid
    (tmp_path / "go").touch()
    peak = before
    deadline = time.monotonic() + 10
    while root.poll() is None and time.monotonic() < deadline:
        s = sampler.sample({"job": root.pid}).get("job")
        if s is not None and s.rss > peak.rss:
            peak = s
        time.sleep(0.1)
    assert (tmp_path / "allocated").exists()
    assert peak.processes == 2
    growth = peak.rss - before.rss
    assert abs(growth - 300 * MiB) < 30 * MiB, growth / MiB
    assert sampler.sample({"job": root.pid}) == {}  # the tree is gone: the key is left out


def test_cpu_of_a_busy_child_born_between_samples(tmp_path, procs):
    procs.append(root := _start(SPIN_TWO, tmp_path))
    sampler = ProcessTreeSampler(gpu=False)
    first = sampler.sample({"job": root.pid})["job"]
    assert first.cpu_percent == 0.0  # a tree's first sample primes
    _wait_for(tmp_path / "ready")
    time.sleep(0.05)
    sampler.sample({"job": root.pid})
    (tmp_path / "go").touch()
    busy = []
    for _ in range(4):  # the child spins for 1.5 s
        time.sleep(0.3)
        busy.append(sampler.sample({"job": root.pid})["job"])
    assert all(s.processes == 3 for s in busy[:-1])  # root, busy child, busy grandchild
    assert max(s.cpu_percent for s in busy) > 50, busy
    for a, b in zip(busy, busy[1:], strict=False):  # the percent is CPU time over wall time
        expected = 100 * (b.cpu_seconds - a.cpu_seconds) / (b.time - a.time)
        assert b.cpu_percent == pytest.approx(expected, abs=10)
    root.wait()
    assert busy[-1].cpu_seconds >= busy[0].cpu_seconds + 0.3
    assert busy[-1].read_bytes is not None and busy[-1].write_bytes is not None


def test_new_child_counts_its_cpu_since_it_was_born(tmp_path, procs):
    procs.append(root := _start(SPIN.replace("while not", "while False and not"), tmp_path))
    sampler = ProcessTreeSampler(gpu=False)
    first = sampler.sample({"job": root.pid})["job"]  # before the root starts its child
    _wait_for(tmp_path / "ready")
    time.sleep(0.4)
    s = sampler.sample({"job": root.pid})["job"]
    assert first.processes == 1 and s.processes == 2
    # primed, the new child would read 0; counted since its birth, it reads at least the
    # tree's CPU time over the whole window (it was born inside that window)
    window = 100 * (s.cpu_seconds - first.cpu_seconds) / (s.time - first.time)
    assert s.cpu_percent >= window - 5 and s.cpu_percent > 20, (s, window)


def test_orphans_in_the_roots_process_group_still_count(procs):
    sh = subprocess.Popen(["sh", "-c", "sleep 30 & exit 0"], start_new_session=True)
    sh.wait()  # the root is gone; its background sleep lives on in its group
    try:
        s = ProcessTreeSampler(gpu=False).sample({"job": sh.pid})
        assert s["job"].processes == 1 and s["job"].rss > 0
    finally:
        os.killpg(sh.pid, signal.SIGKILL)


def test_zombie_and_unknown_roots_are_left_out():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # exited but not reaped: a zombie
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    sampler = ProcessTreeSampler(gpu=False)
    assert sampler.sample({"zombie": p.pid, "never": 2**22 + 12345}) == {}
    p.wait()
    assert sampler.sample({}) == {}


def test_many_trees_in_one_sample(tmp_path, procs):
    folders = [tmp_path / str(i) for i in range(3)]
    for folder in folders:
        folder.mkdir()
        procs.append(_start(SLEEP, folder))
    for folder in folders:
        _wait_for(folder / "ready")
    roots = {f"t{i}": p.pid for i, p in enumerate(procs)}
    out = ProcessTreeSampler(gpu=False).sample(roots)
    assert set(out) == set(roots)
    assert all(s.processes == 2 and s.rss > 5 * MiB for s in out.values())
    assert {s.key for s in out.values()} == set(roots)


def test_portable_scan_without_proc_gives_the_same_tree(tmp_path, procs):
    procs.append(root := _start(SLEEP, tmp_path))
    _wait_for(tmp_path / "ready")
    sampler = ProcessTreeSampler(gpu=False)
    sampler._proc_fs = False  # psutil.process_iter, as on macOS
    first = sampler.sample({"job": root.pid})["job"]
    time.sleep(0.1)
    s = sampler.sample({"job": root.pid})["job"]
    assert first.processes == s.processes == 2
    assert s.rss > 5 * MiB and s.cpu_seconds >= first.cpu_seconds


# --- GPUs through a fake NVML -----------------------------------------------------------


def test_gpu_memory_per_pid_summed_over_the_tree(tmp_path, procs):
    procs.append(root := _start(SLEEP, tmp_path))
    _wait_for(tmp_path / "ready")
    other = ProcessTreeSampler(gpu=False).sample({"x": root.pid})["x"]
    assert other.gpu_memory is None  # no NVML: unknown, not zero
    import psutil

    child = psutil.Process(root.pid).children()[0].pid
    nvml = two_gpus(processes={0: [(root.pid, GiB), (2**22 + 7, 5 * GiB)],
                               1: [(child, 512 * MiB)]},
                    graphics={0: [(root.pid, GiB)]})  # same context twice: counted once
    procs.append(idle := subprocess.Popen(["sleep", "30"]))
    sampler = ProcessTreeSampler(nvml=nvml)
    s = sampler.sample({"job": root.pid, "idle": idle.pid})
    assert s["job"].gpu_memory == GiB + 512 * MiB
    assert s["job"].gpus == (0, 1)
    assert s["job"].gpu_utilization == 65.0  # mean of the two devices it uses
    assert (s["idle"].gpu_memory, s["idle"].gpus, s["idle"].gpu_utilization) == (0, (), None)
    sampler.close()
    assert nvml.inits == nvml.shutdowns == 1
    failing = ProcessTreeSampler(nvml=FakeNVML(fail_init=True)).sample({"job": root.pid})
    assert failing["job"].gpu_memory is None


# --- AttemptMonitor ---------------------------------------------------------------------


def test_attempt_monitor_batches_samples_and_keeps_peaks(tmp_path, procs, caplog):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        procs.append(_start(SLEEP, tmp_path / name))
        _wait_for(tmp_path / name / "ready")
    roots = {"a": procs[0].pid, "b": procs[1].pid}
    calls = {"n": 0}

    def source():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("executor busy")
        return roots

    batches: list[list[TreeSample]] = []
    nvml = two_gpus(processes={1: [(roots["a"], 2 * GiB)]})
    mon = AttemptMonitor(source, interval=0.05, sink=batches.append, batch_size=3, nvml=nvml)
    with caplog.at_level(logging.WARNING, logger="steadyrun.observe.monitor"), mon:
        time.sleep(0.6)
        assert set(mon.latest()) == {"a", "b"}
        del roots["b"]  # attempt b ended
        time.sleep(0.2)
        assert set(mon.latest()) == {"a"}
    assert "pids_source failed" in caplog.text  # logged, and sampling went on
    records = [r for batch in batches for r in batch]
    # a batch goes out once 3 records wait; a tick's records (2 here) stay together
    assert all(3 <= len(batch) <= 4 for batch in batches[:-1]) and len(batches) >= 4
    assert {r.key for r in records} == {"a", "b"}
    assert mon.ticks >= 8
    a = mon.peaks("a")
    assert isinstance(a, Peaks)
    assert a.samples == sum(r.key == "a" for r in records)
    assert a.peak_rss == max(r.rss for r in records if r.key == "a") > 5 * MiB
    assert a.peak_processes == 2 and a.peak_gpu_memory == 2 * GiB
    assert a.cpu_seconds > 0 and a.duration > 0.5
    assert mon.peaks("b").peak_gpu_memory == 0
    assert mon.peaks("nope") is None
    assert mon.forget("b") is not None and mon.peaks("b") is None
    assert mon.cpu_time > 0
    assert nvml.shutdowns == nvml.inits == 1


def test_attempt_monitor_flushes_on_time_and_survives_a_failing_sink(caplog):
    got: list[int] = []

    def sink(batch):
        got.append(len(batch))
        if len(got) == 1:
            raise OSError("database is locked")

    mon = AttemptMonitor(lambda: {"me": os.getpid()}, interval=0.05, sink=sink,
                         batch_size=1000, flush_every=0.15, gpu=False)
    with caplog.at_level(logging.WARNING, logger="steadyrun.observe.monitor"), mon:
        time.sleep(0.5)
    assert len(got) >= 3  # flushed by time, not by size, and again at stop
    assert "sink failed" in caplog.text


def test_attempt_monitor_rejects_a_bad_interval():
    with pytest.raises(TaskDefinitionError):
        AttemptMonitor(dict, interval=0)


# --- Monitor ----------------------------------------------------------------------------


def test_monitor_on_this_process_and_its_children():
    with Monitor(interval=0.05, nvml=FakeNVML()) as m:
        first = m.metrics()
        block = bytearray(b"\x01") * (100 * MiB)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6)"])
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            sum(range(1000))
        now = m.metrics()
        child.wait()
    del block
    assert {"cpu_percent", "rss", "memory_percent", "elapsed", "processes"} <= set(first)
    assert "gpu_memory" not in first  # NVML without devices: no GPU fields
    assert now["elapsed"] > 0.3 and now["rss"] > first["rss"]
    summary = m.summary()
    assert summary["samples"] == len(m.samples) >= 6
    assert summary["peak_rss"] >= first["rss"] + 90 * MiB
    assert summary["peak_processes"] >= 2  # the child it spawned was in the tree
    assert summary["max_cpu_percent"] > 30 and summary["mean_cpu_percent"] > 10
    assert summary["duration"] == pytest.approx(m.elapsed) and m.elapsed > 0.4
    assert "peak_gpu_memory" not in summary


def test_monitor_reports_gpu_fields_when_nvml_has_them():
    nvml = two_gpus(processes={0: [(os.getpid(), 3 * GiB)]})
    with Monitor(interval=0.05, nvml=nvml) as m:
        time.sleep(0.15)
        metrics = m.metrics()
    assert (metrics["gpu_memory"], metrics["gpu_utilization"]) == (3 * GiB, 40.0)
    assert m.summary()["peak_gpu_memory"] == 3 * GiB
    assert Monitor().metrics() == {}  # not started: nothing yet
