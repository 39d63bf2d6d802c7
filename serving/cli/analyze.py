"""``rampart plan`` and ``rampart analyze``: power planning and experiment analysis."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from serving.cli.common import DEFAULT_CONFIG, CliError, load_config_or_exit

if TYPE_CHECKING:
    from rollout.experiments.kernels import AnalysisKernels
    from rollout.experiments.results import ExperimentAnalysis

# `rampart analyze` exit codes, so that a pipeline can gate on the decision.
EXIT_ANALYSED, EXIT_BAD_INPUT, EXIT_GATED = 0, 2, 3
FAIL_ON = ("rollback", "hold")
# The decisions each --fail-on value fails on: "hold" fails anything but ship.
GATED = {"rollback": ("rollback",), "hold": ("hold", "rollback")}
ANALYZE_EXIT_CODES = (
    "exit codes: 0 analysed (and not gated by --fail-on); 2 bad input or usage (a bad "
    "flag or config, a missing, unreadable or malformed log, a changed plan), with one "
    "'rampart: error:' line; 3 the decision matched --fail-on")


def add_commands(sub: Any) -> None:
    """Register ``plan`` and ``analyze`` on the top-level sub-parser set."""
    plan = sub.add_parser(
        "plan", help="sample size per arm, MDE and duration before an experiment",
        description="Sample size per arm for treatment arms against one control (normal "
                    "approximation, two-sided, each comparison at alpha/K for K treatment "
                    "arms), and the duration from daily traffic and allocation.")
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
    plan.add_argument("--arms", type=int, default=1, metavar="K",
                      help="treatment arms, each against one control (default 1); each "
                           "comparison is planned at alpha/K")
    plan.add_argument("--cluster-size", type=float, metavar="M",
                      help="cluster-randomized: mean units per cluster (with --icc)")
    plan.add_argument("--icc", type=float, metavar="RHO",
                      help="cluster-randomized: intra-cluster correlation of the metric, in "
                           "[0, 1] (with --cluster-size)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

    analyze = sub.add_parser(
        "analyze", help="analyse an experiment from the decision and outcome logs",
        description="SRM, effects with intervals (z / Welch / delta method), CUPED, the "
                    "pre-registered sequential test, Bayesian posteriors, corrected p-values, "
                    "segments, and a ship / hold / rollback decision with its reasons.")
    analyze.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    analyzed = analyze.add_mutually_exclusive_group(required=True)
    analyzed.add_argument("--experiment", help="experiment id in the config")
    analyzed.add_argument("--holdout", metavar="LAYER",
                          help="compare a layer's holdout (the control) with every unit its "
                               "experiments served, by the layer's holdout_analysis plan")
    # Text, not Path: Path would fold the "//" of a URI such as s3://bucket/log.
    analyze.add_argument("--decisions",
                         help="decision log directory, file or URI such as s3://bucket/prefix "
                              "(default: the config's)")
    analyze.add_argument("--outcomes",
                         help="outcomes log directory, file or URI (default: the config's)")
    analyze.add_argument("--as-of", help="analyse the logs as they stood at this time "
                                         "(ISO-8601 with a zone, or seconds since the epoch)")
    analyze.add_argument("--segment", action="append", default=[],
                         help="an extra (exploratory) segment attribute; repeatable")
    analyze.add_argument("--period", type=period_choice, default="latest", metavar="N|all",
                         help="which period to analyse when an arm's served versions changed "
                              "during the experiment: its number (from 1), or all of them "
                              "one by one (default: the latest)")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.add_argument("--html", type=Path, help="write an HTML report with plots here")
    analyze.add_argument("--skip-bad-files", action="store_true",
                         help="leave out log files that are not readable Parquet or lack or "
                              "mistype a required column, and list them in the output (rows "
                              "with missing or non-finite values are still an error)")
    analyze.add_argument("--fail-on", choices=FAIL_ON,
                         help="exit 3 when the decision is rollback (--fail-on rollback) or "
                              "anything but ship (--fail-on hold); with --period all, the "
                              "latest period's decision")
    analyze.add_argument("--record-look", action="store_true",
                         help="store this analysis as a sequential look (time, units per "
                              "arm, the primary's estimate, z, always-valid p or boundary) "
                              "in <preregistration dir>/<experiment>.looks.jsonl, once it "
                              "succeeded; later analyses show recorded looks next to their "
                              "reconstruction")
    analyze.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="local: this process reads the logs (default); ray: a Ray Data "
                              "job over the logs adds up per-unit sums, for logs larger than "
                              "one machine (no segments, --html, --record-look, recorded "
                              "looks, --skip-bad-files, or served-version periods)")
    analyze.add_argument("--ray-address", metavar="ADDRESS",
                         help="with --engine ray: the Ray cluster to join (auto: the one on "
                              "this machine); default: start a local Ray for the run")
    analyze.add_argument("--reward-model", choices=("arm-mean", "arm-time"),
                         help="bandit experiments: add the doubly robust (AIPW) difference "
                              "with this reward model fitted on the run: each arm's mean "
                              "(arm-mean), or an arm plus exposure-time additive model "
                              "(arm-time)")
    analyze.add_argument("--click-metric", metavar="NAME",
                         help="interleaving experiments: the outcome metric whose events "
                              "(with request_id and item_id or position) are the clicks "
                              "credited to the rankers (default: click)")
    analyze.epilog = ANALYZE_EXIT_CODES
    # a batch command: as the whole process, it keeps freed memory (batch_memory)
    analyze.set_defaults(func=cmd_analyze, batch_memory=True)


def cmd_plan(args: argparse.Namespace) -> int:
    from rollout.experiments.stats.power import plan

    try:
        result = plan(args.metric_type, args.baseline, args.mde, relative=args.relative,
                      alpha=args.alpha, power=args.power, std_dev=args.std_dev,
                      daily_units=args.daily_units, allocation=args.allocation,
                      treatment_arms=args.arms)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    body = result.to_dict()
    clustered = _cluster_plan(args, result)
    if clustered is not None:
        body["cluster"] = clustered.to_dict()
    if args.json:
        print(json.dumps(body))
        return 0
    if clustered is not None:
        print("\n".join(_cluster_plan_lines(args, body)))
        return 0
    rel = f" ({body['mde_relative']:.2%} relative)" if body.get("mde_relative") else ""
    print(f"{args.metric_type} metric, MDE {body['mde_absolute']:.6g} absolute{rel}, "
          f"alpha {args.alpha:g}, power {args.power:g}")
    print(f"alpha: {body['alpha_rule']}")
    print(f"units per arm: {body['n_per_arm']:,}  (total {body['total_units']:,} over "
          f"{body['treatment_arms'] + 1} arms)")
    if body.get("days") is not None:
        print(f"duration: {body['days']} days at {args.daily_units:,.0f} units a day, "
              f"{args.allocation:.0%} allocated")
    return 0


def _cluster_plan(args: argparse.Namespace, result: Any) -> Any:
    """The plan scaled to clusters when ``--cluster-size`` and ``--icc`` ask for it
    (None without them); one without the other, or a bad value, is a CliError."""
    from rollout.experiments.stats.power import cluster_plan

    size, icc = getattr(args, "cluster_size", None), getattr(args, "icc", None)
    if size is None and icc is None:
        return None
    if size is None or icc is None:
        raise CliError("--cluster-size and --icc go together: a cluster-randomized plan "
                       "needs the mean cluster size and the intra-cluster correlation")
    try:
        return cluster_plan(result, size, icc)
    except ValueError as exc:
        raise CliError(str(exc).replace("cluster_size", "--cluster-size").replace(
            "icc must", "--icc must")) from None


def _cluster_plan_lines(args: argparse.Namespace, body: dict[str, Any]) -> list[str]:
    """``rampart plan``'s text for a cluster-randomized experiment."""
    cluster = body["cluster"]
    rel = f" ({body['mde_relative']:.2%} relative)" if body.get("mde_relative") else ""
    lines = [f"{args.metric_type} metric, MDE {body['mde_absolute']:.6g} absolute{rel}, "
             f"alpha {args.alpha:g}, power {args.power:g}, clusters of "
             f"{cluster['cluster_size']:g} units with ICC {cluster['icc']:g}",
             f"alpha: {body['alpha_rule']}",
             f"design effect: {cluster['design_effect']:.4g} = 1 + "
             f"({cluster['cluster_size']:g} - 1) x {cluster['icc']:g}",
             f"units per arm: {cluster['units_per_arm']:,}  ({body['n_per_arm']:,} if units "
             f"were randomized alone; total {cluster['total_units']:,} over "
             f"{body['treatment_arms'] + 1} arms)",
             f"clusters per arm: {cluster['clusters_per_arm']:,}  (total "
             f"{cluster['total_clusters']:,}; for the t test on clusters - 1 degrees of "
             "freedom)"]
    if cluster.get("days") is not None:
        lines.append(f"duration: {cluster['days']} days at {args.daily_units:,.0f} units a "
                     f"day, {args.allocation:.0%} allocated")
    return lines


def period_choice(text: str) -> int | Literal["latest", "all"]:
    """``--period``: a period number from 1, ``all`` or ``latest``."""
    if text in ("all", "latest"):
        return "all" if text == "all" else "latest"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a period number from 1, or all; got {text!r}")


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


def run_analysis(config: Any, experiment_id: str, *, decisions: Path | str | None = None,
                 outcomes: Path | str | None = None, as_of: dt.datetime | None = None,
                 exploratory_segments: tuple[str, ...] = (), timeline_points: int = 0,
                 now: dt.datetime | None = None, period: int | Literal["latest"] = "latest",
                 skip_bad_files: bool = False, engine: Literal["local", "ray"] = "local",
                 ray_address: str | None = None) -> ExperimentAnalysis:
    """Check the pre-registration, read the logs and analyse one period of the
    experiment (the latest by default), then record the pre-registration: a run
    that fails records nothing. CliError on bad input; with ``skip_bad_files``
    unreadable log files are left out and listed in ``skipped_files``."""
    return _run(config, experiment_id, decisions=decisions, outcomes=outcomes, as_of=as_of,
                exploratory_segments=exploratory_segments, timeline_points=timeline_points,
                now=now, which=period, skip_bad_files=skip_bad_files, engine=engine,
                ray_address=ray_address)[0]


def run_all_periods(config: Any, experiment_id: str, *, decisions: Path | str | None = None,
                    outcomes: Path | str | None = None, as_of: dt.datetime | None = None,
                    exploratory_segments: tuple[str, ...] = (), timeline_points: int = 0,
                    now: dt.datetime | None = None, skip_bad_files: bool = False
                    ) -> list[ExperimentAnalysis]:
    """:func:`run_analysis` of every period of the experiment, in time order."""
    return _run(config, experiment_id, decisions=decisions, outcomes=outcomes, as_of=as_of,
                exploratory_segments=exploratory_segments, timeline_points=timeline_points,
                now=now, which="all", skip_bad_files=skip_bad_files)


def _run(config: Any, experiment_id: str, *, decisions: Path | str | None,
         outcomes: Path | str | None, as_of: dt.datetime | None,
         exploratory_segments: tuple[str, ...], timeline_points: int,
         now: dt.datetime | None, which: int | Literal["latest", "all"],
         skip_bad_files: bool = False, engine: Literal["local", "ray"] = "local",
         ray_address: str | None = None) -> list[ExperimentAnalysis]:
    from rollout.experiments.data import (
        AnalysisInputError,
        PlanChanged,
        check_plan,
        load_all_periods,
        load_experiment,
        plan_metrics,
        register_plan,
    )
    from rollout.experiments.looks import LooksFileError, read_looks
    from rollout.experiments.results import Preregistration
    from rollout.experiments.switchback_data import switchback_cells_of

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
    # Checked now, recorded only once the analysis has succeeded: a run that fails
    # (no log, a bad file) must not pre-register a plan that is then fixed in place.
    try:
        registration, _ = check_plan(config.resolved_preregistration_dir(), experiment_id,
                                     plan, now)
    except PlanChanged as exc:
        raise CliError(str(exc)) from None
    try:
        recorded_looks = read_looks(config.resolved_preregistration_dir(), experiment_id)
    except LooksFileError as exc:
        raise CliError(str(exc)) from None
    as_of = as_of or now
    # Strata are context attributes read as segments are, at each unit's first exposure.
    segments = tuple(dict.fromkeys((*plan.segments, *plan.strata, *exploratory_segments)))
    paths = (decisions or config.decision_log.path, outcomes or config.outcomes_log.path)
    if engine == "ray":
        return [_run_on_ray(experiment, paths, as_of, segments, timeline_points, which,
                            skip_bad_files, bool(recorded_looks), ray_address,
                            preregistration=Preregistration(
                                registered_at=registration["registered_at"],
                                registered_after_start=registration["registered_after_start"],
                                sha256=registration["sha256"], start=plan.start),
                            register=lambda: register_plan(
                                config.resolved_preregistration_dir(), experiment_id, plan,
                                now))]
    # The statistics (scipy) are imported and the compiled code loaded on a
    # worker thread while this one reads the logs (Arrow releases the GIL): in
    # a fresh process that is most of a second the reading hides. The reading
    # stays on this thread: glibc serves another thread's arrays of more than
    # 64 MB from fresh mappings, faulted in anew on every run.
    with ThreadPoolExecutor(max_workers=1) as pool:
        compiled = pool.submit(_statistics_and_compiled_code)
        try:
            loaded = (load_all_periods(*paths, experiment, plan_metrics(plan), as_of,
                                       segments, skip_bad_files=skip_bad_files)
                      if which == "all" else
                      [load_experiment(*paths, experiment, plan_metrics(plan), as_of, segments,
                                       period=which, skip_bad_files=skip_bad_files)])
            windows = switchback_cells_of(experiment, paths, plan, as_of, skip_bad_files)
        except AnalysisInputError as exc:
            raise CliError(str(exc)) from None
        kernels = compiled.result()
    from rollout.experiments.analysis import analyze

    if loaded[-1].exposures.n_units == 0:
        raise CliError(f"no unit of experiment {experiment_id!r} was exposed by "
                       f"{as_of.isoformat()} in the decision log")
    preregistration = Preregistration(
        registered_at=registration["registered_at"],
        registered_after_start=registration["registered_after_start"],
        sha256=registration["sha256"], start=plan.start)
    analyses = []
    for data in loaded:
        # An earlier period is analysed as it stood when it ended: what came after
        # was served by other versions.
        end = data.period.end if data.period is not None else None
        period_as_of = min(as_of, end) if end is not None else as_of
        analysis = analyze(experiment_id, plan, data.exposures, data.outcomes, period_as_of,
                           exploratory_segments=exploratory_segments,
                           timeline_points=timeline_points, period=data.period,
                           periods=data.periods, recorded_looks=recorded_looks,
                           kernels=kernels, switchback=windows,
                           factors=_analysis_factors(experiment))
        analyses.append(analysis.model_copy(update={"preregistration": preregistration,
                                                    "skipped_files": data.skipped_files}))
    try:
        register_plan(config.resolved_preregistration_dir(), experiment_id, plan, now)
    except PlanChanged as exc:  # another run recorded a different plan meanwhile
        raise CliError(str(exc)) from None
    return analyses


def _analysis_factors(experiment: Any) -> tuple[Any, ...]:
    """A factorial experiment's factors as the analysis names them (empty for
    any other experiment)."""
    from rollout.experiments.factorial import analysis_factors

    return analysis_factors(experiment.factors)


def _statistics_and_compiled_code() -> AnalysisKernels:
    """Import the analysis and load its compiled kernels and grouping code (see
    :func:`_run`); the kernels."""
    import rollout.experiments.analysis  # noqa: F401  (imported for its cost)
    from rollout.experiments.compiled_kernels import load_compiled
    from rollout.experiments.unit_groups import load_compiled as load_grouping

    load_grouping()
    return load_compiled()


def _run_on_ray(experiment: Any, paths: tuple[Any, Any], as_of: dt.datetime,
                segments: tuple[str, ...], timeline_points: int,
                which: int | Literal["latest", "all"], skip_bad_files: bool,
                recorded_looks: bool, address: str | None, *, preregistration: Any,
                register: Any) -> ExperimentAnalysis:
    """The analysis as a Ray Data job (:mod:`rollout.experiments.ray_engine`); what
    it cannot compute from sums is refused rather than left out."""
    from rollout.experiments.data import AnalysisInputError, PlanChanged
    from rollout.experiments.ray_engine import analyze_on_ray, ray_connection

    refused = [what for what, asked in (
        ("segments or strata (they need each unit's attributes)", bool(segments)),
        (f"cluster-randomized experiments (cluster {experiment.cluster!r}: the "
         "cluster-robust test needs each unit's cluster); use --engine local",
         getattr(experiment, "cluster", None) is not None),
        ("switchback experiments (their test is over time windows, which it does not cut); "
         "use --engine local", getattr(experiment, "switchback", None) is not None),
        ("factorial experiments (their effects need each unit's value); use --engine local",
         bool(getattr(experiment, "factors", ()))),
        ("--html (its timeline needs the units)", timeline_points > 0),
        ("--period all or a period number (one served-version period only)",
         which not in ("latest", 1)),
        ("--skip-bad-files", skip_bad_files),
        ("recorded looks (their reconstruction needs the units); use --engine local",
         recorded_looks)) if asked]
    if refused:
        raise CliError("--engine ray does not support " + "; ".join(refused))
    try:
        with ray_connection(address):
            report = analyze_on_ray(experiment, *paths, as_of)
    except AnalysisInputError as exc:
        raise CliError(str(exc)) from None
    if report.units == 0:
        raise CliError(f"no unit of experiment {experiment.id!r} was exposed by "
                       f"{as_of.isoformat()} in the decision log")
    try:
        register()
    except PlanChanged as exc:
        raise CliError(str(exc)) from None
    return report.model_copy(update={"preregistration": preregistration})


def cmd_analyze(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    as_of = parse_time(args.as_of) if args.as_of else None
    interleaving = next((s for s in config.interleaving if s.id == args.experiment), None)
    if interleaving is not None:  # one list from two rankers: preferences, not arms
        return cmd_analyze_interleaving(args, config, interleaving, as_of)
    if getattr(args, "click_metric", None) is not None:
        raise CliError("--click-metric is for interleaving experiments (interleaving[])")
    bandit = next((e for e in config.experiments
                   if e.id == args.experiment and e.bandit is not None), None)
    if bandit is not None:  # allocation changed during the run: weighted, not compared
        return cmd_analyze_bandit(args, config, bandit, as_of)
    if args.reward_model is not None:
        raise CliError("--reward-model is for bandit experiments (experiments[].bandit)")
    common: dict[str, Any] = {
        "decisions": args.decisions, "outcomes": args.outcomes, "as_of": as_of,
        "exploratory_segments": tuple(args.segment), "timeline_points": 20 if args.html else 0,
        "skip_bad_files": args.skip_bad_files}
    if args.engine == "ray":
        if args.record_look:
            raise CliError("--engine ray does not support --record-look: record looks with "
                           "--engine local")
        if args.period == "all":
            raise CliError("--engine ray does not support --period all (one served-version "
                           "period only)")
        common.update(engine="ray", ray_address=args.ray_address)
    elif args.ray_address is not None:
        raise CliError("--ray-address is for --engine ray")
    if args.period == "all" and args.record_look:
        raise CliError("--record-look records the look of one period: leave out --period all")
    if args.period == "all":
        if args.html:
            raise CliError("--html renders one period: choose it with --period N "
                           "(or leave --period out for the latest)")
        analyses = run_all_periods(config, args.experiment, **common)
        if args.json:
            print(json.dumps({"experiment_id": args.experiment,
                              "periods": [p.model_dump(mode="json")
                                          for p in analyses[-1].periods],
                              "analyses": [a.to_json() for a in analyses]}))
        else:
            print("\n\n".join(summary_text(a) for a in analyses))
        return gate(analyses[-1], args.fail_on)
    report = run_analysis(config, args.experiment, period=args.period, **common)
    recorded = record_look(config, report) if args.record_look else None
    if args.html:
        from rollout.experiments.report import write_html

        write_html(report, args.html)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(summary_text(report))
        if args.html:
            print(f"report: {args.html}")
        if recorded is not None:
            print(f"look recorded: {recorded}")
    return gate(report, args.fail_on)


def cmd_analyze_bandit(args: argparse.Namespace, config: Any, experiment: Any,
                       as_of: dt.datetime | None) -> int:
    """``rampart analyze`` of a bandit experiment: per arm, the inverse-propensity
    weighted means and differences from the control (and the doubly robust one
    with ``--reward-model``), the naive ones flagged as biased. The exit code is
    :data:`EXIT_ANALYSED`: a bandit run has no ship decision to gate on."""
    from rollout.experiments.bandit_data import load_bandit_run
    from rollout.experiments.bandit_report import analyse_bandit_run, bandit_text
    from rollout.experiments.data import AnalysisInputError

    refused = [flag for flag, given in (
        ("--segment", bool(args.segment)), ("--period", args.period != "latest"),
        ("--html", args.html is not None), ("--fail-on", args.fail_on is not None),
        ("--record-look", args.record_look), ("--engine ray", args.engine == "ray"),
        ("--ray-address", args.ray_address is not None)) if given]
    if refused:
        raise CliError(f"experiment {experiment.id!r} is a bandit: its analysis does not "
                       "take " + ", ".join(refused))
    try:
        run = load_bandit_run(args.decisions or config.decision_log.path,
                              args.outcomes or config.outcomes_log.path, experiment,
                              as_of or dt.datetime.now(dt.UTC), args.skip_bad_files)
    except AnalysisInputError as exc:
        raise CliError(str(exc)) from None
    report = analyse_bandit_run(
        run.experiment_id, run.arms, run.arm, run.propensity, run.reward, run.exposed_at,
        metric=run.metric, reward_type=run.reward_type, window_s=run.window_s,
        as_of=run.as_of, pending_units=run.pending, reward_model=args.reward_model,
        skipped_files=tuple(f"{s.log} {s.path}: {s.reason}" for s in run.skipped_files))
    print(json.dumps(report.to_json()) if args.json else bandit_text(report))
    return EXIT_ANALYSED


def cmd_analyze_interleaving(args: argparse.Namespace, config: Any, spec: Any,
                             as_of: dt.datetime | None) -> int:
    """``rampart analyze`` of an interleaving experiment: per session (request)
    the clicks credited to rankers a and b, the wins, b's share of the sessions
    with a preference with its exact interval, the sign test and Δ_AB. The exit
    code is :data:`EXIT_ANALYSED`: there is no ship decision to gate on."""
    from rollout.experiments.data import AnalysisInputError
    from rollout.experiments.interleaving_data import (
        DEFAULT_CLICK_METRIC,
        load_interleaving_sessions,
    )
    from rollout.experiments.interleaving_report import analyse_interleaving, interleaving_text

    refused = [flag for flag, given in (
        ("--segment", bool(args.segment)), ("--period", args.period != "latest"),
        ("--html", args.html is not None), ("--fail-on", args.fail_on is not None),
        ("--record-look", args.record_look), ("--engine ray", args.engine == "ray"),
        ("--ray-address", args.ray_address is not None),
        ("--reward-model", args.reward_model is not None)) if given]
    if refused:
        raise CliError(f"experiment {spec.id!r} is an interleaving experiment: its analysis "
                       "does not take " + ", ".join(refused))
    metric = getattr(args, "click_metric", None) or DEFAULT_CLICK_METRIC
    try:
        data = load_interleaving_sessions(
            args.decisions or config.decision_log.path,
            args.outcomes or config.outcomes_log.path, spec,
            as_of or dt.datetime.now(dt.UTC), metric, args.skip_bad_files)
    except AnalysisInputError as exc:
        raise CliError(str(exc)) from None
    report = analyse_interleaving(
        data.experiment_id, data.clicks_a, data.clicks_b, method=data.method,
        metric=data.metric, as_of=data.as_of, clicks=data.clicks, methods=data.methods(),
        skipped_files=tuple(f"{s.log} {s.path}: {s.reason}" for s in data.skipped_files))
    print(json.dumps(report.to_json()) if args.json else interleaving_text(report))
    return EXIT_ANALYSED


def record_look(config: Any, report: ExperimentAnalysis) -> Path:
    """Store the analysis's sequential look (after it succeeded); the file it went to."""
    from rollout.experiments.looks import LooksFileError, looks_path
    from rollout.experiments.looks import record_look as append_look

    assert report.look is not None  # every analysis is a look
    directory = config.resolved_preregistration_dir()
    sha = report.preregistration.sha256 if report.preregistration is not None else None
    try:
        append_look(directory, report.experiment_id, report.look,
                    recorded_at=dt.datetime.now(dt.UTC), plan_sha256=sha)
    except LooksFileError as exc:
        raise CliError(str(exc)) from None
    return looks_path(directory, report.experiment_id)


def gate(report: ExperimentAnalysis, fail_on: str | None) -> int:
    """The exit code of an analysis: :data:`EXIT_GATED` when its decision is one
    ``--fail-on`` fails on, else :data:`EXIT_ANALYSED`."""
    if fail_on is not None and report.decision.outcome in GATED[fail_on]:
        return EXIT_GATED
    return EXIT_ANALYSED


def _when(moment: dt.datetime | None) -> str:
    return "now" if moment is None else moment.isoformat().replace("+00:00", "Z")


def periods_text(report: ExperimentAnalysis) -> list[str]:
    """The periods, one line each, and every warning of the analysed one, loudly."""
    lines: list[str] = []
    if len(report.periods) > 1:
        analysed = report.period.index if report.period is not None else None
        lines.append(f"{len(report.periods)} periods: an arm's served versions changed "
                     "during the experiment; periods are analysed apart, never pooled")
        for p in report.periods:
            served = ", ".join(f"{arm} {'+'.join(v) or '-'}" for arm, v in p.served.items())
            units = f", {p.units:,} units" if p.units is not None else ""
            mark = "  <- analysed" if p.index == analysed else ""
            span = (f"{_when(p.start)} to {_when(p.end)}" if p.end is not None
                    else f"from {_when(p.start)} on")
            lines.append(f"  period {p.index}: {span}: {served}{units}{mark}")
    elif report.period is not None:
        served = ", ".join(f"{arm} {'+'.join(v) or '-'}"
                           for arm, v in report.period.served.items())
        lines.append(f"served versions: {served}")
    for warning in report.warnings:
        lines.append(f"** WARNING: {warning.message} **")
    if report.skipped_files:
        lines.append(f"** WARNING: {len(report.skipped_files)} log files skipped "
                     "(--skip-bad-files); their rows are in no figure: **")
        lines += [f"  skipped {s.log} file {s.path}: {s.reason}" for s in report.skipped_files]
    return lines


def summary_text(report: ExperimentAnalysis) -> str:
    """A short human summary: periods and their warnings, SRM, each metric, then
    the decision."""
    from rollout.experiments.results import GroupSequentialSummary, MsprtSummary

    srm = report.srm
    lines = [f"experiment {report.experiment_id} as of {_when(report.as_of)}: "
             f"{report.units:,} exposed units in {list(report.arms)}"]
    lines += periods_text(report)
    lines.append(f"SRM: observed {list(srm.observed)}, expected {list(srm.expected)}, "
                 f"p = {_fmt(srm.p_value)}" + ("  ** MISMATCH **" if srm.flag else ""))
    if len(srm.splits) > 1:  # a ramp: each split against its own weights
        from rollout.experiments.analysis import split_label

        lines += [f"  split {split_label(s)}: observed {list(s.observed)}, expected "
                  f"{list(s.expected)}, p = {_fmt(s.p_value)}"
                  + ("  ** MISMATCH **" if s.flag else "") for s in srm.splits]
    for m in report.metrics:
        rel = f" ({m.rel_effect:+.2%})" if m.rel_effect is not None else ""
        # Means, effect, CI and p are all on one basis; say which when CUPED moved it.
        basis = ("CUPED-adjusted " if m.cuped is not None else
                 "cluster-robust " if m.clustered is not None else "")
        lines.append(
            f"{m.role:9} {m.metric:>12} {m.arm} vs {m.control_arm}: "
            f"{basis}{_fmt(m.mean_control)} -> {_fmt(m.mean_treatment)}, "
            f"effect {_fmt(m.abs_effect)}{rel} CI [{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]"
            f", p = {_fmt(m.p_value)} (adjusted {_fmt(m.adjusted_p_value)})")
        if m.cuped is not None:
            plain = m.unadjusted
            lines.append(f"{'':9} {m.cuped.describe()}; unadjusted effect "
                         f"{_fmt(plain.abs_effect)} CI [{_fmt(plain.ci_low)}, "
                         f"{_fmt(plain.ci_high)}], p = {_fmt(plain.p_value)}")
        if m.stratified is not None:  # beside CUPED: the decision is not made on it
            lines.append(f"{'':9} {m.stratified.describe()}")
        if m.clustered is not None:  # the test above is by clusters; what units alone say
            lines.append(f"{'':9} {m.clustered.describe()}")
        if m.switchback is not None:  # the test above is by windows; what units alone say
            lines.append(f"{'':9} {m.switchback.describe()}")
        sequential = m.sequential
        if isinstance(sequential, MsprtSummary):
            across = (f" ({_fmt(sequential.adjusted_p_value)} adjusted across "
                      f"{sequential.treatment_arms} treatment arms)"
                      if sequential.treatment_arms > 1 else "")
            lines.append(f"{'':9} always-valid p = {_fmt(sequential.always_valid_p_value)}"
                         f"{across}, confidence sequence [{_fmt(sequential.ci_low)}, "
                         f"{_fmt(sequential.ci_high)}] at alpha {_fmt(sequential.alpha)} "
                         f"over {sequential.looks} looks")
        elif isinstance(sequential, GroupSequentialSummary):
            lines.append(f"{'':9} {sequential.kind} boundary "
                         f"{_fmt(sequential.boundary)} at look {len(sequential.looks)} "
                         f"(alpha {_fmt(sequential.alpha)}): {sequential.decision}")
        if m.bayes is not None:
            on = (" (CUPED-adjusted, normal approximation)"
                  if m.bayes.basis == "cuped_adjusted" else "")
            lines.append(f"{'':9} P(better) = {_fmt(m.bayes.prob_better)}{on}")
    for g in report.guardrails:
        lines.append(f"guardrail {g.metric:>12} {g.arm}: {g.verdict}")
        if g.switchback is not None:  # the verdict above is by windows
            lines.append(f"{'':9} {g.switchback.describe()}")
    if report.factorial is not None:  # beside the per-cell results: it does not decide
        lines += report.factorial.text_lines()
    for seg in report.segments:
        cells = ", ".join(f"{r.segment} {_fmt(r.abs_effect)} (adj. p "
                          f"{_fmt(r.adjusted_p_value)})" for r in seg.segments)
        lines.append(f"segments by {seg.attribute} ({seg.kind}), {seg.arm}: {cells}")
        if seg.warning:
            lines.append(f"  warning: {seg.warning}")
    lines += looks_text(report)
    registration = report.preregistration
    if registration is not None and registration.registered_after_start:
        lines.append(f"note: the analysis plan was first recorded at "
                     f"{_when(registration.registered_at)}, after the start "
                     f"{_when(registration.start)}")
    decision = report.decision
    lines.append(f"decision: {decision.outcome.upper()}"
                 + (f" {decision.arm}" if decision.arm else ""))
    lines += [f"  - {reason}" for reason in decision.reasons]
    return "\n".join(lines)


# The figure a look's method decides by: (label, LookArm field).
LOOK_FIGURE = {"msprt": ("always-valid p", "always_valid_p_value"),
               "group_sequential": ("boundary", "boundary"),
               "none": ("adjusted p", "adjusted_p_value")}


def looks_text(report: ExperimentAnalysis) -> list[str]:
    """Each recorded look next to its reconstruction: ``recorded | reconstructed``."""
    if not report.recorded_looks:
        return []
    lines = [f"recorded looks ({len(report.recorded_looks)}), each as stored when taken | "
             "as reconstructed now from the logs as they stood then:"]
    for comparison in report.recorded_looks:
        then, now = comparison.recorded, comparison.reconstructed
        head = f"  look at {_when(then.at)} (recorded {_when(then.recorded_at)}): "
        if now is None:
            lines.append(head + f"not reconstructed: {comparison.note}")
            continue
        verdict = ("same figures" if not comparison.differences else
                   "** DIFFERS: " + ", ".join(comparison.differences) + " **")
        lines.append(head + f"units {list(then.units)} | {list(now.units)}; {verdict}")
        reconstructed = {arm.arm: arm for arm in now.arms}
        for arm in then.arms:
            other = reconstructed.get(arm.arm)

            def pair(name: str, arm: Any = arm, other: Any = other) -> str:
                theirs = "n/a" if other is None else _fmt(getattr(other, name))
                return f"{_fmt(getattr(arm, name))} | {theirs}"

            label, name = LOOK_FIGURE[then.method]
            lines.append(f"    {arm.arm}: effect {pair('abs_effect')}, z {pair('z')}, "
                         f"{label} {pair(name)}")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
