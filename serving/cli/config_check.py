"""Refusing a config that would move running units: ``rampart config check``,
and the check ``rampart serve`` makes before it deploys a config.

The config a successful ``rampart serve`` deployed is recorded as
``<data_dir>/applied-config.json``. Before another one is deployed, the units
each changed experiment logged most recently are routed under both configs
(:mod:`serving.routing.moves`); if some would land in another experiment or
arm, the deploy is refused unless ``--allow-moves``. This runs before Ray
starts, so a refusal costs the time to read the sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.cli.common import CliError, load_config_or_exit

# Imported where used: building the parser (every command, `--help` too) must
# not load pydantic models, numpy and pyarrow.
if TYPE_CHECKING:
    from serving.kernel.config import RampartConfig
    from serving.routing.moves import LoggedUnit, MovesReport
    from serving.routing.router import RoutingTable

APPLIED_CONFIG = "applied-config.json"
# Units sampled per changed experiment, the most recently logged first: the
# share that would move is then known within 0.31 percentage points (95%,
# binomial), and routing them twice takes a few seconds.
SAMPLE_UNITS = 100_000
ALLOW_HINT = "pass --allow-moves to apply anyway"


def applied_config_path(config: RampartConfig) -> Path:
    """Where the config a gateway was last deployed with is recorded."""
    return config.data_dir / APPLIED_CONFIG


def record_applied(config: RampartConfig) -> None:
    """Record ``config`` as the one deployed (written whole, then renamed into
    place). Failing to record does not undo a deploy that succeeded: it is
    said on stderr, and the next deploy has nothing to compare against."""
    path = applied_config_path(config)
    body = json.dumps(config.model_dump(mode="json"), indent=1, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_text(body + "\n", encoding="utf-8")
        staging.replace(path)
    except OSError as exc:
        print(f"rampart: warning: cannot record the applied config at {path}: "
              f"{exc.strerror or exc}", file=sys.stderr, flush=True)


def load_applied(path: Path) -> tuple[RampartConfig | None, str | None]:
    """The recorded config at ``path``, or None and why there is none to compare."""
    from serving.kernel.config import parse_config
    from serving.kernel.errors import ConfigError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"no applied config at {path}: nothing to compare"
    except OSError as exc:
        return None, f"cannot read the applied config at {path} ({exc.strerror}): nothing " \
                     "to compare"
    try:
        return parse_config(json.loads(text), source=str(path)), None
    except (ValueError, ConfigError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"the applied config at {path} is not readable ({first}): nothing to " \
                     "compare"


def identity_table(config: RampartConfig) -> RoutingTable:
    """The routing table of ``config`` with versions and aliases as written:
    who is in which arm does not depend on what an alias points to."""
    from serving.routing.router import build_routing_table

    return build_routing_table(config, lambda _model, version: version)


def sample_logged_units(decisions: Path | str, arms: Mapping[str, Collection[str]],
                        per_experiment: int = SAMPLE_UNITS
                        ) -> dict[str, list[LoggedUnit]] | None:
    """Up to ``per_experiment`` distinct units each experiment of ``arms``
    (experiment id -> its arm names) logged in one of those arms, the most
    recent first, with their latest context; None when there is no log.

    Files are read newest day first (the log's ``date=`` directories) and the
    reading stops once every experiment has its sample, so a long log costs
    its recent days only. A log whose storage fails raises
    :class:`~telemetry.storage.LogStorageError` (the CLI prints it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from serving.routing.moves import LoggedUnit
    from telemetry.decision_log import DECISION_SCHEMA
    from telemetry.storage import LogLocation, storage_errors

    location = LogLocation.resolve(decisions)
    if not location.exists():
        return None
    samples: dict[str, dict[str, LoggedUnit]] = {e: {} for e in arms}
    wanted = list(arms)
    columns = ["unit_id", "experiment_id", "arm", "timestamp", "context"]
    with storage_errors(f"cannot read the decision log at {location}"):
        files = (sorted(location.visible_parquet_files(), reverse=True) if location.is_dir()
                 else [location.path])
        for path in files:
            open_experiments = [e for e in wanted if len(samples[e]) < per_experiment]
            if not open_experiments:
                break
            table = pads.dataset([path], filesystem=location.fs, format="parquet",
                                 schema=DECISION_SCHEMA).to_table(
                columns=columns,
                filter=pc.field("experiment_id").isin(open_experiments)
                & pc.field("unit_id").is_valid()
                & (pc.field("role").is_null() | (pc.field("role") == "primary"))
                # a forced decision's arm is a tester's choice, not the hash's
                & (pc.field("forced").is_null() | (pc.field("forced") == pa.scalar(False))))
            if not table.num_rows:
                continue
            table = table.sort_by([("timestamp", "descending")])
            logged_at = pc.divide(table["timestamp"].cast(pa.int64()), 1e6).to_pylist()
            for unit, experiment, arm, context, at in zip(
                    table["unit_id"].to_pylist(), table["experiment_id"].to_pylist(),
                    table["arm"].to_pylist(), table["context"].to_pylist(), logged_at,
                    strict=True):
                taken = samples[experiment]
                if (arm not in arms[experiment] or unit in taken
                        or len(taken) >= per_experiment):
                    continue
                taken[unit] = LoggedUnit(unit, dict(context or ()), at)
    return {e: list(units.values()) for e, units in samples.items()}


@dataclass(frozen=True, slots=True)
class MovesCheck:
    """A check's outcome: the report, or why nothing was compared."""

    report: MovesReport
    decisions: str | None  # the decision log the sample came from
    note: str | None = None  # why no units were compared, when none were


def check_moves(old: RampartConfig, new: RampartConfig, decisions: Path | str | None = None,
                per_experiment: int = SAMPLE_UNITS) -> MovesCheck:
    """Route a sample of ``old``'s logged units (its decision log unless
    ``decisions``) under both configs and count those that move."""
    from serving.routing.moves import MovesReport, changed_experiments, count_moves

    old_table, new_table = identity_table(old), identity_table(new)
    changed = changed_experiments(old_table, new_table)
    if not changed:
        return MovesCheck(MovesReport(), None)
    where = decisions if decisions is not None else old.decision_log.path
    arms = {e.id: {a.name for a in e.arms} for e in old.experiments if e.id in changed}
    samples = sample_logged_units(where, arms, per_experiment)
    if samples is None:
        return MovesCheck(count_moves(old_table, new_table, {}), str(where),
                          f"no decision log at {where}: no logged units to compare")
    return MovesCheck(count_moves(old_table, new_table, samples), str(where))


def report_lines(check: MovesCheck, hint: str | None = None) -> list[str]:
    """One line per experiment whose units would move (``hint`` appended)."""
    suffix = f"; {hint}" if hint else ""
    return [e.describe() + suffix for e in check.report.moving]


def guard_deploy(config: RampartConfig, allow_moves: bool) -> None:
    """``rampart serve``'s check before it deploys ``config``: a
    :class:`CliError` (one line per experiment) when units of a running
    experiment would move and ``allow_moves`` is not set."""
    applied, note = load_applied(applied_config_path(config))
    if applied is None:
        print(note, flush=True)
        return
    if applied == config:
        return
    try:
        check = check_moves(applied, config)
    except OSError as exc:  # the log's storage
        if not allow_moves:
            raise CliError(f"{exc}; pass --allow-moves to deploy without counting the units "
                           "that would move") from None
        print(f"not checked (--allow-moves): {exc}", flush=True)
        return
    if check.note:
        print(check.note, flush=True)
    lines = report_lines(check)
    if not lines:
        return
    if not allow_moves:
        # every line an error line of its own, as the one-line errors are
        raise CliError("\nrampart: error: ".join(f"{line}; {ALLOW_HINT}" for line in lines))
    for line in lines:
        print(f"applying anyway (--allow-moves): {line}", flush=True)


def cmd_config_check(args: argparse.Namespace) -> int:
    from serving.routing.moves import MovesReport

    new = load_config_or_exit(args.config)
    against: str
    if args.against is not None:
        old: RampartConfig | None = load_config_or_exit(args.against)
        against, note = str(args.against), None
    else:
        path = applied_config_path(new)
        old, note = load_applied(path)
        against = str(path)
    if old is None:
        check = MovesCheck(MovesReport(), None, note)
    else:
        try:
            check = check_moves(old, new, args.decisions, args.sample)
        except OSError as exc:  # the log's storage: one line
            raise CliError(str(exc)) from None
    lines = report_lines(check)
    if args.json:
        print(json.dumps(_as_json(check, against, args.config)))
    else:
        if check.note:
            print(check.note)
        for line in lines:
            print(line)
        if not lines:
            compared = len(check.report.experiments)
            print(f"{args.config}: no logged unit would move "
                  f"({compared} changed running experiment{'' if compared == 1 else 's'} "
                  f"compared against {against})" if old is not None else
                  f"{args.config}: nothing compared")
    return 2 if lines else 0


def _as_json(check: MovesCheck, against: str, config: Path) -> dict[str, Any]:
    return {"config": str(config), "against": against, "decisions": check.decisions,
            "note": check.note, "moves": bool(check.report.moving),
            "experiments": [e.model_dump() for e in check.report.experiments]}


def sample_size(text: str) -> int:
    """``--sample``: a positive whole number of units."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_commands(sub: Any) -> None:
    """``rampart config check``."""
    config = sub.add_parser("config", help="check a routing config before deploying it")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_sub.add_parser(
        "check", help="count the logged units a new config would move",
        description="Compare CONFIG with the config last deployed (or --against OLD): for "
                    "each running experiment whose salt, unit, layer, layer range, layer "
                    "salt or holdout, arms or arm bucket ranges changed (a weight ramp or "
                    "more coverage only adds units and is no change), route the units it "
                    "logged most recently under both and count those that would land in "
                    "another experiment or arm. Exit 0 when none would move, 2 when some "
                    "would (one line per experiment).")
    check.add_argument("config", type=Path, metavar="CONFIG", help="the config to deploy")
    check.add_argument("--against", type=Path, metavar="OLD",
                       help="the config in force (default: <data_dir>/applied-config.json, "
                            "recorded by the last `rampart serve`)")
    check.add_argument("--decisions", metavar="PATH",
                       help="decision-log directory or URI to sample (default: the old "
                            "config's decision_log.path)")
    check.add_argument("--sample", type=sample_size, default=SAMPLE_UNITS,
                       help=f"units sampled per experiment (default {SAMPLE_UNITS:,})")
    check.add_argument("--json", action="store_true",
                       help="print the comparison as one JSON object")
    check.set_defaults(func=cmd_config_check)
