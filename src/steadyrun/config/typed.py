"""Typed override values: text read by the type hints of the parameter it sets.

``lr=1`` sets ``1.0`` when ``lr: float``; ``lr=abc`` raises
``OverrideError("lr: expected float, got 'abc'")``. What each hint accepts:

=========================  ==========================================================
``int``                    an integer (``8``, ``-3``, ``1_000``); not ``1.5``, not ``true``
``float``                  a number (``1``, ``1e-3``, ``inf``, ``nan``); ints become floats
``bool``                   ``true false yes no on off 1 0`` (any case)
``str``                    the text as written; quotes are removed (``'x y'``)
``Path`` (any ``PurePath``)  the text as a path
``X | None``, ``Optional``   ``none`` / ``null`` (any case), ``~``, or an ``X``
``A | B``                  the first of A, B that reads the text (in the order written)
``Literal[...]``           one of the listed values
an ``Enum``                a member's name (any case) or value
``list[T]``, ``tuple``,    ``[a, b]``, ``(a, b)`` or ``a,b``; each item read as ``T``
``set[T]``, ``Sequence``
``dict[K, V]``, ``Mapping``  ``{k: v, ...}``; keys read as ``K``, values as ``V``
a class                    ``Config(...)``, ``Partial(...)``, a ``{_target_: ...}`` mapping,
                           or a value that is already an instance (a number for ``int``)
no hint, ``Any``, others   the untyped grammar of :mod:`steadyrun.config.overrides`
=========================  ==========================================================

``Config(...)``, ``Partial(...)`` and ``{_target_: ...}`` values are accepted for any hint:
what they build is known only when they are built. A ``{_target_: ...}`` mapping becomes a
``Config`` (a ``Partial`` with ``_partial_: true``) whose fields are checked against its
own target's hints. Reading a ``_target_`` imports its module, which runs that module's
code: use targets from code you trust.

Values given to a config directly in Python are never checked here; only text (and the
plain values of YAML files and ``_target_`` mappings) goes through these rules.
"""

from __future__ import annotations

import enum
import os
import pathlib
import types
import typing
from collections import abc
from typing import Any

from steadyrun.config.core import Buildable, Config, Partial
from steadyrun.config.hints import (
    MAPPINGS,
    NO_HINT,
    SEQUENCES,
    SETS,
    param_hint,
    type_name,
    unwrap,
)
from steadyrun.errors import ConfigError, OverrideError

TARGET_KEY = "_target_"
PARTIAL_KEY = "_partial_"
_NONE_WORDS = frozenset({"none", "null", "~"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_UNTYPED_CLASSES = (type, abc.Callable, abc.Hashable, abc.Iterable, abc.Iterator)


def convert_text(text: str, hint: Any, where: str) -> Any:
    """The value of override text ``text`` for a parameter annotated ``hint``.

    ``where`` is the dotted path, used in messages. Raises :class:`OverrideError`
    ``"<where>: expected <type>, got '<text>'"`` when the text is not such a value.
    """
    from steadyrun.config.overrides import _BUILDABLE_RE, parse_value

    s = text.strip()
    hint = unwrap(hint)
    if hint is NO_HINT or hint is Any or hint is object:
        return convert_value(parse_value(s), NO_HINT, where)
    if _BUILDABLE_RE.match(s):
        return _untyped_walk(parse_value(s), where)  # call syntax: arguments as written
    if s.startswith("{") and _is_target_text(s):
        return convert_value(parse_value(s), hint, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _text_union(s, hint, args, where)
    if origin is typing.Literal:
        return _text_literal(s, hint, args, where)
    if hint is type(None) or hint is None:
        if s.lower() in _NONE_WORDS:
            return None
        raise _mismatch(where, hint, s)
    if origin is not None:
        return _text_generic(s, hint, origin, args, where)
    if isinstance(hint, type):
        return _text_class(s, hint, where)
    return convert_value(parse_value(s), NO_HINT, where)  # TypeVar, NewType, Callable, ...


def convert_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` (already parsed: from YAML, or inside a mapping) checked against ``hint``.

    Mappings with a ``_target_`` key become configs, anywhere inside ``value``; strings
    given for a typed parameter are read as override text (so ``lr: 1e-3``, which YAML
    reads as a string, is a float). Raises :class:`ConfigError` (an
    :class:`OverrideError`) naming ``where`` on a mismatch or a target that cannot be
    imported.
    """
    hint = unwrap(hint)
    if isinstance(value, Buildable):
        return _untyped_walk(value, where)
    if isinstance(value, dict) and TARGET_KEY in value:
        return target_config(value, where)
    if hint is NO_HINT or hint is Any or hint is object:
        return _untyped_walk(value, where)
    if isinstance(value, str):
        if _accepts_str(hint, value):
            return value
        return convert_text(value, hint, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for member in _ordered(args):
            try:
                return convert_value(value, member, where)
            except ConfigError as e:
                errors.append(e)
        raise _union_error(where, hint, value, errors)
    if origin is typing.Literal:
        for allowed in args:
            if allowed == value and type(allowed) is type(value):
                return allowed
        raise _mismatch(where, hint, value)
    if hint is type(None) or hint is None:
        if value is None:
            return None
        raise _mismatch(where, hint, value)
    if origin is not None:
        return _value_generic(value, hint, origin, args, where)
    if isinstance(hint, type):
        return _value_class(value, hint, where)
    return _untyped_walk(value, where)


def target_config(mapping: dict[Any, Any], where: str) -> Buildable:
    """``Config(target, **fields)`` from a ``{_target_: "pkg.mod.Name", ...}`` mapping.

    ``_partial_: true`` gives a :class:`Partial`. Fields are checked against the target's
    hints (nested ``_target_`` mappings become configs too). Importing the target runs
    its module's code. Raises :class:`OverrideError` naming ``where`` for a target that
    cannot be imported, an unknown field or a field of the wrong type.
    """
    from steadyrun.config._yaml import import_object

    fields = dict(mapping)
    path = fields.pop(TARGET_KEY)
    partial = fields.pop(PARTIAL_KEY, False)
    if not isinstance(path, str) or not path.strip():
        raise OverrideError(f"{where}: {TARGET_KEY} must be an import path such as "
                            f"'package.module.Name', got {path!r}")
    if not isinstance(partial, bool):
        raise OverrideError(f"{where}: {PARTIAL_KEY} must be true or false, got {partial!r}")
    try:
        target = import_object(path)
    except ConfigError as e:
        raise OverrideError(f"{where}: unknown {TARGET_KEY} {path!r}: {e}") from None
    if not callable(target):
        raise OverrideError(f"{where}: {TARGET_KEY} {path!r} is {type(target).__name__}, not "
                            "a function or class")
    bad = [k for k in fields if not isinstance(k, str)]
    if bad:
        raise OverrideError(f"{where}: field names must be strings, got {bad[0]!r}")
    cls = Partial if partial else Config
    try:
        new = cls(target)
    except ConfigError as e:
        raise OverrideError(f"{where}: {e}") from None
    for name, field in fields.items():
        field_where = f"{where}.{name}" if where else name
        value = convert_value(field, param_hint(target, name), field_where)
        try:
            setattr(new, name, value)
        except ConfigError as e:
            raise OverrideError(f"{field_where}: {e}") from None
    return new


# --- text ------------------------------------------------------------------------------


def _text_union(s: str, hint: Any, args: tuple[Any, ...], where: str) -> Any:
    if type(None) in args and s.lower() in _NONE_WORDS:
        return None
    errors: list[ConfigError] = []
    for member in _ordered(args):
        if member is type(None):
            continue
        try:
            return convert_text(s, member, where)
        except ConfigError as e:
            errors.append(e)
    raise _union_error(where, hint, s, errors)


def _text_literal(s: str, hint: Any, args: tuple[Any, ...], where: str) -> Any:
    from steadyrun.config.overrides import parse_value

    try:
        parsed = parse_value(s)
    except ConfigError:
        parsed = s
    plain = _unquote(s)
    for allowed in args:
        if allowed == parsed and type(allowed) is type(parsed):
            return allowed
        if isinstance(allowed, str) and allowed == plain:
            return allowed
        if isinstance(allowed, enum.Enum) and plain in (allowed.name, str(allowed.value)):
            return allowed
    raise _mismatch(where, hint, s)


def _text_class(s: str, hint: type, where: str) -> Any:
    from steadyrun.config.overrides import _literal_or_none, parse_value

    if hint is bool:
        word = s.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _mismatch(where, hint, s)
    if hint is int:
        value = _literal_or_none(s)
        if type(value) is int:
            return value
        raise _mismatch(where, hint, s)
    if hint is float:
        value = _literal_or_none(s)
        if value is None and s.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            try:
                value = float(s)
            except ValueError:
                raise _mismatch(where, hint, s) from None
        if type(value) in (int, float):
            return float(value)
        raise _mismatch(where, hint, s)
    if hint is str:
        return _unquote(s)
    if hint in _UNTYPED_CLASSES:
        return convert_value(parse_value(s), NO_HINT, where)
    if issubclass(hint, pathlib.PurePath) or hint is os.PathLike:
        path_cls: Any = pathlib.Path if hint is os.PathLike else hint
        text = _unquote(s)
        if not text:
            raise _mismatch(where, hint, s)
        return path_cls(text)
    if issubclass(hint, enum.Enum):
        return _enum_member(hint, s, where)
    if hint in (list, tuple, set, frozenset, dict):
        return _text_generic(s, hint, hint, (), where)
    value = convert_value(parse_value(s), NO_HINT, where)
    if isinstance(value, hint):
        return value
    raise _mismatch(where, hint, s)


def _text_generic(s: str, hint: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    from steadyrun.config.overrides import parse_value

    if origin in MAPPINGS:
        items = _items(s, "{", "}")
        if items is None:
            raise _mismatch(where, hint, s)
        key_hint = args[0] if len(args) == 2 else NO_HINT
        value_hint = args[1] if len(args) == 2 else NO_HINT
        result: dict[Any, Any] = {}
        for item in items:
            pair = _split(item, ":", maxsplit=1)
            if len(pair) != 2:
                raise OverrideError(f"{where}: the dict item {item.strip()!r} needs "
                                    "'key: value'")
            key = convert_text(pair[0], key_hint, where)
            try:
                result[key] = convert_text(pair[1], value_hint, f"{where}.{key}")
            except TypeError:
                raise OverrideError(f"{where}: the dict key {pair[0].strip()!r} cannot be a "
                                    "key (it is a list, dict or config)") from None
        return result
    if origin is tuple or origin in SEQUENCES or origin in SETS:
        items = _items(s, "[", "]")
        if items is None:
            items = _items(s, "(", ")")
        if items is None:
            raise _mismatch(where, hint, s)
        def text_mismatch(problem: str) -> OverrideError:
            if problem == "length":
                want = 0 if args == ((),) else len(args)
                return OverrideError(f"{where}: expected {type_name(hint)} ({want} items), "
                                     f"got {s!r} ({len(items)} items)")
            return OverrideError(f"{where}: the items of a set must be hashable, got {s!r}")

        return _collection(items, origin, args, convert_text, where, text_mismatch)
    return convert_value(parse_value(s), NO_HINT, where)  # type[...], Callable[...], ...


def _items(s: str, opening: str, closing: str) -> list[str] | None:
    """The item texts of ``[a, b]`` (with these brackets) or of bare ``a,b``; else None."""
    if s.startswith(opening):
        if not s.endswith(closing) or len(s) < 2:
            raise OverrideError(f"{s!r} opens {opening!r} but does not end with {closing!r}")
        inner = s[1:-1]
        if not inner.strip():
            return []
        items = _split(inner, ",")
        if len(items) > 1 and not items[-1].strip():
            items = items[:-1]  # a trailing comma
        if any(not item.strip() for item in items):
            raise OverrideError(f"{s!r} has an empty item between commas")
        return items
    if opening == "{" or s[:1] in "[({":
        return None
    items = _split(s, ",")
    if len(items) < 2 or any(not item.strip() for item in items):
        return None
    return items


def _enum_member(hint: type[enum.Enum], s: str, where: str) -> Any:
    from steadyrun.config.overrides import _literal_or_none

    plain = _unquote(s)
    for member in hint:
        if member.name == plain:
            return member
    for member in hint:
        if member.name.lower() == plain.lower():
            return member
    parsed = _literal_or_none(s)
    for member in hint:
        if (parsed is not None and member.value == parsed) or str(member.value) == plain:
            return member
    raise _mismatch(where, hint, s)


# --- values ----------------------------------------------------------------------------


def _value_class(value: Any, hint: type, where: str) -> Any:
    if hint is float and type(value) in (int, float):
        return float(value)
    if hint is int and type(value) is int:
        return value
    if hint is bool:
        if type(value) is bool:
            return value
        if type(value) is int and value in (0, 1):
            return bool(value)
        raise _mismatch(where, hint, value)
    if hint is str and type(value) in (int, float):
        return str(value)  # YAML reads `name: 1` as a number
    if hint in (int, float, str):
        raise _mismatch(where, hint, value)
    if issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        return _enum_member(hint, repr(value) if not isinstance(value, str) else value, where)
    if hint in (list, tuple, set, frozenset, dict):
        return _value_generic(value, hint, hint, (), where)
    if hint in _UNTYPED_CLASSES or isinstance(value, hint):
        return _untyped_walk(value, where)
    raise _mismatch(where, hint, value)


def _value_generic(value: Any, hint: Any, origin: Any, args: tuple[Any, ...],
                   where: str) -> Any:
    if origin in MAPPINGS:
        if not isinstance(value, dict):
            raise _mismatch(where, hint, value)
        key_hint = args[0] if len(args) == 2 else NO_HINT
        value_hint = args[1] if len(args) == 2 else NO_HINT
        return {convert_value(k, key_hint, where): convert_value(v, value_hint, f"{where}.{k}")
                for k, v in value.items()}
    if origin is tuple or origin in SEQUENCES or origin in SETS:
        if isinstance(value, str | bytes | dict) or not isinstance(
                value, list | tuple | set | frozenset):
            raise _mismatch(where, hint, value)
        items = list(value)
        result = _collection(items, origin, args, convert_value, where,
                             lambda problem: _mismatch(where, hint, value))
        if isinstance(result, list) and origin is not list and not isinstance(value, list):
            return type(value)(result)
        return result
    return _untyped_walk(value, where)


def _untyped_walk(value: Any, where: str, seen: set[int] | None = None) -> Any:
    """``value`` with every ``_target_`` mapping inside it made a config (also inside
    the arguments of configs, which are changed in place)."""
    if not isinstance(value, Buildable | dict | list | tuple):
        return value
    seen = set() if seen is None else seen
    if id(value) in seen:  # shared or cyclic (YAML anchors): walked once
        return value
    seen.add(id(value))
    if isinstance(value, Buildable):
        for name, arg in list(value.__arguments__.items()):
            new = _untyped_walk(arg, f"{where}.{name}", seen)
            if new is not arg:
                value.__arguments__[name] = new
        return value
    if isinstance(value, dict):
        if TARGET_KEY in value:
            return target_config(value, where)
        items = {k: _untyped_walk(v, f"{where}.{k}", seen) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value
        return items if type(value) is dict else value
    items_ = [_untyped_walk(v, f"{where}.{i}", seen) for i, v in enumerate(value)]
    if type(value) not in (list, tuple) or all(a is b for a, b in zip(items_, value, strict=True)):
        return value
    return type(value)(items_)


# --- helpers ---------------------------------------------------------------------------


def _ordered(args: tuple[Any, ...]) -> list[Any]:
    """Union members, the narrow readings first: ``float | int`` reads ``1`` as int."""
    rank = {int: 0, bool: 1, float: 2}
    return sorted(args, key=lambda a: rank.get(a, 3))


def _accepts_str(hint: Any, value: str) -> bool:
    if hint is str:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts_str(unwrap(a), value) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return False


def _is_target_text(s: str) -> bool:
    return TARGET_KEY in s


def _unquote(s: str) -> str:
    import ast

    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return s
        if isinstance(value, str):
            return value
    return s


def _split(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    from steadyrun.config.overrides import split_top

    return split_top(text, sep, maxsplit)


def _union_error(where: str, hint: Any, got: Any, errors: list[ConfigError]) -> ConfigError:
    """The error of the one member that failed deeper inside (an item of a list), if there
    is exactly one such; else "expected A | B"."""
    deeper = [e for e in errors if not str(e).startswith(f"{where}: ")]
    return deeper[0] if len(deeper) == 1 else _mismatch(where, hint, got)


def _mismatch(where: str, hint: Any, got: Any) -> OverrideError:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return OverrideError(f"{where}: expected {type_name(hint)}, got {shown}")


def _collection(items: list[Any], origin: Any, args: tuple[Any, ...],
                convert: Any, where: str, mismatch: Any) -> Any:
    """``items`` converted one by one (``convert(item, hint, path)``) into the tuple, set
    or list that ``origin[args]`` names; ``mismatch("length" | "unhashable")`` makes the
    error for a fixed tuple of another length or unhashable set items."""
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        fixed = () if args == ((),) else args  # tuple[()]
        if len(items) != len(fixed):
            raise mismatch("length")
        return tuple(convert(t, a, f"{where}.{i}")
                     for i, (t, a) in enumerate(zip(items, fixed, strict=True)))
    item_hint = args[0] if args else NO_HINT
    values = [convert(t, item_hint, f"{where}.{i}") for i, t in enumerate(items)]
    if origin is tuple:
        return tuple(values)
    if origin in SETS:
        try:
            return frozenset(values) if origin is frozenset else set(values)
        except TypeError:
            raise mismatch("unhashable") from None
    return values
