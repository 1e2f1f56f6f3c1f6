"""Where a Ray cluster is: addresses, a fast check that something listens there, and
keeping a local Ray instance on loopback."""

from __future__ import annotations

import os
import sys
from typing import Any

from steadyrun.errors import ExecutorError

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray_env_address() -> str | None:
    """The cluster named by ``RAY_ADDRESS``, else ``STEADYRUN_RAY_ADDRESS`` (what
    ``scripts/ray-up.sh`` prints); None when neither is set."""
    for var in ("RAY_ADDRESS", "STEADYRUN_RAY_ADDRESS"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a plain ``HOST:PORT`` address; None for auto and ray://."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _is_loopback(address: str | None) -> bool:
    hp = _host_port(address or "")
    return hp is not None and (hp[0] == "localhost" or hp[0].startswith("127."))


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a HOST:PORT address (``ray.init`` would retry
    for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    import socket

    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(
            f"RayExecutor: nothing answers at {address!r} ({e}); start the cluster "
            "(ray start --head) or fix the address") from e


def _norm(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{'127.0.0.1' if host in ('localhost', '0.0.0.0') else host}:{port}"


def _loopback_only() -> Any:
    """Make a local Ray instance listen on 127.0.0.1 only; return what undoes it.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import (for its own node address)
    and its processes inherit the variable (for theirs): both are set for the start and
    put back after, so that a later connection to a remote cluster is not affected."""
    saved = os.environ.get(_LOOPBACK_ENV)
    os.environ[_LOOPBACK_ENV] = "0"
    constants: Any = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        if saved is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved
        mod: Any = sys.modules.get("ray._private.ray_constants")
        if mod is not None:  # what Ray would have read without us
            mod.ENABLE_RAY_CLUSTER = (sys.platform not in ("darwin", "win32") if saved is None
                                      else saved.lower() in ("1", "true"))

    return restore
