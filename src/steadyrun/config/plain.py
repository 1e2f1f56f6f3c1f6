"""YAML read as data only: nothing is imported, built or run while it is read.

:func:`steadyrun.config.from_yaml` builds configs, which imports the modules their tags
name. Two readers want less than that:

- a user's settings file (executor profiles) holds plain values; a tag there is a
  mistake (or worse) and is refused, Python tags (``!!python/object``) included;
- a reader of an experiment's recorded definition that only wants its arguments (the
  axes of a sweep) reads ``!partial:mod:fn {lr: 0.1}`` as the mapping ``{lr: 0.1}``
  without importing ``mod``.

Both keep the safe loader's limits: a document whose aliases expand it past
:data:`~steadyrun.config._yaml.MAX_EXPANDED_NODES` values is refused before anything
in it is built.
"""

from __future__ import annotations

from typing import Any

from steadyrun.errors import SerializationError


def load_plain(text: str | bytes, source: str | None = None, *, tags: str = "refuse") -> Any:
    """The data in YAML ``text``: mappings, lists, strings, numbers, booleans, None.

    ``tags="refuse"`` raises :class:`~steadyrun.errors.SerializationError` for any tag
    (``!partial:...``, ``!!python/...``), naming ``source`` and the line;
    ``tags="data"`` reads a tagged mapping or list as the plain mapping or list (a
    ``!partial:mod:fn`` config as its arguments) and a tagged scalar as its text, so
    nothing is imported. Malformed YAML raises :class:`SerializationError` too.
    """
    import yaml

    from steadyrun.config._yaml import _BaseLoader, _check_expansion

    if tags not in ("refuse", "data"):
        raise ValueError(f"tags={tags!r}: give 'refuse' or 'data'")
    if isinstance(text, bytes):
        text = text.decode()
    where = f"{source}: " if source else ""

    class Loader(_BaseLoader):
        def get_single_data(self) -> Any:
            node = self.get_single_node()
            if node is None:
                return None
            _check_expansion(node, source)
            return self.construct_document(node)

    def refuse(loader: Any, suffix: str, node: Any) -> Any:
        line = node.start_mark.line + 1
        raise SerializationError(
            f"{where}line {line}: the tag {node.tag!r} is not allowed here: this file "
            "holds plain values (strings, numbers, booleans, lists, mappings)")

    def as_data(loader: Any, suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    if tags == "data":
        Loader.add_multi_constructor("!", as_data)
    # every other tag (Python's included) ends here: the safe loader knows no others
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", refuse)
    if tags == "refuse":
        Loader.add_multi_constructor("!", refuse)
    loader = Loader(text)
    try:
        return loader.get_single_data()
    except yaml.constructor.ConstructorError as exc:
        raise SerializationError(f"{where}{exc}") from None
    except yaml.YAMLError as exc:
        raise SerializationError(f"{where}not valid YAML: {exc}") from None
    finally:
        loader.dispose()
