"""``rampart demo --scenario layers|switchback|factorial``: one experiment design
end to end on simulated traffic through the gateway.

Each scenario replaces the packaged config's experiments with the design's
(validated as any config is), seeds the demo models, starts the gateway on
local Ray with a fresh decision log, sends simulated traffic over HTTP with the
request context the design needs, stops the gateway (flushing the log), draws
outcome events with a planted effect for the units and requests the log says
were exposed, imports them as ``rampart outcomes import`` does, runs the
analysis ``rampart analyze`` runs and prints its summary, then checks that
each planted effect is inside its interval. The exit code is 0 only when every
check holds.

- ``layers``: a layer with a 10% holdout and two mutually exclusive
  experiments (one targeted, so the web users of its range are ineligible),
  with part of its buckets left to a second layer. Checks from the log that no
  unit is in two experiments of a layer and tests the independence of the two
  layers' allocations (chi-square over the units seen); analyses each
  experiment and the holdout against everything the layer shipped.
- ``switchback``: 2 s windows crossed with two regions; outcomes carry window
  shocks and carry-over of the previous window's arm into the first second of
  a window after a switch. Analysed with the configured 1 s burn-in (checked)
  and without it (shown: the carry-over biases it towards zero).
- ``factorial``: a model factor (champion or challenger) crossed with a label
  factor; outcomes with two main effects and an interaction, analysed as main
  effects and the interaction with Holm-corrected p-values.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from serving.kernel.factorial import parse_cell
from serving.kernel.ids import ContextValue
from serving.routing.assignment import allocate, buckets_vectorized
from serving.routing.switchback import window_arm_buckets

if TYPE_CHECKING:
    from serving.kernel.config import RampartConfig
    from serving.routing.router import RoutingTable

DesignScenario = Literal["layers", "switchback", "factorial"]
DESIGN_SCENARIOS: tuple[DesignScenario, ...] = ("layers", "switchback", "factorial")
MICROS = 1_000_000
MODEL = "rampart-demo-classifier"
METRIC = "revenue"
# A revenue per unit far enough above zero that no simulated value is clipped
# at zero (clipping would shrink the planted effects).
REVENUE_MEAN, REVENUE_SD = 20.0, 4.0
HOLDOUT_ARM, INELIGIBLE_ARM = "holdout", "ineligible"
LAYER_PREFIX = "layer:"

# The layers scenario: the lift in revenue of each experiment's treatment arm.
LAYER_LIFTS: dict[str, float] = {"checkout-ranker": 1.5, "checkout-pricing": 1.0,
                                 "search-tree": 2.0}
LAYERED_LAYER, SECOND_LAYER = "checkout", "search"
# The switchback scenario's design and its simulated world.
WINDOW_S, BURN_IN_S = 2, 1
SWITCHBACK_REGIONS = ("north", "south")
SWITCHBACK_LIFT = 3.0
CARRY_OVER_S = 1.0  # the previous window's arm acts this long after a switch
WINDOW_SHOCK_SD, REQUEST_SD = 0.5, 4.0
SWITCHBACK_SPREAD_S = 32.0
SWITCHBACK_EXPERIMENT = "dispatch-switchback"
# The factorial scenario: model and label main lifts and their interaction.
FACTORIAL_EXPERIMENT = "ranker-x-label"
MODEL_LIFT, LABEL_LIFT, INTERACTION_LIFT = 1.5, 1.0, 1.5


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class PlantedEffect:
    """A planted effect beside the analysis's estimate of it. ``checked``: the
    demo fails when the interval misses it (an analysis shown for contrast,
    such as the switchback without burn-in, is not checked)."""

    name: str
    truth: float
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None = None
    checked: bool = True

    @property
    def covered(self) -> bool:
        return (self.ci_low is not None and self.ci_high is not None
                and self.ci_low <= self.truth <= self.ci_high)

    def line(self) -> str:
        interval = ("[n/a]" if self.ci_low is None or self.ci_high is None
                    else f"[{self.ci_low:.3f}, {self.ci_high:.3f}]")
        estimate = "n/a" if self.estimate is None else f"{self.estimate:.3f}"
        verdict = "covers" if self.covered else "does not cover"
        return (f"{self.name}: estimate {estimate}, interval {interval} {verdict} the planted "
                f"effect {self.truth:.3f}" + ("" if self.checked else " (shown, not checked)"))

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "truth": self.truth, "estimate": self.estimate,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value,
                "covered": self.covered, "checked": self.checked}


@dataclass
class DesignResult:
    """What a design scenario measured: the planted effects against their
    estimates, the structural checks (name -> held) and figures to report."""

    scenario: str
    effects: list[PlantedEffect] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values()) and all(e.covered for e in self.effects if e.checked)

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "ok": self.ok, "checks": self.checks,
                "effects": [e.as_json() for e in self.effects], **self.figures}


# ------------------------------------------------------------------ configs


def _plan(start: str, alpha: float = 0.05) -> dict[str, Any]:
    """The analysis plan every design's experiments share: revenue per unit."""
    return {"start": start, "primary": {"name": METRIC, "type": "mean"}, "alpha": alpha,
            "mde": 0.05, "baseline": REVENUE_MEAN, "correction": "holm",
            "outcome_window_s": 3600, "pre_period_s": 14 * 86_400}


def _arms(treatment: str, version: str) -> list[dict[str, Any]]:
    return [{"name": "control", "model": MODEL, "version": "champion", "weight_bp": 5000},
            {"name": treatment, "model": MODEL, "version": version, "weight_bp": 5000}]


def design_routing(scenario: DesignScenario, start: str) -> dict[str, Any]:
    """The design's ``experiments`` and ``layers``, as a config file holds them."""
    if scenario == "layers":
        layers = [
            {"id": LAYERED_LAYER, "salt": "demo-layer-checkout", "unit": "user_id",
             "holdout_bp": 1000, "holdout_analysis": _plan(start)},
            {"id": SECOND_LAYER, "salt": "demo-layer-search", "unit": "user_id"},
        ]
        experiments = [
            # Mobile users only: the web users of its range are ineligible, and
            # no other experiment of the layer may take them.
            {"id": "checkout-ranker", "salt": "demo-checkout-ranker", "layer": LAYERED_LAYER,
             "layer_buckets": [1000, 4500],
             "targeting": [{"attribute": "platform", "op": "in", "values": ["android", "ios"]}],
             "arms": _arms("treatment", "challenger"), "analysis": _plan(start)},
            {"id": "checkout-pricing", "salt": "demo-checkout-pricing", "layer": LAYERED_LAYER,
             "layer_buckets": [4500, 8000], "arms": _arms("treatment", "candidate"),
             "analysis": _plan(start)},
            # [8000, 10000) of the checkout layer is no experiment's: those units
            # go on to the search layer, hashed anew under its own salt.
            {"id": "search-tree", "salt": "demo-search-tree", "layer": SECOND_LAYER,
             "layer_buckets": [0, 6000], "arms": _arms("treatment", "tree"),
             "analysis": _plan(start)},
        ]
        return {"experiments": experiments, "layers": layers}
    if scenario == "switchback":
        return {"experiments": [{
            "id": SWITCHBACK_EXPERIMENT, "salt": "demo-dispatch-switchback",
            "switchback": {"window_s": WINDOW_S, "region": "region", "burn_in_s": BURN_IN_S},
            "arms": _arms("treatment", "challenger"),
            # 99%: the windows' arms depend on the hour the demo runs, so
            # unlike the other scenarios this interval is not the same every run.
            "analysis": _plan(start, alpha=0.01)}], "layers": []}
    levels = [{"name": version, "weight_bp": 5000, "model": MODEL, "version": version}
              for version in ("champion", "challenger")]
    return {"experiments": [{
        "id": FACTORIAL_EXPERIMENT, "salt": "demo-ranker-x-label",
        "factors": [
            {"name": "model", "salt": "demo-factor-model", "levels": levels},
            {"name": "label", "salt": "demo-factor-label",
             "levels": [{"name": "plain", "weight_bp": 5000},
                        {"name": "badge", "weight_bp": 5000}]}],
        "analysis": _plan(start)}], "layers": []}


def design_config(base: RampartConfig, scenario: DesignScenario, run_dir: Path,
                  start: dt.datetime) -> RampartConfig:
    """``base`` (its models, default route and settings) with the design's
    experiments and layers instead of its own, and this run's logs and stores
    under ``run_dir``; validated as a config file is (ConfigError names a
    mistake by its path)."""
    from serving.kernel.config import parse_config

    document = base.model_dump(mode="json")
    document.update(design_routing(scenario, start.isoformat().replace("+00:00", "Z")))
    document["decision_log"]["path"] = str(run_dir / "decisions")
    document["outcomes_log"]["path"] = str(run_dir / "outcomes")
    document["rollout_store_url"] = f"sqlite:///{(run_dir / 'rollouts.db').resolve()}"
    document["preregistration_dir"] = str(run_dir / "preregistrations")
    return parse_config(document, source=f"the {scenario} demo config")


def region_of(user_ids: Sequence[str]) -> list[str]:
    """A stable region per user id (about half in each)."""
    buckets = buckets_vectorized("simulated-region", list(user_ids))
    return [SWITCHBACK_REGIONS[int(b) * len(SWITCHBACK_REGIONS) // 10_000] for b in buckets]


def design_context(scenario: DesignScenario) -> Callable[[str], dict[str, ContextValue]]:
    """Each user's request context: platform, and the region for the switchback."""
    from serving.cli.demo.traffic import platforms_of

    def context(user_id: str) -> dict[str, ContextValue]:
        out: dict[str, ContextValue] = {"platform": platforms_of([user_id])[0]}
        if scenario == "switchback":
            out["region"] = region_of([user_id])[0]
        return out

    return context


# ------------------------------------------------------------------ the log


@dataclass(frozen=True)
class LoggedDecisions:
    """The primary, answered decisions of a run, one entry per row, in log order."""

    unit_id: list[str]
    experiment_id: list[str | None]
    arm: list[str]
    layer: list[str | None]
    at_us: npt.NDArray[np.int64]
    region: list[str | None]

    @classmethod
    def of(cls, table: pa.Table) -> LoggedDecisions:
        served = pc.and_(pc.equal(table["role"], "primary"), pc.equal(table["status"], "ok"))
        rows = table.filter(served).sort_by([("timestamp", "ascending")])
        regions = pc.map_lookup(rows["context"], "region", "first").to_pylist()
        return cls(rows["unit_id"].to_pylist(), rows["experiment_id"].to_pylist(),
                   rows["arm"].to_pylist(), rows["layer"].to_pylist(),
                   np.asarray(rows["timestamp"].cast(pa.int64()).to_numpy(), dtype=np.int64),
                   regions)

    def first_by_unit(self) -> dict[str, int]:
        """Each unit's first row (the log is in time order)."""
        first: dict[str, int] = {}
        for i, unit in enumerate(self.unit_id):
            first.setdefault(unit, i)
        return first


@dataclass(frozen=True)
class LayerSplit:
    """Distinct units a layer logged: in its holdout, in each experiment (by
    arm), and ineligible (a targeted experiment's range, context not matching)."""

    layer: str
    holdout: int
    experiments: dict[str, dict[str, int]]
    ineligible: dict[str, int]


def layer_splits(log: LoggedDecisions) -> list[LayerSplit]:
    """How each layer's units split, from the decisions it logged."""
    units: dict[str, dict[tuple[str | None, str], set[str]]] = {}
    for unit, exp, arm, layer in zip(log.unit_id, log.experiment_id, log.arm, log.layer,
                                     strict=True):
        if layer is None or not layer.startswith(LAYER_PREFIX):
            continue
        units.setdefault(layer.removeprefix(LAYER_PREFIX), {}).setdefault(
            (exp, arm), set()).add(unit)
    out = []
    for layer, groups in units.items():
        holdout = len(set().union(*(u for (_, arm), u in groups.items() if arm == HOLDOUT_ARM)))
        experiments: dict[str, dict[str, int]] = {}
        ineligible: dict[str, int] = {}
        for (exp, arm), members in sorted(groups.items(), key=lambda g: (str(g[0][0]), g[0][1])):
            if arm == HOLDOUT_ARM or exp is None:
                continue
            if arm == INELIGIBLE_ARM:
                ineligible[exp] = len(members)
            else:
                experiments.setdefault(exp, {})[arm] = len(members)
        out.append(LayerSplit(layer, holdout, experiments, ineligible))
    return out


def units_in_two_places(log: LoggedDecisions) -> dict[str, int]:
    """Per layer, the units logged in more than one of its places (its holdout
    or an experiment): mutual exclusion makes every count 0."""
    places: dict[str, dict[str, set[str]]] = {}
    for unit, exp, arm, layer in zip(log.unit_id, log.experiment_id, log.arm, log.layer,
                                     strict=True):
        if layer is None or not layer.startswith(LAYER_PREFIX):
            continue
        place = HOLDOUT_ARM if arm == HOLDOUT_ARM else f"experiment {exp}"
        places.setdefault(layer.removeprefix(LAYER_PREFIX), {}).setdefault(unit, set()).add(
            place)
    return {layer: sum(1 for seen in by_unit.values() if len(seen) > 1)
            for layer, by_unit in places.items()}


@dataclass(frozen=True)
class Independence:
    """A chi-square test of independence between two layers' allocations."""

    layers: tuple[str, str]
    units: int
    chi2: float
    df: int
    p_value: float
    table: dict[str, dict[str, int]]


def layer_independence(table: RoutingTable, unit_ids: Sequence[str], first: str,
                       second: str) -> Independence:
    """Cross ``first``'s and ``second``'s allocations of ``unit_ids`` (each
    layer's own: holdout, an experiment's range, or no experiment's) and test
    their independence. Routing tries the second layer only for the units the
    first leaves, so the log cannot show it: the allocation can."""
    from scipy import stats

    from serving.routing.router import layer_slots

    slots = layer_slots(table, list(unit_ids))
    a = np.asarray([str(s) if s is not None else "(none)" for s in slots[first]], dtype=object)
    b = np.asarray([str(s) if s is not None else "(none)" for s in slots[second]], dtype=object)
    rows, cols = sorted(set(a.tolist())), sorted(set(b.tolist()))
    counts = np.asarray([[int(((a == r) & (b == c)).sum()) for c in cols] for r in rows])
    if counts.shape[0] < 2 or counts.shape[1] < 2:
        chi2, p, df = 0.0, 1.0, 0
    else:
        result = stats.chi2_contingency(counts, correction=False)
        chi2, p, df = float(result.statistic), float(result.pvalue), int(result.dof)
    return Independence((first, second), len(unit_ids), chi2, df, p,
                        {r: {c: int(counts[i, j]) for j, c in enumerate(cols)}
                         for i, r in enumerate(rows)})


# ------------------------------------------------------------------ outcomes


def unit_revenue_events(unit_ids: Sequence[str], exposed_at_us: npt.NDArray[np.int64],
                        lift: npt.NDArray[np.float64], seed: int) -> pa.Table:
    """One pre-period and one in-experiment revenue event per unit, untagged (so
    each analysis of a unit's experiment or layer reads them): a per-unit
    propensity shared by both (correlation about 0.7, for CUPED), plus ``lift``
    after exposure, landing within a second of it. Draws follow the sorted unit
    ids, so the same units get the same values in every run."""
    order = np.argsort(np.asarray(unit_ids, dtype=object), kind="stable")
    n = len(unit_ids)
    rng = np.random.default_rng(seed)
    propensity, noise_pre, noise_post = (rng.normal(0.0, 1.0, n) for _ in range(3))
    pre_delay = rng.integers(MICROS, 7 * 86_400 * MICROS, n)
    post_delay = rng.integers(0, MICROS, n)
    # values drawn in sorted-id order, put back in the callers' order
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    propensity, noise_pre, noise_post = propensity[back], noise_pre[back], noise_post[back]
    pre_delay, post_delay = pre_delay[back], post_delay[back]
    pre = REVENUE_MEAN + REVENUE_SD * (0.8 * propensity + 0.6 * noise_pre)
    post = REVENUE_MEAN + lift + REVENUE_SD * (0.8 * propensity + 0.6 * noise_post)
    ids = pa.array(list(unit_ids), type=pa.string())
    return _events(pa.concat_arrays([ids, ids]), np.concatenate([pre, post]),
                   np.concatenate([exposed_at_us - pre_delay, exposed_at_us + post_delay]))


def _events(unit_ids: pa.Array, values: npt.NDArray[np.float64],
            at_us: npt.NDArray[np.int64], experiment_id: str | None = None) -> pa.Table:
    n = len(unit_ids)
    return pa.table({
        "unit_id": unit_ids,
        "metric": pa.array([METRIC] * n, type=pa.string()),
        "value": pa.array(np.maximum(values, 0.0), type=pa.float64()),
        "timestamp": pa.array(at_us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "experiment_id": pa.array([experiment_id] * n, type=pa.string()),
    })


@dataclass(frozen=True)
class SwitchbackWorld:
    """The simulated market of the switchback scenario: per (window, region)
    a shock shared by its requests, the treatment's effect on revenue per
    request, and carry-over: for ``carry_over_s`` after a switch, requests
    still get the previous window's arm's effect."""

    lift: float = SWITCHBACK_LIFT
    carry_over_s: float = CARRY_OVER_S
    shock_sd: float = WINDOW_SHOCK_SD
    request_sd: float = REQUEST_SD


def switchback_events(at_us: npt.NDArray[np.int64], region: Sequence[str],
                      unit_ids: Sequence[str], arm_of: Callable[[npt.NDArray[np.int64],
                                                                 Sequence[str]],
                                                                npt.NDArray[np.int64]],
                      window_s: int, world: SwitchbackWorld, seed: int,
                      experiment_id: str | None = None) -> pa.Table:
    """One revenue event per request (at the request's time, so in its window
    and region): the mean, the cell's shock, the effect of the arm acting on
    the request, and noise. ``arm_of(windows, regions)`` is the design's arm
    (0 control) of each window and region, the previous window's included."""
    rng = np.random.default_rng(seed)
    window = np.floor_divide(at_us, window_s * MICROS)
    this_arm = arm_of(window, region)
    previous_arm = arm_of(window - 1, region)
    into_window_s = (at_us - window * window_s * MICROS) / MICROS
    carried = (previous_arm != this_arm) & (into_window_s < world.carry_over_s)
    acting = np.where(carried, previous_arm, this_arm) > 0
    labels = np.asarray(list(region), dtype=object)
    _, cell = np.unique(np.asarray([f"{w}:{r}" for w, r in zip(window, labels, strict=True)],
                                   dtype=object), return_inverse=True)
    shocks = rng.normal(0.0, world.shock_sd, int(cell.max()) + 1 if cell.size else 0)
    values = (REVENUE_MEAN + shocks[cell.reshape(-1)] + world.lift * acting
              + rng.normal(0.0, world.request_sd, at_us.size))
    return _events(pa.array(list(unit_ids), type=pa.string()), values, at_us, experiment_id)


def factorial_truth(model_lift: float = MODEL_LIFT, label_lift: float = LABEL_LIFT,
                    interaction: float = INTERACTION_LIFT) -> dict[tuple[str, ...], float]:
    """The effects the analysis reports, by their factors, for a cell lift of
    ``model·m + label·l + interaction·m·l``: a main effect averages its factor's
    difference over the other factor's levels, so it carries half the
    interaction."""
    return {("model",): model_lift + interaction / 2, ("label",): label_lift + interaction / 2,
            ("model", "label"): interaction}


def factorial_lift(arm: str, model_lift: float = MODEL_LIFT, label_lift: float = LABEL_LIFT,
                   interaction: float = INTERACTION_LIFT) -> float:
    """The planted lift of a cell of the model × label experiment."""
    levels = parse_cell(arm) or {}
    m = float(levels.get("model") == "challenger")
    label = float(levels.get("label") == "badge")
    return model_lift * m + label_lift * label + interaction * m * label


# ------------------------------------------------------------------ scenarios


def run_design_demo(config_path: Path, scenario: DesignScenario, requests: int = 4000,
                    concurrency: int = 8, port: int | None = None,
                    as_json: bool = False) -> int:
    """Run one design scenario end to end; 0 when every check holds, else 1."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from rollout.experiments.data import register_config_plans
    from serving.cli.common import CliError
    from serving.cli.demo.setup import prepare_demo, seed_models
    from serving.cli.demo.traffic import Population, drive_traffic
    from serving.cli.launch import start_gateway
    from serving.kernel.errors import ConfigError

    if requests < 1 or concurrency < 1:
        raise CliError("--requests and --concurrency must be at least 1")
    setup = prepare_demo(config_path, scenario, port, as_json)
    console, base, host, port, run_dir = (setup.console, setup.base, setup.host, setup.port,
                                          setup.run_dir)
    now = dt.datetime.now(dt.UTC)
    try:
        config = design_config(base, scenario, run_dir, now)
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    console.rule(f"[bold]Rampart demo: {scenario}")
    seed_models(setup, config)
    # The plans start a few seconds from now and are recorded now, before the
    # first exposure, as a real deployment would.
    now = dt.datetime.now(dt.UTC)
    config = design_config(base, scenario, run_dir, now + dt.timedelta(seconds=3))
    for problem in register_config_plans(config, now):
        console.print(f"[yellow]{problem}[/]")
    _print_design(console, config)
    with console.status("Starting the gateway on local Ray Serve (about 15 s)..."):
        gateway = start_gateway(config, host=host, port=port)
    console.print(f"Gateway up at {gateway.url}, routing version {gateway.table.version}")
    table = gateway.table
    spread = SWITCHBACK_SPREAD_S if scenario == "switchback" else None
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            over = f" over {spread:g} s" if spread else ""
            task = progress.add_task(f"{requests} requests from 2000 users{over}",
                                     total=requests)
            traffic = drive_traffic(gateway.url, Population(size=2_000), requests, concurrency,
                                    on_progress=lambda n: progress.advance(task, n),
                                    context_of=design_context(scenario), spread_s=spread)
    finally:
        with console.status("Stopping the gateway and flushing the decision log..."):
            gateway.stop()
    console.print(f"{traffic.ok} of {len(traffic.status_codes)} requests answered in "
                  f"{traffic.elapsed_s:.1f} s")
    from telemetry.decision_log import read_decisions

    log = LoggedDecisions.of(read_decisions(run_dir / "decisions"))
    analyse = {"layers": _analyse_layers, "switchback": _analyse_switchback,
               "factorial": _analyse_factorial}[scenario]
    result = analyse(console, config, table, run_dir, log)
    result.figures.update({"requests": len(traffic.status_codes), "answered": traffic.ok,
                           "logged": len(log.unit_id)})
    result.checks["every answer logged"] = len(log.unit_id) == traffic.ok
    _print_checks(console, result)
    if as_json:
        print(json.dumps(result.as_json()))
    return 0 if result.ok else 1


def _print_design(console: Console, config: RampartConfig) -> None:
    for layer in config.layers:
        held = (f"holdout buckets [0, {layer.holdout_bp})" if layer.holdout_bp else
                "no holdout")
        console.print(f"Layer [bold]{layer.id}[/] (salt {layer.salt}): {held}",
                      highlight=False)
    for exp in config.experiments:
        where = (f" in layer {exp.layer}, buckets [{exp.layer_buckets[0]}, "
                 f"{exp.layer_buckets[1]})" if exp.layer and exp.layer_buckets else "")
        split = ", ".join(f"{a.name}={a.weight_bp / 100:g}% ({a.version})" for a in exp.arms)
        console.print(f"Experiment [bold]{exp.id}[/]{where}: {split}", highlight=False)


def _import(console: Console, run_dir: Path, events: pa.Table, planted: str) -> None:
    import pyarrow.parquet as pq

    from telemetry.outcomes_log import import_outcomes

    simulated = run_dir / "simulated-outcomes.parquet"
    pq.write_table(events, simulated)
    imported = import_outcomes(simulated, run_dir / "outcomes")
    console.print(f"Simulated outcomes ({planted}) imported: {imported.rows} events")


def _as_of() -> dt.datetime:
    # the last events land up to a second after the last exposure
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


def _primary_effect(report: Any, name: str, truth: float) -> PlantedEffect:
    primary = report.primary()[0]
    return PlantedEffect(name, truth, primary.abs_effect, primary.ci_low, primary.ci_high,
                         primary.p_value)


def _analyse_layers(console: Console, config: RampartConfig, table: RoutingTable,
                    run_dir: Path, log: LoggedDecisions) -> DesignResult:
    from serving.cli.analyze import run_analysis, summary_text
    from serving.cli.analyze_holdout import holdout_summary_text, run_holdout_analysis

    result = DesignResult("layers")
    console.rule("[bold]Layers: how units split")
    splits = layer_splits(log)
    grid = Table(title="Distinct units per layer (from the decision log)")
    for column in ("layer", "holdout", "experiment", "arms", "ineligible"):
        grid.add_column(column)
    for split in splits:
        names = sorted({*split.experiments, *split.ineligible})
        if not names:
            grid.add_row(split.layer, str(split.holdout), "-", "-", "-")
        for i, name in enumerate(names):
            arms = ", ".join(f"{arm} {n}" for arm, n in split.experiments.get(name, {}).items())
            grid.add_row(split.layer if i == 0 else "", str(split.holdout) if i == 0 else "",
                         name, arms or "-", str(split.ineligible.get(name, 0)))
    console.print(grid)
    result.figures["splits"] = {s.layer: {"holdout": s.holdout, "experiments": s.experiments,
                                          "ineligible": s.ineligible} for s in splits}
    first = log.first_by_unit()
    outside = sum(1 for i in first.values() if not (log.layer[i] or "").startswith(LAYER_PREFIX))
    console.print(f"{len(first)} units in all; {outside} reached no layer's experiment or "
                  "holdout (the default route)")
    overlaps = units_in_two_places(log)
    exclusive = not any(overlaps.values())
    console.print(f"Mutual exclusion: units in two places of one layer: {overlaps}"
                  + (" (none)" if exclusive else "  ** VIOLATED **"))
    result.checks["mutual exclusion"] = exclusive
    result.figures["units_in_two_places"] = overlaps
    independence = layer_independence(table, sorted(first), LAYERED_LAYER, SECOND_LAYER)
    console.print(f"Independence of layers {LAYERED_LAYER} and {SECOND_LAYER} over the "
                  f"{independence.units} units seen (each layer's own allocation, "
                  f"{independence.table}): chi-square {independence.chi2:.2f} on "
                  f"{independence.df} df, p = {independence.p_value:.3f}")
    result.checks["layers independent (p > 0.001)"] = independence.p_value > 0.001
    result.figures["independence"] = {"chi2": independence.chi2, "df": independence.df,
                                      "p_value": independence.p_value,
                                      "units": independence.units}

    # Each unit's lift is that of the arm of its first decision (the analysis
    # counts a unit in the arm it was first exposed to).
    units = sorted(first)
    lift = np.asarray([
        LAYER_LIFTS.get(log.experiment_id[first[u]] or "", 0.0)
        if log.arm[first[u]] not in ("control", HOLDOUT_ARM, INELIGIBLE_ARM, "default") else 0.0
        for u in units])
    at = np.asarray([log.at_us[first[u]] for u in units], dtype=np.int64)
    planted = ", ".join(f"{exp} treatment +{value:g}" for exp, value in LAYER_LIFTS.items())
    _import(console, run_dir, unit_revenue_events(units, at, lift, seed=2026),
            f"revenue {REVENUE_MEAN:g} a unit; {planted}")
    as_of = _as_of()
    for exp in config.experiments:
        console.rule(f"[bold]Analysis: {exp.id}")
        report = run_analysis(config, exp.id, as_of=as_of)
        console.print(summary_text(report), markup=False, highlight=False)
        result.effects.append(_primary_effect(report, exp.id, LAYER_LIFTS[exp.id]))
    console.rule(f"[bold]Analysis: layer {LAYERED_LAYER}'s holdout against what it shipped")
    holdout = run_holdout_analysis(config, LAYERED_LAYER, as_of=as_of)
    console.print(holdout_summary_text(holdout), markup=False, highlight=False)
    shipped = [lift[i] for i, u in enumerate(units)
               if log.layer[first[u]] == LAYER_PREFIX + LAYERED_LAYER
               and log.arm[first[u]] not in (HOLDOUT_ARM, INELIGIBLE_ARM)]
    # The holdout's true effect is the mean planted lift of the units shipped.
    result.effects.append(_primary_effect(holdout.analysis, f"holdout {LAYERED_LAYER}",
                                          float(np.mean(shipped)) if shipped else math.nan))
    return result


def _analyse_switchback(console: Console, config: RampartConfig, table: RoutingTable,
                        run_dir: Path, log: LoggedDecisions) -> DesignResult:
    from serving.cli.analyze import run_analysis, summary_text

    result = DesignResult("switchback")
    exp = next(e for e in config.experiments if e.id == SWITCHBACK_EXPERIMENT)
    design = exp.switchback
    assert design is not None
    rows = [i for i, e in enumerate(log.experiment_id) if e == exp.id]
    at = log.at_us[rows]
    regions = [log.region[i] or "" for i in rows]
    allocation = allocate([a.name for a in exp.arms], [a.weight_bp for a in exp.arms])

    def arm_of(windows: npt.NDArray[np.int64], region: Sequence[str]) -> npt.NDArray[np.int64]:
        labels = np.asarray(list(region), dtype=object)
        return np.asarray(allocation.arms_of(window_arm_buckets(exp.salt, windows, labels)),
                          dtype=np.int64)

    # The gateway routes by the clock reading it logs, so each row's window
    # and region give back its arm.
    windows = np.floor_divide(at, design.window_s * MICROS)
    treated = np.asarray([exp.arms[0].name != log.arm[i] for i in rows], dtype=bool)
    agrees = bool(np.array_equal(treated, arm_of(windows, regions) > 0))
    cells = len(set(zip(windows.tolist(), regions, strict=True)))
    console.print(f"{len(rows)} requests in {cells} "
                  f"window cells ({design.window_s} s windows x {len(set(regions))} regions); "
                  "every logged arm is its window's: " + ("yes" if agrees else "NO"))
    result.checks["one arm per window"] = agrees
    world = SwitchbackWorld()
    events = switchback_events(at, regions, [log.unit_id[i] for i in rows], arm_of,
                               design.window_s, world, seed=2026)
    _import(console, run_dir, events,
            f"revenue {REVENUE_MEAN:g} a request, treatment +{world.lift:g}, window shocks "
            f"sd {world.shock_sd:g}, carry-over of the previous arm for "
            f"{world.carry_over_s:g} s after a switch")
    as_of = _as_of()
    window_tests: dict[str, Any] = {}  # the window-level test's figures, by analysis
    console.rule(f"[bold]Analysis: {exp.id}, burn-in {design.burn_in_s} s")
    report = run_analysis(config, exp.id, as_of=as_of)
    console.print(summary_text(report), markup=False, highlight=False)
    result.effects.append(_switchback_effect(report, f"burn-in {design.burn_in_s} s",
                                             world.lift, checked=True, figures=window_tests))
    console.rule("[bold]The same windows without burn-in")
    unburnt = config.model_copy(update={"experiments": tuple(
        e.model_copy(update={"switchback": design.model_copy(update={"burn_in_s": 0})})
        if e.id == exp.id else e for e in config.experiments)})
    report = run_analysis(unburnt, exp.id, as_of=as_of)
    console.print(summary_text(report), markup=False, highlight=False)
    result.effects.append(_switchback_effect(report, "no burn-in", world.lift, checked=False,
                                             figures=window_tests))
    result.figures["windows"] = window_tests
    return result


def _switchback_effect(report: Any, name: str, truth: float, *, checked: bool,
                       figures: dict[str, Any]) -> PlantedEffect:
    primary = report.primary()[0]
    summary = primary.switchback
    if summary is not None:
        figures["burn_in" if checked else "no_burn_in"] = {
            "burn_in_s": summary.burn_in_s, "windows_control": summary.windows_control,
            "windows_treatment": summary.windows_treatment,
            "burn_in_requests": summary.burn_in_requests,
            "regression_p_value": summary.regression_p_value, "ri_p_value": summary.ri_p_value,
            "naive_p_value": summary.naive_p_value}
    return PlantedEffect(name, truth, primary.abs_effect, primary.ci_low, primary.ci_high,
                         primary.p_value, checked=checked)


def _analyse_factorial(console: Console, config: RampartConfig, table: RoutingTable,
                       run_dir: Path, log: LoggedDecisions) -> DesignResult:
    from serving.cli.analyze import run_analysis, summary_text

    result = DesignResult("factorial")
    first = log.first_by_unit()
    units = sorted(u for u, i in first.items() if log.experiment_id[i] == FACTORIAL_EXPERIMENT)
    cells: dict[str, int] = {}
    for u in units:
        cells[log.arm[first[u]]] = cells.get(log.arm[first[u]], 0) + 1
    console.print(f"{len(units)} units in cells {dict(sorted(cells.items()))}")
    result.figures["cells"] = cells
    lift = np.asarray([factorial_lift(log.arm[first[u]]) for u in units])
    at = np.asarray([log.at_us[first[u]] for u in units], dtype=np.int64)
    _import(console, run_dir, unit_revenue_events(units, at, lift, seed=2026),
            f"revenue {REVENUE_MEAN:g} a unit; challenger +{MODEL_LIFT:g}, badge "
            f"+{LABEL_LIFT:g}, both together a further +{INTERACTION_LIFT:g}")
    console.rule(f"[bold]Analysis: {FACTORIAL_EXPERIMENT}")
    report = run_analysis(config, FACTORIAL_EXPERIMENT, as_of=_as_of())
    console.print(summary_text(report), markup=False, highlight=False)
    truth = factorial_truth()
    factorial = report.factorial
    if factorial is None or factorial.error is not None:
        console.print(f"[red]no factorial effects: "
                      f"{'none' if factorial is None else factorial.error}[/]")
        result.checks["factorial effects estimated"] = False
        return result
    for row in factorial.effects:
        if tuple(row.factors) in truth:
            result.effects.append(PlantedEffect(
                row.label, truth[tuple(row.factors)], row.estimate, row.ci_low, row.ci_high,
                row.adjusted_p_value))
    result.checks["every planted effect reported"] = len(result.effects) == len(truth)
    return result


def _print_checks(console: Console, result: DesignResult) -> None:
    console.rule(f"[bold]{result.scenario}: planted effects and checks")
    for effect in result.effects:
        colour = "green" if effect.covered or not effect.checked else "red"
        console.print(f"[{colour}]{effect.line()}[/]", highlight=False)
    for name, held in result.checks.items():
        console.print(f"[{'green' if held else 'red'}]{name}: {'yes' if held else 'NO'}[/]")
    console.print("[green]Demo finished.[/]" if result.ok else
                  "[red]Demo finished; a check failed (a 95% interval misses the truth in "
                  "one run in twenty).[/]")
