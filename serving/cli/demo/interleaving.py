"""``rampart demo --scenario interleaving``: two packaged ranker versions compared
by interleaving on simulated sessions through ``POST /v1/rank``.

The scenario replaces the config's experiments with one interleaving
experiment (ranker ``a`` the gradient-boosted ``tree``, ranker ``b`` the
logistic ``challenger``, team draft), starts the gateway on local Ray with a
fresh decision log, and sends each simulated session's candidates to
``POST /v1/rank``. A simulated user then clicks the answered list, each click
is credited to the ranker that contributed its position
(``team_draft_credit``), and the sessions' preferences go to the exact sign
test. Beside it, the seeded simulation of
``rollout.experiments.interleaving_simulation`` says how many more sessions an
A/B test would need. An HTML report (cumulative preference share with its
interval, and the sessions-needed distributions) is written under the run
directory.

The planted truth. Each session is a query whose ``ITEMS`` candidates are alike
(a shared query row plus a small per-item deviation, scaled so every feature
is still N(0, 1), the demo models' training distribution). The user wants the
one candidate with the highest logit under ``TRUE_WEIGHTS``, the world the
demo models were trained on: position ``i`` is examined with probability
``1/(i+1)``, and an examined candidate is clicked with probability
``ATTRACT_BEST`` if it is that one, ``ATTRACT_OTHER`` otherwise. The
``challenger`` is linear in the features, as that world is; the tree's score
is piecewise constant, so among alike candidates it often ties or misorders
them. Ranker ``b`` is therefore the better one, and the log says by how much:
how often each ranker's first item is the session's best.

Exit code 0 only when every check holds: every session answered and logged,
every answered list rebuilt from the log by ``interleave``, ranker ``b`` finding
the best item more often, ``b`` winning the sign test at p < 0.05, and the
simulation's median ratio of A/B to interleaving sessions above 1.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from rollout.experiments.report import html_figure, plot_axes, png_base64
from rollout.experiments.stats.interleaving import (
    Impression,
    InterleavingTest,
    PreferenceCounts,
    impression_arrays,
    interleaving_test,
    team_draft_credit,
)
from serving.cli.demo.models import DEMO_MODEL_NAME, FEATURE_NAMES, TRUE_WEIGHTS

if TYPE_CHECKING:
    import pyarrow as pa

    from rollout.experiments.interleaving_simulation import SimulationResult
    from serving.kernel.config import RampartConfig

SCENARIO = "interleaving"
EXPERIMENT = "demo-interleaving"
METHOD: Literal["team_draft"] = "team_draft"
RANKERS: dict[str, str] = {"a": "tree", "b": "challenger"}  # ranker -> version alias
BETTER = "b"  # the ranker the planted relevance favours (see the module docstring)
SESSIONS = 400
ITEMS = 10
# The per-item deviation of a session's candidates around their query row: small,
# so candidates are alike and the rankers' orders of them differ.
QUERY_SPREAD = 0.2
ATTRACT_BEST, ATTRACT_OTHER = 0.9, 0.02
FEATURE_SEED, CLICK_SEED = 2026, 2027
ALPHA = 0.05
# The A/B comparison: a modest number of seeded runs keeps it to a few seconds.
SIMULATION_RUNS, SIMULATION_SEED = 60, 2026
REPORT_NAME = "interleaving-report.html"


# ------------------------------------------------------------------ sessions


@dataclass(frozen=True)
class Session:
    """One simulated session: its candidates' ids and feature rows, and the
    planted relevance (the logit under ``TRUE_WEIGHTS``) of each."""

    request_id: str
    unit_id: str
    item_ids: tuple[str, ...]
    features: npt.NDArray[np.float64]
    relevance: npt.NDArray[np.float64]

    @property
    def best(self) -> str:
        """The candidate the user wants."""
        return self.item_ids[int(np.argmax(self.relevance))]

    def body(self) -> dict[str, Any]:
        """The ``POST /v1/rank`` body of this session."""
        return {"unit_id": self.unit_id, "request_id": self.request_id,
                "experiment": EXPERIMENT,
                "items": [{"item_id": item,
                           "features": {name: float(v) for name, v in
                                        zip(FEATURE_NAMES, row, strict=True)}}
                          for item, row in zip(self.item_ids, self.features, strict=True)]}


def draw_sessions(count: int, items: int = ITEMS, spread: float = QUERY_SPREAD,
                  seed: int = FEATURE_SEED) -> list[Session]:
    """``count`` sessions of ``items`` alike candidates each, seeded.

    A candidate's row is ``sqrt(1 - spread²)·query + spread·own`` with both
    terms N(0, 1), so each feature is N(0, 1) like the demo's training rows,
    while the candidates of one session differ by about ``spread``.
    """
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(count, 1, len(FEATURE_NAMES)))
    own = rng.normal(size=(count, items, len(FEATURE_NAMES)))
    rows = math.sqrt(1.0 - spread**2) * query + spread * own
    relevance = rows @ TRUE_WEIGHTS
    return [Session(f"ilv-{s:04d}", f"session-{s:04d}",
                    tuple(f"s{s:04d}-doc-{i}" for i in range(items)),
                    np.asarray(rows[s], dtype=np.float64),
                    np.asarray(relevance[s], dtype=np.float64)) for s in range(count)]


def simulate_clicks(shown: Sequence[str], best: str, rng: np.random.Generator,
                    attract_best: float = ATTRACT_BEST,
                    attract_other: float = ATTRACT_OTHER) -> tuple[str, ...]:
    """The items a position-based user clicks in ``shown``: position ``i`` is
    examined with probability ``1/(i+1)``, and an examined item clicked with
    ``attract_best`` if it is ``best``, else ``attract_other``."""
    positions = np.arange(len(shown))
    attract = np.asarray([attract_best if item == best else attract_other for item in shown])
    clicked = rng.random(len(shown)) < attract / (positions + 1)
    return tuple(item for item, c in zip(shown, clicked, strict=True) if c)


# ------------------------------------------------------------------ traffic


@dataclass(frozen=True)
class Answer:
    """A session's ``POST /v1/rank`` answer: HTTP status, and on 200 the list
    shown and the ranker (``a``/``b``) of each position."""

    status: int
    items: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()


def rank_sessions(url: str, sessions: Sequence[Session], concurrency: int,
                  on_progress: Callable[[int], None] | None = None) -> list[Answer]:
    """Send every session to ``POST /v1/rank``; the answers in session order."""
    import httpx

    with httpx.Client(base_url=url, timeout=30.0) as client:
        def send(session: Session) -> Answer:
            try:
                response = client.post("/v1/rank", json=session.body())
            except httpx.HTTPError:
                return Answer(0)
            finally:
                if on_progress is not None:
                    on_progress(1)
            if response.status_code != 200:
                return Answer(response.status_code)
            ranking = response.json()["ranking"]
            return Answer(200, tuple(p["item_id"] for p in ranking),
                          tuple(p["ranker"] for p in ranking))

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(send, sessions))


# ------------------------------------------------------------------ analysis


@dataclass(frozen=True)
class PreferencePath:
    """The sign test after each session: the planted better ranker's share of
    the sessions with a preference so far, with its interval (``nan`` before
    the first preference)."""

    sessions: npt.NDArray[np.int64]
    share: npt.NDArray[np.float64]
    ci_low: npt.NDArray[np.float64]
    ci_high: npt.NDArray[np.float64]


def preference_path(preference: npt.NDArray[np.int8], better: str = BETTER,
                    alpha: float = ALPHA) -> PreferencePath:
    """The cumulative share of ``better`` (and its Clopper-Pearson interval)
    over the first ``n`` sessions, for every ``n``."""
    wins_a = np.cumsum(preference > 0)
    wins_b = np.cumsum(preference < 0)
    n = np.arange(1, preference.size + 1, dtype=np.int64)
    share, low, high = (np.full(preference.size, np.nan) for _ in range(3))
    for i in range(preference.size):
        a, b = int(wins_a[i]), int(wins_b[i])
        test = interleaving_test(PreferenceCounts(a, b, int(n[i]) - a - b), alpha)
        if test.status != "ok":
            continue
        if better == "a":
            share[i], low[i], high[i] = test.share_a, test.ci_low, test.ci_high
        else:
            share[i], low[i], high[i] = 1 - test.share_a, 1 - test.ci_high, 1 - test.ci_low
    return PreferencePath(n, share, low, high)


@dataclass(frozen=True)
class LoggedRankings:
    """What the decision log holds of each ranked request: the two rankers'
    own rankings (by ``item_rank``), their versions, and how many ranker rows."""

    rankings: dict[str, dict[str, tuple[str, ...]]]  # request id -> ranker -> items
    versions: dict[str, str]  # ranker -> model version
    rows: int


def logged_rankings(table: pa.Table) -> LoggedRankings:
    """The rankings of every ``POST /v1/rank`` request in a decision log table."""
    import pyarrow.compute as pc

    from telemetry.decision_log import RANKER_ROLE

    ranked = table.filter(pc.equal(table["role"], RANKER_ROLE))
    ranked = ranked.sort_by([("request_id", "ascending"), ("arm", "ascending"),
                             ("item_rank", "ascending")])
    rankings: dict[str, dict[str, list[str]]] = {}
    versions: dict[str, str] = {}
    for request, arm, item, version in zip(
            ranked["request_id"].to_pylist(), ranked["arm"].to_pylist(),
            ranked["item_id"].to_pylist(), ranked["model_version"].to_pylist(), strict=True):
        rankings.setdefault(request, {}).setdefault(arm, []).append(item)
        versions.setdefault(arm, version)
    return LoggedRankings({r: {arm: tuple(items) for arm, items in by_arm.items()}
                           for r, by_arm in rankings.items()}, versions, ranked.num_rows)


def rebuilt_lists(logged: LoggedRankings, answers: dict[str, Answer]) -> int:
    """How many of ``answers`` (by request id) ``interleave`` rebuilds, item
    and ranker of every position, from the two logged rankings and the request id."""
    from serving.routing.interleaving import interleave

    same = 0
    for request, answer in answers.items():
        rankings = logged.rankings.get(request, {})
        if set(rankings) != {"a", "b"}:
            continue
        merged = interleave(METHOD, rankings["a"], rankings["b"], key=request)
        same += (merged.items, merged.teams) == (answer.items, answer.teams)
    return same


def top_hits(logged: LoggedRankings, sessions: Sequence[Session]) -> dict[str, int]:
    """Per ranker, the sessions whose best candidate it ranks first."""
    hits = {"a": 0, "b": 0}
    for session in sessions:
        for ranker, items in logged.rankings.get(session.request_id, {}).items():
            hits[ranker] += bool(items) and items[0] == session.best
    return hits


# ------------------------------------------------------------------ result


@dataclass
class InterleavingDemoResult:
    """What the scenario measured: the checks (name -> held) and its figures."""

    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def as_json(self) -> dict[str, Any]:
        return {"scenario": SCENARIO, "ok": self.ok, "checks": self.checks, **self.figures}


def sign_test_figures(test: InterleavingTest, unclicked: int) -> dict[str, Any]:
    """The sign test as the JSON summary reports it (shares are ranker A's)."""
    return {"sessions": test.sessions, "wins_a": test.wins_a, "wins_b": test.wins_b,
            "ties": test.ties, "unclicked": unclicked, "share_a": test.share_a,
            "ci_low": test.ci_low, "ci_high": test.ci_high, "p_value": test.p_value,
            "delta_ab": test.delta_ab, "winner": test.winner, "better": BETTER}


def simulation_figures(sim: SimulationResult) -> dict[str, Any]:
    return {"runs": sim.settings.runs, "seed": sim.settings.seed,
            "method": sim.settings.method, "click_model": sim.settings.click_model,
            "ab_metric": sim.settings.ab_metric, "median_ratio": sim.median_ratio,
            "ratio_quartiles": list(sim.ratio_quartiles),
            "median_interleaving": sim.median_interleaving, "median_ab": sim.median_ab,
            "interleaving_power80": sim.interleaving_power80, "ab_power80": sim.ab_power80,
            "power_ratio": sim.power_ratio, "status": sim.status}


# ------------------------------------------------------------------ config


def interleaving_config(base: RampartConfig, run_dir: Path) -> RampartConfig:
    """``base`` (its models, default route and settings) with one interleaving
    experiment of the two demo rankers instead of its experiments, and this
    run's logs and stores under ``run_dir``; validated as a config file is."""
    from serving.kernel.config import parse_config

    document = base.model_dump(mode="json")
    document.update({
        "experiments": [], "layers": [],
        "interleaving": [{"id": EXPERIMENT, "unit": "session_id", "method": METHOD,
                          "a": {"model": DEMO_MODEL_NAME, "version": RANKERS["a"]},
                          "b": {"model": DEMO_MODEL_NAME, "version": RANKERS["b"]},
                          "max_items": ITEMS}]})
    document["decision_log"]["path"] = str(run_dir / "decisions")
    document["outcomes_log"]["path"] = str(run_dir / "outcomes")
    document["rollout_store_url"] = f"sqlite:///{(run_dir / 'rollouts.db').resolve()}"
    document["preregistration_dir"] = str(run_dir / "preregistrations")
    return parse_config(document, source="the interleaving demo config")


# ------------------------------------------------------------------ scenario


def run_interleaving_demo(config_path: Path, requests: int = SESSIONS, concurrency: int = 8,
                          port: int | None = None, as_json: bool = False) -> int:
    """Run the interleaving scenario end to end; 0 when every check holds, else 1.

    ``requests`` caps the sessions at :data:`SESSIONS` (the CLI's default of
    4,000 requests is for the A/B demos; interleaving needs far fewer).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from serving.cli.common import CliError
    from serving.cli.demo.setup import prepare_demo, seed_models
    from serving.cli.launch import start_gateway
    from serving.kernel.errors import ConfigError
    from telemetry.decision_log import read_decisions

    if requests < 1 or concurrency < 1:
        raise CliError("--requests and --concurrency must be at least 1")
    setup = prepare_demo(config_path, SCENARIO, port, as_json)
    console, base, host, port, run_dir = (setup.console, setup.base, setup.host, setup.port,
                                          setup.run_dir)
    try:
        config = interleaving_config(base, run_dir)
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    console.rule(f"[bold]Rampart demo: {SCENARIO}")
    seeded = seed_models(setup, config)
    console.print(f"Interleaving experiment [bold]{EXPERIMENT}[/] ({METHOD}): ranker a = "
                  f"{RANKERS['a']} (v{seeded.versions[RANKERS['a']]}), ranker b = "
                  f"{RANKERS['b']} (v{seeded.versions[RANKERS['b']]})", highlight=False)
    sessions = draw_sessions(min(requests, SESSIONS))
    console.print(f"Planted truth: each session is {ITEMS} alike candidates (rows N(0, 1), "
                  f"spread {QUERY_SPREAD:g} around the session's query); the user wants the "
                  f"one with the highest logit under the demo's true weights and clicks it "
                  f"with probability {ATTRACT_BEST:g} when examined (any other "
                  f"{ATTRACT_OTHER:g}; position i examined with 1/(i+1)). Ranker "
                  f"{BETTER} ({RANKERS[BETTER]}, linear as that world is) is the better one.",
                  highlight=False)
    with console.status("Starting the gateway on local Ray Serve (about 15 s)..."):
        gateway = start_gateway(config, host=host, port=port)
    console.print(f"Gateway up at {gateway.url}, routing version {gateway.table.version}")
    started = time.perf_counter()
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"{len(sessions)} sessions to POST /v1/rank",
                                     total=len(sessions))
            answers = rank_sessions(gateway.url, sessions, concurrency,
                                    on_progress=lambda n: progress.advance(task, n))
    finally:
        with console.status("Stopping the gateway and flushing the decision log..."):
            gateway.stop()
    answered = {s.request_id: a for s, a in zip(sessions, answers, strict=True)
                if a.status == 200}
    console.print(f"{len(answered)} of {len(sessions)} sessions answered in "
                  f"{time.perf_counter() - started:.1f} s")
    result = InterleavingDemoResult()
    result.checks["every session answered"] = len(answered) == len(sessions)

    logged = logged_rankings(read_decisions(run_dir / "decisions"))
    rebuilt = rebuilt_lists(logged, answered)
    console.print(f"Decision log: {logged.rows} ranker rows for {len(logged.rankings)} "
                  f"requests (versions {logged.versions}); interleave rebuilds {rebuilt} of "
                  f"{len(answered)} answered lists from the logged rankings and request ids")
    result.checks["every session logged"] = (
        len(logged.rankings) == len(answered) and logged.rows == 2 * ITEMS * len(answered))
    result.checks["every answered list rebuilt from the log"] = rebuilt == len(answered) > 0

    # Clicks in session order from one seeded generator: the same whatever the
    # order the concurrent answers came back in.
    rng = np.random.default_rng(CLICK_SEED)
    shown = [(s, answered[s.request_id]) for s in sessions if s.request_id in answered]
    impressions = [Impression(a.teams, tuple(a.items.index(c) for c in
                                             simulate_clicks(a.items, s.best, rng)))
                   for s, a in shown]
    arrays = impression_arrays(impressions)
    credit = team_draft_credit(arrays.from_a, arrays.clicked)
    counts = credit.counts()
    test = interleaving_test(counts, ALPHA)
    hits = top_hits(logged, [s for s, _ in shown])
    _print_test(console, test, counts, hits, len(shown))
    result.checks[f"ranker {BETTER} ranks the best item first more often"] = (
        hits[BETTER] > hits["a" if BETTER == "b" else "b"])
    result.checks[f"ranker {BETTER} wins the sign test (p < {ALPHA:g})"] = (
        test.winner == BETTER and test.p_value < ALPHA)

    with console.status(f"Simulating interleaving against an A/B test ({SIMULATION_RUNS} "
                        "seeded runs)..."):
        sim = _simulate()
    _print_simulation(console, sim)
    result.checks["A/B needs more sessions (median ratio > 1)"] = sim.median_ratio > 1.0

    path = run_dir / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(test, counts, hits, preference_path(credit.preference),
                                  sim, seeded.versions), encoding="utf-8")
    console.print(f"HTML report with plots: {path}")
    result.figures.update({
        "sessions": len(sessions), "answered": len(answered),
        "logged": len(logged.rankings), "rebuilt": rebuilt,
        "rankers": {r: {"alias": alias, "version": seeded.versions[alias],
                        "top1_hits": hits[r]} for r, alias in RANKERS.items()},
        "preference": sign_test_figures(test, counts.unclicked),
        "simulation": simulation_figures(sim), "ratio": sim.median_ratio,
        "report": str(path), "run_dir": str(run_dir)})
    _print_checks(console, result)
    if as_json:
        print(json.dumps(result.as_json()))
    return 0 if result.ok else 1


def _simulate() -> SimulationResult:
    from rollout.experiments.interleaving_simulation import (
        SimulationSettings,
        simulate_sessions_needed,
    )

    return simulate_sessions_needed(SimulationSettings(runs=SIMULATION_RUNS,
                                                       seed=SIMULATION_SEED, method=METHOD))


def _print_test(console: Console, test: InterleavingTest, counts: PreferenceCounts,
                hits: dict[str, int], sessions: int) -> None:
    console.rule("[bold]Interleaving: which ranker do the users prefer?")
    grid = Table(title=f"Team-draft credit and the exact sign test ({1 - ALPHA:.0%} "
                       "Clopper-Pearson interval)")
    for column in ("sessions", "wins a", "wins b", "ties (no click)", "share a",
                   f"{1 - ALPHA:.0%} CI", "Δ_AB", "p-value"):
        grid.add_column(column, justify="right")
    grid.add_row(str(test.sessions), str(test.wins_a), str(test.wins_b),
                 f"{test.ties} ({counts.unclicked})", f"{test.share_a:.3f}",
                 f"[{test.ci_low:.3f}, {test.ci_high:.3f}]", f"{test.delta_ab:+.3f}",
                 f"{test.p_value:.2g}")
    console.print(grid)
    winner = ("no ranker (p >= alpha)" if test.winner is None else
              f"ranker {test.winner} ({RANKERS[test.winner]})")
    console.print(f"Preferred: {winner}. The planted better ranker is {BETTER} "
                  f"({RANKERS[BETTER]}); each ranker's first item is the session's best in "
                  f"{hits['a']} (a) and {hits['b']} (b) of {sessions} sessions.",
                  highlight=False)


def _print_simulation(console: Console, sim: SimulationResult) -> None:
    console.rule("[bold]Interleaving against an A/B test (seeded simulation)")
    console.print(sim.summary(), highlight=False)
    console.print(f"Median sessions to a lasting p < {sim.settings.alpha:g}: "
                  f"{sim.median_interleaving:.0f} interleaved against {sim.median_ab:.0f} in "
                  f"an A/B test; an A/B test needs {sim.median_ratio:.1f}x the sessions "
                  "(median over runs).", highlight=False)


def _print_checks(console: Console, result: InterleavingDemoResult) -> None:
    console.rule(f"[bold]{SCENARIO}: checks")
    for name, held in result.checks.items():
        console.print(f"[{'green' if held else 'red'}]{name}: {'yes' if held else 'NO'}[/]")
    console.print("[green]Demo finished.[/]" if result.ok else
                  "[red]Demo finished; a check failed.[/]")


# ------------------------------------------------------------------ report


def render_report(test: InterleavingTest, counts: PreferenceCounts, hits: dict[str, int],
                  path: PreferencePath, sim: SimulationResult,
                  versions: dict[str, str]) -> str:
    """The scenario's self-contained HTML page: the figures, then the plots
    (PNG, matplotlib Agg, inlined as base64)."""
    from rollout.experiments.report import STYLE

    winner = "none" if test.winner is None else f"{test.winner} ({RANKERS[test.winner]})"
    rows = [
        ("experiment", f"{EXPERIMENT} ({METHOD})"),
        ("ranker a", f"{RANKERS['a']} (v{versions.get(RANKERS['a'], '?')})"),
        ("ranker b", f"{RANKERS['b']} (v{versions.get(RANKERS['b'], '?')})"),
        ("planted better ranker", f"{BETTER} ({RANKERS[BETTER]})"),
        ("sessions", str(test.sessions)),
        ("wins a / wins b / ties", f"{test.wins_a} / {test.wins_b} / {test.ties} "
                                   f"({counts.unclicked} without a click)"),
        ("share a", f"{test.share_a:.3f} [{test.ci_low:.3f}, {test.ci_high:.3f}] "
                    f"({1 - ALPHA:.0%} Clopper-Pearson)"),
        ("Δ_AB", f"{test.delta_ab:+.3f}"),
        ("p-value (exact sign test)", f"{test.p_value:.3g}"),
        ("preferred ranker", winner),
        ("best item ranked first", f"a {hits['a']}, b {hits['b']} of {test.sessions}"),
        ("simulation", sim.summary()),
        ("median sessions needed", f"interleaving {sim.median_interleaving:.0f}, "
                                   f"A/B {sim.median_ab:.0f}"),
        ("median ratio A/B : interleaving", f"{sim.median_ratio:.2f}"),
    ]
    table = "".join(f"<tr><th class='text'>{html.escape(k)}</th>"
                    f"<td class='text'>{html.escape(v)}</td></tr>" for k, v in rows)
    figures = [
        html_figure("Cumulative preference share", _share_plot(path),
                f"The share of ranker {BETTER} ({RANKERS[BETTER]}) among the sessions with a "
                f"preference so far, with its {1 - ALPHA:.0%} Clopper-Pearson interval; "
                "one half is no preference."),
        html_figure("Sessions needed", _needed_plot(sim),
                f"Sessions each of {sim.settings.runs} seeded simulation runs needed to reach "
                f"a lasting p < {sim.settings.alpha:g}: interleaving ({sim.settings.method}, "
                f"sign test) against an A/B test (Welch's t on {sim.settings.ab_metric}); "
                "dashed lines are the medians."),
        html_figure("Power curves", _power_plot(sim),
                "The share of simulation runs whose test rejects at each number of sessions."),
    ]
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Rampart interleaving demo: {html.escape(EXPERIMENT)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Interleaving: {html.escape(RANKERS['a'])} (a) against "
            f"{html.escape(RANKERS['b'])} (b)</h1>"
            f"<table><tbody>{table}</tbody></table>{''.join(figures)}</body></html>")








def _share_plot(path: PreferencePath) -> str:
    fig, ax = plot_axes((7.5, 3.2))
    ax.fill_between(path.sessions, path.ci_low, path.ci_high, alpha=0.25, color="#1f77b4",
                    label=f"{1 - ALPHA:.0%} interval")
    ax.plot(path.sessions, path.share, color="#1f77b4",
            label=f"share of ranker {BETTER} ({RANKERS[BETTER]})")
    ax.axhline(0.5, color="#555", linestyle="--", linewidth=1, label="no preference")
    ax.set_xlabel("sessions")
    ax.set_ylabel("preference share")
    ax.set_ylim(0.0, 1.0)
    ax.legend(loc="lower right", fontsize=8)
    return png_base64(fig)


def _needed_plot(sim: SimulationResult) -> str:
    fig, ax = plot_axes((7.5, 3.2))
    needed = {"interleaving": np.asarray(sim.interleaving_needed, dtype=np.float64),
              "A/B test": np.asarray(sim.ab_needed, dtype=np.float64)}
    low = max(1.0, min(float(v.min()) for v in needed.values()))
    high = max(float(v.max()) for v in needed.values())
    bins = np.geomspace(low, high * 1.01, 25)
    for (name, values), colour in zip(needed.items(), ("#1f77b4", "#d62728"), strict=True):
        ax.hist(values, bins=bins, alpha=0.5, color=colour, label=name)
        ax.axvline(float(np.median(values)), color=colour, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("sessions needed (log scale)")
    ax.set_ylabel("simulation runs")
    ax.legend(fontsize=8)
    return png_base64(fig)


def _power_plot(sim: SimulationResult) -> str:
    fig, ax = plot_axes((7.5, 3.2))
    ax.plot(sim.interleaving_grid, sim.interleaving_power, color="#1f77b4",
            label="interleaving")
    ax.plot(sim.ab_grid, sim.ab_power, color="#d62728", label="A/B test")
    ax.axhline(0.8, color="#555", linestyle="--", linewidth=1, label="80% power")
    ax.set_xscale("log")
    ax.set_xlabel("sessions (log scale)")
    ax.set_ylabel("share of runs rejecting")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8)
    return png_base64(fig)
