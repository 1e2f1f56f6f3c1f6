"""The HTML of each page, built from the store (read-only)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from steadyrun.ui import charts, data
from steadyrun.ui.charts import esc

STATES = ("created", "running", "succeeded", "failed", "cancelled")


@dataclass
class Context:
    """What every page needs besides the store."""

    csrf: str
    read_only: bool


def fmt_duration(seconds: float | None) -> str:
    from steadyrun.units import format_duration

    return format_duration(seconds) if seconds is not None else ""


def _time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def layout(title: str, body: str, crumbs: str = "") -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · steadyrun</title>"
            '<link rel=stylesheet href="/static/ui.css"></head><body>'
            f'<header><a href="/" class=brand>steadyrun</a>{crumbs}</header>'
            f"<main>{body}</main><script src=\"/static/ui.js\"></script></body></html>")


def error_page(message: str) -> str:
    return layout("not found", f'<p class=error>{esc(message)}</p><p><a href="/">all '
                               "experiments</a></p>")


def badge(state: str | None, extra: str = "") -> str:
    return f'<span class="badge s-{esc(state)}" {extra}>{esc(state)}</span>'


def _form(ctx: Context, exp: str, action: str, label: str, task: str | None = None,
          back: str = "") -> str:
    if ctx.read_only:
        return ""
    hidden = f'<input type=hidden name=task value="{esc(task)}">' if task else ""
    return (f'<form method=post action="/e/{quote(exp)}/{action}" class=inline>'
            f'<input type=hidden name=csrf value="{esc(ctx.csrf)}">{hidden}'
            f'<input type=hidden name=back value="{esc(back)}">'
            f'<button class="btn {action}" data-action="{action}" '
            f'data-task="{esc(task or "")}">{esc(label)}</button></form>')


def _pager(base: str, params: dict[str, Any], page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = []
    if page > 1:
        links.append(f'<a href="{base}?{urlencode({**params, "page": page - 1})}">‹ newer</a>')
    links.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        links.append(f'<a href="{base}?{urlencode({**params, "page": page + 1})}">older ›</a>')
    return f'<nav class=pager>{" ".join(links)}</nav>'


# --- experiments --------------------------------------------------------------------


def experiments_page(store: Any, ctx: Context, state: str | None, title: str | None,
                     page: int, size: int) -> str:
    """Experiments, newest first, filtered by state and title, ``size`` a page."""
    where, params = "WHERE 1=1", []
    if state:
        where += " AND state=?"
        params.append(state)
    if title:
        where += " AND title LIKE ?"
        params.append(f"%{title}%")
    total = store._read(f"SELECT count(*) AS n FROM experiments {where}", tuple(params))[0].n
    pages = max(1, -(-total // size))
    page = min(page, pages)
    rows = store._read(f"SELECT id, title, state, created_at, started_at, ended_at FROM "
                       f"experiments {where} ORDER BY created_at DESC, id DESC LIMIT ? "
                       f"OFFSET ?", (*params, size, (page - 1) * size))
    counts = store.task_counts([r.id for r in rows])
    by_state = {r.state: r.n for r in store._read(
        "SELECT state, count(*) AS n FROM experiments GROUP BY state")}
    now = time.time()
    opts = "".join(f'<option value="{s}"{" selected" if s == state else ""}>{s} '
                   f'({by_state.get(s, 0)})</option>' for s in STATES)
    body = [f"<h1>Experiments <small>{total}</small></h1>"
            '<form class=filters method=get action="/">'
            f'<input name=title placeholder="title contains" value="{esc(title)}">'
            f'<select name=state><option value="">any state</option>{opts}</select>'
            "<button>filter</button></form>"]
    if not rows:
        body.append('<p class=muted>No experiment matches. Start one with '
                    "<code>steadyrun run</code>.</p>")
    else:
        trs = []
        for r in rows:
            c = counts.get(r.id, {})
            summary = " ".join(f'<span class="count s-{esc(k)}">{n} {esc(k)}</span>'
                               for k, n in sorted(c.items()))
            dur = (r.ended_at or now) - r.started_at if r.started_at else None
            trs.append(f'<tr data-exp="{esc(r.id)}"><td><a href="/e/{quote(r.id)}">'
                       f"{esc(r.id)}</a></td><td>{esc(r.title)}</td><td>{badge(r.state)}</td>"
                       f"<td>{summary}</td><td class=wide>{_time(r.created_at)}</td>"
                       f"<td>{fmt_duration(dur)}</td></tr>")
        body.append('<div class=scroll><table class=grid><thead><tr><th>id</th><th>title</th>'
                    "<th>state</th><th>tasks</th><th class=wide>created</th><th>duration</th></tr>"
                    f'</thead><tbody>{"".join(trs)}</tbody></table></div>')
    body.append(_pager("/", {k: v for k, v in (("state", state), ("title", title)) if v},
                       page, pages))
    return layout("experiments", "".join(body))


# --- one experiment -----------------------------------------------------------------


def experiment_page(store: Any, ctx: Context, exp: str, page: int, size: int) -> str:
    """The experiment: actions, tasks (paged, live), timeline, graph, record."""
    from steadyrun.store.liveness import controller_dead

    full = store.resolve_id(exp)
    row = store.experiment(full)
    now = time.time()
    total = data.task_count(store, full)
    pages = max(1, -(-total // size))
    page = min(page, pages)
    shown = data.task_page(store, full, page, size)
    names = [t.name for t in shown]
    base = f"/e/{quote(full)}"
    rows = []
    for t in shown:
        link = f"{base}/t/{quote(t.name)}"
        cancel = _form(ctx, full, "cancel", "cancel", t.name, base) \
            if t.state in data.OPEN else ""
        rows.append(f'<tr data-task="{esc(t.name)}"><td><a href="{link}">{esc(t.name)}</a></td>'
                    f'<td class=state>{badge(t.state)}</td>'
                    f'<td class="attempts wide">{t.attempts}</td>'
                    f'<td class=kind>{esc(t.kind or "")}</td>'
                    f"<td class=duration>{fmt_duration(t.duration)}</td>"
                    f'<td class="host wide">{esc(t.host or "")}</td><td class=act>{cancel}</td>'
                    "</tr>")
    actions = ""
    final = row.state in ("succeeded", "failed", "cancelled")
    if not final:
        actions += _form(ctx, full, "cancel", "cancel experiment", None, base)
    if final and row.state != "succeeded" or controller_dead(row):
        actions += _form(ctx, full, "resume", "resume", None, base)
    dead = " <span class=warn>controller dead</span>" if controller_dead(row) else ""
    dur = (row.ended_at or now) - row.started_at if row.started_at else None
    q = f"?page={page}" if page > 1 else ""
    body = [f'<h1>{esc(row.title)} {badge(row.state, "id=exp-state")}{dead}</h1>'
            f"<p class=meta><code>{esc(full)}</code> · created {_time(row.created_at)} · "
            f"<span id=exp-duration class=refresh>{fmt_duration(dur)}</span> · "
            f"{total} tasks · "
            f'<a href="{base}/sweep">results</a></p>',
            f"<div class='actions refresh' id=exp-actions>{actions}</div>"]
    body.append(f'<h2>Tasks</h2><div class=scroll><table class="grid tasks" id=tasks '
                f'data-states="{base}/states{q}"><thead><tr><th>task</th><th>state</th>'
                "<th class=wide>attempts</th><th>failure</th><th>duration</th>"
                "<th class=wide>host</th><th></th>"
                f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    body.append(_pager(base, {}, page, pages))
    attempts = [a for mine in data.attempts_of(store, full, names).values() for a in mine]
    body.append("<h2>Timeline</h2><div class='refresh scroll' id=timeline>"
                + charts.gantt(names, attempts, now) + "</div>")
    depends = {t.name: t.depends_on for t in shown}
    if any(depends.values()):
        body.append("<h2>Dependencies</h2><div class='refresh scroll' id=dag>" + charts.dag(
            names, depends, {t.name: t.state for t in shown}) + "</div>")
    body.append(_record_section(store, full))
    return layout(row.title, "".join(body), f' › <a href="{base}">{esc(full)}</a>')


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value or "[]")
    return [str(v) for v in value or ()]


def _record_section(store: Any, full: str) -> str:
    try:
        from steadyrun.cli.show import summary
        from steadyrun.packaging.record import read_record

        record = read_record(store.experiment_dir(full))
    except Exception:  # noqa: BLE001 - a missing or unreadable record is shown as such
        record = None
    if not record:
        return "<h2>Reproducibility</h2><p class=muted>No record.</p>"
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in summary(record))
    return f"<h2>Reproducibility</h2><dl class=record>{items}</dl>"


# --- one task -----------------------------------------------------------------------


def task_page(store: Any, ctx: Context, exp: str, name: str) -> str:
    """A task: its attempts, failure explanation, resource charts and live log."""
    from steadyrun.observe.report import describe_changes

    full = store.resolve_id(exp)
    t = data.task_row(store, full, name)
    if t is None:
        return error_page(f"experiment {full} has no task {name!r}")
    attempts = store.attempts(full, name)
    base = f"/e/{quote(full)}"
    here = f"{base}/t/{quote(name)}"
    body = [f'<h1>{esc(name)} {badge(t.state, "id=task-state")}</h1>'
            f'<p class=meta>experiment <a href="{base}">{esc(full)}</a> · '
            f'{t.attempts} attempt(s){" · " + esc(t.message) if t.message else ""}</p>']
    if t.state in ("pending", "running", "retrying"):
        body.append(f'<div class=actions>{_form(ctx, full, "cancel", "cancel task", name, here)}'
                    "</div>")
    rows = []
    for a in attempts:
        took = (a.ended_at or time.time()) - a.started_at if a.started_at else None
        rows.append(f"<tr><td>{int(a.number)}</td><td>{badge(a.state)}</td>"
                    f'<td>{esc(a.kind or "")}</td><td>{esc(a.exit_code)}</td>'
                    f'<td>{_time(a.started_at)}</td><td>{fmt_duration(took)}</td>'
                    f'<td>{esc(a.host or "")}</td><td>{_bytes(a.peak_rss)}</td></tr>')
    body.append("<h2>Attempts</h2><div class=scroll><table class=grid><thead><tr><th>#</th>"
                "<th>state</th><th>kind</th><th>exit</th><th>started</th><th>duration</th>"
                f'<th>host</th><th>peak RSS</th></tr></thead><tbody>{"".join(rows)}'
                "</tbody></table></div>")
    failed = [a for a in attempts if a.state == "failed"]
    if failed:
        a = failed[-1]
        changes = [x.changes if isinstance(x.changes, dict) else json.loads(x.changes)
                   for x in attempts if x.changes and x.changes != "{}"]
        changed = describe_changes(changes) if changes else ""
        what, trace = _error(a.error)
        body.append(f'<h2>Failure</h2><section class=failure><p><b>{esc(a.kind or "error")}'
                    f"</b> in attempt {int(a.number)}"
                    f'{f", exit code {a.exit_code}" if a.exit_code is not None else ""}'
                    f'{": " + esc(what or a.message) if what or a.message else ""}</p>'
                    + (f"<p>Degradation changed: {esc(changed)}</p>" if changed else "")
                    + f'<pre class=traceback>{esc(trace or "no traceback recorded")}</pre>'
                    "</section>")
    body.append("<h2>Resources</h2>" + _resource_charts(store.samples(full, name)))
    body.append(f'<h2>Log</h2><pre id=log class=log data-src="{here}/logs"></pre>')
    return layout(name, "".join(body), f' › <a href="{base}">{esc(full)}</a> › {esc(name)}')


def _error(error: Any) -> tuple[str, str]:
    """(``Type: message``, the traceback) of an attempt's recorded error."""
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return "", error
    if not isinstance(error, dict):
        return "", "" if error is None else str(error)
    what = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
    return what, str(error.get("traceback") or "")


def _resource_charts(samples: list[Any]) -> str:
    if not samples:
        return "<p class=muted>No samples yet.</p>"
    series: dict[str, dict[str, list[tuple[float, float]]]] = {"cpu": {}, "rss": {}, "gpu": {}}
    for s in samples:
        label = f"attempt {int(s.attempt)}"
        if s.rank is not None:
            label += f" rank {s.rank}"
        if s.host:
            label += f" @{s.host}"
        series["cpu"].setdefault(label, []).append((s.ts, s.cpu_percent))
        series["rss"].setdefault(label, []).append((s.ts, s.rss))
        if s.gpu_memory is not None:
            series["gpu"].setdefault(label, []).append((s.ts, s.gpu_memory))
    parts = [charts.lines("CPU %", series["cpu"], "%"), charts.lines("RSS", series["rss"], "B")]
    if series["gpu"]:
        parts.append(charts.lines("GPU memory", series["gpu"], "B"))
    return f'<div class=charts>{"".join(parts)}</div>'


def _bytes(n: Any) -> str:
    return charts._fmt(float(n), "B") if n else ""


# --- sweep --------------------------------------------------------------------------


def sweep_page(store: Any, ctx: Context, exp: str, sort: str | None, desc: bool,
               metric: str | None) -> str:
    """The results table (sortable) and parallel coordinates against a metric."""
    from steadyrun.store.table import result_table

    full = store.resolve_id(exp)
    table = result_table(store, full)
    base = f"/e/{quote(full)}"
    note = ""
    if sort:
        try:
            table = table.sorted_by(sort, descending=desc)
        except Exception as exc:  # noqa: BLE001 - an unknown column is said on the page
            note = f"<p class=error>{esc(exc)}</p>"
    numeric = [v for v in table.values
               if any(isinstance(r.get(v), int | float) for r in table.rows)]
    metric = metric if metric in table.values else (numeric[0] if numeric else None)
    head = []
    for c in table.columns:
        d = "1" if c == sort and not desc else "0"
        arrow = (" ▼" if desc else " ▲") if c == sort else ""
        q = urlencode({"sort": c, "desc": d, **({"metric": metric} if metric else {})})
        head.append(f'<th><a class=sort data-col="{esc(c)}" href="{base}/sweep?{q}">'
                    f"{esc(c)}{arrow}</a></th>")
    rows = []
    for r in table.rows:
        cells = []
        for c in table.columns:
            v = r.get(c)
            if c == "task":
                cells.append(f'<td><a href="{base}/t/{quote(str(v))}">{esc(v)}</a></td>')
            elif c == "state":
                cells.append(f"<td>{badge(v)}</td>")
            else:
                cells.append(f'<td class=num>{esc(_cell(v))}</td>')
        rows.append(f'<tr data-task="{esc(r.get("task"))}">{"".join(cells)}</tr>')
    opts = "".join(f'<option{" selected" if v == metric else ""}>{esc(v)}</option>'
                   for v in numeric)
    chooser = (f'<form method=get action="{base}/sweep" class=filters>'
               f'<label>metric <select name=metric onchange="this.form.submit()">{opts}'
               "</select></label>"
               + (f'<input type=hidden name=sort value="{esc(sort)}">' if sort else "")
               + "</form>") if numeric else ""
    body = [f"<h1>Results of {esc(full)} {badge(table.state)}</h1>", note,
            f'<div class=scroll><table class="grid results" id=results><thead><tr>'
            f'{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>',
            "<h2>Parameters against the metric</h2>", chooser,
            "<div class=scroll>" + charts.parallel(table.params, table.rows, metric) + "</div>"
            if metric else "<p class=muted>No numeric result yet.</p>"]
    return layout(f"results {full}", "".join(body),
                  f' › <a href="{base}">{esc(full)}</a> › results')


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
