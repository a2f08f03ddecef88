"""Decode cost per event: the compiled batch decoder against the msgspec decoder.

Four tables:

1. decode µs/event for 5, 20 and 100 float fields (``generate_wide``: values with four
   decimals), compiled vs msgspec, on the same 10,000-event batch;
2. an entity id and an ISO-8601 event time (both parsed by the kernel), then payload
   shortest round-trip floats as Python's ``repr`` writes them (16-17 digits, for 5, 20
   and 100 fields, and with exponents), then payload shapes that fall back (escaped
   strings, nested objects, 1% escaped rows), to show what the fallback costs;
3. the compile cost at start-up, in fresh processes: cold (empty numba cache) and warm
   (``cache=True`` files present);
4. consume + decode from the embedded broker, 20 float fields, one consumer process
   per mode: confluent-kafka ``consume`` only, + compiled, + msgspec; then the service's
   source (``KafkaSource.poll``, which builds the RawBatches) only, + compiled.

Wall times on a shared machine are noisy: every row also gives CPU time per event
(``time.process_time``; in table 4 ``cpu µs/ev`` is the whole process's, librdkafka's
threads included, ``main cpu`` the Python thread's own (``time.thread_time``: what
one core spends per event on the critical path), and ``dec cpu`` that thread's CPU
time inside ``decode``). Each in-process
figure is the best of ``--repeat`` runs.

Usage: python bench/decode.py [--events 300000] [--batch 10000] [--repeat 7] [--skip-broker]
       [--skip-startup]
       [--rounds 3] [--modes consume,compiled,...]   (table 4: interleaved runs, best kept)
       [--against DIR]   (A/B: the compiled decoder of another checkout against this one)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model, produce_wide, run_child
from monitor.config.schema import StreamSpec
from monitor.dev.synthetic import generate_wide, wide_stream
from monitor.pipeline.decode import Batch, StreamDecoder


def _spec(stream: dict[str, Any], decoder: str) -> StreamSpec:
    return StreamSpec.model_validate({**stream, "decoder": decoder})


def _time(fn: Callable[[], Batch], events: int, repeat: int) -> tuple[float, float, Batch]:
    """Best wall and CPU µs per event over ``repeat`` calls, and the last result."""
    batch = fn()  # warm-up (vocabularies, caches)
    wall = cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        batch = fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return 1e6 * wall / events, 1e6 * cpu / events, batch


def _compare(
    name: str, stream: dict[str, Any], payloads: Sequence[bytes | None], repeat: int
) -> dict[str, Any]:
    compiled = StreamDecoder(_spec(stream, "compiled"))
    plain = StreamDecoder(_spec(stream, "msgspec"))
    n = len(payloads)
    cw, cc, got = _time(lambda: compiled.decode(payloads), n, repeat)
    mw, mc, want = _time(lambda: plain.decode(payloads), n, repeat)
    same = (
        got.rows.tolist() == want.rows.tolist()
        and all(got.columns[k].tobytes() == want.columns[k].tobytes() for k in want.columns)
        and all(got.valid[k].tobytes() == want.valid[k].tobytes() for k in want.valid)
        and _bytes(got.entity) == _bytes(want.entity)
        and _bytes(got.event_time) == _bytes(want.event_time)
    )
    return {
        "shape": name,
        "bytes": sum(map(len, filter(None, payloads))) / n,
        "compiled_wall": cw,
        "compiled_cpu": cc,
        "msgspec_wall": mw,
        "msgspec_cpu": mc,
        "fallback": got.fallback_rows / n,
        "identical": same,
    }


def _bytes(a: Any) -> bytes | None:
    return None if a is None else bytes(a.tobytes())


def _repr_shapes(n: int) -> list[tuple[str, dict[str, Any], list[bytes | None]]]:
    """Shortest round-trip floats as Python's ``json``/``repr`` (Java's and JavaScript's
    number printing write the same digits) prints them: ``random() * 1000`` has 16-17
    significant digits (past Clinger's 2**53), and values of mixed magnitude also
    carry exponents (``1.2345678901234567e-05``); all inside the declared range."""
    rng = np.random.default_rng(11)
    shapes: list[tuple[str, dict[str, Any], list[bytes | None]]] = []
    for fields in (5, 20, 100):
        names = [f"f{i:02d}" for i in range(fields)]
        values = (rng.random((n, fields)) * 1000).tolist()
        payloads: list[bytes | None] = [
            json.dumps(dict(zip(names, row, strict=True))).encode() for row in values
        ]
        shapes.append((f"{fields} floats, repr 17 digits", wide_stream(fields, "t"), payloads))
    names = [f"f{i:02d}" for i in range(20)]
    mixed = (rng.random((n, 20)) * 10.0 ** rng.integers(-9, 3, size=(n, 20))).tolist()
    shapes.append(
        (
            "20 floats, repr, 1e-9..1e3",
            wide_stream(20, "t"),
            [json.dumps(dict(zip(names, row, strict=True))).encode() for row in mixed],
        )
    )
    return shapes


def _fallback_shapes(n: int) -> list[tuple[str, dict[str, Any], list[bytes | None]]]:
    rng = np.random.default_rng(5)
    names = [f"f{i:02d}" for i in range(20)]
    rounded = np.round(rng.normal(50.0, 10.0, size=(n, 20)), 4).tolist()
    full = rng.normal(50.0, 10.0, size=(n, 20)).tolist()
    lenient = wide_stream(20, "t")
    with_note = {**lenient, "fields": {**lenient["fields"], "note": {"type": "string"}}}
    encode = msgspec.json.encode

    def rows(values: list[list[float]], **extra: Any) -> list[bytes | None]:
        return [encode({**dict(zip(names, row, strict=True)), **extra}) for row in values]

    escaped = rows(rounded, note='valve "B" \u00e9\ncheck')
    plain_note = rows(rounded, note="valve B check")
    one_pct: list[bytes | None] = [escaped[i] if i % 100 == 0 else plain_note[i] for i in range(n)]
    nested = rows(rounded, meta={"fw": "1.2.3", "tags": ["a", "b"]})
    fleet = {**lenient, "entity": "id", "event_time": "ts"}
    stamps = 1_790_000_000 + np.arange(n) * 0.25
    iso = np.datetime_as_string((stamps * 1e6).astype("datetime64[us]"), unit="ms")
    with_ids: list[bytes | None] = [
        encode({"id": f"dev-{i % 2000:05d}", "ts": f"{t}Z", **dict(zip(names, row, strict=True))})
        for i, (t, row) in enumerate(zip(iso.tolist(), rounded, strict=True))
    ]
    return [
        ("20 floats + id + ISO time", fleet, with_ids),
        ("20 floats + plain string", with_note, plain_note),
        ("20 floats + escaped string", with_note, escaped),
        ("  1% of rows escaped", with_note, one_pct),
        ("20 floats + nested object", lenient, nested),
        ("20 floats, 17 digits", lenient, rows(full)),
    ]


_STARTUP = """
import time
t0 = time.perf_counter()
from monitor.config.schema import StreamSpec
from monitor.pipeline.decode import StreamDecoder
from monitor.dev.synthetic import generate_wide, wide_stream
t1 = time.perf_counter()
decoder = StreamDecoder(StreamSpec.model_validate(wide_stream(20, "t")))
decoder.decode(generate_wide(10, fields=20))
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def _startup() -> list[tuple[str, float, float]]:
    """Import and first-decode seconds in fresh processes, cold then warm cache."""
    out = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": root}
        for label in ("cold (empty cache)", "warm (cached)", "warm (cached)"):
            res = subprocess.run(
                [sys.executable, "-c", _STARTUP],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            imp, first = map(float, res.stdout.split())
            out.append((label, imp, first))
    return out


def _against(root: str, repeat: int, n: int) -> None:
    """Another checkout's compiled decoder (``root``/monitor/pipeline/jsonscan.py, e.g.
    ``git worktree add /tmp/main main``) against this one, in this process, on the
    same batches, calls alternating: best CPU µs per event of ``repeat`` rounds."""
    import importlib.util

    path = os.path.join(root, "monitor", "pipeline", "jsonscan.py")
    found = importlib.util.spec_from_file_location("other_jsonscan", path)
    assert found is not None and found.loader is not None
    other = importlib.util.module_from_spec(found)
    sys.modules["other_jsonscan"] = other
    found.loader.exec_module(other)
    rng = np.random.default_rng(5)
    names = [f"f{i:02d}" for i in range(20)]
    rounded = np.round(rng.normal(50.0, 10.0, size=(n, 20)), 4).tolist()
    stamps = 1_790_000_000 + np.arange(n) * 0.25
    iso = np.datetime_as_string((stamps * 1e6).astype("datetime64[us]"), unit="ms").tolist()
    fleet = {**wide_stream(20, "t"), "entity": "id", "event_time": "ts"}
    encode = msgspec.json.encode

    def rows(times: list[Any]) -> list[bytes | None]:
        return [
            encode({"id": f"dev-{i % 2000:05d}", "ts": t, **dict(zip(names, r, strict=True))})
            for i, (t, r) in enumerate(zip(times, rounded, strict=True))
        ]

    shapes: list[tuple[str, dict[str, Any], list[bytes | None]]] = [
        (f"{f} floats", wide_stream(f, "t"), list(generate_wide(n, fields=f))) for f in (5, 20, 100)
    ]
    shapes.append(("20 floats + id + epoch", fleet, rows(stamps.tolist())))
    shapes.append(("20 floats + id + ISO time", fleet, rows([t + "Z" for t in iso])))
    shapes += _repr_shapes(n)
    print(f"\nA/B: {root} against this checkout (CPU µs/event, best of {repeat}, alternating)")
    print(f"{'shape':<28} {'other':>9} {'this':>9} {'msgspec':>9} {'fallback':>17}")
    for name, stream, payloads in shapes:
        plain = _spec(stream, "msgspec")
        theirs = other.CompiledDecoder(StreamDecoder(plain))
        ours = StreamDecoder(_spec(stream, "compiled"))
        reference = StreamDecoder(plain)
        calls = {"other": theirs.decode, "this": ours.decode, "msgspec": reference.decode}
        best = dict.fromkeys(calls, float("inf"))
        for decode in calls.values():
            decode(payloads)
        for _ in range(repeat):
            for key, decode in calls.items():
                c0 = time.process_time()
                decode(payloads)
                best[key] = min(best[key], time.process_time() - c0)
        back = [100 * d.decode(payloads).fallback_rows / n for d in (theirs, ours)]
        print(
            f"{name:<28} {1e6 * best['other'] / n:>9.3f} {1e6 * best['this'] / n:>9.3f} "
            f"{1e6 * best['msgspec'] / n:>9.3f} {back[0]:>7.0f}% / {back[1]:.0f}%"
        )


def _consumer(args: argparse.Namespace) -> None:
    import resource

    from confluent_kafka import Consumer, Message, TopicPartition

    from connectors.kafka import KafkaSource

    decoder = None
    via_source = args.mode.startswith("source")
    mode = args.mode.removeprefix("source").strip("+") or "consume"
    if mode != "consume":
        decoder = StreamDecoder(_spec(wide_stream(20, args.topic), mode))
        decoder.decode(generate_wide(10, fields=20))  # compile (or load) before the clock
    options = {
        "bootstrap.servers": args.bootstrap,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "queued.min.messages": 200_000,
        "session.timeout.ms": 6000,
    }
    group = f"bench-{time.monotonic_ns()}"
    if via_source:  # the service's source: KafkaSource.poll builds RawBatches
        source = KafkaSource(options, group, [args.topic], max_batch_events=args.batch)
    else:
        consumer = Consumer({**options, "group.id": group, "enable.auto.commit": False})
        consumer.assign([TopicPartition(args.topic, p, 0) for p in range(args.partitions)])
    seen = fallback = 0
    decode_s = decode_cpu = main_cpu0 = 0.0
    started = cpu0 = None
    deadline = time.monotonic() + 300
    while seen < args.events and time.monotonic() < deadline:
        if via_source:
            batches = [raw.values for raw in source.poll()]
        else:
            msgs = consumer.consume(args.batch, 1.0)
            batches = [list(map(Message.value, msgs))] if msgs else []
        if not batches:
            continue
        if started is None:  # the clock starts at the first batch (broker warm-up aside)
            started = time.perf_counter()
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu0 = ru.ru_utime + ru.ru_stime
            main_cpu0 = time.thread_time()
        for values in batches:
            if decoder is not None:
                t, c = time.perf_counter(), time.thread_time()
                fallback += decoder.decode(values).fallback_rows
                decode_s += time.perf_counter() - t
                decode_cpu += time.thread_time() - c
            seen += len(values)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - (cpu0 or 0.0)
    main_cpu = time.thread_time() - main_cpu0
    if via_source:
        source.close()
    else:
        consumer.close()
    print(
        json.dumps(
            {
                "mode": args.mode,
                "events": seen,
                "seconds": elapsed,
                "cpu": cpu,
                "decode": decode_s,
                "decode_cpu": decode_cpu,
                "main_cpu": main_cpu,
                "fallback": fallback,
            }
        )
    )


def _broker(args: argparse.Namespace) -> list[dict[str, Any]]:
    from connectors.embedded import EmbeddedBroker

    best: dict[str, dict[str, Any]] = {}
    topic = f"bench.decode.{time.monotonic_ns()}"
    modes = args.modes.split(",")
    with EmbeddedBroker() as broker:
        produce_s = produce_wide(broker.bootstrap, topic, args.events, 20, args.partitions)
        print(f"produced {args.events:,} events of 20 fields in {produce_s:.1f}s", flush=True)
        for mode in modes * args.rounds:  # interleaved rounds; the least CPU per mode is kept
            cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode]
            cmd += ["--bootstrap", broker.bootstrap, "--topic", topic]
            cmd += ["--events", str(args.events), "--batch", str(args.batch)]
            cmd += ["--partitions", str(args.partitions)]
            row = run_child(cmd, mode)
            if row is None:
                continue
            per_event = row["cpu"] / max(row["events"], 1)
            if mode not in best or per_event < best[mode]["cpu"] / max(best[mode]["events"], 1):
                best[mode] = row
    return [best[m] for m in modes if m in best]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000, help="broker events")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--skip-broker", action="store_true")
    parser.add_argument("--skip-startup", action="store_true", help="no table 3")
    parser.add_argument("--rounds", type=int, default=1, help="broker runs per mode (best kept)")
    parser.add_argument("--broker-only", action="store_true", help="table 4 alone")
    parser.add_argument("--against", help="another checkout: A/B of its compiled decoder")
    parser.add_argument("--modes", default="consume,compiled,msgspec,source,source+compiled")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        _consumer(args)
        return

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"numba cache: {os.environ.get('NUMBA_CACHE_DIR', 'next to the module')}\n")
    if args.against:
        _against(args.against, max(args.repeat, 15), args.batch)
        return
    if not args.broker_only:
        head = "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>5}"
        cols = ("shape", "bytes", "compiled", "msgspec", "cmp cpu", "msg cpu", "speedup")
        print(
            f"1-2. decode µs/event (batch of {args.batch:,}; wall best-of-{args.repeat},"
            " cpu = process time)"
        )
        print(head.format(*cols, "fallback", "same"))
        results = []
        for fields in (5, 20, 100):
            payloads: list[bytes | None] = list(generate_wide(args.batch, fields=fields))
            results.append(
                _compare(f"{fields} floats", wide_stream(fields, "t"), payloads, args.repeat)
            )
        for name, stream, payloads in _repr_shapes(args.batch) + _fallback_shapes(args.batch):
            results.append(_compare(name, stream, payloads, args.repeat))
        for r in results:
            print(
                head.format(
                    r["shape"],
                    f"{r['bytes']:.0f}",
                    f"{r['compiled_wall']:.3f}",
                    f"{r['msgspec_wall']:.3f}",
                    f"{r['compiled_cpu']:.3f}",
                    f"{r['msgspec_cpu']:.3f}",
                    f"{r['msgspec_cpu'] / r['compiled_cpu']:.2f}x",
                    f"{100 * r['fallback']:.1f}%",
                    "yes" if r["identical"] else "NO",
                )
            )

        if not args.skip_startup:
            print("\n3. start-up: import, then construct + first decode (fresh process each)")
            print("{:<22} {:>9} {:>18}".format("numba cache", "import s", "first decode s"))
            for label, imp, first in _startup():
                print(f"{label:<22} {imp:>9.2f} {first:>18.2f}")

    if args.skip_broker:
        return
    print()
    rows = _broker(args)
    print(f"\n4. consume + decode from the embedded broker, 20 floats, batches of {args.batch:,}")
    print(
        "{:<16} {:>9} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9}".format(
            "mode",
            "events",
            "events/s",
            "µs/event",
            "cpu µs/ev",
            "main cpu",
            "decode µs",
            "dec cpu",
            "fallback",
        )
    )
    for r in rows:
        n = r["events"] or 1
        rate = r["events"] / r["seconds"] if r["seconds"] else 0.0
        decoded = r["mode"] not in ("consume", "source")
        print(
            "{:<16} {:>9,} {:>10,.0f} {:>9.2f} {:>10.2f} {:>10.2f} {:>10} {:>10} {:>9}".format(
                r["mode"],
                r["events"],
                rate,
                1e6 * r["seconds"] / n,
                1e6 * r["cpu"] / n,
                1e6 * r["main_cpu"] / n,
                f"{1e6 * r['decode'] / n:.2f}" if decoded else "-",
                f"{1e6 * r['decode_cpu'] / n:.2f}" if decoded else "-",
                f"{r['fallback']:,}" if decoded else "-",
            )
        )


if __name__ == "__main__":
    main()
