"""Payloads for the crash suite: importable by every worker and controller process.

Side effects are lines appended with ``O_APPEND`` (one ``write`` each, so concurrent
writers never interleave): ``starts`` gets ``name pid time`` when a payload begins,
``effects`` gets the same when it ends. The effect is the very last thing a payload
does, so an attempt that survives its controller shows up as a second effect line.

Daemon payloads start a ``setsid`` daemon and a double-forked one (both ``sleep 300``,
detached from every pipe) and record their pids, one ``pid`` per line, before holding.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import steadyrun as run


def append_line(path: str, line: str) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def effect(effects: str, name: str, hold: float = 0.0, starts: str | None = None,
           gate: str | None = None, gate_timeout: float = 60.0) -> str:
    """Record the start, hold ``hold`` seconds (and, with ``gate``, until that file
    exists), then append the side effect as the last step."""
    if starts:
        append_line(starts, f"{name} {os.getpid()} {time.time():.6f}")
    time.sleep(hold)
    wait_gate(gate, gate_timeout)
    append_line(effects, f"{name} {os.getpid()} {time.time():.6f}")
    return name


def start_daemons(pidfile: str) -> list[int]:
    """Start a ``setsid`` daemon and a double-forked daemon; append their pids."""
    detached = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE,
                "stderr": subprocess.DEVNULL}
    # bash forks, the child runs setsid (a new session), then sleep; bash exits at once
    setsid = subprocess.run(
        ["bash", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
        check=True, text=True, **detached)
    # bash forks a background sleep and exits: the sleep is reparented (double fork)
    forked = subprocess.run(
        ["bash", "-c", "sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
        check=True, text=True, **detached)
    pids = [int(setsid.stdout.split()[0]), int(forked.stdout.split()[0])]
    append_line(pidfile, "\n".join(str(p) for p in pids))
    return pids


def wait_gate(gate: str | None, timeout: float = 60.0) -> None:
    """Return once the file ``gate`` exists (at once when there is none to wait for)."""
    if not gate:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)


def daemons(pidfile: str, hold: float = 0.0, gate: str | None = None) -> int:
    """A Python payload that leaves two daemons behind, then holds ``hold`` seconds (and
    until ``gate`` exists)."""
    append_line(pidfile, str(os.getpid()))
    start_daemons(pidfile)
    time.sleep(hold)
    wait_gate(gate)
    return os.getpid()


DAEMONS_SCRIPT = """
pidfile="$1"; hold="$2"
echo $$ >> "$pidfile"
setsid sleep 300 </dev/null >/dev/null 2>&1 &
echo $! >> "$pidfile"
( sleep 300 </dev/null >/dev/null 2>&1 & echo $! >> "$pidfile" )
sleep "$hold"
"""


def daemons_script(pidfile: str, hold: float = 0.0) -> run.Script:
    """The same as :func:`daemons`, as an inline bash Script."""
    return run.Script(inline=DAEMONS_SCRIPT, args=[pidfile, str(hold)])


def build_tasks(spec: dict) -> list[run.Task]:
    """Tasks from a JSON-able spec (used by driver scripts in child processes).

    Each entry: ``{"name", "kind": "effect" | "daemons" | "daemons_script", "args": {...},
    "timeout", "cpus", "depends_on"}``."""
    tasks = []
    for entry in spec["tasks"]:
        kind, args = entry["kind"], entry.get("args", {})
        if kind == "effect":
            payload = run.Partial(effect, **args)
        elif kind == "daemons":
            payload = run.Partial(daemons, **args)
        elif kind == "daemons_script":
            payload = daemons_script(**args)
        else:
            raise ValueError(f"unknown payload kind {kind!r}")
        tasks.append(run.Task(entry["name"], payload,
                              resources=run.Resources(cpus=entry.get("cpus", 0.25)),
                              timeout=entry.get("timeout"),
                              depends_on=entry.get("depends_on", ())))
    return tasks


def read_lines(path: str | Path) -> list[list[str]]:
    """The lines of a record file, split into fields (none when it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines() if line.strip()]
