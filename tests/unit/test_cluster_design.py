"""Cluster-randomized experiments: routing hashes the context's cluster (every
unit of a cluster shares the arm), the analysis tests by clusters
(cluster-robust standard errors, ICC, design effect), and ``rampart plan``
sizes clusters. The Monte Carlo checks show the cluster-robust test keeping
its level and coverage where the unit-level test does not."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from rollout.experiments.analysis import MICROS
from rollout.experiments.report import render_html
from rollout.experiments.results import MsprtSummary
from rollout.experiments.stats.cluster import cluster_robust_effect
from rollout.experiments.stats.power import cluster_plan, plan
from serving.cli.analyze import run_analysis, summary_text
from serving.cli.main import CliError, main
from serving.kernel.config import ConfigError, parse_config
from serving.routing.assignment import bucket, hash_from_state, salt_state, second_bucket
from serving.routing.router import RoutingTable, build_routing_table, route, route_many
from telemetry.decision_log import batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from tests.unit.fakes import InMemoryRegistry

ARMS = [{"name": "control", "model": "clf", "version": "1", "weight_bp": 5000},
        {"name": "treatment", "model": "clf", "version": "2", "weight_bp": 5000}]


def document(**cluster_experiment: Any) -> dict[str, Any]:
    """``by-team`` randomized by the context's ``team``, then ``by-user``, a plain
    experiment that takes whoever ``by-team`` does not."""
    return {
        "models": [{"name": "clf", "versions": ["1", "2"]}],
        "default": {"model": "clf", "version": "1"},
        "experiments": [
            {"id": "by-team", "salt": "team-salt", "cluster": "team",
             "arms": [dict(a) for a in ARMS], **cluster_experiment},
            {"id": "by-user", "salt": "user-salt", "arms": [dict(a) for a in ARMS]}],
    }


def table(data: dict[str, Any]) -> RoutingTable:
    return build_routing_table(parse_config(data), InMemoryRegistry().resolve)


# --------------------------------------------------------------------------- routing


def test_every_unit_of_a_cluster_gets_its_cluster_arm() -> None:
    routing = table(document())
    arms_by_team: dict[str, set[str]] = {}
    for team in range(200):
        for user in range(15):
            decision = route(routing, f"user-{team}-{user}", {"team": f"team-{team}"})
            assert decision.experiment_id == "by-team"
            # the log keeps the unit's own id, so its per-user outcomes join as before
            assert decision.unit_id == f"user-{team}-{user}"
            # the bucket is the cluster's, under the experiment's salt
            assert decision.bucket == bucket("team-salt", f"team-{team}")
            arms_by_team.setdefault(f"team-{team}", set()).add(decision.arm)
    assert all(len(arms) == 1 for arms in arms_by_team.values())
    shares = [next(iter(arms)) for arms in arms_by_team.values()]
    assert 60 < shares.count("treatment") < 140  # both arms get clusters
    # a number names the cluster its text does, as the decision log writes it
    assert route(routing, "u", {"team": 7}).bucket == route(routing, "v", {"team": "7"}).bucket
    assert route(routing, "u", {"team": True}).bucket == bucket("team-salt", "true")


def test_a_request_without_its_cluster_is_not_in_the_experiment() -> None:
    routing = table(document())
    for context in ({}, {"team": ""}, {"platform": "ios"}):
        decision = route(routing, "user-1", context)
        assert decision.experiment_id == "by-user", context  # as if ineligible
    alone = document()
    alone["experiments"] = alone["experiments"][:1]
    decision = route(table(alone), "user-1", {"country": "US"})
    assert decision.experiment_id is None and decision.arm == "default"


def test_coverage_takes_or_leaves_whole_clusters() -> None:
    routing = table(document(coverage_bp=3000))
    taken = set()
    state = salt_state("team-salt")
    for team in range(300):
        experiments = {route(routing, f"u{team}-{k}", {"team": f"t{team}"}).experiment_id
                       for k in range(8)}
        assert len(experiments) == 1  # the whole cluster, or none of it
        covered = second_bucket(hash_from_state(state, f"t{team}")) < 3000
        assert (experiments == {"by-team"}) == covered
        taken.add(covered)
    assert taken == {True, False}


def test_replay_without_context_gives_cluster_experiments_no_unit() -> None:
    routing = table(document())
    columns = route_many(routing, [f"user-{i}" for i in range(2000)])
    assert set(columns["experiment_id"]) == {"by-user"}
    described = routing.describe()["experiments"]
    assert [e["cluster"] for e in described] == ["team", None]


@pytest.mark.parametrize(("change", "where", "message"), [
    ({"cluster": ""}, "experiments.0.cluster", "cluster must name a context attribute"),
    ({"cluster": "x" * 65}, "experiments.0.cluster", "1-64 characters"),
    ({"cluster": "te\u200bam"}, "experiments.0.cluster", "invisible"),
    ({"cluster": "   "}, "experiments.0.cluster", "not blank"),
    ({"layer": "l1", "layer_buckets": [0, 5000]}, "experiments.0",
     "cannot be in a layer"),
])
def test_bad_cluster_configs_are_refused_with_their_path(
        change: dict[str, Any], where: str, message: str) -> None:
    data = document(**change)
    data["layers"] = [{"id": "l1", "salt": "layer-1"}]
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    text = str(caught.value)
    assert f"  {where}: " in text and message in text, text


# --------------------------------------------------------------------------- statistics


def by_hand(y: list[float], treated: list[bool], cluster: list[int]
            ) -> tuple[float, float, float, float]:
    """Effect, CR1 standard error, t-test p-value and ICC, loop by loop."""
    n = len(y)
    arms = {a: [i for i in range(n) if treated[i] == a] for a in (False, True)}
    mean = {a: sum(y[i] for i in arms[a]) / len(arms[a]) for a in arms}
    groups = sorted(set(cluster))
    g = len(groups)
    variance = 0.0
    for c in groups:
        # the unit's weight in the difference of means, times its residual
        score = sum((1 / len(arms[True]) if treated[i] else -1 / len(arms[False]))
                    * (y[i] - mean[treated[i]]) for i in range(n) if cluster[i] == c)
        variance += score * score
    variance *= g / (g - 1) * (n - 1) / (n - 2)
    se = math.sqrt(variance)
    effect = mean[True] - mean[False]
    p = 2 * stats.t.sf(abs(effect / se), g - 1)
    # one-way ANOVA over clusters nested in arms
    members = {c: [i for i in range(n) if cluster[i] == c] for c in groups}
    cell_mean = {c: sum(y[i] for i in members[c]) / len(members[c]) for c in groups}
    ssb = sum(len(members[c]) * (cell_mean[c] - mean[treated[members[c][0]]]) ** 2
              for c in groups)
    ssw = sum((y[i] - cell_mean[cluster[i]]) ** 2 for i in range(n))
    msb, msw = ssb / (g - 2), ssw / (n - g)
    m0 = (n - sum(sum(len(members[c]) ** 2 for c in groups if treated[members[c][0]] == a)
                  / len(arms[a]) for a in arms)) / (g - 2)
    icc = max(0.0, (msb - msw) / (msb + (m0 - 1) * msw))
    return effect, se, p, icc


def test_cluster_robust_effect_against_a_hand_computation() -> None:
    y = [1.0, 2.0, 2.5, 0.5, 3.0, 4.0, 3.5, 5.0, 4.5, 6.0, 2.0, 7.0, 6.5, 5.5, 8.0]
    cluster = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 5, 5]
    treated = [c >= 3 for c in cluster]
    result = cluster_robust_effect(np.array(y), np.array(treated), np.array(cluster))
    effect, se, p, icc = by_hand(y, treated, cluster)
    est = result.estimate
    assert est.error is None
    assert math.isclose(est.abs_effect, effect, rel_tol=1e-12)
    assert math.isclose(est.std_error, se, rel_tol=1e-12)
    assert math.isclose(est.p_value, p, rel_tol=1e-9)
    half = stats.t.ppf(0.975, 5) * se
    assert math.isclose(est.ci_low, effect - half, rel_tol=1e-9)
    assert math.isclose(est.ci_high, effect + half, rel_tol=1e-9)
    assert math.isclose(result.icc, icc, rel_tol=1e-12) and result.icc > 0
    assert (result.clusters_control, result.clusters_treatment, result.df) == (3, 3, 5.0)
    sizes = np.bincount(cluster)
    assert math.isclose(result.mean_cluster_size, 2.5)
    assert math.isclose(result.cluster_size_cv, sizes.std() / sizes.mean())
    # unequal sizes: 1 + ((1 + CV²)·m̄ − 1)·ICC, i.e. 1 + (Σm²/N − 1)·ICC
    assert math.isclose(result.design_effect, 1 + ((1 + result.cluster_size_cv ** 2) * 2.5 - 1)
                        * icc, rel_tol=1e-12)
    naive = stats.ttest_ind([v for v, t in zip(y, treated, strict=True) if t],
                            [v for v, t in zip(y, treated, strict=True) if not t],
                            equal_var=False)
    assert math.isclose(result.naive.p_value, naive.pvalue, rel_tol=1e-9)
    assert math.isclose(result.variance_ratio, se ** 2 / result.naive.std_error ** 2)
    # a ratio metric with every denominator 1 is the mean
    ratio = cluster_robust_effect(np.array(y), np.array(treated), np.array(cluster),
                                  denominator=np.ones(len(y)))
    assert math.isclose(ratio.estimate.std_error, se, rel_tol=1e-12)


def test_degenerate_inputs_are_errors_not_numbers() -> None:
    y = np.arange(8, dtype=float)
    one_cluster_each = cluster_robust_effect(y, np.arange(8) >= 4, np.array([0] * 4 + [1] * 4))
    assert one_cluster_each.estimate.error == "too_few_clusters"
    assert one_cluster_each.naive.error is None  # the unit-level figure is still shown
    assert cluster_robust_effect(y, np.zeros(8, bool), np.arange(8)).estimate.error == (
        "empty_arm")
    assert cluster_robust_effect(y, np.arange(8) >= 4, np.arange(7)).estimate.error == (
        "invalid_input")
    assert cluster_robust_effect(np.ones(8), np.arange(8) >= 4, np.arange(8) // 2
                                 ).estimate.error == "zero_variance"
    assert cluster_robust_effect(y, np.arange(8) >= 4, np.arange(8), alpha=1.0
                                 ).estimate.error == "invalid_alpha"


def simulate(seed: int, effect: float, runs: int = 1000, clusters: int = 240,
             icc: float = 0.1) -> tuple[float, float, float, float]:
    """``runs`` cluster-randomized experiments: half the clusters treated, sizes
    1 + NegBin (mean 15, CV about 0.7), a cluster random effect making the
    ICC ``icc``. The cluster-robust and unit-level rejection rates at 0.05, the
    cluster-robust intervals' coverage of ``effect``, and the mean ICC estimate."""
    rng = np.random.default_rng(seed)
    robust = naive = covered = 0
    iccs = []
    for _ in range(runs):
        sizes = 1 + rng.negative_binomial(2, 2 / 16, clusters)
        treated_clusters = np.zeros(clusters, dtype=bool)
        treated_clusters[rng.permutation(clusters)[:clusters // 2]] = True
        cluster = np.repeat(np.arange(clusters), sizes)
        treated = treated_clusters[cluster]
        y = (rng.normal(0.0, math.sqrt(icc), clusters)[cluster]
             + rng.normal(0.0, math.sqrt(1 - icc), cluster.size) + effect * treated)
        result = cluster_robust_effect(y, treated, cluster)
        robust += result.estimate.p_value < 0.05
        naive += result.naive.p_value < 0.05
        covered += result.estimate.ci_low <= effect <= result.estimate.ci_high
        iccs.append(result.icc)
    return robust / runs, naive / runs, covered / runs, float(np.mean(iccs))


def test_cluster_robust_test_keeps_its_level_where_the_unit_level_one_does_not() -> None:
    robust, naive, covered, icc = simulate(seed=1, effect=0.0)
    print(f"A/A, 1,000 runs, 240 clusters (ICC 0.1): false positives cluster-robust "
          f"{robust:.3f}, unit-level {naive:.3f}; mean ICC estimate {icc:.3f}")
    assert 0.035 <= robust <= 0.065
    assert naive > 0.065
    assert 0.08 < icc < 0.12
    assert 0.935 <= covered <= 0.965


def test_cluster_robust_intervals_cover_a_planted_effect() -> None:
    robust, naive, covered, _ = simulate(seed=100, effect=0.1)
    print(f"planted 0.1, 1,000 runs: 95% CI coverage {covered:.3f}; power cluster-robust "
          f"{robust:.3f}, unit-level {naive:.3f}")
    assert 0.935 <= covered <= 0.965


# --------------------------------------------------------------------------- analysis

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def write_cluster_experiment(tmp: Path, seed: int = 5, clusters: int = 120,
                             icc: float = 0.3) -> dict[str, Any]:
    """Decision and outcome logs of ``by-team``: teams of unequal size hashed to
    their arm by routing itself, a per-user ``revenue`` with a team random
    effect and no true effect."""
    rng = np.random.default_rng(seed)
    routing = table(document())
    sizes = 2 + rng.poisson(12, clusters)
    team = np.repeat(np.arange(clusters), sizes)
    ids = [f"user-{i}" for i in range(team.size)]
    arms = [route(routing, unit, {"team": f"team-{t}"}).arm for unit, t in zip(
        ids, team, strict=True)]
    treated = np.array([a == "treatment" for a in arms])
    n = team.size
    at = START.timestamp() + 86_400 * 20 + rng.uniform(0, 86_400 * 3, n)
    decisions = batch_table(n, {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": ids, "unit_type": "user_id",
        "experiment_id": "by-team", "arm": arms, "model_name": "clf",
        "model_version": ["2" if t else "1" for t in treated], "role": "primary",
        "timestamp": at, "features": [{"f0": 1.0}] * n, "prediction": 0.5,
        "latency_ms": 1.0, "status": "ok"})
    decisions = decisions.set_column(
        decisions.schema.get_field_index("context"), "context",
        pa.array([[("team", f"team-{t}")] for t in team], type=pa.map_(pa.string(),
                                                                          pa.string())))
    (tmp / "decisions").mkdir(parents=True)
    pq.write_table(decisions, tmp / "decisions" / "part-0.parquet")
    revenue = (10 + 3 * math.sqrt(icc) * rng.normal(size=clusters)[team]
               + 3 * math.sqrt(1 - icc) * rng.normal(size=n))
    stamp = pa.array(((at + 60) * MICROS).astype(np.int64)).cast(pa.timestamp("us", tz="UTC"))
    outcomes = pa.table({
        "unit_id": pa.array(ids), "metric": pa.repeat(pa.scalar("revenue"), n),
        "value": pa.array(revenue), "timestamp": stamp,
        "experiment_id": pa.nulls(n, pa.string()), "received_at": stamp})
    (tmp / "outcomes").mkdir(parents=True)
    pq.write_table(outcomes.cast(OUTCOME_SCHEMA), tmp / "outcomes" / "part-0.parquet")
    return {"y": revenue, "treated": treated, "team": team}


def cluster_config(tmp: Path, **analysis: Any) -> Any:
    data = document()
    data["experiments"] = data["experiments"][:1]
    data["experiments"][0]["analysis"] = {
        "start": "2026-11-01T00:00:00Z",
        "primary": {"name": "revenue", "type": "mean"},
        "guardrails": [{"name": "revenue", "type": "mean", "harm": "decrease",
                        "tolerance": 0.5}],
        "alpha": 0.05, "mde": 0.05, "baseline": 10.0, "cuped": False, **analysis}
    data.update(data_dir=str(tmp), decision_log={"path": str(tmp / "decisions")},
                outcomes_log={"path": str(tmp / "outcomes")})
    return parse_config(data)


def test_analysis_of_a_cluster_experiment_rests_on_the_cluster_robust_test(
        tmp_path: Path) -> None:
    truth = write_cluster_experiment(tmp_path)
    config = cluster_config(tmp_path)
    report = run_analysis(config, "by-team", as_of=AS_OF, now=AS_OF)
    primary = report.metrics[0]
    expected = cluster_robust_effect(truth["y"], truth["treated"], truth["team"])
    assert primary.clustered is not None and primary.clustered.attribute == "team"
    # the metric's own figures are the cluster-robust ones
    assert math.isclose(primary.p_value or 0, expected.estimate.p_value, rel_tol=1e-9)
    assert math.isclose(primary.std_error or 0, expected.estimate.std_error, rel_tol=1e-9)
    assert math.isclose(primary.clustered.naive_p_value or 0, expected.naive.p_value,
                        rel_tol=1e-9)
    assert primary.clustered.clusters_control + primary.clustered.clusters_treatment == 120
    assert (primary.clustered.design_effect or 0) > 2
    assert primary.bayes is not None and primary.bayes.basis == "cluster_robust"
    # ignoring the clusters would have called this A/A experiment significant
    assert (primary.clustered.naive_p_value or 1) < 0.05 < (primary.p_value or 0)
    assert report.decision.outcome == "hold"
    assert any("not significant" in r for r in report.decision.reasons)
    guardrail = report.guardrails[0]
    assert guardrail.clustered is not None
    assert math.isclose(guardrail.std_error or 0, expected.estimate.std_error, rel_tol=1e-9)
    text = summary_text(report)
    assert "cluster-robust by team (" in text and "design effect" in text
    page = render_html(report)
    assert "cluster-robust by team" in page and "ICC" in page


def test_sequential_looks_of_a_cluster_experiment_are_cluster_robust(tmp_path: Path) -> None:
    write_cluster_experiment(tmp_path)
    config = cluster_config(tmp_path, sequential={"method": "msprt", "looks": 5})
    report = run_analysis(config, "by-team", as_of=AS_OF, now=AS_OF, timeline_points=3)
    sequential = report.metrics[0].sequential
    assert isinstance(sequential, MsprtSummary) and sequential.looks == 6
    # the unit-level test calls this A/A experiment (p = 0.004); the mSPRT on
    # the cluster-robust estimates does not reject
    assert sequential.rejected is False
    # the timeline's estimates (as the looks', reconstructed as of each time) too
    assert report.timeline is not None
    final = report.timeline[-1].arms["treatment"]
    assert math.isclose(final.ci_low or 0, report.metrics[0].ci_low or 0, rel_tol=1e-12)


def test_the_ray_engine_refuses_cluster_experiments(tmp_path: Path) -> None:
    write_cluster_experiment(tmp_path, clusters=10)
    with pytest.raises(CliError, match="cluster-randomized experiments"):
        run_analysis(cluster_config(tmp_path), "by-team", as_of=AS_OF, now=AS_OF,
                     engine="ray")


# --------------------------------------------------------------------------- plan


def test_plan_sizes_clusters_by_the_design_effect(capsys: pytest.CaptureFixture[str]) -> None:
    base = plan("mean", None, 0.05, relative=False, std_dev=1.0)
    sized = cluster_plan(base, 20, 0.05)
    assert math.isclose(sized.design_effect, 1.95)
    assert sized.units_per_arm == math.ceil(base.n_per_arm_exact * 1.95)
    # enough clusters for the units, then for the t test on clusters - 1 df
    assert math.ceil(base.n_per_arm_exact * 1.95 / 20) <= sized.clusters_per_arm <= (
        math.ceil(base.n_per_arm_exact * 1.95 / 20) + 2)
    few = cluster_plan(plan("mean", None, 0.5, relative=False, std_dev=1.0), 50, 0.3)
    assert few.clusters_per_arm > math.ceil(few.units_per_arm / 50)  # the t correction
    assert cluster_plan(base, 1, 0.7).units_per_arm == base.n_per_arm  # clusters of one
    assert main(["plan", "--metric-type", "mean", "--std-dev", "1", "--mde", "0.05",
                 "--cluster-size", "20", "--icc", "0.05", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["cluster"]["clusters_per_arm"] == sized.clusters_per_arm
    assert body["n_per_arm"] == base.n_per_arm  # the unit-level figure stays beside it
    assert main(["plan", "--metric-type", "mean", "--std-dev", "1", "--mde", "0.05",
                 "--cluster-size", "20", "--icc", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "design effect: 1.95" in out and f"clusters per arm: {sized.clusters_per_arm:,}" in out
    for extra, message in ((["--icc", "1.5", "--cluster-size", "20"], "--icc must be"),
                           (["--icc", "-0.1", "--cluster-size", "20"], "--icc must be"),
                           (["--cluster-size", "0.5", "--icc", "0.1"], "--cluster-size must"),
                           (["--cluster-size", "nan", "--icc", "0.1"], "--cluster-size must"),
                           (["--icc", "0.1"], "go together")):
        assert main(["plan", "--metric-type", "mean", "--std-dev", "1", "--mde", "0.05",
                     *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rampart: error: ") and message in err, err
        assert err.count("\n") == 1
