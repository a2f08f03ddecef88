"""The monitoring mixin: every dashboard panel, recording rule and alert rule, as data.

One source for what Grafana shows and what Prometheus evaluates. ``grafana.generate``
turns the specs below into dashboard JSON (with grafana-foundation-sdk) and rule files;
tests check every query against the metric families ``monitor.metrics.Metrics``
registers and against a real Prometheus scraping the service.

Fleet, model and label metrics (and a few others still being added) are not listed
panel by panel: :data:`ROUTES` sends every exported family whose name starts with a
given prefix to a dashboard, where :func:`family_panel` draws it from its type and
labels. Adding such a metric to ``monitor/metrics.py`` and re-running
``python -m grafana.generate`` puts it on a dashboard; a hand-written panel for it goes
in :data:`PANEL_OVERRIDES`.

Queries use Grafana's ``$__rate_interval`` and the template variables ``$stream``,
``$field``, ``$detector`` and ``$model`` (regex matchers, multi-value with "All").

>>> families = exported_families()
>>> families["driftwarden_events"].samples
('driftwarden_events_total', 'driftwarden_events_created')
>>> [d.uid.removeprefix("driftwarden-") for d in DASHBOARDS]
['overview', 'drift', 'data-quality', 'service-health', 'fleet', 'models']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from monitor.metrics import Metrics

__all__ = [
    "ALERT_RULES",
    "DASHBOARDS",
    "PANEL_OVERRIDES",
    "RECORDING_RULES",
    "ROUTES",
    "AlertRule",
    "DashboardSpec",
    "Family",
    "PanelSpec",
    "Query",
    "RecordingRule",
    "RowSpec",
    "dashboard_rows",
    "exported_families",
    "family_panel",
    "routed",
]

PanelKind = Literal["timeseries", "stat", "table", "state-timeline", "text"]
Variable = Literal["stream", "field", "detector", "model"]

# Grafana-side placeholders every query may use; the tests substitute them.
RATE = "$__rate_interval"
S = 'stream=~"$stream"'
SFD = 'stream=~"$stream", field=~"$field", detector=~"$detector"'
SF = 'stream=~"$stream", field=~"$field"'


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; ``legend`` is a Grafana legend template."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class PanelSpec:
    """A panel: what it shows (``queries``) and how (``kind``, ``unit``, size).

    ``provisional`` marks panels drawn automatically from a routed metric family (fleet,
    model, ...): they may show no data until the feature emitting them runs.
    """

    title: str
    queries: tuple[Query, ...]
    kind: PanelKind = "timeseries"
    unit: str = "short"
    description: str = ""
    width: int = 8
    height: int = 8
    provisional: bool = False
    text: str = ""  # markdown, for ``kind="text"``


@dataclass(frozen=True)
class RowSpec:
    """A titled row of panels laid out left to right, wrapping at Grafana's 24 columns."""

    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    """A dashboard: ``uid`` is also its file name (``grafana/dashboards/<uid>.json``)."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[RowSpec, ...]
    # where routed families go: appended as a row with this title
    routed_row: str = "More metrics"
    # markdown shown when no family is routed here yet
    empty_note: str = ""


@dataclass(frozen=True)
class Family:
    """One exported metric family: name without suffix, type, help, label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names Prometheus scrapes for this family."""
        if self.type == "counter":
            return (f"{self.name}_total", f"{self.name}_created")
        if self.type == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_count", "_sum", "_created"))
        if self.type == "summary":
            return (self.name, f"{self.name}_count", f"{self.name}_sum", f"{self.name}_created")
        if self.type == "info":
            return (f"{self.name}_info",)
        return (self.name,)


def exported_families() -> dict[str, Family]:
    """Every family ``Metrics`` registers on a fresh registry, by name."""
    metrics = Metrics(CollectorRegistry())
    out: dict[str, Family] = {}
    # every collector on the registry, attribute of Metrics or not
    for value in list(metrics.registry._collector_to_names):
        if isinstance(value, MetricWrapperBase):
            name = value._name
            kind = value._type or "untyped"
            out[name] = Family(name, kind, value._documentation, tuple(value._labelnames))
    return dict(sorted(out.items()))


# -- routing: families drawn automatically, by name prefix -> dashboard uid ---------------

ROUTES: tuple[tuple[str, str], ...] = (
    ("driftwarden_fleet_", "driftwarden-fleet"),
    ("driftwarden_device_", "driftwarden-fleet"),
    ("driftwarden_model_", "driftwarden-models"),
    ("driftwarden_label_", "driftwarden-models"),
    ("driftwarden_prediction_", "driftwarden-models"),
    ("driftwarden_field_violations", "driftwarden-data-quality"),
    ("driftwarden_dead_letters_truncated", "driftwarden-data-quality"),
    ("driftwarden_limit_hits", "driftwarden-data-quality"),
    ("driftwarden_produce_failures", "driftwarden-service-health"),
    ("driftwarden_stage_errors", "driftwarden-service-health"),
    ("driftwarden_quality_", "driftwarden-data-quality"),
    ("driftwarden_decode_fallback", "driftwarden-service-health"),
    ("driftwarden_rebalance", "driftwarden-service-health"),
)

# A hand-written panel for a routed family, by family name (replaces the drawn one).
PANEL_OVERRIDES: dict[str, PanelSpec] = {}

_UNITS = (("_seconds", "s"), ("_ratio", "percentunit"), ("_bytes", "bytes"))


def _filters(labels: tuple[str, ...]) -> str:
    parts = [f'{v}=~"${v}"' for v in ("stream", "field", "detector", "model") if v in labels]
    return "{" + ", ".join(parts) + "}" if parts else ""


def family_panel(family: Family) -> PanelSpec:
    """A panel drawn from a family's type and labels (``partition`` is summed over).

    >>> fam = Family("driftwarden_fleet_x", "counter", "X seen", ("stream", "partition"))
    >>> p = family_panel(fam)
    >>> p.queries[0].expr
    'sum by (stream) (rate(driftwarden_fleet_x_total{stream=~"$stream"}[$__rate_interval]))'
    """
    if family.name in PANEL_OVERRIDES:
        return PANEL_OVERRIDES[family.name]
    keep = tuple(label for label in family.labels if label != "partition")
    by = f"by ({', '.join(keep)}) " if keep else ""
    legend = " ".join("{{" + label + "}}" for label in keep) or family.name
    sel = _filters(family.labels)
    base = family.name.removesuffix("_total")
    unit = next((u for suffix, u in _UNITS if base.endswith(suffix)), "short")
    if family.type == "counter":
        expr = f"sum {by}(rate({family.name}_total{sel}[{RATE}]))"
        title = f"{family.help} (per second)"
    elif family.type in ("histogram", "summary"):
        if family.type == "histogram":
            le = f"by (le{', ' if keep else ''}{', '.join(keep)}) "
            expr = f"histogram_quantile(0.95, sum {le}(rate({family.name}_bucket{sel}[{RATE}])))"
            title = f"{family.help} (p95)"
        else:
            expr = f"sum {by}(rate({family.name}_count{sel}[{RATE}]))"
            title = f"{family.help} (per second)"
    else:
        # a gauge per partition is reduced to its worst value; others are shown as they are
        summed = keep != family.labels or not keep
        expr = f"max {by}({family.name}{sel})" if summed else f"{family.name}{sel}"
        title = family.help
    return PanelSpec(
        title=title,
        queries=(Query(expr, legend),),
        unit=unit,
        description=f"`{family.name}` ({family.type}), drawn from its type and labels.",
        provisional=True,
    )


def routed(uid: str) -> list[Family]:
    """The exported families :data:`ROUTES` sends to dashboard ``uid``."""
    out = []
    for family in exported_families().values():
        for prefix, target in ROUTES:
            if family.name.startswith(prefix):
                if target == uid:
                    out.append(family)
                break
    return out


# -- the hand-written dashboards ---------------------------------------------------------


def _ts(title: str, *queries: Query, unit: str = "short", desc: str = "", w: int = 8) -> PanelSpec:
    return PanelSpec(title, queries, "timeseries", unit, desc, width=w)


def _stat(title: str, expr: str, unit: str = "short", desc: str = "") -> PanelSpec:
    return PanelSpec(title, (Query(expr, instant=True),), "stat", unit, desc, width=4, height=4)


_RATIO_INVALID = (
    f"sum by (stream, reason) (rate(driftwarden_invalid_events_total{{{S}}}[{RATE}]))"
    f" / on (stream) group_left"
    f" clamp_min(sum by (stream) (rate(driftwarden_events_total{{{S}}}[{RATE}])), 1e-9)"
)


def _reason_ratio(reason: str) -> str:
    return (
        f'sum by (stream) (rate(driftwarden_invalid_events_total{{{S}, reason="{reason}"}}'
        f"[{RATE}]))"
        f" / clamp_min(sum by (stream) (rate(driftwarden_events_total{{{S}}}[{RATE}])), 1e-9)"
    )


OVERVIEW = DashboardSpec(
    uid="driftwarden-overview",
    title="driftwarden / Overview",
    description="Streams, event and invalid rates, lag, alerts firing and readiness.",
    variables=("stream",),
    rows=(
        RowSpec(
            "At a glance",
            (
                _stat(
                    "Streams",
                    "count(count by (stream) (driftwarden_events_total))",
                    desc="Streams that consumed at least one event.",
                ),
                _stat("Events/s", f"sum(rate(driftwarden_events_total{{{S}}}[{RATE}]))", "ops"),
                _stat(
                    "Invalid share",
                    f"sum(rate(driftwarden_invalid_events_total{{{S}}}[{RATE}]))"
                    f" / clamp_min(sum(rate(driftwarden_events_total{{{S}}}[{RATE}])), 1e-9)",
                    "percentunit",
                ),
                _stat(
                    "Alerts firing",
                    f"sum(driftwarden_alerts_firing{{{S}}}) or vector(0)",
                    desc="Alert episodes currently firing (0 where no alerts section is set).",
                ),
                _stat("Replicas ready", "sum(driftwarden_ready)"),
                _stat("Partitions assigned", "sum(driftwarden_assigned_partitions)"),
            ),
        ),
        RowSpec(
            "Traffic",
            (
                _ts(
                    "Events per second by stream",
                    Query(
                        f"sum by (stream) (rate(driftwarden_events_total{{{S}}}[{RATE}]))",
                        "{{stream}}",
                    ),
                    unit="ops",
                ),
                _ts(
                    "Invalid share by stream and reason",
                    Query(_RATIO_INVALID, "{{stream}} {{reason}}"),
                    unit="percentunit",
                    desc="Rejected events over all consumed events, per reject reason.",
                ),
                _ts(
                    "Dead letters per second",
                    Query(
                        f"sum by (stream) (rate(driftwarden_dead_letters_total{{{S}}}[{RATE}]))",
                        "{{stream}}",
                    ),
                    unit="ops",
                ),
                _ts(
                    "Consumer lag by topic",
                    Query("sum by (topic) (driftwarden_consumer_lag)", "{{topic}}"),
                    desc="Messages between each partition's high watermark and the next offset.",
                ),
                _ts(
                    "Event-time delay",
                    Query(
                        "time() - max by (stream) "
                        f"(driftwarden_last_event_timestamp_seconds{{{S}}})",
                        "{{stream}}",
                    ),
                    unit="s",
                    desc="Wall clock minus the largest event time seen.",
                ),
                _ts(
                    "Fields drifting",
                    Query(f"sum by (stream) (driftwarden_drift_detected{{{S}}})", "{{stream}}"),
                    desc="(field, detector) pairs whose latest verdict is drift.",
                ),
            ),
        ),
        RowSpec(
            "Alerts and readiness",
            (
                _ts(
                    "Alerts firing by stream and severity",
                    Query(
                        f"sum by (stream, severity) (driftwarden_alerts_firing{{{S}}})",
                        "{{stream}} {{severity}}",
                    ),
                ),
                _ts(
                    "Alert messages per second",
                    Query(
                        "sum by (stream, status, severity) "
                        f"(rate(driftwarden_alerts_total{{{S}}}[{RATE}]))",
                        "{{stream}} {{status}} {{severity}}",
                    ),
                    unit="ops",
                ),
                _ts(
                    "Readiness by instance",
                    Query("driftwarden_ready", "ready {{instance}}"),
                    Query(f"driftwarden_baseline_ready{{{S}}}", "baseline {{stream}}"),
                    Query('up{job=~".*driftwarden.*"}', "up {{instance}}"),
                    desc="1 = ready / baseline loaded / target scraped.",
                ),
            ),
        ),
    ),
)

DRIFT = DashboardSpec(
    uid="driftwarden-drift",
    title="driftwarden / Drift",
    description="Per stream and field: drift statistics, thresholds and verdicts over time.",
    variables=("stream", "field", "detector"),
    rows=(
        RowSpec(
            "Now",
            (
                PanelSpec(
                    "Statistic over threshold (latest)",
                    (
                        Query(
                            f"sort_desc(driftwarden_drift_statistic{{{SFD}}}"
                            f" / clamp_min(driftwarden_drift_threshold{{{SFD}}}, 1e-12))",
                            "{{stream}} {{field}} {{detector}}",
                            instant=True,
                        ),
                    ),
                    "table",
                    "short",
                    "Fields ranked by how far their statistic is past (>1) or below (<1) "
                    "the threshold.",
                    width=12,
                ),
                PanelSpec(
                    "Verdicts over time",
                    (
                        Query(
                            f"driftwarden_drift_detected{{{SFD}}}",
                            "{{stream}} {{field}} {{detector}}",
                        ),
                    ),
                    "state-timeline",
                    description="Red while the latest verdict is drift.",
                    width=12,
                ),
            ),
        ),
        RowSpec(
            "Statistics",
            (
                _ts(
                    "Drift statistic and threshold",
                    Query(f"driftwarden_drift_statistic{{{SFD}}}", "{{field}} {{detector}}"),
                    Query(
                        f"driftwarden_drift_threshold{{{SFD}}}",
                        "{{field}} {{detector}} threshold",
                    ),
                    w=12,
                ),
                _ts(
                    "p-value",
                    Query(f"driftwarden_drift_p_value{{{SFD}}}", "{{field}} {{detector}}"),
                    desc="Where the detector has one (KS, chi-square).",
                    w=12,
                ),
                _ts(
                    "ADWIN change points",
                    Query(
                        f"sum by (stream, field) (increase(driftwarden_adwin_changes_total{{{SF}}}"
                        f"[{RATE}]))",
                        "{{stream}} {{field}}",
                    ),
                    w=12,
                ),
                _ts(
                    "Baseline loaded",
                    Query(f"driftwarden_baseline_ready{{{S}}}", "{{stream}}"),
                    desc="0 while a stream still builds its baseline from its first events.",
                    w=12,
                ),
            ),
        ),
    ),
)

DATA_QUALITY = DashboardSpec(
    uid="driftwarden-data-quality",
    title="driftwarden / Data quality",
    description="Null, invalid and unseen-category rates per stream and field.",
    variables=("stream", "field"),
    rows=(
        RowSpec(
            "Rates",
            (
                _ts(
                    "Null share by field (last batch)",
                    Query(f"driftwarden_null_ratio{{{SF}}}", "{{stream}} {{field}}"),
                    unit="percentunit",
                ),
                _ts(
                    "Null share by field (rate)",
                    Query(
                        f"sum by (stream, field) (rate(driftwarden_field_nulls_total{{{SF}}}"
                        f"[{RATE}])) / on (stream) group_left clamp_min(sum by (stream) "
                        f"(rate(driftwarden_events_total{{{S}}}[{RATE}])), 1e-9)",
                        "{{stream}} {{field}}",
                    ),
                    unit="percentunit",
                ),
                _ts(
                    "Invalid share by reason",
                    Query(_RATIO_INVALID, "{{stream}} {{reason}}"),
                    unit="percentunit",
                ),
                _ts(
                    "Unseen-category share",
                    Query(_reason_ratio("unknown_category"), "{{stream}}"),
                    unit="percentunit",
                    desc="Events carrying a category absent from the declared categories.",
                ),
                _ts(
                    "Out-of-range share",
                    Query(_reason_ratio("out_of_range"), "{{stream}}"),
                    unit="percentunit",
                ),
                _ts(
                    "Missing or wrong-typed share",
                    Query(_reason_ratio("missing_field"), "{{stream}} missing"),
                    Query(_reason_ratio("wrong_type"), "{{stream}} wrong type"),
                    unit="percentunit",
                ),
            ),
        ),
        RowSpec(
            "Entities",
            (
                _ts(
                    "Entities tracked",
                    Query(f"sum by (stream) (driftwarden_entities{{{S}}})", "{{stream}}"),
                ),
                _ts(
                    "Events over the entity bound per second",
                    Query(
                        "sum by (stream) "
                        f"(rate(driftwarden_entity_overflow_events_total{{{S}}}[{RATE}]))",
                        "{{stream}}",
                    ),
                    unit="ops",
                    desc="Events whose entity did not fit max_entities.",
                ),
            ),
        ),
    ),
)

SERVICE_HEALTH = DashboardSpec(
    uid="driftwarden-service-health",
    title="driftwarden / Service health",
    description="Batch latency, stage costs, checkpoint age, sink deliveries, rebalances.",
    variables=("stream",),
    rows=(
        RowSpec(
            "Batches",
            (
                _ts(
                    "Batch duration",
                    *(
                        Query(
                            f"histogram_quantile({q}, sum by (le) "
                            f"(rate(driftwarden_batch_duration_seconds_bucket[{RATE}])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.95, 0.99)
                    ),
                    unit="s",
                ),
                _ts(
                    "Events per batch",
                    Query(
                        f"sum(rate(driftwarden_batch_events_sum[{RATE}])) / clamp_min(sum("
                        f"rate(driftwarden_batch_events_count[{RATE}])), 1e-9)",
                        "mean",
                    ),
                    Query(
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(driftwarden_batch_events_bucket[{RATE}])))",
                        "p95",
                    ),
                ),
                _ts(
                    "Stage cost (seconds per second)",
                    Query(
                        f"sum by (stage) (rate(driftwarden_stage_seconds_total[{RATE}]))",
                        "{{stage}}",
                    ),
                    unit="s",
                    desc="Share of a core each pipeline stage uses.",
                ),
                _ts(
                    "Since last processed batch",
                    Query(
                        "time() - max by (stream) "
                        f"(driftwarden_last_processed_timestamp_seconds{{{S}}})",
                        "{{stream}}",
                    ),
                    unit="s",
                ),
            ),
        ),
        RowSpec(
            "State and group",
            (
                _ts(
                    "Checkpoint age",
                    Query(
                        f"max by (stream, partition) (driftwarden_checkpoint_age_seconds{{{S}}})",
                        "{{stream}}[{{partition}}]",
                    ),
                    unit="s",
                ),
                _ts(
                    "Partitions assigned (rebalances show as steps)",
                    Query("driftwarden_assigned_partitions", "{{instance}}"),
                    Query(
                        "sum(changes(driftwarden_assigned_partitions[15m]))",
                        "assignment changes (15m)",
                    ),
                ),
                _ts(
                    "Kafka client errors per second",
                    Query(
                        f"sum by (kind) (rate(driftwarden_kafka_errors_total[{RATE}]))", "{{kind}}"
                    ),
                    unit="ops",
                ),
                _ts(
                    "Share of time waiting for records",
                    Query(f"rate(driftwarden_poll_seconds_total[{RATE}])", "{{instance}}"),
                    Query(
                        f"rate(driftwarden_batches_apart_total[{RATE}])"
                        f" / clamp_min(rate(driftwarden_batch_events_count[{RATE}]), 1e-9)",
                        "batches apart {{instance}}",
                    ),
                    unit="percentunit",
                    desc="Seconds per second the main loop spent in the source's poll. Near 1 on "
                    "a lagging consumer: fetching, not the stages, bounds the rate. Batches "
                    "apart: the share of batches whose drift stage ran on its worker thread "
                    "while the next batch was read and decoded (catching up on the direct "
                    "path; 0 when caught up).",
                ),
                _ts(
                    "Fetch queue (direct fetch)",
                    Query("driftwarden_fetch_queued_bytes", "queued {{instance}}"),
                    Query(
                        f"rate(driftwarden_fetch_bytes_total[{RATE}])"
                        f" / clamp_min(rate(driftwarden_fetch_requests_total[{RATE}]), 1e-9)",
                        "per request {{instance}}",
                    ),
                    unit="bytes",
                    desc="Record bytes fetched ahead and not yet processed, and record bytes "
                    "per fetch response. A full queue with lag growing: the stages bound the "
                    "rate; an empty one: the fetch does.",
                ),
            ),
        ),
        RowSpec(
            "Sinks",
            (
                _ts(
                    "Deliveries per second",
                    Query(f"sum by (sink) (rate(driftwarden_sink_sent_total[{RATE}]))", "{{sink}}"),
                    unit="ops",
                ),
                _ts(
                    "Failed and dropped deliveries per second",
                    Query(
                        f"sum by (sink, reason) (rate(driftwarden_sink_failed_total[{RATE}]))",
                        "{{sink}} failed: {{reason}}",
                    ),
                    Query(
                        f"sum by (sink) (rate(driftwarden_sink_dropped_total[{RATE}]))",
                        "{{sink}} dropped",
                    ),
                    unit="ops",
                ),
                _ts(
                    "Queued deliveries",
                    Query("sum by (sink) (driftwarden_sink_queued)", "{{sink}}"),
                ),
                _ts(
                    "Delivery latency (p95)",
                    Query(
                        "histogram_quantile(0.95, sum by (le, sink) "
                        f"(rate(driftwarden_sink_latency_seconds_bucket[{RATE}])))",
                        "{{sink}}",
                    ),
                    unit="s",
                ),
            ),
        ),
    ),
)

FLEET = DashboardSpec(
    uid="driftwarden-fleet",
    title="driftwarden / Fleet",
    description="Per-device health: unhealthy devices by condition, evictions.",
    variables=("stream",),
    rows=(
        RowSpec(
            "Devices tracked",
            (
                _ts(
                    "Entities tracked",
                    Query(f"sum by (stream) (driftwarden_entities{{{S}}})", "{{stream}}"),
                ),
            ),
        ),
    ),
    routed_row="Fleet health",
    empty_note=(
        "No fleet metric family (`driftwarden_fleet_*`, `driftwarden_device_*`) is "
        "exported by this build. Once the fleet stage adds them to `monitor/metrics.py`, "
        "`python -m grafana.generate` draws them here."
    ),
)

MODELS = DashboardSpec(
    uid="driftwarden-models",
    title="driftwarden / Models",
    description="Prediction drift, realized and estimated quality, label joins, retraining.",
    variables=("stream", "model"),
    rows=(
        RowSpec(
            "Prediction and input drift",
            (
                _ts(
                    "Drift of the model streams' fields (statistic / threshold)",
                    Query(
                        f"max by (stream, field) (driftwarden_drift_statistic{{{S}}} "
                        f"/ driftwarden_drift_threshold{{{S}}}) and on (stream) "
                        "group by (stream) "
                        '(driftwarden_model_pending_predictions{model=~"$model"})',
                        "{{stream}} {{field}}",
                    ),
                    desc="The prediction fields (score, class) and the input features of "
                    "streams that feed a model, each by its strongest detector: 1 is the "
                    "threshold.",
                    w=24,
                ),
            ),
        ),
        RowSpec(
            "Retraining",
            (
                _ts(
                    "Retrain requests per second",
                    Query(
                        'sum by (model) (rate(driftwarden_retrain_requests_total{model=~"$model"}'
                        f"[{RATE}]))",
                        "{{model}}",
                    ),
                    unit="ops",
                ),
            ),
        ),
    ),
    routed_row="Model quality",
    empty_note=(
        "No model metric family (`driftwarden_model_*`, `driftwarden_label_*`, "
        "`driftwarden_prediction_*`) is exported by this build. Once the model stage adds "
        "them to `monitor/metrics.py`, `python -m grafana.generate` draws them here."
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (
    OVERVIEW,
    DRIFT,
    DATA_QUALITY,
    SERVICE_HEALTH,
    FLEET,
    MODELS,
)


def dashboard_rows(spec: DashboardSpec) -> tuple[RowSpec, ...]:
    """The dashboard's rows with its routed families appended (or the empty note)."""
    families = routed(spec.uid)
    if families:
        extra = RowSpec(spec.routed_row, tuple(family_panel(f) for f in families))
        return (*spec.rows, extra)
    if spec.empty_note:
        note = PanelSpec(spec.routed_row, (), "text", width=24, height=4, text=spec.empty_note)
        return (*spec.rows, RowSpec(spec.routed_row, (note,)))
    return spec.rows


# -- Prometheus rules --------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingRule:
    """``record: name`` evaluating ``expr``."""

    record: str
    expr: str


@dataclass(frozen=True)
class AlertRule:
    """An alerting rule; ``annotations`` summary and description are Go templates."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str = ""
    comment: str = ""
    labels: dict[str, str] = field(default_factory=dict)


RECORDING_RULES: tuple[RecordingRule, ...] = (
    RecordingRule(
        "stream:driftwarden_events:rate5m",
        "sum by (stream) (rate(driftwarden_events_total[5m]))",
    ),
    RecordingRule(
        "stream_reason:driftwarden_invalid_events:rate5m",
        "sum by (stream, reason) (rate(driftwarden_invalid_events_total[5m]))",
    ),
    RecordingRule(
        "stream:driftwarden_invalid_events:ratio_rate5m",
        "sum by (stream) (rate(driftwarden_invalid_events_total[5m]))\n  /\n"
        "clamp_min(sum by (stream) (rate(driftwarden_events_total[5m])), 1e-9)\n",
    ),
    RecordingRule(
        "stream:driftwarden_fields_drifting:sum",
        "sum by (stream) (driftwarden_drift_detected)",
    ),
    RecordingRule(
        "topic:driftwarden_consumer_lag:sum", "sum by (topic) (driftwarden_consumer_lag)"
    ),
    RecordingRule(
        "job:driftwarden_batch_duration_seconds:p95_5m",
        "histogram_quantile(0.95, sum by (job, le) "
        "(rate(driftwarden_batch_duration_seconds_bucket[5m])))",
    ),
)

ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "DriftwardenDriftDetected",
        "max by (stream, field, detector) (driftwarden_drift_detected) == 1",
        "5m",
        "warning",
        "Drift on {{ $labels.stream }}/{{ $labels.field }} ({{ $labels.detector }})",
        "{{ $labels.detector }} has reported drift on field {{ $labels.field }} of stream "
        "{{ $labels.stream }} for 5 minutes.",
    ),
    AlertRule(
        "DriftwardenInvalidEventRateHigh",
        "sum by (stream) (rate(driftwarden_invalid_events_total[5m]))\n  /\n"
        "clamp_min(sum by (stream) (rate(driftwarden_events_total[5m])), 1e-9)\n  > 0.05\n",
        "10m",
        "warning",
        "More than 5% invalid events on {{ $labels.stream }}",
        "{{ $value | humanizePercentage }} of the events of stream {{ $labels.stream }} were "
        "rejected over the last 5 minutes (for 10 minutes).",
    ),
    AlertRule(
        "DriftwardenConsumerLagHigh",
        "sum by (topic) (driftwarden_consumer_lag) > 100000",
        "10m",
        "warning",
        "Consumer lag on {{ $labels.topic }} above 100k messages",
        "Lag is {{ $value | humanize }} messages and has been high for 10 minutes.",
    ),
    AlertRule(
        "DriftwardenConsumptionStalled",
        "(time() - max by (stream) (driftwarden_last_processed_timestamp_seconds) > 300)\n"
        "and on (stream)\n"
        "(\n"
        "  sum by (stream) (\n"
        "    sum by (topic) (driftwarden_consumer_lag)\n"
        "      * on (topic) group_right\n"
        "    group by (stream, topic) (driftwarden_events_total)\n"
        "  ) > 0\n"
        ")\n",
        "1m",
        "critical",
        "Stream {{ $labels.stream }} stalled with lag outstanding",
        "No batch of {{ $labels.stream }} processed for {{ $value | humanizeDuration }} while "
        "its topics have consumer lag.",
        comment="No batch processed for 5 minutes while its topics still have lag; streams "
        "map to topics through the labels of driftwarden_events_total.",
    ),
    AlertRule(
        "DriftwardenCheckpointStale",
        "max by (stream, partition) (driftwarden_checkpoint_age_seconds) > 600",
        "1m",
        "warning",
        "Checkpoint of {{ $labels.stream }}[{{ $labels.partition }}] older than 10m",
        "The last durable checkpoint is {{ $value | humanizeDuration }} old: a restart would "
        "reprocess that much of the stream.",
    ),
    AlertRule(
        "DriftwardenNotReady",
        "driftwarden_ready == 0",
        "5m",
        "critical",
        "driftwarden {{ $labels.instance }} not ready for 5 minutes",
        "The service reports driftwarden_ready 0 (restoring, or failing to consume).",
    ),
    AlertRule(
        "DriftwardenProduceFailing",
        "sum by (instance, topic) (increase(driftwarden_produce_failures_total[5m])) > 0",
        "1m",
        "critical",
        "The broker refuses records for {{ $labels.topic }}",
        "Dead letters or alerts are refused and retried; the batch's offsets are not "
        "committed until they are taken, so consumption stands still.",
    ),
    AlertRule(
        "DriftwardenStageFailing",
        "sum by (instance, stream, stage) (increase(driftwarden_stage_errors_total[15m])) > 0",
        "0m",
        "warning",
        "Stage {{ $labels.stage }} of stream {{ $labels.stream }} fails on some batches",
        "The stream goes on; the failed batches' events are in the dead-letter topic as "
        "stage_error (replay them once the fault is fixed). The service log has the "
        "traceback.",
    ),
    AlertRule(
        "DriftwardenDown",
        'up{job="driftwarden"} == 0',
        "5m",
        "critical",
        "driftwarden target {{ $labels.instance }} down for 5 minutes",
    ),
)
