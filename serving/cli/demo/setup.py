"""What every single-scenario demo does before its own part: the console, the
user's config, a free port, a run directory of its own, and the packaged
model versions trained and registered in MLflow."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from serving.cli.demo.models import SeedResult
    from serving.kernel.config import RampartConfig


@dataclass(frozen=True)
class DemoSetup:
    """The demo's console (on stderr under ``--json``, so stdout keeps the
    JSON line), the config as given, the host and port to serve on, and the
    run's own directory under ``data_dir/demo-runs``."""

    console: Console
    base: RampartConfig
    host: str
    port: int
    run_dir: Path


def prepare_demo(config_path: Path, scenario: str, port: int | None,
                 as_json: bool) -> DemoSetup:
    """Load the config and pick the run directory; a CliError (one line, exit
    2) for a config that does not load or a port already in use."""
    from serving.cli.common import CliError, load_config_or_exit, port_free

    console = Console(width=max(110, Console().width), stderr=as_json)
    base = load_config_or_exit(config_path)
    host, chosen = base.server.host, port or base.server.port
    if not port_free(host, chosen):
        raise CliError(f"port {chosen} on {host} is in use; pick another with --port")
    base.data_dir.mkdir(parents=True, exist_ok=True)
    run_dir = base.data_dir / "demo-runs" / f"{int(time.time())}-{os.getpid()}-{scenario}"
    return DemoSetup(console, base, host, chosen, run_dir)


def seed_models(setup: DemoSetup, config: RampartConfig) -> SeedResult:
    """Train and register the packaged model versions (once per tracking
    store: later runs find them), saying so on the console."""
    from serving.cli.demo.models import seed_demo_models

    with setup.console.status("Training and registering demo model versions in MLflow..."):
        seeded = seed_demo_models(config.resolved_tracking_uri(),
                                  setup.base.data_dir / "mlartifacts")
    setup.console.print(f"MLflow model [bold]{seeded.model_name}[/]: aliases {seeded.versions}")
    return seeded
