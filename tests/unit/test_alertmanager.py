"""Alerts to Alertmanager without a network: the payload of one alert, and the forwarder's queue, batches,
backoff and resends under an injected clock and a fake sender."""

from __future__ import annotations

import base64
import logging
import threading

import pytest
from prometheus_client import CollectorRegistry

from stream_monitor.alertmanager import Forwarder, annotations_of, auth_headers, firing_in, labels_of, payload
from stream_monitor.config import AlertmanagerConfig, parse_config, redact
from stream_monitor.errors import AlertmanagerError, ConfigError
from stream_monitor.events import format_time
from stream_monitor.metrics import Metrics

from ..support import Clock

T0 = 1_795_812_290.0  # 2026-11-27T20:44:50Z


def record(status="firing", severity="critical", partition=0, offset=10, name="amount", **extra) -> dict:
    return {"alert_id": f"{name}-{status}-{partition}-{offset}", "status": status, "severity": severity,
            "model_id": "fraud", "signal": "feature", "name": name, "detector": "psi", "statistic": 0.31,
            "threshold": 0.25, "partition": partition, "offset": offset, "event_time": format_time(int(T0 * 1000)),
            "detected_at": format_time(int(T0 * 1000)), "message": f"PSI of fraud.{name} is 0.31", **extra}


class FakeAlertmanager:
    """Records each batch; ``down`` makes every post fail as unreachable, ``refuse`` as a 400, and so does
    a batch holding an alert whose ``name`` label is in ``refuse_names`` (as Alertmanager refuses a
    whole batch for one alert it cannot take)."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = False
        self.refuse = False
        self.refuse_names: set[str] = set()
        self.down_after: int | None = None  # posts answered before it goes down
        self.attempts = 0

    def __call__(self, alerts):
        self.attempts += 1
        if self.down or (self.down_after is not None and self.attempts > self.down_after):
            raise AlertmanagerError("ConnectionRefusedError: [Errno 111] Connection refused", transient=True)
        if self.refuse or any(a["labels"].get("name") in self.refuse_names for a in alerts):
            raise AlertmanagerError("HTTP 400: bad alert", transient=False)
        self.batches.append(alerts)

    @property
    def alerts(self) -> list[dict]:
        return [a for batch in self.batches for a in batch]


def forwarder(**settings) -> tuple[Forwarder, FakeAlertmanager, Clock, Metrics]:
    fake, clock, metrics = FakeAlertmanager(), Clock(T0), Metrics(CollectorRegistry())
    table = AlertmanagerConfig(url="http://am:9093", **{"resend_seconds": 60.0, **settings})
    return Forwarder(table, fake, metrics=metrics, clock=clock, jitter=lambda: 0.0), fake, clock, metrics


def value(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- the payload ----------------------------------------------------------------------------------------


def test_labels_name_the_episode_and_its_severity():
    assert labels_of(record()) == {"alertname": "FeatureDrift", "model_id": "fraud", "signal": "feature",
                                   "name": "amount", "detector": "psi", "severity": "critical"}


def test_a_segment_is_one_label_with_its_keys_sorted():
    labels = labels_of(record(segment={"device": "ios", "country": "DE"}))
    assert labels["segment"] == "country=DE,device=ios"


def test_annotations_carry_the_message_the_link_the_ids():
    notes = annotations_of(record(incident="abc"), "https://sm.example/")
    assert notes["description"] == "PSI of fraud.amount is 0.31"
    assert notes["summary"] == "fraud feature amount: psi firing (critical)"
    assert notes["status_page"] == "https://sm.example/"
    assert notes["alert_id"] == "amount-firing-0-10" and notes["incident"] == "abc"
    assert notes["statistic"] == "0.31" and notes["threshold"] == "0.25"


def test_payload_times_and_generator_url():
    alert = payload(record(), 1000, 5000, "https://sm.example/")
    assert alert["startsAt"] == "1970-01-01T00:00:01.000Z" and alert["endsAt"] == "1970-01-01T00:00:05.000Z"
    assert alert["generatorURL"] == "https://sm.example/"
    assert "generatorURL" not in payload(record(), 1000, 5000)


def test_payload_never_starts_after_it_ends():
    alert = payload(record(), 9000, 5000)
    assert alert["startsAt"] == alert["endsAt"]


# --- the forwarder --------------------------------------------------------------------------------------


def test_a_firing_alert_is_posted_at_once_with_ends_at_four_resends_ahead():
    fwd, fake, clock, metrics = forwarder()
    fwd.offer(record())
    fwd.step()
    [alert] = fake.alerts
    assert alert["labels"]["model_id"] == "fraud"
    assert alert["startsAt"] == format_time(int(T0 * 1000))
    assert alert["endsAt"] == format_time(int((T0 + 240) * 1000))
    assert value(metrics, "stream_monitor_alertmanager_alerts_posted_total") == 1


def test_a_firing_alert_is_posted_again_every_resend_interval_until_resolved():
    fwd, fake, clock, _ = forwarder()
    fwd.offer(record())
    assert fwd.step() == 60.0  # nothing more until its resend
    clock.now += 30
    fwd.step()
    assert len(fake.alerts) == 1
    clock.now += 30
    fwd.step()
    assert len(fake.alerts) == 2 and fake.alerts[1]["endsAt"] == format_time(int((T0 + 60 + 240) * 1000))
    clock.now += 5
    fwd.offer(record(status="resolved", severity="critical", offset=900))
    fwd.step()
    resolved = fake.alerts[2]
    assert resolved["endsAt"] == format_time(int((T0 + 65) * 1000))
    assert resolved["startsAt"] == format_time(int(T0 * 1000))
    assert resolved["labels"] == fake.alerts[0]["labels"]
    clock.now += 600
    fwd.step()
    assert len(fake.alerts) == 3, "a resolved alert is posted once and the episode no more"


def test_a_resolve_keeps_the_labels_its_firing_alert_was_posted_with():
    fwd, fake, clock, _ = forwarder()
    fwd.offer(record(severity="warning"))
    fwd.step()
    fwd.offer(record(status="resolved", severity="critical", offset=50))
    fwd.step()
    assert fake.alerts[1]["labels"]["severity"] == "warning"


def test_an_episode_fired_on_two_partitions_is_resolved_when_the_last_resolves():
    fwd, fake, clock, _ = forwarder()
    fwd.offer(record(partition=0))
    fwd.offer(record(partition=1))
    fwd.step()
    assert len(fake.alerts) == 1, "one Alertmanager alert per episode"
    fwd.offer(record(status="resolved", partition=0, offset=99))
    fwd.step()
    assert len(fake.alerts) == 1
    fwd.offer(record(status="resolved", partition=1, offset=99))
    fwd.step()
    assert fake.alerts[-1]["endsAt"] == format_time(int(T0 * 1000))


def test_a_resolve_of_an_episode_this_process_never_saw_fire_is_posted_anyway():
    fwd, fake, _, _ = forwarder()
    fwd.offer(record(status="resolved"))
    fwd.step()
    assert fake.alerts[0]["startsAt"] == fake.alerts[0]["endsAt"]


def test_an_alert_delivered_twice_is_posted_once():
    fwd, fake, _, _ = forwarder()
    fwd.offer(record())
    fwd.offer(record())
    fwd.step()
    assert len(fake.alerts) == 1


def test_batches_hold_at_most_batch_size_alerts():
    fwd, fake, _, _ = forwarder(batch_size=2)
    for i in range(5):
        fwd.offer(record(name=f"c{i}"))
    while fwd.step() == 0.0:
        pass
    assert [len(b) for b in fake.batches] == [2, 2, 1]


def test_an_outage_backs_off_exponentially_is_logged_once_and_its_alerts_arrive_after(caplog):
    fwd, fake, clock, metrics = forwarder(max_backoff_seconds=4.0)
    fake.down = True
    fwd.offer(record())
    waits = []
    with caplog.at_level(logging.WARNING, "stream_monitor.alertmanager"):
        for _ in range(6):
            wait = fwd.step()
            waits.append(wait)
            assert fwd.step() == pytest.approx(wait), "no post while backing off"
            clock.now += wait
        assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]  # 0.5 × 2^n capped at 4, jitter 0 → half of it
        assert fake.attempts == 6
        assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
        assert len(caplog.records) == 1 and "unreachable" in caplog.records[0].message
        fake.down = False
        fwd.step()
    assert len(fake.alerts) == 1
    assert "reachable again" in caplog.records[-1].message and len(caplog.records) == 2
    assert value(metrics, "stream_monitor_alertmanager_alerts_failed_total", reason="unreachable") == 6
    assert value(metrics, "stream_monitor_alertmanager_alerts_posted_total") == 1


def test_backoff_has_jitter():
    fwd, fake, clock, _ = forwarder()
    fwd.jitter = lambda: 0.999
    fake.down = True
    fwd.offer(record())
    assert 0.49 < fwd.step() < 0.5


def test_a_full_queue_drops_the_oldest_and_counts_it():
    fwd, fake, _, metrics = forwarder(max_queue=3)
    for i in range(5):
        fwd.offer(record(name=f"c{i}"))  # the thread has not taken any: the loop never waits for it
    fwd.step()
    assert sorted(a["labels"]["name"] for a in fake.alerts) == ["c2", "c3", "c4"]
    assert value(metrics, "stream_monitor_alertmanager_alerts_dropped_total") == 2


def test_resolves_waiting_through_an_outage_are_bounded_too():
    fwd, fake, clock, metrics = forwarder(max_queue=2)
    fake.down = True
    for i in range(4):
        fwd.offer(record(status="resolved", name=f"c{i}"))
        clock.now += fwd.step()
    fake.down = False
    fwd.step()
    assert sorted(a["labels"]["name"] for a in fake.alerts) == ["c2", "c3"]
    assert value(metrics, "stream_monitor_alertmanager_alerts_dropped_total") == 2


def test_a_refused_batch_is_not_retried_and_its_firing_alerts_wait_for_their_resend(caplog):
    fwd, fake, clock, metrics = forwarder()
    fake.refuse = True
    fwd.offer(record())
    fwd.offer(record(status="resolved", name="other"))
    with caplog.at_level(logging.ERROR, "stream_monitor.alertmanager"):
        fwd.step()
        assert fwd.step() == 60.0
    assert fake.attempts == 3 and "refused 2 alerts" in caplog.text  # the batch, then each alert alone
    assert value(metrics, "stream_monitor_alertmanager_alerts_failed_total", reason="refused") == 2


def test_one_alert_alertmanager_refuses_does_not_sink_the_others_of_its_batch(caplog):
    fwd, fake, clock, metrics = forwarder()
    fake.refuse_names = {"bad"}
    for name in ("a", "bad", "b"):
        fwd.offer(record(name=name))
    fwd.offer(record(status="resolved", name="c"))
    with caplog.at_level(logging.ERROR, "stream_monitor.alertmanager"):
        fwd.step()
    assert sorted(a["labels"]["name"] for a in fake.alerts) == ["a", "b", "c"]
    assert fake.attempts == 5 and "refused 1 alerts (HTTP 400: bad alert)" in caplog.text
    assert value(metrics, "stream_monitor_alertmanager_alerts_failed_total", reason="refused") == 1
    assert value(metrics, "stream_monitor_alertmanager_alerts_posted_total") == 3
    clock.now += 60.0  # at their resend the three firing ones are tried again: the same split, the same result
    fwd.step()
    assert [a["labels"]["name"] for batch in fake.batches[-2:] for a in batch] == ["a", "b"] and fake.attempts == 9


def test_an_outage_while_posting_one_by_one_leaves_the_rest_waiting():
    fwd, fake, clock, metrics = forwarder()
    fake.refuse_names = {"bad"}
    fake.down_after = 2  # the batch refused, "bad" refused alone, then down
    for name in ("bad", "a", "b"):
        fwd.offer(record(name=name))
    assert fwd.step() > 0.0  # backing off
    assert fake.alerts == []
    assert value(metrics, "stream_monitor_alertmanager_alerts_failed_total", reason="refused") == 1
    assert value(metrics, "stream_monitor_alertmanager_alerts_failed_total", reason="unreachable") == 1
    fake.down_after = None
    clock.now += 10.0
    fwd.step()
    assert sorted(a["labels"]["name"] for a in fake.alerts) == ["a", "b"]


def test_offer_never_waits_for_a_slow_alertmanager():
    fwd, fake, _, _ = forwarder(max_queue=10)
    for i in range(1000):
        fwd.offer(record(name=f"c{i}"))  # no thread runs: every offer returns, the queue stays bounded
    assert fwd.queued() == 10


# --- credentials --------------------------------------------------------------------------------------


def test_bearer_token_comes_from_the_named_variable_and_is_redacted_in_logs():
    table = AlertmanagerConfig(url="http://am:9093", bearer_token_env="AM_TOKEN")
    assert auth_headers(table, {"AM_TOKEN": "tok-123456"}) == {"Authorization": "Bearer tok-123456"}
    assert "tok-123456" not in redact("header Bearer tok-123456")


def test_basic_auth_comes_from_two_variables():
    table = AlertmanagerConfig(url="http://am:9093", basic_auth_user_env="AM_USER", basic_auth_password_env="AM_PW")
    header = auth_headers(table, {"AM_USER": "ops", "AM_PW": "pw-secret-1"})["Authorization"]
    assert base64.b64decode(header.split()[1]) == b"ops:pw-secret-1"
    assert "pw-secret-1" not in redact("pw-secret-1") and header.split()[1] not in redact(header)


def test_a_named_but_unset_variable_is_refused_naming_the_key():
    table = AlertmanagerConfig(url="http://am:9093", bearer_token_env="AM_TOKEN")
    with pytest.raises(ConfigError, match="alertmanager.bearer_token_env.*AM_TOKEN"):
        auth_headers(table, {})


# --- the table -----------------------------------------------------------------------------------------


def test_the_table_is_off_by_default_and_read_from_toml_and_env():
    assert parse_config({}).alertmanager.url == ""
    config = parse_config({"alertmanager": {"url": "http://am:9093", "resend_seconds": 5}},
                          environ={"STREAM_MONITOR_ALERTMANAGER_URL": "http://other:9093"})
    assert config.alertmanager.url == "http://other:9093" and config.alertmanager.resend_seconds == 5


@pytest.mark.parametrize("table, key", [
    ({"url": "am:9093"}, "alertmanager.url"),
    ({"url": "http://am", "status_page_url": "ftp://x"}, "alertmanager.status_page_url"),
    ({"url": "http://am", "bearer_token_env": "not a name"}, "alertmanager.bearer_token_env"),
    ({"url": "http://am", "basic_auth_user_env": "U"}, "alertmanager.basic_auth_password_env"),
    ({"url": "http://am", "bearer_token_env": "T", "basic_auth_user_env": "U", "basic_auth_password_env": "P"},
     "alertmanager.bearer_token_env"),
    ({"url": "http://am", "batch_size": 0}, "alertmanager.batch_size"),
    ({"url": "http://am", "token": "x"}, "alertmanager.token"),
])
def test_a_wrong_table_is_refused_naming_the_key(table, key):
    with pytest.raises(ConfigError) as caught:
        parse_config({"alertmanager": table})
    assert caught.value.key == key


def test_a_password_in_the_url_never_shows():
    config = parse_config({"alertmanager": {"url": "http://ops:hunter2@am:9093"}})
    assert "hunter2" not in repr(config.alertmanager)
    assert "hunter2" not in redact("posting to http://ops:hunter2@am:9093 failed")


def test_run_refuses_to_start_when_a_named_credential_variable_is_unset(monkeypatch):
    from stream_monitor.app import Service

    monkeypatch.delenv("SM_TEST_AM_TOKEN", raising=False)
    config = parse_config({"alertmanager": {"url": "http://127.0.0.1:9", "bearer_token_env": "SM_TEST_AM_TOKEN"},
                           "redis": {"url": "redis://127.0.0.1:9/0"}})
    with pytest.raises(ConfigError, match="alertmanager.bearer_token_env.*SM_TEST_AM_TOKEN"):
        Service(config, Metrics(CollectorRegistry()))  # before Redis (nothing listens there) is tried


def test_close_during_an_outage_counts_what_was_never_posted():
    fwd, fake, clock, metrics = forwarder()
    tried = threading.Event()
    down = fake.__call__

    def send(alerts):
        try:
            down(alerts)
        finally:
            tried.set()

    fwd.send = send
    fake.down = True
    fwd.start()
    fwd.offer(record(status="resolved"))
    assert tried.wait(10), "the thread posts what is offered"
    fwd.close(timeout=5)  # backing off (the clock stands still): nothing more is tried
    assert fake.attempts == 1
    assert value(metrics, "stream_monitor_alertmanager_alerts_dropped_total") == 1


def test_close_posts_what_is_due_once_more():
    fwd, fake, clock, metrics = forwarder()
    fwd.offer(record(status="resolved"))  # not started: only close's last try can post it
    fwd._thread = threading.Thread(target=lambda: None)
    fwd._thread.start()
    fwd.close(timeout=5)
    assert len(fake.alerts) == 1
    assert value(metrics, "stream_monitor_alertmanager_alerts_dropped_total") == 0


# --- partitions moving between instances ------------------------------------------------------------------


def test_a_released_partition_is_no_longer_reposted_and_not_resolved():
    fwd, fake, clock, _ = forwarder()
    fwd.offer(record(partition=3))
    fwd.step()
    fwd.release([3])
    clock.now += 600
    fwd.step()
    assert len(fake.alerts) == 1, "the new owner posts it from now on; this instance neither re-posts nor resolves"


def test_a_partition_taken_over_keeps_its_firing_episodes_alive_and_resolves_them():
    summary = {"partition": 3, "models": {
        "fraud": {"detectors": [
            {"signal": "feature", "name": "amount", "detector": "psi", "statistic": 0.4, "threshold": 0.1,
             "critical": 0.25, "firing": True, "severity": "critical", "last_alert_id": "abc"},
            {"signal": "feature", "name": "country", "detector": "psi", "statistic": 0.01, "threshold": 0.1,
             "critical": 0.25, "firing": False, "severity": None, "last_alert_id": None}]},
        "merged": {"detectors": [{"signal": "feature", "name": "x", "detector": "adwin", "firing": True,
                                  "severity": "warning", "last_alert_id": "m"}]}}}
    adopted = firing_in(summary, 3, frozenset({"merged"}))
    assert [(r["model_id"], r["name"], r["severity"], r["alert_id"]) for r in adopted] == [("fraud", "amount",
                                                                                           "critical", "abc")]
    fwd, fake, clock, _ = forwarder()
    fwd.adopt(adopted)
    fwd.step()
    assert fake.alerts[0]["labels"] == labels_of(record())
    assert "took partition 3 over" in fake.alerts[0]["annotations"]["description"]
    clock.now += 60
    fwd.step()
    assert len(fake.alerts) == 2, "re-posted like its own"
    fwd.offer(record(status="resolved", partition=3, offset=500))
    fwd.step()
    assert fake.alerts[-1]["endsAt"] == format_time(int((T0 + 60) * 1000))
    assert fake.alerts[-1]["labels"] == labels_of(record())


def test_a_partition_taken_back_is_adopted_again_although_its_alert_id_was_seen():
    fwd, fake, clock, _ = forwarder()
    fwd.offer(record(partition=3))
    fwd.step()
    fwd.release([3])
    fwd.adopt([record(partition=3)])
    clock.now += 60
    fwd.step()
    assert len(fake.alerts) == 2
