"""A stream's share of the alert state: split out of, and merged back into, the whole.

The alert engine and the webhook dispatcher keep one state for every stream. The
process that judges a stream checkpoints only that stream's part (its episodes,
open alerts, cooldowns, alert sequence numbers, retrain cooldowns of its model, and
the webhook deliveries of its alerts), and the next judge merges that part into
what it holds for other streams. The states are the engine's and dispatcher's own
JSON (``AlertEngine.state()``, ``WebhookDispatcher.state()``).

>>> engine = {"version": 1, "incidents": [{"id": "a", "stream": "s"}],
...           "episodes": [["s", "x", "ks", "a", 0], ["t", "y", "ks", "b", 1]],
...           "cooldowns": [], "retrain_cooldowns": [], "sequence": [["t", "y", "ks", 2]]}
>>> part = engine_part(engine, "s", None)
>>> part["episodes"], part["sequence"]
([['s', 'x', 'ks', 'a', 0]], [])
>>> merged = merge_engine(engine, "t", engine_part(engine, "t", None))
>>> sorted(e[0] for e in merged["episodes"])
['s', 't']
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "alert_ids",
    "engine_part",
    "merge_engine",
    "merge_webhooks",
    "webhooks_part",
]

_KEYED = ("episodes", "cooldowns", "sequence")  # rows that start with the stream name


def engine_part(
    state: Mapping[str, Any], stream: str, model: tuple[str, str] | None
) -> dict[str, Any]:
    """The entries of an engine state that belong to ``stream`` (and its model)."""
    out: dict[str, Any] = {k: v for k, v in state.items() if k not in (*_KEYED, "incidents")}
    out["incidents"] = [i for i in state.get("incidents", []) if i.get("stream") == stream]
    for name in _KEYED:
        out[name] = [row for row in state.get(name, []) if row[0] == stream]
    out["retrain_cooldowns"] = [
        row
        for row in state.get("retrain_cooldowns", [])
        if model is not None and (row[0], row[1]) == model
    ]
    return out


def merge_engine(
    current: Mapping[str, Any],
    stream: str,
    part: Mapping[str, Any],
    model: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``current`` with ``stream``'s entries replaced by ``part``'s."""
    out = dict(current)
    out["incidents"] = [
        i for i in current.get("incidents", []) if i.get("stream") != stream
    ] + list(part.get("incidents", []))
    for name in _KEYED:
        kept = [row for row in current.get(name, []) if row[0] != stream]
        out[name] = kept + list(part.get(name, []))
    kept = [
        row
        for row in current.get("retrain_cooldowns", [])
        if model is None or (row[0], row[1]) != model
    ]
    out["retrain_cooldowns"] = kept + list(part.get("retrain_cooldowns", []))
    return out


def alert_ids(engine: Mapping[str, Any]) -> set[str]:
    """The ids of the alerts an engine state has open."""
    return {str(i["id"]) for i in engine.get("incidents", [])}


def _of(key: str) -> str:
    return key.rpartition(":")[0]  # delivery keys are "<alert id>:<status>"


def webhooks_part(state: Mapping[str, Any], ids: Collection[str]) -> dict[str, Any]:
    """The deliveries (pending and recently delivered) of the alerts ``ids``."""
    sinks = {
        name: {
            "pending": [d for d in s["pending"] if d["alert_id"] in ids],
            "delivered": [k for k in s["delivered"] if _of(k) in ids],
        }
        for name, s in state.get("sinks", {}).items()
    }
    return {**state, "sinks": sinks}


def merge_webhooks(
    current: Mapping[str, Any], part: Mapping[str, Any], ids: Collection[str]
) -> dict[str, Any]:
    """``current`` without the deliveries of ``ids``, plus ``part``'s."""
    sinks: dict[str, Any] = {}
    for name, s in current.get("sinks", {}).items():
        sinks[name] = {
            "pending": [d for d in s["pending"] if d["alert_id"] not in ids],
            "delivered": [k for k in s["delivered"] if _of(k) not in ids],
        }
    for name, s in part.get("sinks", {}).items():
        into = sinks.setdefault(name, {"pending": [], "delivered": []})
        into["pending"] = into["pending"] + list(s["pending"])
        into["delivered"] = into["delivered"] + list(s["delivered"])
    return {**current, "sinks": sinks}
