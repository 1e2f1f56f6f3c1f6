"""What to run: ``Config``, ``Partial`` and ``Script``, and what can be done with them.

A :class:`Config` is a lazy call: a target (function or class) and its arguments, checked
against the target's signature as they are set, built on demand with :meth:`~Buildable.build`.
A :class:`Partial` builds to a ``functools.partial``. A :class:`Script` is a shell or Python
script to run as it is. All three nest, compare by value, deep-copy with sharing kept,
round-trip through YAML (:func:`to_yaml` / :func:`from_yaml`), take command-line overrides
(:func:`apply_overrides`) and have a stable content hash (:func:`fingerprint`).

They are mutable, so they are not hashable with ``hash()``: use :func:`fingerprint` as the
content key (same for equal configs, in every process).
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from typing import Any

from steadyrun.errors import (
    BuildError,
    ConfigError,
    UnknownParameterError,
)

ROOT = "<root>"
_ACTIVE = object()  # marks a value whose canonical form is being computed (cycle check)
_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})  # fast paths in tree walks
_PAYLOAD_HINT = ("define it at module level in an importable module, or run it as a task: "
                 "the engine ships such payloads with cloudpickle")


class Buildable:
    """Base of :class:`Config` and :class:`Partial`: a target and its arguments.

    ``__fn_or_cls__`` is the target, ``__arguments__`` maps parameter names to values
    (positional arguments are bound to their names). Read and set arguments as attributes;
    an unset parameter reads as its default. A name the target does not accept raises
    :class:`UnknownParameterError` at once, listing the valid names.
    """

    __fn_or_cls__: Callable[..., Any]
    __arguments__: dict[str, Any]
    __hash__ = None  # type: ignore[assignment]  # mutable: use fingerprint() instead

    def __init__(self, fn_or_cls: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        if isinstance(fn_or_cls, Buildable) or _is_foreign(fn_or_cls) or not callable(fn_or_cls):
            raise ConfigError(
                f"{type(self).__name__}(...) needs a function or class as its first argument, "
                f"got {_short(fn_or_cls)}")
        object.__setattr__(self, "__fn_or_cls__", fn_or_cls)
        object.__setattr__(self, "__arguments__", {})
        sig = _signature(fn_or_cls)
        if args:
            if sig is None:
                raise ConfigError(
                    f"{self._label()}: the signature of {_name(fn_or_cls)} cannot be read, so "
                    "positional arguments cannot be bound to names; pass them by name")
            try:
                bound = sig.bind_partial(*args)
            except TypeError as e:
                raise ConfigError(f"{self._label()}: {e}") from None
            for name, value in bound.arguments.items():
                self.__arguments__[name] = _coerce_value(value, {})
        for name, value in kwargs.items():
            if name in self.__arguments__:
                raise ConfigError(
                    f"{self._label()}: got two values for {name!r} (positional and by name)")
            setattr(self, name, value)

    # -- attribute access -------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; dunders never name parameters (and pickle
        # and copy probe them on half-built objects).
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        args = self.__dict__.get("__arguments__", {})
        if name in args:
            return args[name]
        params = _params(self.__fn_or_cls__)
        if params is not None and name in params:
            default = params[name].default
            if default is not params[name].empty:
                return default
            raise AttributeError(
                f"{self._label()}: parameter {name!r} is not set and has no default")
        _check_name(self.__fn_or_cls__, name, self._label())
        raise AttributeError(f"{self._label()}: parameter {name!r} is not set")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__") and name.endswith("__"):
            raise ConfigError(
                f"{self._label()}: {name!r} cannot be set as an argument; to change the "
                f"target build a new {type(self).__name__}")
        _check_name(self.__fn_or_cls__, name, self._label())
        self.__arguments__[name] = _coerce_value(value, {})

    def __delattr__(self, name: str) -> None:
        if name not in self.__arguments__:
            raise AttributeError(f"{self._label()}: parameter {name!r} is not set")
        del self.__arguments__[name]

    def __dir__(self) -> list[str]:
        params = _params(self.__fn_or_cls__) or {}
        return sorted(set(super().__dir__()) | set(params) | set(self.__arguments__))

    # -- value semantics ----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self.__fn_or_cls__ == other.__fn_or_cls__
                and self.__arguments__ == other.__arguments__)

    def __copy__(self) -> Buildable:
        new = object.__new__(type(self))
        object.__setattr__(new, "__fn_or_cls__", self.__fn_or_cls__)
        object.__setattr__(new, "__arguments__", dict(self.__arguments__))
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Buildable:
        new = object.__new__(type(self))
        memo[id(self)] = new
        object.__setattr__(new, "__fn_or_cls__", self.__fn_or_cls__)
        object.__setattr__(new, "__arguments__", copy.deepcopy(self.__arguments__, memo))
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {"__fn_or_cls__": self.__fn_or_cls__, "__arguments__": self.__arguments__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "__fn_or_cls__", state["__fn_or_cls__"])
        object.__setattr__(self, "__arguments__", state["__arguments__"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.__arguments__.items())
        return f"{self._label()}({args})"

    def _label(self) -> str:
        return f"{type(self).__name__}[{_name(self.__fn_or_cls__)}]"

    # -- operations -----------------------------------------------------------------------

    def build(self) -> Any:
        """Build the whole tree depth-first and return what the target gives.

        Nested configs anywhere in the arguments (also inside lists, tuples and dicts) are
        built first; one config object used in two places is built once and shared.
        Raises :class:`BuildError` naming the dotted path that failed, with the original
        error as ``__cause__``.
        """
        return build(self)

    def fingerprint(self) -> str:
        """A stable sha256 hex digest of the content; see :func:`fingerprint`."""
        return fingerprint(self)


class Config(Buildable):
    """A lazy call: ``Config(Model, hidden=128).build()`` returns ``Model(hidden=128)``."""


class Partial(Buildable):
    """A lazy partial: ``Partial(train, epochs=3).build()`` returns
    ``functools.partial(train, epochs=3)`` with nested configs built."""


# --- building ---------------------------------------------------------------------------


def build(obj: Any) -> Any:
    """Build any value: configs anywhere inside it are built, plain values returned as is.

    Raises :class:`BuildError` saying which target failed at which dotted path.
    """
    return _build(coerce(obj), ROOT, {}, set())


def _build(value: Any, path: str, memo: dict[int, Any], active: set[int]) -> Any:
    if type(value) in _ATOMS:
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, Buildable):
        if key in active:
            raise BuildError(f"cycle in the config at {path}: a config contains itself")
        active.add(key)
        args = {k: _build(v, f"{path}.{k}", memo, active)
                for k, v in value.__arguments__.items()}
        active.discard(key)
        fn = value.__fn_or_cls__
        try:
            pos, kw = _call_args(fn, args, partial=isinstance(value, Partial))
            if isinstance(value, Partial):
                result = functools.partial(fn, *pos, **kw)
            else:
                result = fn(*pos, **kw)
        except Exception as e:
            raise BuildError(
                f"failed to build {_name(fn)} at {path}: {type(e).__name__}: {e}") from e
    elif isinstance(value, list | tuple | dict | set | frozenset):
        if key in active:
            raise BuildError(f"cycle in the config at {path}: a container contains itself")
        active.add(key)
        result = _rebuild_container(
            value, lambda k, v: _build(v, f"{path}.{k}", memo, active))
        active.discard(key)
    else:
        return value
    memo[key] = result
    return result


def _rebuild_container(value: Any, fn: Callable[[Any, Any], Any]) -> Any:
    if isinstance(value, dict):
        new = {k: fn(k, v) for k, v in value.items()}
        return new if type(value) is dict else _retype(value, new)
    items = [fn(i, v) for i, v in enumerate(value)]
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*items)  # a namedtuple
    return _retype(value, items)


def _retype(value: Any, items: Any) -> Any:
    try:
        return type(value)(items)
    except Exception:
        return items


def _call_args(fn: Any, args: dict[str, Any], partial: bool) -> tuple[list[Any], dict[str, Any]]:
    """Split named arguments into what must go positionally and what goes by keyword."""
    params = _params(fn)
    if params is None:
        return [], dict(args)
    kinds = {p.name: p.kind for p in params.values()}
    var_pos = next((n for n, k in kinds.items() if k == k.VAR_POSITIONAL), None)
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if var_pos is None or var_pos not in args:
        positional = [p for p in positional if p.kind == p.POSITIONAL_ONLY]
    pos: list[Any] = []
    kw = dict(args)
    for i, p in enumerate(positional):
        if p.name in kw:
            pos.append(kw.pop(p.name))
        elif p.default is not p.empty:
            pos.append(p.default)
        else:
            later = [q.name for q in positional[i + 1:] if q.name in kw]
            if later or (var_pos in kw) or not partial:
                raise TypeError(f"missing required positional argument {p.name!r}")
            break
    if var_pos is not None and var_pos in kw:
        pos.extend(kw.pop(var_pos))
    return pos, kw

# --- fiddle interop ---------------------------------------------------------------------


def coerce(obj: Any) -> Any:
    """Ours from a Fiddle-like object (one with ``__fn_or_cls__`` and ``__arguments__``).

    Converts recursively, also inside lists, tuples and dicts and inside our own configs;
    a Fiddle class whose name contains "Partial" becomes :class:`Partial`, others
    :class:`Config`. Values with nothing to convert come back as the same object.
    """
    return _coerce_value(obj, {})


def _is_foreign(obj: Any) -> bool:
    if isinstance(obj, Buildable | type | str | int | float | list | tuple | dict) or obj is None:
        return False
    state = getattr(obj, "__dict__", None)
    return isinstance(state, dict) and "__fn_or_cls__" in state and "__arguments__" in state


def _coerce_value(value: Any, memo: dict[int, Any]) -> Any:
    if type(value) in _ATOMS:
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    result = value
    if _is_foreign(value):
        name = type(value).__name__
        if "ArgFactory" in name:
            raise ConfigError(f"a Fiddle {name} has no steadyrun equivalent; use a Config "
                              "or Partial instead")
        cls = Partial if "Partial" in name else Config
        fn = value.__fn_or_cls__
        args = dict(value.__arguments__)
        new = cls(fn)
        memo[key] = new
        params = _params(fn) or {}
        # Fiddle keys positional-only and *args values by their position (an int)
        positional = [n for n, p in params.items()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var_pos = next((n for n, p in params.items() if p.kind == p.VAR_POSITIONAL), None)
        extra = []
        for index in sorted(k for k in args if isinstance(k, int)):
            if index < len(positional):
                args[positional[index]] = args.pop(index)
            elif var_pos is not None:
                extra.append(args.pop(index))
            else:
                raise ConfigError(f"cannot convert the Fiddle {name} of {_name(fn)}: it has "
                                  f"a value at position {index}, which the target does not take")
        if extra:
            args[var_pos] = tuple(extra)
        for k, v in args.items():
            new.__arguments__[k] = _coerce_value(v, memo)
        return new
    if isinstance(value, Buildable):
        memo[key] = value
        for k, v in value.__arguments__.items():
            new_v = _coerce_value(v, memo)
            if new_v is not v:
                value.__arguments__[k] = new_v
    elif isinstance(value, list | tuple | dict) and value:
        memo[key] = value
        changed = False

        def conv(_k: Any, v: Any) -> Any:
            nonlocal changed
            new_v = _coerce_value(v, memo)
            changed = changed or new_v is not v
            return new_v

        rebuilt = _rebuild_container(value, conv)
        if changed:
            result = rebuilt
    memo[key] = result
    return result

# --- paths, import paths, fingerprint, YAML, overrides (they live in sibling modules) ---


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted ``path`` ("model.layers.0.size"); ``""`` is ``obj`` itself.

    Walks configs (their arguments, or defaults), scripts, lists (by index) and dicts (by
    key). Raises :class:`ConfigError` naming the part of the path that does not exist.
    """
    from steadyrun.config import overrides

    return overrides.get_path(obj, path)


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set the value at a dotted ``path`` in place; see :func:`get_path`. Raises
    :class:`ConfigError` naming the path when it does not exist or cannot be changed."""
    from steadyrun.config import overrides

    overrides.set_path(obj, path, value)


def import_path(obj: Any) -> str:
    """``"module:qualname"`` for a module-level function, class, method or enum member.

    Raises :class:`SerializationError` for anything that does not import back to the
    same object: lambdas, closures, functions defined in ``__main__``, instances.
    """
    from steadyrun.config import _yaml

    return _yaml.import_path(obj)


def import_object(path: str) -> Any:
    """The object named by ``"module:qualname"`` (or a dotted ``"module.name"``).

    Raises :class:`ConfigError` naming the path when the module or attribute is missing.
    """
    from steadyrun.config import _yaml

    return _yaml.import_object(path)


def fingerprint(obj: Any) -> str:
    """A sha256 hex digest of ``obj``'s content, the same in every process and run.

    Equal configs get equal fingerprints (argument and dict-key order do not matter);
    any change of a value, target or type changes it, except a Script's env values
    that look like credentials, which are never stored (their names count). A value
    shared in many places is hashed once: the time is linear in the distinct objects.
    Raises
    :class:`SerializationError` for values that have no stable form (lambdas, closures,
    arbitrary instances).
    """
    from steadyrun.config import _yaml

    return _yaml.fingerprint(obj)


def to_yaml(obj: Any) -> str:
    """YAML text for ``obj``; :func:`from_yaml` gives back an equal value.

    Functions and classes are written by import path. Raises :class:`SerializationError`
    naming the dotted path of a value that cannot be written (a lambda, a closure, an
    arbitrary instance) and what to do instead.
    """
    from steadyrun.config import _yaml

    return _yaml.to_yaml(obj)


def from_yaml(text: str, source: str | None = None) -> Any:
    """The value written by :func:`to_yaml`. Builds only steadyrun's own types and plain
    values, but it imports the module of every ``!config:``, ``!partial:`` and
    ``!import`` target, and importing a module runs its code: read only YAML you trust,
    as you would unpickle only files you trust. ``source`` (a file name) is named in
    errors.

    Raises :class:`SerializationError` for malformed text, and for a document whose
    aliases (``*name``) would expand it past a million values (a few hundred bytes can
    stand for billions: it is refused before anything is built);
    :class:`ConfigError` for targets that cannot be imported."""
    from steadyrun.config import _yaml

    return _yaml.from_yaml(text, source)


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply command-line overrides (``"model.hidden=512"``, ``"lr*=0.5"``) in place.

    Returns ``cfg``. Raises :class:`OverrideError` for malformed text, a path that does
    not exist (naming the closest names) or arithmetic on a value that is not a number.
    """
    from steadyrun.config import overrides as _overrides

    return _overrides.apply_overrides(cfg, overrides)

# --- helpers ----------------------------------------------------------------------------


def _is_enum(value: Any) -> bool:
    enum = sys.modules.get("enum")
    return enum is not None and isinstance(value, enum.Enum)


@functools.lru_cache(maxsize=2048)
def _signature_cached(fn: Any) -> Any:
    import inspect

    try:
        return inspect.signature(fn)
    except (ValueError, TypeError):
        return None


def _signature(fn: Any) -> Any:
    """The target's ``inspect.Signature``, or ``None`` when it cannot be read."""
    try:
        return _signature_cached(fn)
    except TypeError:  # an unhashable callable
        return _signature_cached.__wrapped__(fn)


def _params(fn: Any) -> Any:
    sig = _signature(fn)
    return None if sig is None else sig.parameters


def _check_name(fn: Any, name: str, label: str) -> None:
    params = _params(fn)
    if params is None or name in params:
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind != p.VAR_KEYWORD]
    raise UnknownParameterError(
        f"{label}: no parameter named {name!r}; valid parameters: "
        f"{', '.join(valid) or '(none)'}{_suggest(name, valid)}")


def _suggest(name: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, valid, n=3)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__name__})"
