"""``rampart demo``: the whole serving path end to end on embedded defaults.

Seeds the demo model versions in MLflow (SQLite under ``.rampart/``), starts
the gateway on local Ray Serve, drives synthetic traffic from a simulated
population over HTTP, prints a table per model version, stops everything
(flushing the decision log) and checks that the log holds one row per
answered request.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from serving.traffic import Population, drive_traffic, summarize


def run_demo(
    config_path: Path, requests: int = 4000, concurrency: int = 8, port: int | None = None
) -> int:
    from models.demo import seed_demo_models
    from serving.app import start_gateway
    from serving.cli import CliError, _load, _port_free
    from telemetry.decision_log import read_decisions

    console = Console(width=max(110, Console().width))
    if requests < 1 or concurrency < 1:
        raise CliError("--requests and --concurrency must be at least 1")
    config = _load(config_path)
    host, port = config.server.host, port or config.server.port
    if not _port_free(host, port):
        raise CliError(f"port {port} on {host} is in use; pick another with --port")
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]Rampart demo")
    with console.status("Training and registering demo model versions in MLflow..."):
        seeded = seed_demo_models(config.resolved_tracking_uri(), data_dir / "mlartifacts")
    console.print(f"MLflow model [bold]{seeded.model_name}[/]: aliases {seeded.versions}")

    # This run's decisions go to a fresh directory so the check below is exact.
    run_dir = Path(config.decision_log.path) / f"demo-{os.getpid()}"
    config = config.model_copy(
        update={"decision_log": config.decision_log.model_copy(update={"path": run_dir})}
    )
    with console.status("Starting the gateway on local Ray Serve (about 15 s)..."):
        gateway = start_gateway(config, host=host, port=port)
    console.print(f"Gateway up at {gateway.url}, routing version {gateway.table.version}")
    for exp in gateway.table.describe()["experiments"]:
        split = ", ".join(
            f"{a['name']}={a['weight_bp'] / 100:g}% (v{a['model_version']})" for a in exp["arms"]
        )
        console.print(f"Experiment [bold]{exp['id']}[/] by {exp['unit']}: {split}")

    population = Population(size=2_000)
    try:
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
    finally:
        with console.status("Stopping the gateway and flushing the decision log..."):
            gateway.stop()

    table = Table(title=f"Per model version ({result.elapsed_s:.1f} s, "
                  f"{len(result.status_codes) / result.elapsed_s:.0f} req/s client-side)")
    for column in ("model", "version", "arm", "requests", "errors", "p50 ms", "p99 ms", "share"):
        table.add_column(column, justify="right" if column not in ("model", "arm") else "left")
    for row in summarize(result):
        table.add_row(
            row.model_name, row.model_version, row.arm, str(row.requests), str(row.errors),
            f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", f"{row.share:.1%}",
        )
    console.print(table)

    logged = read_decisions(run_dir)
    ok_rows = sum(1 for s in logged.column("status").to_pylist() if s == "ok")
    console.print(
        f"Decision log {run_dir}: {logged.num_rows} rows, {ok_rows} ok; "
        f"client received {result.ok} successful answers"
    )
    if ok_rows != result.ok or result.ok != requests:
        console.print("[red]decision log and client disagree[/]")
        return 1
    console.print("[green]Demo finished: every answered request is in the decision log.[/]")
    return 0
