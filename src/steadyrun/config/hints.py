"""Type hints of config targets: what each parameter is annotated with, by dotted path.

Used by :mod:`steadyrun.config.typed` to read override text by type. Annotations are
resolved with the target's module (``from __future__ import annotations`` is fine); one
that cannot be resolved (a name imported only for type checking) counts as no hint.
"""

from __future__ import annotations

import enum
import functools
import sys
import types
import typing
from collections import abc
from typing import Any

from steadyrun.config.core import Buildable, _params
from steadyrun.errors import ConfigError

NO_HINT: Any = object()  # a parameter without a usable annotation: untyped reading
SEQUENCES = (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)
SETS = (set, frozenset, abc.Set, abc.MutableSet)
MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_ANY_NAME = "**"  # key of the hint of **kwargs values in param_hints (never a parameter)


def hint_at(root: Any, path: str) -> Any:
    """The type hint of the value at dotted ``path`` in ``root``, or :data:`NO_HINT`.

    Follows parameters of configs (their targets' hints), then items of typed lists,
    tuples and dicts (``layers.0`` of ``layers: list[int]`` is ``int``). Never raises:
    a path it cannot follow has no hint.
    """
    from steadyrun.config.overrides import _child, _split_path

    hint: Any = NO_HINT
    value = root
    parent = ""
    try:
        parts = _split_path(path)
    except ConfigError:
        return NO_HINT
    for i, part in enumerate(parts):
        if isinstance(value, Buildable):
            hint = param_hint(value.__fn_or_cls__, part)
        else:
            hint = _item_hint(hint, part)
        if i == len(parts) - 1:
            break
        try:
            value = _child(value, part, parent)
        except ConfigError:
            return NO_HINT
        parent = f"{parent}.{part}" if parent else part
    return hint


def param_hints(target: Any) -> dict[str, Any]:
    """Parameter name -> resolved type hint of a function or class (its ``__init__``).

    Annotations that cannot be resolved (a name imported only for type checking) are
    left out, so those parameters read text untyped.
    """
    try:
        return _param_hints_cached(target)
    except TypeError:  # an unhashable callable
        return _param_hints_cached.__wrapped__(target)


def param_hint(target: Any, name: str) -> Any:
    """The hint of parameter ``name`` of ``target`` (for a name that ``**kwargs`` takes,
    the hint of its values), or :data:`NO_HINT`."""
    hints = param_hints(target)
    return hints.get(name, hints.get(_ANY_NAME, NO_HINT))


def type_name(hint: Any) -> str:
    """How a hint reads in messages: ``float``, ``int | None``, ``list[str]``."""
    hint = unwrap(hint)
    if hint is NO_HINT or hint is Any:
        return "any value"
    if hint is type(None) or hint is None:
        return "none"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        if not args:
            return base
        shown = ["..." if a is Ellipsis else type_name(a) for a in args]
        return f"{base}[{', '.join(shown)}]"
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            names = ", ".join(m.name for m in hint)
            return f"{hint.__qualname__} (one of {names})"
        if hint is bool:
            return "bool (true/false/yes/no/1/0)"
        return hint.__qualname__
    return str(hint).replace("typing.", "")


# --- helpers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _param_hints_cached(target: Any) -> dict[str, Any]:
    import inspect

    try:
        params = dict(inspect.signature(target, eval_str=True).parameters)
        resolved = True
    except Exception:  # an annotation names something not importable at run time
        params = dict(_params(target) or {})
        resolved = False
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    namespace = dict(vars(module)) if module is not None and not resolved else {}
    hints: dict[str, Any] = {}
    for name, p in params.items():
        annotation = p.annotation
        if annotation is p.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the target's own text
            except Exception:
                continue
        if p.kind == p.VAR_POSITIONAL:  # *args: int holds a tuple of ints
            annotation = tuple[annotation, ...]  # type: ignore[valid-type]
        elif p.kind == p.VAR_KEYWORD:
            hints[_ANY_NAME] = annotation  # what a name taken by **kwargs is read as
            annotation = dict[str, annotation]  # type: ignore[valid-type]
        hints[name] = annotation
    return hints


def unwrap(hint: Any) -> Any:
    """``Annotated[T, ...]`` -> ``T``; ``NewType`` -> its base; a ``TypeVar`` -> no hint."""
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif hasattr(hint, "__supertype__"):
            hint = hint.__supertype__
        elif isinstance(hint, typing.TypeVar):
            return NO_HINT
        elif isinstance(hint, str | typing.ForwardRef):
            return NO_HINT  # could not be resolved
        else:
            return hint


def _item_hint(hint: Any, part: str) -> Any:
    hint = unwrap(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in args if a is not type(None)]
        return _item_hint(inner[0], part) if len(inner) == 1 else NO_HINT
    if origin in MAPPINGS and len(args) == 2:
        return args[1]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        try:
            return args[int(part)]
        except (ValueError, IndexError):
            return NO_HINT
    if origin in SEQUENCES and args:
        return args[0]
    return NO_HINT
