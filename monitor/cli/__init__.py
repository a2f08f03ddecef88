"""The ``driftwarden`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from monitor.errors import ConfigError, DriftwardenError, InputFileError
from monitor.runtime.signals import install_stop as _install_stop

__all__ = ["main"]

log = logging.getLogger("driftwarden")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load_checked(path: Path) -> Any:
    """The validated config, with the files it names checked; ConfigError otherwise."""
    from monitor.config.check import file_problems
    from monitor.config.schema import load_config

    config = load_config(path)
    problems = file_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = _load_checked(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    fields = sum(len(s.fields) for s in config.streams)
    print(f"{args.config}: ok ({len(config.streams)} stream(s), {fields} field(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.runtime.service import Service

    try:
        config = _load_checked(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    from monitor.cli.console import StatusLine

    # A stop request while connecting (topics, state store) must not kill the process.
    early_stop = threading.Event()
    _install_stop(early_stop.set)
    service = Service(config)
    _install_stop(service.stop)
    if early_stop.is_set():
        service.stop()
    line = StatusLine(every=0.0)
    stats = service.run(
        max_seconds=args.max_seconds, on_summary=line.update if not args.quiet else None
    )
    line.close(
        f"stopped: events={stats.events} accepted={stats.accepted} invalid={stats.invalid} "
        f"batches={stats.batches}"
    )
    return 0


def _cmd_dev_broker(args: argparse.Namespace) -> int:
    from connectors.embedded import EmbeddedBroker

    stop = threading.Event()
    _install_stop(stop.set)
    with EmbeddedBroker(port=args.port) as broker:
        print(f"broker ready: bootstrap.servers={broker.bootstrap} (Ctrl-C to stop)", flush=True)
        stop.wait(args.max_seconds)
    return 0


def _cmd_dev_produce(args: argparse.Namespace) -> int:
    from monitor.dev.demo import produce_fleet

    produced = produce_fleet(
        args.bootstrap,
        args.topic,
        events=args.events,
        rate=args.rate,
        drift_at=args.drift_at,
        partitions=args.partitions,
        seed=args.seed,
    )
    print(f"produced {produced} events to {args.topic}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.dev.demo import run_demo

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:  # before the broker and producer start: a port in use is one line
            probe.bind(("127.0.0.1", args.metrics_port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on 127.0.0.1:{args.metrics_port}: "
                f"{exc.strerror or type(exc).__name__}; choose another port with "
                f"--metrics-port (make demo METRICS_PORT=...)"
            ) from None

    return run_demo(seconds=args.seconds, rate=args.rate, metrics_port=args.metrics_port)


def _cmd_baseline_build(args: argparse.Namespace) -> int:
    from monitor.pipeline.baselines import build_baseline_command

    return build_baseline_command(args)


def _cmd_model_deploy(args: argparse.Namespace) -> int:
    from monitor.cli.model_deploy import deploy_command

    return deploy_command(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from monitor.cli.replay import replay_command

    return replay_command(args)


def _cmd_tail(args: argparse.Namespace) -> int:
    from monitor.cli.tail import tail_command

    return tail_command(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("driftwarden")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftwarden", description=__doc__)
    p.add_argument("--version", action="version", version=f"driftwarden {_version()}")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a configuration file and list every problem")
    v.add_argument("config", type=Path)
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("run", help="monitor the configured streams")
    r.add_argument("config", type=Path)
    r.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    r.add_argument("--quiet", action="store_true", help="no console summary")
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("baseline", help="reference distributions")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    bb = bsub.add_parser("build", help="build a baseline artifact for a stream")
    bb.add_argument("config", type=Path)
    bb.add_argument("--stream", required=True)
    bb.add_argument("--out", type=Path, required=True)
    src = bb.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="CSV, JSONL or Parquet training data")
    src.add_argument(
        "--topic-range",
        nargs=2,
        metavar=("START", "END"),
        help="event times (ISO 8601 or epoch seconds) to read from the stream's topic",
    )
    src.add_argument("--first-events", type=int, help="the first N events of the stream's topic")
    bb.set_defaults(func=_cmd_baseline_build)

    m = sub.add_parser("model", help="model monitoring")
    msub = m.add_subparsers(dest="model_command", required=True)
    md = msub.add_parser("deploy", help="announce a model version on the deploy topic")
    md.add_argument("config", type=Path)
    md.add_argument("--stream", required=True)
    md.add_argument("--version", required=True)
    md.set_defaults(func=_cmd_model_deploy)

    rp = sub.add_parser("replay", help="run the engine over a CSV/JSONL/Parquet file, offline")
    rp.add_argument("file", type=Path)
    rp.add_argument("--config", type=Path, required=True)
    rp.add_argument("--stream", default=None, help="the stream to replay as (default: the only)")
    rp.add_argument("--report", type=Path, default=None, help="write an HTML report here")
    rp.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    rp.add_argument("--chunk", type=int, default=None, help="events per batch (default: step)")
    rp.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="label events of a model stream (JSONL/CSV/Parquet), merged by event time",
    )
    rp.set_defaults(func=_cmd_replay)

    t = sub.add_parser("tail", help="read a dead-letter, alerts or retrain topic, readably")
    t.add_argument("topic")
    t.add_argument("--bootstrap", default=None, help="bootstrap servers (or take --config's)")
    t.add_argument("--config", type=Path, default=None)
    t.add_argument("--max", type=int, default=None, help="stop after this many records")
    t.add_argument("--idle", type=float, default=5.0, help="stop after this long without one")
    t.add_argument("--new-only", action="store_true", help="only records produced from now on")
    t.set_defaults(func=_cmd_tail)

    d = sub.add_parser("dev", help="local development helpers")
    dsub = d.add_subparsers(dest="dev_command", required=True)
    db = dsub.add_parser("broker", help="run the embedded Kafka-protocol broker on 127.0.0.1")
    db.add_argument("--port", type=int, default=None)
    db.add_argument("--max-seconds", type=float, default=None)
    db.set_defaults(func=_cmd_dev_broker)
    dp = dsub.add_parser("produce", help="produce synthetic IoT events with bad records and drift")
    dp.add_argument("--bootstrap", required=True)
    dp.add_argument("--topic", default="iot.sensors")
    dp.add_argument("--events", type=int, default=100_000)
    dp.add_argument("--rate", type=float, default=0.0, help="events/s, 0 for as fast as possible")
    dp.add_argument("--drift-at", type=int, default=None)
    dp.add_argument("--partitions", type=int, default=3)
    dp.add_argument("--seed", type=int, default=7)
    dp.set_defaults(func=_cmd_dev_produce)

    demo = sub.add_parser("demo", help="embedded broker + synthetic fleet with drift + the monitor")
    demo.add_argument("--seconds", type=float, default=60.0)
    demo.add_argument("--rate", type=float, default=5000.0)
    demo.add_argument("--metrics-port", type=int, default=9108)
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except InputFileError as exc:  # a data file that cannot be read: a usage error
        log.error("%s", exc)
        return 2
    except DriftwardenError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except KafkaException as exc:  # librdkafka gave up; its reason is the message
        err = exc.args[0] if exc.args else exc
        log.error("Kafka error: %s", err.str() if hasattr(err, "str") else err)
        log.debug("traceback", exc_info=True)
        return 1
    except Exception as exc:  # a bug: one line, the traceback at --log-level debug
        log.error(
            "unexpected %s: %s (run with --log-level debug for the traceback)",
            type(exc).__name__,
            " ".join(str(exc).split())[:500],
        )
        log.debug("traceback", exc_info=True)
        return 1


if __name__ == "__main__":
    started = time.monotonic()
    sys.exit(main())
