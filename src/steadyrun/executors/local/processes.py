"""The process-backed strategies of :class:`~steadyrun.executors.local.executor.LocalExecutor`:
a pool of reusable worker processes (``process``) and one fresh worker process per
attempt (``subprocess``). Each worker leads its own session and is the child subreaper of
what its payload starts, so stopping it (SIGTERM, grace, SIGKILL) reaches its whole
tree, daemons included, and it ends its leftovers itself when the payload ends. When a
worker dies before it could (killed from outside), the processes tagged with its
attempt id are found and ended here. Every exit goes through
:func:`steadyrun.attempt.outcome.outcome_of`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from steadyrun.attempt import folder, memcg, proctree, worker
from steadyrun.attempt.outcome import outcome_of, split_status
from steadyrun.config import secrets
from steadyrun.errors import ExecutorError
from steadyrun.executors.base import AttemptSpec, ErrorInfo, Outcome, pickle_payload

if TYPE_CHECKING:
    from steadyrun.executors.local.executor import LocalExecutor


# --- process pool -----------------------------------------------------------------------


class _PoolWorker:
    __slots__ = ("popen", "conn", "pidfd", "spec")

    def __init__(self, popen: subprocess.Popen[bytes], conn: Any, pidfd: int | None) -> None:
        self.popen, self.conn, self.pidfd = popen, conn, pidfd
        self.spec: AttemptSpec | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


class _ProcessPool:
    """Reusable ``python -m steadyrun.attempt.worker --pool FD`` processes, each in its own
    session, talking over a socket pair. Started with subprocess rather than
    multiprocessing so the user's ``__main__`` is never re-imported in them."""

    def __init__(self, ex: LocalExecutor) -> None:
        self._ex = ex
        self._parent_path = os.pathsep.join(p for p in sys.path if p)
        self._pending: deque[tuple[AttemptSpec, bytes]] = deque()
        self._lock = threading.Lock()
        self._done: deque[Outcome] = deque()
        self._wake_r, self._wake_w = _wake_pipe()
        self._killers: list[threading.Thread] = []
        self._workers: list[_PoolWorker] = []
        for _ in range(ex._pool_size()):
            self._workers.append(self._spawn())

    def _spawn(self) -> _PoolWorker:
        import socket
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.pop(folder.ATTEMPT_ID_ENV, None)  # each attempt gets its own tag
        env[worker.PARENT_PATH_ENV] = self._parent_path
        env[folder.CONTROLLER_PID_ENV] = str(os.getpid())
        env[worker.GRACE_ENV] = str(self._ex.grace_period)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "steadyrun.attempt.worker", "--pool", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        except OSError as e:
            ours.close()
            raise ExecutorError(f"could not start a pool worker process: {e}") from e
        finally:
            theirs.close()
        return _PoolWorker(popen, Connection(ours.detach()), _pidfd(popen.pid))

    def launch(self, spec: AttemptSpec) -> None:
        # secrets are read now, in this process; the values travel in memory only
        payload = secrets.resolve(spec.payload, f"task {spec.task!r}")
        blob = pickle_payload(dataclasses.replace(spec, payload=payload), "a worker process",
                              ", or strategy='thread'")
        self._pending.append((spec, blob))
        self._dispatch()

    def _dispatch(self) -> None:
        for w in self._workers:
            if not self._pending:
                return
            if w.spec is None:
                spec, blob = self._pending.popleft()
                w.spec = spec
                # a dead worker is noticed by wait(), which reports the attempt as lost
                env: dict[str, str | None] = dict(self._ex._attempt_env(spec))
                env[folder.CONTROLLER_PID_ENV] = None  # the worker knows it from its start
                cg = _memory_cgroup(spec)  # the worker joins it before the payload loads
                env[memcg.PATH_ENV] = cg.path if cg is not None else None
                with contextlib.suppress(OSError):
                    w.conn.send((spec.attempt_id, blob, os.fspath(spec.attempt_dir), env))

    def wait(self, timeout: float) -> list[Outcome]:
        from multiprocessing.connection import wait as mp_wait

        outs: list[Outcome] = []
        deadline = _now() + timeout
        while True:
            with self._lock:
                while self._done:
                    outs.append(self._done.popleft())
            remaining = 0.0 if outs else max(0.0, deadline - _now())
            by_obj: dict[Any, _PoolWorker] = {}
            for w in self._workers:
                if w.pidfd is not None:
                    by_obj[w.pidfd] = w
                if w.spec is not None or w.pidfd is None:  # without a pidfd: EOF says dead
                    by_obj[w.conn] = w
            ready = mp_wait([*by_obj, self._wake_r], timeout=remaining)
            dead: list[_PoolWorker] = []
            for obj in ready:
                if isinstance(obj, int) and obj == self._wake_r:
                    _drain(self._wake_r)
                    continue
                w = by_obj[obj]
                if obj is w.conn and w.spec is not None:
                    out = self._receive(w)
                    if out is not None:
                        outs.append(out)
                        continue
                if w not in dead:
                    dead.append(w)
            for w in dead:
                outs.extend(self._replace_dead(w))
            self._dispatch()
            if outs or _now() >= deadline:
                return outs

    def _receive(self, w: _PoolWorker) -> Outcome | None:
        try:
            aid, kind, value_bytes, error, exit_code = w.conn.recv()
        except (EOFError, OSError):
            return None  # it died: reported as lost by the caller
        spec, w.spec = w.spec, None
        if spec is None or spec.attempt_id != aid:
            return None
        oom_kill = _oom_kill(spec)
        if kind is not None:
            return outcome_of(aid, exit_code=exit_code, error=error or {
                "type": "Error", "message": kind, "oom": kind == "oom"}, pid=w.pid,
                oom_kill=oom_kill)
        if value_bytes is not None:
            import pickle

            try:
                value = pickle.loads(value_bytes)
            except Exception:  # not loadable here: the engine reads the result file, says why
                pass
            else:
                return outcome_of(aid, exit_code=exit_code, value=value, pid=w.pid)
        return outcome_of(aid, exit_code=exit_code, pid=w.pid)

    def _replace_dead(self, w: _PoolWorker) -> list[Outcome]:
        """A pool worker died (or closed its socket): report its attempt through the
        outcome rules (a signal is ``lost``; ``os._exit(n)`` in the payload is ``error``
        with code ``n``), end what it left, start a replacement."""
        if w not in self._workers:
            return []
        self._workers.remove(w)
        if w.popen.poll() is None:  # its socket closed but it runs on: end it
            proctree.kill_tree(w.pid, 0.5)
        # the rest of its group (it is not reaped yet, so the group id is still its own)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.pid, signal.SIGKILL)
        code = w.popen.wait()
        _close_worker(w)
        self._workers.append(self._spawn())
        if w.spec is None:
            return []
        aid, directory = w.spec.attempt_id, os.fspath(w.spec.attempt_dir)
        _end_tagged(aid)  # it died before it could end its payload's daemons
        exit_code, sig = split_status(code)
        return [outcome_of(aid, exit_code=exit_code, signal=sig,
                           error=folder.read_error(directory) if sig is None else None,
                           has_result=folder.has_result(directory), pid=w.pid,
                           process=f"the pool worker process (pid {w.pid})",
                           oom_kill=_oom_kill(w.spec))]

    def stop(self, attempt_id: str, kind: str) -> None:
        for item in self._pending:
            if item[0].attempt_id == attempt_id:
                self._pending.remove(item)
                with self._lock:
                    self._done.append(_stopped(attempt_id, kind, "before it started"))
                os.write(self._wake_w, b"x")
                return
        w = next((w for w in self._workers
                  if w.spec is not None and w.spec.attempt_id == attempt_id), None)
        if w is None:
            return
        self._workers.remove(w)
        self._workers.append(self._spawn())
        t = threading.Thread(target=self._kill, args=(w, kind), daemon=True,
                             name="steadyrun-stop")
        t.start()
        self._killers = [k for k in self._killers if k.is_alive()] + [t]
        self._dispatch()

    def _kill(self, w: _PoolWorker, kind: str) -> None:
        proctree.kill_tree(w.pid, self._ex.grace_period)
        rc = w.popen.wait()
        _close_worker(w)
        aid = w.spec.attempt_id if w.spec else ""
        _end_tagged(aid)
        if w.spec is not None:
            _oom_kill(w.spec)  # stopped: the stop's kind wins; the cgroup's record is kept
        exit_code, sig = split_status(rc)
        out = outcome_of(aid, exit_code=exit_code, signal=sig, stopped=kind, pid=w.pid)
        with self._lock:
            self._done.append(out)
        with contextlib.suppress(OSError):  # closed meanwhile
            os.write(self._wake_w, b"x")

    def pids(self) -> dict[str, int]:
        return {w.spec.attempt_id: w.pid for w in self._workers if w.spec is not None}

    def free_slots(self) -> int:
        idle = sum(1 for w in self._workers if w.spec is None)
        return max(0, idle - len(self._pending))

    def close(self) -> None:
        self._pending.clear()
        busy = [w for w in self._workers if w.spec is not None]
        for w in self._workers:
            if w.spec is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
        _kill_parallel([w.pid for w in busy], self._ex.grace_period)
        for w in self._workers:
            try:
                w.popen.wait(2.0)
            except subprocess.TimeoutExpired:
                proctree.kill_tree(w.pid, 0.5)
                w.popen.wait()
            _close_worker(w)
            if w.spec is not None:
                _oom_kill(w.spec)
        for t in self._killers:
            t.join(self._ex.grace_period + 6)
        self._workers = []
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


def _close_worker(w: _PoolWorker) -> None:
    w.conn.close()
    if w.pidfd is not None:
        os.close(w.pidfd)
        w.pidfd = None


# --- subprocess -------------------------------------------------------------------------


class _Child:
    __slots__ = ("spec", "popen", "pidfd", "stop_kind")

    def __init__(self, spec: AttemptSpec, popen: subprocess.Popen[bytes], pidfd: int | None):
        self.spec, self.popen, self.pidfd = spec, popen, pidfd
        self.stop_kind: str | None = None


class _Subprocesses:
    def __init__(self, ex: LocalExecutor) -> None:
        self._ex = ex
        self._lock = threading.Lock()
        self._children: dict[str, _Child] = {}
        self._pending: deque[AttemptSpec] = deque()
        self._done: deque[Outcome] = deque()
        self._exited: deque[str] = deque()  # fallback waiter threads (no pidfd)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = _wake_pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._killers: list[threading.Thread] = []
        self._parent_path = os.pathsep.join(p for p in sys.path if p)

    def launch(self, spec: AttemptSpec) -> None:
        directory = os.fspath(spec.attempt_dir)
        # the file keeps env names only; the values reach the worker through its
        # environment (secrets are read now, in this process)
        payload, handed = secrets.handoff(spec.payload, f"task {spec.task!r}")
        if handed is not None:
            spec = dataclasses.replace(spec, env={**spec.env, worker.HANDED_ENV: handed})
        try:
            # pickle: the worker is this interpreter, and skips importing YAML (20 ms)
            worker.write_payload(payload, directory, prefer="pickle")
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its payload cannot be "
                f"written to {directory} ({type(e).__name__}: {e}); use module-level "
                "functions and picklable arguments") from e
        if self._ex.gang is not None:  # the node agent reads it to start the ranks
            from steadyrun.launchers import write_gang

            write_gang(directory, self._ex.gang)
        if self.free_slots() == 0:  # the engine admits no more than free_slots(): defensive
            self._pending.append(spec)
        else:
            self._start(spec)

    def free_slots(self) -> int | None:
        limit = self._ex.max_workers
        if limit is None:
            return None
        with self._lock:
            running = len(self._children)
        return max(0, limit - running - len(self._pending))

    def _start(self, spec: AttemptSpec) -> None:
        directory = os.fspath(spec.attempt_dir)
        env = dict(os.environ)
        env[worker.PARENT_PATH_ENV] = self._parent_path
        env.update(self._ex._attempt_env(spec))
        gang = self._ex.gang
        entry = "steadyrun.attempt.worker" if gang is None else "steadyrun.launchers.node"
        command = [sys.executable, "-m", entry, directory]
        cg = _memory_cgroup(spec if gang is None else dataclasses.replace(
            spec, resources=gang.total(spec.resources)))  # the whole gang's share
        if cg is not None:  # in its memory cgroup from its first instruction
            command = memcg.wrap(command, cg.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(os.path.join(directory, folder.STDOUT_LOG), flags, 0o600)
        err = os.open(os.path.join(directory, folder.STDERR_LOG), flags, 0o600)
        try:
            popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, cwd=self._ex._package_dir(spec),
                stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as e:
            _oom_kill(spec)  # removes the cgroup
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: could not start "
                f"{sys.executable} -m {entry}: {e}") from e
        finally:
            os.close(out)
            os.close(err)
        pidfd = _pidfd(popen.pid)
        child = _Child(spec, popen, pidfd)
        with self._lock:
            self._children[spec.attempt_id] = child
        if pidfd is not None:
            self._selector.register(pidfd, selectors.EVENT_READ, spec.attempt_id)
        else:
            threading.Thread(target=self._wait_child, args=(child,), daemon=True).start()

    def _wait_child(self, child: _Child) -> None:
        child.popen.wait()
        with self._lock:
            self._exited.append(child.spec.attempt_id)
        os.write(self._wake_w, b"x")

    def wait(self, timeout: float) -> list[Outcome]:
        outs: list[Outcome] = []
        deadline = _now() + timeout
        while True:
            with self._lock:
                while self._done:
                    outs.append(self._done.popleft())
                exited = list(self._exited)
                self._exited.clear()
            for aid in exited:
                out = self._finish(aid)
                if out is not None:
                    outs.append(out)
            remaining = 0.0 if outs else max(0.0, deadline - _now())
            for key, _ in self._selector.select(remaining):
                if key.data is None:
                    _drain(self._wake_r)
                else:
                    out = self._finish(key.data)
                    if out is not None:
                        outs.append(out)
            limit = self._ex.max_workers
            while self._pending and (limit is None or len(self._children) < limit):
                spec = self._pending.popleft()
                try:
                    self._start(spec)
                except ExecutorError as e:  # a queued attempt that cannot start fails
                    outs.append(Outcome(spec.attempt_id, "error", message=str(e),
                                        error=ErrorInfo("ExecutorError", str(e))))
            if outs or _now() >= deadline:
                return outs

    def _finish(self, aid: str) -> Outcome | None:
        """Classify a root process that exited on its own (not stopped by us)."""
        with self._lock:
            child = self._children.get(aid)
            if child is None or child.stop_kind is not None:
                return None
            del self._children[aid]
        if child.pidfd is not None:
            self._selector.unregister(child.pidfd)
            os.close(child.pidfd)
        pid = child.popen.pid
        if child.pidfd is not None:  # not reaped yet: the zombie root keeps its group id
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # what is left of its group: no orphans
        rc = child.popen.wait()
        directory = os.fspath(child.spec.attempt_dir)
        exit_code, sig = split_status(rc)
        if sig is not None:  # killed from outside before it could end its payload's daemons
            _end_tagged(aid)
        return outcome_of(aid, exit_code=exit_code, signal=sig,
                          error=folder.read_error(directory) if rc != 0 else None,
                          has_result=folder.has_result(directory), pid=pid,
                          oom_kill=_oom_kill(child.spec))

    def stop(self, attempt_id: str, kind: str) -> None:
        for spec in self._pending:
            if spec.attempt_id == attempt_id:
                self._pending.remove(spec)
                with self._lock:
                    self._done.append(_stopped(attempt_id, kind, "before it started"))
                os.write(self._wake_w, b"x")
                return
        with self._lock:
            child = self._children.get(attempt_id)
            if child is None or child.stop_kind is not None:
                return
            child.stop_kind = kind
        if child.pidfd is not None:
            self._selector.unregister(child.pidfd)
        t = threading.Thread(target=self._kill, args=(child,), daemon=True,
                             name="steadyrun-stop")
        t.start()
        self._killers = [k for k in self._killers if k.is_alive()] + [t]

    def _kill(self, child: _Child) -> None:
        if child.stop_kind == "preempted":  # asked to save and stop: it ends by itself
            _preempt(child.popen.pid, self._ex.grace_period)
        proctree.kill_tree(child.popen.pid, self._ex.grace_period)
        rc = child.popen.wait()
        if child.pidfd is not None:
            os.close(child.pidfd)
        aid = child.spec.attempt_id
        _end_tagged(aid)
        _oom_kill(child.spec)  # stopped: the stop's kind wins; the cgroup's record is kept
        exit_code, sig = split_status(rc)
        out = outcome_of(aid, exit_code=exit_code, signal=sig,
                         stopped=child.stop_kind or "cancelled", pid=child.popen.pid)
        with self._lock:
            self._children.pop(aid, None)
            self._done.append(out)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {aid: c.popen.pid for aid, c in self._children.items()}

    def close(self) -> None:
        self._pending.clear()
        with self._lock:
            children = [c for c in self._children.values() if c.stop_kind is None]
            for c in children:
                c.stop_kind = "cancelled"
        _kill_parallel([c.popen.pid for c in children], self._ex.grace_period)
        for c in children:
            c.popen.wait()
            if c.pidfd is not None:
                os.close(c.pidfd)
            _oom_kill(c.spec)
        for t in self._killers:
            t.join(self._ex.grace_period + 6)
        with self._lock:
            self._children.clear()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


# --- helpers ----------------------------------------------------------------------------


def _stopped(aid: str, kind: str, detail: str, pid: int | None = None) -> Outcome:
    return outcome_of(aid, stopped=kind, detail=detail, pid=pid)


def _preempt(pid: int, grace: float) -> None:
    """SIGUSR1 to the worker ``pid`` (:mod:`steadyrun.attempt.preempt`), then wait while
    it saves and ends, up to its grace period and a little more (never reaping it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGUSR1)
    deadline = _now() + grace + 2.0
    while not proctree.is_gone(pid) and _now() < deadline:
        threading.Event().wait(0.05)


def _memory_cgroup(spec: AttemptSpec) -> memcg.MemoryCgroup | None:
    """A memory cgroup whose hard limit is the attempt's request, when the request is
    enforced and this machine lets us make one (else the engine samples)."""
    req = spec.resources
    if not (req.enforce and req.memory_bytes):
        return None
    return memcg.create(spec.attempt_id, req.memory_bytes)


def _oom_kill(spec: AttemptSpec) -> str | None:
    """The attempt ended: keep its memory cgroup's counters in its folder, remove the
    cgroup, and return the evidence of a kernel OOM kill (None when there was none, or
    no cgroup)."""
    if not memcg.limited(spec.attempt_id):
        return None
    return memcg.oom_message(memcg.finish(spec.attempt_id, spec.attempt_dir))


def _end_tagged(attempt_id: str) -> None:
    """End what an attempt left after its worker is gone (daemons of a worker that was
    killed before it could end them): processes tagged with it, and those in its
    cgroup (what a pool worker's payload forked without exec)."""
    if attempt_id:
        from steadyrun.attempt import cgroup
        from steadyrun.attempt.reaper import end_tagged

        end_tagged(folder.ATTEMPT_ID_ENV, attempt_id)
        cgroup.end(attempt_id)


def _kill_parallel(pids: list[int], grace: float) -> None:
    threads = [threading.Thread(target=proctree.kill_tree, args=(pid, grace), daemon=True)
               for pid in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace + 6)


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+): readable once the process exits; else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wake_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _now() -> float:
    import time

    return time.monotonic()
