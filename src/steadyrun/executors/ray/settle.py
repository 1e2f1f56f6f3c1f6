"""The end of a plain Ray attempt on the controller's side: fetch what the task returned
(for every task that ended in one pass, with one ``ray.get``), write into the attempt
folder only what is not there yet, and make the :class:`~steadyrun.executors.base.Outcome`.

What the attempt folder receives:

- the node wrote into the folder itself (it sees it: same machine or a shared
  filesystem): nothing but ``ray.json`` (the Ray task id, node, worker pid) and
  ``samples.json`` when the attempt was sampled;
- otherwise ``stdout.log``/``stderr.log`` when the node's logs were not empty (their
  tails), ``result.pkl`` or ``error.json``, ``samples.json`` when sampled, ``ray.json``;
- an attempt that Ray reports as failed (its worker or node lost, killed for memory,
  stopped by the executor): ``ray.json``, and a line in ``stderr.log`` saying why its
  output stayed on its node, when the node wrote nothing here.

Light at import: the controller imports it with the executor.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from steadyrun.attempt.folder import (
    ERROR_FILE,
    RESULT_FILE,
    SAMPLES_FILE,
    STDERR_LOG,
    STDOUT_LOG,
)
from steadyrun.attempt.outcome import outcome_of
from steadyrun.executors.base import ErrorInfo, Outcome
from steadyrun.executors.ray.nodes import classify
from steadyrun.executors.ray.preempted import node_loss
from steadyrun.executors.ray.task import RAY_INFO_FILE, atomic_write, write_json, write_log

#: A value up to this size (pickled) comes back in the outcome, not only in result.pkl.
INLINE_VALUE_LIMIT = 1 << 20


def fetch(ray: Any, runs: list[Any]) -> list[tuple[Any, Any, BaseException | None]]:
    """``(run, data, exception)`` for ended runs: one ``ray.get`` for all of them; when
    one of them failed, each is fetched alone to tell which."""
    if not runs:
        return []
    try:
        values = ray.get([run.ref for run in runs])
    except Exception:  # one of them failed: ask each alone
        pass
    else:
        return [(run, data, None) for run, data in zip(runs, values, strict=True)]
    out: list[tuple[Any, Any, BaseException | None]] = []
    for run in runs:
        try:
            out.append((run, ray.get(run.ref), None))
        except Exception as exc:
            out.append((run, None, exc))
    return out


def settle(ex: Any, run: Any, data: Any, exc: BaseException | None) -> Outcome:
    """The outcome of the ended ``run`` of executor ``ex`` (``data``: what the task
    returned, or ``exc``: what ``ray.get`` raised), its files written."""
    spec = run.spec
    if exc is None:
        return _write_back(ex, run, data)
    died = any(c.__name__ == "NodeDiedError" for c in type(exc).__mro__)
    kind, message = node_loss(*classify(exc), spec.attempt_dir, run.submitted,
                              node_died=died)
    if run.stop_kind is not None:
        kind = run.stop_kind
        message = f"stopped by the executor ({kind}): Ray task {run.task_id} force-cancelled"
    with contextlib.suppress(OSError):
        write_json(Path(spec.attempt_dir) / RAY_INFO_FILE, ray_info(
            ex, run, {"state": "ended", "kind": kind, "ended_at": time.time()}))
    note_missing_output(spec.attempt_dir, kind)
    error = None if run.stop_kind is not None else ErrorInfo(
        type=type(exc).__name__, message=message, oom=kind == "oom")
    return Outcome(spec.attempt_id, kind, error=error, message=message)


def ray_info(ex: Any, run: Any, end: dict[str, Any]) -> dict[str, Any]:
    """The whole of an ended attempt's ``ray.json``, written once (no read back)."""
    return {"attempt_id": run.spec.attempt_id, "nonce": run.nonce,
            "address": ex.address, "namespace": ex.namespace,
            "submitted_at": run.submitted, "task_id": run.task_id, **end}


def _write_back(ex: Any, run: Any, data: dict[str, Any]) -> Outcome:
    spec = run.spec
    aid = spec.attempt_id
    folder = Path(spec.attempt_dir)
    kind, vb = data.get("kind"), data.get("value_bytes")
    try:
        if not data.get("shared"):
            for name, file in (("stdout", STDOUT_LOG), ("stderr", STDERR_LOG)):
                if data.get(name) or data.get(f"{name}_size"):  # no empty files
                    write_log(folder / file, data.get(name) or b"",
                              int(data.get(f"{name}_size") or 0))
            if kind is None and vb is not None:
                atomic_write(folder / RESULT_FILE, vb)
            elif kind is not None:
                err = dict(data.get("error") or {})
                err.setdefault("exit_code", data.get("exit_code"))
                atomic_write(folder / ERROR_FILE,
                             json.dumps(err, indent=1, default=str).encode())
        if data.get("samples"):
            write_json(folder / SAMPLES_FILE, {
                "attempt_id": aid, "host": data.get("host"), "pid": data.get("pid"),
                "interval": ex.sample_interval, "peaks": data.get("peaks"),
                "samples": data["samples"]})
        write_json(folder / RAY_INFO_FILE, ray_info(ex, run, {
            "state": "ended", "kind": kind, "node_ip": data.get("node_ip"),
            "host": data.get("host"), "pid": data.get("pid"),
            "started_at": data.get("started"), "ended_at": data.get("ended"),
            "shared_fs": bool(data.get("shared"))}))
    except OSError as e:  # the store's folder is unusable: say so, keep the outcome
        print(f"steadyrun: could not write the results of {aid} into {folder}: {e}",
              file=sys.stderr)
    host, exit_code = data.get("host"), data.get("exit_code")
    if kind is None:
        if vb is not None and len(vb) <= INLINE_VALUE_LIMIT:
            import pickle

            try:
                value = pickle.loads(vb)
            except Exception:  # not loadable here: the engine reads the file, says why
                return outcome_of(aid, exit_code=exit_code, host=host)
            return outcome_of(aid, exit_code=exit_code, value=value, host=host)
        return outcome_of(aid, exit_code=exit_code, host=host)
    return outcome_of(aid, exit_code=exit_code, host=host, error=data.get("error") or {
        "type": "Error", "message": kind, "oom": kind == "oom"})


def note_missing_output(attempt_dir: Any, kind: str) -> None:
    """Say in stderr.log why a stopped or lost attempt left no output here."""
    path = Path(attempt_dir) / STDERR_LOG
    if path.exists() or (Path(attempt_dir) / STDOUT_LOG).exists():
        return  # the node wrote here directly (shared folder)
    with contextlib.suppress(OSError):
        atomic_write(path, f"[steadyrun] the attempt ended as {kind!r} on a Ray node; its "
                     "output stayed on that node and could not be brought back\n".encode())
