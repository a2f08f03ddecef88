"""Throughput of the service's hot path against the embedded broker.

Produces N events of 20 float fields once, then consumes them from the start in a
fresh process per mode (so peak RSS is per mode):

* consume:        confluent-kafka ``consume()`` batches, values pulled out; ``[direct]``:
                  the direct fetch path's packed columns (``source.fetch: direct``)
* consume+decode: + decode to numpy columns (``StreamDecoder``: the compiled scanner,
                  msgspec for the rows it is not sure of)
* pipeline:       the service's runner: decode, schema checks, dead letters, metrics,
                  producer flush and a synchronous offset commit per batch
* pipeline+drift: the same with the default drift detectors on every field

Prints a table (events/s, µs per event, CPU µs per event of the process, per-stage
µs per event, peak RSS); the pipeline rows' share is of the same path's
consume+decode. ``--profile DIR`` dumps a cProfile of each service mode
(``DIR/<mode>.prof``).

``--hostile 0.1`` also produces a second topic where 10% of the same events are
replaced by hostile records (``hostile_wide``: invalid JSON and UTF-8, binary,
wrong types, NaN, huge numbers, deep nesting, too many fields, out-of-range
values, and one 2 MB record per 2,000 events) and runs every mode on it as well,
so each row has a ``[hostile]`` twin: events/s and peak RSS side by side.

``--repeat N`` runs the whole list of modes N times, one round after the other (the
speed of a shared VM drifts by 20% and more over minutes), prints every round's
table, then the median events/s of each row over the rounds and the pipeline rows'
share of the median consume+decode.

Usage: python bench/throughput.py [--events 1000000] [--fields 20] [--batch 10000]
       [--hostile 0.1] [--fetch librdkafka|direct|both] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model, produce_wide, run_child
from connectors.kafka import consumer_limits

MODES = ("consume", "consume+decode", "pipeline", "pipeline+drift")


HOSTILE_KINDS = (
    "invalid_json",
    "invalid_utf8",
    "binary",
    "wrong_type",
    "nan",
    "huge_number",
    "too_deep",
    "too_many_fields",
    "out_of_range",
    "unknown_field",
)
# One record of this size per BIG_EVERY events of the hostile topic.
BIG_BYTES, BIG_EVERY = 2_000_000, 2_000


def hostile_wide(good: bytes, kind: str, i: int) -> bytes:
    """A hostile variant of the wide event ``good`` (deterministic in ``i``)."""
    if kind == "big":
        return good[:-1] + b',"blob":"' + b"x" * BIG_BYTES + b'"}'
    if kind == "invalid_json":
        return good[: -1 - i % 7]
    if kind == "invalid_utf8":
        return good[:-1] + b',"note":"\xc3\x28"}'
    if kind == "binary":
        return bytes((i * 31 + j * 17) % 256 for j in range(64))
    if kind == "wrong_type":
        return good.replace(b'"f00":', b'"f00":"x","_":', 1)
    if kind == "nan":
        return good.replace(b'"f01":', b'"f01":NaN,"_":', 1)
    if kind == "huge_number":
        return good.replace(b'"f02":', b'"f02":' + b"9" * 5000 + b',"_":', 1)
    if kind == "too_deep":
        return good[:-1] + b',"deep":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    if kind == "too_many_fields":
        extra = b",".join(b'"k%d":%d' % (j, j) for j in range(1_500))
        return good[:-1] + b"," + extra + b"}"
    if kind == "out_of_range":
        return good.replace(b'"f03":', b'"f03":1e9,"_":', 1)
    return good[:-1] + b',"firmware":"1.2.3"}'  # unknown_field (lenient stream: accepted)


def produce_hostile(
    bootstrap: str, topic: str, events: int, fields: int, partitions: int, rate: float
) -> float:
    """The events of ``produce_wide`` with ``rate`` of them hostile; seconds taken."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from monitor.dev.producing import produce_waiting
    from monitor.dev.synthetic import generate_wide

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, partitions, 1, config={"max.message.bytes": "10485760"})
    for future in admin.create_topics([new]).values():
        future.result(10)
    payloads = generate_wide(min(events, 200_000), fields=fields)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "message.max.bytes": 10_000_000,
        }
    )
    import numpy as np

    bad = np.random.default_rng(5).random(events) < rate
    t0 = time.perf_counter()
    k = 0
    for i in range(events):
        value = payloads[i % len(payloads)]
        if i % BIG_EVERY == BIG_EVERY // 2:
            value = hostile_wide(value, "big", i)
        elif bad[i]:
            value = hostile_wide(value, HOSTILE_KINDS[k % len(HOSTILE_KINDS)], i)
            k += 1
        produce_waiting(producer, topic, wait=0.01, value=value)
    producer.flush(120)
    return time.perf_counter() - t0


def _consumer_options(bootstrap: str, fetch: str = "librdkafka") -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "queued.min.messages": 200_000,
        "session.timeout.ms": 6000,
        **consumer_limits(fetch),
    }


def _peak_rss_mb() -> float:
    """This process's own peak RSS. ``ru_maxrss`` is not: Linux carries the parent's
    peak over ``fork`` + ``exec``, so every child would report the producer's memory."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, Message, TopicPartition

    mode, bootstrap, topic, total = args.mode, args.bootstrap, args.topic, args.events
    result: dict[str, Any] = {"mode": mode}
    if mode in ("consume", "consume+decode"):
        from monitor.config.schema import parse_config
        from monitor.dev.synthetic import wide_stream
        from monitor.pipeline.decode import StreamDecoder

        config = parse_config(
            {
                "kafka": {"bootstrap.servers": bootstrap},
                "streams": [wide_stream(args.fields, topic)],
            },
            env={},
        )
        decoder = StreamDecoder(config.streams[0])
        seen = 0
        decode_s = 0.0
        started = None
        deadline = time.monotonic() + 300
        next_values: Callable[[], Sequence[bytes | None] | None]
        if args.fetch == "direct":  # what KafkaSource does with source.fetch: direct
            from connectors.fetch import DirectFetcher
            from connectors.records import PackedValues

            fetcher = DirectFetcher(_consumer_options(bootstrap, "direct"), max_wait=1.0)
            fetcher.assign({(topic, p): 0 for p in range(args.partitions)})

            def next_values() -> Sequence[bytes | None] | None:
                taken = fetcher.take(args.batch, 1.0)
                parts = [c.values for _, c in taken]
                if not parts:
                    return None
                return parts[0] if len(parts) == 1 else PackedValues.concat(parts)

            close = fetcher.close
        else:
            consumer = Consumer(_consumer_options(bootstrap))
            consumer.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])

            def next_values() -> Sequence[bytes | None] | None:
                msgs = consumer.consume(args.batch, 1.0)
                return list(map(Message.value, msgs)) if msgs else None

            close = consumer.close
        while seen < total and time.monotonic() < deadline:
            values = next_values()
            if values is None:
                continue
            if started is None:
                started = time.perf_counter()
                cpu0 = time.process_time()
            if mode == "consume+decode":
                t = time.perf_counter()
                decoder.decode(values)
                decode_s += time.perf_counter() - t
            seen += len(values)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        cpu = time.process_time() - cpu0 if started is not None else 0.0
        close()
        result.update(
            events=seen, seconds=elapsed, cpu=cpu, stages={"decode": decode_s} if decode_s else {}
        )
    else:
        from prometheus_client import CollectorRegistry

        from monitor.config.schema import parse_config
        from monitor.dev.synthetic import wide_stream
        from monitor.runtime.service import Service

        stream = wide_stream(args.fields, topic)
        if mode == "pipeline":
            for spec in stream["fields"].values():
                spec["detectors"] = []
        config = parse_config(
            {
                "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
                "group": f"bench-{time.monotonic_ns()}",
                "metrics": {"listen": "127.0.0.1:0"},
                "source": {"max_batch_events": args.batch, "max_wait": "1s", "fetch": args.fetch},
                "dead_letter_topic": f"{topic}.dlq",
                "streams": [{**stream, "baseline": {"first_events": 10_000}}],
            },
            env={},
        )
        service = Service(config, registry=CollectorRegistry())
        marks: dict[str, float] = {}

        def stage_seconds(stage: str) -> float:
            value = service.metrics.registry.get_sample_value(
                "driftwarden_stage_seconds_total", {"stage": stage}
            )
            return value or 0.0

        def until(stats: Any) -> bool:
            if "start" not in marks and stats.events:
                marks["start"] = time.perf_counter()
                marks["cpu"] = time.process_time()
                marks["first"] = stats.events
                # The first batch (JIT and cache loading, the baseline built from the
                # first events) is left out of the stage columns too.
                for stage in ("decode", "checks", "detectors"):
                    marks[f"stage:{stage}"] = stage_seconds(stage)
            if stats.events >= total and "end" not in marks:
                # The clock stops here: shutdown (final checkpoint, leaving the group)
                # is not throughput, and takes 0.2-0.3 s (timed apart as "close").
                marks["end"] = time.perf_counter()
                marks["cpu_end"] = time.process_time()
            return bool(stats.events >= total)

        profile = None
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        stats = service.run(max_seconds=300, until=until)
        closed = time.perf_counter()
        end = marks.get("end", closed)
        elapsed = end - marks.get("start", end)
        cpu = marks.get("cpu_end", time.process_time()) - marks.get("cpu", time.process_time())
        if profile is not None:
            profile.disable()
            os.makedirs(args.profile, exist_ok=True)
            profile.dump_stats(os.path.join(args.profile, f"{mode}.prof"))
        stages = {}
        for stage in ("decode", "checks", "detectors"):
            stages[stage] = stage_seconds(stage) - marks.get(f"stage:{stage}", 0.0)
        # The first batch arrived before the clock started: count only what followed it.
        result.update(
            events=stats.events - marks.get("first", 0),
            seconds=elapsed,
            cpu=cpu,
            close_seconds=closed - end,
            stages=stages,
            total=stats.events,
        )
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--hostile", type=float, default=0.0, help="hostile share, e.g. 0.1")
    parser.add_argument("--profile", help="directory for a cProfile dump of each service mode")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all modes (medians)")
    parser.add_argument(
        "--fetch",
        default="both",
        choices=("librdkafka", "direct", "both"),
        help="who reads records (source.fetch); both (default): every mode with each",
    )
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench.wide", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        _child(args)
        return

    from connectors.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        produce_s = produce_wide(
            broker.bootstrap, args.topic, args.events, args.fields, args.partitions
        )
        print(
            f"produced {args.events:,} events of {args.fields} fields in {produce_s:.1f}s",
            flush=True,
        )
        runs = [(mode, args.topic, "") for mode in args.modes.split(",")]
        if args.hostile > 0:
            hostile_topic = f"{args.topic}.hostile"
            hostile_s = produce_hostile(
                broker.bootstrap,
                hostile_topic,
                args.events,
                args.fields,
                args.partitions,
                args.hostile,
            )
            print(
                f"produced the same with {args.hostile:.0%} hostile (and one "
                f"{BIG_BYTES / 1e6:.0f} MB record per {BIG_EVERY:,}) in {hostile_s:.1f}s",
                flush=True,
            )
            runs = [
                r
                for mode, _, _ in runs
                for r in ((mode, args.topic, ""), (mode, hostile_topic, " [hostile]"))
            ]
        fetches = ("librdkafka", "direct") if args.fetch == "both" else (args.fetch,)
        jobs = [
            (mode, topic, label + ("" if fetch == "librdkafka" else " [direct]"), fetch)
            for fetch in fetches
            for mode, topic, label in runs
        ]
        rounds: list[list[dict[str, Any]]] = []
        for _ in range(max(1, args.repeat)):
            rounds.append(_run_jobs(args, broker.bootstrap, jobs))
    cpu = cpu_model()
    for rows in rounds:
        _print_table(rows, cpu)
    if len(rounds) > 1:
        _print_medians(rounds)


def _run_jobs(
    args: argparse.Namespace, bootstrap: str, jobs: list[tuple[str, str, str, str]]
) -> list[dict[str, Any]]:
    """Each job (mode, topic, label, fetch) in a fresh process; their result rows."""
    rows = []
    for mode, topic, label, fetch in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--events",
            str(args.events),
            "--fields",
            str(args.fields),
            "--batch",
            str(args.batch),
            "--partitions",
            str(args.partitions),
            "--fetch",
            fetch,
            *(["--profile", os.path.abspath(args.profile)] if args.profile else []),
        ]
        row = run_child(cmd, mode)
        if row is None:
            continue
        row["label"] = label
        rows.append(row)
    return rows


def _print_medians(rounds: list[list[dict[str, Any]]]) -> None:
    """Median events/s of every row over the rounds, and the pipeline rows' share of
    their path's median consume+decode."""
    import statistics

    rates: dict[str, list[float]] = {}
    for rows in rounds:
        for r in rows:
            name = r["mode"] + r.get("label", "")
            rates.setdefault(name, []).append(r["events"] / r["seconds"] if r["seconds"] else 0.0)
    print(f"\nmedian of {len(rounds)} rounds")
    print("{:<26} {:>10}  {}".format("mode", "events/s", "rounds"))
    for name, values in rates.items():
        median = statistics.median(values)
        each = " ".join(f"{v / 1e3:,.0f}k" for v in values)
        share = ""
        if name.startswith("pipeline") and "[hostile]" not in name:
            base = rates.get(name.replace(name.split(" ")[0], "consume+decode", 1))
            if base:
                share = f"  {100 * median / statistics.median(base):.0f}% of consume+decode"
        print(f"{name:<26} {median:>10,.0f}  {each}{share}")


def _print_table(rows: list[dict[str, Any]], cpu: str) -> None:
    print(f"\nmachine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    head = ("mode", "events", "events/s", "us/event", "cpu us", "decode", "checks", "detect")
    print("{:<26} {:>9} {:>10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9}".format(*head, "peak RSS"))
    base = None
    for r in rows:
        rate = r["events"] / r["seconds"] if r["seconds"] else 0.0
        per = 1e6 / rate if rate else 0.0
        st = r.get("stages", {})
        cells = [
            f"{1e6 * st[s] / r['events']:7.2f}" if s in st and r["events"] else f"{'-':>7}"
            for s in ("decode", "checks", "detectors")
        ]
        rss = r["peak_rss_mb"]
        name = r["mode"] + r.get("label", "")
        cpu_per = 1e6 * r.get("cpu", 0.0) / r["events"] if r["events"] else 0.0
        row = f"{name:<26} {r['events']:>9,} {rate:>10,.0f} {per:>9.2f} {cpu_per:>7.2f}"
        close = f"  (close {r['close_seconds']:.2f}s)" if "close_seconds" in r else ""
        print(f"{row} {' '.join(cells)} {rss:>7.0f}MB{close}")
        label = r.get("label", "")
        if r["mode"] == "consume+decode" and label in ("", " [direct]"):
            base = rate
        elif base and r["mode"].startswith("pipeline") and label in ("", " [direct]"):
            print(f"{'':<26} {'':>9} {100 * rate / base:>9.0f}% of consume+decode")


if __name__ == "__main__":
    main()
