"""The Grafana dashboard for Rampart, built in code.

``deploy/grafana/rampart.json`` is this module's output, committed so that
Grafana can provision it without Python; a unit test fails when the two differ,
so edit this module and regenerate::

    python -m telemetry.dashboard --out deploy/grafana/rampart.json

Every query reads the series the gateway exports (``telemetry.metrics``) or the
recording rules in ``deploy/prometheus/rules/recording.yml``, so the panels show
the same numbers the alert rules and the rollout controller judge. The lines
drawn on the guardrail panels are the rollout's default guardrails
(``rollout.core.plan.Guardrails``) and the alert rules' thresholds
(``deploy/prometheus/rules/alerts.yml``); tests hold both to their sources.

Needs the ``dev`` extras (``grafana-foundation-sdk``); nothing on the request
path imports this module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

UID = "rampart-gateway"
ROW_IDS_FROM = 100
TITLE = "Rampart gateway"

# Thresholds of the alert rules in deploy/prometheus/rules/alerts.yml (the
# backstop that rolls a rollout back from outside the gateway).
ALERT_P99_DELTA_S = 0.1          # RampartCandidateP99High
ALERT_ERROR_RATIO_DELTA = 0.05   # RampartCandidateErrorRateHigh
ALERT_STUCK_AFTER_S = 1800.0     # RampartRolloutStuck
ALERT_PSI = 0.2                  # RampartFeatureDrift
ALERT_SHADOW_AGREEMENT = 0.9     # RampartShadowDisagrees
ALERT_LOG_WRITE_ERRORS = 0.0     # RampartLogWritesFailing: any failed write
ALERT_LOG_DROPPED_ROWS = 0.0     # RampartLogRowsDropped: any dropped row
ALERT_LOG_SPILL_ERRORS = 0.0     # RampartLogJournalFailing: any failed journal write

# The guardrails a rollout gets when its plan names none
# (rollout.core.plan.Guardrails; telemetry may not import serving, which that
# module does, so a test holds these to it instead).
GUARDRAIL_P99_DELTA_S = 0.05
GUARDRAIL_ERROR_RATIO_DELTA = 0.01

# Panels share one datasource variable, so the dashboard works against any
# Prometheus that Grafana knows, not only the one provisioned by compose.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Selectors from the dashboard's variables.
MODEL = 'model_name=~"$model"'
ROLLOUT = 'rollout_id=~"$rollout"'
RATE = "[$__rate_interval]"

_BY_VERSION_ARM = "model_name, model_version, arm"


def _query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)
            .datasource(DATASOURCE))


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (dash.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=value, color=color) for value, color in steps]))


def _series(panel_id: int, title: str, description: str, unit: str,
            queries: Sequence[prometheus.Dataquery], *, width: int = 12,
            thresholds: dash.ThresholdsConfig | None = None) -> timeseries.Panel:
    panel = (
        timeseries.Panel().id(panel_id).title(title).description(description)
        .datasource(DATASOURCE).unit(unit).span(width).height(8)
        .legend(common_builders.VizLegendOptions().show_legend(True)
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM))
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                 .sort(common.SortOrder.DESCENDING))
    )
    for query in queries:
        panel = panel.with_target(query)
    if thresholds is not None:
        # Draw the thresholds as dashed lines: the series stay coloured by
        # their own palette, the lines say where a guardrail or alert sits.
        panel = panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig()
            .mode(common.GraphThresholdsStyleMode.DASHED))
    return panel


def _stat(panel_id: int, title: str, description: str, unit: str,
          query: prometheus.Dataquery, thresholds: dash.ThresholdsConfig,
          mappings: list[models.ValueMapping] | None = None, width: int = 8) -> stat.Panel:
    panel = (
        stat.Panel().id(panel_id).title(title).description(description)
        .datasource(DATASOURCE).unit(unit).span(width).height(5)
        .with_target(query.instant())
        .thresholds(thresholds)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if mappings:
        panel = panel.mappings(mappings)
    return panel


Section = tuple[str, list[timeseries.Panel | stat.Panel]]


def _traffic_row() -> Section:
    requests = (f"sum by ({_BY_VERSION_ARM}) (rampart:requests:rate1m{{{MODEL}}})")
    errors = (
        f'sum by ({_BY_VERSION_ARM}) (rate(rampart_requests_total{{{MODEL}, status="error"}}'
        f"{RATE}))\n/\n"
        f'sum by ({_BY_VERSION_ARM}) (rate(rampart_requests_total{{{MODEL}, status=~"ok|error"}}'
        f"{RATE}))"
    )
    statuses = f"sum by (model_name, model_version, status) (rampart:requests:rate1m{{{MODEL}}})"
    return "Traffic and errors", [
        _series(
            1, "Requests per second by version and arm",
            "Prediction requests answered, per model version and experiment arm "
            "(arm \"default\" is the default route).",
            "reqps", [_query(requests, "{{model_name}} v{{model_version}} / {{arm}}")]),
        _series(
            2, "Error ratio by version and arm",
            "Share of answered requests that failed, per model version and arm.",
            "percentunit", [_query(errors, "{{model_name}} v{{model_version}} / {{arm}}")]),
        _series(
            3, "Requests per second by status",
            "Every outcome, including requests refused before scoring.",
            "reqps", [_query(statuses, "v{{model_version}} {{status}}")], width=24),
    ]


def _latency(quantile: float, selector: str, by: str) -> str:
    return (f"histogram_quantile({quantile},\n  sum by ({by}, le) ("
            f'rate(rampart_request_latency_seconds_bucket{{{selector}, status=~"ok|error"}}'
            f"{RATE})))")


def _rollout_delta(series: str) -> str:
    """Candidate minus baseline, per rollout: the quantity its guardrail and alert judge."""
    def side(arm: str) -> str:
        return f'max by (rollout_id) ({series}{{{ROLLOUT}, rollout_arm="{arm}"}})'
    return f"{side('candidate')}\n- on (rollout_id)\n{side('baseline')}"


def _latency_row() -> Section:
    legend = "{{model_name}} v{{model_version}} / {{arm}}"
    return "Latency against the guardrails", [
        _series(
            4, "p50 latency by version and arm",
            "Median time from request received to response ready.",
            "s", [_query(_latency(0.5, MODEL, _BY_VERSION_ARM), legend)]),
        _series(
            5, "p99 latency by version and arm",
            "99th percentile time from request received to response ready.",
            "s", [_query(_latency(0.99, MODEL, _BY_VERSION_ARM), legend)]),
        _series(
            6, "Rollout: candidate p99 minus baseline p99",
            "Over one minute. Dashed lines: the default guardrail "
            f"({GUARDRAIL_P99_DELTA_S * 1000:g} ms) a rollout checks at each step, and the "
            f"alert ({ALERT_P99_DELTA_S * 1000:g} ms) that rolls it back from Prometheus.",
            "s",
            [_query(_rollout_delta("rampart:request_latency_seconds:p99_1m"), "{{rollout_id}}")],
            thresholds=_thresholds((None, "green"), (GUARDRAIL_P99_DELTA_S, "orange"),
                                   (ALERT_P99_DELTA_S, "red"))),
        _series(
            7, "Rollout: candidate error ratio minus baseline",
            "Over one minute. Dashed lines: the default guardrail "
            f"({GUARDRAIL_ERROR_RATIO_DELTA:.0%}) and the alert ({ALERT_ERROR_RATIO_DELTA:.0%}).",
            "percentunit",
            [_query(_rollout_delta("rampart:request_error_ratio_1m"), "{{rollout_id}}")],
            thresholds=_thresholds((None, "green"), (GUARDRAIL_ERROR_RATIO_DELTA, "orange"),
                                   (ALERT_ERROR_RATIO_DELTA, "red"))),
    ]


def _rollout_row() -> Section:
    rollout = 'rollout=~"$rollout"'
    weight = f"rampart_rollout_candidate_weight_bp{{{rollout}}} / 100"
    phase_map: list[models.ValueMapping] = [models.ValueMap(options={
        "0": models.ValueMappingResult(text="ended", color="blue", index=0),
        "1": models.ValueMappingResult(text="in progress", color="green", index=1),
    })]
    return "Rollout", [
        _stat(
            8, "Phase",
            "In progress while pending, progressing or paused; ended once promoted, "
            "rolled back or aborted.",
            "none", _query(f"rampart_rollout_active{{{rollout}}}", "{{rollout}}"),
            _thresholds((None, "blue"), (1, "green")), phase_map),
        _stat(
            9, "Candidate weight (current step)",
            "Share of the rollout's traffic routed to the candidate.",
            "percent", _query(weight, "{{rollout}}"),
            _thresholds((None, "blue"), (100, "green"))),
        _stat(
            10, "Time since the last step or phase change",
            f"The RampartRolloutStuck alert fires past {ALERT_STUCK_AFTER_S:g} s while "
            "a rollout is in progress.",
            "s",
            _query(f"(time() - rampart_rollout_last_transition_timestamp_seconds{{{rollout}}})"
                   f"\nand on (rollout) (rampart_rollout_active{{{rollout}}} == 1)",
                   "{{rollout}}"),
            _thresholds((None, "green"), (ALERT_STUCK_AFTER_S, "red"))),
        _series(
            11, "Candidate weight over time",
            "Each step of a rollout is a level; a drop to zero is a rollback.",
            "percent", [_query(weight, "{{rollout}}")], width=12),
        _series(
            12, "Rollout traffic by arm",
            "Requests per second the rollout's split sent to the baseline and the candidate.",
            "reqps",
            [_query(f'sum by (rollout_id, rollout_arm) (rampart:requests:rate1m{{{ROLLOUT}, '
                    f'rollout_id!=""}})', "{{rollout_id}} {{rollout_arm}}")],
            width=12),
    ]


def _parity_row() -> Section:
    shadow_by = "model_name, primary_version, shadow_version"
    return "Shadow agreement and drift", [
        _series(
            13, "Shadow label agreement",
            "Share of recent mirrored requests where shadow and primary give the same label. "
            f"The RampartShadowDisagrees alert fires below {ALERT_SHADOW_AGREEMENT:.0%}.",
            "percentunit",
            [_query(f"max by ({shadow_by}) (rampart_shadow_label_agreement{{{MODEL}}})",
                    "{{model_name}} v{{shadow_version}} vs v{{primary_version}}")],
            thresholds=_thresholds((None, "red"), (ALERT_SHADOW_AGREEMENT, "green"))),
        _series(
            14, "Shadow |score difference| quantiles",
            "Quantiles of |shadow - primary| score over recent mirrored requests.",
            "none",
            [_query(f"max by ({shadow_by}, quantile) (rampart_shadow_score_abs_diff{{{MODEL}}})",
                    "v{{shadow_version}} vs v{{primary_version}} q{{quantile}}")]),
        _series(
            15, "Shadow calls by status",
            "Mirrored calls scored, failed or dropped because the shadow queue was full.",
            "reqps",
            [_query(f"sum by (model_name, model_version, status) "
                    f"(rate(rampart_shadow_requests_total{{{MODEL}}}{RATE}))",
                    "v{{model_version}} {{status}}")]),
        _series(
            16, "Feature drift (PSI)",
            "Population stability index of recent requests against the version's training "
            f"data, per feature. The RampartFeatureDrift alert fires above {ALERT_PSI:g}.",
            "none",
            [_query(f"max by (model_name, model_version, feature) "
                    f"(rampart_feature_psi{{{MODEL}}})",
                    "v{{model_version}} {{feature}}")],
            thresholds=_thresholds((None, "green"), (ALERT_PSI, "red"))),
    ]


def _logs_row() -> Section:
    def per_log(panel_id: int, title: str, description: str, counter: str,
                alert_above: float) -> timeseries.Panel:
        """One counter of both logs, per replica, red past its alert's threshold."""
        return _series(
            panel_id, title, description, "short",
            [_query(f"sum by (instance) (increase(rampart_{log}_{counter}_total{RATE}))",
                    f"{{{{instance}}}} {log.replace('_', ' ')}", ref_id=chr(ord("A") + i))
             for i, log in enumerate(("decision_log", "outcomes_log"))],
            thresholds=_thresholds((None, "green"), (alert_above + 1, "red")))

    return "Decision and outcome logs", [
        per_log(17, "Log write failures",
                "Failed writes of each replica's decision and outcomes logs (disk full, "
                "read-only, object store away). The rows are kept and written again; the "
                "RampartLogWritesFailing alert fires on any.",
                "write_errors", ALERT_LOG_WRITE_ERRORS),
        per_log(18, "Log rows dropped",
                "Rows given up after failed writes, beyond what a replica keeps "
                "(decision_log.max_buffered_rows): missing from analysis. The "
                "RampartLogRowsDropped alert fires on any.",
                "dropped", ALERT_LOG_DROPPED_ROWS),
        per_log(19, "Log journal failures",
                "Failed writes of the local journal (decision_log.spill_dir) that keeps "
                "unwritten rows safe from a replica's crash. Serving and logging go on; a "
                "SIGKILL would lose unwritten rows. The RampartLogJournalFailing alert "
                "fires on any.",
                "spill_errors", ALERT_LOG_SPILL_ERRORS),
    ]


def _variables() -> list[dash.DatasourceVariable | dash.QueryVariable]:
    def labels(name: str, label: str, query: str) -> dash.QueryVariable:
        return (dash.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
                .multi(True).include_all(True).all_value(".*")
                .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(models.VariableSort.ALPHABETICAL_ASC))
    return [
        dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        labels("model", "Model", "label_values(rampart_requests_total, model_name)"),
        labels("rollout", "Rollout", "label_values(rampart_rollout_active, rollout)"),
    ]


def build_dashboard() -> models.Dashboard:
    """The dashboard as Grafana's typed model."""
    builder = (
        dash.Dashboard(TITLE).uid(UID).tags(["rampart", "ray-serve"])
        .description("Traffic, errors and latency per model version and arm; staged "
                     "rollouts against their guardrails; shadow agreement and drift.")
        .refresh("30s").time("now-1h", "now").timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
    )
    for variable in _variables():
        builder = builder.with_variable(variable)
    # Rows are separators with their panels after them at the top level (an
    # expanded row), so every panel shows when the dashboard opens.
    sections = (_traffic_row(), _latency_row(), _rollout_row(), _parity_row(), _logs_row())
    for index, (title, panels) in enumerate(sections):
        # Panel ids run from 1; rows take ids of their own past them.
        builder = builder.with_row(dash.Row(title).id(ROW_IDS_FROM + index))
        for panel in panels:
            builder = builder.with_panel(panel)
    return builder.build()


def dashboard_json() -> str:
    """The dashboard as the JSON that Grafana provisions: stable key order, one
    trailing newline, so the committed file can be compared byte for byte."""
    encoded = json.dumps(build_dashboard(), cls=JSONEncoder, indent=2, sort_keys=True)
    return encoded + "\n"


def write_dashboard(path: Path) -> Path:
    """Write the dashboard JSON to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_json(), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telemetry.dashboard",
                                     description="Write Rampart's Grafana dashboard JSON.")
    parser.add_argument("--out", type=Path, default=Path("deploy/grafana/rampart.json"),
                        help="where to write it (default: %(default)s)")
    args = parser.parse_args(argv)
    print(write_dashboard(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
