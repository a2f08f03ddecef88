"""Emitted alerts and retrain requests match deploy/schemas/*.schema.json.

``jsonschema`` is not a dependency of the project; a small validator for the subset
of draft 2020-12 the two schemas use runs always, and ``jsonschema`` runs too when
it happens to be installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.alerting.engine import AlertEngine
from monitor.config.alerts import AlertsConfig

from .conftest import MakeFinding

SCHEMAS = Path(__file__).resolve().parents[2] / "deploy" / "schemas"
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}
_KNOWN = {
    "$schema", "$id", "$defs", "title", "description", "format", "type", "required",
    "properties", "additionalProperties", "enum", "const", "items", "minItems",
    "uniqueItems", "minLength", "pattern", "anyOf", "$ref", "minimum",
}  # fmt: skip


def _is(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in {"integer", "number"}:
        return False
    return isinstance(value, _TYPES[type_name])


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> None:
    """Raise AssertionError at the first violation (subset of draft 2020-12)."""
    unknown = set(schema) - _KNOWN
    assert not unknown, f"validator does not know {unknown}"
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        validate(value, node, root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is(value, t) for t in types), f"{path}: {value!r} is not {types}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                validate(value, sub, root, path)
                break
            except AssertionError as e:
                errors.append(str(e))
        else:
            raise AssertionError(f"{path}: no anyOf branch matched: {errors}")
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), f"{path}: too short"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r} !~ {schema['pattern']}"
    if _is(value, "number") and "minimum" in schema:
        assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: too few items"
        if schema.get("uniqueItems"):
            assert len({json.dumps(v, sort_keys=True) for v in value}) == len(value), path
        for i, item in enumerate(value):
            if "items" in schema:
                validate(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], root, f"{path}.{key}")
            elif extra is False:
                raise AssertionError(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate(item, extra, root, f"{path}.{key}")


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


def _documents(finding: MakeFinding) -> tuple[list[Any], list[Any]]:
    config = AlertsConfig.model_validate(
        {"resolve_after": 1, "links": {"dashboard": "http://grafana.local/d/x?s={stream}"}}
    )
    engine = AlertEngine(config, retrain_models={"sensors": ("sensor-model", "3")})
    batches = [
        [finding(True, subject=s, statistic=0.2 + i / 10) for i, s in enumerate("abcd")],
        [finding(True, partition=None, statistic=float("nan"), detector="psi")],
        [finding(False, subject=s) for s in "abcd"] + [finding(False, detector="psi")],
    ]
    alerts, requests = [], []
    for t, batch in enumerate(batches):
        out = engine.observe(batch, now=1.7e9 + t)
        alerts += [json.loads(a.to_json()) for a in out.alerts]
        requests += [json.loads(r.to_json()) for r in out.retrain_requests]
    assert len(alerts) == 4
    assert len(requests) == 1
    return alerts, requests


def test_documents_match_schemas(finding: MakeFinding) -> None:
    alerts, requests = _documents(finding)
    alert_schema = _schema("alert.schema.json")
    retrain_schema = _schema("retrain-request.schema.json")
    for doc in alerts:
        validate(doc, alert_schema, alert_schema)
    for doc in requests:
        validate(doc, retrain_schema, retrain_schema)


def test_validator_rejects_bad_documents(finding: MakeFinding) -> None:
    alerts, _ = _documents(finding)
    schema = _schema("alert.schema.json")
    for broken in (
        {**alerts[0], "status": "pending"},
        {**alerts[0], "id": "not-hex"},
        {**alerts[0], "extra": 1},
        {k: v for k, v in alerts[0].items() if k != "evidence"},
    ):
        with pytest.raises(AssertionError):
            validate(broken, schema, schema)


def test_with_jsonschema_when_installed(finding: MakeFinding) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    alerts, requests = _documents(finding)
    for name, docs in (("alert.schema.json", alerts), ("retrain-request.schema.json", requests)):
        validator = jsonschema.Draft202012Validator(_schema(name))
        validator.check_schema(validator.schema)
        for doc in docs:
            validator.validate(doc)
