"""Environment variables for what runs, without their values ever being written down.

``env=`` (of :class:`~steadyrun.Script`, and of the executors that take one) maps names
to values. A value is a string, or a :class:`Secret`: the name of a variable read from
the environment of the process that launches the attempt, at launch time.

steadyrun shows env *names* only: messages, logs, error files, status output and dry
runs name the variables and never show a value. What the store keeps (the database,
``definition.yaml``, an attempt's payload file):

- a :class:`Secret`: its name;
- an executor's or tunnel's plain value: no value, a reference to the variable of the
  same name (``withheld``);
- a Script's plain value: no value when it looks like a credential (:func:`looks_secret`:
  ``API_KEY``, ``HF_TOKEN``, a value like ``sk-...``), else the value itself, so that
  a resume gives each task exactly what it had (``SEED``, ``OMP_NUM_THREADS``).

A process that rebuilds the experiment from the store (a background controller, a
``resume``) reads a withheld value from its own environment by name. The launching
process hands the values it holds to the processes it starts through their
environment, so ``detach=True`` needs nothing exported; a ``steadyrun resume`` in a new
shell needs the withheld variables exported, and says which one is missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from steadyrun.errors import ConfigError, MissingSecret

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The variable through which a launching process hands the plain env values it holds
#: (JSON, by name) to a background controller, which takes it out of its environment at
#: start (:func:`take_handed_values`): the values never change the controller's own
#: variables (a ``PATH`` given to a script stays the script's).
HANDED_VALUES_ENV = "STEADYRUN_ENV_VALUES"
_HANDED: dict[str, str] = {}  # withheld values this process was handed, by name
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|SIGNATURE"
    r"|PASS($|_)|(^|_)PWD($|_)|DSN")
_SECRET_VALUE = re.compile(
    r"(sk|pk|rk)[-_]|(ghp|gho|ghs|ghu|ghr|github_pat|glpat|hf|xox[abprs])[-_]"
    r"|AKIA[0-9A-Z]{12}|eyJ[\w-]+\.[\w-]+\.")


class Secret:
    """An env value read from the launching environment: ``env={"API_KEY":
    run.Secret("API_KEY")}``.

    The value of ``os.environ[name]`` in the process that launches each attempt is read
    then, handed to the attempt's process and never written anywhere: the store and
    ``definition.yaml`` keep only the name, so ``resume`` reads the variable again from
    the resuming process's environment. When it is not set at launch the attempt does
    not start: :class:`~steadyrun.errors.MissingSecret` names the variable, the task and
    the ``export`` to run. ``repr`` shows the name only.

    ``withheld=True`` marks the stored form of a value that was given directly: the
    value was not stored and is read back from the variable of the same name.
    """

    __slots__ = ("name", "withheld")
    name: str
    withheld: bool

    def __init__(self, name: str, *, withheld: bool = False) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"Secret({name!r}): give the name of an environment variable (letters, "
                "digits and _, not starting with a digit), e.g. Secret('API_KEY')")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "withheld", bool(withheld))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Secret cannot be changed; make a new one")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self.name, self.withheld) == (other.name, other.withheld)

    def __hash__(self) -> int:
        return hash((Secret, self.name, self.withheld))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_secret, (self.name, self.withheld))

    def __repr__(self) -> str:
        if self.withheld:
            return f"Secret({self.name!r}, withheld=True)"
        return f"Secret({self.name!r})"

    def resolve(self, key: str, what: str, environ: Mapping[str, str] | None = None) -> str:
        """The value of the variable now (``environ``: default ``os.environ``).

        ``key`` is the env entry it is the value of and ``what`` says whose env it is
        ("task 'train'"), for the message of :class:`MissingSecret` when it is not set."""
        source = os.environ if environ is None else environ
        value = _HANDED.get(self.name) if self.withheld and environ is None else None
        value = source.get(self.name) if value is None else value
        if value is not None:
            return value
        if self.withheld:
            raise MissingSecret(
                f"{what}: env {key!r} was given as a value when the experiment was defined; "
                f"steadyrun does not store env values, so it reads {self.name} from the "
                f"environment here, and {self.name} is not set. Run `export {self.name}=...` "
                f"and try again, or define the value as run.Secret({self.name!r})")
        return _missing(self.name, key, what)


def _missing(name: str, key: str, what: str) -> str:
    target = f"env {key!r} (run.Secret({name!r}))" if key != name else f"run.Secret({name!r})"
    raise MissingSecret(
        f"{what}: {target} is read from the environment when the attempt is launched, and "
        f"{name} is not set in the launching process. Run `export {name}=...` in the shell "
        "that launches (or resumes) the experiment and try again")


def _secret(name: str, withheld: bool) -> Secret:
    return Secret(name, withheld=withheld)


def check_env(env: Any, what: str) -> dict[str, str | Secret]:
    """``env`` validated: names to strings (numbers become strings) or :class:`Secret`.

    Raises :class:`ConfigError` naming ``what`` for anything else; the message never
    shows a value."""
    env = {} if env is None else env
    if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
        raise ConfigError(f"{what}(env=...) must map variable names to strings, got a "
                          f"{type(env).__name__}")
    checked: dict[str, str | Secret] = {}
    for key, value in env.items():
        if isinstance(value, Mapping) and len(value) == 1 and (
                set(value) <= {"secret", "withheld"}):  # what env_to_config wrote
            (kind, name), = value.items()
            value = Secret(name, withheld=kind == "withheld")
        if isinstance(value, Secret):
            checked[key] = value
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(
                f"{what}(env=...): the value of {key!r} must be a string or run.Secret(...), "
                f"got a {type(value).__name__}")
        else:
            checked[key] = str(value)
    return checked


def describe_env(env: Mapping[str, Any]) -> str:
    """``"env API_KEY (secret), OMP_NUM_THREADS"``: the names, never the values."""
    names = [f"{k} (secret)" if isinstance(v, Secret) and not v.withheld else k
             for k, v in sorted(env.items())]
    return "env " + ", ".join(names) if names else ""


def resolve_env(env: Mapping[str, Any], what: str,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain values for every entry: each :class:`Secret` read now. Raises
    :class:`MissingSecret` for the first variable that is not set."""
    return {k: v.resolve(k, what, environ) if isinstance(v, Secret) else str(v)
            for k, v in env.items()}


def looks_secret(name: str, value: Any) -> bool:
    """Whether a plain env entry looks like a credential: by its name (``API_KEY``,
    ``HF_TOKEN``, ``DB_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``...) or by the shape of its
    value (``sk-...``, ``ghp_...``, ``hf_...``, ``AKIA...``, a JWT)."""
    return bool(_SECRET_NAME.search(name.upper()) or _SECRET_VALUE.match(str(value)))


def withhold_env(env: Mapping[str, Any], everything: bool = True) -> dict[str, Any]:
    """What the store keeps of ``env``: a :class:`Secret` as it is, a plain value as a
    withheld reference to the variable of the same name; with ``everything=False`` only
    the plain values that :func:`looks_secret` are withheld, the others kept as they
    are. Raises :class:`ConfigError` for a value to withhold under a name that is not a
    valid variable name."""
    stored: dict[str, Any] = {}
    for key, value in env.items():
        if isinstance(value, Secret) or not (everything or looks_secret(key, value)):
            stored[key] = value  # a secret's name, or a value kept as it is
        elif not _NAME.match(key):
            raise ConfigError(
                f"env {key!r} is not a valid variable name (letters, digits and _, not "
                "starting with a digit), so its value could not be read back from the "
                "environment on resume; rename it")
        else:
            stored[key] = Secret(key, withheld=True)
    return stored


def env_to_config(env: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``env`` as an executor's ``to_config()`` stores it (JSON): ``{"secret": NAME}`` or
    ``{"withheld": NAME}`` per entry, never a value; ``check_env`` reads it back."""
    return {k: {"withheld" if v.withheld else "secret": v.name}
            for k, v in withhold_env(env).items()}


def withheld_values(env: Mapping[str, Any], everything: bool = True) -> dict[str, str]:
    """The plain values of ``env`` that the store does not keep, by name: what a
    launching process hands to a process that rebuilds the experiment from the store
    (see :func:`withhold_env`)."""
    return {k: v for k, v in env.items() if not isinstance(v, Secret)
            and (everything or looks_secret(k, v))}


def withhold(obj: Any) -> Any:
    """``obj`` as the store keeps it: in the env of every Script inside it (also in
    lists, dicts and configs), the plain values that :func:`looks_secret` withheld
    (:func:`withhold_env`); what is not changed is the same object."""
    return _walk(obj, lambda s: s.with_env(withhold_env(s.env, everything=False))
                 if s.env else s, {})


def resolve(obj: Any, what: str, environ: Mapping[str, str] | None = None) -> Any:
    """``obj`` with the env of every Script inside it resolved to plain values
    (:func:`resolve_env`); raises :class:`MissingSecret`."""
    return _walk(obj, lambda s: s.with_env(resolve_env(s.env, what, environ))
                 if any(isinstance(v, Secret) for v in s.env.values()) else s, {})


def scripts_env(obj: Any) -> list[dict[str, Any]]:
    """The env of every Script inside ``obj``."""
    found: list[dict[str, Any]] = []

    def note(script: Any) -> Any:
        found.append(script.env)
        return script

    _walk(obj, note, {})
    return found


def _walk(obj: Any, fn: Any, memo: dict[int, Any]) -> Any:
    from steadyrun.config.core import Buildable
    from steadyrun.config.script import Script

    if isinstance(obj, str | int | float | bytes | type(None)):
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    memo[key] = obj
    new: Any = obj
    if isinstance(obj, Script):
        new = fn(obj)
    elif isinstance(obj, Buildable):
        args = {k: _walk(v, fn, memo) for k, v in obj.__arguments__.items()}
        if any(args[k] is not v for k, v in obj.__arguments__.items()):
            new = obj.__copy__()
            new.__arguments__.update(args)
    elif type(obj) is dict:
        items = {k: _walk(v, fn, memo) for k, v in obj.items()}
        if any(items[k] is not v for k, v in obj.items()):
            new = items
    elif type(obj) in (list, tuple):
        seq = [_walk(v, fn, memo) for v in obj]
        if any(a is not b for a, b in zip(seq, obj, strict=True)):
            new = type(obj)(seq)
    memo[key] = new
    return new


def handoff(payload: Any, what: str) -> tuple[Any, str | None]:
    """What a launcher writes for a worker process, and what it hands over.

    Returns ``payload`` with every Script's env withheld (the form a payload file may
    hold) and, when ``payload`` is a Script with env, the JSON of its resolved values
    for the worker's environment (:data:`steadyrun.attempt.worker.HANDED_ENV`), else
    None. Secrets are read now; raises :class:`MissingSecret` naming the first one
    that is not set."""
    from steadyrun.config.script import Script

    handed = None
    if isinstance(payload, Script) and payload.env:
        import json

        handed = json.dumps(resolve_env(payload.env, what))
    return withhold(payload), handed


def launch_values(tasks: Any, executors: Any) -> dict[str, str]:
    """Check that every secret of ``tasks`` (their payloads' scripts) and ``executors``
    (their ``env``, and their tunnel's) is set now, and return the plain values a
    process that rebuilds them from the store must find in its environment.

    Raises :class:`MissingSecret` for the first variable that is not set, and
    :class:`ConfigError` when two entries give one variable different values (a
    rebuilt experiment reads them back by name, so they would collide)."""
    found: list[tuple[str, Mapping[str, Any], bool]] = []
    for task in tasks:
        found += [(f"task {task.name!r}", env, False) for env in scripts_env(task.payload)]
    for ex in executors:
        for owner in (ex, getattr(ex, "tunnel", None)):
            env = getattr(owner, "env", None)
            if isinstance(env, Mapping) and env:
                found.append((f"{type(owner).__name__}(env=...)", env, True))
        runtime = getattr(ex, "runtime_env", None)  # Ray's env_vars
        if isinstance(runtime, Mapping) and isinstance(runtime.get("env_vars"), Mapping):
            found.append((f"{type(ex).__name__}(runtime_env=...)", runtime["env_vars"],
                          True))
    values: dict[str, str] = {}
    given: dict[str, str] = {}
    for what, env, everything in found:
        resolve_env(env, what)
        for key, value in withheld_values(env, everything).items():
            if values.get(key, value) != value:
                raise ConfigError(
                    f"{what} and {given[key]} give env {key!r} different values; env values "
                    "are not stored, and an experiment rebuilt from the store reads them "
                    f"back by name: use run.Secret with a different name for each")
            values[key], given[key] = value, what
    return values


def take_handed_values() -> None:
    """Take the values a launching process handed over (:data:`HANDED_VALUES_ENV`) out
    of this process's environment; withheld entries then resolve to them first."""
    text = os.environ.pop(HANDED_VALUES_ENV, None)
    if text:
        import json

        values = json.loads(text)
        if isinstance(values, dict):
            _HANDED.update({str(k): str(v) for k, v in values.items()})


def script_env(script: Any, handed: str | None) -> dict[str, str]:
    """A Script's env as plain values, in the process that runs it: the values its
    launcher handed over (``handed``, the JSON of :func:`handoff`), else each
    :class:`Secret` read from this process's environment. Raises
    :class:`MissingSecret` naming the variable and the task."""
    values: dict[str, str] = {}
    if handed:
        import json

        try:
            values = json.loads(handed)
        except ValueError:
            values = {}
    task = os.environ.get("STEADYRUN_TASK")
    what = f"task {task!r}" if task else "the script"
    return {k: str(values[k]) if k in values else
            v.resolve(k, what) if isinstance(v, Secret) else str(v)
            for k, v in script.env.items()}
