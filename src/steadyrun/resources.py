"""What this machine can run: cgroup-aware capacity, GPUs through NVML, free memory.

Limits come first from the cgroup this process lives in (a container, a Slurm job, a
systemd slice), then from the machine. psutil and NVML are imported only when a function
here is called, so ``import steadyrun`` stays light.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyrun.executors.base import Capacity
from steadyrun.units import parse_size

#: The memory reserve kept for the controller and the OS by default: 5% of the usable
#: memory, at most 2 GiB (a 24 GiB machine keeps about 1.2 GiB back).
RESERVE_FRACTION = 0.05
RESERVE_CAP = 2 * 1024**3

# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1; anything this large is none
_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class CgroupLimits:
    """Limits of this process's cgroup. ``None`` means no limit (or no cgroup found).

    ``cpus`` is the CPU quota in cores (``1.5`` for 150 ms per 100 ms), ``memory`` the
    memory limit in bytes; ``memory_usage`` what the cgroup uses now less reclaimable
    page cache (bytes), ``version`` 1 or 2 (None when no cgroup file could be read).
    """

    cpus: float | None = None
    memory: int | None = None
    memory_usage: int | None = None
    version: int | None = None


def cgroup_limits(root: str | os.PathLike[str] = "/sys/fs/cgroup", *,
                  proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup") -> CgroupLimits:
    """Read the CPU and memory limits of this process's cgroup (v2 or v1).

    The cgroup of this process (from ``proc_cgroup``) and each of its ancestors are
    read, and the tightest limit wins; where that path is not visible (a cgroup
    namespace), the files at the top of ``root`` are read. Missing or unreadable files
    mean "no limit": this never raises for them.
    """
    base = Path(root)
    paths = _own_cgroup_paths(proc_cgroup)
    if (base / "cgroup.controllers").exists() and not (base / "memory").is_dir():
        return _limits_v2(base, paths.get("", "/"))
    if (base / "memory").is_dir() or (base / "cpu").is_dir() or (base / "cpu,cpuacct").is_dir():
        return _limits_v1(base, paths)
    if (base / "cpu.max").exists() or (base / "memory.max").exists():
        return _limits_v2(base, paths.get("", "/"))
    return CgroupLimits()


def gpu_indices(nvml: Any = None) -> list[int]:
    """Indices of the NVIDIA GPUs NVML reports (``[]`` without a driver or NVML).

    ``nvml`` is a module with pynvml's interface (tests pass a fake); by default
    ``pynvml`` (package ``nvidia-ml-py``) is imported. An ImportError or any
    ``NVMLError`` (no library, no driver) gives ``[]``: a machine without GPUs is normal.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return []
    nvml_error: Any = getattr(nvml, "NVMLError", None) or OSError
    try:
        nvml.nvmlInit()
    except (nvml_error, OSError):
        return []
    try:
        return list(range(int(nvml.nvmlDeviceGetCount())))
    except (nvml_error, OSError):
        return []
    finally:
        with contextlib.suppress(nvml_error, OSError):
            nvml.nvmlShutdown()


def local_capacity(cpus: float | None = None, memory: int | str | None = None,
                   gpus: int | list[int] | None = None,
                   reserve_memory: int | str | None = None) -> Capacity:
    """What this machine can give to attempts at once.

    CPUs: the cgroup quota, else the CPUs this process may run on (its affinity).
    Memory: the cgroup limit or the machine's total, whichever is smaller, less
    ``reserve_memory`` (default :data:`RESERVE_FRACTION` of it, at most
    :data:`RESERVE_CAP`). GPUs: NVML's devices, narrowed to ``CUDA_VISIBLE_DEVICES`` when
    this process was given a list of indices. An explicit ``cpus``, ``memory`` (bytes or
    ``"16GiB"``, taken as is, no reserve) or ``gpus`` (a count or a list of indices)
    replaces what would be detected. Raises :class:`~steadyrun.errors.TaskDefinitionError`
    for an unreadable size.
    """
    limits: CgroupLimits | None = None
    if cpus is None or memory is None:
        limits = cgroup_limits()
    if cpus is None:
        machine = _machine_cpus()
        cpus = min(machine, limits.cpus) if limits and limits.cpus else machine
    mem = parse_size(memory, what="memory")
    if mem is None:
        import psutil

        total = psutil.virtual_memory().total
        if limits and limits.memory:
            total = min(total, limits.memory)
        reserve = parse_size(reserve_memory, what="reserve_memory")
        if reserve is None:
            reserve = min(int(total * RESERVE_FRACTION), RESERVE_CAP)
        mem = max(0, total - reserve)
    if gpus is None:
        gpu_list = _visible(gpu_indices())
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        gpu_list = list(range(gpus))
    else:
        gpu_list = [int(g) for g in gpus]
    return Capacity(cpus=float(cpus), memory=int(mem), gpus=gpu_list)


def available_memory() -> int:
    """Bytes that could be allocated now: the machine's available memory, or what is left
    under this cgroup's memory limit when that is less."""
    import psutil

    available = int(psutil.virtual_memory().available)
    limits = cgroup_limits()
    if limits.memory is not None and limits.memory_usage is not None:
        available = min(available, max(0, limits.memory - limits.memory_usage))
    return available


# --- helpers ----------------------------------------------------------------------------


def _machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _visible(indices: list[int]) -> list[int]:
    """Narrow NVML indices to ``CUDA_VISIBLE_DEVICES`` when it lists plain indices."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return indices
    value = value.strip()
    if value == "":
        return []
    try:
        wanted = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:  # UUIDs or MIG names: keep what NVML says
        return indices
    return [i for i in wanted if i in indices]


def _own_cgroup_paths(proc_cgroup: str | os.PathLike[str]) -> dict[str, str]:
    """Controller name -> cgroup path of this process ("" is the v2 unified entry)."""
    out: dict[str, str] = {}
    try:
        text = Path(proc_cgroup).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _candidates(mount: Path, own: str | None) -> list[Path]:
    """The process's cgroup folder under ``mount`` and its ancestors, deepest first; just
    ``mount`` when that path is not visible here."""
    dirs: list[Path] = []
    if own and own != "/":
        rel = Path(own.lstrip("/"))
        while str(rel) not in ("", "."):
            d = mount / rel
            if d.is_dir():
                dirs.append(d)
            rel = rel.parent
    dirs.append(mount)
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, *keys: str) -> int | None:
    text = _read(path)
    if not text:
        return None
    values = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
    for key in keys:
        if key in values:
            return _int(values[key])
    return None


def _tightest(found: list[tuple[float, Path]]) -> tuple[float, Path] | tuple[None, None]:
    return min(found, key=lambda t: t[0]) if found else (None, None)


def _limits_v2(base: Path, own: str) -> CgroupLimits:
    cpu_found: list[tuple[float, Path]] = []
    mem_found: list[tuple[float, Path]] = []
    read_any = False
    for d in _candidates(base, own):
        cpu_max = _read(d / "cpu.max")
        if cpu_max is not None:
            read_any = True
            quota, _, period = cpu_max.partition(" ")
            q, p = _int(quota), _int(period) or 100000
            if q is not None and q > 0 and p > 0:
                cpu_found.append((q / p, d))
        mem_max = _read(d / "memory.max")
        if mem_max is not None:
            read_any = True
            m = _int(mem_max)
            if m is not None and 0 < m < _UNLIMITED:
                mem_found.append((m, d))
    cpus, _ = _tightest(cpu_found)
    memory, mem_dir = _tightest(mem_found)
    usage = None
    if mem_dir is not None:
        current = _int(_read(mem_dir / "memory.current"))
        if current is not None:
            inactive = _stat_value(mem_dir / "memory.stat", "inactive_file") or 0
            usage = max(0, current - inactive)
    return CgroupLimits(cpus=cpus, memory=None if memory is None else int(memory),
                        memory_usage=usage, version=2 if read_any else None)


def _limits_v1(base: Path, own: dict[str, str]) -> CgroupLimits:
    cpu_found: list[tuple[float, Path]] = []
    mem_found: list[tuple[float, Path]] = []
    read_any = False
    cpu_mount = next((base / n for n in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
                      if (base / n).is_dir()), None)
    if cpu_mount is not None:
        for d in _candidates(cpu_mount, own.get("cpu")):
            q, p = _int(_read(d / "cpu.cfs_quota_us")), _int(_read(d / "cpu.cfs_period_us"))
            if q is not None:
                read_any = True
                if q > 0 and p:
                    cpu_found.append((q / p, d))
    mem_mount = base / "memory"
    if mem_mount.is_dir():
        for d in _candidates(mem_mount, own.get("memory")):
            m = _int(_read(d / "memory.limit_in_bytes"))
            if m is not None:
                read_any = True
                if 0 < m < _UNLIMITED:
                    mem_found.append((m, d))
    cpus, _ = _tightest(cpu_found)
    memory, mem_dir = _tightest(mem_found)
    usage = None
    if mem_dir is not None:
        current = _int(_read(mem_dir / "memory.usage_in_bytes"))
        if current is not None:
            inactive = _stat_value(mem_dir / "memory.stat", "total_inactive_file",
                                   "inactive_file") or 0
            usage = max(0, current - inactive)
    return CgroupLimits(cpus=cpus, memory=None if memory is None else int(memory),
                        memory_usage=usage, version=1 if read_any else None)
