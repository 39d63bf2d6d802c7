"""The gateway as a Ray Serve application others can deploy.

``serving.app:build`` is a Serve application builder: ``serve run
deploy/serve.yaml``, ``serve deploy deploy/serve.yaml`` and a KubeRay
``RayService`` (whose ``serveConfigV2`` is the same file) all call it with
the application's ``args``::

    applications:
      - name: rampart
        import_path: serving.app:build
        args: {config: deploy/rampart.yaml}

The config file is ``args.config``, else the file named by the
``RAMPART_CONFIG`` environment variable, else the packaged default. The
builder runs where Serve builds applications (the ``serve run`` process, or
a task on the cluster for ``serve deploy``): it fixes the experiments'
analysis plans, starts (or reuses) the detached rollout controller and
returns the same gateway ``rampart serve`` deploys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CONFIG_ENV = "RAMPART_CONFIG"


class BuildArgs(BaseModel):
    """The application's ``args`` in a Serve config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path | None = None
    # Replicas: a fixed count overrides the config's (and its autoscaling).
    num_replicas: int | None = Field(default=None, ge=1, le=256)


def build(args: dict[str, Any] | BuildArgs | None = None) -> Any:
    """Serve's entry point: the gateway application for ``args``."""
    from serving.cli.common import DEFAULT_CONFIG
    from serving.cli.launch import prepare_gateway
    from serving.documents import load_config
    from serving.gateway.ray_app import gateway_application
    from serving.kernel.config import parse_config

    parsed = args if isinstance(args, BuildArgs) else BuildArgs.model_validate(args or {})
    path = parsed.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV)
                             else None)
    if path is None:
        from serving.cli.common import default_config_document

        config = parse_config(default_config_document(), source=str(DEFAULT_CONFIG))
    else:
        config = load_config(path)
    parts = prepare_gateway(config, parsed.num_replicas)
    return gateway_application(parts.settings, parts.controller, parts.fault_board,
                               parts.options, parts.metrics_dir)
