"""Checks of a configuration against the files it names, before anything starts.

``load_config`` checks the document itself (types, keys, detector/field fits).
:func:`file_problems` goes one step further, as ``driftwarden validate`` and
``driftwarden run`` do before connecting anywhere: every baseline file exists,
loads, and holds a reference of the right kind for each field that runs
detectors; every librdkafka ``*.location`` file and webhook ``tls_ca_file``
exists. Paths are already absolute (``load_config`` resolves them against the
configuration file's directory).

>>> from monitor.config.schema import parse_config
>>> cfg = parse_config({
...     "kafka": {"bootstrap.servers": "127.0.0.1:9092"},
...     "streams": [{"name": "s", "topic": "t", "fields": {"x": {"type": "float"}},
...                  "baseline": {"file": "/nonexistent/base.json"}}],
... }, env={})
>>> file_problems(cfg)
['streams[s].baseline.file: /nonexistent/base.json does not exist']
"""

from __future__ import annotations

from pathlib import Path

from detectors.baseline import NumericBaseline, load_baseline
from monitor.config.schema import NUMERIC_TYPES, Config, FieldType, StreamSpec

__all__ = ["file_problems"]


def _missing(path: str | Path) -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{p} does not exist"
    if not p.is_file():
        return f"{p} is not a file"
    return None


def _baseline_problems(stream: StreamSpec) -> list[str]:
    path = stream.baseline.file
    if path is None:
        return []
    where = f"streams[{stream.name}].baseline.file"
    if (missing := _missing(path)) is not None:
        return [f"{where}: {missing}"]
    try:
        baseline = load_baseline(path)
    except Exception as exc:  # any unreadable artifact is a config problem, one line
        reason = " ".join(str(exc).split())[:200]
        return [f"{where}: {path} is not a baseline artifact: {type(exc).__name__}: {reason}"]
    problems = []
    for name, spec in stream.fields.items():
        if spec.type is FieldType.STRING or not spec.detector_specs():
            continue
        held = baseline.fields.get(name)
        if held is None:
            problems.append(
                f"{where}: baseline {baseline.id!r} has no reference for field {name!r} "
                f"(it has: {', '.join(sorted(baseline.fields)) or 'none'})"
            )
            continue
        numeric = spec.type in NUMERIC_TYPES
        if numeric != isinstance(held, NumericBaseline):
            kind = "numeric" if isinstance(held, NumericBaseline) else "categorical"
            problems.append(
                f"{where}: field {name!r} is {spec.type} but baseline {baseline.id!r} "
                f"holds a {kind} reference for it"
            )
    return problems


def file_problems(config: Config) -> list[str]:
    """Every problem with the files ``config`` names, one line each (empty: all good)."""
    problems: list[str] = []
    for stream in config.streams:
        problems += _baseline_problems(stream)
    for key, value in config.kafka.items():
        is_file = key.endswith((".location", ".keytab")) and value != "probe"
        if is_file and (missing := _missing(str(value))) is not None:
            problems.append(f'kafka."{key}": {missing}')
    if config.alerts is not None:
        for sink in config.alerts.sinks:
            if sink.tls_ca_file and (missing := _missing(sink.tls_ca_file)) is not None:
                problems.append(f"alerts.sinks[{sink.name}].tls_ca_file: {missing}")
    return problems
