"""``rampart plan`` and ``rampart analyze``: power planning and experiment analysis."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from serving.cli.common import DEFAULT_CONFIG, CliError, load_config_or_exit


def add_commands(sub: Any) -> None:
    """Register ``plan`` and ``analyze`` on the top-level sub-parser set."""
    plan = sub.add_parser(
        "plan", help="sample size per arm, MDE and duration before an experiment",
        description="Sample size per arm for a two-arm test (normal approximation, "
                    "two-sided), and the duration from daily traffic and allocation.")
    plan.add_argument("--metric-type", choices=("proportion", "mean"), required=True)
    plan.add_argument("--baseline", type=float,
                      help="control rate (proportion) or mean (needed for a relative MDE)")
    plan.add_argument("--std-dev", type=float, help="per-unit standard deviation (mean metrics)")
    plan.add_argument("--mde", type=float, required=True, help="minimum detectable effect")
    plan.add_argument("--relative", action="store_true",
                      help="the MDE is a fraction of the baseline (default: absolute)")
    plan.add_argument("--alpha", type=float, default=0.05)
    plan.add_argument("--power", type=float, default=0.8)
    plan.add_argument("--daily-units", type=float, help="units a day eligible for the experiment")
    plan.add_argument("--allocation", type=float, default=1.0,
                      help="share of daily units entering the experiment (default 1)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

    analyze = sub.add_parser(
        "analyze", help="analyse an experiment from the decision and outcome logs",
        description="SRM, effects with intervals (z / Welch / delta method), CUPED, the "
                    "pre-registered sequential test, Bayesian posteriors, corrected p-values, "
                    "segments, and a ship / hold / rollback decision with its reasons.")
    analyze.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    analyze.add_argument("--experiment", required=True, help="experiment id in the config")
    analyze.add_argument("--decisions", type=Path,
                         help="decision log directory or file (default: the config's)")
    analyze.add_argument("--outcomes", type=Path,
                         help="outcomes log directory or file (default: the config's)")
    analyze.add_argument("--as-of", help="analyse the logs as they stood at this time "
                                         "(ISO-8601 with a zone, or seconds since the epoch)")
    analyze.add_argument("--segment", action="append", default=[],
                         help="an extra (exploratory) segment attribute; repeatable")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.add_argument("--html", type=Path, help="write an HTML report with plots here")
    analyze.set_defaults(func=cmd_analyze)


def cmd_plan(args: argparse.Namespace) -> int:
    from rollout.experiments.stats.power import plan

    try:
        result = plan(args.metric_type, args.baseline, args.mde, relative=args.relative,
                      alpha=args.alpha, power=args.power, std_dev=args.std_dev,
                      daily_units=args.daily_units, allocation=args.allocation)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    body = result.to_dict()
    if args.json:
        print(json.dumps(body))
        return 0
    rel = f" ({body['mde_relative']:.2%} relative)" if body.get("mde_relative") else ""
    print(f"{args.metric_type} metric, MDE {body['mde_absolute']:.6g} absolute{rel}, "
          f"alpha {args.alpha:g}, power {args.power:g}")
    print(f"units per arm: {body['n_per_arm']:,}  (total {body['total_units']:,})")
    if body.get("days") is not None:
        print(f"duration: {body['days']} days at {args.daily_units:,.0f} units a day, "
              f"{args.allocation:.0%} allocated")
    return 0


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 time with a zone, or seconds since the epoch."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise CliError(f"--as-of: not a time: {text!r}")
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--as-of: not an ISO-8601 time or epoch seconds: {text!r}") from None
    if moment.tzinfo is None:
        raise CliError(f"--as-of needs a time zone, e.g. {text}Z")
    return moment.astimezone(dt.UTC)


def run_analysis(config: Any, experiment_id: str, *, decisions: Path | None = None,
                 outcomes: Path | None = None, as_of: dt.datetime | None = None,
                 exploratory_segments: tuple[str, ...] = (), timeline_points: int = 0,
                 now: dt.datetime | None = None) -> dict[str, Any]:
    """Check the pre-registration, read the logs and analyse; CliError on bad input."""
    from rollout.experiments.analysis import analyze
    from rollout.experiments.data import (
        AnalysisInputError,
        PlanChanged,
        load_experiment,
        plan_metrics,
        register_plan,
    )

    experiments = {e.id: e for e in config.experiments}
    if experiment_id not in experiments:
        raise CliError(f"no experiment {experiment_id!r} in the config; "
                       f"experiments are {sorted(experiments)}")
    experiment = experiments[experiment_id]
    plan = experiment.analysis
    if plan is None:
        raise CliError(f"experiment {experiment_id!r} has no analysis plan: add "
                       "experiments[].analysis (primary metric, alpha, MDE...) before it starts")
    now = now or dt.datetime.now(dt.UTC)
    try:
        registration = register_plan(config.resolved_preregistration_dir(), experiment_id,
                                     plan, now)
    except PlanChanged as exc:
        raise CliError(str(exc)) from None
    as_of = as_of or now
    segments = tuple(dict.fromkeys((*plan.segments, *exploratory_segments)))
    try:
        exposures, rows, _ = load_experiment(
            Path(decisions or config.decision_log.path),
            Path(outcomes or config.outcomes_log.path), experiment, plan_metrics(plan), as_of,
            segments)
    except AnalysisInputError as exc:
        raise CliError(str(exc)) from None
    if exposures.n_units == 0:
        raise CliError(f"no unit of experiment {experiment_id!r} was exposed by "
                       f"{as_of.isoformat()} in the decision log")
    report = analyze(experiment_id, plan, exposures, rows, as_of,
                     exploratory_segments=exploratory_segments,
                     timeline_points=timeline_points)
    report["preregistration"] = {
        "registered_at": registration["registered_at"],
        "registered_after_start": registration["registered_after_start"],
        "sha256": registration["sha256"], "start": plan.start.isoformat(),
    }
    return report


def cmd_analyze(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    as_of = parse_time(args.as_of) if args.as_of else None
    report = run_analysis(config, args.experiment, decisions=args.decisions,
                          outcomes=args.outcomes, as_of=as_of,
                          exploratory_segments=tuple(args.segment),
                          timeline_points=20 if args.html else 0)
    if args.html:
        from rollout.experiments.report import write_html

        write_html(report, args.html)
    if args.json:
        print(json.dumps(report))
    else:
        print(summary_text(report))
        if args.html:
            print(f"report: {args.html}")
    return 0


def summary_text(report: dict[str, Any]) -> str:
    """A short human summary: SRM first, then each metric, then the decision."""
    srm = report["srm"]
    lines = [f"experiment {report['experiment_id']} as of {report['as_of']}: "
             f"{report['units']:,} exposed units in {report['arms']}"]
    lines.append(f"SRM: observed {srm['observed']}, expected {srm['expected']}, "
                 f"p = {_fmt(srm['p_value'])}" + ("  ** MISMATCH **" if srm["flag"] else ""))
    for m in report["metrics"]:
        reduction = m["cuped_variance_reduction"]
        cuped = f", CUPED -{reduction:.0%} variance" if reduction else ""
        rel = f" ({m['rel_effect']:+.2%})" if m["rel_effect"] is not None else ""
        lines.append(
            f"{m['role']:9} {m['metric']:>12} {m['arm']} vs {m['control_arm']}: "
            f"{_fmt(m['mean_control'])} -> {_fmt(m['mean_treatment'])}, "
            f"effect {_fmt(m['abs_effect'])}{rel} CI [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
            f", p = {_fmt(m['p_value'])} (adjusted {_fmt(m['adjusted_p_value'])}){cuped}")
        sequential = m.get("sequential") or {}
        if sequential.get("method") == "msprt":
            lines.append(f"{'':9} always-valid p = {_fmt(sequential['always_valid_p_value'])}, "
                         f"confidence sequence [{_fmt(sequential['ci_low'])}, "
                         f"{_fmt(sequential['ci_high'])}] over {sequential['looks']} looks")
        elif sequential.get("method") == "group_sequential":
            lines.append(f"{'':9} {sequential['kind']} boundary "
                         f"{_fmt(sequential['boundary'])} at look {len(sequential['looks'])}: "
                         f"{sequential['decision']}")
        if m.get("bayes"):
            lines.append(f"{'':9} P(better) = {_fmt(m['bayes']['prob_better'])}")
    for g in report["guardrails"]:
        lines.append(f"guardrail {g['metric']:>12} {g['arm']}: {g['verdict']}")
    for seg in report["segments"]:
        cells = ", ".join(f"{r['segment']} {_fmt(r['abs_effect'])} (adj. p "
                          f"{_fmt(r['adjusted_p_value'])})" for r in seg["segments"])
        lines.append(f"segments by {seg['attribute']} ({seg['kind']}), {seg['arm']}: {cells}")
        if seg.get("warning"):
            lines.append(f"  warning: {seg['warning']}")
    registration = report.get("preregistration") or {}
    if registration.get("registered_after_start"):
        lines.append(f"note: the analysis plan was first recorded at "
                     f"{registration['registered_at']}, after the start {registration['start']}")
    decision = report["decision"]
    lines.append(f"decision: {decision['outcome'].upper()}"
                 + (f" {decision['arm']}" if decision.get("arm") else ""))
    lines += [f"  - {reason}" for reason in decision["reasons"]]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
