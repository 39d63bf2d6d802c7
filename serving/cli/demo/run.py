"""``rampart demo``: the whole serving path end to end on embedded defaults.

Seeds the demo model versions in MLflow (SQLite under ``.rampart/``), starts
the gateway on local Ray Serve, drives synthetic traffic from a simulated
population over HTTP, prints a table per model version, stops everything
(flushing the decision log) and checks that the log holds one row per
answered request.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from serving.cli.demo.scenarios import ScenarioResult, run_scenario
from serving.cli.demo.traffic import Population, drive_traffic, summarize
from serving.kernel.targeting import targeting_text


def run_demo(
    config_path: Path,
    requests: int = 4000,
    concurrency: int = 8,
    port: int | None = None,
    scenario: str | None = None,
    as_json: bool = False,
) -> int:
    """Serving phase, then rollouts; or, with ``scenario``, that one rollout only,
    or that experiment design (serving/cli/demo/designs.py)."""
    import secrets

    from serving.cli.demo.designs import DESIGN_SCENARIOS, run_design_demo

    if scenario in DESIGN_SCENARIOS:
        return run_design_demo(config_path, scenario,  # type: ignore[arg-type]
                               requests, concurrency, port, as_json)
    if scenario == "bandit":  # rounds of new units, fixed: --requests does not apply
        from serving.cli.demo.bandit import run_bandit_demo

        return run_bandit_demo(config_path, concurrency, port, as_json)
    if scenario == "interleaving":  # --requests caps the sessions (400 at most)
        from serving.cli.demo.interleaving import run_interleaving_demo

        return run_interleaving_demo(config_path, requests, concurrency, port, as_json)
    from serving.cli.common import CliError, load_config_or_exit, port_free
    from serving.cli.demo.models import DEMO_MODEL_NAME, seed_demo_models
    from serving.cli.launch import start_gateway

    console = Console(width=max(110, Console().width), stderr=as_json)
    if requests < 1 or concurrency < 1:
        raise CliError("--requests and --concurrency must be at least 1")
    config = load_config_or_exit(config_path)
    host, port = config.server.host, port or config.server.port
    if not port_free(host, port):
        raise CliError(f"port {port} on {host} is in use; pick another with --port")
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]Rampart demo")
    with console.status("Training and registering demo model versions in MLflow..."):
        seeded = seed_demo_models(config.resolved_tracking_uri(), data_dir / "mlartifacts")
    console.print(f"MLflow model [bold]{seeded.model_name}[/]: aliases {seeded.versions}")

    # This run's decisions and rollouts go to fresh places so the checks are exact
    # and a previous run's promotion does not carry over.
    run_dir = data_dir / "demo-runs" / f"{int(time.time())}-{os.getpid()}"
    config = config.model_copy(update={
        "decision_log": config.decision_log.model_copy(update={"path": run_dir / "decisions"}),
        "outcomes_log": config.outcomes_log.model_copy(update={"path": run_dir / "outcomes"}),
        "rollout_store_url": f"sqlite:///{(run_dir / 'rollouts.db').resolve()}",
        "preregistration_dir": run_dir / "preregistrations",
        "experiments": _starting_now(config.experiments),
    })
    token = secrets.token_urlsafe(24)
    with console.status("Starting the gateway on local Ray Serve (about 15 s)..."):
        # Chaos on: the rollout scenarios inject faults through POST /v1/admin/faults.
        gateway = start_gateway(config, host=host, port=port, admin_token=token, chaos=True)
    console.print(f"Gateway up at {gateway.url}, routing version {gateway.table.version}")
    results: list[ScenarioResult] = []
    served_ok: int | None = None
    try:
        if scenario is None:
            served_ok = _serving_phase(console, gateway, requests, concurrency)
            served_ok += _shadow_phase(console, gateway, token, config, seeded.versions,
                                       data_dir / "reports", run_dir / "decisions")
            scenarios = ["healthy", "latency-fault"]
        else:
            scenarios = [scenario]
        for name in scenarios:
            baseline = seed_versions(config)["champion"]
            candidate = seeded.versions["challenger" if name == "healthy" else "candidate"]
            if candidate == baseline:
                candidate = seeded.versions["candidate"]
            console.rule(f"[bold]Rollout: {name}")
            result = run_scenario(
                gateway.url, token, name, DEMO_MODEL_NAME, baseline, candidate,  # type: ignore[arg-type]
                on_event=lambda msg: console.print(msg),
            )
            results.append(result)
            _print_timeline(console, result)
    finally:
        with console.status("Stopping the gateway and flushing the decision log..."):
            gateway.stop()

    ok = True
    if served_ok is not None:
        answered = served_ok + sum(r.ok_answers for r in results)
        ok = _check_log(console, run_dir / "decisions", answered)
        ok = _analysis_phase(console, config, run_dir, data_dir / "reports") and ok
    expected = {"healthy": "promoted", "latency-fault": "rolled_back", "error-fault": "rolled_back"}
    for result in results:
        if result.outcome != expected[result.scenario]:
            console.print(f"[red]{result.scenario}: expected {expected[result.scenario]}, "
                          f"got {result.outcome}[/]")
            ok = False
    if as_json and results:
        print(json.dumps(results[-1].as_json()))
    if ok:
        console.print("[green]Demo finished.[/]")
    return 0 if ok else 1


def seed_versions(config: Any) -> dict[str, str]:
    """Where the demo aliases point now (promotion moves ``champion``)."""
    from models.registry import MlflowRegistry
    from serving.cli.demo.models import DEMO_MODEL_NAME

    registry = MlflowRegistry(config.resolved_tracking_uri())
    return {alias: registry.resolve(DEMO_MODEL_NAME, alias)
            for alias in ("champion", "challenger", "candidate")}


def _serving_phase(console: Console, gateway: Any, requests: int, concurrency: int) -> int:
    table = gateway.table
    for compiled, exp in zip(table.experiments, table.describe()["experiments"], strict=True):
        split = ", ".join(
            f"{a['name']}={a['weight_bp'] / 100:g}% (v{a['model_version']})" for a in exp["arms"]
        )
        who = targeting_text(compiled.targeting) or "everyone else"
        console.print(f"Experiment [bold]{exp['id']}[/] by {exp['unit']} ({who}): {split}")
    population = Population(size=2_000)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    ) as progress:
        label = f"{requests} requests from {population.size} users"
        task = progress.add_task(label, total=requests)
        result = drive_traffic(
            gateway.url, population, requests, concurrency,
            on_progress=lambda n: progress.advance(task, n),
        )
    table = Table(title=f"Per model version ({result.elapsed_s:.1f} s, "
                  f"{len(result.status_codes) / result.elapsed_s:.0f} req/s client-side)")
    text_columns = ("model", "experiment", "arm")
    for column in ("model", "version", "experiment", "arm", "requests", "errors", "p50 ms",
                   "p99 ms", "share"):
        table.add_column(column, justify="left" if column in text_columns else "right")
    for row in summarize(result):
        table.add_row(
            row.model_name, row.model_version, row.experiment, row.arm, str(row.requests),
            str(row.errors), f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", f"{row.share:.1%}",
        )
    console.print(table)
    return result.ok


def _shadow_phase(console: Console, gateway: Any, token: str, config: Any,
                  versions: dict[str, str], reports: Path, decisions: Path) -> int:
    """Mirror live traffic to the candidate, then print and write the parity report."""
    from serving.cli.demo.models import DEMO_MODEL_NAME
    from serving.cli.demo.scenarios import AdminClient
    from telemetry.parity_report import build_report, load_offline_model, render_html

    console.rule("[bold]Shadow: candidate v" + versions["candidate"])
    admin = AdminClient(gateway.url, token)
    shadow = {"model": DEMO_MODEL_NAME, "version": versions["candidate"], "sample_bp": 10_000}
    admin.call("POST", "/v1/admin/shadows", shadow)
    time.sleep(1.0)  # the replicas load the shadow version, then swap the pushed table in
    result = drive_traffic(gateway.url, Population(size=20_000, seed=11), 2_000, 8, seed=5)
    admin.call("POST", "/v1/admin/shadows", {**shadow, "enabled": False})
    console.print(f"{result.ok} requests answered by the primary while v{versions['candidate']}"
                  " scored a copy of each off the hot path")
    time.sleep(2 * config.decision_log.flush_interval_s + 0.5)  # let the log flush to disk
    parity = config.parity
    model = load_offline_model(f"models:/{DEMO_MODEL_NAME}/{versions['champion']}",
                               config.resolved_tracking_uri())
    report = build_report(decisions, model, parity.replay_tolerance, parity.psi_threshold,
                          parity.ks_alpha, parity.min_label_agreement)
    table = Table(title=f"Parity report: {report.verdict}")
    for column in ("check", "figures", "verdict"):
        table.add_column(column)
    for pairs, overall, _ in report.agreement:
        ok = (overall.label_agreement or 0) >= parity.min_label_agreement
        table.add_row(f"shadow v{pairs.shadow_version} vs primary v{pairs.primary_version}",
                      f"{overall.n} requests, label agreement {overall.label_agreement:.3f}, "
                      f"|diff| p99 {overall.abs_diff_quantiles.get('p99', 0):.4f}",
                      "PASS" if ok else "FAIL")
    if report.replay is not None:
        r = report.replay
        table.add_row(f"offline replay of {report.model}",
                      f"{r.n} decisions, max |online - offline| {r.max_abs_diff:.2e}",
                      r.verdict)
    drifted = [d.feature for d in report.drift if d.drifted]
    table.add_row("feature drift vs training data",
                  f"max PSI {max((d.psi for d in report.drift), default=0):.4f}; "
                  f"drifted: {drifted or 'none'}", "FAIL" if drifted else "PASS")
    console.print(table)
    reports.mkdir(parents=True, exist_ok=True)
    page = reports / f"parity-{int(time.time())}.html"
    page.write_text(render_html(report), encoding="utf-8")
    console.print(f"HTML report with plots: {page}")
    return result.ok


def _starting_now(experiments: Any) -> tuple[Any, ...]:
    """This run's experiments, each analysis plan starting a few seconds from now,
    so the gateway records the plan before the experiment starts, as a real
    deployment would."""
    import datetime as dt

    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    return tuple(
        e.model_copy(update={"analysis": e.analysis.model_copy(update={"start": start})})
        if e.analysis is not None else e for e in experiments)


def _analysis_phase(console: Console, config: Any, run_dir: Path, reports: Path) -> bool:
    """Simulate outcomes with a known effect for the units this run exposed, in
    every experiment with an analysis plan, import them like a user would,
    analyse, and check the main experiment's estimate covers the truth."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rollout.experiments.data import load_exposures
    from rollout.experiments.report import write_html
    from serving.cli.analyze import run_analysis, summary_text
    from serving.cli.demo.simulated_outcomes import TrueEffects, simulate_outcomes
    from telemetry.outcomes_log import import_outcomes

    planned = [e for e in config.experiments if e.analysis is not None]
    if not planned:
        return True
    # The untargeted experiment takes every unit the targeted ones leave: the
    # one with the units to show the analysis on.
    experiment = next((e for e in planned if not e.targeting), planned[0])
    others = [e for e in planned if e is not experiment]
    console.rule(f"[bold]Analysis: {experiment.id}")
    now = dt.datetime.now(dt.UTC)
    truth = TrueEffects()
    simulated = run_dir / "simulated-outcomes.parquet"
    # Events follow exposure within a second, so that all of them are known now.
    # Each experiment's units are its own (the first matching experiment takes a
    # unit), so each gets its own draw.
    tables = []
    for seed, exp in enumerate([experiment, *others], start=2026):
        exposures, units = load_exposures(run_dir / "decisions", exp, now)
        if len(units):
            tables.append(simulate_outcomes(units, exposures.arm > 0, exposures.exposed_at,
                                            truth, seed=seed, experiment_id=exp.id,
                                            delay_s=1.0))
    now += dt.timedelta(seconds=1)  # the last exposures' events
    if not tables:
        console.print("[red]no exposed units in the decision log to analyse[/]")
        return False
    pq.write_table(pa.concat_tables(tables), simulated)
    imported = import_outcomes(simulated, run_dir / "outcomes")
    console.print(f"Simulated outcomes (true effects: conversion +{truth.conversion_lift:g}, "
                  f"revenue +{truth.revenue_lift:g} a unit, in every treatment arm) "
                  f"imported: {imported.rows} events")
    # The rollouts above moved the versions the arms serve (v2's promotion makes
    # champion and challenger both v2): the comparison the experiment was set up
    # for is its first period, before any of that.
    report = run_analysis(config, experiment.id, as_of=now, timeline_points=20, period=1)
    if len(report.periods) > 1:
        console.print(f"The rollouts split this experiment into {len(report.periods)} periods "
                      "(see below); analysing period 1, champion v1 against challenger v2.")
    console.print(summary_text(report), markup=False, highlight=False)
    reports.mkdir(parents=True, exist_ok=True)
    page = reports / f"analysis-{int(time.time())}.html"
    write_html(report, page)
    console.print(f"HTML analysis report: {page}")
    primary = report.primary()[0]
    low, high = primary.ci_low, primary.ci_high
    covered = low is not None and high is not None and low <= truth.conversion_lift <= high
    interval = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "[n/a]"
    console.print(f"The {1 - experiment.analysis.alpha:.0%} interval for the conversion effect, "
                  f"{interval}, "
                  + ("covers" if covered else "does not cover")
                  + f" the true effect {truth.conversion_lift:g}"
                  + ("." if covered else " (a 95% interval misses in one run in twenty)."))
    for other in others:
        _print_brief_analysis(console, config, other.id, now)
    return True


def _print_brief_analysis(console: Console, config: Any, experiment_id: str,
                          as_of: Any) -> None:
    """One line for a smaller experiment: its units and primary effect in period 1."""
    from serving.cli.analyze import run_analysis
    from serving.cli.common import CliError

    try:
        report = run_analysis(config, experiment_id, as_of=as_of, period=1)
    except CliError as exc:  # e.g. no unit of it in this run's traffic
        console.print(f"Experiment {experiment_id}: not analysed ({exc})")
        return
    primary = report.primary()[0]
    low, high = primary.ci_low, primary.ci_high
    interval = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "[n/a]"
    console.print(f"Experiment {experiment_id}, period 1: {report.units:,} units in "
                  f"{list(report.arms)}; {primary.metric} effect of {primary.arm} "
                  f"{interval}, decision: {report.decision.outcome}")


def _print_timeline(console: Console, result: ScenarioResult) -> None:
    table = Table(title=f"{result.scenario}: {result.outcome}")
    for column in ("t (s)", "from", "to", "candidate weight", "reason"):
        table.add_column(column)
    for item in result.timeline:
        table.add_row(f"{item['t_s']:.2f}", item["from"], item["to"],
                      f"{item['weight_pct']:g}%", item["reason"])
    console.print(table)
    if result.fault_onset_s is not None:
        console.print(
            f"fault at {result.fault_onset_s:.2f} s (candidate at "
            f"{result.candidate_weight_at_onset_pct:g}%); rolled back "
            f"{result.rollback_s} s later; the candidate answered "
            f"{result.requests_to_candidate_after_onset} requests after the fault "
            f"(of {result.requests_total} in the run)")


def _check_log(console: Console, decisions: Path, served_ok: int) -> bool:
    from telemetry.decision_log import read_decisions

    logged = read_decisions(decisions)
    rows = zip(logged.column("role").to_pylist(), logged.column("status").to_pylist(),
               strict=True)
    roles = [role for role, status in rows if status == "ok"]
    ok_rows = roles.count("primary")
    console.print(f"Decision log {decisions}: {logged.num_rows} rows, {ok_rows} ok primary "
                  f"decisions and {roles.count('shadow')} ok shadow calls; the clients received "
                  f"{served_ok} successful answers")
    if ok_rows != served_ok:
        console.print("[red]decision log and clients disagree[/]")
        return False
    return True
