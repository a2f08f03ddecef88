"""The generated dashboards and rules: SDK round trip, metric names, coverage, staleness."""

from __future__ import annotations

import json

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

from grafana import generate, mixin
from tests.grafana.promql import dashboards, metric_names, panels, rule_exprs, targets

register_default_plugins()

EXPECTED = {
    "driftwarden-overview",
    "driftwarden-drift",
    "driftwarden-data-quality",
    "driftwarden-service-health",
    "driftwarden-fleet",
    "driftwarden-models",
}
# Metrics Prometheus adds itself.
PROMETHEUS_OWN = {"up"}


def _exported_samples() -> set[str]:
    return {s for f in mixin.exported_families().values() for s in f.samples}


def _recorded() -> set[str]:
    return {r.record for r in mixin.RECORDING_RULES}


def test_every_dashboard_is_committed_and_current() -> None:
    """The committed JSON and rule files equal the generator's output (re-run it if not)."""
    assert set(dashboards()) == EXPECTED
    stale = [
        str(p.relative_to(generate.ROOT))
        for p, text in generate.outputs().items()
        if not p.exists() or p.read_text() != text
    ]
    assert not stale, f"stale, run `python -m grafana.generate`: {stale}"
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_dashboard_parses_back_with_the_sdk(uid: str) -> None:
    raw = dashboards()[uid]
    model = Dashboard.from_json(raw)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == raw  # nothing unknown or lost
    assert model.uid == uid and model.title and model.panels
    ids = []
    for panel in model.panels or []:
        assert isinstance(panel, Panel | RowPanel)
        ids.append(panel.id_val)
        if isinstance(panel, Panel):
            for target in panel.targets or []:
                assert not isinstance(target, UnknownDataquery), panel.title
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panels_do_not_overlap_and_use_declared_variables(uid: str) -> None:
    doc = dashboards()[uid]
    cells: set[tuple[int, int]] = set()
    for panel in panels(doc):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    declared = {v["name"] for v in doc["templating"]["list"]}
    for panel in panels(doc):
        for t in panel.get("targets", []):
            for var in ("stream", "field", "detector", "model"):
                if f"${var}" in t["expr"]:
                    assert var in declared, (panel["title"], var)


def test_dashboards_name_only_exported_metrics() -> None:
    known = _exported_samples() | _recorded() | PROMETHEUS_OWN
    unknown = {
        (t.dashboard, t.panel, name)
        for t in targets()
        for name in metric_names(t.expr)
        if name not in known
    }
    assert not unknown, f"dashboards query metrics the service does not export: {unknown}"


def test_rules_name_only_exported_metrics() -> None:
    known = _exported_samples() | PROMETHEUS_OWN
    unknown = {
        (rule, name) for rule, expr in rule_exprs().items() for name in metric_names(expr)
    } - {(r, n) for r, e in rule_exprs().items() for n in metric_names(e) if n in known}
    assert not unknown, unknown


def test_every_exported_family_is_on_a_dashboard() -> None:
    used = {name for t in targets() for name in metric_names(t.expr)}
    missing = sorted(
        f.name for f in mixin.exported_families().values() if not set(f.samples) & used
    )
    assert not missing, (
        f"metric families on no dashboard: {missing}; add a panel in grafana/mixin.py or a "
        "ROUTES prefix, then run `python -m grafana.generate`"
    )


def test_routed_families_are_drawn_from_their_type() -> None:
    fam = mixin.Family("driftwarden_model_quality", "gauge", "Quality", ("stream", "model"))
    panel = mixin.family_panel(fam)
    assert panel.provisional
    assert panel.queries[0].expr == 'driftwarden_model_quality{stream=~"$stream", model=~"$model"}'
    hist = mixin.Family("driftwarden_label_delay_seconds", "histogram", "Delay", ("model",))
    expr = mixin.family_panel(hist).queries[0].expr
    assert expr.startswith("histogram_quantile(0.95, sum by (le, model) (rate(")
    assert mixin.family_panel(hist).unit == "s"
    # the fleet and models dashboards show their routed families, or a note saying none yet
    for uid in ("driftwarden-fleet", "driftwarden-models"):
        rows = mixin.dashboard_rows(next(d for d in mixin.DASHBOARDS if d.uid == uid))
        last = rows[-1].panels
        assert last and (all(p.provisional for p in last) or last[0].kind == "text")


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, sink) (rate(x_bucket{a="up"}[1m]))) '
        "/ on (stream) group_left clamp_min(sum without (b) (y), 1e-9) or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y"}


def test_new_fleet_and_model_families_land_on_their_dashboards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the lead sees after merging the fleet and model metrics and regenerating."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from monitor.metrics import Metrics

    class WithNewFamilies(Metrics):
        def __init__(self, registry: CollectorRegistry | None = None) -> None:
            super().__init__(registry)
            r = self.registry
            # driftwarden_fleet_unhealthy_devices is a real family now (monitor/metrics.py).
            Counter("driftwarden_fleet_evictions", "Devices evicted", ["stream"], registry=r)
            # driftwarden_model_quality is a real family now (monitor/metrics.py).
            Histogram("driftwarden_label_delay_seconds", "Label delay", ["model"], registry=r)
            # driftwarden_field_violations is a real family now (monitor/metrics.py).

    monkeypatch.setattr(mixin, "Metrics", WithNewFamilies)
    exprs: dict[str, list[str]] = {}
    for spec in mixin.DASHBOARDS:
        raw = json.loads(generate.render_dashboard(spec))
        assert json.loads(json.dumps(Dashboard.from_json(raw), cls=JSONEncoder)) == raw
        exprs[spec.uid] = [t["expr"] for p in panels(raw) for t in p.get("targets", [])]
        if spec.uid in ("driftwarden-fleet", "driftwarden-models"):
            assert not any(p["type"] == "text" for p in panels(raw)), "the note must go"
    used = {uid: {n for e in es for n in metric_names(e)} for uid, es in exprs.items()}
    assert {"driftwarden_fleet_unhealthy_devices", "driftwarden_fleet_evictions_total"} <= used[
        "driftwarden-fleet"
    ]
    assert {"driftwarden_model_quality", "driftwarden_label_delay_seconds_bucket"} <= used[
        "driftwarden-models"
    ]
    assert "driftwarden_field_violations_total" in used["driftwarden-data-quality"]
    everything = set().union(*used.values())
    for family in mixin.exported_families().values():
        assert set(family.samples) & everything, family.name
