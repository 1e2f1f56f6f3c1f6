"""Machine snapshots and resource checks: real figures against psutil, fake cgroup trees,
a fake NVML for GPU fields, and the NVML-missing path of this machine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from fake_nvml import FakeNVML, two_gpus
from steadyrun.errors import InsufficientResources, TaskDefinitionError
from steadyrun.observe import resources
from steadyrun.observe.resources import (
    CgroupLimits,
    CpuInfo,
    DiskInfo,
    GpuInfo,
    MemoryInfo,
    Snapshot,
    cgroup_limits,
    check,
    format_snapshot,
    memory_info,
    snapshot,
)

GiB = 1024**3
MiB = 1024**2


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


# --- against psutil's own figures -------------------------------------------------------


def test_snapshot_matches_psutil(tmp_path, steadyrun_home):
    s = snapshot()
    vm = psutil.virtual_memory()
    limits = cgroup_limits()
    assert s.cpu.logical == psutil.cpu_count()
    assert s.cpu.usable == len(os.sched_getaffinity(0))
    assert s.cpu.quota == limits.cpus
    expected_total = min(vm.total, limits.memory) if limits.memory else vm.total
    assert s.memory.total == expected_total
    assert s.memory.machine_total == vm.total
    assert abs(s.memory.available - min(vm.available, expected_total)) < 256 * MiB
    assert s.memory.percent == pytest.approx(
        100 * (s.memory.total - s.memory.available) / s.memory.total, abs=0.1)
    labels = {d.label: d for d in s.disks}
    assert set(labels) == {"store", "cwd"}
    assert labels["store"].path == str(steadyrun_home)  # not created yet: measured at a parent
    for d in s.disks:
        du = psutil.disk_usage(d.mount)
        assert d.total == du.total
        assert abs(d.free - du.free) < max(GiB, du.total // 100)
        assert d.device == os.stat(d.mount).st_dev
    assert s.gpus == ()  # no GPU here: pynvml raises NVMLError_LibraryNotFound
    assert s.host and s.time > 0


def test_cpu_percent_primes_then_measures(monkeypatch):
    monkeypatch.setattr(resources, "_cpu_last", None)
    assert snapshot().cpu.percent is None  # the first one primes the count
    end = psutil.cpu_times()
    while sum(psutil.cpu_times()) - sum(end) < 0.2:  # let some CPU time pass
        sum(range(10000))
    busy = snapshot().cpu.percent
    assert busy is not None and 0 < busy <= 100
    blocking = snapshot(cpu_interval=0.1).cpu.percent
    assert blocking is not None and 0 <= blocking <= 100


def test_paths_mapping_and_missing_path(tmp_path):
    missing = tmp_path / "not" / "yet"
    s = snapshot({"data": missing})
    assert [d.label for d in s.disks] == ["data"]
    assert s.disks[0].path == str(missing)
    assert s.disks[0].total == psutil.disk_usage(str(tmp_path)).total
    s = snapshot([tmp_path])
    assert s.disks[0].label == str(tmp_path)


def test_to_dict_is_plain_json_and_format_names_everything():
    s = snapshot(nvml=two_gpus())
    d = s.to_dict()
    again = json.loads(json.dumps(d))
    assert again["memory"]["total"] == s.memory.total
    assert again["gpus"][1]["name"] == "NVIDIA H100 80GB HBM3"
    assert [x["label"] for x in again["disks"]] == ["store", "cwd"]
    text = format_snapshot(s)
    for word in ("CPU", "Memory", "Disk", "store", "cwd", "GPU 0", "GPU 1", "90% busy",
                 "71 C", "30.0 GiB used of 80.0 GiB"):
        assert word in text, word


# --- cgroup file trees ------------------------------------------------------------------


def test_cgroup_v1_limit_is_the_total(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "150000")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    _write(root / "memory" / "job" / "memory.limit_in_bytes", str(2 * GiB))
    _write(root / "memory" / "job" / "memory.usage_in_bytes", str(GiB + 256 * MiB))
    _write(root / "memory" / "job" / "memory.stat", "cache 9\ntotal_inactive_file 268435456\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/job\n2:cpu,cpuacct:/\n")
    limits = cgroup_limits(root, proc_cgroup=proc)
    s = snapshot(limits=limits)
    assert s.cgroup_version == 1
    assert (s.cpu.quota, s.cpu.cores) == (1.5, min(1.5, s.cpu.usable))
    m = s.memory
    assert (m.total, m.available, m.source, m.cgroup_limit) == (2 * GiB, GiB, "cgroup v1",
                                                                2 * GiB)
    assert m.percent == 50.0
    assert m.machine_total == psutil.virtual_memory().total
    again = memory_info(limits)  # the memory part alone, same figures under the limit
    assert (again.total, again.available, again.source) == (m.total, m.available, m.source)


def test_cgroup_v2_limit_is_the_total(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "cpu.max", "max 100000")
    _write(root / "app" / "memory.max", str(4 * GiB))
    _write(root / "app" / "memory.current", str(3 * GiB))
    _write(root / "app" / "memory.stat", "anon 1\ninactive_file 1073741824\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app\n")
    s = snapshot(limits=cgroup_limits(root, proc_cgroup=proc))
    assert s.cgroup_version == 2
    assert s.cpu.quota is None
    assert (s.memory.total, s.memory.available, s.memory.source) == (4 * GiB, 2 * GiB,
                                                                     "cgroup v2")
    assert "cgroup v2 limit" in format_snapshot(s)


def test_cgroup_usage_above_limit_means_nothing_available():
    limits = CgroupLimits(memory=GiB, memory_usage=GiB + 5, version=2)
    assert memory_info(limits).available == 0


# --- check() ----------------------------------------------------------------------------


def _snap(*, total=23.5 * GiB, available=2.9 * GiB, disk_free=0.05, gpus=(), gpu_error=None,
          source="machine") -> Snapshot:
    total, available = int(total), int(available)
    disk_total = 50 * GiB
    free = int(disk_total * disk_free)
    disks = tuple(DiskInfo(label=label, path=path, mount="/work", total=disk_total,
                           used=disk_total - free, free=free, device=7)
                  for label, path in (("store", "/work/.steadyrun"), ("cwd", "/work/main")))
    return Snapshot(time=0.0, host="node1", cpu=CpuInfo(logical=2, usable=2),
                    memory=MemoryInfo(total=total, available=available,
                                      percent=100 * (total - available) / total,
                                      source=source, machine_total=total,
                                      machine_available=available),
                    disks=disks, gpus=tuple(gpus), gpu_error=gpu_error)


def test_check_lists_every_failing_limit_with_what_to_do(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = _snap(gpu_error="NVML is not available: NVML Shared Library Not Found")
    with pytest.raises(InsufficientResources) as info:
        check(0.2, 0.1, gpus=2, snapshot=s)
    e = info.value
    assert e.failures == [
        "free memory is 12% (2.9 GiB of 23.5 GiB); at least 20% is required: "
        "free 1.8 GiB more or lower min_free_memory",
        "free disk space on /work (store: /work/.steadyrun, cwd: /work/main) is 5% "
        "(2.5 GiB of 50.0 GiB); at least 10% is required: free 2.5 GiB more or lower "
        "min_free_disk",  # one filesystem, named once with both of its uses
        "2 GPUs required, 0 visible (NVML is not available: NVML Shared Library Not Found): "
        "run where there are GPUs or lower gpus",
    ]
    assert str(e).startswith("not enough resources on node1 to start:\n  - free memory is 12%")
    assert e.snapshot is s


def test_check_passes_and_returns_the_snapshot():
    s = _snap(available=10 * GiB, disk_free=0.5,
              gpus=[GpuInfo(index=0, name="fake"), GpuInfo(index=1, name="fake")])
    assert check(0.2, 0.1, gpus=2, snapshot=s) is s
    assert check(0.0, 0.0, snapshot=_snap(available=0, disk_free=0.0)) is not None


def test_check_only_the_failing_limit_is_listed():
    with pytest.raises(InsufficientResources) as info:
        check(min_free_memory=0.5, snapshot=_snap(available=10 * GiB, disk_free=0.5))
    assert len(info.value.failures) == 1
    assert info.value.failures == [
        "free memory is 43% (10.0 GiB of 23.5 GiB); at least 50% is required: "
        "free 1.8 GiB more or lower min_free_memory"]


def test_check_under_a_cgroup_names_the_limit():
    s = _snap(total=4 * GiB, available=GiB // 2, disk_free=0.5, source="cgroup v2")
    with pytest.raises(InsufficientResources, match=r"12% \(512.0 MiB of 4.0 GiB, the cgroup "
                                                    r"v2 limit\)"):
        check(snapshot=s)


def test_check_with_sizes_and_visible_devices(monkeypatch):
    s = _snap(available=3 * GiB, disk_free=0.5,
              gpus=[GpuInfo(index=0), GpuInfo(index=1)])
    with pytest.raises(InsufficientResources) as info:
        check(min_free_memory="4GiB", min_free_disk=10 * GiB, snapshot=s)
    assert info.value.failures == [
        "free memory is 3.0 GiB (13% of 23.5 GiB); at least 4.0 GiB is required: "
        "free 1.0 GiB more or lower min_free_memory"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(InsufficientResources, match="2 GPUs required, 1 visible "
                                                    r"\(NVML lists 2, CUDA_VISIBLE_DEVICES=1\)"):
        check(0.0, 0.0, gpus=2, snapshot=s)


@pytest.mark.parametrize("kwargs", [{"min_free_memory": 20.0}, {"min_free_disk": -0.1},
                                    {"min_free_memory": "lots"}, {"gpus": -1},
                                    {"gpus": 1.5}])
def test_check_rejects_bad_thresholds(kwargs):
    with pytest.raises(TaskDefinitionError):
        check(**kwargs, snapshot=_snap())


def test_check_on_this_machine_takes_its_own_snapshot():
    s = check(0.0, 0.0)
    assert isinstance(s, Snapshot) and s.memory.total > 0
    assert s.gpus == () and s.gpu_error is None  # no GPU asked for: NVML not queried
    with pytest.raises(InsufficientResources, match="1 GPU required, 0 visible"):
        check(0.0, 0.0, gpus=1)


# --- GPUs through NVML ------------------------------------------------------------------


def test_gpu_fields_from_fake_nvml():
    nvml = two_gpus(unsupported=("temperature",))
    s = snapshot(nvml=nvml)
    assert [g.index for g in s.gpus] == [0, 1]
    g = s.gpus[1]
    assert (g.name, g.uuid, g.memory_total, g.memory_used, g.utilization) == (
        "NVIDIA H100 80GB HBM3", "GPU-fake-1", 80 * GiB, 30 * GiB, 90.0)
    assert g.temperature is None  # not supported by this device: None, not an error
    assert s.gpu_error is None
    assert nvml.inits == nvml.shutdowns == 1


def test_nvml_library_missing_means_no_gpus():
    s = snapshot(nvml=FakeNVML(fail_init=True))
    assert s.gpus == ()
    assert "NVML Shared Library Not Found" in s.gpu_error
    assert "GPUs    none (NVML is not available" in format_snapshot(s)


def test_pynvml_not_installed_means_no_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    s = snapshot()
    assert s.gpus == ()
    assert "pynvml is not installed" in s.gpu_error


def test_real_pynvml_on_a_machine_without_gpus():
    pynvml = pytest.importorskip("pynvml")
    s = snapshot(nvml=pynvml)
    assert s.gpus == ()
    assert s.gpu_error is None or "NVML" in s.gpu_error
