"""The HTTP side on ``service.metrics_port``: ``/metrics`` (Prometheus), ``/`` (status page),
``/api/status`` (the page's data as JSON), ``/healthz`` (liveness) and ``/readyz`` (readiness).

Health is judged from what the service already knows (:class:`Health`: when the loop last came
round, the group join, the last Redis failure, the broker callbacks); a health request does no
I/O of its own, so it answers at once even while the loop is stuck.

The page is rendered on the server as plain HTML with inline SVG charts: no
script, no external asset, readable at a glance; it reloads every 5 seconds.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .board import StatusBoard
from .logs import clean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthFacts:
    """What the service knows at one moment (monotonic seconds; ``None``: never / not now)."""

    now: float
    started: float
    last_loop: float | None = None  # when the loop last came round
    joined: bool = False  # the consumer has completed a group join at least once
    joining_since: float | None = None  # subscribed or revoked and not assigned since
    assigned_partitions: int = 0
    redis_failed_at: float | None = None  # the last failed (and retried) Redis operation
    broker_down_since: float | None = None
    stopping: bool = False


def assess(facts: HealthFacts, max_loop_age: float, max_unassigned: float) -> tuple[bool, bool, dict[str, Any]]:
    """(live, ready, report). Not live: the loop has not come round for ``max_loop_age`` seconds
    (stuck, e.g. inside a Redis call that does not return), or a group join has lasted
    ``max_unassigned`` seconds. Not ready: not joined yet, (re)joining, paused by Redis (a
    failure since the loop last came round) or by the broker (unreachable), stopping, or not live."""
    now = facts.now
    loop_age = now - (facts.last_loop if facts.last_loop is not None else facts.started)
    joining = None if facts.joining_since is None else now - facts.joining_since
    redis_paused = facts.redis_failed_at is not None and (facts.last_loop is None
                                                          or facts.redis_failed_at >= facts.last_loop)
    broker_down = None if facts.broker_down_since is None else now - facts.broker_down_since
    problems = []
    if loop_age > max_loop_age:
        where = " (waiting for Redis)" if redis_paused else " (waiting for the broker)" if broker_down else ""
        problems.append(f"the loop has not come round for {loop_age:.0f} s{where} (limit {max_loop_age:g} s)")
    if joining is not None and joining > max_unassigned:
        problems.append(f"no partition assignment for {joining:.0f} s: the group join has not completed "
                        f"(limit {max_unassigned:g} s)")
    live = not problems
    waiting = []
    if not facts.joined or joining is not None:
        waiting.append("joining the consumer group")
    if redis_paused:
        waiting.append("paused: Redis is failing")
    if broker_down is not None:
        waiting.append(f"paused: the broker has been unreachable for {broker_down:.0f} s")
    if facts.stopping:
        waiting.append("stopping")
    ready = live and not waiting
    report = {"status": "ok" if live else "stuck", "ready": ready, "problems": problems + waiting,
              "loop_age_seconds": round(loop_age, 3), "assigned_partitions": facts.assigned_partitions,
              "joined": facts.joined, "joining_seconds": None if joining is None else round(joining, 3),
              "redis": "failing" if redis_paused else "ok",
              "broker": "ok" if broker_down is None else "unreachable",
              "broker_unreachable_seconds": None if broker_down is None else round(broker_down, 3),
              "references_loaded": True}
    return live, ready, report


class Health:
    """The service's side of the health report: it calls :meth:`tick` every loop iteration and
    :meth:`joining` / :meth:`assigned` from the rebalance callbacks; the HTTP thread calls
    :meth:`check`. Plain attribute writes and reads: no lock, nothing the loop could wait on."""

    def __init__(self, max_loop_age: float, max_unassigned: float,
                 redis_failed_at: Callable[[], float | None] = lambda: None,
                 broker_down_since: Callable[[], float | None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.max_loop_age = max_loop_age
        self.max_unassigned = max_unassigned
        self.started = time.monotonic()
        self.last_loop: float | None = None
        self.joined = False
        self.joining_since: float | None = None
        self.assigned_partitions = 0
        self._redis_failed_at = redis_failed_at
        self._broker_down_since = broker_down_since
        self._stopping = stopping

    def tick(self) -> None:
        self.last_loop = time.monotonic()

    def joining(self) -> None:
        if self.joining_since is None:
            self.joining_since = time.monotonic()

    def assigned(self, partitions: int) -> None:
        self.assigned_partitions = partitions
        self.joined = True
        self.joining_since = None

    def facts(self) -> HealthFacts:
        return HealthFacts(now=time.monotonic(), started=self.started, last_loop=self.last_loop, joined=self.joined,
                           joining_since=self.joining_since, assigned_partitions=self.assigned_partitions,
                           redis_failed_at=self._redis_failed_at(), broker_down_since=self._broker_down_since(),
                           stopping=self._stopping())

    def check(self) -> tuple[bool, bool, dict[str, Any]]:
        return assess(self.facts(), self.max_loop_age, self.max_unassigned)


def serve(port: int, board: StatusBoard, registry, host: str = "0.0.0.0",
          health: Health | None = None) -> ThreadingHTTPServer | None:
    """Start the HTTP server in a daemon thread (``port`` 0 = off)."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/api/status":
                self._send(200, "application/json", orjson.dumps(board.snapshot()))
            elif path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", render_page(board.snapshot()).encode())
            elif path in ("/healthz", "/readyz"):
                if health is None:
                    self._send(200, "text/plain", b"ok\n")
                    return
                live, ready, report = health.check()
                good = live if path == "/healthz" else ready
                self._send(200 if good else 503, "application/json", orjson.dumps(report) + b"\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: no access log on stderr
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics and status page on http://%s:%d/", host, port)
    return server


# --- the page ---------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{color:#aab}
main{padding:16px 24px;display:grid;gap:16px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 4px;color:#556}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #eef}
th{font-weight:600;color:#556;font-size:12px;text-transform:uppercase}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.warning{color:#9a6700;font-weight:600}.critical{color:#cf222e;font-weight:700}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px}
.badge.ok{background:#dafbe1}.badge.warning{background:#fff8c5}.badge.critical{background:#ffebe9}
.muted{color:#889}.firing{background:#fff5f5}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(clean(str(value)))  # credentials redacted, control characters shown as escapes


def sparkline(history: list, warning: float | None, critical: float | None, width: int = 220, height: int = 36) -> str:
    """An inline SVG line of the recent statistic with its warning (amber) and critical (red) lines."""
    values = [v for _, v in history]
    if not values:
        return f'<svg width="{width}" height="{height}"></svg>'
    top = max(values + [v for v in (warning, critical) if v is not None and v < 10 * max(max(values), 1e-12)])
    bottom = min(values + [0.0])
    span = (top - bottom) or 1.0

    def y(v: float) -> float:
        return round(height - 2 - (v - bottom) / span * (height - 4), 1)

    step = (width - 4) / max(len(values) - 1, 1)
    points = " ".join(f"{round(2 + i * step, 1)},{y(v)}" for i, v in enumerate(values))
    lines = ""
    for level, colour in ((warning, "#d4a72c"), (critical, "#cf222e")):
        if level is not None and bottom <= level <= top:
            lines += (f'<line x1="0" x2="{width}" y1="{y(level)}" y2="{y(level)}" stroke="{colour}" '
                      f'stroke-dasharray="4 3" stroke-width="1"/>')
    return (f'<svg width="{width}" height="{height}" role="img"><rect width="{width}" height="{height}" '
            f'fill="#fafbfc"/>{lines}<polyline fill="none" stroke="#0969da" stroke-width="1.5" '
            f'points="{points}"/></svg>')


def _dead_letter_note(snapshot: Mapping[str, Any]) -> str:
    letters = snapshot.get("dead_letters") or {}
    if not letters:
        return ""
    total = sum(entry["count"] for entry in letters.values())
    top = ", ".join(f"{_fmt(reason)} {entry['count']:,}" for reason, entry in list(letters.items())[:3])
    return f" · {total:,} dead letters ({top}; see below)"


def render_page(snapshot: Mapping[str, Any]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=5>"
             f"<title>stream_monitor</title><style>{_CSS}</style></head><body>"]
    uptime = time.time() - snapshot.get("started_at", time.time())
    parts.append(f"<header><h1>stream_monitor</h1><span>{_fmt(snapshot.get('instance') or '')}</span>"
                 f"<span>{len(snapshot.get('partitions', []))} partitions · up {uptime / 60:.0f} min"
                 f"{_dead_letter_note(snapshot)}</span></header><main>")

    firing = [(m, row) for m, entry in snapshot.get("models", {}).items() for row in entry["detectors"] if row.get("firing")]
    parts.append("<section><h2>Firing now</h2>")
    if firing:
        parts.append("<table><tr><th>model</th><th>signal</th><th>name</th><th>detector</th><th>severity</th>"
                     "<th class=num>statistic</th><th class=num>warning</th><th class=num>critical</th></tr>")
        for model_id, row in firing:
            severity = row.get("severity") or "warning"
            parts.append(f"<tr class=firing><td>{_fmt(model_id)}</td><td>{_fmt(row['signal'])}</td>"
                         f"<td>{_fmt(row['name'])}</td><td>{_fmt(row['detector'])}</td>"
                         f"<td><span class='badge {severity}'>{severity}</span></td>"
                         f"<td class=num>{_fmt(row.get('statistic'))}</td><td class=num>{_fmt(row.get('threshold'))}</td>"
                         f"<td class=num>{_fmt(row.get('critical'))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class=ok>Nothing is firing.</p>")
    parts.append("</section>")

    for model_id, entry in sorted(snapshot.get("models", {}).items()):
        parts.append(f"<section><h2>{_fmt(model_id)} <span class=muted>· {entry['events']:,} events · "
                     f"{entry['labels']:,} labels</span></h2>")
        if entry.get("unmonitored"):
            parts.append(f"<p><span class='badge critical'>NOT MONITORED</span> configured features {_fmt(', '.join(entry['unmonitored']))} "
                         "have no profile in the reference (see the error log)</p>")
        performance = entry.get("performance")
        if performance and performance.get("pairs"):
            cells = " · ".join(f"<b>{_fmt(k)}</b> {_fmt(v)}" for k, v in performance.items() if k != "pairs")
            parts.append(f"<p>Performance over the last labelled predictions ({performance['pairs']:,} pairs "
                         f"joined): {cells}</p>")
        lag = entry.get("label_lag")
        if lag:
            parts.append(f"<p class=muted>{lag['awaiting']:,} predictions awaiting a label · {lag['expired']:,} never "
                         f"labelled · {lag['dropped']:,} dropped over the cap</p>")
        by_signal: dict[str, list] = {}
        for row in entry["detectors"]:
            by_signal.setdefault(row["signal"], []).append(row)
        quiet_checks = 0
        if "data_quality" in by_signal:  # zero-rate checks folded into one line
            rows = by_signal.pop("data_quality")
            shown = [r for r in rows if r.get("firing") or r.get("statistic")]
            quiet_checks = len(rows) - len(shown)
            if shown:
                by_signal["data_quality"] = shown
        for signal, rows in by_signal.items():
            parts.append(f"<h3>{_fmt(signal)}</h3><table><tr><th>name</th><th>detector</th><th>recent</th>"
                         "<th class=num>statistic</th><th class=num>warning</th><th class=num>critical</th><th>state</th></tr>")
            for row in rows:
                state = (row.get("severity") or "warning") if row.get("firing") else "ok"
                parts.append(f"<tr><td>{_fmt(row['name'])}</td><td>{_fmt(row['detector'])}</td>"
                             f"<td>{sparkline(row.get('history', []), row.get('threshold'), row.get('critical'))}</td>"
                             f"<td class=num>{_fmt(row.get('statistic'))}</td><td class=num>{_fmt(row.get('threshold'))}</td>"
                             f"<td class=num>{_fmt(row.get('critical'))}</td>"
                             f"<td><span class='badge {state}'>{'FIRING' if state != 'ok' else 'ok'}</span></td></tr>")
            parts.append("</table>")
        if quiet_checks:
            parts.append(f"<p class=muted>{quiet_checks} data-quality checks at 0 (missing values, type mismatches, "
                         f"unseen categories …)</p>")
        parts.append("</section>")

    parts.append("<section><h2>Recent alerts</h2><table><tr><th>detected</th><th>status</th><th>severity</th>"
                 "<th>model</th><th>message</th></tr>")
    for alert in snapshot.get("alerts", [])[:30]:
        parts.append(f"<tr><td>{_fmt(alert.get('detected_at'))}</td><td>{_fmt(alert.get('status'))}</td>"
                     f"<td class={_fmt(alert.get('severity'))}>{_fmt(alert.get('severity'))}</td>"
                     f"<td>{_fmt(alert.get('model_id'))}</td><td>{_fmt(alert.get('message'))}</td></tr>")
    parts.append("</table></section>")

    letters = snapshot.get("dead_letters") or {}
    if letters:
        total = sum(entry["count"] for entry in letters.values())
        parts.append(f"<section><h2>Dead letters <span class=muted>· {total:,} messages</span></h2><table><tr>"
                     "<th>reason</th><th class=num>count</th><th>example</th></tr>")
        for reason, entry in letters.items():
            parts.append(f"<tr><td>{_fmt(reason)}</td><td class=num>{entry['count']:,}</td>"
                         f"<td class=muted>{_fmt(entry.get('sample'))}</td></tr>")
        parts.append("</table></section>")

    parts.append("<section><h2>Partitions</h2><table><tr><th>partition</th><th class=num>next offset</th>"
                 "<th class=num>lag</th><th class=num>dead letters</th></tr>")
    for part in snapshot.get("partitions", []):
        parts.append(f"<tr><td>{_fmt(part['topic'])}[{part['partition']}]</td><td class=num>{_fmt(part.get('next_offset'))}</td>"
                     f"<td class=num>{_fmt(part.get('lag'))}</td><td class=num>{_fmt(part.get('dead_letters'))}</td></tr>")
    parts.append("</table></section></main></body></html>")
    return "".join(parts)
