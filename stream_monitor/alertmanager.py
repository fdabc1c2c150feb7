"""Alerts to Prometheus Alertmanager (its v2 API), without ever holding up the loop.

- :func:`payload` (pure): one alert record as published to Kafka (schemas/alert.json) → one
  Alertmanager alert: ``labels`` (``alertname``, ``model_id``, ``signal``, ``name``, ``detector``,
  ``severity``, ``segment`` where set), ``annotations`` (summary, description, status page link, alert
  id, incident), ``startsAt``, ``endsAt``, ``generatorURL``.
- :class:`Forwarder`: :meth:`Forwarder.offer` (called by the publisher once the broker acknowledged an
  alert) puts the record on a bounded queue and returns; past ``max_queue`` the oldest waiting alert is
  dropped and counted. A thread of its own runs :meth:`Forwarder.step`: it posts batches, backs off
  exponentially with jitter while Alertmanager is unreachable (logged once when it starts, once when it
  ends), re-posts every firing alert each ``resend_seconds`` with ``endsAt`` 4 × that ahead (so
  Alertmanager does not resolve it by itself while the service runs) and posts a resolved alert once,
  with ``endsAt`` = when it was resolved. Its clock and its sender are injected: the logic is tested
  without a network.

An episode is known to Alertmanager by its labels, so the partitions of one model that fire the same
episode are one Alertmanager alert: it is resolved once the last of them resolves. When a partition
moves to another instance, the old owner stops re-posting its episodes (:meth:`Forwarder.release`) and
the new one takes over those still firing in the state it loaded (:meth:`Forwarder.adopt`, records
from :func:`firing_in`), so Alertmanager neither keeps a resolved episode alive nor lets a firing one
lapse.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson

from .config import AlertmanagerConfig, redact_url, remember_secrets
from .errors import AlertmanagerError, ConfigError
from .events import format_time, segment_words

log = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"
RESEND_FACTOR = 4  # a firing alert's endsAt is this many resend intervals ahead
FIRST_BACKOFF_SECONDS = 0.5
REFUSED_LOG_SECONDS = 60.0  # a refused post is logged at most this often
SEEN_IDS = 10_000  # alert ids remembered to ignore a repeated delivery (a replaced producer resends)
ALERTNAMES = {
    "feature": "FeatureDrift", "prediction": "PredictionDrift", "label": "LabelDrift",
    "performance": "PerformanceDegraded", "estimated_performance": "EstimatedPerformanceDegraded",
    "multivariate": "MultivariateDrift", "fairness": "FairnessGap", "data_quality": "DataQuality",
    "latency": "LatencyChange",
}

Sender = Callable[[list[dict[str, Any]]], None]


# --- the payload (pure) ---------------------------------------------------------------------------------


def alertname(signal: str) -> str:
    """``FeatureDrift`` for ``feature`` …; a signal without a name of its own: its words in CamelCase."""
    return ALERTNAMES.get(signal) or "".join(part.capitalize() for part in signal.split("_")) or "StreamMonitor"


def segment_label(segment: Any) -> str:
    """A segment object as one label value: ``country=DE,device=ios`` (keys sorted)."""
    if isinstance(segment, Mapping):
        return segment_words(segment)
    return "" if segment is None else str(segment)


def labels_of(record: Mapping[str, Any]) -> dict[str, str]:
    labels = {"alertname": alertname(str(record.get("signal", ""))), "model_id": str(record.get("model_id", "")),
              "signal": str(record.get("signal", "")), "name": str(record.get("name", "")),
              "detector": str(record.get("detector", "")), "severity": str(record.get("severity", ""))}
    segment = segment_label(record.get("segment"))
    if segment:
        labels["segment"] = segment
    return {key: value for key, value in labels.items() if value}  # Alertmanager drops empty labels anyway


def episode_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """What one episode is, whatever its severity: (model, signal, name, detector, segment)."""
    return (str(record.get("model_id", "")), str(record.get("signal", "")), str(record.get("name", "")),
            str(record.get("detector", "")), segment_label(record.get("segment")))


def annotations_of(record: Mapping[str, Any], status_page_url: str = "") -> dict[str, str]:
    model, signal, name = record.get("model_id", ""), record.get("signal", ""), record.get("name", "")
    notes = {"summary": f"{model} {signal} {name}: {record.get('detector', '')} {record.get('status', '')} "
                        f"({record.get('severity', '')})",
             "description": str(record.get("message", "")),
             "alert_id": str(record.get("alert_id", ""))}
    for key in ("statistic", "threshold"):
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool):
            notes[key] = f"{record[key]:g}"
    if record.get("incident"):
        notes["incident"] = str(record["incident"])
    if status_page_url:
        notes["status_page"] = status_page_url
    return notes


def payload(record: Mapping[str, Any], starts_at_ms: int, ends_at_ms: int, status_page_url: str = "",
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One Alertmanager v2 alert of ``record`` (``labels``: those it was first posted with, so that a
    resolve matches its firing alert even if the severity changed). ``startsAt`` is never after
    ``endsAt`` (Alertmanager refuses such an alert)."""
    alert: dict[str, Any] = {"labels": dict(labels) if labels is not None else labels_of(record),
                             "annotations": annotations_of(record, status_page_url),
                             "startsAt": format_time(min(starts_at_ms, ends_at_ms)),
                             "endsAt": format_time(ends_at_ms)}
    if status_page_url:
        alert["generatorURL"] = status_page_url
    return alert


def parse_time_ms(text: Any, default: int) -> int:
    """``2026-11-27T20:44:50.123Z`` → Unix milliseconds (``default`` if it is not such a time)."""
    from datetime import datetime  # noqa: PLC0415

    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return default


def firing_in(summary: Mapping[str, Any], partition: int, skip_models: frozenset[str] = frozenset()) -> list[dict]:
    """The episodes a partition's loaded state says are firing (its summary's detector rows), as alert
    records to :meth:`Forwarder.adopt` (``skip_models``: models whose decisions are model-level: their
    merger announces them)."""
    out = []
    for model_id, model in sorted((summary.get("models") or {}).items()):
        if model_id in skip_models:
            continue
        for row in model.get("detectors") or ():
            if row.get("firing"):
                out.append({"alert_id": row.get("last_alert_id") or "", "status": "firing",
                            "severity": row.get("severity") or "warning", "model_id": model_id,
                            "signal": row.get("signal"), "name": row.get("name"), "detector": row.get("detector"),
                            "statistic": row.get("statistic"), "threshold": row.get("threshold"),
                            "partition": partition,
                            "message": f"{row.get('detector')} on {model_id}.{row.get('name')} is firing (announced "
                                       f"before this instance took partition {partition} over)"})
    return out


# --- the forwarder ---------------------------------------------------------------------------------------


@dataclass
class _Firing:
    """An episode Alertmanager is told is firing: posted again every resend interval."""

    labels: dict[str, str]
    record: Mapping[str, Any]
    starts_at_ms: int
    sources: set = field(default_factory=set)  # the partitions (None: a model-level decision) firing it
    next_post: float = 0.0


@dataclass
class _Resolved:
    """A resolve to post once."""

    labels: dict[str, str]
    record: Mapping[str, Any]
    starts_at_ms: int
    ends_at_ms: int


class Forwarder:
    """Bounded queue in, batches out (see the module's doc). ``clock``: Unix seconds; ``send`` posts one
    batch or raises :class:`AlertmanagerError`; ``jitter``: a number in [0, 1)."""

    def __init__(self, settings: AlertmanagerConfig, send: Sender, *, metrics: Any = None,
                 clock: Callable[[], float] = time.time, jitter: Callable[[], float] = random.random):
        self.settings = settings
        self.send = send
        self.metrics = metrics
        self.clock = clock
        self.jitter = jitter
        self.where = redact_url(settings.url)
        self._incoming: deque[Mapping[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._firing: dict[tuple[str, ...], _Firing] = {}
        self._resolved: deque[_Resolved] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._failures = 0
        self._retry_at = 0.0
        self.down_since: float | None = None
        self._refused_logged = -REFUSED_LOG_SECONDS

    # --- the loop's side: never blocks ---------------------------------------------------------------

    def offer(self, record: Mapping[str, Any]) -> None:
        """An alert the broker acknowledged; queued for the thread (the oldest waiting one dropped past
        ``max_queue``)."""
        with self._lock:
            if len(self._incoming) + len(self._resolved) >= self.settings.max_queue:
                self._drop_oldest()
            self._incoming.append(record)
        self._wake.set()

    def adopt(self, records: list[Mapping[str, Any]]) -> None:
        """Episodes still firing in the state of a partition this instance took over (:func:`firing_in`):
        posted and re-posted as if this instance had announced them."""
        for record in records:
            self.offer({**record, "_adopted": True})

    def release(self, partitions: list[int]) -> None:
        """Partitions this instance no longer owns: their episodes are no longer re-posted from here (the
        new owner adopts those still firing)."""
        self.offer({"_release": list(partitions)})

    def queued(self) -> int:
        return len(self._incoming) + len(self._resolved) + sum(1 for f in list(self._firing.values()) if not f.next_post)

    def _drop_oldest(self) -> None:
        """Under the lock: the oldest resolve waiting to be posted, else the oldest alert not yet taken."""
        if self._resolved:
            self._resolved.popleft()
        else:
            self._incoming.popleft()
        self._count("alertmanager_dropped")

    # --- the thread's side ---------------------------------------------------------------------------

    def step(self) -> float:
        """Take what was offered, post one batch if one is due and Alertmanager is not being waited for;
        returns the seconds until there is something to do again."""
        now = self.clock()
        self._take(now)
        if now < self._retry_at:
            return self._retry_at - now
        batch = self._due(now)
        if not batch:
            return self._idle(now)
        alerts = [self._payload(item, now) for item in batch]
        try:
            self.send(alerts)
        except AlertmanagerError as exc:
            if exc.transient:
                self._unreachable(now, len(batch), str(exc))
                return max(0.0, self._retry_at - now)
            if len(batch) == 1:
                self._refused(now, batch, str(exc))
                return 0.0
            return self._one_by_one(now, batch, alerts)
        self._posted(now, batch)
        return 0.0 if self._due(now, peek=True) else self._idle(now)

    def _one_by_one(self, now: float, batch: list[_Firing | _Resolved], alerts: list[dict[str, Any]]) -> float:
        """A refused batch, posted again alert by alert: Alertmanager refuses a whole batch for one alert
        it cannot take, and the others must not be lost with it. An outage met on the way leaves the
        rest waiting, as any outage does."""
        refused: list[_Firing | _Resolved] = []
        reason = ""
        for item, alert in zip(batch, alerts):
            try:
                self.send([alert])
            except AlertmanagerError as exc:
                if exc.transient:
                    if refused:
                        self._refused(now, refused, reason)
                    self._unreachable(now, 1, str(exc))
                    return max(0.0, self._retry_at - now)
                refused.append(item)
                reason = str(exc)
                continue
            self._posted(now, [item])
        if refused:
            self._refused(now, refused, reason)
        return 0.0

    def _take(self, now: float) -> None:
        with self._lock:
            records, self._incoming = list(self._incoming), deque()
        now_ms = int(now * 1000)
        for record in records:
            if "_release" in record:
                self._release(record["_release"])
                continue
            alert_id = str(record.get("alert_id", ""))
            if not record.get("_adopted"):
                if alert_id in self._seen:
                    continue  # delivered twice (a replaced producer resends what was not acknowledged)
                self._seen[alert_id] = None
                if len(self._seen) > SEEN_IDS:
                    self._seen.popitem(last=False)
            key = episode_key(record)
            held = self._firing.get(key)
            if record.get("status") == "firing":
                if held is None:
                    started = parse_time_ms(record.get("detected_at"), now_ms)
                    self._firing[key] = _Firing(labels_of(record), record, min(started, now_ms),
                                                {record.get("partition")})
                else:
                    held.sources.add(record.get("partition"))
                continue
            if held is not None:
                held.sources.discard(record.get("partition"))
                if held.sources:
                    continue  # another partition still fires this episode
                del self._firing[key]
                resolved = _Resolved(held.labels, record, held.starts_at_ms, now_ms)
            else:  # fired before this process started (or its firing was dropped): resolve it anyway
                resolved = _Resolved(labels_of(record), record, now_ms, now_ms)
            with self._lock:
                if len(self._incoming) + len(self._resolved) >= self.settings.max_queue:
                    self._drop_oldest()
                self._resolved.append(resolved)

    def _release(self, partitions: list[int]) -> None:
        for key, held in list(self._firing.items()):
            held.sources.difference_update(partitions)
            if not held.sources:
                del self._firing[key]  # not resolved: its new owner posts it from now on

    def _due(self, now: float, peek: bool = False) -> list[_Firing | _Resolved]:
        size = self.settings.batch_size
        with self._lock:
            due: list[_Firing | _Resolved] = list(self._resolved)[:size]
        if len(due) < size:
            firing = sorted((f for f in self._firing.values() if f.next_post <= now), key=lambda f: f.next_post)
            due += firing[:size - len(due)]
        return due[:1] if peek else due

    def _idle(self, now: float) -> float:
        upcoming = [f.next_post for f in self._firing.values()]
        return max(0.0, min(upcoming) - now) if upcoming else self.settings.resend_seconds

    def _payload(self, item: _Firing | _Resolved, now: float) -> dict[str, Any]:
        if isinstance(item, _Resolved):
            return payload(item.record, item.starts_at_ms, item.ends_at_ms, self.settings.status_page_url,
                           item.labels)
        ends = int((now + RESEND_FACTOR * self.settings.resend_seconds) * 1000)
        return payload(item.record, item.starts_at_ms, ends, self.settings.status_page_url, item.labels)

    def _settle(self, now: float, batch: list[_Firing | _Resolved]) -> None:
        """The batch was answered: its resolves are done, its firing alerts due again in one resend interval."""
        done = {id(item) for item in batch if isinstance(item, _Resolved)}
        with self._lock:
            self._resolved = deque(r for r in self._resolved if id(r) not in done)
        for item in batch:
            if isinstance(item, _Firing):
                item.next_post = now + self.settings.resend_seconds

    def _posted(self, now: float, batch: list) -> None:
        self._settle(now, batch)
        self._count("alertmanager_posted", len(batch))
        if self.down_since is not None:
            log.warning("Alertmanager at %s is reachable again after %.0f s; %d alerts posted", self.where,
                        now - self.down_since, len(batch))
        self.down_since = None
        self._failures = 0
        self._retry_at = 0.0

    def _unreachable(self, now: float, count: int, reason: str) -> None:
        self._failures += 1
        backoff = min(self.settings.max_backoff_seconds, FIRST_BACKOFF_SECONDS * 2 ** (self._failures - 1))
        self._retry_at = now + backoff * (0.5 + 0.5 * self.jitter())
        if self.down_since is None:
            self.down_since = now
            log.warning("Alertmanager at %s is unreachable (%s): alerts wait (at most alertmanager.max_queue = "
                        "%d) and are retried with backoff; monitoring goes on (stream_monitor_alertmanager_alerts_"
                        "failed_total counts each failed alert; logged again when it is back)", self.where, reason,
                        self.settings.max_queue)
        self._count("alertmanager_failed", count, "unreachable")  # after the log line: a reader of both sees both

    def _refused(self, now: float, batch: list, reason: str) -> None:
        """An answer 4xx to these alerts, each posted alone: they would be refused again, so they are not
        retried (a firing one is posted again only at its next resend)."""
        self._settle(now, batch)
        self._count("alertmanager_failed", len(batch), "refused")
        if now - self._refused_logged >= REFUSED_LOG_SECONDS:
            self._refused_logged = now
            log.error("Alertmanager at %s refused %d alerts (%s); not retried (logged once a minute)", self.where,
                      len(batch), reason)
        if self.down_since is not None:  # it answers: the outage is over
            log.warning("Alertmanager at %s answers again after %.0f s", self.where, now - self.down_since)
            self.down_since, self._failures, self._retry_at = None, 0, 0.0

    def _count(self, name: str, amount: int = 1, *labels: str) -> None:
        if self.metrics is not None and amount:
            counter = getattr(self.metrics, name)
            (counter.labels(*labels) if labels else counter).inc(amount)

    # --- the thread ----------------------------------------------------------------------------------

    def start(self) -> "Forwarder":
        if self.metrics is not None:
            self.metrics.alertmanager_queued.set_function(self.queued)
        self._thread = threading.Thread(target=self._run, name="alertmanager", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.step()
            except Exception:  # noqa: BLE001 - a bug here must not end the posting for good
                log.exception("posting to Alertmanager failed unexpectedly; trying again in 1 s")
                wait = 1.0
            self._wake.wait(max(0.0, min(wait, self.settings.resend_seconds)))

    def close(self, timeout: float | None = None) -> None:
        """One last try at what waits (if Alertmanager is not being waited for), for up to ``timeout``
        (default ``timeout_seconds``); what is left is counted as dropped."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(self.settings.timeout_seconds if timeout is None else timeout)
        if not self._thread.is_alive() and self.down_since is None:
            try:
                self.step()  # what is due now, in one batch (a failure is counted and logged as any other)
            except Exception:  # noqa: BLE001 - stopping goes on whatever happens here
                log.exception("the last post to Alertmanager failed unexpectedly")
        with self._lock:
            left = len(self._incoming) + len(self._resolved)
        if left:
            self._count("alertmanager_dropped", left)
            log.warning("stopping with %d alerts not posted to Alertmanager at %s", left, self.where)


# --- HTTP ---------------------------------------------------------------------------------------------------


def auth_headers(settings: AlertmanagerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The Authorization header from the variables the table names; a variable named but unset or
    empty is a :class:`ConfigError` naming the key. The values are redacted from every log line."""
    def value(key: str) -> str:
        name = getattr(settings, key)
        found = environ.get(name, "")
        if not found:
            raise ConfigError(f"alertmanager.{key}", f"names the environment variable {name}, which is not set "
                              "(or empty) in the environment of `run`")
        remember_secrets(found)
        return found

    if settings.bearer_token_env:
        return {"Authorization": f"Bearer {value('bearer_token_env')}"}
    if settings.basic_auth_user_env:
        pair = f"{value('basic_auth_user_env')}:{value('basic_auth_password_env')}".encode()
        remember_secrets(base64.b64encode(pair).decode())
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


class HttpSender:
    """POSTs a batch to ``URL/api/v2/alerts``; raises :class:`AlertmanagerError` (transient: no answer,
    5xx, 429; else refused)."""

    def __init__(self, url: str, timeout: float, headers: Mapping[str, str] | None = None):
        self.url = url.rstrip("/") + API_PATH
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def __call__(self, alerts: list[dict[str, Any]]) -> None:
        try:
            body = orjson.dumps(alerts)
        except orjson.JSONEncodeError as exc:  # cannot happen for what Kafka took, but never wedge on it
            raise AlertmanagerError(f"the alerts cannot be encoded as JSON: {exc}", transient=False) from None
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - configured URL
                answer.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode("utf-8", "replace").strip()
            raise AlertmanagerError(f"HTTP {exc.code}: {body}", transient=exc.code >= 500 or exc.code == 429) \
                from None
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, reset, bad answer
            reason = getattr(exc, "reason", exc)
            raise AlertmanagerError(f"{type(exc).__name__}: {reason}", transient=True) from None


def forwarder(settings: AlertmanagerConfig, environ: Mapping[str, str], metrics: Any = None) -> Forwarder:
    """The running forwarder of ``[alertmanager]`` (its thread started)."""
    sender = HttpSender(settings.url, settings.timeout_seconds, auth_headers(settings, environ))
    log.info("posting alerts to Alertmanager at %s", redact_url(settings.url))
    return Forwarder(settings, sender, metrics=metrics).start()
