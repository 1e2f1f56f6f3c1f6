"""The CPU and memory limits of the cgroup this process lives in (v2 or v1), read from
``/sys/fs/cgroup``: what :mod:`steadyrun.observe.resources` counts as this machine's
capacity when it runs in a container, a Slurm job or a systemd slice. Missing or
unreadable files mean "no limit"; nothing here raises for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
