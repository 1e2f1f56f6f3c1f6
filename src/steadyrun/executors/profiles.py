"""Executors named by a short spec: a kind or a profile, with inline options.

``steadyrun run -e SPEC`` (and :func:`executor_from_spec`) reads::

    slurm                              the kind, with its default options
    slurm:partition=gpu,account=abc    inline options, typed like the constructor's
    gpu                                a profile of the user's executors file
    gpu:time=2h                        a profile, inline options on top

A **kind** is an executor's type name without ``Executor``, in lower case (``local``,
``ray``, ``slurm``, or a plugin's). Inline options are ``key=value`` pairs separated by
commas (commas inside brackets or quotes do not split); each value is read by the type
hint of the constructor parameter it sets (``nodes=2`` an int, ``exclusive=true`` a
bool, ``additional_parameters={mail_type: END}`` a mapping). An option the executor does
not take is an :class:`~steadyrun.errors.ExecutorError` listing the ones it does.

**Profiles** live in ``$STEADYRUN_EXECUTORS``, else
``$XDG_CONFIG_HOME/steadyrun/executors.yaml`` (``~/.config/steadyrun/executors.yaml``)::

    profiles:
      gpu:                      # `-e gpu`
        executor: slurm         # the kind (required)
        partition: gpu          # then any option of that executor
        account: abc
        time: 4h
        ssh_host: login1        # Slurm through SSH: ssh_host, ssh_user, ssh_port, ...
      cluster:
        executor: ray
        address: 10.0.0.5:6379

The file is read as plain YAML: tags (``!!python/...``, ``!partial:...``) are refused. A
profile named like a kind (``slurm``) replaces that kind's defaults.

Two executors take shortcuts: Slurm's ``ssh_host``, ``ssh_user``, ``ssh_port``,
``ssh_identity``, ``ssh_job_dir``, ``ssh_known_hosts`` make its ``tunnel`` an
``SSHTunnel``, and its ``time`` also takes durations (``90m``, ``2h``, ``1d12h``).
Ray's ``address``, when neither the spec nor the caller gives one, comes from
``RAY_ADDRESS`` or ``STEADYRUN_RAY_ADDRESS`` (what ``scripts/ray-up.sh`` prints), so a
running cluster is used rather than a private Ray started.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.errors import ExecutorError

#: The variable that names the executors file (profiles).
PROFILES_ENV = "STEADYRUN_EXECUTORS"
#: Where Ray's address is looked up, in this order, when none is given.
RAY_ADDRESS_ENVS = ("RAY_ADDRESS", "STEADYRUN_RAY_ADDRESS")
SSH_PREFIX = "ssh_"
_SSH_OPTIONS = ("host", "user", "port", "identity", "job_dir", "known_hosts",
                "connect_timeout")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class ExecutorChoice:
    """What a spec resolved to: the executor ``kind``, the ``profile`` it came from (and
    the ``path`` of its file), and the ``options`` given to the constructor, with where
    each came from (``origins``: option -> ``profile``, ``inline``, ``--address``,
    ``RAY_ADDRESS`` ...)."""

    kind: str
    profile: str | None = None
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """Lines saying what was chosen: ``slurm from profile 'gpu' (PATH)``, then one
        ``partition = gpu  (profile)`` line per option given."""
        head = self.kind + (f" from profile {self.profile!r} ({self.path})"
                            if self.profile else "")
        if not self.options:
            return [head + ", with its default options"]
        width = max(len(k) for k in self.options)
        return [head + ", with:"] + [
            f"  {k.ljust(width)} = {_show(v)}  ({self.origins.get(k, '?')})"
            for k, v in self.options.items()]


def executor_from_spec(spec: str, *, strategy: str | None = None,
                       address: str | None = None,
                       path: str | os.PathLike[str] | None = None) -> tuple[Any, ExecutorChoice]:
    """The executor that ``spec`` names (see the module docs) and what it resolved to.

    ``strategy`` is the local executor's (``--strategy``); ``address`` a Ray cluster's
    (``--address``), before ``RAY_ADDRESS`` / ``STEADYRUN_RAY_ADDRESS``. ``path``
    overrides where profiles are read. Raises :class:`ExecutorError` for an unknown
    kind or profile (listing both), an unknown option (listing the valid ones), a value
    of the wrong type, a malformed executors file, or an executor that refuses its
    options."""
    name, _, inline_text = spec.strip().partition(":")
    if not name:
        raise ExecutorError(f"executor {spec!r}: give a kind ({', '.join(kinds())}) or a "
                            "profile name, then optionally :key=value,...")
    file = profiles_path(path)
    profiles = load_profiles(file)
    choice = ExecutorChoice(kind=name)
    given: list[tuple[str, Any, str]] = []
    if name in profiles:
        entry = dict(profiles[name])
        choice.kind, choice.profile, choice.path = str(entry.pop("executor")), name, file
        given += [(k, v, "profile") for k, v in entry.items()]
    given += [(k, v, "inline") for k, v in parse_inline(inline_text, spec).items()]
    cls = _class_of(choice.kind, profiles, file)
    keys = {k for k, _, _ in given}
    if strategy is not None:
        if "strategy" not in _hints(cls):
            raise ExecutorError(f"--strategy is an option of the local executor, not of "
                                f"{choice.kind!r}")
        given.append(("strategy", strategy, "--strategy"))
    if "address" in _hints(cls) and cls.__name__ == "RayExecutor":
        if address is not None:
            given.append(("address", address, "--address"))
        elif "address" not in keys:
            found = ray_env_address()
            if found is not None:
                given.append(("address", found[1], found[0]))
    elif address is not None:
        raise ExecutorError(f"--address is an option of the ray executor, not of "
                            f"{choice.kind!r}")
    options, origins = _typed_options(cls, choice.kind, given)
    choice.options, choice.origins = options, origins
    try:
        return cls(**options), choice
    except ExecutorError:
        raise
    except (TypeError, ValueError) as exc:
        raise ExecutorError(f"executor {choice.kind!r}: {exc}") from exc


def ray_env_address() -> tuple[str, str] | None:
    """``(variable, address)`` of the first of ``RAY_ADDRESS``, ``STEADYRUN_RAY_ADDRESS``
    that is set, or None."""
    for var in RAY_ADDRESS_ENVS:
        value = os.environ.get(var, "").strip()
        if value:
            return var, value
    return None


def profiles_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where profiles are read: ``path``, ``$STEADYRUN_EXECUTORS``, else
    ``$XDG_CONFIG_HOME/steadyrun/executors.yaml`` (``~/.config/...``)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join("~", ".config")
    return Path(base).expanduser() / "steadyrun" / "executors.yaml"


def load_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """Profile name -> its mapping (with ``executor``), from the file at ``path``; empty
    when the file does not exist (unless ``$STEADYRUN_EXECUTORS`` names it: then it
    must). Raises :class:`ExecutorError` for a file that cannot be read or is not of
    the documented shape."""
    from steadyrun.config.plain import load_plain
    from steadyrun.errors import SerializationError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if os.environ.get(PROFILES_ENV) and Path(os.environ[PROFILES_ENV]).expanduser() == path:
            raise ExecutorError(f"${PROFILES_ENV} names {path}, which does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ExecutorError(f"cannot read the executors file {path}: {exc}") from None
    try:
        data = load_plain(text, str(path))
    except SerializationError as exc:
        raise ExecutorError(f"executors file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"profiles"}:
        extra = sorted(map(str, set(data) - {"profiles"})) if isinstance(data, dict) else []
        raise ExecutorError(
            f"{path}: expected a mapping with one key, 'profiles' (name -> {{executor: "
            f"KIND, option: value, ...}})" + (f"; unknown key {extra[0]!r}" if extra else ""))
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ExecutorError(f"{path}: 'profiles' must be a mapping of name -> options")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in profiles.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ExecutorError(f"{path}: profile name {name!r}: use letters, digits and "
                                "_ . + - (no ':' or ',')")
        if not isinstance(entry, dict) or not isinstance(entry.get("executor"), str):
            raise ExecutorError(f"{path}: profile {name!r} must be a mapping with "
                                f"'executor: KIND' ({', '.join(kinds())})")
        bad = [k for k in entry if not isinstance(k, str)]
        if bad:
            raise ExecutorError(f"{path}: profile {name!r}: option names must be strings, "
                                f"got {bad[0]!r}")
        out[name] = entry
    return out


def kinds() -> dict[str, str]:
    """Kind (``slurm``) -> executor type name (``SlurmExecutor``), for every registered
    executor."""
    from steadyrun.executors import registered_executors

    return {_kind(t): t for t in registered_executors()}


def option_names(cls: Any) -> list[str]:
    """The options an executor class takes from a spec: its constructor's parameters,
    plus the ``ssh_*`` shortcuts when it has a ``tunnel``."""
    names = [n for n in _hints(cls) if n != "self"]
    if "tunnel" in names:
        names += [SSH_PREFIX + o for o in _SSH_OPTIONS]
    return names


def parse_inline(text: str, spec: str = "") -> dict[str, str]:
    """``"partition=gpu,account=abc"`` -> ``{"partition": "gpu", "account": "abc"}``;
    commas inside brackets or quotes do not split."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    from steadyrun.config.overrides import split_top

    for part in (p for p in split_top(text) if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExecutorError(f"executor {spec!r}: {part!r} is not key=value (inline "
                                "options read -e KIND:key=value,key=value)")
        if key in out:
            raise ExecutorError(f"executor {spec!r}: {key!r} is given twice")
        out[key] = value.strip()
    return out


# --- helpers ----------------------------------------------------------------------------


def _kind(type_name: str) -> str:
    base = type_name[: -len("Executor")] if type_name.endswith("Executor") else type_name
    return base.lower()


def _class_of(kind: str, profiles: dict[str, Any], path: Path) -> Any:
    from steadyrun.executors import executor_class

    known = kinds()
    if kind not in known:
        shown = f"; profiles in {path}: {', '.join(profiles)}" if profiles else (
            f" (no profiles: {path} does not exist)" if not path.exists() else "")
        raise ExecutorError(f"executor {kind!r} is not available: it is neither a kind "
                            f"({', '.join(sorted(known))}) nor a profile{shown}")
    return executor_class(known[kind])


def _hints(cls: Any) -> dict[str, Any]:
    from steadyrun.config.hints import param_hints

    return {k: v for k, v in param_hints(cls).items() if not k.startswith("*")}


def _typed_options(cls: Any, kind: str, given: list[tuple[str, Any, str]]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """Options read by the constructor's hints (text from the command line, values
    from YAML), later ones over earlier ones; the ``ssh_*`` shortcuts made a tunnel."""
    from steadyrun.config.typed import convert_text, convert_value
    from steadyrun.errors import ConfigError

    hints = _hints(cls)
    valid = option_names(cls)
    options: dict[str, Any] = {}
    origins: dict[str, str] = {}
    ssh: dict[str, Any] = {}
    for key, value, origin in given:
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, valid, n=1)
            raise ExecutorError(
                f"executor {kind!r} has no option {key!r} ({origin})"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; valid options: {', '.join(valid)}")
        if key.startswith(SSH_PREFIX) and key not in hints:
            ssh[key[len(SSH_PREFIX):]] = (value, origin)
            continue
        try:
            typed = (convert_text(value, hints[key], key) if origin == "inline"
                     else convert_value(value, hints[key], key))
        except ConfigError as exc:
            raise ExecutorError(f"executor {kind!r}, option {exc} ({origin})") from None
        if key == "time" and kind == "slurm" and isinstance(typed, str):
            typed = _slurm_time(typed)
        options[key], origins[key] = typed, origin
    if ssh:
        options["tunnel"], origins["tunnel"] = _ssh_tunnel(ssh, options.get("tunnel"))
    return options, origins


def _ssh_tunnel(ssh: dict[str, tuple[Any, str]], base: Any) -> tuple[Any, str]:
    from steadyrun.config.typed import convert_text, convert_value
    from steadyrun.errors import ConfigError
    from steadyrun.executors.slurm.tunnel import SSHTunnel

    if base is not None:
        raise ExecutorError("give either 'tunnel' or the ssh_* options, not both")
    if "host" not in ssh:
        raise ExecutorError("the ssh_* options need ssh_host (the login node)")
    hints = _hints(SSHTunnel)
    args: dict[str, Any] = {}
    for key, (value, origin) in ssh.items():
        try:
            args[key] = (convert_text(value, hints[key], SSH_PREFIX + key)
                         if origin == "inline" else
                         convert_value(value, hints[key], SSH_PREFIX + key))
        except ConfigError as exc:
            raise ExecutorError(f"executor 'slurm', option {exc} ({origin})") from None
    origins = sorted({origin for _, origin in ssh.values()})
    return SSHTunnel(**args), "+".join(origins)


_DURATION = re.compile(r"^\s*(\d+\s*[smhd]\s*)+$", re.IGNORECASE)


def _slurm_time(text: str) -> str:
    """``"2h"`` -> ``"02:00:00"``, ``"1d12h"`` -> ``"1-12:00:00"``; Slurm's own forms
    (``"01:00:00"``, ``"90"``, ``"1-00:00"``) unchanged."""
    if not _DURATION.match(text):
        return text
    from steadyrun.units import parse_duration

    seconds = int(round(parse_duration(text, what="time") or 0))
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


def _show(value: Any) -> str:
    to_config = getattr(value, "to_config", None)
    if callable(to_config):
        return repr(value)
    return str(value)
