"""Small SVG charts drawn on the server (no script library, works offline)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

#: Fill colour of an attempt by its state or failure kind.
COLORS = {
    "succeeded": "#2e9e5b", "running": "#3a7bd5", "error": "#d64545", "failed": "#d64545",
    "oom": "#9b3dd6", "timeout": "#e08a1e", "lost": "#6b6b6b", "preempted": "#b8a31f",
    "cancelled": "#999999", "pending": "#cccccc", "retrying": "#e0c04a", "skipped": "#bbbbbb",
}
#: Points drawn per line at most.
MAX_POINTS = 600
SERIES = ["#3a7bd5", "#d64545", "#2e9e5b", "#e08a1e", "#9b3dd6", "#1fa5b8", "#6b6b6b"]


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def color(state: str | None, kind: str | None = None) -> str:
    """The colour of an attempt: its failure kind's when it failed, else its state's."""
    if state == "failed" and kind:
        return COLORS.get(kind, COLORS["failed"])
    return COLORS.get(state or "", "#888888")


def gantt(rows: Sequence[str], attempts: Sequence[Any], now: float, width: int = 960) -> str:
    """A timeline: a row per task name in ``rows``, a bar per attempt, coloured by
    outcome and failure kind; an attempt still running ends at ``now``."""
    starts = [a.started_at for a in attempts if a.started_at]
    if not rows or not starts:
        return '<p class="muted">No attempt has started yet.</p>'
    t0 = min(starts)
    t1 = max([now if a.ended_at is None else a.ended_at for a in attempts if a.started_at]
             + [t0 + 1])
    label_w, bar_h, gap = 160, 14, 4
    plot_w = width - label_w - 10
    index = {name: i for i, name in enumerate(rows)}
    height = len(rows) * (bar_h + gap) + 24
    scale = plot_w / (t1 - t0)
    parts = [f'<svg class="chart gantt" viewBox="0 0 {width} {height}" '
             f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="timeline">']
    for name, i in index.items():
        y = i * (bar_h + gap) + 4
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" text-anchor="end" '
                     f'class="lbl">{esc(_clip(name, 22))}</text>')
    for a in attempts:
        if a.task not in index or not a.started_at:
            continue
        y = index[a.task] * (bar_h + gap) + 4
        end = now if a.ended_at is None else a.ended_at
        x = label_w + (a.started_at - t0) * scale
        w = max(2.0, (end - a.started_at) * scale)
        what = a.kind if a.state == "failed" and a.kind else a.state
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" '
                     f'fill="{color(a.state, a.kind)}"><title>{esc(a.task)} attempt '
                     f'{int(a.number)}: {esc(what)} ({end - a.started_at:.1f}s)</title></rect>')
    y = height - 6
    parts.append(f'<text x="{label_w}" y="{y}" class="axis">0 s</text>'
                 f'<text x="{width - 10}" y="{y}" text-anchor="end" class="axis">'
                 f'{t1 - t0:.1f} s</text></svg>')
    return "".join(parts)


def dag(names: Sequence[str], depends: dict[str, list[str]], states: dict[str, str],
        width: int = 960) -> str:
    """The dependency graph: tasks in columns by depth, edges from dependency to
    dependent, nodes coloured by state."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name in depth:
            return depth[name]
        deps = [d for d in depends.get(name, []) if d in states and d not in seen]
        depth[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    for n in names:
        level(n)
    columns: dict[int, list[str]] = {}
    for n in names:
        columns.setdefault(depth[n], []).append(n)
    node_w, node_h, col_gap, row_gap = 140, 24, 50, 10
    tallest = max(len(c) for c in columns.values())
    height = tallest * (node_h + row_gap) + 10
    total_w = max(width, len(columns) * (node_w + col_gap))
    pos: dict[str, tuple[float, float]] = {}
    for d, col in columns.items():
        for i, node in enumerate(col):
            pos[node] = (10 + d * (node_w + col_gap), 5 + i * (node_h + row_gap))
    parts = [f'<svg class="chart dag" viewBox="0 0 {total_w} {height}" '
             f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="task graph">']
    for n in names:
        for dep in depends.get(n, []):
            if dep in pos:
                x1, y1 = pos[dep][0] + node_w, pos[dep][1] + node_h / 2
                x2, y2 = pos[n][0], pos[n][1] + node_h / 2
                parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" class="edge"/>')
    for n, (x, y) in pos.items():
        parts.append(f'<g data-node="{esc(n)}"><rect x="{x}" y="{y}" width="{node_w}" '
                     f'height="{node_h}" rx="4" fill="{color(states.get(n))}"/>'
                     f'<text x="{x + 6}" y="{y + 16}" class="node">{esc(_clip(n, 18))}</text>'
                     f'<title>{esc(n)}: {esc(states.get(n))}</title></g>')
    parts.append("</svg>")
    return "".join(parts)


def lines(title: str, series: dict[str, list[tuple[float, float]]], unit: str = "",
          width: int = 460, height: int = 180) -> str:
    """A line chart of ``series`` (label -> [(t, value)]), t in seconds from its start."""
    points = [p for s in series.values() for p in s if p[1] is not None]
    if not points:
        return (f'<figure class="chart-box"><figcaption>{esc(title)}</figcaption>'
                '<p class="muted">no samples</p></figure>')
    t0 = min(p[0] for p in points)
    t1 = max(max(p[0] for p in points), t0 + 1)
    top = max(max(p[1] for p in points), 1e-9)
    left, bottom = 56, 20
    pw, ph = width - left - 8, height - bottom - 8
    parts = [f'<figure class="chart-box"><figcaption>{esc(title)}</figcaption>'
             f'<svg class="chart line" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{esc(title)}">'
             f'<line x1="{left}" y1="{8 + ph}" x2="{left + pw}" y2="{8 + ph}" class="edge"/>'
             f'<text x="{left - 4}" y="14" text-anchor="end" class="axis">'
             f'{esc(_fmt(top, unit))}</text>'
             f'<text x="{left - 4}" y="{8 + ph}" text-anchor="end" class="axis">0</text>'
             f'<text x="{left + pw}" y="{height - 4}" text-anchor="end" class="axis">'
             f'{t1 - t0:.0f} s</text>']
    legend = []
    for i, (label, pts) in enumerate(series.items()):
        c = SERIES[i % len(SERIES)]
        if len(pts) > MAX_POINTS:  # every n-th sample: the shape, not 100,000 points
            pts = pts[::-(-len(pts) // MAX_POINTS)] + [pts[-1]]
        coords = " ".join(f"{left + (t - t0) / (t1 - t0) * pw:.1f},"
                          f"{8 + ph - (v / top) * ph:.1f}" for t, v in pts if v is not None)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{c}" '
                     f'stroke-width="1.5"><title>{esc(label)}</title></polyline>')
        legend.append(f'<span style="color:{c}">■ {esc(label)}</span>')
    parts.append(f'</svg><div class="legend">{" ".join(legend)}</div></figure>')
    return "".join(parts)


def parallel(columns: Sequence[str], rows: Sequence[dict[str, Any]], metric: str,
             width: int = 960, height: int = 260) -> str:
    """Parallel coordinates: an axis per column (parameters, then ``metric`` last), a
    line per row coloured by its ``metric`` (blue low, red high)."""
    axes = [c for c in columns if c != metric] + [metric]
    usable = [r for r in rows if r.get(metric) is not None]
    if len(axes) < 2 or not usable:
        return '<p class="muted">No finished task has this metric yet.</p>'
    pad, top, bottom = 60, 24, 20
    step = (width - 2 * pad) / (len(axes) - 1)
    ph = height - top - bottom
    scales = [_scale([r.get(a) for r in usable]) for a in axes]
    mvals = [float(r[metric]) for r in usable if _num(r[metric]) is not None]
    lo, hi = (min(mvals), max(mvals)) if mvals else (0.0, 1.0)
    parts = [f'<svg class="chart parallel" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="parallel coordinates">']
    for r in usable:
        pts = []
        for i, a in enumerate(axes):
            frac = scales[i](r.get(a))
            if frac is None:
                continue
            pts.append(f"{pad + i * step:.1f},{top + (1 - frac) * ph:.1f}")
        m = _num(r[metric])
        share = 0.5 if m is None or hi == lo else (m - lo) / (hi - lo)
        c = f"rgb({int(40 + 200 * share)},{int(90 + 40 * (1 - share))},{int(220 - 180 * share)})"
        parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{c}" '
                     f'stroke-width="2" opacity="0.8"><title>{esc(r.get("task"))}: '
                     f'{esc(r.get(metric))}</title></polyline>')
    for i, a in enumerate(axes):
        x = pad + i * step
        lo_label, hi_label = _ends([r.get(a) for r in usable])
        parts.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + ph}" class="axisline"/>'
                     f'<text x="{x}" y="14" text-anchor="middle" class="lbl">'
                     f'{esc(_clip(a, 16))}</text>'
                     f'<text x="{x + 4}" y="{top + 10}" class="axis">{esc(hi_label)}</text>'
                     f'<text x="{x + 4}" y="{top + ph - 2}" class="axis">{esc(lo_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ends(values: list[Any]) -> tuple[str, str]:
    """The labels of an axis's bottom and top."""
    present = [v for v in values if v is not None]
    nums = [_num(v) for v in present]
    if present and all(n is not None for n in nums):
        return f"{min(nums):.4g}", f"{max(nums):.4g}"  # type: ignore[type-var]
    cats = sorted({str(v) for v in present})
    return (cats[0], cats[-1]) if cats else ("", "")


def _scale(values: list[Any]) -> Any:
    nums = [_num(v) for v in values if v is not None]
    if nums and all(n is not None for n in nums):
        lo, hi = min(nums), max(nums)  # type: ignore[type-var]

        def numeric(v: Any) -> float | None:
            n = _num(v)
            if n is None:
                return None
            return 0.5 if hi == lo else (n - lo) / (hi - lo)  # type: ignore[operator]
        return numeric
    cats = sorted({str(v) for v in values if v is not None})

    def category(v: Any) -> float | None:
        if v is None:
            return None
        return 0.5 if len(cats) < 2 else cats.index(str(v)) / (len(cats) - 1)
    return category


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if value < 1024 or u == "TiB":
                return f"{value:.0f} {u}" if u == "B" else f"{value:.1f} {u}"
            value /= 1024
    return f"{value:.0f}{unit}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"
