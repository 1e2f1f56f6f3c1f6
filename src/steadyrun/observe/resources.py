"""What this machine can run: cgroup-aware capacity, GPUs through NVML, free memory.

Limits come first from the cgroup this process lives in (a container, a Slurm job, a
systemd slice), then from the machine. psutil and NVML are imported only when a function
here is called, so ``import steadyrun`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steadyrun.errors import InsufficientResources, TaskDefinitionError
from steadyrun.executors.base import Capacity
from steadyrun.observe._gpu import GpuInfo, NVMLSession
from steadyrun.observe.cgroups import CgroupLimits, cgroup_limits
from steadyrun.units import format_size, parse_size

#: The memory reserve kept for the controller and the OS by default: 5% of the usable
#: memory, at most 2 GiB (a 24 GiB machine keeps about 1.2 GiB back).
RESERVE_FRACTION = 0.05
RESERVE_CAP = 2 * 1024**3

def gpu_indices(nvml: Any = None) -> list[int]:
    """Indices of the NVIDIA GPUs NVML reports (``[]`` without a driver or NVML).

    ``nvml`` is a module with pynvml's interface (tests pass a fake); by default
    ``pynvml`` (package ``nvidia-ml-py``) is imported. An ImportError or any
    ``NVMLError`` (no library, no driver) gives ``[]``: a machine without GPUs is normal.
    """
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
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
        gpu_list = [int(g) for g in gpus]  # type: ignore[union-attr]
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


# --- snapshot: what this machine has now ------------------------------------------------


@dataclass(frozen=True)
class CpuInfo:
    """The CPUs: ``logical`` on the machine, ``usable`` by this process (its affinity),
    ``quota`` the cgroup's CPU quota in cores (None: no quota), ``percent`` how busy the
    whole machine was (0-100) since the previous snapshot of this process (None for the
    first one; see :func:`snapshot`)."""

    logical: int
    usable: int
    quota: float | None = None
    percent: float | None = None

    @property
    def cores(self) -> float:
        """The cores this process can use: its affinity, capped by the cgroup quota."""
        return min(float(self.usable), self.quota) if self.quota else float(self.usable)


@dataclass(frozen=True)
class MemoryInfo:
    """Memory in bytes, cgroup first: under a cgroup limit ``total`` is the limit and
    ``available`` the limit less the cgroup's usage (never more than the machine has);
    otherwise both are the machine's. ``source`` says which (``"machine"``, ``"cgroup v1"``,
    ``"cgroup v2"``); ``percent`` is the used share of ``total`` (0-100)."""

    total: int
    available: int
    percent: float
    source: str = "machine"
    machine_total: int = 0
    machine_available: int = 0
    cgroup_limit: int | None = None

    @property
    def free_fraction(self) -> float:
        return self.available / self.total if self.total else 0.0


@dataclass(frozen=True)
class DiskInfo:
    """The filesystem holding ``path`` (``label`` says why it matters, e.g. ``"store"``):
    sizes in bytes, ``mount`` its mount point, ``device`` its ``st_dev`` (equal devices
    are the same filesystem). ``free`` is what an unprivileged user may still write."""

    label: str
    path: str
    mount: str
    total: int
    used: int
    free: int
    device: int = 0

    @property
    def free_fraction(self) -> float:
        return self.free / self.total if self.total else 0.0


@dataclass(frozen=True)
class Snapshot:
    """What this machine has now: CPUs, memory, disks and NVIDIA GPUs.

    ``gpus`` is empty on a machine without GPUs, NVML or pynvml; ``gpu_error`` then says
    why when it was not simply "no device". ``time`` is a Unix timestamp.
    ``memory_enforcement`` says how ``Resources(memory=..., enforce=True)`` is held here
    (``kernel cgroup (v1)``, or sampling and why; see :mod:`steadyrun.attempt.memcg`).
    """

    time: float
    host: str
    cpu: CpuInfo
    memory: MemoryInfo
    disks: tuple[DiskInfo, ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    gpu_error: str | None = None
    cgroup_version: int | None = None
    memory_enforcement: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): nested dicts and lists of numbers and strings."""
        d = asdict(self)
        d["disks"] = [asdict(x) for x in self.disks]
        d["gpus"] = [asdict(x) for x in self.gpus]
        return d


def snapshot(paths: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]]
             | None = None, *, cpu_interval: float = 0.0, nvml: Any = None,
             limits: CgroupLimits | None = None, gpus: bool = True) -> Snapshot:
    """Take a :class:`Snapshot` of this machine (about a millisecond without GPUs).

    ``paths`` are the places whose filesystems to report: a mapping label -> path, or
    paths (their text is the label). By default the store (``$STEADYRUN_HOME``) and the
    working directory; a path that does not exist yet is measured at its nearest existing
    parent, one that cannot be read is left out.

    CPU percent does not block: like ``psutil.cpu_percent(interval=None)`` it is the busy
    share since the previous snapshot of this process, so the first snapshot has
    ``cpu.percent = None`` (it primes the count) and two taken within a clock tick keep
    the older reference. steadyrun keeps its own reference, so other callers of
    ``psutil.cpu_percent`` do not shorten the window. ``cpu_interval > 0`` blocks that
    many seconds to measure instead (what ``steadyrun resources`` does).

    ``nvml`` replaces pynvml (tests pass a fake); ``limits`` replaces the cgroup limits
    read from ``/sys/fs/cgroup``; ``gpus=False`` skips NVML. Missing GPUs, NVML or cgroup
    files never raise.
    """
    import psutil

    from steadyrun.attempt import memcg

    limits = cgroup_limits() if limits is None else limits
    cpu = CpuInfo(logical=psutil.cpu_count() or 1, usable=_machine_cpus(), quota=limits.cpus,
                  percent=_cpu_percent(psutil, cpu_interval))
    devices: list[GpuInfo] = []
    gpu_error = None
    if gpus:
        with NVMLSession(nvml) as session:
            devices, gpu_error = session.devices(), session.error
    return Snapshot(time=time.time(), host=os.uname().nodename, cpu=cpu,
                    memory=memory_info(limits), disks=tuple(_disks(psutil, paths)),
                    gpus=tuple(devices), gpu_error=gpu_error, cgroup_version=limits.version,
                    memory_enforcement=memcg.mechanism().describe())


_take = snapshot  # check() has a parameter of that name


def memory_info(limits: CgroupLimits | None = None) -> MemoryInfo:
    """The memory part of :func:`snapshot` (cgroup first), cheaper than a whole snapshot."""
    import psutil

    vm = psutil.virtual_memory()
    limits = cgroup_limits() if limits is None else limits
    total, available, source = int(vm.total), int(vm.available), "machine"
    if limits.memory is not None:
        total = min(total, limits.memory)
        if limits.memory_usage is not None:
            available = min(available, max(0, limits.memory - limits.memory_usage))
        available = min(available, total)
        source = f"cgroup v{limits.version}" if limits.version else "cgroup"
    percent = 100.0 * (total - available) / total if total else 0.0
    return MemoryInfo(total=total, available=available, percent=round(percent, 1),
                      source=source, machine_total=int(vm.total),
                      machine_available=int(vm.available), cgroup_limit=limits.memory)


def check(min_free_memory: float | int | str = 0.2, min_free_disk: float | int | str = 0.1,
          gpus: int = 0, *, snapshot: Snapshot | None = None) -> Snapshot:
    """Check that this machine has room to start work; return the :class:`Snapshot`.

    ``min_free_memory`` and ``min_free_disk`` are fractions (floats, ``0.2`` = 20% of the
    total must be free) or sizes (an int of bytes or ``"4GiB"``); memory is cgroup-aware,
    disk is every filesystem of :func:`snapshot`'s paths (the store and the working
    directory). ``gpus`` is how many GPUs must be visible (NVML devices, narrowed by
    ``CUDA_VISIBLE_DEVICES``). Pass ``snapshot`` to check one already taken.

    Raises :class:`~steadyrun.errors.InsufficientResources` listing every limit that
    failed, by how much and what to do; its ``failures`` attribute holds those lines and
    ``snapshot`` the figures. Raises :class:`~steadyrun.errors.TaskDefinitionError` for a
    threshold that is neither a fraction between 0 and 1 nor a size.
    """
    mem_need = _threshold(min_free_memory, "min_free_memory")
    disk_need = _threshold(min_free_disk, "min_free_disk")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise TaskDefinitionError(f"gpus: expected a count of GPUs (0 or more), got {gpus!r}")
    snap = snapshot if snapshot is not None else _take(gpus=gpus > 0)
    failures: list[str | None] = []
    m = snap.memory
    where = "" if m.source == "machine" else f", the {m.source} limit"
    failures.append(_shortage("free memory", m.available, m.total, where, mem_need,
                              "min_free_memory"))
    filesystems: dict[int, list[DiskInfo]] = {}
    for d in snap.disks:
        filesystems.setdefault(d.device, []).append(d)
    for same in filesystems.values():
        d, names = same[0], ", ".join(f"{x.label}: {x.path}" for x in same)
        failures.append(_shortage(f"free disk space on {d.mount} ({names})", d.free, d.total,
                                  "", disk_need, "min_free_disk"))
    failures = [f for f in failures if f]
    visible = _visible([g.index for g in snap.gpus])
    if gpus > len(visible):
        why = snap.gpu_error or f"NVML lists {len(snap.gpus)}"
        if not snap.gpu_error and "CUDA_VISIBLE_DEVICES" in os.environ:
            why += f", CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
        failures.append(f"{gpus} GPU{'s' if gpus != 1 else ''} required, {len(visible)} "
                        f"visible ({why}): run where there are GPUs or lower gpus")
    if failures:
        err = InsufficientResources(
            f"not enough resources on {snap.host} to start:\n"
            + "\n".join(f"  - {f}" for f in failures))
        err.failures = failures  # type: ignore[attr-defined]
        err.snapshot = snap  # type: ignore[attr-defined]
        raise err
    return snap


def format_snapshot(s: Snapshot) -> str:
    """A plain-text table of a :class:`Snapshot`, as ``steadyrun resources`` prints it."""
    c, m = s.cpu, s.memory
    quota = f"cgroup quota {c.quota:g} cores" if c.quota else "no cgroup quota"
    busy = "busy: not measured yet" if c.percent is None else f"busy {c.percent:.0f}%"
    limit = f"{m.source} limit" if m.cgroup_limit is not None else "no cgroup limit"
    lines = [
        f"Resources of {s.host} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.time))}",
        f"CPU     {c.logical} logical, {c.usable} usable, {quota}; {busy}",
        f"Memory  {_size(m.available)} available of {_size(m.total)} "
        f"({m.free_fraction:.0%} free; {limit}; machine {_size(m.machine_total)})",
    ]
    if s.memory_enforcement:
        lines.append(f"        memory enforcement: {s.memory_enforcement}")
    width = max((len(d.label) for d in s.disks), default=0)
    for i, d in enumerate(s.disks):
        lines.append(f"{'Disk' if i == 0 else '':<8}{d.label:<{width}}  {d.path} on {d.mount}: "
                     f"{_size(d.free)} free of {_size(d.total)} ({d.free_fraction:.0%})")
    if not s.gpus:
        lines.append("GPUs    none" + (f" ({s.gpu_error})" if s.gpu_error else ""))
    for g in s.gpus:
        used = (f"{_size(g.memory_used)} used of {_size(g.memory_total)}"
                if g.memory_total is not None else "memory unknown")
        util = "" if g.utilization is None else f", {g.utilization:.0f}% busy"
        temp = "" if g.temperature is None else f", {g.temperature:.0f} C"
        lines.append(f"GPU {g.index:<4}{g.name or 'unknown'}: {used}{util}{temp}")
    return "\n".join(lines)


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


# --- snapshot helpers -------------------------------------------------------------------

_CPU_LOCK = threading.Lock()
_cpu_last: Any = None  # psutil.cpu_times() at the previous snapshot of this process


def _cpu_percent(psutil: Any, interval: float) -> float | None:
    """Machine busy percent since this process's previous call (None on the first)."""
    global _cpu_last
    if interval > 0:
        with _CPU_LOCK:
            _cpu_last = psutil.cpu_times()
        time.sleep(interval)
    now = psutil.cpu_times()
    with _CPU_LOCK:
        percent = None if _cpu_last is None else _busy_percent(_cpu_last, now)
        if _cpu_last is None or percent is not None:  # keep a reference older than a tick
            _cpu_last = now
    return percent


def _busy_percent(before: Any, after: Any) -> float | None:
    def total_busy(t: Any) -> tuple[float, float]:  # as psutil counts: guests are in user
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total, total - t.idle - getattr(t, "iowait", 0.0)

    (total_a, busy_a), (total_b, busy_b) = total_busy(before), total_busy(after)
    if total_b - total_a <= 0:
        return None
    return round(max(0.0, min(100.0, 100.0 * (busy_b - busy_a) / (total_b - total_a))), 1)


def _disks(psutil: Any, paths: Any) -> list[DiskInfo]:
    if paths is None:
        from steadyrun.store.db import default_home

        paths = {"store": default_home(), "cwd": os.getcwd()}
    items = paths.items() if isinstance(paths, Mapping) else ((str(p), p) for p in paths)
    out = []
    for label, path in items:
        p = Path(path).expanduser().absolute()
        existing = p
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            usage = psutil.disk_usage(str(existing))
            device = os.stat(existing).st_dev
        except OSError:
            continue
        out.append(DiskInfo(label=str(label), path=str(p), mount=_mount_point(existing),
                            total=int(usage.total), used=int(usage.used),
                            free=int(usage.free), device=int(device)))
    return out


def _mount_point(path: Path) -> str:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def _threshold(value: Any, name: str) -> tuple[str, float]:
    """("fraction", 0.2) or ("bytes", 4 GiB) from a check() threshold."""
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise TaskDefinitionError(
                f"{name}: a fraction must be between 0 and 1, got {value!r}; write 0.2 for "
                "20%, or a size such as '4GiB'")
        return "fraction", value
    size = parse_size(value, what=name)
    return "bytes", float(size or 0)


def _shortage(what: str, free: int, total: int, where: str, need: tuple[str, float],
              knob: str) -> str | None:
    """What is short of ``need`` and what to do, or None when ``need`` is met."""
    kind, amount = need
    required = amount * total if kind == "fraction" else amount
    if free >= required:
        return None
    short, share = int(required - free + 0.999), (free / total if total else 0.0)
    if kind == "fraction":
        return (f"{what} is {_pct(share, amount)} ({_size(free)} of {_size(total)}{where}); "
                f"at least {amount * 100:g}% is required: free {_size(short)} more or lower "
                f"{knob}")
    return (f"{what} is {_size(free)} ({share:.0%} of {_size(total)}{where}); at least "
            f"{_size(int(amount))} is required: free {_size(short)} more or lower {knob}")


def _pct(value: float, limit: float) -> str:
    """``12%``; one decimal when rounding would make a failing share look like the limit."""
    text = f"{value:.0%}"
    return f"{value:.1%}" if text == f"{limit * 100:g}%" or value * 100 >= 99.5 else text


def _size(n: int | float | None) -> str:
    """``format_size`` with a space before the unit: ``2.9 GiB``."""
    text = format_size(n)
    unit = text.lstrip("0123456789.-")
    return text if not unit else f"{text[: -len(unit)]} {unit}"
