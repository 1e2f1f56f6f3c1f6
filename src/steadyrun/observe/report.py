"""Reports of a finished (or running) experiment: what each task used, and when.

``steadyrun report ID`` and ``run.Experiment.from_id(ID).report()`` write two files into
``<store>/experiments/<id>/report/`` (or ``out``):

- ``report.png``: CPU %, RSS and GPU memory of every task's process tree over time (one
  line per attempt, from the ``samples`` table; for a gang attempt one line per rank,
  labelled ``task r<rank>@<host>``; no GPU panel when no sample measured GPU
  memory, as on a machine without GPUs), and a timeline of the attempts, coloured
  by how they ended (succeeded, failed by kind, cancelled), numbered so retries show;
- ``report.html``: one self-contained page (the PNG is embedded) with a table of the
  tasks: state, attempts, failure kind, exit code, duration, peak RSS, CPU seconds and
  what degradation changed; and, when some attempt ran as a gang, a table of its ranks
  (host, peak RSS, peak GPU memory, highest CPU %, how each ended).

matplotlib draws the PNG (Agg, no display needed; imported only here). Without it,
:class:`PlotUnavailable` says what to install. :func:`task_summaries` (no matplotlib)
is what ``steadyrun monitor`` prints when an experiment ends.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.errors import PlotUnavailable
from steadyrun.store.results import task_duration
from steadyrun.units import format_duration, format_size

#: The figure's width in inches and its resolution: the PNG is ``FIG_WIDTH * DPI`` pixels
#: wide; its height grows with the number of tasks (:func:`figure_size`).
FIG_WIDTH = 11.0
DPI = 100
PANEL_HEIGHT = 2.2
ROW_HEIGHT = 0.32
MAX_TIMELINE_ROWS = 60  # beyond this the timeline stops growing and labels shrink
MAX_LEGEND = 15

#: Timeline colours: by final state, and failures by kind.
COLOURS = {
    "succeeded": "#2ca02c",
    "running": "#1f77b4",
    "cancelled": "#bcbd22",
    "error": "#d62728",
    "oom": "#9467bd",
    "timeout": "#ff7f0e",
    "lost": "#7f7f7f",
}


@dataclass
class TaskSummary:
    """One task over all its attempts: ``duration`` from the start of the first attempt
    to the end of the last (the time its retries took included; to now while it runs;
    :func:`steadyrun.store.results.task_duration`),
    ``peak_rss`` / ``peak_gpu_memory`` the highest of any attempt (bytes, whole process
    tree), ``cpu_seconds`` the sum over attempts (None when no attempt was sampled),
    ``exit_code`` the last attempt's, ``changes`` what degradation changed per attempt,
    ``failures`` the failed attempts as ``{"attempt", "kind", "exit_code"}`` (a task that
    succeeded after retries keeps them here; its ``kind`` is None)."""

    name: str
    state: str
    attempts: int
    kind: str | None = None
    exit_code: int | None = None
    duration: float | None = None
    peak_rss: int | None = None
    peak_gpu_memory: int | None = None
    cpu_seconds: float | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failure_text(self) -> str:
        """The final failure kind, or for a task that got over failures, which attempts
        failed how (``'#1 error, #2 oom'``)."""
        if self.kind:
            return self.kind
        return ", ".join(f"#{f['attempt']} {f['kind']}" for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def task_summaries(store: Any, exp_id: str, now: float | None = None) -> list[TaskSummary]:
    """Per task, in definition order, what the store recorded (two queries)."""
    now = time.time() if now is None else now
    by_task: dict[str, list[Any]] = {}
    for a in store.attempts(exp_id):
        by_task.setdefault(a.task, []).append(a)
    out = []
    for t in store.tasks(exp_id):
        rows = by_task.get(t.name, [])
        rss = [a.peak_rss for a in rows if a.peak_rss is not None]
        gpu = [a.peak_gpu_memory for a in rows if a.peak_gpu_memory is not None]
        cpu = [a.cpu_seconds for a in rows if a.cpu_seconds is not None]
        out.append(TaskSummary(
            name=t.name, state=t.state, attempts=t.attempts, kind=t.kind,
            exit_code=rows[-1].exit_code if rows else None,
            duration=task_duration(rows, now),
            peak_rss=max(rss) if rss else None, peak_gpu_memory=max(gpu) if gpu else None,
            cpu_seconds=round(sum(cpu), 3) if cpu else None,
            changes=[a.changes for a in rows if a.changes], message=t.message,
            failures=[{"attempt": a.number, "kind": a.kind, "exit_code": a.exit_code}
                      for a in rows if a.state == "failed"]))
    return out


SUMMARY_COLUMNS = ("task", "state", "attempts", "kind", "exit", "duration", "peak rss",
                   "peak gpu", "cpu s")


def summary_rows(summaries: list[TaskSummary]) -> list[list[str]]:
    """The cells of a summary table (:data:`SUMMARY_COLUMNS`), as text."""
    return [[s.name, s.state, str(s.attempts), s.failure_text,
             "" if s.exit_code is None else str(s.exit_code), format_duration(s.duration),
             format_size(s.peak_rss), format_size(s.peak_gpu_memory),
             "-" if s.cpu_seconds is None else f"{s.cpu_seconds:.1f}"] for s in summaries]


def write_report(store: Any, exp_id: str, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.png`` and ``report.html`` of experiment ``exp_id``; returns
    ``{"png": path, "html": path}``.

    ``out`` defaults to the experiment's ``report/`` folder (created, mode 0700). Files
    are replaced atomically and owner-only; a folder that cannot be written (a
    read-only store without ``out``) raises :class:`~steadyrun.errors.StoreError`.
    Raises :class:`PlotUnavailable` without matplotlib and
    :class:`~steadyrun.errors.ExperimentNotFound` for an unknown id; an experiment with
    no samples (monitoring off, tasks shorter than a sampling interval) still gets a
    report, its resource panels say so."""
    from steadyrun.store.db import atomic_write
    from steadyrun.store.files import make_private_dir

    row = store.experiment(exp_id)
    folder = Path(out).expanduser() if out is not None else (
        store.experiment_dir(exp_id) / "report")
    try:
        make_private_dir(folder)
    except OSError as exc:
        raise _unwritable(folder, exc, out) from None
    summaries = task_summaries(store, exp_id)
    attempts = store.attempts(exp_id)
    samples = store.samples(exp_id)
    png = render_png([s.name for s in summaries], attempts, samples,
                     title=f"{row.title} ({row.id}): {row.state}")
    page = render_html(row, summaries, png, rank_summaries(store, exp_id, samples))
    paths = {"png": folder / "report.png", "html": folder / "report.html"}
    try:
        atomic_write(paths["png"], png)
        atomic_write(paths["html"], page.encode("utf-8"))
    except OSError as exc:
        raise _unwritable(folder, exc, out) from None
    return paths


def _unwritable(folder: Path, exc: OSError, out: Any) -> Exception:
    from steadyrun.errors import StoreError

    return StoreError(f"cannot write the report to {folder}: {exc.strerror or exc}"
                      + ("; give a writable folder with --out DIR" if out is None else ""))


def figure_size(n_tasks: int, gpu: bool = True) -> tuple[float, float]:
    """The figure's (width, height) in inches for ``n_tasks`` tasks: the resource panels
    (CPU, RSS, and GPU memory when ``gpu``) and a timeline with one row per task (at
    most :data:`MAX_TIMELINE_ROWS`)."""
    rows = min(max(n_tasks, 1), MAX_TIMELINE_ROWS)
    panels = 3 if gpu else 2
    return FIG_WIDTH, round(panels * PANEL_HEIGHT + 1.0 + ROW_HEIGHT * rows + 0.6, 2)


def has_gpu_samples(samples: list[Any]) -> bool:
    """True when some sample measured GPU memory (the figure then has a GPU panel)."""
    return any(s["gpu_memory"] is not None for s in samples)


def render_png(tasks: list[str], attempts: list[Any], samples: list[Any], *,
               title: str = "", now: float | None = None) -> bytes:
    """The report's figure as PNG bytes (see the module docs). ``tasks`` gives the order
    (top to bottom in the timeline); ``attempts`` and ``samples`` are store rows."""
    mpl = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    now = time.time() if now is None else now
    starts = [a.started_at for a in attempts if a.started_at is not None]
    starts += [s.ts for s in samples]
    t0 = min(starts) if starts else now
    gpu = has_gpu_samples(samples)  # a CPU-only machine gets no empty GPU panel
    n = 3 if gpu else 2
    width, height = figure_size(len(tasks), gpu)
    timeline_h = height - n * PANEL_HEIGHT
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot: no window, no global backend change
    grid = fig.add_gridspec(n + 1, 1, height_ratios=[PANEL_HEIGHT] * n + [timeline_h])
    axes = [fig.add_subplot(grid[0])]
    axes += [fig.add_subplot(grid[i], sharex=axes[0]) for i in range(1, n + 1)]
    cpu_ax, rss_ax, gantt = axes[0], axes[1], axes[-1]
    if title:
        fig.suptitle(title, fontsize=11)
    cmap = mpl.colormaps["tab10" if len(tasks) <= 10 else "tab20"]
    colour = {name: cmap(i % cmap.N) for i, name in enumerate(tasks)}

    series = sample_series(samples)
    panels = [(cpu_ax, "cpu_percent", "CPU %"), (rss_ax, "rss", "RSS")]
    if gpu:
        panels.append((axes[2], "gpu_memory", "GPU memory"))
    for ax, column, label in panels:
        scale = 1.0
        if column != "cpu_percent":
            top = max((s[column] or 0 for s in samples), default=0)
            unit, scale = ("GiB", 1024**3) if top >= 2 * 1024**3 else ("MiB", 1024**2)
            label = f"{label} ({unit})"
        labelled: set[str] = set()
        drawn = False
        for (task, _number, rank, host), rows in sorted(
                series.items(), key=lambda kv: (_index(tasks, kv[0][0]), kv[0][1],
                                                -1 if kv[0][2] is None else kv[0][2],
                                                kv[0][3] or "")):
            points = [(r.ts - t0, r[column] / scale) for r in rows if r[column] is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            name = series_label(task, rank, host)
            ax.plot(xs, ys, color=colour.get(task, "black"), linewidth=1.2,
                    linestyle=_STYLES[(rank or 0) % len(_STYLES)] if rank is not None
                    else "-", marker="." if len(points) < 3 else None,
                    label=name if name not in labelled else None)
            labelled.add(name)
            drawn = True
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if not drawn:
            what = "no samples recorded (monitoring off, or tasks shorter than an interval)"
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center",
                    color="grey")
        else:
            ax.set_ylim(bottom=0)
        ax.tick_params(labelbottom=False)
    shown = {series_label(t, r, h) for t, _, r, h in series}
    if cpu_ax.get_legend_handles_labels()[0] and len(shown) <= MAX_LEGEND:
        cpu_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    _draw_timeline(gantt, tasks, attempts, t0, now, Patch)
    gantt.set_xlabel("seconds since the first attempt started")
    gantt.set_xlim(left=0)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def sample_series(samples: list[Any]) -> dict[tuple[str, int, int | None, str | None],
                                              list[Any]]:
    """The lines of the figure: ``(task, attempt, rank, host)`` -> its samples in time
    order. An attempt sampled as one tree is one line (rank and host None); a gang
    attempt one line per rank (its nodes' whole-tree rows are left out: the ranks
    show them), or one per host when only whole-tree rows were taken."""
    ranked = {(s.task, s.attempt) for s in samples if _get(s, "rank") is not None}
    series: dict[tuple[str, int, int | None, str | None], list[Any]] = {}
    for s in samples:
        rank = _get(s, "rank")
        if rank is None and (s.task, s.attempt) in ranked:
            continue
        series.setdefault((s.task, s.attempt, rank, _get(s, "host")), []).append(s)
    return series


def series_label(task: str, rank: int | None, host: str | None) -> str:
    """``train``, ``train r1@node-a`` (a rank) or ``train @node-a`` (a host's tree)."""
    if rank is None and host is None:
        return task
    where = f"@{host}" if host else ""
    return f"{task} r{rank}{where}" if rank is not None else f"{task} {where}"


@dataclass
class RankSummary:
    """One rank of a gang attempt, for the report: where it ran, what it used (from its
    samples) and how it ended (from the attempt's ``ranks.json``)."""

    task: str
    attempt: int
    rank: int
    host: str | None = None
    peak_rss: int | None = None
    peak_gpu_memory: int | None = None
    max_cpu_percent: float | None = None
    kind: str | None = None
    exit_code: int | None = None
    message: str | None = None


def rank_summaries(store: Any, exp_id: str, samples: list[Any] | None = None
                   ) -> list[RankSummary]:
    """Per rank of each task's last gang attempt, what its samples and ``ranks.json``
    say; ``[]`` when no attempt ran as a gang."""
    from steadyrun.store.results import read_ranks

    samples = store.samples(exp_id) if samples is None else samples
    last: dict[str, int] = {}
    for a in store.attempts(exp_id):
        last[a.task] = a.number
    found: dict[tuple[str, int, int], RankSummary] = {}
    for s in samples:
        rank = _get(s, "rank")
        if rank is None or last.get(s.task) != s.attempt:
            continue
        r = found.setdefault((s.task, s.attempt, rank),
                             RankSummary(s.task, s.attempt, rank, _get(s, "host")))
        if s.rss is not None:
            r.peak_rss = max(r.peak_rss or 0, s.rss)
        if s.gpu_memory is not None:
            r.peak_gpu_memory = max(r.peak_gpu_memory or 0, s.gpu_memory)
        if s.cpu_percent is not None:
            r.max_cpu_percent = max(r.max_cpu_percent or 0.0, s.cpu_percent)
    for task, number in last.items():
        for outcome in read_ranks(store.attempt_dir(exp_id, task, number)):
            r = found.setdefault((task, number, outcome.rank),
                                 RankSummary(task, number, outcome.rank, outcome.host))
            r.host = r.host or outcome.host
            r.kind, r.exit_code, r.message = outcome.kind, outcome.exit_code, outcome.message
    order = {t: i for i, t in enumerate(last)}
    return sorted(found.values(), key=lambda r: (order.get(r.task, 0), r.rank))


def render_html(exp: Any, summaries: list[TaskSummary], png: bytes,
                ranks: list[RankSummary] | None = None) -> str:
    """A self-contained HTML page: the experiment's facts, the task table and the figure
    (embedded as a ``data:image/png;base64`` URI)."""
    e = html.escape
    started, ended = exp.started_at, exp.ended_at
    facts = [("experiment", exp.id), ("title", exp.title), ("state", exp.state),
             ("started", _fmt_time(started)), ("ended", _fmt_time(ended)),
             ("duration", format_duration((ended or time.time()) - started) if started else "-"),
             ("executor", _describe_executor(exp.executor))]
    head = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    columns = ("task", "state", "attempts", "kind", "exit code", "duration", "peak RSS",
               "peak GPU memory", "CPU seconds", "changes", "message")
    body = []
    for s, cells in zip(summaries, summary_rows(summaries), strict=True):
        values = [*cells[:4], cells[4], cells[5], cells[6], cells[7], cells[8],
                  describe_changes(s.changes), " ".join((s.message or "").split())[:200]]
        body.append(f'<tr class="{e(s.state)}">'
                    + "".join(f"<td>{e(v)}</td>" for v in values) + "</tr>")
    image = base64.b64encode(png).decode("ascii")
    rank_table = ""
    if ranks:
        rank_cols = ("task", "attempt", "rank", "host", "peak RSS", "peak GPU memory",
                     "max CPU %", "ended", "exit code", "message")
        rank_rows = []
        for r in ranks:
            cells = [r.task, str(r.attempt), str(r.rank), r.host or "-",
                     format_size(r.peak_rss), format_size(r.peak_gpu_memory),
                     "-" if r.max_cpu_percent is None else f"{r.max_cpu_percent:.0f}",
                     r.kind or "ok", "" if r.exit_code is None else str(r.exit_code),
                     " ".join((r.message or "").split())[:200]]
            rank_rows.append(f'<tr class="{"failed" if r.kind else "succeeded"}">'
                             + "".join(f"<td>{e(v)}</td>" for v in cells) + "</tr>")
        rank_table = ('<h2>Ranks</h2>\n<table class="ranks"><thead><tr>'
                      + "".join(f"<th>{e(c)}</th>" for c in rank_cols)
                      + "</tr></thead>\n<tbody>\n" + "\n".join(rank_rows)
                      + "\n</tbody></table>\n")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>steadyrun report: {e(exp.id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; font-size: 14px; }}
th, td {{ padding: 3px 10px; text-align: left; border-bottom: 1px solid #ddd; }}
table.facts th {{ color: #555; font-weight: normal; }}
tr.succeeded td:nth-child(2) {{ color: #2ca02c; }}
tr.failed td:nth-child(2) {{ color: #d62728; font-weight: bold; }}
tr.cancelled td:nth-child(2), tr.skipped td:nth-child(2) {{ color: #a0a000; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>{e(exp.title)}</h1>
<table class="facts">{head}</table>
<h2>Tasks</h2>
<table class="tasks"><thead><tr>{"".join(f"<th>{e(c)}</th>" for c in columns)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
{rank_table}<h2>Resources over time</h2>
<img alt="CPU, RSS and GPU memory per task over time, and a timeline of attempts"
 src="data:image/png;base64,{image}">
<p style="color:#888">generated by steadyrun on {e(_fmt_time(time.time()))}</p>
</body></html>
"""


def describe_changes(changes: list[dict[str, Any]]) -> str:
    """``'attempt 2: batch_size 64 -> 32'`` for what degradation changed."""
    parts = []
    for change in changes:
        before = change.get("before")
        items = [f"{k} {v[0]} -> {v[1]}" if isinstance(v, list | tuple) and len(v) == 2
                 else f"{k} {v}" for k, v in change.items() if k != "before"]
        if items:
            parts.append((f"attempt {before}: " if before is not None else "")
                         + ", ".join(items))
    return "; ".join(parts)


# --- helpers ----------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(
            f"the report's figure needs matplotlib ({exc}); install it with "
            "`pip install 'steadyrun[plot]'`") from None
    return matplotlib


def _draw_timeline(ax: Any, tasks: list[str], attempts: list[Any], t0: float, now: float,
                   patch: Any) -> None:
    """One row per task, one bar per attempt, coloured by how it ended, numbered."""
    used: dict[str, str] = {}
    many = len(tasks) > MAX_TIMELINE_ROWS
    for a in attempts:
        if a.started_at is None:
            continue
        y = _index(tasks, a.task)
        end = a.ended_at if a.ended_at is not None else now
        key = a.state if a.state in ("succeeded", "running", "cancelled") else (
            a.kind if a.kind in COLOURS else "error")
        label = key if key in ("succeeded", "running", "cancelled") else f"failed: {key}"
        used[label] = COLOURS[key]
        left, width = a.started_at - t0, max(end - a.started_at, 0.0)
        ax.barh(y, width, left=left, height=0.6, color=COLOURS[key], edgecolor="white",
                hatch="//" if a.state == "running" else None)
        if not many:
            ax.text(left + width / 2, y, f"#{a.number}", ha="center", va="center",
                    fontsize=7, color="white", clip_on=True)
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks, fontsize=6 if many else 8)
    ax.set_ylim(len(tasks) - 0.5, -0.5)  # first task on top
    ax.grid(True, axis="x", alpha=0.3)
    if used:
        ax.legend(handles=[patch(color=c, label=k) for k, c in used.items()],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
                  title="attempts", title_fontsize=8)


_STYLES = ("-", "--", ":", "-.")


def _get(row: Any, column: str) -> Any:
    """A column of a sample row, None where the store predates it."""
    try:
        return row[column]
    except (KeyError, IndexError):
        return None


def _index(tasks: list[str], name: str) -> int:
    try:
        return tasks.index(name)
    except ValueError:
        return len(tasks)


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _describe_executor(cfg: Any) -> str:
    if not isinstance(cfg, dict):
        return str(cfg or "-")
    kind = cfg.get("type", "?")
    extra = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "type" and v is not None)
    return f"{kind}({extra})"


__all__ = ["COLOURS", "DPI", "FIG_WIDTH", "PlotUnavailable", "RankSummary",
           "SUMMARY_COLUMNS", "TaskSummary", "describe_changes", "figure_size",
           "has_gpu_samples", "rank_summaries", "render_html", "render_png", "sample_series",
           "series_label", "summary_rows", "task_summaries", "write_report"]
