"""The model report: history points in (:mod:`stream_monitor.history`), one self-contained HTML page out.

Pure: no I/O, no clock (the caller passes the time range). The page has inline CSS and inline SVG only:
no script, font, image or style sheet to fetch, so it opens anywhere, offline. Per column it draws the
reference against the most recent window's distribution (bars) and each statistic over time against its
warning and critical lines, with the alerts as markers; then the episodes (firing → resolved spans) and
the performance signals where the history has them. :func:`distribution_svg` is also the status page's
picture of a firing column.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from .history import episodes as find_episodes

SECTIONS = (("feature", "Features"), ("prediction", "Predictions"), ("label", "Labels"),
            ("latency", "Latency"), ("data_quality", "Data quality"), ("performance", "Performance (realized)"),
            ("estimated_performance", "Performance (estimated)"), ("fairness", "Fairness"),
            ("multivariate", "Multivariate"))
REFERENCE_COLOUR, CURRENT_COLOUR = "#6c8ebf", "#f28e2b"
WARNING_COLOUR, CRITICAL_COLOUR, RESOLVED_COLOUR = "#e6a700", "#d62728", "#2ca02c"
SERIES_COLOURS = ("#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#ff7f0e")
MAX_BARS = 40  # bins drawn at most (the largest reference or current shares; the rest summed as "others")

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1d2733;margin:0;background:#f4f6f9}
header{background:#1d2733;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c4ceda}main{padding:18px 28px;max-width:1240px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px 18px;margin:0 0 18px}
h2{font-size:18px;margin:0 0 10px}h3{font-size:15px;margin:14px 0 6px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}.card span{color:#5b6b7c;font-size:12px}
.firing{color:#d62728}.warn{color:#b07d00}.ok{color:#2ca02c}
.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{flex:0 0 auto}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e8ee}
th{color:#5b6b7c;font-weight:600;font-size:12px}.muted{color:#5b6b7c}
svg text{font:11px -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;fill:#334}
"""


FONT = 'font-family="Helvetica,Arial,sans-serif" font-size="11" font-weight="400"'  # whatever the page's CSS says


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:max(chars - 1, 1)] + "…"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _time(ms: int | float | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short_time(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


# --- pictures ---------------------------------------------------------------------------------


def _bars(bins: Sequence[str], reference: Sequence[float], current: Sequence[float]) -> tuple[list, list, list]:
    """At most :data:`MAX_BARS` bins: the ones with the largest shares, in their order, the rest summed."""
    n = min(len(bins), len(reference), len(current))
    bins, reference, current = list(bins[:n]), list(reference[:n]), list(current[:n])
    if n <= MAX_BARS:
        return bins, reference, current
    keep = sorted(sorted(range(n), key=lambda i: -max(reference[i], current[i]))[:MAX_BARS - 1])
    rest = [i for i in range(n) if i not in set(keep)]
    return ([bins[i] for i in keep] + [f"{len(rest)} others"],
            [reference[i] for i in keep] + [sum(reference[i] for i in rest)],
            [current[i] for i in keep] + [sum(current[i] for i in rest)])


def distribution_svg(bins: Sequence[str], reference: Sequence[float], current: Sequence[float],
                     title: str = "", width: int = 520, height: int = 220, current_label: str = "recent window") -> str:
    """Grouped bars: each bin's share in the reference and in the current window."""
    bins, reference, current = _bars(bins, reference, current)
    left, right, top, bottom = 44, 10, 36, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    highest = max([*reference, *current, 0.01])
    top_share = max(min(highest * 1.1, 1.0), highest)
    out = [f'<svg class="distribution" width="{width}" height="{height}" {FONT} '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title or "distribution")}">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="13" font-weight="600">{_e(_cut(title, (width - left) // 6))}</text>',
           f'<rect x="{width - 190}" y="19" width="10" height="10" fill="{REFERENCE_COLOUR}"/>'
           f'<text x="{width - 176}" y="28">reference</text>',
           f'<rect x="{width - 104}" y="19" width="10" height="10" fill="{CURRENT_COLOUR}"/>'
           f'<text x="{width - 90}" y="28">{_e(current_label)}</text>']
    for k in range(5):
        share = top_share * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e8ee"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{share:.0%}</text>')
    n = max(len(bins), 1)
    slot = plot_w / n
    bar = max(slot * 0.38, 1.0)
    for i, (name, r, c) in enumerate(zip(bins, reference, current)):
        x = left + i * slot + slot * 0.1
        for j, (share, colour, what) in enumerate(((r, REFERENCE_COLOUR, "reference"), (c, CURRENT_COLOUR, "recent"))):
            h = plot_h * share / top_share
            out.append(f'<rect class="bar {what}" x="{x + j * bar:.1f}" y="{top + plot_h - h:.1f}" '
                       f'width="{bar:.1f}" height="{h:.1f}" fill="{colour}"><title>{_e(name)}: {what} '
                       f'{share:.1%}</title></rect>')
        if n <= 16 or i % max(n // 12, 1) == 0:
            label = name if len(name) <= 14 else name[:13] + "…"
            cx = left + i * slot + slot / 2
            out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                       f'transform="rotate(-35 {cx:.1f} {top + plot_h + 12})">{_e(label)}</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#778"/></svg>')
    return "".join(out)


def series_svg(series: Mapping[Any, Sequence[tuple[float, float]]], start_ms: float, end_ms: float,
               warning: float | None, critical: float | None, markers: Sequence[Mapping[str, Any]] = (),
               title: str = "", width: int = 520, height: int = 220) -> str:
    """A statistic over time (one line per partition), its warning and critical lines, and the alerts as
    markers (a firing alert: a triangle in its severity's colour; a resolution: a green circle)."""
    left, right, top, bottom = 48, 12, 26, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in series.values() for _, v in points]
    values += [m["statistic"] for m in markers if m.get("statistic") is not None and m.get("on_line", True)]
    values += [v for v in (warning, critical) if v is not None]
    low = min([0.0, *values])
    high = max([*values, low + 1e-9]) * 1.1 if values else 1.0
    if high <= low:
        high = low + 1.0
    span = max(end_ms - start_ms, 1.0)

    def x(t: float) -> float:
        return left + plot_w * (min(max(t, start_ms), end_ms) - start_ms) / span

    def y(v: float) -> float:
        return top + plot_h - plot_h * (min(max(v, low), high) - low) / (high - low)

    out = [f'<svg class="series" width="{width}" height="{height}" {FONT} '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title or "statistic over time")}">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="15" font-weight="600">{_e(title)}</text>']
    for k in range(5):
        v = low + (high - low) * k / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eef1f5"/>'
                   f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for k in range(4):
        t = start_ms + span * k / 3
        anchor = "start" if k == 0 else "end" if k == 3 else "middle"
        out.append(f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="{anchor}">{_short_time(t)}</text>')
    levels = [(warning, WARNING_COLOUR, "warning"), (critical, CRITICAL_COLOUR, "critical")]
    if warning is not None and warning == critical:  # a limit (a floor, a ceiling): one line
        levels = [(critical, CRITICAL_COLOUR, "critical")]
    for level, colour, what in levels:
        if level is not None:
            out.append(f'<line class="threshold {what}" x1="{left}" x2="{left + plot_w}" y1="{y(level):.1f}" '
                       f'y2="{y(level):.1f}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4">'
                       f'<title>{what} {level:.4g}</title></line>'
                       f'<text x="{left + plot_w - 2}" y="{y(level) - 3:.1f}" text-anchor="end" '
                       f'fill="{colour}">{what} {level:.3g}</text>')
    for i, (key, points) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        if len(points) == 1:
            t, v = points[0]
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        elif points:
            out.append(f'<polyline class="statistic" points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"><title>{_e(key)}</title></polyline>')
    for m in markers:
        t = m.get("t", m.get("wall_ms"))
        if t is None:
            continue
        v = m.get("statistic")
        cy = y(v) if v is not None and m.get("on_line", True) else top + 6
        cx = x(t)
        tip = _e(f"{m.get('status')} {m.get('severity')} {m.get('detector')}: {m.get('message', '')}")
        if m.get("status") == "firing":
            colour = CRITICAL_COLOUR if m.get("severity") == "critical" else WARNING_COLOUR
            out.append(f'<path class="marker firing" d="M{cx:.1f},{cy - 7:.1f} L{cx + 6:.1f},{cy + 4:.1f} '
                       f'L{cx - 6:.1f},{cy + 4:.1f} Z" fill="{colour}" stroke="#fff"><title>{tip}</title></path>')
        else:
            out.append(f'<circle class="marker resolved" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{RESOLVED_COLOUR}" '
                       f'stroke="#fff"><title>{tip}</title></circle>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#778"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#778"/></svg>')
    return "".join(out)


def episodes_svg(spans: Sequence[Mapping[str, Any]], start_ms: float, end_ms: float, width: int = 1140) -> str:
    """The episodes as bars on one time axis, one row per (column, detector)."""
    rows: list[tuple] = []
    for span in spans:
        row = (span["signal"], span["name"], span["detector"])
        if row not in rows:
            rows.append(row)
    left, top, row_h = 260, 10, 22
    height = top + row_h * max(len(rows), 1) + 28
    plot_w = width - left - 12
    span_ms = max(end_ms - start_ms, 1.0)

    def x(t: float) -> float:
        return left + plot_w * (min(max(t, start_ms), end_ms) - start_ms) / span_ms

    out = [f'<svg class="episodes" width="100%" {FONT} viewBox="0 0 {width} {height}" role="img" '
           'aria-label="episodes">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{row_h - 4}" fill="#f4f6f9"/>'
                   f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(row[1])} · {_e(row[2])}</text>')
    for span in spans:
        i = rows.index((span["signal"], span["name"], span["detector"]))
        start = span["start"] if span["start"] is not None else start_ms
        end = span["end"] if span["end"] is not None else end_ms
        colour = CRITICAL_COLOUR if span["severity"] == "critical" else WARNING_COLOUR
        x0, x1 = x(start), x(end)
        state = "resolved" if span["end"] is not None else "still firing"
        out.append(f'<rect class="episode" x="{x0:.1f}" y="{top + i * row_h + 2}" width="{max(x1 - x0, 3):.1f}" '
                   f'height="{row_h - 8}" rx="3" fill="{colour}"><title>{_e(span["severity"])} from '
                   f'{_time(start)}, {state}</title></rect>')
    axis = top + row_h * max(len(rows), 1) + 14
    for k in range(5):
        t = start_ms + span_ms * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        out.append(f'<text x="{x(t):.1f}" y="{axis}" text-anchor="{anchor}">{_short_time(t)}</text>')
    out.append("</svg>")
    return "".join(out)


# --- the page ---------------------------------------------------------------------------------


def render(model_id: str, points: Iterable[Mapping[str, Any]], start_ms: int, end_ms: int,
           reference: Mapping[str, Any] | None = None, generated_ms: int | None = None) -> str:
    """The report of ``model_id`` over ``start_ms``…``end_ms`` (wall time) from its history ``points``
    (deduplicated, oldest first). ``reference``: what to say about the model's reference, if known."""
    points, clock = on_one_clock(points)
    if points:  # the axis spans what is there (within the range asked for), not the empty part of the range
        first, last = points[0]["t"], max(p["t"] for p in points)
        if clock == "wall_ms":
            first, last = max(first, start_ms), max(last, end_ms)
        pad = max((last - first) * 0.03, 500)
        axis_start, axis_end = first - pad, last + pad
    else:
        axis_start, axis_end = start_ms, end_ms
    windows = [p for p in points if p.get("kind") == "window" and p.get("statistic") is not None]
    alerts = [p for p in points if p.get("kind") == "alert"]
    spans = find_episodes(points, clock="t")
    firing_now = [s for s in spans if s["end"] is None]
    by_column: dict[tuple[str, str], list] = {}
    for p in windows + alerts:
        by_column.setdefault((p["signal"], p["name"]), []).append(p)
    body = [f'<header><h1>Model report: {_e(model_id)}</h1><p>{_e(_time(start_ms))} → {_e(_time(end_ms))}'
            + (f' · generated {_e(_time(generated_ms))}' if generated_ms is not None else "")
            + (f' · reference {_e(reference.get("source", ""))} version {_e(reference.get("version", ""))}, '
               f'{_e(reference.get("events", ""))} events' if reference else "")
            + "</p></header><main>"]
    status = (f'<b class="firing">{len(firing_now)}</b>' if firing_now else '<b class="ok">0</b>')
    body.append('<div class="cards">'
                f'<div class="card">{status}<span>episodes firing now</span></div>'
                f'<div class="card"><b>{len(spans)}</b><span>episodes in range</span></div>'
                f'<div class="card"><b>{len(alerts)}</b><span>alerts</span></div>'
                f'<div class="card"><b>{len(windows)}</b><span>windows closed</span></div>'
                f'<div class="card"><b>{len(by_column)}</b><span>columns and signals</span></div></div>')
    if spans:
        body.append('<section id="episodes"><h2>Episodes</h2>' + episodes_svg(spans, axis_start, axis_end)
                    + _episode_table(spans, axis_end) + "</section>")
    else:
        body.append('<section id="episodes"><h2>Episodes</h2><p class="ok">No alert in this range.</p></section>')
    for signal, heading in SECTIONS:
        columns = sorted((name for s, name in by_column if s == signal),  # the ones with alerts first
                         key=lambda n: (not any(p["kind"] == "alert" for p in by_column[(signal, n)]), n))
        if not columns:
            continue
        body.append(f'<section class="signal" id="{_e(signal)}"><h2>{_e(heading)}</h2>')
        for name in columns:
            body.append(_column(signal, name, by_column[(signal, name)], axis_start, axis_end))
        body.append("</section>")
    others = sorted({s for s, _ in by_column} - {s for s, _ in SECTIONS})
    for signal in others:
        body.append(f'<section class="signal"><h2>{_e(signal)}</h2>')
        for name in sorted(n for s, n in by_column if s == signal):
            body.append(_column(signal, name, by_column[(signal, name)], axis_start, axis_end))
        body.append("</section>")
    axis = "the events' own time (UTC)" if clock == "event_time_ms" else "the time each point was written (UTC)"
    body.append(f'<p class="muted">Time axes: {axis}. Each chart: a closed window\'s statistic over time (one '
                'line per input partition), the dashed warning and critical lines, ▲ a firing alert, ● a '
                'resolution. Bars: each bin\'s share of the reference and of the most recent window (and of the '
                'worst window, when the column drifted).</p></main>')
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{_e(model_id)} — stream-monitor report</title><style>{CSS}</style></head><body>'
            + "".join(body) + "</body></html>")


def on_one_clock(points: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The points sorted on one time axis, each with its time as ``t``: the events' own time when every point
    has one (the windows' ends and the alerts' events, meaningful for a replayed or lagging stream), else
    the time the service wrote them."""
    points = [dict(p) for p in points]
    clock = "event_time_ms" if points and all(p.get("event_time_ms") is not None for p in points) else "wall_ms"
    for p in points:
        p["t"] = p.get(clock) or p.get("wall_ms") or 0
    points.sort(key=lambda p: p["t"])
    return points, clock


def _episode_table(spans: Sequence[Mapping[str, Any]], end_ms: int) -> str:
    rows = []
    for s in sorted(spans, key=lambda s: -(s["start"] or 0)):
        end = s["end"] if s["end"] is not None else end_ms
        state = ('<span class="firing">firing</span>' if s["end"] is None else '<span class="ok">resolved</span>')
        rows.append(f'<tr><td>{_e(s["signal"])}</td><td>{_e(s["name"])}</td><td>{_e(s["detector"])}</td>'
                    f'<td class="{"firing" if s["severity"] == "critical" else "warn"}">{_e(s["severity"])}</td>'
                    f'<td>{state}</td><td>{_e(_time(s["start"]))}</td>'
                    f'<td>{_e(_duration((end - (s["start"] or end)) / 1000))}</td>'
                    f'<td>{_e(s.get("partition") if s.get("partition") is not None else "model")}</td></tr>')
    return ('<table><tr><th>signal</th><th>name</th><th>detector</th><th>severity</th><th>state</th>'
            '<th>since</th><th>lasted</th><th>partition</th></tr>' + "".join(rows) + "</table>")


def _column(signal: str, name: str, points: list, start_ms: int, end_ms: int) -> str:
    windows = [p for p in points if p["kind"] == "window"]
    alerts = [p for p in points if p["kind"] == "alert"]
    charts = []
    with_shares = [p for p in windows if p.get("current") and p.get("reference")]
    latest_psi = with_shares[-1] if with_shares else None
    if latest_psi is not None:
        bins = latest_psi.get("bins") or [f"bin {i}" for i in range(len(latest_psi["current"]))]
        charts.append(distribution_svg(bins, latest_psi["reference"], latest_psi["current"],
                                       f"{name}: reference vs window ending {_short_time(latest_psi['t'])}"))
        worst = max(with_shares, key=lambda p: p["statistic"])
        if worst is not latest_psi and worst["statistic"] >= (worst.get("warning") or float("inf")):
            bins = worst.get("bins") or [f"bin {i}" for i in range(len(worst["current"]))]  # the drift at its worst
            charts.append(distribution_svg(bins, worst["reference"], worst["current"],
                                           f"{name}: the worst window (PSI {worst['statistic']:.3g}), ending "
                                           f"{_short_time(worst['t'])}", current_label="that window"))
    detectors = list(dict.fromkeys(p["detector"] for p in windows))
    alerted = {a["detector"] for a in alerts}
    flat = [d for d in detectors if d not in alerted and signal == "data_quality"
            and all(p["statistic"] == 0 for p in windows if p["detector"] == d)]  # a check that never saw a case
    detectors = [d for d in detectors if d not in flat]
    unplaced = [a for a in alerts if a["detector"] not in detectors]
    for i, detector in enumerate(detectors):
        mine = [p for p in windows if p["detector"] == detector]
        series: dict[Any, list] = {}
        for p in mine:
            line = "model" if p.get("partition") is None else f"partition {p['partition']}"
            series.setdefault(line, []).append((p["t"], p["statistic"]))
        markers = [a for a in alerts if a["detector"] == detector]
        if i == 0:  # the point detectors' alerts (ADWIN, Page-Hinkley) go on the column's first chart, at the top
            markers += [{**a, "on_line": False} for a in unplaced]
        last = mine[-1]
        charts.append(series_svg(series, start_ms, end_ms, last.get("warning"), last.get("critical"), markers,
                                 f"{name} · {detector} (last {_number(last['statistic'])})"))
    if not detectors and alerts:  # only point detectors spoke: their alerts on an empty time axis
        charts.append(series_svg({}, start_ms, end_ms, None, None, [{**a, "on_line": False} for a in alerts],
                                 f"{name} · alerts"))
    tables = _group_tables(windows) if signal == "fairness" else ""
    firing = {a["detector"] for a in alerts if a["status"] == "firing"}
    note = f' <span class="firing">alerts from {_e(", ".join(sorted(firing)))}</span>' if firing else ""
    if flat:
        note += f' <span class="muted">(at 0 throughout: {_e(", ".join(flat))})</span>'
    return (f'<h3 class="column">{_e(name)}{note}</h3><div class="charts">'
            + "".join(f'<div class="chart">{c}</div>' for c in charts) + "</div>" + tables)


GROUP_RATES = (("rate", "events", "favourable-outcome rate"), ("tpr", "positives", "true-positive rate"),
               ("fpr", "negatives", "false-positive rate"))


def _group_tables(windows: list) -> str:
    """A fairness attribute's groups in each metric's latest window: their counts and rates."""
    out = []
    for detector in dict.fromkeys(p["detector"] for p in windows):
        latest = [p for p in windows if p["detector"] == detector and p.get("groups")]
        if not latest:
            continue
        point = latest[-1]
        shown = [(key, count, words) for key, count, words in GROUP_RATES
                 if any(g.get(key) is not None for g in point["groups"].values())]
        head = "".join(f"<th>{_e(count)}</th><th>{_e(words)}</th>" for _, count, words in shown)
        rows = "".join(f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{_e(g.get(count, 0))}</td><td>{_number(g.get(key))}</td>"
                                                           for key, count, _ in shown) + "</tr>"
                       for name, g in point["groups"].items())
        out.append(f'<p class="muted">{_e(detector)}: the groups in the window ending {_short_time(point["t"])} '
                   f'(gap {_number(point["statistic"])})</p><table><tr><th>group</th>{head}</tr>{rows}</table>')
    return "".join(out)
