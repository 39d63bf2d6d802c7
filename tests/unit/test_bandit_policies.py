"""Bandit policies, their weights, and the controller step with its JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from scipy import integrate, stats

from rollout.core.bandits.arms import (
    BinaryStats,
    GaussianStats,
    InvalidBanditInput,
    merge_stats,
    posterior,
)
from rollout.core.bandits.policies import (
    EpsilonGreedy,
    PolicyConfig,
    ThompsonBeta,
    ThompsonGaussian,
    TopTwoThompson,
    allocation,
    largest_remainder,
)
from rollout.core.bandits.state import BanditConfig, BanditState, initial_state, step
from serving.kernel.errors import RampartError

pytestmark = pytest.mark.unit

POLICY = TypeAdapter(PolicyConfig)


def _beta_prob_greater(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(X1 > X2) for independent Beta posteriors, by quadrature."""
    value, _ = integrate.quad(lambda x: stats.beta.pdf(x, a1, b1) * stats.beta.cdf(x, a2, b2),
                              0.0, 1.0, limit=200)
    return float(value)


# --------------------------------------------------------------------- configs


def test_policy_configs_are_a_discriminated_union_and_validated() -> None:
    assert isinstance(POLICY.validate_python({"policy": "thompson_beta"}), ThompsonBeta)
    tt = POLICY.validate_python({"policy": "top_two_thompson", "reward": "continuous"})
    assert isinstance(tt, TopTwoThompson) and tt.leader_share == 0.5 and tt.floor_bp == 500
    with pytest.raises(ValidationError):
        POLICY.validate_python({"policy": "epsilon_greedy", "epsilon": 1.5})
    with pytest.raises(ValidationError):
        POLICY.validate_python({"policy": "thompson_beta", "floor_bp": -1})
    with pytest.raises(ValidationError):
        POLICY.validate_python({"policy": "softmax"})
    with pytest.raises(ValidationError):
        POLICY.validate_python({"policy": "thompson_gaussian", "prior_rate": 0})
    with pytest.raises(ValidationError):  # frozen
        tt.leader_share = 0.3  # type: ignore[misc]
    # floor × arms must fit in 10,000 bp
    BanditConfig(arms=("a", "b", "c", "d"), policy=ThompsonBeta(floor_bp=2500))
    with pytest.raises(ValidationError):
        BanditConfig(arms=("a", "b", "c", "d", "e"), policy=ThompsonBeta(floor_bp=2500))
    with pytest.raises(ValidationError):
        BanditConfig(arms=("a", "a"), policy=ThompsonBeta())


def test_statistics_are_validated_and_merge_by_addition() -> None:
    with pytest.raises(InvalidBanditInput):
        BinaryStats(5, 3)
    with pytest.raises(InvalidBanditInput):
        GaussianStats(2, 1.0, 0.1)  # Σy² < (Σy)²/n
    with pytest.raises(InvalidBanditInput):
        GaussianStats(1, math.nan, 1.0)
    assert issubclass(InvalidBanditInput, RampartError)
    assert merge_stats(BinaryStats(2, 5), BinaryStats(3, 4)) == BinaryStats(5, 9)
    assert merge_stats(GaussianStats(2, 3.0, 5.0), GaussianStats(1, 1.0, 1.0)) == GaussianStats(
        3, 4.0, 6.0)
    with pytest.raises(InvalidBanditInput):
        merge_stats(BinaryStats(1, 1), GaussianStats(1, 1.0, 1.0))


def test_gaussian_posterior_approaches_the_sampling_distribution() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(2.5, 3.0, 5_000)
    post = posterior(GaussianStats(y.size, float(y.sum()), float((y * y).sum())))
    assert post.kind == "student_t"
    assert post.loc == pytest.approx(y.mean(), rel=1e-4)
    assert post.scale == pytest.approx(y.std(ddof=1) / math.sqrt(y.size), rel=1e-2)
    lo, hi = post.interval(0.95)
    assert lo < y.mean() < hi
    # With no data the prior is wide: the interval spans far beyond any reward scale.
    lo0, hi0 = posterior(GaussianStats()).interval(0.95)
    assert hi0 - lo0 > 20


# --------------------------------------------------------------------- weights


def test_thompson_weight_is_probability_best_then_floor() -> None:
    arms = {"a": BinaryStats(30, 200), "b": BinaryStats(40, 200)}
    exact = _beta_prob_greater(41, 161, 31, 171)
    w = allocation(ThompsonBeta(floor_bp=0, draws=400_000), arms, seed=1)
    assert w.status == "ok" and sum(w.weights_bp) == 10_000
    # Monte Carlo standard error sqrt(p(1−p)/400000) < 8e-4: four of them.
    assert w.prob_best[1] == pytest.approx(exact, abs=3.2e-3)
    assert w.weights_bp[1] / 10_000 == pytest.approx(exact, abs=3.2e-3)
    floored = allocation(ThompsonBeta(floor_bp=500, draws=400_000), arms, seed=1)
    # floor + (1 − 2·floor)·p, from the same draws.
    expected = 500 + 9_000 * w.prob_best[0]
    assert abs(floored.weights_bp[0] - expected) <= 1


def test_gaussian_thompson_prefers_the_higher_mean() -> None:
    rng = np.random.default_rng(5)
    arms = {}
    for name, mu in (("a", 1.0), ("b", 1.1), ("c", 1.6)):
        y = rng.normal(mu, 1.0, 300)
        arms[name] = GaussianStats(y.size, float(y.sum()), float((y * y).sum()))
    w = allocation(ThompsonGaussian(), arms, seed=2)
    assert w.weights_bp[2] > 8_500
    assert min(w.weights_bp) >= 500
    # Normal approximation of P(c best) is ~1: the two others sit on the floor (±MC noise).
    assert w.weights_bp[0] <= 520


@settings(max_examples=60)
@given(
    counts=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=2, max_size=7),
    floor_bp=st.integers(0, 1_400),
    seed=st.integers(0, 2**32 - 1),
    removed_mask=st.integers(0, 127),
)
def test_weights_sum_to_10000_and_keep_the_floor(
        counts: list[tuple[int, int]], floor_bp: int, seed: int, removed_mask: int) -> None:
    stats_ = {f"v{i}": BinaryStats(s, s + f) for i, (s, f) in enumerate(counts)}
    removed = {f"v{i}" for i in range(len(counts)) if removed_mask >> i & 1}
    active = len(counts) - len(removed)
    for policy in (ThompsonBeta(floor_bp=floor_bp, draws=500),
                   TopTwoThompson(floor_bp=floor_bp, draws=500),
                   EpsilonGreedy(floor_bp=floor_bp, epsilon=0.2, draws=500)):
        w = allocation(policy, stats_, removed=removed, seed=seed)
        if active == 0:
            assert w.status == "no_active_arms" and sum(w.weights_bp) == 0
            continue
        assert sum(w.weights_bp) == 10_000
        for name, weight in zip(w.arms, w.weights_bp, strict=True):
            if name in removed:
                assert weight == 0
            else:
                assert weight >= (10_000 if active == 1 else floor_bp)
        # The same seed gives the same weights.
        assert allocation(policy, stats_, removed=removed, seed=seed) == w


def test_statistics_merged_in_any_batches_give_the_same_weights() -> None:
    total = {"a": BinaryStats(12, 100), "b": BinaryStats(19, 100)}
    batched = {"a": merge_stats(BinaryStats(5, 40), BinaryStats(7, 60)),
               "b": merge_stats(BinaryStats(10, 30), BinaryStats(9, 70))}
    assert allocation(ThompsonBeta(), batched, seed=9) == allocation(ThompsonBeta(), total, seed=9)


def test_top_two_matches_the_resampling_procedure() -> None:
    """Russo's procedure run literally (leader with probability β, else resample
    until another arm wins) chooses each arm as often as the closed form says."""
    arms = {"a": BinaryStats(20, 100), "b": BinaryStats(24, 100), "c": BinaryStats(27, 100)}
    policy = TopTwoThompson(floor_bp=0, draws=200_000, leader_share=0.5)
    w = allocation(policy, arms, seed=4)
    rng = np.random.default_rng(11)
    posts = [posterior(s) for s in arms.values()]
    n = 200_000

    def best(size: int) -> np.ndarray:
        return np.asarray(np.argmax(np.column_stack([p.sample(rng, size) for p in posts]), axis=1))

    leader = best(n)
    chosen = leader.copy()
    pending = np.flatnonzero(rng.random(n) >= 0.5)
    while pending.size:
        again = best(pending.size)
        done = again != leader[pending]
        chosen[pending[done]] = again[done]
        pending = pending[~done]
    freq = np.bincount(chosen, minlength=3) / n
    assert np.allclose(np.array(w.weights_bp) / 10_000, freq, atol=0.006)
    # Top-two explores the runner-up more than Thompson does.
    ts = allocation(ThompsonBeta(floor_bp=0, draws=200_000), arms, seed=4)
    assert w.weights_bp[2] < ts.weights_bp[2]


def test_top_two_with_a_certain_leader_gives_the_challenger_its_share() -> None:
    arms = {"a": BinaryStats(50, 1_000), "b": BinaryStats(500, 1_000), "c": BinaryStats(150, 1_000)}
    w = allocation(TopTwoThompson(floor_bp=0, draws=2_000), arms, seed=0)
    assert w.prob_best[1] == 1.0
    # β to the leader, 1 − β to the runner-up by second places (c beats a).
    assert w.weights_bp == (0, 5_000, 5_000)


def test_epsilon_greedy_shares() -> None:
    arms = {"a": BinaryStats(10, 100), "b": BinaryStats(30, 100), "c": BinaryStats(20, 100)}
    w = allocation(EpsilonGreedy(epsilon=0.3, floor_bp=0), arms)
    assert w.weights_bp == (1_000, 8_000, 1_000)
    w = allocation(EpsilonGreedy(epsilon=0.3, floor_bp=1_000), arms)
    # 1000 + 7000·share
    assert w.weights_bp == (1_700, 6_600, 1_700)


def test_removed_arms_and_single_arm() -> None:
    arms = {"a": BinaryStats(10, 100), "b": BinaryStats(30, 100), "c": BinaryStats(20, 100)}
    w = allocation(ThompsonBeta(), arms, removed={"a", "b"})
    assert w.status == "single_arm" and w.weights_bp == (0, 0, 10_000)
    with pytest.raises(InvalidBanditInput):
        allocation(ThompsonBeta(), arms, removed={"z"})
    with pytest.raises(InvalidBanditInput):
        allocation(ThompsonGaussian(), arms)
    with pytest.raises(InvalidBanditInput):
        allocation(ThompsonBeta(), arms, floor_bp=4_000)


@settings(max_examples=200)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_largest_remainder_sums_exactly(raw: list[float]) -> None:
    shares = np.array(raw) + 1e-6
    shares /= shares.sum()
    out = largest_remainder(shares)
    assert sum(out) == 10_000
    assert all(abs(o - s * 10_000) < 1.0 + 1e-6 for o, s in zip(out, shares, strict=True))


# --------------------------------------------------------------------- state


def _binary_batch(rng: np.random.Generator, weights: tuple[int, ...], rates: np.ndarray,
                  size: int) -> dict[str, BinaryStats]:
    n = rng.multinomial(size, np.array(weights) / 10_000)
    s = rng.binomial(n, rates)
    return {f"v{i}": BinaryStats(int(s[i]), int(n[i])) for i in range(len(rates))}


def test_step_audits_and_restores_exactly_from_json() -> None:
    config = BanditConfig(arms=("v0", "v1", "v2"), policy=ThompsonBeta(draws=5_000), seed=17)
    rates = np.array([0.10, 0.12, 0.15])
    rng = np.random.default_rng(8)
    batches = []
    weights_seen = []
    state = initial_state(config)
    assert state.weights_bp == (3_334, 3_333, 3_333)
    for t in range(12):
        batch = _binary_batch(rng, state.weights_bp, rates, 2_000)
        batches.append(batch)
        removed = {"v0"} if t == 6 else set()
        state, update = step(state, batch, removed, now=1_000.0 + t, config=config)
        weights_seen.append(state.weights_bp)
        assert update.update_index == t and update.weights_after == state.weights_bp
        assert [state.allocation.share(i) for i in range(3)] == list(state.weights_bp)
        assert update.buckets_moved == sum(
            max(b - a, 0) for a, b in zip(update.weights_after, update.weights_before,
                                          strict=True))
        for s in update.arms:
            assert s.ci_low <= s.mean <= s.ci_high
        if t >= 6:  # removed arms never come back
            assert state.weights_bp[0] == 0 and update.arms[0].removed
            assert update.arms[0].prob_best == 0.0
    assert update.newly_removed == ()
    assert state.weights_bp[2] > state.weights_bp[1]

    # Interrupted after update 5, restored from JSON, continued with the same batches.
    restored = initial_state(config)
    for t in range(5):
        removed = set()
        restored, _ = step(restored, batches[t], removed, now=1_000.0 + t, config=config)
    text = restored.to_json()
    json.loads(text)
    restored = BanditState.from_json(text)
    assert BanditState.from_json(restored.to_json()) == restored
    replay = list(weights_seen[:5])
    for t in range(5, 12):
        removed = {"v0"} if t == 6 else set()
        restored, _ = step(restored, batches[t], removed, now=1_000.0 + t, config=config)
        replay.append(restored.weights_bp)
    assert replay == weights_seen
    assert restored == state
    # A stored state whose ranges disagree with its weights is refused.
    corrupt = json.loads(text)
    corrupt["weights_bp"] = [0, 5_000, 5_000]
    with pytest.raises(InvalidBanditInput):
        BanditState.from_json(json.dumps(corrupt))
    corrupt = json.loads(text)
    corrupt["segments"] = corrupt["segments"][1:]
    with pytest.raises(InvalidBanditInput):
        BanditState.from_json(json.dumps(corrupt))


def test_step_with_every_arm_removed_keeps_the_routing() -> None:
    config = BanditConfig(arms=("a", "b"), policy=ThompsonGaussian())
    state = initial_state(config)
    state, update = step(state, {"a": GaussianStats(2, 1.0, 0.5)}, {"a"}, 10.0, config)
    assert update.status == "single_arm" and state.weights_bp == (0, 10_000)
    assert update.newly_removed == ("a",) and update.buckets_moved == 5_000
    state2, update2 = step(state, {}, {"b"}, 11.0, config)
    assert update2.status == "no_active_arms"
    assert state2.weights_bp == (0, 10_000) and state2.allocation == state.allocation
    assert state2.removed == ("a", "b")
    with pytest.raises(InvalidBanditInput):
        step(state, {"zz": GaussianStats()}, set(), 12.0, config)
    with pytest.raises(InvalidBanditInput):
        step(state, {"a": BinaryStats(1, 1)}, set(), 12.0, config)


def test_an_update_without_new_rewards_moves_no_unit() -> None:
    config = BanditConfig(arms=("a", "b", "c"), policy=ThompsonBeta(draws=1_000), seed=3)
    state = initial_state(config)
    # no evidence at all: the Monte Carlo would split 10,000 bp unevenly on noise
    same, update = step(state, {}, set(), 5.0, config)
    assert same.weights_bp == state.weights_bp and same.allocation == state.allocation
    assert update.buckets_moved == 0 and same.update_count == 1
    # rewards of no trial are no evidence either
    same, _ = step(same, {"a": BinaryStats(0, 0)}, set(), 6.0, config)
    assert same.allocation == state.allocation
    # evidence moves them; a removal without rewards moves them too
    moved, update = step(same, {"a": BinaryStats(90, 100), "b": BinaryStats(10, 100)},
                         set(), 7.0, config)
    assert moved.weights_bp[0] > moved.weights_bp[1] and update.buckets_moved > 0
    removed, update = step(moved, {}, {"a"}, 8.0, config)
    assert removed.weights_bp[0] == 0 and update.newly_removed == ("a",)
