"""Write the dashboards and Prometheus rules of the monitoring mixin.

``python -m grafana.generate`` (or ``make dashboards``) rewrites
``grafana/dashboards/*.json`` with grafana-foundation-sdk (a Grafana 11 build) and
``deploy/prometheus/rules/driftwarden.rules.yml`` (alerts) and
``deploy/prometheus/rules/driftwarden-recording.rules.yml`` from :mod:`grafana.mixin`.
``--check`` writes nothing and exits 1 when a committed file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as gcb
from grafana_foundation_sdk.builders import dashboard as gdb
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import statetimeline as gstl
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import text as gtext
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon
from grafana_foundation_sdk.models import dashboard as gdm
from grafana_foundation_sdk.models import prometheus as gpm
from grafana_foundation_sdk.models import text as gtm

from grafana.mixin import (
    ALERT_RULES,
    DASHBOARDS,
    RECORDING_RULES,
    DashboardSpec,
    PanelSpec,
    dashboard_rows,
)

__all__ = ["ROOT", "build_dashboard", "main", "outputs", "render_dashboard"]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DATASOURCE = gdm.DataSourceRef(type_val="prometheus", uid="${datasource}")
_GRID = 24

_VARIABLES: dict[str, tuple[str, str]] = {
    # name -> (label, query); each narrows by the variables before it
    "stream": ("Stream", "label_values(driftwarden_events_total, stream)"),
    "field": ("Field", 'label_values(driftwarden_drift_statistic{stream=~"$stream"}, field)'),
    "detector": (
        "Detector",
        'label_values(driftwarden_drift_statistic{stream=~"$stream", field=~"$field"}, detector)',
    ),
    "model": ("Model", "label_values(driftwarden_retrain_requests_total, model)"),
}


def _variable(name: str) -> gdb.QueryVariable:
    label, query = _VARIABLES[name]
    return (
        gdb.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(gdm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .sort(gdm.VariableSort.ALPHABETICAL_ASC)
        .current(gdm.VariableOption(selected=True, text="All", value="$__all"))
    )


def _targets(panel: PanelSpec) -> list[gprom.Dataquery]:
    out = []
    for i, q in enumerate(panel.queries):
        target = gprom.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if q.legend:
            target = target.legend_format(q.legend)
        if q.instant:
            target = target.instant().format(
                gpm.PromQueryFormat.TABLE
                if panel.kind == "table"
                else gpm.PromQueryFormat.TIME_SERIES
            )
        else:
            target = target.range()
        out.append(target)
    return out


def _panel(spec: PanelSpec, pid: int, pos: gdm.GridPos) -> Any:
    """The SDK builder of one panel (the SDK's panel builders share no base type)."""
    desc = spec.description + (
        "\n\nDrawn automatically from the metric family; may be empty until the feature "
        "that emits it runs."
        if spec.provisional
        else ""
    )
    if spec.kind == "text":
        return (
            gtext.Panel()
            .id(pid)
            .title(spec.title)
            .mode(gtm.TextMode.MARKDOWN)
            .content(spec.text)
            .grid_pos(pos)
        )
    builder: Any
    if spec.kind == "stat":
        builder = (
            gstat.Panel()
            .reduce_options(gcb.ReduceDataOptions().calcs(["lastNotNull"]))
            .graph_mode(gcommon.BigValueGraphMode.AREA)
        )
    elif spec.kind == "state-timeline":
        # 0/1 verdicts as coloured bands: green no drift, red drift
        builder = (
            gstl.Panel()
            .show_value(gcommon.VisibilityMode.NEVER)
            .merge_values(True)
            .row_height(0.8)
            .fill_opacity(80)
            .mappings(
                [
                    gdm.ValueMap(
                        options={
                            "0": gdm.ValueMappingResult(text="no drift", color="green"),
                            "1": gdm.ValueMappingResult(text="drift", color="red"),
                        },
                    )
                ]
            )
        )
    elif spec.kind == "table":
        builder = gtable.Panel().align(gcommon.FieldTextAlignment.AUTO).inspect(False)
        builder = builder.with_transformation(
            gdm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
        )
    else:
        builder = (
            gts.Panel()
            .line_width(1)
            .fill_opacity(10)
            .legend(
                gcb.VizLegendOptions()
                .display_mode(gcommon.LegendDisplayMode.TABLE)
                .placement(gcommon.LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["lastNotNull", "max"])
            )
            .tooltip(
                gcb.VizTooltipOptions()
                .mode(gcommon.TooltipDisplayMode.MULTI)
                .sort(gcommon.SortOrder.DESCENDING)
            )
        )
    builder = builder.id(pid).title(spec.title).datasource(DATASOURCE).unit(spec.unit).grid_pos(pos)
    if desc:
        builder = builder.description(desc)
    for target in _targets(spec):
        builder = builder.with_target(target)
    return builder


def build_dashboard(spec: DashboardSpec) -> gdm.Dashboard:
    """The SDK model of one dashboard, panels laid out row by row."""
    board = (
        gdb.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["driftwarden"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(gdm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            gdb.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(gdm.VariableOption(selected=True, text="Prometheus", value="prometheus"))
        )
    )
    for name in spec.variables:
        board = board.with_variable(_variable(name))
    # every driftwarden dashboard, by tag, keeping time range and variables
    board = board.link(
        gdb.DashboardLink("driftwarden")
        .type(gdm.DashboardLinkType.DASHBOARDS)
        .tags(["driftwarden"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )
    pid, y = 1, 0
    for row in dashboard_rows(spec):
        board = board.with_row(
            gdb.Row(row.title).id(pid).grid_pos(gdm.GridPos(h=1, w=_GRID, x=0, y=y))
        )
        pid, y = pid + 1, y + 1
        x, row_height = 0, 0
        for panel in row.panels:
            if x + panel.width > _GRID:
                x, y, row_height = 0, y + row_height, 0
            pos = gdm.GridPos(h=panel.height, w=panel.width, x=x, y=y)
            board = board.with_panel(_panel(panel, pid, pos))
            pid, x, row_height = pid + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return board.build()


def render_dashboard(spec: DashboardSpec) -> str:
    """The dashboard as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_dashboard(spec), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, like hand-written rules."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(doc: object, header: str) -> str:
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def render_alert_rules() -> str:
    rules: list[dict[str, Any]] = []
    for r in ALERT_RULES:
        annotations = {"summary": r.summary}
        if r.description:
            annotations["description"] = r.description
        rules.append(
            {
                "alert": r.alert,
                "expr": r.expr,
                "for": r.for_,
                "labels": {"severity": r.severity, **r.labels},
                "annotations": annotations,
            }
        )
    header = (
        "# Alert rules on driftwarden's own metrics (names defined in monitor/metrics.py).\n"
        "# GENERATED by `python -m grafana.generate` from grafana/mixin.py: edit there.\n"
        "# Tested by deploy/prometheus/tests/driftwarden.test.yml (promtool test rules).\n"
        "#\n"
        "# Assumptions, stated once:\n"
        "# - driftwarden_events_total counts every consumed event, valid or not, so the\n"
        "#   invalid ratio is invalid / total.\n"
        "# - The lag threshold (100k messages per topic) is an example: tune it to\n"
        '#   "how many minutes of traffic may we be behind" for your topics.\n'
        + "".join(f"# - {r.alert}: {r.comment}\n" for r in ALERT_RULES if r.comment)
    )
    return _yaml({"groups": [{"name": "driftwarden", "rules": rules}]}, header)


def render_recording_rules() -> str:
    rules = [{"record": r.record, "expr": r.expr} for r in RECORDING_RULES]
    header = (
        "# Recording rules for driftwarden's metrics: stream-level rates and ratios that\n"
        "# dashboards and your own alerts can reuse cheaply.\n"
        "# GENERATED by `python -m grafana.generate` from grafana/mixin.py: edit there.\n"
        "# Tested by deploy/prometheus/tests/recording.test.yml (promtool test rules).\n"
    )
    return _yaml({"groups": [{"name": "driftwarden-recording", "rules": rules}]}, header)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {DASHBOARD_DIR / f"{s.uid}.json": render_dashboard(s) for s in DASHBOARDS}
    out[RULES_DIR / "driftwarden.rules.yml"] = render_alert_rules()
    out[RULES_DIR / "driftwarden-recording.rules.yml"] = render_recording_rules()
    return out


def _stale(files: Iterable[tuple[Path, str]]) -> list[Path]:
    return [p for p, text in files if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    files = outputs()
    stale = _stale(files.items())
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        if path in stale:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            print(f"wrote {path.relative_to(ROOT)}")
    known = set(files)
    for old in DASHBOARD_DIR.glob("*.json"):
        if old not in known:
            print(f"note: {old.relative_to(ROOT)} is not generated (remove it if obsolete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
