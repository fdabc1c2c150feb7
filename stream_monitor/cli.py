"""The ``stream-monitor`` command (CONTRACT §6). Wires the parts; nothing clever."""

from __future__ import annotations

import argparse
import base64
import logging
import sys
from pathlib import Path

import orjson

from . import logs
from .config import Config, load_config
from .errors import StreamMonitorError

log = logging.getLogger("stream_monitor")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    try:
        return args.handler(args)
    except StreamMonitorError as exc:
        print(f"stream-monitor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-monitor", description="Real-time drift monitoring for ML models on Kafka")
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
    replay = command("replay", _replay, "run the detectors over a JSONL file, print the alerts (no broker, no Redis)")
    replay.add_argument("--input", required=True, type=Path)
    replay.add_argument("--reference", action="append", type=Path, default=[],
                        help="reference profile JSON (from `reference build --output`) for models with a stored reference")

    reference = commands.add_parser("reference", help="reference profiles").add_subparsers(dest="sub", required=True)
    build = command("build", _reference_build, "build and store a model's reference profile from a JSONL file",
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
    from .app import Service  # noqa: PLC0415 - keeps `replay` free of Kafka and Redis imports
    from .metrics import serve  # noqa: PLC0415

    config = _config(args)
    service = Service(config)
    service.install_signal_handlers()
    serve(config.service.metrics_port)
    service.run()
    log.info("stopped cleanly")
    return 0


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
    count = replay_file(config, args.input, references)
    print(f"{count} alerts", file=sys.stderr)
    return 0


def _reference_build(args: argparse.Namespace) -> int:
    from .codec import decode  # noqa: PLC0415
    from .events import DeadLetter, InferenceEvent, RawMessage  # noqa: PLC0415
    from .reference import build_reference  # noqa: PLC0415

    config = _config(args)
    if args.model not in config.models:
        raise StreamMonitorError(f"model {args.model!r} is not in the config (known: {sorted(config.models)})")
    model = config.models[args.model]
    events: list[InferenceEvent] = []
    rejected = 0
    with open(args.input, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            decoded = decode(RawMessage("file", -1, line_number, line.rstrip(b"\r\n")), set(config.models),
                             config.service.max_message_bytes)
            if isinstance(decoded, DeadLetter):
                rejected += 1
                if rejected <= 5:
                    print(f"line {line_number}: {decoded.reason}: {decoded.error}", file=sys.stderr)
            elif isinstance(decoded, InferenceEvent) and decoded.model_id == args.model:
                events.append(decoded)
    profile = build_reference(args.model, events, model.features, model.detectors.psi.bins,
                              model.detectors.psi.top_k, source="stored")
    if not args.no_store:
        from .state import ReferenceStore, connect  # noqa: PLC0415
        profile = ReferenceStore(connect(config.redis.url), config.redis.namespace).store(profile)
    elif args.output is None:
        raise StreamMonitorError("--no-store needs --output")
    if args.output is not None:
        args.output.write_bytes(orjson.dumps(profile.to_dict(), option=orjson.OPT_INDENT_2))
    print(f"reference of {args.model}: version {profile.version}, {profile.events} events, "
          f"{len(profile.features)} features ({rejected} lines rejected)")
    return 0


def _reference_show(args: argparse.Namespace) -> int:
    from .reference import NumericReference  # noqa: PLC0415
    from .state import ReferenceStore, connect  # noqa: PLC0415

    config = _config(args)
    profile = ReferenceStore(connect(config.redis.url), config.redis.namespace).load(args.model)
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
    return 0


def _status(args: argparse.Namespace) -> int:
    from .state import StateStore, connect  # noqa: PLC0415

    config = _config(args)
    store = StateStore(connect(config.redis.url), config.redis.namespace, config.kafka.group_id)
    rows = list(store.summaries())
    if args.json:
        print(orjson.dumps([{"topic": t, "partition": p, "next_offset": o, "saved_at_ms": s, **summary}
                            for t, p, o, summary, s in rows]).decode())
        return 0
    if not rows:
        print(f"no partition state stored for group {config.kafka.group_id!r} in namespace {config.redis.namespace!r}")
        return 0
    print(f"{'topic':<24} {'part':>4} {'next offset':>12} {'dead letters':>12}")
    for topic, partition, offset, summary, _ in rows:
        print(f"{topic:<24} {partition:>4} {offset:>12} {summary.get('dead_letters', 0):>12}")
    print()
    print(f"{'model':<12} {'part':>4} {'signal':<11} {'name':<18} {'detector':<13} {'statistic':>10}  state")
    for topic, partition, _, summary, _ in rows:
        for model_id, model in summary.get("models", {}).items():
            if model.get("reference") is None:
                print(f"{model_id:<12} {partition:>4} warming up: {model.get('warmup', 0)} events collected")
                continue
            for row in model.get("detectors", []):
                value = row.get("statistic")
                shown = "-" if value is None else f"{value:.4g}"
                state = f"FIRING ({row['severity']})" if row.get("firing") else "ok"
                print(f"{model_id:<12} {partition:>4} {row['signal']:<11} {row['name']:<18} {row['detector']:<13} "
                      f"{shown:>10}  {state}")
    return 0


def _state_export(args: argparse.Namespace) -> int:
    from .state import StateStore, connect  # noqa: PLC0415

    config = _config(args)
    store = StateStore(connect(config.redis.url), config.redis.namespace, config.kafka.group_id)
    count = 0
    with open(args.output, "wb") as out:
        for topic, partition in store.partitions():
            fields = store.client.hgetall(store.key(topic, partition))
            if not fields:
                continue
            out.write(orjson.dumps({"topic": topic, "partition": partition,
                                    "fields": {k.decode(): base64.b64encode(v).decode() for k, v in fields.items()}})
                      + b"\n")
            count += 1
    print(f"exported {count} partitions to {args.output}")
    return 0


def _state_import(args: argparse.Namespace) -> int:
    from .state import StateStore, connect  # noqa: PLC0415

    config = _config(args)
    store = StateStore(connect(config.redis.url), config.redis.namespace, config.kafka.group_id)
    count = 0
    with open(args.input, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = orjson.loads(line)
            fields = {k: base64.b64decode(v) for k, v in record["fields"].items()}
            pipe = store.client.pipeline(transaction=True)
            pipe.sadd(store.index_key, f"{record['topic']}|{record['partition']}")
            pipe.delete(store.key(record["topic"], record["partition"]))
            pipe.hset(store.key(record["topic"], record["partition"]), mapping=fields)
            pipe.execute()
            count += 1
    print(f"imported {count} partitions from {args.input}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # noqa: PLC0415

    return run_demo(events_per_model=args.events)
