"""What an experiment ID typed by a user names: :func:`resolve_id`.

An experiment id is ``<title>-<YYYYmmdd-HHMMSS>-<4 hex>``. Users rarely type all of it;
a query names an experiment when it is

- the whole id (an exact id always wins);
- a prefix of the id: ``mnist-2026``;
- a prefix of its random suffix, ``6a6e`` (or ``6a``), or of its date-and-time tail
  ``YYYYmmdd-HHMMSS-hex``: ``20261203-0941``;
- ``latest``, the experiment created last, or ``latest~N``, the N-th before it: the
  order of ``steadyrun list``, so ``latest~1`` is its second row.

It only reads, so it works on a store opened read-only.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from steadyrun.errors import AmbiguousExperimentId, ExperimentNotFound

if TYPE_CHECKING:
    from steadyrun.store.connection import Database
    from steadyrun.store.schema import Row

#: The word that names the experiment created last (``latest~N``: the N-th before it).
LATEST = "latest"
_LATEST = re.compile(r"latest(?:~(.*))?")
_TAIL = re.compile(r"-(\d{8}-\d{6}-([0-9a-f]{4}))$")
_TAIL_LEN = 20  # YYYYmmdd-HHMMSS-hhhh
_SUFFIX_LEN = 4
_SHOWN = 10
_COLUMNS = "id, title, state, created_at, started_at"


def resolve_id(store: Database, query: str) -> str:
    """The full id of the one experiment ``query`` names (see the module docs).

    Raises :class:`~steadyrun.errors.ExperimentNotFound` for an empty query, for
    ``latest`` on a store without experiments, for ``latest~N`` past the oldest one,
    and for a query that matches nothing (naming the closest ids);
    :class:`~steadyrun.errors.AmbiguousExperimentId` when it matches several, listing
    each with its title, state and start.
    """
    if not isinstance(query, str) or not query.strip():
        raise ExperimentNotFound(
            f"experiment ID {query!r} is empty: give an experiment id, a unique prefix of "
            "one or of its random suffix, or `latest` (`steadyrun list` shows them)")
    query = query.strip()
    if store._read("SELECT id FROM experiments WHERE id=?", (query,)):
        return query
    latest = _LATEST.fullmatch(query)
    if latest:
        return _latest(store, query, latest.group(1))
    rows = store._read(f"SELECT {_COLUMNS} FROM experiments WHERE id >= ? AND id < ? "
                       f"ORDER BY id LIMIT {_SHOWN + 1}", (query, query + "\U0010ffff"))
    low = query.lower()
    if len(low) <= _TAIL_LEN and _looks_like_tail(low):
        tails = store._read(
            f"SELECT {_COLUMNS} FROM experiments WHERE substr(id, -{_TAIL_LEN}, ?) = ? "
            f"OR substr(id, -{_SUFFIX_LEN}, ?) = ? ORDER BY created_at DESC LIMIT "
            f"{_SHOWN + 1}", (len(low), low, len(low), low))
        seen = {r.id for r in rows}
        rows += [r for r in tails if r.id not in seen and _tail_matches(r.id, low)]
    if len(rows) == 1:
        return str(rows[0].id)
    if rows:
        rows.sort(key=lambda r: (r.created_at or 0.0, r.id), reverse=True)
        more = len(rows) > _SHOWN
        raise AmbiguousExperimentId(
            f"{query!r} matches several experiments "
            f"({f'more than {_SHOWN}; {_SHOWN} shown' if more else len(rows)}):\n"
            + _table(rows[:_SHOWN])
            + "\ngive more of the id or of its random suffix (the 4 characters at its "
              "end), or `latest`; `steadyrun list` shows them all",
            [str(r.id) for r in rows])
    raise ExperimentNotFound(f"no experiment with id {query!r}{_not_found_hint(store, query)}")


# --- helpers ----------------------------------------------------------------------------


def _latest(store: Database, query: str, back: str | None) -> str:
    """``latest`` (``back`` None) or ``latest~N``."""
    if back is not None and not back.isdigit():
        raise ExperimentNotFound(
            f"{query!r}: after `latest~` give how many experiments back, e.g. `latest~1` "
            "for the one before the latest")
    n = int(back or 0)
    rows = store._read("SELECT id FROM experiments ORDER BY created_at DESC, id DESC "
                       "LIMIT 1 OFFSET ?", (n,))
    if rows:
        return str(rows[0].id)
    total = store._read("SELECT count(*) AS n FROM experiments")[0].n
    if total == 0:
        raise ExperimentNotFound(f"{query!r}: there are no experiments {_where(store)}")
    raise ExperimentNotFound(
        f"{query!r}: the store at {store.home} holds {total} experiment(s), so `latest` "
        f"goes back to `latest~{total - 1}` at most; `steadyrun list` shows them")


def _where(store: Database) -> str:
    if store.exists:
        return f"in the store at {store.home} yet; start one with `steadyrun run`"
    return (f"in {store.home}: the store does not exist (nothing has run there; is "
            "STEADYRUN_HOME set as it was?)")


def _looks_like_tail(text: str) -> bool:
    return all(c in "0123456789abcdef-" for c in text)


def _tail_matches(exp_id: str, low: str) -> bool:
    m = _TAIL.search(exp_id)
    return m is not None and (m.group(1).startswith(low) or m.group(2).startswith(low))


def _table(rows: list[Row]) -> str:
    cells = []
    for r in rows:
        when = (f"started {_fmt(r.started_at)}" if r.started_at is not None
                else f"created {_fmt(r.created_at)}, not started")
        cells.append([str(r.id), str(r.title), str(r.state), when])
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join("  " + "  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3]
                     for c in cells)


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _not_found_hint(store: Database, query: str) -> str:
    import difflib

    recent = [str(r.id) for r in store._read(
        "SELECT id FROM experiments ORDER BY created_at DESC LIMIT 2000")]
    if not recent:
        return f"; there are no experiments {_where(store)}"
    close = difflib.get_close_matches(query, recent, n=3, cutoff=0.5)
    low = query.lower()
    if len(close) < 3 and len(low) <= _TAIL_LEN:
        by_tail: dict[str, str] = {}
        for exp_id in recent:
            m = _TAIL.search(exp_id)
            if m:
                by_tail.setdefault(m.group(2)[:len(low)] if len(low) <= _SUFFIX_LEN
                                   else m.group(1)[:len(low)], exp_id)
        for key in difflib.get_close_matches(low, list(by_tail), n=3, cutoff=0.7):
            if by_tail[key] not in close:
                close.append(by_tail[key])
    if close:
        return f"; closest: {', '.join(close[:3])}"
    return "; `steadyrun list` shows the experiments (or use `latest`)"
