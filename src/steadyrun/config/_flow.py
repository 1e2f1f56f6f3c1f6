"""Fast YAML for big documents: a block mapping whose values are one-line flow nodes.

An experiment's definition holds one entry per task; written by PyYAML's representer
and read by its constructor, each costs most of a millisecond, minutes for a sweep
of 100,000 tasks. :func:`write` writes the same values as YAML of one shape::

    title: scale
    executor: {type: LocalExecutor, strategy: thread}
    order:
    - t0
    tasks:
    - {name: t0, payload: !partial:work:noop {i: 0}, resources: {cpus: 1}}

and :func:`read` reads that shape back without PyYAML's node graph. Both handle the
plain values (None, bools, ints, floats, strings, lists, dicts), ``!partial:`` and
``!config:`` targets, ``!tuple`` and ``!secret``/``!withheld`` names, and sharing (a
list, dict or config used twice is written once with an anchor, as PyYAML does).
Anything else (another type, a subclass, a cycle, a target that does not import back,
a hand-edited line of another form) makes them return None: the caller then uses
:func:`steadyrun.config.to_yaml` / :func:`steadyrun.config.from_yaml`, which write and
read every value and word every error. Any YAML reader reads what :func:`write` gives
as the same values.
"""

from __future__ import annotations

import math
import re
from typing import Any

from steadyrun.config.core import Config, Partial
from steadyrun.config.secrets import Secret

_SIMPLE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*\Z")
#: Plain words YAML 1.1 reads as something other than a string (any case).
_RESERVED = frozenset({"yes", "no", "on", "off", "true", "false", "null", "y", "n"})
_PATH = re.compile(r"[A-Za-z0-9_.:]+\Z")
_ESCAPED = re.compile('[\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]')
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+(?:e[-+][0-9]+)?\Z")
_PLAIN_END = re.compile(r"[,\]}]|: |:\Z")
_TAG = re.compile(r"!(partial|config):([A-Za-z0-9_.:]+) ")
_ANCHOR = re.compile(r"&(id[0-9]+) ")
_ALIAS = re.compile(r"\*(id[0-9]+)")
_KEY_LIMIT = 1000  # YAML limits an implicit key to 1024 characters


class _Unsupported(Exception):
    """A value or line outside the shape handled here."""


# --- writing ----------------------------------------------------------------------------


def write(doc: dict[str, Any]) -> str | None:
    """YAML text for ``doc`` (a mapping of simple string keys), or None when something
    in it is outside what this module writes (see the module docs)."""
    writer = _Writer()
    try:
        for key, value in doc.items():
            if type(key) is not str or not _is_plain(key):
                return None
            if type(value) is list and value:
                if id(value) in writer.seen:
                    return None
                writer.seen[id(value)] = [None, None, value]  # no anchor on a block list
                writer.parts.append(f"{key}:\n")
                for item in value:
                    writer.parts.append("- ")
                    writer.node(item)
                    writer.parts.append("\n")
            else:
                writer.parts.append(f"{key}: ")
                writer.node(value)
                writer.parts.append("\n")
    except _Unsupported:
        return None
    return "".join(writer.parts)


def check(value: Any) -> bool:
    """True when :func:`write` can write ``value`` (no Script, no foreign object)."""
    try:
        _Writer().node(value)
    except _Unsupported:
        return False
    return True


class _Writer:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.seen: dict[int, list[Any]] = {}  # id -> [index of its anchor slot, name, obj]
        self.active: set[int] = set()
        self.paths: dict[int, str] = {}
        self.keys: dict[str, str] = {}  # mapping keys as written (they repeat)
        self.count = 0

    def node(self, value: Any) -> None:
        t = type(value)
        parts = self.parts
        if t is str:
            parts.append(_scalar(value))
        elif value is None:
            parts.append("null")
        elif t is int:
            parts.append(str(value))
        elif t is bool:
            parts.append("true" if value else "false")
        elif t is float:
            parts.append(_float(value))
        elif t is dict or t is list or t is Partial or t is Config:
            key = id(value)
            if key in self.seen:
                if key in self.active:
                    raise _Unsupported  # a cycle: to_yaml says where
                slot = self.seen[key]
                if slot[0] is None:
                    raise _Unsupported  # a top-level list used again
                if slot[1] is None:
                    self.count += 1
                    slot[1] = f"id{self.count:03d}"
                    parts[slot[0]] = f"&{slot[1]} "
                parts.append(f"*{slot[1]}")
                return
            self.seen[key] = [len(parts), None, value]
            parts.append("")
            self.active.add(key)
            if t is list:
                self.sequence(value)
            elif t is dict:
                self.mapping(value)
            else:
                kind = "partial" if t is Partial else "config"
                parts.append(f"!{kind}:{self.path(value.__fn_or_cls__)} ")
                self.mapping(value.__arguments__)
            self.active.discard(key)
        elif t is tuple:
            parts.append("!tuple ")
            self.sequence(value)
        elif t is Secret and _is_plain(value.name):
            parts.append(f"!{'withheld' if value.withheld else 'secret'} {value.name}")
        else:
            raise _Unsupported

    def sequence(self, items: Any) -> None:
        parts = self.parts
        parts.append("[")
        first = True
        for item in items:
            if not first:
                parts.append(", ")
            first = False
            self.node(item)
        parts.append("]")

    def mapping(self, items: dict[Any, Any]) -> None:
        parts = self.parts
        keys = self.keys
        sep = "{"
        for key, value in items.items():
            if type(key) is str:
                text = keys.get(key)
                if text is None:
                    if len(key) > _KEY_LIMIT:
                        raise _Unsupported
                    text = keys[key] = _scalar(key) + ": "
            elif type(key) is int:
                text = f"{key}: "
            else:
                raise _Unsupported
            parts.append(sep + text)
            sep = ", "
            t = type(value)  # the common scalars here, the rest through node()
            if t is str:
                parts.append(_scalar(value))
            elif t is int:
                parts.append(str(value))
            elif value is None:
                parts.append("null")
            else:
                self.node(value)
        parts.append("}" if sep == ", " else "{}")

    def path(self, target: Any) -> str:
        """The import path of a target, checked once per object."""
        key = id(target)
        found = self.paths.get(key)
        if found is None:
            from steadyrun.config._yaml import import_path
            from steadyrun.errors import SerializationError

            try:
                found = import_path(target)
            except SerializationError:
                raise _Unsupported from None
            if not _PATH.match(found):
                raise _Unsupported
            self.paths[key] = found
        return found


def _is_plain(text: str) -> bool:
    return bool(_SIMPLE.match(text)) and text.lower() not in _RESERVED


def _scalar(text: str) -> str:
    if _SIMPLE.match(text) and (len(text) > 5 or text.lower() not in _RESERVED):
        return text
    return '"' + _ESCAPED.sub(_escape, text) + '"'


def _escape(found: re.Match[str]) -> str:
    c = found.group()
    if c in '\\"':
        return "\\" + c
    code = ord(c)
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate: no YAML reader takes it back
        raise _Unsupported
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _float(value: float) -> str:
    """As PyYAML writes a float."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


# --- reading ----------------------------------------------------------------------------


def read(text: str, *, data: bool = False) -> dict[str, Any] | None:
    """The mapping :func:`write` wrote as ``text``, or None when ``text`` is of another
    shape (the caller reads it with :func:`steadyrun.config.from_yaml` then).

    ``data=True`` reads it as :func:`steadyrun.config.plain.load_plain` with
    ``tags="data"`` does, importing nothing: a config as the mapping of its arguments,
    a ``!tuple`` as a list, a ``!secret`` as its name."""
    reader = _Reader()
    reader.data = data
    doc: dict[str, Any] = {}
    items: list[Any] | None = None
    try:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            if line.startswith("- "):
                if items is None:
                    return None
                items.append(reader.whole(line, 2))
                continue
            items = None
            key, sep, rest = line.partition(":")
            if not sep or not _is_plain(key) or key in doc:
                return None
            if rest == "":
                doc[key] = items = []
            elif rest.startswith(" "):
                doc[key] = reader.whole(line, len(key) + 2)
            else:
                return None
    except (_Unsupported, IndexError, ValueError):
        return None
    except Exception:  # a target that does not import, a bad argument: from_yaml says it
        return None
    return doc


_MISSING = object()
_NESTED = re.compile('[{\\["!&*]')
_FLAT_CACHE = 4096
_NODE_START = frozenset('{["!&*')


class _Reader:
    def __init__(self) -> None:
        self.anchors: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}
        self.plains: dict[str, Any] = {}  # plain token -> value (immutable: shared)
        self.flat: dict[str, dict[Any, Any]] = {}  # a flat mapping's text -> its items
        self.data = False  # tags read as plain data, nothing imported

    def whole(self, line: str, start: int) -> Any:
        value, end = self.node(line, start)
        if end != len(line):
            raise _Unsupported
        return value

    def node(self, s: str, i: int) -> tuple[Any, int]:
        c = s[i]
        if c == "&":
            found = _ANCHOR.match(s, i)
            if not found or found.group(1) in self.anchors:
                raise _Unsupported
            name = found.group(1)
            i = found.end()
            value, i = self.node(s, i)
            if type(value) not in (dict, list, Partial, Config):
                raise _Unsupported
            self.anchors[name] = value
            return value, i
        if c == "*":
            found = _ALIAS.match(s, i)
            if not found:
                raise _Unsupported
            return self.anchors[found.group(1)], found.end()
        if c == "{":
            return self.mapping(s, i)
        if c == "[":
            return self.sequence(s, i)
        if c == "!":
            return self.tagged(s, i)
        if c == '"':
            return self.quoted(s, i)
        found = _PLAIN_END.search(s, i)
        end = found.start() if found else len(s)
        return _plain(s[i:end]), end

    def sequence(self, s: str, i: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        i += 1
        if s[i] == "]":
            return items, i + 1
        while True:
            value, i = self.node(s, i)
            items.append(value)
            if s[i] == "]":
                return items, i + 1
            if s[i:i + 2] != ", ":
                raise _Unsupported
            i += 2

    def mapping(self, s: str, i: int) -> tuple[dict[Any, Any], int]:
        end = s.find("}", i)
        flat = s[i:end + 1] if end > 0 else ""
        if flat and not _NESTED.search(flat, 1):  # plain scalars only: read once
            known = self.flat.get(flat)
            if known is None:
                known, _ = self._mapping(s, i)
                if len(self.flat) < _FLAT_CACHE:
                    self.flat[flat] = known
            return dict(known), end + 1
        return self._mapping(s, i)

    def _mapping(self, s: str, i: int) -> tuple[dict[Any, Any], int]:
        out: dict[Any, Any] = {}
        i += 1
        if s[i] == "}":
            return out, i + 1
        plains = self.plains
        while True:
            if s[i] == '"':
                key, i = self.quoted(s, i)
                if s[i:i + 2] != ": ":
                    raise _Unsupported
            else:
                j = s.index(": ", i)
                token = s[i:j]
                key = plains.get(token, _MISSING)
                if key is _MISSING:
                    key = plains[token] = _plain(token)
                if type(key) is not str and type(key) is not int:
                    raise _Unsupported
                i = j
            if key in out:
                raise _Unsupported
            i += 2
            if s[i] in _NODE_START:
                out[key], i = self.node(s, i)
            else:
                found = _PLAIN_END.search(s, i)
                end = found.start() if found else len(s)
                token = s[i:end]
                value = plains.get(token, _MISSING)
                if value is _MISSING:
                    value = plains[token] = _plain(token)
                out[key] = value
                i = end
            if s[i] == "}":
                return out, i + 1
            if s[i:i + 2] != ", ":
                raise _Unsupported
            i += 2

    def tagged(self, s: str, i: int) -> tuple[Any, int]:
        found = _TAG.match(s, i)
        if found and self.data:
            if s[found.end()] != "{":
                raise _Unsupported
            return self.mapping(s, found.end())
        if found:
            path = found.group(2)
            target = self.targets.get(path)
            if target is None:
                from steadyrun.config._yaml import import_object

                target = self.targets[path] = import_object(path)
            args, i = self.mapping(s, found.end()) if s[found.end()] == "{" else (None, 0)
            if args is None or any(type(k) is not str for k in args):
                raise _Unsupported
            new = (Partial if found.group(1) == "partial" else Config)(target)
            for name, value in args.items():
                setattr(new, name, value)
            return new, i
        if s.startswith("!tuple [", i):
            items, i = self.sequence(s, i + 7)
            return (items if self.data else tuple(items)), i
        for word, withheld in (("!secret ", False), ("!withheld ", True)):
            if s.startswith(word, i):
                found = _PLAIN_END.search(s, i + len(word))
                end = found.start() if found else len(s)
                name = s[i + len(word):end]
                if not _is_plain(name):
                    raise _Unsupported
                return (name if self.data else Secret(name, withheld=withheld)), end
        raise _Unsupported

    def quoted(self, s: str, i: int) -> tuple[str, int]:
        out: list[str] = []
        i += 1
        while True:
            j = s.index('"', i)
            k = s.find("\\", i, j)
            if k < 0:
                out.append(s[i:j])
                return "".join(out), j + 1
            out.append(s[i:k])
            code = s[k + 1]
            if code in '\\"':
                out.append(code)
                i = k + 2
            elif code == "x":
                out.append(chr(int(s[k + 2:k + 4], 16)))
                i = k + 4
            elif code == "u":
                out.append(chr(int(s[k + 2:k + 6], 16)))
                i = k + 6
            else:
                raise _Unsupported


def _plain(token: str) -> Any:
    """A plain scalar as YAML 1.1 reads it, for the forms :func:`write` gives."""
    if token == "null":
        return None
    if token == "true":
        return True
    if token == "false":
        return False
    if _INT.match(token):
        return int(token)
    if _FLOAT.match(token):
        return float(token)
    if token in (".nan", ".inf", "-.inf"):
        return float(token.replace(".", ""))
    if _is_plain(token):
        return token
    raise _Unsupported
