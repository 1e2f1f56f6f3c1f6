"""Command-line overrides: ``key=value`` text applied to a config in place.

Grammar (one override per string)::

    override := path op value
    path     := part ("." part)*        parameter names, list indices, dict keys
    op       := "=" | "+=" | "-=" | "*=" | "/="     (the arithmetic ones need numbers)
    value    := a Python literal              1e-3, 'x y', [1, 2], {'a': 1}, (1, 2)
              | null | true | false | None | True | False | inf | -inf | nan
              | Config(pkg.mod:Name, k=value, ...) | Partial(pkg.mod:fn, k=value, ...)
              | {_target_: pkg.mod.Name, k: value, ...}     (``_partial_: true``: a Partial)
              | [a, b] / {k: v} / (a, b) whose items are values or bare words
              | anything else: the text itself, as a string

A value for a parameter with a type hint is read by that hint (:mod:`steadyrun.config.typed`):
``lr=1`` gives ``1.0`` for ``lr: float``, ``flag=yes`` gives ``True`` for ``flag: bool``,
``name=1`` gives ``"1"`` for ``name: str``, and ``lr=abc`` raises ``OverrideError``
("lr: expected float, got 'abc'"). Parameters without hints read values as above.
``Config(...)`` and ``_target_`` values import their targets, which runs their modules.

All the overrides of one call apply, or none of them (they are tried on a copy first).
"""

from __future__ import annotations

import ast
import copy
import re
from typing import Any

from steadyrun.config._yaml import import_object
from steadyrun.config.core import (
    ROOT,
    Buildable,
    Config,
    Partial,
    _params,
    _short,
    _suggest,
)
from steadyrun.config.hints import hint_at
from steadyrun.config.script import Script
from steadyrun.config.typed import convert_text
from steadyrun.errors import ConfigError, OverrideError, UnknownParameterError

GRAMMAR = "key=value (also key+=, key-=, key*=, key/= for numbers), e.g. model.hidden=512"
_WORDS: dict[str, Any] = {
    "null": None, "None": None, "~": None, "true": True, "True": True,
    "false": False, "False": False,
    "inf": float("inf"), "+inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"),
}
_BUILDABLE_RE = re.compile(r"^(Config|Partial)\s*\((.*)\)$", re.DOTALL)
_KWARG_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)(.*)$", re.DOTALL)
_CLOSING = {"[": "]", "{": "}", "(": ")"}
_MAX_DEPTH = 50


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...] | str) -> Any:
    """Apply ``overrides`` to ``cfg`` in place and return it; see the module docstring.

    Raises :class:`OverrideError` for malformed text, a path that does not exist (naming
    the closest names), or arithmetic on a value that is not a number. When one override
    fails, none is applied.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(overrides, list | tuple):
        raise OverrideError(f"overrides must be a list of strings, got {type(overrides).__name__}")
    split = [split_override(text) for text in overrides]
    try:
        trial = copy.deepcopy(cfg)
    except Exception:  # something in the config cannot be copied: apply directly
        trial = None
    if trial is not None:
        for text, (key, op, right) in zip(overrides, split, strict=True):
            _apply_one(trial, text, key, op, right)
    for text, (key, op, right) in zip(overrides, split, strict=True):
        _apply_one(cfg, text, key, op, right)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """``(path, op, value)`` from ``"path op value"``, the value read without type hints
    (see :func:`apply_overrides` for the typed reading); raises :class:`OverrideError`."""
    key, op, right = split_override(text)
    try:
        value = parse_value(right)
    except OverrideError as e:
        raise OverrideError(f"override {text!r}: {e}") from e.__cause__
    return key, op, value


def split_override(text: str) -> tuple[str, str, str]:
    """``(path, op, value text)`` from ``"path op value"``; raises :class:`OverrideError`
    for text without ``=`` or with an empty path part."""
    if not isinstance(text, str):
        raise OverrideError(f"an override must be a string {GRAMMAR!r}, got {text!r}")
    if "=" not in text:
        raise OverrideError(f"override {text!r} has no '=': expected {GRAMMAR}")
    left, _, right = text.partition("=")
    op = "="
    if left[-1:] in ("+", "-", "*", "/"):
        op, left = left[-1] + "=", left[:-1]
    key = left.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise OverrideError(
            f"override {text!r}: the key {key!r} is empty or has an empty part; expected "
            f"{GRAMMAR}")
    return ".".join(p.strip() for p in parts), op, right


def parse_value(text: str, _depth: int = 0) -> Any:
    """The value of an override's right-hand side; see the grammar above."""
    if _depth > _MAX_DEPTH:
        raise OverrideError(f"the value is nested more than {_MAX_DEPTH} levels deep")
    s = text.strip()
    if s in _WORDS:
        return _WORDS[s]
    match = _BUILDABLE_RE.match(s)
    if match:
        return _parse_buildable(match.group(1), match.group(2), _depth)
    try:
        return ast.literal_eval(s)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if s[:1] in _CLOSING:
        return _parse_container(s, _depth)
    return s


def _literal_or_none(text: str) -> Any:
    """The Python literal ``text`` is, or None when it is none."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _parse_container(s: str, depth: int) -> Any:
    opening, closing = s[0], _CLOSING[s[0]]
    if not s.endswith(closing) or len(s) < 2:
        raise OverrideError(f"{s!r} opens {opening!r} but does not end with {closing!r}")
    items = split_top(s[1:-1], ",")
    trailing_comma = len(items) > 1 and not items[-1].strip()
    if trailing_comma or items == [""] or not items[-1].strip():
        items = items[:-1]
    if any(not item.strip() for item in items):
        raise OverrideError(f"{s!r} has an empty item between commas")
    if opening == "{":
        result: dict[Any, Any] = {}
        for item in items:
            pair = split_top(item, ":", maxsplit=1)
            if len(pair) != 2:
                raise OverrideError(f"the dict item {item.strip()!r} needs 'key: value'")
            k = parse_value(pair[0], depth + 1)
            try:
                result[k] = parse_value(pair[1], depth + 1)
            except TypeError:
                raise OverrideError(f"the dict key {pair[0].strip()!r} cannot be a key "
                                    "(it is a list, dict or config)") from None
        return result
    values = [parse_value(item, depth + 1) for item in items]
    if opening == "[":
        return values
    if len(values) == 1 and not trailing_comma:
        return values[0]  # "(x)" is x, as in Python
    return tuple(values)


def _parse_buildable(kind: str, inner: str, depth: int) -> Buildable:
    items = split_top(inner, ",")
    if items and not items[-1].strip() and len(items) > 1:
        items = items[:-1]
    target_text = items[0].strip()
    if not target_text:
        raise OverrideError(f"{kind}(...) needs a target first: {kind}(package.module:Name, "
                            "key=value, ...)")
    if target_text[:1] in "'\"":
        try:
            target_text = ast.literal_eval(target_text)
        except (ValueError, SyntaxError):
            raise OverrideError(f"{kind}(...): cannot read the target {target_text}") from None
        if not isinstance(target_text, str):
            raise OverrideError(f"{kind}(...): the target must be an import path string")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in items[1:]:
        if not item.strip():
            raise OverrideError(f"{kind}({inner}) has an empty argument between commas")
        kw = _KWARG_RE.match(item)
        if kw:
            kwargs[kw.group(1)] = parse_value(kw.group(2), depth + 1)
        elif kwargs:
            raise OverrideError(f"{kind}({inner}): a positional argument follows a "
                                "keyword argument")
        else:
            args.append(parse_value(item, depth + 1))
    cls = Partial if kind == "Partial" else Config
    try:
        return cls(import_object(target_text), *args, **kwargs)
    except OverrideError:
        raise
    except ConfigError as e:
        raise OverrideError(f"{kind}({inner}): {e}") from e


def split_top(text: str, sep: str = ",", maxsplit: int = -1) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets and quotes (``"[1,2],[3,4]"`` -> two
    parts); raises :class:`OverrideError` on an unbalanced bracket or quote."""
    parts: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in _CLOSING:
            stack.append(_CLOSING[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                raise OverrideError(f"unbalanced {c!r} in {text!r}")
        elif c == sep and not stack and maxsplit != len(parts):
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote:
        raise OverrideError(f"unclosed quote {quote} in {text!r}")
    if stack:
        raise OverrideError(f"unclosed bracket in {text!r}: expected {stack[-1]!r}")
    parts.append(text[start:])
    return parts


def _apply_one(cfg: Any, text: str, key: str, op: str, right: str) -> None:
    parent_path, _, name = key.rpartition(".")
    where = parent_path or ROOT
    try:
        parent = get_path(cfg, parent_path)
    except ConfigError as e:
        raise OverrideError(f"override {text!r}: {e}") from None
    if isinstance(parent, Buildable):
        params = _params(parent.__fn_or_cls__)
        if (params is not None and name not in params
                and not any(p.kind == p.VAR_KEYWORD for p in params.values())):
            valid = [n for n, p in params.items() if p.kind != p.VAR_KEYWORD]
            raise OverrideError(
                f"override {text!r}: no parameter {name!r} at {where}"
                f"{_suggest(name, valid)} (valid parameters of {parent._label()}: "
                f"{', '.join(valid) or 'none'})")
    try:
        if op == "=":
            value = convert_text(right, hint_at(cfg, key), key)
        else:
            value = _arithmetic(cfg, text, key, op, parse_value(right))
    except OverrideError as e:
        if str(e).startswith(f"override {text!r}"):
            raise
        raise OverrideError(f"override {text!r}: {e}") from e.__cause__
    try:
        set_path(cfg, key, value)
    except ConfigError as e:
        raise OverrideError(f"override {text!r}: {e}") from None


def _arithmetic(cfg: Any, text: str, key: str, op: str, operand: Any) -> Any:
    try:
        current = get_path(cfg, key)
    except ConfigError as e:
        raise OverrideError(f"override {text!r}: {op!r} needs a current value: {e}") from None
    for what, v in (("the value at " + key, current), ("the operand", operand)):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise OverrideError(
                f"override {text!r}: {op!r} works on numbers, but {what} is {_short(v)}; "
                f"use {key}=... to replace it")
    try:
        if op == "+=":
            return current + operand
        if op == "-=":
            return current - operand
        if op == "*=":
            return current * operand
        return current / operand
    except (ArithmeticError, ValueError) as e:
        raise OverrideError(f"override {text!r}: {current!r} {op[0]} {operand!r} failed: "
                            f"{e}") from None


# --- paths ------------------------------------------------------------------------------


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted ``path`` ("model.layers.0.size"); ``""`` is ``obj`` itself.

    Walks configs (their arguments, or defaults), scripts, lists (by index) and dicts (by
    key). Raises :class:`ConfigError` naming the part of the path that does not exist.
    """
    value = obj
    parts = _split_path(path)
    for i, part in enumerate(parts):
        value = _child(value, part, ".".join(parts[:i]))
    return value


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set the value at a dotted ``path`` in place; see :func:`get_path`."""
    parts = _split_path(path)
    if not parts:
        raise ConfigError("set_path needs a non-empty dotted path, e.g. 'model.hidden'")
    parent = get_path(obj, ".".join(parts[:-1]))
    _set_child(parent, parts[-1], value, ".".join(parts[:-1]))


def _split_path(path: str) -> list[str]:
    if not isinstance(path, str):
        raise ConfigError(f"a dotted path must be a string, got {_short(path)}")
    if path == "":
        return []
    parts = path.split(".")
    if any(p == "" for p in parts):
        raise ConfigError(f"the dotted path {path!r} has an empty part")
    return parts


def _where(parent: str) -> str:
    return parent or ROOT


def _child(value: Any, part: str, parent: str) -> Any:
    full = f"{parent}.{part}" if parent else part
    if isinstance(value, Buildable):
        params = _params(value.__fn_or_cls__)
        if part in value.__arguments__:
            return value.__arguments__[part]
        if params is not None and part in params and params[part].default is not params[part].empty:
            return params[part].default
        valid = sorted(set(params or ()) | set(value.__arguments__))
        raise ConfigError(f"nothing at {full!r}: {value._label()} at {_where(parent)} has no "
                          f"argument {part!r} set{_suggest(part, valid)}")
    if isinstance(value, Script):
        if part in Script._FIELDS:
            return getattr(value, part)
        raise ConfigError(f"nothing at {full!r}: a Script has only {', '.join(Script._FIELDS)}")
    if isinstance(value, list | tuple):
        index = _index(value, part, full)
        return value[index]
    if isinstance(value, dict):
        key = _dict_key(value, part)
        if key in value:
            return value[key]
        raise ConfigError(f"nothing at {full!r}: the dict at {_where(parent)} has no key "
                          f"{part!r}{_suggest(part, [str(k) for k in value])}")
    raise ConfigError(f"nothing at {full!r}: the value at {_where(parent)} is "
                      f"{_short(value)}, which has no parts")


def _set_child(parent: Any, part: str, value: Any, parent_path: str) -> None:
    full = f"{parent_path}.{part}" if parent_path else part
    if isinstance(parent, Buildable):
        try:
            setattr(parent, part, value)
        except UnknownParameterError as e:
            raise UnknownParameterError(f"cannot set {full!r}: {e}") from None
    elif isinstance(parent, Script):
        if part not in Script._FIELDS:
            raise ConfigError(f"cannot set {full!r}: a Script has only "
                              f"{', '.join(Script._FIELDS)}")
        fields = {f: getattr(parent, f) for f in Script._FIELDS}
        fields[part] = value
        if part == "path" and value is not None:
            fields["inline"] = None
        if part == "inline" and value is not None:
            fields["path"] = None
        parent.__dict__.update(Script(**fields).__dict__)
    elif isinstance(parent, list):
        parent[_index(parent, part, full)] = value
    elif isinstance(parent, dict):
        parent[_dict_key(parent, part)] = value
    else:
        raise ConfigError(f"cannot set {full!r}: the value at {_where(parent_path)} is "
                          f"{_short(parent)}, which cannot be changed in place")


def _index(seq: Any, part: str, full: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"nothing at {full!r}: a {type(seq).__name__} is indexed by "
                          f"number, got {part!r}") from None
    if not -len(seq) <= index < len(seq):
        raise ConfigError(f"nothing at {full!r}: index {index} is out of range for a "
                          f"{type(seq).__name__} of length {len(seq)}")
    return index


def _dict_key(d: dict[Any, Any], part: str) -> Any:
    if part in d:
        return part
    for k in d:  # keys that are not strings (1, True, None) are written as text in paths
        if not isinstance(k, str) and str(k) == part:
            return k
    return part
