"""``rampart``: the command line.

Every command validates its input at the edge and answers a mistake with one
clear message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serving.cli.common import (
    DEFAULT_CONFIG,
    SEED_DEMO_HINT,
    CliError,
    check_tracking_store,
    load_config_or_exit,
    load_plan_or_exit,
    model_config,
    port_free,
    project_error,
    routing_table,
)
from serving.cli.config_check import guard_deploy, record_applied

# --------------------------------------------------------------------------- commands


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from serving.cli.demo.models import seed_demo_models

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    result = seed_demo_models(uri, data_dir / "mlartifacts")
    state = "registered" if result.created else "already registered, nothing added"
    print(f"{result.model_name}: {state}; aliases {result.versions} ({uri})")
    return 0


# A user's own model is not one the demo seed registers: the likely mistakes
# are the URI and the MLflow asked.
MODEL_HINT = ("Check the model URI, or point --tracking-uri (or MLFLOW_TRACKING_URI) "
              "at the MLflow that holds it.")


def serve_config(args: argparse.Namespace) -> tuple[Any, str]:
    """The config ``rampart serve`` runs, and what to suggest when MLflow lacks a
    version it names. Checks only the arguments and the config, nothing slow,
    so a mistake is reported before any model or Ray is touched."""
    if args.model is not None:
        if args.config is not None:
            raise CliError("--model and --config cannot be combined: --model serves one "
                           "model with the default routing; to add routing, name the model "
                           "in the config's models and default instead")
        # A user's model lives in their MLflow, which MLflow's own tools find
        # through MLFLOW_TRACKING_URI; without either, the SQLite under data_dir.
        tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        return model_config(args.model, tracking_uri), MODEL_HINT
    config = load_config_or_exit(args.config or DEFAULT_CONFIG)
    if args.tracking_uri:
        config = config.model_copy(update={"tracking_uri": args.tracking_uri})
    return config, SEED_DEMO_HINT


def replica_count(text: str) -> int:
    """``--replicas``: a whole number of replicas within the config's bounds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, got {value}")
    return value


def cmd_stop(args: argparse.Namespace) -> int:
    from serving.cli.launch import stop_cluster_gateway

    try:
        removed = stop_cluster_gateway(args.address)
    except ConnectionError as exc:
        raise CliError(f"no Ray cluster at {args.address}: {exc}") from None
    print(f"removed {', '.join(removed)}" if removed else "nothing to remove: no gateway runs "
          "on this cluster", flush=True)
    return 0


def cmd_serve_on_cluster(args: argparse.Namespace, config: Any, hint: str) -> int:
    """``rampart serve --address``: deploy on an existing cluster; block, or detach."""
    from serving.cli.launch import check_reachable, start_gateway

    host = args.host or config.server.host
    port = args.port or config.server.port
    try:  # fail fast: Ray would retry an unreachable cluster for minutes
        check_reachable(args.address)
    except ConnectionError as exc:
        raise CliError(f"cannot join the Ray cluster at {args.address}: {exc}") from None
    routing_table(config, hint)  # fail fast, with a clear message, on unknown versions
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gateway = start_gateway(config, host=host, port=port, num_replicas=args.replicas,
                                chaos=args.chaos, address=args.address)
    except ConnectionError as exc:
        raise CliError(f"cannot join the Ray cluster at {args.address}: {exc}") from None
    print(f"rampart gateway serving on {gateway.url} on the Ray cluster at {args.address} "
          f"(routing version {gateway.table.version})", flush=True)
    record_applied(config)
    if args.detach:
        gateway.disconnect()
        print("detached: the gateway and its rollout controller keep running on the cluster; "
              "`rampart stop --address ...` removes them", flush=True)
        return 0
    serve_until_stopped(stop, gateway)
    return 0


def serve_until_stopped(stop: threading.Event, gateway: Any,
                        after_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGINT/SIGTERM, then stop the gateway (replicas flush their logs)."""
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("stopping: flushing decision logs", flush=True)
        gateway.stop()
        if after_stop is not None:
            after_stop()
        print("stopped", flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.shutdown:
        if not args.address:
            raise CliError("--shutdown needs --address (or RAY_ADDRESS): the cluster to "
                           "remove the gateway from")
        args.address = args.address or "auto"
        return cmd_stop(args)
    if args.detach and not args.address:
        raise CliError("--detach needs --address (or RAY_ADDRESS): a local Ray ends with this "
                       "process; start a cluster with `ray start --head` and join it")
    config, hint = serve_config(args)
    guard_deploy(config, args.allow_moves)  # before Ray starts: a refusal is quick
    if args.address:
        return cmd_serve_on_cluster(args, config, hint)
    from serving.cli.launch import start_gateway
    from serving.cli.process_guard import AlreadyServing, claim, reap_previous, release

    host = args.host or config.server.host
    port = args.port or config.server.port
    try:
        reaped = reap_previous(config.data_dir)
    except AlreadyServing as exc:
        raise CliError(str(exc)) from None
    if reaped:
        print(f"ended {len(reaped)} processes left by a killed rampart serve", flush=True)
    if not port_free(host, port, wait_s=5.0):
        raise CliError(f"port {port} on {host} is in use; pick another with --port")
    table = routing_table(config, hint)  # fail fast, with a clear message, on unknown versions
    claim(config.data_dir)
    # Both signals become a clean, flushing shutdown, also while starting up
    # (start_gateway keeps these handlers across ray.init).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    gateway = start_gateway(config, host=host, port=port, num_replicas=args.replicas,
                            chaos=args.chaos)
    record_applied(config)
    if args.model is not None:
        print(f"serving {args.model} (version {table.default.version})", flush=True)
    print(f"rampart gateway serving on {gateway.url} (routing version {gateway.table.version}); "
          "Ctrl-C to stop", flush=True)
    serve_until_stopped(stop, gateway, after_stop=lambda: release(config.data_dir))
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    from serving.routing.router import route, route_many

    config = load_config_or_exit(args.config)
    if (args.unit_id is None) == (args.units_file is None):
        raise CliError("give exactly one of --unit-id or --units-file")
    table = routing_table(config)
    if args.unit_id is not None:
        if not args.unit_id:
            raise CliError("--unit-id must not be empty")
        try:
            context = json.loads(args.context) if args.context else {}
        except json.JSONDecodeError as exc:
            raise CliError(f"--context is not valid JSON: {exc}") from None
        if not isinstance(context, dict):
            raise CliError("--context must be a JSON object")
        from serving.cli.request_time import request_time

        decision = route(table, args.unit_id, context, now=request_time(args.at))
        print(json.dumps({
            "unit_id": decision.unit_id,
            "unit_type": decision.unit_type,
            "bucket": decision.bucket,
            "experiment_id": decision.experiment_id,
            "arm": decision.arm,
            "layer": decision.layer,
            "model_name": decision.model.name,
            "model_version": decision.model.version,
            "routing_version": table.version,
        }))
        return 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    if args.output is None:
        raise CliError("--units-file needs --output FILE.parquet")
    try:
        raw = Path(args.units_file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.units_file}: {exc.strerror}") from None
    try:
        units = [line for line in raw.decode("utf-8").splitlines() if line]
    except UnicodeDecodeError as exc:
        raise CliError(f"{args.units_file} is not UTF-8 text: {exc}") from None
    started = time.perf_counter()
    unit_array = pa.array(units, type=pa.string())
    columns = route_many(table, unit_array)
    out = pa.table({
        "unit_id": unit_array,
        "bucket": pa.array(columns["bucket"], type=pa.int64()).cast(pa.int64()),
        "experiment_id": pa.array(columns["experiment_id"], type=pa.string()),
        "arm": pa.array(columns["arm"], type=pa.string()),
        "layer": pa.array(columns["layer"], type=pa.string()),
        "model_name": pa.array(columns["model_name"], type=pa.string()),
        "model_version": pa.array(columns["model_version"], type=pa.string()),
    })
    pq.write_table(out, args.output)
    elapsed = time.perf_counter() - started
    summary = {"units": len(units), "output": str(args.output), "seconds": round(elapsed, 3)}
    print(json.dumps(summary))
    return 0


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """Call the gateway's admin API; turn every failure into one clear message."""
    import httpx

    token = args.token or os.environ.get("RAMPART_ADMIN_TOKEN")
    if not token:
        raise CliError("no admin token: set RAMPART_ADMIN_TOKEN or pass --token")
    attempts = 3 if method == "GET" else 1  # reads are safe to resend
    for attempt in range(attempts):
        try:
            response = httpx.request(method, f"{args.url.rstrip('/')}{path}", json=body,
                                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
            break
        except httpx.ConnectError as exc:
            if attempt == attempts - 1:
                raise CliError(f"cannot reach the gateway at {args.url}: {exc}") from None
            time.sleep(0.5)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the gateway at {args.url}: {exc}") from None
    try:
        payload = response.json()
    except ValueError:
        raise CliError(f"gateway answered {response.status_code}: {response.text[:200]}") from None
    if response.status_code >= 400:
        message = payload.get("error", {}).get("message", response.text)
        raise CliError(f"gateway refused ({response.status_code}): {message}")
    return payload


def cmd_rollout_start(args: argparse.Namespace) -> int:
    plan = load_plan_or_exit(args.plan)
    body = _admin(args, "POST", "/v1/admin/rollouts", plan.model_dump(mode="json",
                                                                       by_alias=True,
                                                                       exclude_none=True))
    print(json.dumps({"id": body["id"], "phase": body["phase"], "weight_bp": body["weight_bp"]}))
    return 0


def cmd_rollout_command(args: argparse.Namespace) -> int:
    body = _admin(args, "POST", f"/v1/admin/rollouts/{args.id}/{args.rollout_command}",
                  {"reason": args.reason or ""})
    print(json.dumps({"id": body["id"], "phase": body["phase"], "weight_bp": body["weight_bp"]}))
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    from serving.cli.status_view import render_status

    body = _admin(args, "GET", f"/v1/admin/rollouts/{args.id}")
    if args.json:
        print(json.dumps(body))
        return 0
    if not args.watch:
        from rich.console import Console

        Console(width=120).print(render_status(body))
        return 0
    from rich.live import Live

    with Live(render_status(body), refresh_per_second=4) as live:
        while body["phase"] not in ("promoted", "rolled_back", "aborted"):
            time.sleep(args.every)
            body = _admin(args, "GET", f"/v1/admin/rollouts/{args.id}")
            live.update(render_status(body))
    return 0


def cmd_bandit_status(args: argparse.Namespace) -> int:
    body = _admin(args, "GET", f"/v1/admin/bandits/{args.id}?audit={args.audit}")
    if args.json:
        print(json.dumps(body))
        return 0
    from rich.console import Console
    from rich.table import Table

    title = f"bandit {body['experiment_id']}: {body['updates']} updates"
    if body.get("contextual_policy"):
        title += f", each request's arm chosen by {body['contextual_policy']} on its context"
    table = Table(title=title)
    for column in ("arm", "weight", "rewards seen", "mean [95% interval]", "P(best)", ""):
        table.add_column(column)
    for arm in body["arms"]:
        best = "-" if arm["prob_best"] is None else f"{arm['prob_best']:.3f}"
        weight = "per request" if arm["weight_bp"] is None else f"{arm['weight_bp'] / 100:.2f}%"
        table.add_row(arm["arm"], weight, str(arm["rewards_seen"]),
                      f"{arm['mean']:.4f} [{arm['ci_low']:.4f}, {arm['ci_high']:.4f}]", best,
                      "removed" if arm["removed"] else "")
    Console(width=120).print(table)
    return 0


def _parity_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    from models.registry import RegistryUnavailable
    from telemetry.parity_report import ParityInputError, load_offline_model

    config = load_config_or_exit(args.config)
    model = None
    if getattr(args, "model", None):
        tracking_uri = args.tracking_uri or config.resolved_tracking_uri()
        check_tracking_store(tracking_uri)
        try:
            model = load_offline_model(args.model, tracking_uri)
        except ParityInputError as exc:
            raise CliError(str(exc)) from None
        except RegistryUnavailable as exc:  # it answered the check, then went away
            raise CliError(f"cannot read the MLflow store {tracking_uri}: {exc}") from None
    return config, model


def cmd_parity_replay(args: argparse.Namespace) -> int:
    from telemetry.parity_report import ParityInputError, load_log, run_replay

    config, model = _parity_inputs(args)
    tolerance = args.tolerance or config.parity.replay_tolerance
    started = time.perf_counter()
    try:
        result = run_replay(load_log(args.decisions), model, tolerance)
    except ParityInputError as exc:
        raise CliError(str(exc)) from None
    elapsed = time.perf_counter() - started
    body = {"model": f"models:/{model.name}/{model.version}", **result.model_dump(),
            "seconds": round(elapsed, 3),
            "rows_per_second": round(result.n / elapsed) if elapsed > 0 else None}
    if args.json:
        print(json.dumps(body))
    else:
        print(f"replay of {body['model']} over {result.n} logged decisions: {result.verdict}")
        print(f"  max |online - offline| = {result.max_abs_diff}, quantiles "
              f"{result.abs_diff_quantiles}, over tolerance {tolerance}: {result.over_tolerance}")
        if result.examples:
            print(f"  e.g. request ids {result.examples}")
    return 0 if result.verdict != "FAIL" else 1


def cmd_parity_report(args: argparse.Namespace) -> int:
    from telemetry.parity_report import (
        ParityInputError,
        build_report,
        live_features,
        load_log,
        render_html,
    )

    config, model = _parity_inputs(args)
    try:
        reference = None
        if args.reference_decisions:
            names = model.feature_names if model is not None else None
            earlier = load_log(args.reference_decisions)
            if names is None:
                raise CliError("--reference-decisions needs --model for the feature names")
            reference = live_features(earlier, names)
        report = build_report(args.decisions, model, config.parity.replay_tolerance,
                              config.parity.psi_threshold, config.parity.ks_alpha,
                              config.parity.min_label_agreement, reference=reference)
    except ParityInputError as exc:
        raise CliError(str(exc)) from None
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(render_html(report), encoding="utf-8")
    body = report.as_json()
    if args.json:
        print(json.dumps(body))
    else:
        print(f"parity report over {report.rows} rows: {report.verdict}")
        for item in body["agreement"]:
            print(f"  shadow v{item['shadow_version']} vs primary v{item['primary_version']}: "
                  f"{item['n']} requests, label agreement {item['label_agreement']}, "
                  f"|diff| {item['abs_diff_quantiles']}")
        if report.replay is not None:
            print(f"  replay {report.model}: {report.replay.verdict}, max |diff| "
                  f"{report.replay.max_abs_diff}")
        for d in report.drift:
            flag = "DRIFT" if d.drifted else "ok"
            print(f"  {d.feature}: PSI {d.psi:.4f}, KS p {d.ks_p_value:.3g} {flag}")
        if args.html:
            print(f"  HTML report: {args.html}")
    return 0


def cmd_outcomes_import(args: argparse.Namespace) -> int:
    from telemetry.outcomes_log import OutcomesInputError, import_outcomes

    root: Path | str
    if args.outcomes is not None:
        root = args.outcomes
    else:
        root = load_config_or_exit(args.config or DEFAULT_CONFIG).outcomes_log.path
    try:
        result = import_outcomes(args.file, root)
    except OutcomesInputError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps({"rows": result.rows, "file": str(result.file),
                          "seconds": round(result.seconds, 3)}))
    else:
        print(f"imported {result.rows} outcome events from {args.file} into {result.file} "
              f"({result.seconds:.2f} s)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.holdout is not None:
        if args.reward_model is not None:
            raise CliError("--reward-model is for bandit experiments, not --holdout")
        if getattr(args, "click_metric", None) is not None:
            raise CliError("--click-metric is for interleaving experiments, not --holdout")
        from serving.cli.analyze_holdout import cmd_analyze_holdout

        return cmd_analyze_holdout(args, load_config_or_exit(args.config))
    from serving.cli.analyze import cmd_analyze as cmd_analyze_experiment

    return cmd_analyze_experiment(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from serving.cli.demo.run import run_demo

    return run_demo(
        config_path=args.config, requests=args.requests, concurrency=args.concurrency,
        port=args.port, scenario=args.scenario, as_json=args.json,
    )


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rampart",
        description="Model-serving gateway with deterministic experiments and staged rollout.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="MLflow model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    seed = models_sub.add_parser(
        "seed-demo", help="train and register the demo model versions (idempotent)"
    )
    seed.add_argument("--data-dir", default=".rampart", help="where the SQLite store lives")
    seed.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in --data-dir)")
    seed.set_defaults(func=cmd_seed_demo)

    serve = sub.add_parser(
        "serve", help="start the gateway on local Ray Serve and block",
        description="Serve the routing in --config (default: the packaged demo config), or "
                    "one model of yours with --model and default routing.")
    serve.add_argument("--config", type=Path,
                       help=f"routing config (default: the packaged {DEFAULT_CONFIG})")
    serve.add_argument("--model", metavar="URI",
                       help="serve this one model (models:/NAME@ALIAS or models:/NAME/VERSION) "
                            "to every unit, with the packaged defaults for everything else; "
                            "not with --config")
    serve.add_argument("--tracking-uri",
                       help="MLflow tracking URI (default: the config's; with --model, "
                            "$MLFLOW_TRACKING_URI; else SQLite under the data directory)")
    serve.add_argument("--host", help="address to listen on (default from config)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config)")
    serve.add_argument("--replicas", type=replica_count,
                       help="gateway replicas, 1-64 (default from config)")
    serve.add_argument("--chaos", action="store_true",
                       help="chaos testing: serve POST /v1/admin/faults to inject latency or "
                            "errors into a model version")
    serve.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                       help="join this Ray cluster (auto, HOST:PORT or ray://HOST:PORT; "
                            "default $RAY_ADDRESS) instead of starting a local one")
    serve.add_argument("--detach", action="store_true",
                       help="with --address: exit once the gateway is up and leave it "
                            "running on the cluster (`rampart stop` removes it)")
    serve.add_argument("--shutdown", action="store_true",
                       help="with --address: remove the gateway and its rollout controller "
                            "from the cluster (as `rampart stop`)")
    serve.add_argument("--allow-moves", action="store_true",
                       help="deploy even if the config moves units of running experiments "
                            "to other arms (see `rampart config check`)")
    serve.set_defaults(func=cmd_serve)

    stop = sub.add_parser("stop", help="remove the gateway and its controller from a cluster")
    stop.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "auto",
                      help="the Ray cluster (default $RAY_ADDRESS, else auto)")
    stop.set_defaults(func=cmd_stop)

    assign = sub.add_parser("assign", help="print where units are routed")
    assign.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    assign.add_argument("--unit-id", help="one unit id")
    assign.add_argument("--context", help="request context as a JSON object")
    assign.add_argument("--at", help="route as of this time, ISO-8601 or epoch seconds "
                        "(default now): a switchback experiment's window comes from it")
    assign.add_argument("--units-file", type=Path, help="a file of unit ids, one per line")
    assign.add_argument("--output", type=Path, help="Parquet file to write (with --units-file)")
    assign.set_defaults(func=cmd_assign)

    rollout = sub.add_parser("rollout", help="staged rollouts through the gateway's admin API")
    rollout_sub = rollout.add_subparsers(dest="rollout_command", required=True,
                                         metavar="COMMAND")

    def admin_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default="http://127.0.0.1:8000", help="gateway address")
        p.add_argument("--token", help="admin token (default: $RAMPART_ADMIN_TOKEN)")

    start = rollout_sub.add_parser("start", help="start a rollout from a plan (YAML or JSON)")
    start.add_argument("plan", type=Path)
    admin_flags(start)
    start.set_defaults(func=cmd_rollout_start)
    status = rollout_sub.add_parser("status", help="state, step, weight, checks and trail")
    status.add_argument("id")
    status.add_argument("--watch", action="store_true", help="refresh until the rollout ends")
    status.add_argument("--every", type=float, default=1.0, help="seconds between refreshes")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    admin_flags(status)
    status.set_defaults(func=cmd_rollout_status)
    for name, text in (("pause", "hold the rollout at its step"), ("resume", "continue"),
                       ("promote", "jump to 100% and move the champion alias"),
                       ("abort", "route everything back to the baseline and stop")):
        command = rollout_sub.add_parser(name, help=text)
        command.add_argument("id")
        command.add_argument("--reason", help="recorded in the audit trail")
        admin_flags(command)
        command.set_defaults(func=cmd_rollout_command)

    bandit = sub.add_parser("bandit", help="bandit experiments through the gateway's admin API")
    bandit_sub = bandit.add_subparsers(dest="bandit_command", required=True, metavar="COMMAND")
    bandit_status = bandit_sub.add_parser(
        "status", help="weights, posteriors and recent updates (the audit trail with --json)")
    bandit_status.add_argument("id", help="the bandit experiment's id")
    bandit_status.add_argument("--json", action="store_true",
                               help="print the status and its audit records as JSON")
    bandit_status.add_argument("--audit", type=int, default=20, metavar="N",
                               help="how many of the latest audit records --json carries "
                                    "(0-1000; default 20)")
    admin_flags(bandit_status)
    bandit_status.set_defaults(func=cmd_bandit_status)

    parity = sub.add_parser("parity", help="online/offline parity, shadow agreement, drift")
    parity_sub = parity.add_subparsers(dest="parity_command", required=True, metavar="COMMAND")
    replay = parity_sub.add_parser(
        "replay", help="replay logged features through the offline model; compare predictions")
    replay.add_argument("--decisions", required=True,
                        help="decision-log directory or URI (s3://bucket/prefix...)")
    replay.add_argument("--model", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    replay.add_argument("--tolerance", type=float, help="largest accepted |online - offline|")
    replay.add_argument("--json", action="store_true")
    replay.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    replay.add_argument("--tracking-uri", help="MLflow tracking URI (default from config)")
    replay.set_defaults(func=cmd_parity_replay)
    report = parity_sub.add_parser("report", help="agreement, replay and drift in one report")
    report.add_argument("--decisions", required=True,
                        help="decision-log directory or URI (s3://bucket/prefix...)")
    report.add_argument("--model", help="models:/NAME/VERSION to replay and take the "
                                        "drift reference from")
    report.add_argument("--html", type=Path, help="write an HTML report with plots here")
    report.add_argument("--reference-decisions",
                        help="an earlier decision-log window as the drift reference "
                             "(default: the model's training sample in MLflow)")
    report.add_argument("--json", action="store_true")
    report.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default from config)")
    report.set_defaults(func=cmd_parity_report)

    outcomes = sub.add_parser("outcomes", help="outcome events for experiment analysis")
    outcomes_sub = outcomes.add_subparsers(dest="outcomes_command", required=True,
                                           metavar="COMMAND")
    outcomes_import = outcomes_sub.add_parser(
        "import", help="validate a CSV or Parquet file of outcome events and add it to the "
                       "outcomes log",
        description="Load FILE (.csv, .csv.gz or .parquet) with the columns unit_id, metric, "
                    "value and optionally timestamp, experiment_id, request_id, item_id, "
                    "position (where a click on a ranked list was); check every row; write "
                    "them all to the outcomes log as one Parquet file, or nothing. "
                    "A timestamp is seconds since the epoch or ISO-8601 (UTC without an "
                    "offset); a missing one is the import time. The first bad row is named "
                    "by its number (data rows count from 1, a CSV header not counted), "
                    "with exit code 2.",
    )
    outcomes_import.add_argument("file", type=Path, metavar="FILE",
                                 help="CSV or Parquet file of events")
    outcomes_import.add_argument("--config", type=Path, metavar="FILE",
                                 help=f"config naming outcomes_log.path (default {DEFAULT_CONFIG})")
    outcomes_import.add_argument("--outcomes", metavar="PATH",
                                 help="outcomes-log directory or URI such as "
                                      "s3://bucket/prefix (overrides the config)")
    outcomes_import.add_argument("--json", action="store_true",
                                 help="print rows, file and seconds as one JSON object")
    outcomes_import.set_defaults(func=cmd_outcomes_import)

    from serving.cli.analyze import add_commands as add_analysis_commands

    add_analysis_commands(sub)
    # ``--holdout`` analyses a layer's holdout (serving/cli/analyze_holdout.py,
    # which builds on serving/cli/analyze.py, so the choice is made here)
    sub.choices["analyze"].set_defaults(func=cmd_analyze)

    from serving.cli.config_check import add_commands as add_config_commands

    add_config_commands(sub)

    demo = sub.add_parser("demo", help="seed, serve, drive traffic, print per-version table")
    demo.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    demo.add_argument("--requests", type=int, default=4000)
    demo.add_argument("--concurrency", type=int, default=8)
    demo.add_argument("--port", type=int, help="port for the gateway (default from config)")
    demo.add_argument("--scenario", choices=["healthy", "latency-fault", "error-fault",
                                             "layers", "switchback", "factorial", "bandit",
                                             "interleaving"],
                      help="run only this rollout scenario, or one experiment design "
                           "(layers, switchback, factorial, bandit, interleaving) on its own")
    demo.add_argument("--json", action="store_true",
                      help="print the scenario's result as one JSON object on the last line")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Process-wide settings follow the process's own command line only: a caller
    # that passes argv (a test, a program embedding the CLI) keeps its process as is.
    batch = argv is None and getattr(args, "batch_memory", False)
    if batch:
        from serving.cli.batch_memory import end_process, keep_freed_memory

        keep_freed_memory()
        end_process(_run_command(args))
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """The command's exit code; its one-line error on stderr when it failed."""
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"rampart: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        error = project_error(exc)
        if error is None:
            raise
        print(f"rampart: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rampart: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
