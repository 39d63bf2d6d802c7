"""Bandit policies over model versions, and the traffic weights they give.

A policy turns per-arm sufficient statistics into a share of traffic per arm;
:func:`allocation` turns that share into integer basis points over the 10,000
buckets of :mod:`serving.routing.assignment`.

Policies:

- ``thompson_beta`` / ``thompson_gaussian``: Thompson sampling (Thompson 1933)
  in its batched, "probability matching" form: an arm's share is the posterior
  probability that its mean is the largest, estimated by Monte Carlo with a
  seeded generator. Binary rewards use Beta posteriors, continuous rewards the
  Student-t marginal of a Normal-Inverse-Gamma posterior (unknown variance).
- ``top_two_thompson``: top-two Thompson sampling for best-arm identification
  (Russo 2016, "Simple Bayesian algorithms for best arm identification"): with
  probability ``leader_share`` (β) play the Thompson leader, otherwise a
  challenger, the best arm of a resample conditioned on differing from the
  leader. Its exact share is ``β·pᵢ + (1 − β)·Σ_{j≠i} pⱼ·pᵢ/(1 − pⱼ)``.
- ``epsilon_greedy``: ``1 − ε`` on the arm with the largest posterior mean,
  ``ε`` spread evenly.

Every active arm then keeps a floor share (default 500 bp = 5%) so every
version keeps producing data: the policy's share ``p`` is mixed as
``floor + (1 − m·floor)·p`` over the ``m`` active arms, which is at least
``floor`` and still sums to one, and the basis points are rounded by largest
remainder so they sum to exactly 10,000. Removed arms (a failed guardrail) get
0; a single remaining arm gets everything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from rollout.core.bandits.arms import (
    ArmStats,
    BinaryStats,
    GaussianStats,
    InvalidBanditInput,
    Posterior,
    posterior,
)

# The policy configs are validated with the rest of the config, in the config
# kernel (which may import no other project package); they are re-exported here.
from serving.kernel.bandit import DEFAULT_DRAWS as DEFAULT_DRAWS
from serving.kernel.bandit import DEFAULT_FLOOR_BP as DEFAULT_FLOOR_BP
from serving.kernel.bandit import TOTAL_BP as TOTAL_BP
from serving.kernel.bandit import EpsilonGreedy as EpsilonGreedy
from serving.kernel.bandit import PolicyConfig as PolicyConfig
from serving.kernel.bandit import RewardKind as RewardKind
from serving.kernel.bandit import ThompsonBeta as ThompsonBeta
from serving.kernel.bandit import ThompsonGaussian as ThompsonGaussian
from serving.kernel.bandit import TopTwoThompson as TopTwoThompson

AllocationStatus = Literal["ok", "single_arm", "no_active_arms"]


def check_floor(floor_bp: int, arm_count: int) -> None:
    """Raise :class:`InvalidBanditInput` unless ``arm_count`` floors fit in 10,000 bp."""
    if floor_bp < 0 or floor_bp * arm_count > TOTAL_BP:
        raise InvalidBanditInput(
            f"a floor of {floor_bp} bp for each of {arm_count} arms exceeds {TOTAL_BP} bp")


@dataclass(frozen=True, slots=True)
class Weights:
    """Traffic weights of one allocation.

    ``weights_bp`` sum to exactly 10,000 (or are all 0 when ``status`` is
    ``"no_active_arms"``). ``policy_share`` is the policy's own share of each
    arm before the floor is mixed in (for Thompson: the posterior probability
    that the arm is best, among active arms); ``prob_best`` is that
    probability for every policy (0 for removed arms).
    """

    arms: tuple[str, ...]
    weights_bp: tuple[int, ...]
    policy_share: tuple[float, ...]
    prob_best: tuple[float, ...]
    status: AllocationStatus


def largest_remainder(shares: npt.NDArray[np.float64], total: int = TOTAL_BP) -> tuple[int, ...]:
    """Integers proportional to ``shares`` (non-negative, summing to one) that sum to
    ``total``: every share's floor, then one more unit to the largest remainders
    (ties to the lower index, so the result is deterministic)."""
    scaled = shares * total
    base = np.floor(scaled + 1e-9).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        remainders = scaled - base
        order = np.argsort(-remainders, kind="stable")
        base[order[:short]] += 1
    elif short < 0:  # rounding pushed the floors over: take back from the smallest remainders
        remainders = scaled - base
        order = np.argsort(remainders, kind="stable")
        taken = 0
        for i in order:
            if taken == -short:
                break
            if base[i] > 0:
                base[i] -= 1
                taken += 1
    return tuple(int(v) for v in base)


def apply_floor(shares: npt.NDArray[np.float64], floor_bp: int) -> npt.NDArray[np.float64]:
    """``floor + (1 − m·floor)·share`` per arm (as fractions): each of the ``m``
    arms gets at least ``floor_bp`` and the result still sums to one. This is also
    the probability an arm is chosen when the policy picks with probability
    ``share`` and the floor is a uniform mixture, so it is the propensity to log."""
    m = shares.size
    f = floor_bp / TOTAL_BP
    return f + (1.0 - m * f) * shares


def _posteriors(policy: ThompsonBeta | ThompsonGaussian | TopTwoThompson | EpsilonGreedy,
                stats: list[ArmStats]) -> list[Posterior]:
    prior = policy.normal_prior()
    return [posterior(s, prior) for s in stats]


def _samples(posts: list[Posterior], rng: np.random.Generator,
             draws: int) -> npt.NDArray[np.float64]:
    """A ``draws × arms`` matrix of posterior draws, one column per arm."""
    return np.column_stack([p.sample(rng, draws) for p in posts])


def _top_two_shares(samples: npt.NDArray[np.float64], leader_share: float
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(top-two share, probability best) from a draws × arms matrix.

    The challenger's law given leader ``j`` is ``pᵢ/(1 − pⱼ)`` over ``i ≠ j``
    (a fresh sample's best arm, conditioned on not being ``j``). When ``j`` won
    every draw (``pⱼ = 1`` in the estimate) that ratio is 0/0; the share of
    draws in which each arm came second stands in for it.
    """
    draws, m = samples.shape
    order = np.argsort(-samples, axis=1, kind="stable")
    p = np.bincount(order[:, 0], minlength=m) / draws
    challenger = np.zeros(m)
    for j in range(m):
        if p[j] == 0.0:
            continue
        if p[j] < 1.0:
            cond = p / (1.0 - p[j])
            cond[j] = 0.0
        else:
            cond = np.bincount(order[:, 1], minlength=m) / draws
        challenger += p[j] * cond
    return leader_share * p + (1.0 - leader_share) * challenger, p


def allocation(
    policy: ThompsonBeta | ThompsonGaussian | TopTwoThompson | EpsilonGreedy,
    stats: Mapping[str, ArmStats],
    *,
    removed: Collection[str] = (),
    floor_bp: int | None = None,
    seed: int | np.random.Generator = 0,
    draws: int | None = None,
) -> Weights:
    """Traffic weights in basis points for the arms of ``stats`` (in its order).

    Returns a :class:`Weights` whose ``weights_bp`` sum to exactly 10,000: the
    policy's share of each active arm (arms not in ``removed``), with the floor
    mixed in, rounded by largest remainder. ``seed`` (or a generator) makes the
    Monte Carlo reproducible; ``floor_bp`` and ``draws`` default to the policy's.

    Raises :class:`InvalidBanditInput` when the statistics do not match the
    policy's reward kind, ``removed`` names an unknown arm, or the floors of the
    active arms exceed 10,000 bp.
    """
    arms = tuple(stats)
    if not arms:
        raise InvalidBanditInput("a bandit needs at least one arm")
    unknown = set(removed) - set(arms)
    if unknown:
        raise InvalidBanditInput(f"removed arms not in the bandit: {sorted(unknown)}")
    kind = BinaryStats if policy.reward == "binary" else GaussianStats
    wrong = [a for a in arms if not isinstance(stats[a], kind)]
    if wrong:
        raise InvalidBanditInput(
            f"policy {policy.policy} takes {policy.reward} statistics; arms {wrong} differ")
    floor = policy.floor_bp if floor_bp is None else floor_bp
    n_draws = policy.draws if draws is None else draws
    active = [i for i, a in enumerate(arms) if a not in removed]
    check_floor(floor, len(active))
    k = len(arms)
    zeros = tuple(0.0 for _ in arms)
    if not active:
        return Weights(arms, tuple(0 for _ in arms), zeros, zeros, "no_active_arms")
    if len(active) == 1:
        full = tuple(TOTAL_BP if i == active[0] else 0 for i in range(k))
        one = tuple(1.0 if i == active[0] else 0.0 for i in range(k))
        return Weights(arms, full, one, one, "single_arm")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    posts = _posteriors(policy, [stats[arms[i]] for i in active])
    samples = _samples(posts, rng, n_draws)
    m = len(active)
    if isinstance(policy, TopTwoThompson):
        share, p_best = _top_two_shares(samples, policy.leader_share)
    else:
        p_best = np.bincount(np.argmax(samples, axis=1), minlength=m) / n_draws
        if isinstance(policy, EpsilonGreedy):
            means = np.array([p.mean for p in posts])
            share = np.full(m, policy.epsilon / m)
            share[int(np.argmax(means))] += 1.0 - policy.epsilon
        else:
            share = p_best
    mixed = apply_floor(share, floor)
    rounded = largest_remainder(mixed)
    weights = [0] * k
    full_share = [0.0] * k
    full_best = [0.0] * k
    for pos, i in enumerate(active):
        weights[i] = rounded[pos]
        full_share[i] = float(share[pos])
        full_best[i] = float(p_best[pos])
    return Weights(arms, tuple(weights), tuple(full_share), tuple(full_best), "ok")
