"""A memory cgroup per attempt: the kernel holds an attempt to its memory request.

With ``Resources(memory=..., enforce=True)`` the local executor's worker processes run in
a memory cgroup of their own whose hard limit is the request: cgroup v2
(``memory.max``, swap off, the whole group ended together) or v1
(``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` where it exists so swap
cannot dodge the limit), whichever hierarchy this machine mounts with a memory
controller. An attempt that grows past it is stopped by the kernel's OOM killer at the
limit, not a second later; the cgroup's counters (``oom_kill``, the peak usage) tell the
executor it was an out-of-memory kill, and :func:`finish` keeps them in the attempt
folder (``memory.json``) before it removes the cgroup.

Where no cgroup can be made (not root, no memory controller, a read-only hierarchy,
cgroup v2 whose own group holds processes) every function here says so (None, False)
and the engine enforces the request by sampling instead (see
:mod:`steadyrun.engine.watch`). ``STEADYRUN_CGROUP_ROOT`` points at another place where
the hierarchies are mounted (default ``/sys/fs/cgroup``); a folder without them turns
kernel enforcement off.

Cgroups go under this process's own memory cgroup, in a ``steadyrun`` folder that is
removed again when its last attempt's cgroup goes (the removal is safe against another
controller creating one at the same time: :func:`create` retries). Each cgroup's name
starts with its controller's pid: a controller killed while its attempts ran leaves
their cgroups behind, and the next controller to create one removes those that are
empty and whose controller is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass

#: Where the cgroup hierarchies are mounted (default ``/sys/fs/cgroup``).
ROOT_ENV = "STEADYRUN_CGROUP_ROOT"
#: The memory cgroup a worker joins before it runs its attempt (set by the executor).
PATH_ENV = "STEADYRUN_MEMORY_CGROUP"
#: What the attempt's memory cgroup recorded, in its folder (JSON, see :class:`Evidence`).
MEMORY_FILE = "memory.json"
#: Seconds between samples of an attempt whose request no cgroup holds (the engine's).
SAMPLING_INTERVAL = 0.1
#: Exit status of a process started by :func:`wrap` that could not join its cgroup.
EXIT_CANNOT_JOIN = 70

_PARENT = "steadyrun"
# $0 is the cgroup, "$@" the command; sh starts in about a millisecond, python in ten
_JOIN_THEN_EXEC = ('{ echo $$ > "$0/cgroup.procs"; } 2>/dev/null || '
                   '{ echo "steadyrun: could not join the memory cgroup $0" >&2; '
                   f'exit {EXIT_CANNOT_JOIN}; }}; exec "$@"')
_V1_NO_LIMIT = 1 << 62  # v1 writes "no limit" as a page-rounded 2**63 - 1


@dataclass(frozen=True)
class Mechanism:
    """How an enforced memory request is held on this machine: ``kind`` is ``"kernel"``
    (a memory cgroup per attempt, cgroup ``version`` 1 or 2) or ``"sampling"`` (the
    engine samples the attempt's process tree; ``reason`` says why no cgroup)."""

    kind: str
    version: int | None = None
    reason: str = ""

    def describe(self) -> str:
        """``kernel cgroup (v1)`` or ``sampling every 0.1 s (no memory cgroup: ...)``."""
        if self.kind == "kernel":
            return f"kernel cgroup (v{self.version})"
        return f"sampling every {SAMPLING_INTERVAL:g} s (no memory cgroup: {self.reason})"


@dataclass(frozen=True)
class Evidence:
    """What an attempt's memory cgroup counted, read just before it was removed.

    ``limit`` the hard limit (bytes), ``peak`` the most memory the attempt's processes
    were charged at once (None where the kernel does not keep it), ``oom_kills`` how many
    of its processes the kernel's OOM killer ended (None where the kernel does not
    count), ``failcnt`` how often usage hit the limit (v1 only).
    """

    version: int
    limit: int | None
    peak: int | None
    oom_kills: int | None
    failcnt: int | None = None

    @property
    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer ended a process of the attempt."""
        return bool(self.oom_kills)

    def describe(self) -> str:
        """One line for an error message: the limit, the peak and the kills."""
        from steadyrun.units import format_size

        kills = "unknown" if self.oom_kills is None else str(self.oom_kills)
        return (f"memory cgroup v{self.version}: limit {format_size(self.limit)}, "
                f"peak {format_size(self.peak)}, OOM kills {kills}")


class MemoryCgroup:
    """One attempt's memory cgroup (made by :func:`create`): ``path`` is its folder,
    ``version`` 1 or 2, ``limit`` its hard limit in bytes."""

    __slots__ = ("attempt_id", "path", "version", "limit")

    def __init__(self, attempt_id: str, path: str, version: int, limit: int) -> None:
        self.attempt_id, self.path, self.version, self.limit = attempt_id, path, version, limit

    def add(self, pid: int) -> bool:
        """Move process ``pid`` (all its threads; not its existing children) into the
        cgroup; False when the kernel refuses (the process is gone, no permission)."""
        try:
            _write(f"{self.path}/cgroup.procs", str(pid))
        except OSError:
            return False
        return True

    def evidence(self) -> Evidence:
        """The cgroup's counters now (see :class:`Evidence`)."""
        p = self.path
        if self.version == 2:
            events = _keyed(f"{p}/memory.events")
            return Evidence(2, _int(_read(f"{p}/memory.max")) or self.limit,
                            _int(_read(f"{p}/memory.peak")), events.get("oom_kill"))
        control = _keyed(f"{p}/memory.oom_control")
        return Evidence(1, _int(_read(f"{p}/memory.limit_in_bytes")) or self.limit,
                        _int(_read(f"{p}/memory.max_usage_in_bytes")),
                        control.get("oom_kill"), _int(_read(f"{p}/memory.failcnt")))

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the cgroup, killing (SIGKILL) what is still in it: it ran for an
        attempt that ended, so what is left is that attempt's. Then remove the parent
        ``steadyrun`` folder when it is empty. False when the cgroup would not go."""
        import signal

        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() >= deadline:
                    return False
            for pid in _pids(self.path):
                if pid != os.getpid():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        with _LOCK:
            _LIVE.pop(self.attempt_id, None)
        _remove_parent(os.path.dirname(self.path))
        return True


def mechanism() -> Mechanism:
    """What enforces memory requests here: a kernel cgroup (and which version), or
    sampling (and why no cgroup). The first call tries to make the ``steadyrun`` folder
    (and removes it again when empty): being allowed to is what counts, not the files'
    modes; later calls answer from memory."""
    root = os.environ.get(ROOT_ENV) or "/sys/fs/cgroup"
    known = _MECHANISM.get(root)
    if known is None:
        known = _MECHANISM[root] = _probe()
    return known


def create(attempt_id: str, limit: int) -> MemoryCgroup | None:
    """Make the memory cgroup of ``attempt_id`` with ``limit`` bytes as its hard limit
    (swap included where the kernel counts it); None where none can be made, the reason
    being :func:`mechanism`'s. The first call also sweeps the cgroups that controllers
    which are gone left behind."""
    found = _home()
    if isinstance(found, str) or limit <= 0:
        return None
    version, home = found
    parent = f"{home}/{_PARENT}"
    path = f"{parent}/{os.getpid()}-{_safe(attempt_id)}"
    if not _SWEPT:
        _SWEPT.append(parent)
        _sweep(parent)
    for _ in range(20):  # another controller may remove the parent between our steps
        try:
            _make_parent(parent, version)
            os.mkdir(path)
            break
        except FileExistsError:
            break
        except FileNotFoundError:
            continue
        except OSError:
            return None
    else:
        return None
    cg = MemoryCgroup(attempt_id, path, version, limit)
    try:
        _set_limit(path, version, limit)
    except OSError:
        cg.remove(timeout=0.1)
        return None
    with _LOCK:
        _LIVE[attempt_id] = cg
    return cg


def limited(attempt_id: str) -> bool:
    """True while ``attempt_id`` has a memory cgroup made by this process."""
    with _LOCK:
        return attempt_id in _LIVE


def get(attempt_id: str) -> MemoryCgroup | None:
    """The memory cgroup this process made for ``attempt_id``, if it still exists."""
    with _LOCK:
        return _LIVE.get(attempt_id)


def finish(attempt_id: str, attempt_dir: str | os.PathLike[str] | None) -> Evidence | None:
    """An attempt ended: read its cgroup's counters, keep them in ``attempt_dir``
    (``memory.json``), remove the cgroup; return the counters (None when the attempt had
    no cgroup). Never raises for a folder that cannot be written."""
    cg = get(attempt_id)
    if cg is None:
        return None
    ev = cg.evidence()
    if attempt_dir is not None:
        record = {"mechanism": "kernel", "path": cg.path, **asdict(ev)}
        with contextlib.suppress(OSError):
            _atomic_json(os.path.join(os.fspath(attempt_dir), MEMORY_FILE), record)
    cg.remove()
    return ev


def oom_message(ev: Evidence | None) -> str | None:
    """The message for an attempt whose process the kernel's OOM killer ended, or None
    when the counters say it did not."""
    if ev is None or not ev.oom_killed:
        return None
    return f"killed by the kernel's OOM killer at its memory limit ({ev.describe()})"


def join(path: str) -> str | None:
    """Move this process into the cgroup ``path``; return the memory cgroup it was in
    (for :func:`leave`; None when unknown). Raises :class:`OSError` when it cannot join
    (the cgroup is gone, or this process may not move itself)."""
    before = _own_memory_cgroup()
    try:
        _write(f"{path}/cgroup.procs", str(os.getpid()))
    except OSError as e:
        raise OSError(e.errno, f"could not join the memory cgroup {path}: {e.strerror}"
                      ) from None
    return before


def leave(before: str | None) -> None:
    """Move this process back to the memory cgroup :func:`join` returned."""
    if before:
        with contextlib.suppress(OSError):
            _write(f"{before}/cgroup.procs", str(os.getpid()))


def read_record(attempt_dir: str | os.PathLike[str]) -> dict[str, object] | None:
    """What :func:`finish` kept in ``attempt_dir`` (None when nothing was kept)."""
    try:
        with open(os.path.join(os.fspath(attempt_dir), MEMORY_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def wrap(command: list[str], path: str) -> list[str]:
    """``command`` started so that it runs in cgroup ``path`` from its first
    instruction: ``/bin/sh`` joins the cgroup and executes ``command`` in its place,
    same pid. It exits with status :data:`EXIT_CANNOT_JOIN` and a line on stderr when
    it cannot join."""
    return ["/bin/sh", "-c", _JOIN_THEN_EXEC, path, *command]


# --- internals ----------------------------------------------------------------------------

_LOCK = threading.Lock()
_LIVE: dict[str, MemoryCgroup] = {}
_HOME: dict[str, tuple[int, str] | str] = {}
_SWEPT: list[str] = []
_MECHANISM: dict[str, Mechanism] = {}


def _home() -> tuple[int, str] | str:
    """``(version, folder of this process's memory cgroup)``, or why there is none."""
    root = os.environ.get(ROOT_ENV) or "/sys/fs/cgroup"
    found = _HOME.get(root)
    if found is None:
        found = _HOME[root] = _find_home(root.rstrip("/") or "/")
    return found


def _probe() -> Mechanism:
    found = _home()
    if isinstance(found, str):
        return Mechanism("sampling", reason=found)
    version, home = found
    parent = f"{home}/{_PARENT}"
    try:
        _make_parent(parent, version)
    except OSError as e:
        return Mechanism("sampling", reason=f"cannot create a cgroup under {home} ({e.strerror})")
    _remove_parent(parent)
    return Mechanism("kernel", version)


def _find_home(root: str) -> tuple[int, str] | str:
    own = _own_cgroups()
    if os.path.exists(f"{root}/memory/memory.limit_in_bytes"):
        base = f"{root}/memory"
        rel = own.get("memory", "/")
        version = 1
    elif "memory" in (_read(f"{root}/cgroup.controllers") or "").split():
        base, rel, version = root, own.get("", "/"), 2
    elif os.path.isdir(root):
        return f"no memory controller mounted under {root}"
    else:
        return f"{root} does not exist"
    home = base + rel.rstrip("/")
    if not os.path.isdir(home):  # a cgroup namespace: our own group is its root
        home = base
    if os.geteuid() != 0 and not os.access(home, os.W_OK):
        return f"{home} is not writable by this user"
    return version, home


def _own_cgroups() -> dict[str, str]:
    """Controller -> this process's cgroup path ("" is the v2 entry)."""
    out: dict[str, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                out[name] = parts[2]
    return out


def _own_memory_cgroup() -> str | None:
    found = _home()
    if isinstance(found, str):
        return None
    version, _ = found
    root = os.environ.get(ROOT_ENV) or "/sys/fs/cgroup"
    own = _own_cgroups()
    rel = own.get("memory" if version == 1 else "")
    if rel is None:
        return None
    base = f"{root.rstrip('/')}/memory" if version == 1 else root.rstrip("/")
    return base + rel.rstrip("/")


def _sweep(parent: str) -> None:
    """Remove the empty cgroups that controllers which are gone left in ``parent``."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid, sep, _ = name.partition("-")
        if not sep or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its controller still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):  # one that still holds processes stays
            os.rmdir(f"{parent}/{name}")


def _make_parent(parent: str, version: int) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(parent)
    if version == 2:  # children of the parent get a memory controller
        for where in (os.path.dirname(parent), parent):
            if "memory" not in (_read(f"{where}/cgroup.subtree_control") or "").split():
                _write(f"{where}/cgroup.subtree_control", "+memory")


def _remove_parent(parent: str) -> None:
    """Remove the ``steadyrun`` folder when it is empty; a busy one stays (EBUSY or
    ENOTEMPTY: another attempt's cgroup is in it)."""
    with contextlib.suppress(OSError):
        os.rmdir(parent)


def _set_limit(path: str, version: int, limit: int) -> None:
    if version == 2:
        _write(f"{path}/memory.max", str(limit))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if os.path.exists(f"{path}/{name}"):
                _write(f"{path}/{name}", value)
        return
    _write(f"{path}/memory.limit_in_bytes", str(limit))
    if os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):  # memory + swap: no dodging
        _write(f"{path}/memory.memsw.limit_in_bytes", str(limit))


def _pids(path: str) -> list[int]:
    try:
        return [int(p) for p in (_read(f"{path}/cgroup.procs") or "").split()]
    except ValueError:
        return []


def _safe(attempt_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in attempt_id)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _V1_NO_LIMIT else value


def _keyed(path: str) -> dict[str, int]:
    """``key value`` lines (``memory.events``, ``memory.oom_control``) as a dict."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _atomic_json(path: str, data: dict[str, object]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, indent=1).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
