"""Reading the dashboards back: every PromQL expression and the metric names it uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from grafana.generate import DASHBOARD_DIR, RULES_DIR

# Grafana placeholders replaced before a query goes to Prometheus itself.
SUBSTITUTIONS = {
    "$__rate_interval": "15s",
    "$stream": ".*",
    "$field": ".*",
    "$detector": ".*",
    "$model": ".*",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)


@dataclass(frozen=True)
class Target:
    """One query of one panel of one dashboard."""

    dashboard: str
    panel: str
    expr: str
    provisional: bool

    @property
    def promql(self) -> str:
        """The expression with Grafana's placeholders replaced."""
        out = self.expr
        for key, value in SUBSTITUTIONS.items():
            out = out.replace(key, value)
        return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed).

    >>> sorted(metric_names('sum by (stream) (rate(a_total{x="b_c"}[5m])) / on (s) up > 0'))
    ['a_total', 'up']
    """
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word, call = m.group(1), m.group(2)
        if call or word in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards by uid."""
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        out[doc["uid"]] = doc
    return out


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets() -> list[Target]:
    out = []
    for uid, doc in dashboards().items():
        for panel in panels(doc):
            provisional = "Drawn automatically" in panel.get("description", "")
            for t in panel.get("targets", []):
                out.append(Target(uid, panel["title"], t["expr"], provisional))
    return out


def rule_exprs() -> dict[str, str]:
    """Every rule's expression, by alert or record name."""
    out = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out
