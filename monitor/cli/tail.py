"""``driftwarden tail TOPIC``: the dead-letter, alerts and retrain topics, readable.

Each record becomes one line. The kind is told from the record itself: dead letters
carry ``driftwarden.reason`` headers, alerts and retrain requests are JSON with
``status`` or ``trigger_id``; anything else is shown as a short, escaped preview.

>>> from connectors.reader import Record
>>> r = Record("dlq", 0, 7, 0, b"k", b"{oops", (("driftwarden.reason", b"invalid_json"),
...     ("driftwarden.topic", b"iot"), ("driftwarden.partition", b"2"),
...     ("driftwarden.offset", b"41"), ("driftwarden.detail", b"truncated")))
>>> format_record(r)
"dlq/0@7 DEAD LETTER invalid_json from iot/2@41: truncated | b'{oops'"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from connectors.reader import Record, read_topic

__all__ = ["format_record", "tail_command"]

_PREVIEW = 120


def _preview(value: bytes | None) -> str:
    if value is None:
        return "(null)"
    shown = repr(value[:_PREVIEW])
    return shown + (f" ... ({len(value):,} bytes)" if len(value) > _PREVIEW else "")


def format_record(r: Record) -> str:
    """One readable line for a record of a driftwarden output topic."""
    where = f"{r.topic}/{r.partition}@{r.offset}"
    headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
    if "driftwarden.reason" in headers:
        origin = (
            f"{headers.get('driftwarden.topic', '?')}/{headers.get('driftwarden.partition', '?')}"
            f"@{headers.get('driftwarden.offset', '?')}"
        )
        detail = headers.get("driftwarden.detail", "")
        return (
            f"{where} DEAD LETTER {headers['driftwarden.reason']} from {origin}: {detail} | "
            f"{_preview(r.value)}"
        )
    doc: Any = None
    if r.value:
        try:
            doc = json.loads(r.value)
        except ValueError:
            doc = None
    if isinstance(doc, dict) and "trigger_id" in doc:
        return (
            f"{where} RETRAIN {doc.get('model')} v{doc.get('version')} "
            f"[{doc.get('stream')}] {doc.get('reason')} (trigger {str(doc.get('trigger_id'))[:12]})"
        )
    if isinstance(doc, dict) and "status" in doc and "severity" in doc:
        return (
            f"{where} ALERT {str(doc['status']).upper()} {doc['severity']} [{doc.get('stream')}] "
            f"{doc.get('summary')} (id {str(doc.get('id'))[:12]})"
        )
    return f"{where} {_preview(r.value)}"


def tail_command(args: argparse.Namespace) -> int:
    """Print ``args.topic``'s records until it is idle for ``args.idle`` seconds."""
    options: dict[str, Any] = {"bootstrap.servers": args.bootstrap} if args.bootstrap else {}
    if args.config is not None:
        from monitor.config.schema import load_config

        options = {**dict(load_config(args.config).kafka), **options}
    if "bootstrap.servers" not in options:
        print("tail: give --bootstrap or --config", file=sys.stderr)
        return 2
    count = 0
    for record in read_topic(
        options,
        args.topic,
        from_beginning=not args.new_only,
        max_records=args.max,
        idle_seconds=args.idle,
    ):
        print(format_record(record), flush=True)
        count += 1
    print(f"({count} record(s))", file=sys.stderr)
    return 0
