"""``Script``: a shell or Python script to run as it is, described without its env values.

A script is run, not built; it nests in configs, round-trips through YAML and has a
fingerprint like the other configs (see :mod:`steadyrun.config.core`).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from steadyrun.errors import ConfigError


class Script:
    """A script to run as it is: a file (``path``) or text (``inline``).

    ``entrypoint`` is ``"bash"`` or ``"python"``; ``args`` are appended to the command and
    ``env`` is added to the script's environment: each value a string, or
    ``run.Secret("NAME")`` to read ``NAME`` from the launching process's environment
    when each attempt starts (never stored, never shown). steadyrun shows env names
    only: ``repr`` and every message describe a script by its path (or the first line
    of its text), its args and the names of its env. The store keeps a Secret as its
    name, and a plain value too unless it looks like a credential (``API_KEY``,
    ``HF_TOKEN``, ``sk-...``: then a ``resume`` in another process reads it back from
    the variable of the same name; see :mod:`steadyrun.config.secrets`): give secrets
    as ``run.Secret``. Raises :class:`ConfigError` when not exactly one of ``path`` and
    ``inline`` is given, or for a bad entrypoint, args or env.

    The first positional argument is the path: ``run.Script("train.sh", args=[...])``.
    A path is read where the attempt runs (a Slurm node may have files this machine
    has not), so a missing file is not an error here, except that a first positional
    string that names no file here and holds spaces or shell syntax (``"echo hi"``) is
    a command: a :class:`ConfigError` says to write ``run.Script(inline="echo hi")``.
    ``path=...`` by keyword is taken as a path as it is.
    """

    __hash__ = None  # type: ignore[assignment]
    _FIELDS = ("path", "inline", "args", "env", "entrypoint")

    def __init__(self, script: Any = None, /, inline: str | None = None, args: Any = (),
                 env: dict[str, Any] | None = None, entrypoint: str = "bash", *,
                 path: Any = None) -> None:
        if script is not None:
            if path is not None:
                raise ConfigError("Script got a path twice: give it first or as path=..., "
                                  "not both")
            _check_not_a_command(script)
            path = script
        if (path is None) == (inline is None):
            raise ConfigError(
                "Script needs exactly one of path=... (a script file) or inline=... (its "
                f"text); got {'both' if path is not None else 'neither'}")
        if path is not None:
            import os

            if not isinstance(path, str | os.PathLike):
                raise ConfigError(f"Script(path=...) must be a string or path, got {path!r}")
            path = os.fspath(path)
        if inline is not None and not isinstance(inline, str):
            raise ConfigError(f"Script(inline=...) must be a string, got {_short_value(inline)}")
        if entrypoint not in ("bash", "python"):
            raise ConfigError(
                f"Script(entrypoint={entrypoint!r}) is not supported; use 'bash' or 'python'")
        if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
            raise ConfigError(
                f"Script(args=...) must be a list of strings, got {_short_value(args)}; e.g. "
                "args=['--lr', '0.1']")
        bad = [a for a in args if isinstance(a, bool) or not isinstance(a, str | int | float)]
        if bad:
            raise ConfigError(f"Script(args=...): {bad[0]!r} is not a string or number")
        from steadyrun.config.secrets import check_env

        self.path = path
        self.inline = inline
        self.args = [str(a) for a in args]
        self.env: dict[str, Any] = check_env(env, "Script")
        self.entrypoint = entrypoint

    def command(self, python: str = sys.executable) -> list[str]:
        """The argv that runs this script (``python`` is the interpreter for Python ones)."""
        if self.entrypoint == "bash":
            if self.path is not None:
                return ["bash", self.path, *self.args]
            return ["bash", "-c", str(self.inline), "steadyrun-inline", *self.args]
        if self.path is not None:
            return [python, self.path, *self.args]
        return [python, "-c", str(self.inline), *self.args]

    def build(self) -> Script:
        """A script is run, not built: returns itself."""
        return self

    def with_env(self, env: dict[str, Any]) -> Script:
        """A copy of this script with ``env`` in place of its own."""
        new = copy.copy(self)
        new.env = dict(env)
        return new

    def describe(self) -> str:
        """One line for messages: the path (or the first line of the text, cut at 60
        characters), the args and the env *names*; never an env value."""
        if self.path is not None:
            what = f"path={self.path!r}"
        else:
            lines = str(self.inline).strip().splitlines() or [""]
            head = lines[0] if len(lines[0]) <= 60 else lines[0][:57] + "..."
            more = " ..." if len(lines) > 1 and head == lines[0] else ""
            what = f"inline={head + more!r}"
        parts = [what]
        if self.args:
            parts.append(f"args={self.args!r}")
        if self.env:
            parts.append(f"env=[{', '.join(sorted(self.env))}]")
        if self.entrypoint != "bash":
            parts.append(f"entrypoint={self.entrypoint!r}")
        return f"Script({', '.join(parts)})"

    def fingerprint(self) -> str:
        """A stable sha256 hex digest of the content; see :func:`fingerprint`."""
        from steadyrun.config.core import fingerprint

        return fingerprint(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Script):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    def __repr__(self) -> str:
        return self.describe()


def _check_not_a_command(text: Any) -> None:
    """A :class:`ConfigError` for ``Script("echo hi")``: a string that is no file here
    and reads as a shell command (whitespace or shell syntax)."""
    import os
    import re

    if not isinstance(text, str) or os.path.exists(text):
        return
    if re.search(r"\s|[;&|<>$`'\"]", text):
        shown = repr(text) if len(text) <= 60 else repr(text[:57] + "...")
        raise ConfigError(
            f"Script({shown}): no file of that name exists here and it reads as a shell "
            f"command, not a path; to run the command give run.Script(inline={shown}); "
            "for a script file with arguments give "
            "run.Script('train.sh', args=['--lr', '0.1']); for a path that exists only "
            "where the task runs give run.Script(path=...)")


def _short_value(value: Any) -> str:
    from steadyrun.config.core import _short

    return _short(value)
