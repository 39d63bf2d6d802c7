"""Contextual bandits: LinUCB and linear Thompson, replayable choices and propensities."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rollout.core.bandits.arms import InvalidBanditInput
from rollout.core.bandits.contextual import (
    ContextualConfig,
    ContextualState,
    choose,
    context_vector,
    initial_state,
    policy_probabilities,
    update,
)

pytestmark = pytest.mark.unit

ARMS = ("control", "small", "large")


def _trained(config: ContextualConfig, seed: int = 0, n: int = 600) -> ContextualState:
    """Each arm fitted on ``n`` rewards of a planted linear model in which
    ``large`` is best for long inputs and ``small`` for short ones."""
    rng = np.random.default_rng(seed)
    theta = {"control": [0.50, 0.00], "small": [0.70, -0.30], "large": [0.30, 0.40]}
    state = initial_state(config)
    for arm in ARMS:
        x = np.column_stack([np.ones(n), rng.uniform(0, 2, n)])
        r = x @ np.array(theta[arm]) + rng.normal(0, 0.1, n)
        state = update(config, state, arm, x, r)
    return state


def test_context_vector() -> None:
    v = context_vector({"length": 3, "premium": True, "extra": "ignored"},
                       ["length", "premium", "age"])
    assert v.tolist() == [1.0, 3.0, 1.0, 0.0]
    with pytest.raises(InvalidBanditInput):
        context_vector({"length": "long"}, ["length"])
    with pytest.raises(InvalidBanditInput):
        context_vector({"length": float("inf")}, ["length"])


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        ContextualConfig(arms=("a",))
    with pytest.raises(ValidationError):
        ContextualConfig(arms=("a", "a"))
    with pytest.raises(ValidationError):
        ContextualConfig(arms=ARMS, floor_bp=3_500)
    with pytest.raises(ValidationError):
        ContextualConfig(arms=ARMS, policy="softmax")  # type: ignore[arg-type]


def test_updates_are_the_ridge_statistics() -> None:
    config = ContextualConfig(arms=ARMS, attributes=("length",), ridge=2.0)
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(50), rng.normal(size=50)])
    r = rng.normal(size=50)
    state = update(config, initial_state(config), "small", x[:20], r[:20])
    state = update(config, state, "small", x[20:], r[20:])
    a, b = state.linear[1].matrices()
    assert np.allclose(a, 2.0 * np.eye(2) + x.T @ x)
    assert np.allclose(b, x.T @ r)
    assert state.linear[1].n == 50 and state.linear[0].n == 0
    with pytest.raises(InvalidBanditInput):
        update(config, state, "nope", x, r)
    with pytest.raises(InvalidBanditInput):
        update(config, state, "small", x[:, :1], r)
    with pytest.raises(InvalidBanditInput):
        update(config, state, "small", x, np.full(50, np.nan))


def test_linucb_learns_the_context_and_logs_its_propensity() -> None:
    config = ContextualConfig(arms=ARMS, attributes=("length",), alpha=0.5)
    state = _trained(config)
    short, long_ = context_vector({"length": 0.1}, ["length"]), context_vector(
        {"length": 1.9}, ["length"])
    p_short = policy_probabilities(config, state, short)
    p_long = policy_probabilities(config, state, long_)
    # 1 − 3·5% + 5% on the argmax, 5% on each of the others.
    assert p_short.tolist() == pytest.approx([0.05, 0.9, 0.05])
    assert p_long.tolist() == pytest.approx([0.05, 0.05, 0.9])
    # The choice is the inverse CDF at u: replayable, and its propensity is its probability.
    assert choose(config, state, long_, 0.0).arm == "control"
    assert choose(config, state, long_, 0.07).arm == "small"
    picked = choose(config, state, long_, 0.5)
    assert picked.arm == "large" and picked.propensity == pytest.approx(0.9)
    assert choose(config, state, long_, 0.5) == picked
    # Removed arms are never chosen; the floor is shared by the arms left.
    p = policy_probabilities(config, state, long_, removed={"large"})
    assert p.tolist() == pytest.approx([0.95, 0.05, 0.0])  # control beats small there
    with pytest.raises(InvalidBanditInput):
        choose(config, state, long_, 1.0)
    with pytest.raises(InvalidBanditInput):
        choose(config, state, np.ones(3), 0.5)


def test_choices_over_u_follow_the_propensities() -> None:
    config = ContextualConfig(arms=ARMS, attributes=("length",), policy="linear_thompson",
                              scale=3.0, draws=4_000)
    state = _trained(config, n=30)
    x = context_vector({"length": 1.0}, ["length"])
    probs = policy_probabilities(config, state, x)
    u = (np.arange(10_000) + 0.5) / 10_000
    chosen = np.array([choose(config, state, x, float(v)).index for v in u[::10]])
    freq = np.bincount(chosen, minlength=3) / chosen.size
    assert np.allclose(freq, probs, atol=2e-3)
    for v in (0.01, 0.5, 0.99):
        c = choose(config, state, x, v)
        assert c.propensity == pytest.approx(probs[c.index])


def test_linear_thompson_propensity_matches_full_parameter_sampling() -> None:
    """Agrawal & Goyal sample the whole θ̃ₐ ~ N(θ̂ₐ, v²Aₐ⁻¹); the module samples only
    the scores xᵀθ̃ₐ. Both give the same probabilities of each arm being argmax."""
    config = ContextualConfig(arms=ARMS, attributes=("length",), policy="linear_thompson",
                              scale=2.0, draws=100_000, floor_bp=0)
    state = _trained(config, n=25, seed=4)
    x = context_vector({"length": 0.8}, ["length"])
    probs = policy_probabilities(config, state, x)
    rng = np.random.default_rng(99)
    scores = []
    for arm in state.linear:
        a, b = arm.matrices()
        theta = rng.multivariate_normal(np.linalg.solve(a, b), 4.0 * np.linalg.inv(a), 100_000)
        scores.append(theta @ x)
    freq = np.bincount(np.argmax(np.column_stack(scores), axis=1), minlength=3) / 100_000
    assert np.allclose(probs, freq, atol=0.008)
    assert probs.max() < 0.99  # a real mixture, not a trivially certain choice


def test_state_round_trips_through_json() -> None:
    config = ContextualConfig(arms=ARMS, attributes=("length",), policy="linear_thompson")
    state = _trained(config, n=40)
    restored = ContextualState.from_json(state.to_json())
    assert restored == state
    x = context_vector({"length": 1.2}, ["length"])
    assert choose(config, restored, x, 0.42) == choose(config, state, x, 0.42)
