"""``rampart analyze --holdout LAYER``: a layer's long-term holdout against every
unit its experiments served, by the layer's pre-registered ``holdout_analysis``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.cli.common import CliError

if TYPE_CHECKING:
    from rollout.experiments.holdout import HoldoutAnalysis

def refuse_experiment_options(args: argparse.Namespace) -> None:
    """The ``rampart analyze`` options a holdout comparison has no use for."""
    refused = [flag for flag, given in (
        ("--period (the shipped group is served many versions by design; there are no "
         "served-version periods)", args.period != "latest"),
        ("--record-look", args.record_look),
        ("--engine ray", args.engine == "ray"),
        ("--ray-address", args.ray_address is not None)) if given]
    if refused:
        raise CliError("--holdout does not take " + "; ".join(refused))


def cmd_analyze_holdout(args: argparse.Namespace, config: Any) -> int:
    """``rampart analyze --holdout``: print (and ``--html``) the comparison; the
    exit code gates on its decision as an experiment's does."""
    from serving.cli.analyze import gate, parse_time

    refuse_experiment_options(args)
    as_of = parse_time(args.as_of) if args.as_of else None
    result = run_holdout_analysis(
        config, args.holdout, decisions=args.decisions, outcomes=args.outcomes, as_of=as_of,
        exploratory_segments=tuple(args.segment), timeline_points=20 if args.html else 0,
        skip_bad_files=args.skip_bad_files)
    if args.html:
        from rollout.experiments.report import write_html

        write_html(result.to_json(), args.html)  # the page renders its holdout section
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(holdout_summary_text(result))
        if args.html:
            print(f"report: {args.html}")
    return gate(result.analysis, args.fail_on)


def run_holdout_analysis(config: Any, layer_id: str, *, decisions: Path | str | None = None,
                         outcomes: Path | str | None = None,
                         as_of: dt.datetime | None = None,
                         exploratory_segments: tuple[str, ...] = (), timeline_points: int = 0,
                         now: dt.datetime | None = None,
                         skip_bad_files: bool = False) -> HoldoutAnalysis:
    """Check the layer and its plan, read the layer's decisions and their
    outcomes, compare shipped against holdout, then record the plan's
    pre-registration (a run that fails records nothing). CliError on bad input."""
    from rollout.experiments.data import (
        AnalysisInputError,
        PlanChanged,
        check_plan,
        holdout_plans_dir,
        layer_route,
        load_holdout,
        plan_metrics,
        register_plan,
    )
    from rollout.experiments.holdout import analyze_holdout
    from rollout.experiments.results import Preregistration

    layers = {layer.id: layer for layer in config.layers}
    if layer_id not in layers:
        raise CliError(f"no layer {layer_id!r} in the config; layers are {sorted(layers)}")
    layer = layers[layer_id]
    if layer.holdout_bp == 0:
        raise CliError(f"layer {layer_id!r} has no holdout (holdout_bp is 0): there is no "
                       "control to compare its shipped experiments against")
    plan = layer.holdout_analysis
    if plan is None:
        raise CliError(f"layer {layer_id!r} has no holdout analysis plan: add "
                       "layers[].holdout_analysis (primary metric, alpha, MDE...)")
    now = now or dt.datetime.now(dt.UTC)
    directory = holdout_plans_dir(config)
    try:
        registration, _ = check_plan(directory, layer_id, plan, now)
    except PlanChanged as exc:
        raise CliError(f"layer {layer_id!r} holdout: {exc}") from None
    as_of = as_of or now
    segments = tuple(dict.fromkeys((*plan.segments, *plan.strata, *exploratory_segments)))
    try:
        loaded = load_holdout(decisions or config.decision_log.path,
                              outcomes or config.outcomes_log.path,
                              layer_route(config, layer_id),
                              plan_metrics(plan), as_of, segments,
                              skip_bad_files=skip_bad_files)
    except AnalysisInputError as exc:
        raise CliError(str(exc)) from None
    exposures = loaded.data.exposures
    counts = [int((exposures.arm == group).sum()) for group in range(2)]
    when = as_of.isoformat().replace("+00:00", "Z")
    if counts[0] == 0:
        raise CliError(f"no holdout decision of layer {layer_id!r} in the decision log by "
                       f"{when}: nothing to compare against")
    if counts[1] == 0:
        raise CliError(f"no decision of layer {layer_id!r}'s experiments in the decision log "
                       f"by {when}: nothing shipped to compare")
    result = analyze_holdout(
        layer, config.experiments, plan, exposures, loaded.data.outcomes, as_of,
        logged=loaded.experiments, row_unit=loaded.row_unit, row_group=loaded.row_group,
        row_experiment=loaded.row_experiment, row_at=loaded.row_at,
        unplaced_rows=loaded.unplaced_rows, exploratory_segments=exploratory_segments,
        timeline_points=timeline_points)
    preregistration = Preregistration(
        registered_at=registration["registered_at"],
        registered_after_start=registration["registered_after_start"],
        sha256=registration["sha256"], start=plan.start)
    try:
        register_plan(directory, layer_id, plan, now)
    except PlanChanged as exc:  # another run recorded a different plan meanwhile
        raise CliError(f"layer {layer_id!r} holdout: {exc}") from None
    return result.model_copy(update={"analysis": result.analysis.model_copy(update={
        "preregistration": preregistration, "skipped_files": loaded.data.skipped_files})})


def holdout_summary_text(result: HoldoutAnalysis) -> str:
    """The layer and the holdout's share, then the summary an experiment's
    analysis prints (what the sample-ratio test counted is the decision's
    first reason)."""
    from serving.cli.analyze import summary_text

    holdout = result.holdout
    shipped = ", ".join(holdout.experiments) or "-"
    lines = [f"layer {holdout.layer_id}: holdout {holdout.holdout_bp} of 10000 buckets "
             f"({holdout.holdout_share:.2%}), the control; shipped: every unit the layer's "
             f"experiments served ({shipped})"]
    if holdout.warning is not None:
        lines.append(f"** WARNING: {holdout.warning} **")
    return "\n".join(lines) + "\n" + summary_text(result.analysis)
