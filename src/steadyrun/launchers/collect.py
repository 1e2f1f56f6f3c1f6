"""The end of a gang attempt: every rank's end gathered into the attempt's own files.

:func:`finish` runs once all ranks have ended (on the only node, or wherever a backend
waits for all nodes). It writes ``ranks.json`` (how each rank ended) and then, like a
plain worker would:

- all ranks succeeded: ``result.pkl`` is a copy of rank 0's (the task's value);
- a rank failed: ``error.json`` is the first rank to fail by its own error (the one whose
  ``error.json`` is oldest: the others usually fail after it, when their collective
  operations lose a peer), its message naming the rank, node and host, its traceback
  followed by the tail of that rank's stdout. The kind is ``oom`` when any rank ran out
  of memory. A gang where no rank left an error (killed by a signal) fails with the
  first such rank named. Ranks that were preempted (and none failed by its own error)
  make the attempt ``preempted`` (exit status 76).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from steadyrun.attempt import folder
from steadyrun.launchers import RANK_INFO_FILE, RANKS_FILE, Gang, rank_dir, read_gang

#: How a plain rank's process ended, as its node agent saw it (see launchers.node).
END_FILE = "end.json"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_OOM = 3
#: Lines of the failing rank's stdout put after its traceback.
TAIL_LINES = 20


def rank_ends(attempt_dir: str, gang: Gang) -> list[dict[str, Any]]:
    """How each rank ended, in rank order: ``{rank, node_rank, local_rank, host, node,
    pid, kind, exit_code, error_type, message}`` (``kind`` None on success, ``"lost"``
    for a rank that left neither result nor error: killed, or never started)."""
    ends = []
    for r in range(gang.size):
        here = rank_dir(attempt_dir, r)
        info = _read_json(os.path.join(here, RANK_INFO_FILE)) or {}
        end: dict[str, Any] = {
            "rank": r, "node_rank": info.get("node_rank", r // gang.ntasks_per_node),
            "local_rank": info.get("local_rank", r % gang.ntasks_per_node),
            "host": info.get("host"), "node": info.get("node"), "pid": info.get("pid"),
            "kind": None, "exit_code": 0, "error_type": None, "message": ""}
        err = folder.read_error(here)
        if err is not None:
            end["kind"] = ("preempted" if err.get("kind") == "preempted"
                           else "oom" if err.get("oom") else "error")
            end["exit_code"] = err.get("exit_code", EXIT_FAILED)
            end["error_type"] = err.get("type")
            end["message"] = str(err.get("message", ""))[:2000]
            with contextlib.suppress(OSError):
                end["failed_at"] = os.stat(os.path.join(here, folder.ERROR_FILE)).st_mtime
        elif not folder.has_result(here):
            ended = _read_json(os.path.join(here, END_FILE)) or {}
            end["kind"] = "lost"
            end["exit_code"] = ended.get("exit_code")
            end["message"] = _lost_message(info, ended)
            if ended and not ended.get("stopped"):  # it died first, of itself
                end["failed_at"] = ended.get("ended_at")
                end["died"] = True
        ends.append(end)
    return ends


def finish(attempt_dir: str | os.PathLike[str]) -> int:
    """Gather the ranks' ends of the gang attempt in ``attempt_dir`` into its
    ``ranks.json``, ``result.pkl`` or ``error.json``; return the attempt's exit status
    (0 success, else the failing rank's). A folder without ``gang.json`` is a plain
    attempt's: nothing is done and 0 is returned when it has a result."""
    directory = os.fspath(attempt_dir)
    gang = read_gang(directory)
    if gang is None:
        return EXIT_OK if folder.has_result(directory) else EXIT_FAILED
    ends = rank_ends(directory, gang)
    folder.atomic_write(os.path.join(directory, RANKS_FILE),
                        json.dumps(ends, indent=1, default=str).encode("utf-8"))
    if all(e["kind"] is None for e in ends):
        with open(os.path.join(rank_dir(directory, 0), folder.RESULT_FILE), "rb") as f:
            folder.atomic_write(os.path.join(directory, folder.RESULT_FILE), f.read())
        return EXIT_OK
    kinds = {e["kind"] for e in ends}
    error = (preempted_record(gang, ends) if "preempted" in kinds and not kinds & {"error", "oom"}
             else failure_of(directory, gang, ends))
    folder.atomic_write(os.path.join(directory, folder.ERROR_FILE),
                        json.dumps(error, indent=1, default=str).encode("utf-8"))
    return int(error["exit_code"])


def preempted_record(gang: Gang, ends: list[dict[str, Any]]) -> dict[str, Any]:
    """The attempt's ``error.json`` record for a gang whose ranks were preempted (asked
    to stop early and save) and none failed by its own error: kind ``preempted``."""
    from steadyrun.attempt.names import EXIT_PREEMPTED

    count = sum(1 for e in ends if e["kind"] == "preempted")
    return {"type": "Preempted", "kind": "preempted", "oom": False, "traceback": "",
            "message": f"{count} of {gang.size} rank(s) were asked to stop early "
                       "(preempted) and stopped", "exit_code": EXIT_PREEMPTED}


def failure_of(directory: str, gang: Gang, ends: list[dict[str, Any]]) -> dict[str, Any]:
    """The attempt's ``error.json`` record for a gang where some rank failed."""
    raised = sorted((e for e in ends if e["kind"] in ("error", "oom")),
                    key=lambda e: (e.get("failed_at") or 0.0, e["rank"]))
    died = sorted((e for e in ends if e.get("died")),
                  key=lambda e: (e.get("failed_at") or 0.0, e["rank"]))
    oom = any(e["kind"] == "oom" for e in ends)
    first = (raised or died or [e for e in ends if e["kind"] is not None])[0]
    where = _where(first, gang)
    failed = sum(1 for e in ends if e["kind"] is not None)
    others = f"; {failed - 1} other rank(s) stopped or failed after it" if failed > 1 else ""
    if raised:
        err = folder.read_error(rank_dir(directory, first["rank"])) or {}
        message = (f"rank {first['rank']} of {gang.size} ({where}) failed: "
                   f"{err.get('type', 'Error')}: {err.get('message', '')}{others}")
        traceback = str(err.get("traceback") or "")
        exit_code = err.get("exit_code") or (EXIT_OOM if oom else EXIT_FAILED)
        kind_type = str(err.get("type") or "Error")
    else:
        message = f"rank {first['rank']} of {gang.size} ({where}) {first['message']}{others}"
        traceback, kind_type = "", "RankLost"
        exit_code = first.get("exit_code") or EXIT_FAILED
    tail = _stdout_tail(rank_dir(directory, first["rank"]))
    if tail:
        traceback += f"\n--- last lines of rank {first['rank']}'s stdout ---\n{tail}\n"
    return {"type": kind_type, "message": message, "traceback": traceback, "oom": oom,
            "exit_code": EXIT_OOM if oom and not raised else exit_code,
            "rank": first["rank"], "node_rank": first["node_rank"], "host": first["host"]}


def _lost_message(info: dict[str, Any], ended: dict[str, Any]) -> str:
    if not info and not ended:
        return "never started"
    if ended.get("signal"):
        import signal

        try:
            name = signal.Signals(int(ended["signal"])).name
        except ValueError:
            name = f"signal {ended['signal']}"
        how = f"was killed by {name}"
    elif ended.get("exit_code") is not None:
        how = f"exited with code {ended['exit_code']} without a result"
    else:
        how = "ended without a result or an error"
    return how + (" (stopped when another rank failed)" if ended.get("stopped") else "")


def _where(end: dict[str, Any], gang: Gang) -> str:
    parts = [f"node {end['node_rank']}"]
    if end.get("node") and end.get("node") != end.get("host"):
        parts.append(str(end["node"]))
    if end.get("host"):
        parts.append(f"host {end['host']}")
    return ", ".join(parts)


def _stdout_tail(here: str) -> str:
    from pathlib import Path

    from steadyrun.attempt.logread import tail_bytes

    text = tail_bytes(Path(here, folder.STDOUT_LOG), 16 * 1024).decode("utf-8", "replace")
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:]) if text.strip() else ""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["failure_of", "finish", "rank_ends"]
