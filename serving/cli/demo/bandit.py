"""``rampart demo --scenario bandit``: a Thompson-sampling bandit over the demo
classifier's versions, end to end on the gateway.

The packaged config's experiments are replaced by one bandit experiment over
three registered versions (Thompson sampling on Beta posteriors, a 5% floor,
a binary ``conversion`` reward with a 1 s attribution window, an update every
2 s). The gateway starts on local Ray with a fresh log; the rollout controller
actor runs the bandit. Traffic comes in rounds of new units: each unit is
served once, and one that converts (at its arm's planted rate for that round)
is posted to ``POST /v1/outcomes`` at once, inside its window. After each
round the demo reads ``GET /v1/routing`` for the weights in force.

The planted world: each arm has a base conversion rate (one clearly best) and
every arm shares a trend that falls over the run (a novelty that wears off).
The trend is common to the arms, so the true difference between two arms is
the difference of their base rates all through the run; but a bandit serves
the arms it favours late, when conversion is lower, so the plain difference of
means mixes the trend into the effect. The analysis ``rampart analyze`` runs
(inverse-propensity weighting by the logged propensities) is printed with the
planted truth, next to the naive difference, flagged.

Regret is the expected one, from the planted rates: per unit, the best arm's
rate minus that of the arm it was served (the trend cancels), summed; an equal
split over the same units would have cost ``units × (best − mean rate)``.

An HTML report under the run directory plots the weights per round, the
cumulative regret against the equal split, and the IPW and naive estimates
with their intervals and the truth. The exit code is 0 only when the best arm
ends with the largest share, the bandit's regret is below the equal split's
and the IPW interval of the best arm against the control covers the truth.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from rollout.experiments.report import html_figure, plot_axes, png_base64
from serving.cli.demo.designs import DesignResult, PlantedEffect
from serving.cli.demo.models import DEMO_MODEL_NAME, FEATURE_NAMES

if TYPE_CHECKING:
    import httpx

    from rollout.experiments.bandit_report import BanditReport
    from serving.kernel.config import RampartConfig

SCENARIO = "bandit"
EXPERIMENT = "demo-bandit"
METRIC = "conversion"
# Arm name -> registered alias; the first arm is the control.
ARM_VERSIONS: dict[str, str] = {"control": "champion", "challenger": "challenger",
                                "tree": "tree"}
# Base conversion rates per arm (the challenger clearly best) and the trend
# every arm shares, from the first round to the last.
BASE_RATES: dict[str, float] = {"control": 0.20, "challenger": 0.40, "tree": 0.25}
TREND_START, TREND_END = 0.15, -0.15
ROUNDS, UNITS_PER_ROUND = 12, 150
WINDOW_S, INTERVAL_S, FLOOR_BP = 1.0, 2.0, 500
# After a round, long enough for its reward windows to close and the
# controller's next update (every INTERVAL_S) to settle them.
PAUSE_S = 2.0
LOG_FLUSH_S = 0.2
SEED = 2026


# ------------------------------------------------------------------ the world


@dataclass(frozen=True)
class BanditWorld:
    """The planted conversion rates: an arm's rate in round ``r`` (0-based) is
    its base rate plus a trend shared by every arm, linear from ``trend_start``
    in the first round to ``trend_end`` in the last."""

    base_rates: Mapping[str, float]
    trend_start: float = TREND_START
    trend_end: float = TREND_END
    rounds: int = ROUNDS

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self.base_rates)

    @property
    def control(self) -> str:
        return self.arms[0]

    @property
    def best(self) -> str:
        return max(self.base_rates, key=lambda arm: self.base_rates[arm])

    def trend(self, round_index: int) -> float:
        """The shared trend in round ``round_index``."""
        if self.rounds < 2:
            return self.trend_start
        share = round_index / (self.rounds - 1)
        return self.trend_start + (self.trend_end - self.trend_start) * share

    def rate(self, arm: str, round_index: int) -> float:
        """The conversion rate of ``arm`` in round ``round_index``."""
        return self.base_rates[arm] + self.trend(round_index)

    def gap(self, arm: str) -> float:
        """Expected regret of serving ``arm`` to one unit (the trend cancels)."""
        return self.base_rates[self.best] - self.base_rates[arm]

    def effect(self, arm: str) -> float:
        """The true difference of ``arm`` from the control, in every round."""
        return self.base_rates[arm] - self.base_rates[self.control]

    def equal_split_regret(self, units: int) -> float:
        """Expected regret of serving ``units`` units in an equal split."""
        mean = sum(self.base_rates.values()) / len(self.base_rates)
        return units * (self.base_rates[self.best] - mean)


def expected_regret(served: Mapping[str, int], world: BanditWorld) -> float:
    """Expected regret of serving each arm its count of ``served`` units.

    >>> expected_regret({"a": 10, "b": 4}, BanditWorld({"a": 0.25, "b": 0.75}))
    5.0
    """
    return sum(n * world.gap(arm) for arm, n in served.items())


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class RoundResult:
    """One round of new units: how many were sent and answered, the arms that
    served them, their conversions, the weights (bp) in force when the round
    began and read after it, and the cumulative regret after it (the bandit's
    and an equal split's over the same units)."""

    index: int
    units: int
    answered: int
    served: dict[str, int]
    conversions: dict[str, int]
    outcomes_refused: int
    weights_before: dict[str, int]
    weights_after: dict[str, int]
    cumulative_regret: float
    cumulative_equal_split: float

    def as_json(self) -> dict[str, Any]:
        return {"round": self.index, "units": self.units, "answered": self.answered,
                "served": self.served, "conversions": self.conversions,
                "weights_before": self.weights_before, "weights_after": self.weights_after,
                "cumulative_regret": self.cumulative_regret,
                "cumulative_equal_split": self.cumulative_equal_split}


@dataclass
class BanditDemoRun:
    """What the scenario measured, beside the checks and effects of ``result``."""

    world: BanditWorld
    rounds: list[RoundResult] = field(default_factory=list)
    result: DesignResult = field(default_factory=lambda: DesignResult(SCENARIO))

    @property
    def units(self) -> int:
        return sum(r.answered for r in self.rounds)

    @property
    def regret(self) -> float:
        return self.rounds[-1].cumulative_regret if self.rounds else 0.0

    @property
    def equal_split(self) -> float:
        return self.rounds[-1].cumulative_equal_split if self.rounds else 0.0

    @property
    def final_weights(self) -> dict[str, int]:
        return self.rounds[-1].weights_after if self.rounds else {}


# ------------------------------------------------------------------ config


def bandit_experiment(world: BanditWorld) -> dict[str, Any]:
    """The scenario's experiment as a config file holds it: equal starting
    weights over the world's arms, Thompson sampling on the conversion."""
    arms = list(world.arms)
    weights = [10_000 // len(arms)] * len(arms)
    weights[0] += 10_000 - sum(weights)
    return {
        "id": EXPERIMENT, "salt": "demo-bandit-2026-12",
        "arms": [{"name": arm, "model": DEMO_MODEL_NAME, "version": ARM_VERSIONS[arm],
                  "weight_bp": bp} for arm, bp in zip(arms, weights, strict=True)],
        "bandit": {"policy": {"policy": "thompson_beta"}, "floor_bp": FLOOR_BP,
                   "reward": {"metric": METRIC, "type": "binary", "window_s": WINDOW_S},
                   "interval_s": INTERVAL_S, "seed": 7,
                   # The demo is about rewards: on a busy laptop one slow first
                   # call of a version would fail its latency check and remove
                   # the arm for good.
                   "guardrails": None},
    }


def bandit_config(base: RampartConfig, world: BanditWorld, run_dir: Path) -> RampartConfig:
    """``base`` with the scenario's bandit experiment instead of its own, and
    this run's logs and stores under ``run_dir``; the logs flush often, so the
    controller sees each round's decisions and outcomes within its update."""
    from serving.kernel.config import parse_config

    document = base.model_dump(mode="json")
    document["experiments"] = [bandit_experiment(world)]
    document["layers"] = []
    for log, place in (("decision_log", "decisions"), ("outcomes_log", "outcomes")):
        document[log]["path"] = str(run_dir / place)
        document[log]["flush_interval_s"] = LOG_FLUSH_S
    document["rollout_store_url"] = f"sqlite:///{(run_dir / 'rollouts.db').resolve()}"
    document["preregistration_dir"] = str(run_dir / "preregistrations")
    return parse_config(document, source="the bandit demo config")


@contextmanager
def _ingest_token() -> Iterator[str]:
    """The ingest token the gateway starts with (``RAMPART_INGEST_TOKEN``, or a
    fresh one for this run), restored afterwards."""
    from serving.gateway.ray_app import INGEST_TOKEN_ENV

    given = os.environ.get(INGEST_TOKEN_ENV)
    token = given or secrets.token_urlsafe(24)
    os.environ[INGEST_TOKEN_ENV] = token
    try:
        yield token
    finally:
        if given is None:
            os.environ.pop(INGEST_TOKEN_ENV, None)


# ------------------------------------------------------------------ traffic


def _weights(client: httpx.Client) -> dict[str, int]:
    table = client.get("/v1/routing").json()
    (experiment,) = [e for e in table["experiments"] if e["id"] == EXPERIMENT]
    return {str(a["name"]): int(a["weight_bp"]) for a in experiment["arms"]}


@dataclass(frozen=True)
class _Served:
    status: int
    arm: str | None
    converted: bool
    outcome_status: int | None


def _serve_unit(client: httpx.Client, token: str, unit_id: str, features: Sequence[float],
                draw: float, *, round_index: int, world: BanditWorld) -> _Served:
    """Serve one unit; when it converts at its arm's rate, post the outcome at once."""
    import httpx

    try:
        answer = client.post("/v1/predict", json={
            "unit_id": unit_id,
            "features": dict(zip(FEATURE_NAMES, features, strict=True))})
    except httpx.HTTPError:
        return _Served(0, None, False, None)
    if answer.status_code != 200:
        return _Served(answer.status_code, None, False, None)
    arm = str(answer.json()["arm"])
    if draw >= world.rate(arm, round_index):
        return _Served(200, arm, False, None)
    try:
        posted = client.post("/v1/outcomes", headers={"Authorization": f"Bearer {token}"},
                             json={"unit_id": unit_id, "metric": METRIC, "value": 1.0})
        return _Served(200, arm, True, posted.status_code)
    except httpx.HTTPError:
        return _Served(200, arm, True, 0)


def drive_rounds(console: Console, url: str, token: str, world: BanditWorld,
                 concurrency: int, units_per_round: int = UNITS_PER_ROUND,
                 pause_s: float = PAUSE_S) -> list[RoundResult]:
    """Send ``world.rounds`` rounds of new units, printing each; after each,
    wait ``pause_s`` for the controller and read the weights in force."""
    import httpx

    rng = np.random.default_rng(SEED)
    rounds: list[RoundResult] = []
    regret = equal = 0.0
    grid = Table(title=f"{EXPERIMENT}: weights in force per round (bp) and expected regret")
    for column in ("round", "units", *(f"{a} served" for a in world.arms),
                   *(f"{a} bp" for a in world.arms), "regret", "equal split"):
        grid.add_column(column, justify="right")
    with httpx.Client(base_url=url, timeout=30.0) as client, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        weights = _weights(client)
        for index in range(world.rounds):
            features = rng.normal(size=(units_per_round, len(FEATURE_NAMES))).tolist()
            draws = rng.random(units_per_round).tolist()
            units = [f"unit-{index:02d}-{i:04d}" for i in range(units_per_round)]
            serve = partial(_serve_unit, client, token, round_index=index, world=world)
            served = list(pool.map(serve, units, features, draws))
            counts = {arm: sum(1 for s in served if s.arm == arm) for arm in world.arms}
            answered = sum(counts.values())
            regret += expected_regret(counts, world)
            equal += world.equal_split_regret(answered)
            time.sleep(pause_s)
            after = _weights(client)
            rounds.append(RoundResult(
                index + 1, units_per_round, answered, counts,
                {arm: sum(1 for s in served if s.arm == arm and s.converted)
                 for arm in world.arms},
                sum(1 for s in served if s.converted and s.outcome_status != 202),
                weights, after, regret, equal))
            grid.add_row(str(index + 1), str(answered), *(str(counts[a]) for a in world.arms),
                         *(str(weights.get(a, 0)) for a in world.arms), f"{regret:.1f}",
                         f"{equal:.1f}")
            console.print(f"round {index + 1:>2}: {answered} units, served {counts}, "
                          f"weights after {after}, regret {regret:.1f} vs equal split "
                          f"{equal:.1f}", highlight=False)
            weights = after
    console.print(grid)
    return rounds


# ------------------------------------------------------------------ analysis


def analyse(config: RampartConfig, world: BanditWorld, as_of: dt.datetime
            ) -> tuple[BanditReport, list[PlantedEffect], int]:
    """``rampart analyze``'s analysis of the run (the same functions), each
    treatment arm's IPW and naive differences beside the planted truth (only
    the best arm's IPW difference is checked), and the units left pending."""
    from rollout.experiments.bandit_data import load_bandit_run
    from rollout.experiments.bandit_report import analyse_bandit_run

    experiment = next(e for e in config.experiments if e.id == EXPERIMENT)
    run = load_bandit_run(config.decision_log.path, config.outcomes_log.path, experiment,
                          as_of)
    report = analyse_bandit_run(
        run.experiment_id, run.arms, run.arm, run.propensity, run.reward, run.exposed_at,
        metric=run.metric, reward_type=run.reward_type, window_s=run.window_s,
        as_of=run.as_of, pending_units=run.pending)
    effects = []
    for arm in world.arms[1:]:
        for estimator in ("ipw", "naive"):
            c = report.comparison(arm, estimator)
            effects.append(PlantedEffect(
                f"{arm} vs {world.control} ({estimator})", world.effect(arm), c.estimate,
                c.ci_low, c.ci_high, c.p_value,
                checked=estimator == "ipw" and arm == world.best))
    return report, effects, run.pending


# ------------------------------------------------------------------ report








def weights_plot(run: BanditDemoRun) -> str:
    """Each arm's share (%) at the start and after every round, as base64 PNG."""
    fig, ax = plot_axes()
    xs = list(range(len(run.rounds) + 1))
    for arm in run.world.arms:
        shares = [run.rounds[0].weights_before.get(arm, 0) / 100 if run.rounds else 0.0]
        shares += [r.weights_after.get(arm, 0) / 100 for r in run.rounds]
        ax.plot(xs, shares, marker="o", label=arm)
    ax.axhline(FLOOR_BP / 100, color="grey", linestyle=":", label="floor")
    ax.set_xlabel("round (0: the start)")
    ax.set_ylabel("share of traffic (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="center right")
    return png_base64(fig)


def regret_plot(run: BanditDemoRun) -> str:
    """Cumulative expected regret against units served, the bandit's and the
    equal split's, as base64 PNG."""
    fig, ax = plot_axes()
    units = np.cumsum([0, *(r.answered for r in run.rounds)])
    ax.plot(units, [0.0, *(r.cumulative_regret for r in run.rounds)], marker="o",
            label="bandit")
    ax.plot(units, [0.0, *(r.cumulative_equal_split for r in run.rounds)], linestyle="--",
            label="equal split")
    ax.set_xlabel("units served")
    ax.set_ylabel("cumulative expected regret (conversions)")
    ax.legend(loc="upper left")
    return png_base64(fig)


def estimates_plot(effects: Sequence[PlantedEffect]) -> str:
    """Each difference's estimate with its interval, a row per estimator and
    arm, and the planted truth of each arm as a vertical mark, as base64 PNG."""
    fig, ax = plot_axes((7.5, 0.6 + 0.55 * max(len(effects), 1)))
    rows = list(reversed(effects))
    for y, effect in enumerate(rows):
        if effect.estimate is None:
            continue
        low = effect.estimate - (effect.ci_low if effect.ci_low is not None
                                 else effect.estimate)
        high = (effect.ci_high if effect.ci_high is not None else effect.estimate
                ) - effect.estimate
        naive = "(naive)" in effect.name
        ax.errorbar([effect.estimate], [y], xerr=[[low], [high]], fmt="s" if naive else "o",
                    color="tab:red" if naive else "tab:blue", capsize=4)
        ax.plot([effect.truth, effect.truth], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [e.name for e in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("difference in conversion rate from the control "
                  "(black: planted truth; red: naive, biased)")
    return png_base64(fig)


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:right}.text{text-align:left}.good{color:#176b2c}.bad{color:#a11}
img.plot{max-width:100%}figcaption{color:#555;font-size:.9rem}"""


def _cells(values: Sequence[str]) -> str:
    return "".join(f"<td>{html.escape(v)}</td>" for v in values)


def render_html(run: BanditDemoRun, report_text: str) -> str:
    """The scenario's self-contained HTML report: planted world, checks,
    rounds, the three plots and the analysis ``rampart analyze`` prints."""
    world, result = run.world, run.result
    verdict = ("<p class='good'>Every check held.</p>" if result.ok
               else "<p class='bad'>A check failed.</p>")
    checks = "".join(f"<li class='{'good' if held else 'bad'}'>{html.escape(name)}: "
                     f"{'yes' if held else 'no'}</li>" for name, held in result.checks.items())
    planted = "".join(
        f"<tr><td class='text'>{html.escape(arm)}</td>"
        + _cells([ARM_VERSIONS[arm], f"{world.base_rates[arm]:.2f}", f"{world.gap(arm):.2f}"])
        + "</tr>" for arm in world.arms)
    rounds = "".join(
        "<tr>" + _cells([str(r.index), str(r.answered),
                         *(str(r.served[a]) for a in world.arms),
                         *(str(r.weights_after.get(a, 0)) for a in world.arms),
                         f"{r.cumulative_regret:.1f}", f"{r.cumulative_equal_split:.1f}"])
        + "</tr>" for r in run.rounds)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (
        "round", "units", *(f"{a} served" for a in world.arms),
        *(f"{a} bp after" for a in world.arms), "regret", "equal split"))
    effects = "".join(
        f"<tr><td class='text'>{html.escape(e.name)}</td>"
        + _cells([f"{e.truth:.3f}", "n/a" if e.estimate is None else f"{e.estimate:.3f}",
                  "n/a" if e.ci_low is None or e.ci_high is None
                  else f"[{e.ci_low:.3f}, {e.ci_high:.3f}]",
                  "yes" if e.covered else "no", "yes" if e.checked else "no (shown)"])
        + "</tr>" for e in result.effects)
    return f"""<!doctype html><html><head><meta charset='utf-8'>
<title>Rampart demo: bandit {EXPERIMENT}</title><style>{STYLE}</style></head><body>
<h1>Bandit demo: {EXPERIMENT}</h1>{verdict}<ul>{checks}</ul>
<h2>Planted world</h2>
<p>Thompson sampling (Beta), floor {FLOOR_BP / 100:g}%, reward {METRIC} within {WINDOW_S:g} s,
an update every {INTERVAL_S:g} s. Every arm shares a trend from {world.trend_start:+.2f} in the
first round to {world.trend_end:+.2f} in the last, so the arms' differences are those of their
base rates all through the run.</p>
<table><thead><tr><th class='text'>arm</th><th>version</th><th>base rate</th>
<th>regret per unit</th></tr></thead><tbody>{planted}</tbody></table>
<h2>Rounds</h2>
<p>{run.units} units in {len(run.rounds)} rounds: expected regret {run.regret:.1f}
conversions, against {run.equal_split:.1f} for an equal split of the same units.</p>
<table><thead><tr>{head}</tr></thead><tbody>{rounds}</tbody></table>
{html_figure("weights per round", weights_plot(run),
         "Each arm's share of the buckets at the start and after each round.")}
{html_figure("cumulative regret", regret_plot(run),
         "Cumulative expected regret of the bandit against an equal split.")}
<h2>Analysis</h2>
<table><thead><tr><th class='text'>difference</th><th>truth</th><th>estimate</th>
<th>95% CI</th><th>covers</th><th>checked</th></tr></thead><tbody>{effects}</tbody></table>
{html_figure("IPW and naive estimates", estimates_plot(result.effects),
         "IPW (blue) and naive (red, biased: the allocation changed during the run) "
         "differences with 95% intervals; black marks the planted truth.")}
<pre>{html.escape(report_text)}</pre>
</body></html>
"""


# ------------------------------------------------------------------ scenario


def run_bandit_demo(config_path: Path, concurrency: int = 8, port: int | None = None,
                    as_json: bool = False) -> int:
    """Run the bandit scenario end to end; 0 when every check holds, else 1."""
    from rollout.experiments.bandit_report import bandit_text
    from rollout.experiments.data import AnalysisInputError
    from serving.cli.common import CliError
    from serving.cli.demo.setup import prepare_demo, seed_models
    from serving.cli.launch import start_gateway
    from serving.kernel.errors import ConfigError
    from telemetry.decision_log import read_decisions

    if concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    setup = prepare_demo(config_path, SCENARIO, port, as_json)
    console, base, host, port, run_dir = (setup.console, setup.base, setup.host, setup.port,
                                          setup.run_dir)
    world = BanditWorld(BASE_RATES)
    try:
        config = bandit_config(base, world, run_dir)
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    console.rule(f"[bold]Rampart demo: {SCENARIO}")
    seed_models(setup, config)
    rates = ", ".join(f"{arm} ({ARM_VERSIONS[arm]}) {rate:.2f}"
                      for arm, rate in world.base_rates.items())
    console.print(f"Bandit [bold]{EXPERIMENT}[/]: Thompson sampling (Beta), floor "
                  f"{FLOOR_BP / 100:g}%, reward {METRIC} within {WINDOW_S:g} s, update every "
                  f"{INTERVAL_S:g} s; planted conversion {rates}, plus a trend shared by all "
                  f"from {world.trend_start:+.2f} to {world.trend_end:+.2f} over "
                  f"{world.rounds} rounds of {UNITS_PER_ROUND} new units", highlight=False)
    run = BanditDemoRun(world)
    result = run.result
    with _ingest_token() as token:
        with console.status("Starting the gateway on local Ray Serve (about 15 s)..."):
            gateway = start_gateway(config, host=host, port=port)
        console.print(f"Gateway up at {gateway.url}, routing version {gateway.table.version}")
        try:
            run.rounds = drive_rounds(console, gateway.url, token, world, concurrency)
        finally:
            with console.status("Stopping the gateway and flushing the logs..."):
                gateway.stop()
    answered = run.units
    sent = sum(r.units for r in run.rounds)
    logged = [r for r in read_decisions(config.decision_log.path).to_pylist()
              if r["experiment_id"] == EXPERIMENT and r["role"] == "primary"
              and r["status"] == "ok"]
    final = run.final_weights
    result.checks["best arm ends with the largest share"] = (
        bool(final) and max(final, key=lambda a: final[a]) == world.best)
    result.checks["regret below the equal split"] = run.regret < run.equal_split
    result.checks["every answer logged"] = len(logged) == answered
    result.checks["every outcome accepted"] = not any(r.outcomes_refused for r in run.rounds)

    console.rule(f"[bold]Analysis: {EXPERIMENT} (as rampart analyze)")
    report_text = ""
    pending = 0
    try:
        report, effects, pending = analyse(config, world, dt.datetime.now(dt.UTC))
    except (AnalysisInputError, ValueError) as exc:
        console.print(f"[red]no analysis: {exc}[/]")
        result.checks["analysed"] = False
    else:
        report_text = bandit_text(report)
        console.print(report_text, markup=False, highlight=False)
        result.effects.extend(effects)
        ipw = next(e for e in effects if e.checked)
        result.checks["IPW interval covers the planted difference"] = ipw.covered
        _print_effects(console, effects)
    result.figures.update({
        "requests": sent, "answered": answered, "logged": len(logged), "pending": pending,
        "best_arm": world.best, "base_rates": dict(world.base_rates),
        "trend": [world.trend_start, world.trend_end],
        "regret": {"units": answered, "bandit": run.regret, "equal_split": run.equal_split},
        "final_weights": final, "rounds": [r.as_json() for r in run.rounds]})
    page = run_dir / "bandit-report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_html(run, report_text), encoding="utf-8")
    result.figures["report"] = str(page)
    console.print(f"HTML report with plots: {page}")
    console.print(f"Expected regret {run.regret:.1f} conversions over {answered} units, "
                  f"against {run.equal_split:.1f} for an equal split "
                  f"({run.regret / run.equal_split:.0%} of it)" if run.equal_split else
                  "No unit answered: no regret to compare", highlight=False)
    _print_checks(console, result)
    if as_json:
        print(json.dumps(result.as_json()))
    return 0 if result.ok else 1


def _print_effects(console: Console, effects: Sequence[PlantedEffect]) -> None:
    grid = Table(title="Differences from the control against the planted truth")
    for column in ("difference", "truth", "estimate", "95% CI", "covers", "note"):
        grid.add_column(column)
    for e in effects:
        interval = ("n/a" if e.ci_low is None or e.ci_high is None
                    else f"[{e.ci_low:.3f}, {e.ci_high:.3f}]")
        note = ("** biased: allocation changed during the run **" if "(naive)" in e.name
                else "checked" if e.checked else "shown")
        grid.add_row(e.name, f"{e.truth:.3f}",
                     "n/a" if e.estimate is None else f"{e.estimate:.3f}", interval,
                     "yes" if e.covered else "no", note)
    console.print(grid)


def _print_checks(console: Console, result: DesignResult) -> None:
    console.rule(f"[bold]{result.scenario}: checks")
    for name, held in result.checks.items():
        console.print(f"[{'green' if held else 'red'}]{name}: {'yes' if held else 'NO'}[/]")
    console.print("[green]Demo finished.[/]" if result.ok else
                  "[red]Demo finished; a check failed (a 95% interval misses the truth in "
                  "one run in twenty).[/]")
