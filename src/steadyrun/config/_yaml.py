"""Serialization of configs: YAML, import paths and fingerprints.

Use these through :mod:`steadyrun.config` (``to_yaml``, ``from_yaml``, ``import_path``,
``import_object``, ``fingerprint``); this module imports PyYAML, so it loads on first use.

The tags, all on top of ``yaml.SafeDumper`` / ``yaml.SafeLoader`` (loading builds nothing
but steadyrun's own types and plain values)::

    !config:pkg.mod:Model {hidden: 128}     a Config; arguments as a mapping
    !partial:pkg.mod:train {epochs: 3}      a Partial
    !script {path: train.sh, args: [...]}   a Script
    !import pkg.mod:fn                      a function, class or enum member by import path
    !tuple [1, 2]   !frozenset [1, 2]       the containers YAML has no word for
    !secret API_KEY                         run.Secret("API_KEY"): a name, never a value
    !withheld API_KEY                       an env value kept out of the store (read back
                                            from the variable API_KEY)

A config used in two places is written once with an anchor (``&id001``) and referenced
(``*id001``), so sharing survives the round trip.

Reading YAML imports code: every ``!config:``, ``!partial:`` and ``!import`` tag imports
the module it names, and importing a module runs it. Read only files you trust, as you
would load only pickles you trust. A document whose aliases would expand it past
:data:`MAX_EXPANDED_NODES` nodes (a "billion laughs" document: a few hundred bytes that
stand for billions of values) is refused before anything in it is built.
"""

from __future__ import annotations

import json
import re
from hashlib import sha256 as _sha256
from typing import Any

import yaml

from steadyrun.config.core import (
    _ACTIVE,
    _PAYLOAD_HINT,
    ROOT,
    Buildable,
    Config,
    Partial,
    _is_enum,
    _short,
    coerce,
)
from steadyrun.config.script import Script
from steadyrun.config.secrets import Secret, looks_secret
from steadyrun.errors import ConfigError, SerializationError

_COMPACT = json.JSONEncoder(separators=(",", ":"))

#: The most nodes a YAML document may stand for once its aliases (``*name``) are
#: expanded, when aliases are what makes it that large.
MAX_EXPANDED_NODES = 1_000_000


def to_yaml(obj: Any) -> str:
    """YAML text for ``obj``; see :func:`steadyrun.config.to_yaml`."""
    obj = coerce(obj)
    _canonical(obj, ROOT, {}, strict=True)  # raises SerializationError naming the path
    try:
        return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100)
    except yaml.YAMLError as e:
        raise SerializationError(f"cannot write this value as YAML: {e}") from e


def from_yaml(text: str, source: str | None = None) -> Any:
    """The value written by :func:`to_yaml`; see :func:`steadyrun.config.from_yaml`.

    ``source`` names where the text came from (a file) in error messages."""
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        raise SerializationError(f"from_yaml needs YAML text (a str), got {type(text).__name__}")
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        where = f"{source}: " if source else ""
        raise SerializationError(
            f"{where}cannot read this YAML: {e}\nsteadyrun reads what run.to_yaml writes: "
            "plain values and the tags !config:, !partial:, !script, !import, !tuple, "
            "!frozenset, !secret, !withheld") from e
    finally:
        loader.dispose()


def fingerprint(obj: Any) -> str:
    """sha256 over a canonical form; see :func:`steadyrun.config.fingerprint`.

    Each list, dict, set, config or script is hashed once, from the hashes of what it
    holds (a Merkle tree), so a value used in many places costs one visit: the time is
    linear in the number of distinct objects, however often they are shared."""
    canonical = _canonical(coerce(obj), ROOT, {})
    return _digest(["steadyrun-fingerprint-2", canonical])


def fingerprints(objs: list[Any], *, plain: bool = False) -> list[str]:
    """:func:`fingerprint` of each of ``objs``, the same digests, with one memo for all:
    what they share (a config, a target's import path) is visited once. ``plain``:
    the objects hold only plain values and steadyrun's own configs (no Fiddle object
    to convert first)."""
    memo: dict[Any, Any] = {}
    return [_digest(["steadyrun-fingerprint-2",
                     _canonical(obj if plain else coerce(obj), ROOT, memo)])
            for obj in objs]


# --- import paths -----------------------------------------------------------------------


def import_path(obj: Any) -> str:
    """``"module:qualname"`` for a module-level function, class, method or enum member.

    See :func:`steadyrun.config.import_path`.
    """
    import enum

    if isinstance(obj, enum.Enum):
        path = f"{import_path(type(obj))}.{obj.name}"
    else:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str):
            raise SerializationError(
                f"{_short(obj)} has no import path (it is not a module-level function, "
                f"class or enum member); {_PAYLOAD_HINT}")
        if "<lambda>" in qualname or "<locals>" in qualname:
            kind = "a lambda" if "<lambda>" in qualname else "defined inside a function"
            raise SerializationError(
                f"{_short(obj)} is {kind}, so it has no import path; {_PAYLOAD_HINT}")
        if module == "__main__":
            raise SerializationError(
                f"{_short(obj)} is defined in __main__ (the script being run), which another "
                f"process cannot import; {_PAYLOAD_HINT}")
        path = f"{module}:{qualname}"
    try:
        back = import_object(path)
    except ConfigError:
        back = None
    if back is not obj and not _same_bound(back, obj):
        raise SerializationError(
            f"{_short(obj)} does not import back from {path!r}; {_PAYLOAD_HINT}")
    return path


def _same_bound(a: Any, b: Any) -> bool:
    # classmethods give a new bound-method object on each access; compare what they bind
    return (hasattr(a, "__self__") and hasattr(a, "__func__")
            and getattr(b, "__self__", None) is a.__self__
            and getattr(b, "__func__", None) is a.__func__)


def import_object(path: str) -> Any:
    """The object named by ``"module:qualname"`` (or a dotted ``"module.name"``).

    See :func:`steadyrun.config.import_object`.
    """
    import importlib

    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"an import path must look like 'package.module:Name', got {path!r}")
    path = path.strip()
    if ":" in path:
        module_name, _, qualname = path.partition(":")
        candidates = [(module_name, qualname)]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:i]), ".".join(parts[i:]))
                      for i in range(len(parts) - 1, 0, -1)]
    last: Exception | None = None
    for module_name, qualname in candidates:
        if not module_name or not qualname or "" in qualname.split("."):
            continue
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            last = e
            if e.name is None or module_name == e.name or module_name.startswith(e.name + "."):
                continue
            raise ConfigError(  # the module exists but itself imports something missing
                f"cannot import {path!r}: module {module_name!r} needs {e.name!r}, which is "
                f"not installed here ({e})") from e
        except Exception as e:
            raise ConfigError(f"cannot import {path!r}: importing module {module_name!r} "
                              f"raised {type(e).__name__}: {e}") from e
        try:
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(
                f"cannot import {path!r}: module {module_name!r} has no attribute "
                f"{qualname!r}; check the spelling, or that it is defined at module level"
            ) from None
        return obj
    hint = f" ({last})" if last is not None else ""
    raise ConfigError(f"cannot import {path!r}{hint}; write it as 'package.module:Name' with a "
                      "module that is importable here (is it installed, or on PYTHONPATH?)")


# --- fingerprint -------------------------------------------------------------------------


def _canonical(value: Any, path: str, memo: dict[Any, Any], strict: bool = False) -> Any:
    """A JSON-able form with no ids and sorted keys: the input of the fingerprint.

    ``strict`` (for YAML) refuses subclasses of list, tuple, dict and set (a namedtuple,
    an OrderedDict), which YAML would bring back as the plain type.
    """
    t = type(value)
    if value is None or t is bool or t is str or t is int:
        return value  # JSON keeps these apart (1, true, "1"); floats are tagged below
    if t is float:
        return ["float", repr(value + 0.0)]  # +0.0 makes -0.0 equal 0.0, as == does
    key = id(value)
    if key in memo:
        if memo[key] is _ACTIVE:
            raise SerializationError(f"cycle at {path}: the value contains itself")
        return memo[key]
    if t is bytes:
        return ["bytes", value.hex()]
    if t is Secret:
        return ["secret", value.name, value.withheld]
    if isinstance(value, Buildable | Script | list | tuple | dict | set | frozenset):
        memo[key] = _ACTIVE
        # a compound stands for the hash of its canonical form: shared values are
        # hashed once, and no form grows with the depth of what it holds
        result = ["#", _digest(_canonical_compound(value, path, memo, strict))]
        memo[key] = result
        return result
    if callable(value) or _is_enum(value):
        try:
            return ["import", _memo_path(value, memo)]
        except SerializationError as e:
            raise SerializationError(f"the value at {path}: {e}") from None
    for base in (bool, int, float, str, bytes):  # numpy scalars and other subclasses
        if isinstance(value, base):
            return _canonical(base(value), path, memo, strict)  # type: ignore[arg-type]
    raise SerializationError(
        f"the value at {path} is {_short(value)}, which steadyrun cannot write: use plain "
        f"values (numbers, strings, lists, dicts), configs, or module-level functions and "
        f"classes; or {_PAYLOAD_HINT}")


def _canonical_compound(value: Any, path: str, memo: dict[Any, Any], strict: bool) -> Any:
    import json

    if isinstance(value, Buildable):
        kind = "partial" if isinstance(value, Partial) else "config"
        try:
            target = _memo_path(value.__fn_or_cls__, memo)
        except SerializationError as e:
            raise SerializationError(f"the target of the {value._label()} at {path}: {e}") \
                from None
        args = sorted([k, _canonical(v, f"{path}.{k}", memo, strict)]
                      for k, v in value.__arguments__.items())
        return [kind, target, args]
    if isinstance(value, Script):
        # values the store withholds do not enter it, so the stored form hashes the same
        env = sorted([k, ["secret", v.name] if isinstance(v, Secret) and not v.withheld
                      else "withheld" if isinstance(v, Secret) or looks_secret(k, v)
                      else v] for k, v in value.env.items())
        return ["script", [[f, env if f == "env" else
                            _canonical(getattr(value, f), f"{path}.{f}", memo, strict)]
                           for f in Script._FIELDS]]
    t = type(value)
    tag = t.__name__
    if t not in (list, tuple, dict, set, frozenset):
        base = next(b for b in (list, tuple, dict, set, frozenset) if isinstance(value, b))
        if strict:
            raise SerializationError(
                f"the value at {path} is a {t.__qualname__}, a subclass of {base.__name__} "
                f"that YAML would bring back as a plain {base.__name__}: convert it "
                f"({base.__name__}(value)), or {_PAYLOAD_HINT}")
        tag = f"{base.__name__}:{t.__module__}:{t.__qualname__}"
    if isinstance(value, dict):
        items = [[_canonical(k, f"{path}.<key {k!r}>", memo, strict),
                  _canonical(v, f"{path}.{k}", memo, strict)] for k, v in value.items()]
        return [tag, sorted(items, key=lambda kv: json.dumps(kv[0]))]
    items = [_canonical(v, f"{path}.{i}", memo, strict) for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [tag, sorted(items, key=json.dumps)]
    return [tag, items]


def _memo_path(obj: Any, memo: dict[Any, Any]) -> str:
    """:func:`import_path` of ``obj``, checked once per walk (``memo`` keeps ``obj``
    alive, so its id is not reused meanwhile)."""
    key = ("path", id(obj))
    if key not in memo:
        memo[key] = (import_path(obj), obj)
    return str(memo[key][0])


def _digest(canonical: Any) -> str:
    # json.dumps(canonical, separators=(",", ":")), without a new encoder per call
    return _sha256(_COMPACT.encode(canonical).encode()).hexdigest()


# --- writing ----------------------------------------------------------------------------

_RISKY_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


# libyaml's emitter and parser when PyYAML was built with them (several times faster);
# the representers and constructors stay the safe Python ones either way.
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    def ignore_aliases(self, data: Any) -> bool:
        # anchors only where sharing means something: mutable containers and configs
        return not isinstance(data, Buildable | Script | list | dict | set)


def _represent_buildable(dumper: _Dumper, value: Buildable) -> yaml.Node:
    kind = "partial" if isinstance(value, Partial) else "config"
    return dumper.represent_mapping(f"!{kind}:{import_path(value.__fn_or_cls__)}",
                                    value.__arguments__)


def _represent_script(dumper: _Dumper, value: Script) -> yaml.Node:
    fields: dict[str, Any] = {}
    if value.path is not None:
        fields["path"] = value.path
    else:
        fields["inline"] = value.inline
    if value.args:
        fields["args"] = value.args
    if value.env:
        fields["env"] = value.env
    fields["entrypoint"] = value.entrypoint
    return dumper.represent_mapping("!script", fields)


def _represent_secret(dumper: _Dumper, value: Secret) -> yaml.Node:
    return dumper.represent_scalar("!withheld" if value.withheld else "!secret", value.name)


def _represent_str(dumper: _Dumper, value: str) -> yaml.Node:
    # PyYAML folds or drops some characters in plain and block styles (NEL, the Unicode
    # line and paragraph separators, control characters, a BOM): escape those instead
    style = '"' if _RISKY_CHARS.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_tuple(dumper: _Dumper, value: tuple[Any, ...]) -> yaml.Node:
    return dumper.represent_sequence("!tuple", list(value))


def _represent_frozenset(dumper: _Dumper, value: frozenset[Any]) -> yaml.Node:
    return dumper.represent_sequence("!frozenset", list(value))


def _represent_other(dumper: _Dumper, value: Any) -> yaml.Node:
    import enum

    if callable(value) or isinstance(value, enum.Enum):
        return dumper.represent_scalar("!import", import_path(value))
    for base in (bool, int, float, str, bytes):  # numpy scalars and other subclasses
        if isinstance(value, base):
            return dumper.represent_data(base(value))  # type: ignore[arg-type]
    raise SerializationError(f"{value!r} (a {type(value).__name__}) cannot be written as YAML")


_Dumper.add_multi_representer(Buildable, _represent_buildable)
_Dumper.add_representer(Script, _represent_script)
_Dumper.add_representer(Secret, _represent_secret)
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(tuple, _represent_tuple)
_Dumper.add_representer(frozenset, _represent_frozenset)
_Dumper.add_multi_representer(object, _represent_other)


# --- reading ----------------------------------------------------------------------------


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    source: str | None = None

    def get_single_data(self) -> Any:
        # the node graph is small even when its aliases stand for billions of values:
        # measure what it expands to before building anything from it
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node, self.source)
        return self.construct_document(node)


def _check_expansion(root: yaml.Node, source: str | None) -> None:
    """Raise :class:`SerializationError` when aliases expand ``root`` past
    :data:`MAX_EXPANDED_NODES`; linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order without recursion: documents may be deep
        node, done = stack.pop()
        key = id(node)
        if key in sizes and not done:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            sizes[key] = 1  # a node that holds itself counts once: construction copes
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        sizes[key] = total
        if total > MAX_EXPANDED_NODES and total > 2 * len(sizes):
            where = source or "this YAML document"
            raise SerializationError(
                f"{where}: its aliases (*name) expand it past {MAX_EXPANDED_NODES:,} "
                f"values, from {len(sizes):,} written, so it is refused: a document like "
                "this takes unbounded time and memory to read. Write the shared values "
                "out, share fewer of them, or check where the file came from")


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _mapping(loader: _Loader, node: yaml.Node, what: str) -> dict[Any, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise SerializationError(f"{what} at {_where(node)} must be a mapping of arguments")
    return loader.construct_mapping(node, deep=True)


def _construct_buildable(cls: type[Buildable]) -> Any:
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Buildable:
        what = f"!{cls.__name__.lower()}:{suffix}"
        try:
            target = import_object(suffix)
            args = _mapping(loader, node, what)
            bad = [k for k in args if not isinstance(k, str)]
            if bad:
                raise SerializationError(f"argument names must be strings, got {bad[0]!r}")
            new = cls(target)
            for name, value in args.items():
                setattr(new, name, value)
            return new
        except ConfigError as e:
            raise type(e)(f"{what} at {_where(node)}: {e}") from e.__cause__

    return construct


def _construct_script(loader: _Loader, node: yaml.Node) -> Script:
    fields = _mapping(loader, node, "!script")
    try:
        return Script(**fields)
    except TypeError as e:
        raise SerializationError(f"!script at {_where(node)}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"!script at {_where(node)}: {e}") from None


def _construct_tuple(loader: _Loader, node: yaml.Node) -> tuple[Any, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise SerializationError(f"!tuple at {_where(node)} must be a sequence")
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_frozenset(loader: _Loader, node: yaml.Node) -> frozenset[Any]:
    if not isinstance(node, yaml.SequenceNode):
        raise SerializationError(f"!frozenset at {_where(node)} must be a sequence")
    try:
        return frozenset(loader.construct_sequence(node, deep=True))
    except TypeError as e:
        raise SerializationError(f"!frozenset at {_where(node)}: {e}") from None


def _construct_import(loader: _Loader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise SerializationError(f"!import at {_where(node)} must be a 'module:name' string")
    path = loader.construct_scalar(node)
    try:
        return import_object(path)
    except ConfigError as e:
        raise ConfigError(f"!import at {_where(node)}: {e}") from e.__cause__


def _construct_secret(loader: _Loader, node: yaml.Node, withheld: bool) -> Secret:
    tag = "!withheld" if withheld else "!secret"
    if not isinstance(node, yaml.ScalarNode):
        raise SerializationError(f"{tag} at {_where(node)} must be a variable name")
    try:
        return Secret(loader.construct_scalar(node), withheld=withheld)
    except ConfigError as e:
        raise ConfigError(f"{tag} at {_where(node)}: {e}") from None


_Loader.add_multi_constructor("!config:", _construct_buildable(Config))
_Loader.add_multi_constructor("!partial:", _construct_buildable(Partial))
_Loader.add_constructor("!script", _construct_script)
_Loader.add_constructor("!tuple", _construct_tuple)
_Loader.add_constructor("!frozenset", _construct_frozenset)
_Loader.add_constructor("!import", _construct_import)
_Loader.add_constructor("!secret", lambda loader, node: _construct_secret(loader, node, False))
_Loader.add_constructor("!withheld", lambda loader, node: _construct_secret(loader, node, True))
