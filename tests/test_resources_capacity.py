"""Capacity detection: fake cgroup v1/v2 trees, a fake NVML, and this real machine."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from steadyrun.errors import TaskDefinitionError
from steadyrun.observe import resources
from steadyrun.observe.resources import CgroupLimits, cgroup_limits, gpu_indices, local_capacity

GiB = 1024**3
V1_UNLIMITED = "9223372036854771712"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proc-self-cgroup"
    p.write_text(text)
    return p


# --- cgroup v1 --------------------------------------------------------------------------


def test_v1_quota_and_memory_limit(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu" / "cpu.cfs_quota_us", "150000")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000")
    _write(root / "memory" / "memory.limit_in_bytes", str(2 * GiB))
    _write(root / "memory" / "memory.usage_in_bytes", str(GiB))
    _write(root / "memory" / "memory.stat", "cache 1\ntotal_inactive_file 268435456\n")
    proc = _proc_cgroup(tmp_path, "4:memory:/\n1:cpu,cpuacct:/\n0::/\n")
    limits = cgroup_limits(root, proc_cgroup=proc)
    assert limits == CgroupLimits(cpus=1.5, memory=2 * GiB, memory_usage=GiB - 256 * 1024**2,
                                  version=1)


def test_v1_unlimited_values_mean_no_limit(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000")
    _write(root / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    limits = cgroup_limits(root, proc_cgroup=tmp_path / "missing")
    assert (limits.cpus, limits.memory, limits.version) == (None, None, 1)


def test_v1_nested_cgroup_of_this_process_wins(tmp_path):
    root = tmp_path / "cg"
    _write(root / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    _write(root / "memory" / "jobs" / "abc" / "memory.limit_in_bytes", str(GiB))
    _write(root / "memory" / "jobs" / "abc" / "memory.usage_in_bytes", str(GiB // 4))
    _write(root / "cpu,cpuacct" / "jobs" / "cpu.cfs_quota_us", "200000")
    _write(root / "cpu,cpuacct" / "jobs" / "cpu.cfs_period_us", "100000")
    proc = _proc_cgroup(tmp_path, "4:memory:/jobs/abc\n3:cpu,cpuacct:/jobs/abc\n")
    limits = cgroup_limits(root, proc_cgroup=proc)
    assert limits.memory == GiB
    assert limits.memory_usage == GiB // 4
    assert limits.cpus == 2.0  # the parent's quota applies to its children


# --- cgroup v2 --------------------------------------------------------------------------


def test_v2_limits(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "cpu.max", "200000 100000")
    _write(root / "memory.max", str(GiB))
    _write(root / "memory.current", str(GiB // 2))
    _write(root / "memory.stat", "anon 1\ninactive_file 1024\n")
    limits = cgroup_limits(root, proc_cgroup=_proc_cgroup(tmp_path, "0::/\n"))
    assert limits == CgroupLimits(cpus=2.0, memory=GiB, memory_usage=GiB // 2 - 1024,
                                  version=2)


def test_v2_max_means_no_limit(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "cpu.max", "max 100000")
    _write(root / "memory.max", "max")
    limits = cgroup_limits(root, proc_cgroup=_proc_cgroup(tmp_path, "0::/\n"))
    assert (limits.cpus, limits.memory, limits.version) == (None, None, 2)


def test_v2_tightest_limit_along_the_path_wins(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "memory.max", "max")
    _write(root / "user.slice" / "memory.max", str(512 * 1024**2))
    _write(root / "user.slice" / "job" / "memory.max", str(GiB))
    _write(root / "user.slice" / "job" / "cpu.max", "50000 100000")
    proc = _proc_cgroup(tmp_path, "0::/user.slice/job\n")
    limits = cgroup_limits(root, proc_cgroup=proc)
    assert limits.memory == 512 * 1024**2
    assert limits.cpus == 0.5


def test_no_cgroup_files_at_all(tmp_path):
    assert cgroup_limits(tmp_path / "nothing", proc_cgroup=tmp_path / "nope") == CgroupLimits()


def test_garbage_in_files_is_tolerated(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "")
    _write(root / "cpu.max", "lots")
    _write(root / "memory.max", "???")
    limits = cgroup_limits(root, proc_cgroup=tmp_path / "nope")
    assert (limits.cpus, limits.memory) == (None, None)


# --- NVML -------------------------------------------------------------------------------


class FakeNVML:
    """A fake of pynvml's module interface: ``count`` devices, or an init failure."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own spelling
        pass

    def __init__(self, count: int = 2, fail_init: bool = False) -> None:
        self.count, self.fail_init = count, fail_init
        self.initialised = self.shut_down = False

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.count

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True


def test_gpu_indices_from_fake_nvml():
    nvml = FakeNVML(count=2)
    assert gpu_indices(nvml) == [0, 1]
    assert nvml.initialised and nvml.shut_down


def test_gpu_indices_without_library_is_empty():
    assert gpu_indices(FakeNVML(fail_init=True)) == []


def test_gpu_indices_on_this_machine_is_a_list():
    found = gpu_indices()  # no GPU here: pynvml missing or NVMLError_LibraryNotFound
    assert isinstance(found, list)
    assert all(isinstance(i, int) for i in found)


def test_capacity_narrows_gpus_to_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(resources, "gpu_indices", lambda nvml=None: gpu_indices(FakeNVML(4)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert local_capacity(cpus=1, memory="1GiB").gpus == [1, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_capacity(cpus=1, memory="1GiB").gpus == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local_capacity(cpus=1, memory="1GiB").gpus == [0, 1, 2, 3]


# --- capacity ---------------------------------------------------------------------------


def test_explicit_values_override_detection():
    cap = local_capacity(cpus=3, memory="4GiB", gpus=2)
    assert (cap.cpus, cap.memory, cap.gpus) == (3.0, 4 * GiB, [0, 1])
    assert local_capacity(cpus=1, memory=10, gpus=[2, 5]).gpus == [2, 5]


def test_bad_memory_value_names_the_problem():
    with pytest.raises(TaskDefinitionError, match="memory"):
        local_capacity(memory="lots")


def test_default_reserve_is_five_percent_capped_at_2gib(monkeypatch):
    monkeypatch.setattr(resources, "cgroup_limits", lambda *a, **k: CgroupLimits())
    total = psutil.virtual_memory().total
    cap = local_capacity(gpus=0)
    assert cap.memory == total - min(int(total * 0.05), 2 * GiB)
    assert local_capacity(gpus=0, reserve_memory=0).memory == total


def test_cgroup_limits_cap_the_machine(monkeypatch):
    monkeypatch.setattr(resources, "cgroup_limits",
                        lambda *a, **k: CgroupLimits(cpus=0.5, memory=GiB))
    cap = local_capacity(gpus=0)
    assert cap.cpus == 0.5
    assert cap.memory == GiB - int(GiB * 0.05)


def test_real_machine_detection_is_sane():
    cap = local_capacity()
    assert 0 < cap.cpus <= (os.cpu_count() or 1)
    assert 0 < cap.memory <= psutil.virtual_memory().total
    assert isinstance(cap.gpus, list)
    limits = cgroup_limits()  # this machine: cgroup v1 or v2, never raises
    assert limits.memory is None or limits.memory > 0


def test_available_memory_is_sane():
    avail = resources.available_memory()
    assert 0 < avail <= psutil.virtual_memory().total
