"""The bandit controller's step, as a pure function of its state.

``step(state, new_rewards_by_arm, removed_arms, now, config) -> (state, update)``
in the shape of :func:`rollout.core.controller.step`: everything it reads
arrives as arguments (the clock included), everything it remembers leaves in
the returned :class:`BanditState`, and :class:`BanditUpdate` is the audit record
of what changed and the figures behind it.

One step merges the new rewards into each arm's sufficient statistics, removes
the arms a guardrail failed (they never return within a run), asks the policy
for weights (:func:`rollout.core.bandits.policies.allocation`) and moves the
bucket ranges to them with the fewest units changing arm
(:func:`rollout.core.bandits.ranges.rebalance`).

The Monte Carlo generator of update ``t`` is seeded with ``(config.seed, t)``,
so a controller restarted from :meth:`BanditState.to_json` continues with
exactly the weights it would have produced without the restart.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.core.bandits.arms import (
    ArmStats,
    BinaryStats,
    GaussianStats,
    InvalidBanditInput,
    merge_stats,
    posterior,
)
from rollout.core.bandits.policies import (
    TOTAL_BP,
    PolicyConfig,
    allocation,
    largest_remainder,
)
from rollout.core.bandits.ranges import from_segments, rebalance, segments_of
from serving.routing.assignment import Allocation, allocate

UpdateStatus = Literal["ok", "single_arm", "no_active_arms"]


class BanditConfig(BaseModel):
    """A bandit experiment over model versions: its arms (the first is the
    control), its policy and the seed of its Monte Carlo."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arms: tuple[str, ...] = Field(min_length=2)
    policy: PolicyConfig
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> BanditConfig:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arm names must be unique")
        if self.policy.floor_bp * len(self.arms) > TOTAL_BP:
            raise ValueError(
                f"floor_bp {self.policy.floor_bp} times {len(self.arms)} arms exceeds {TOTAL_BP}")
        return self


@dataclass(frozen=True, slots=True)
class BanditState:
    """Everything the bandit controller remembers between updates."""

    arms: tuple[str, ...]
    stats: tuple[ArmStats, ...]
    weights_bp: tuple[int, ...]
    allocation: Allocation
    update_count: int = 0
    removed: tuple[str, ...] = ()
    last_update_at: float | None = None

    def to_json(self) -> str:
        """The state as JSON. Floats are written with ``repr`` precision, so
        :meth:`from_json` restores every statistic bit for bit."""
        stats: list[dict[str, Any]] = []
        for s in self.stats:
            if isinstance(s, BinaryStats):
                stats.append({"kind": "binary", "successes": s.successes, "trials": s.trials})
            else:
                stats.append({"kind": "continuous", "n": s.n, "sum": s.sum,
                              "sum_squares": s.sum_squares})
        return json.dumps({
            "arms": list(self.arms),
            "stats": stats,
            "weights_bp": list(self.weights_bp),
            "segments": [list(seg) for seg in segments_of(self.allocation)],
            "update_count": self.update_count,
            "removed": list(self.removed),
            "last_update_at": self.last_update_at,
        })

    @classmethod
    def from_json(cls, text: str) -> BanditState:
        """The state :meth:`to_json` wrote. Raises :class:`InvalidBanditInput` when
        the stored ranges do not tile the buckets or disagree with the weights."""
        data = json.loads(text)
        stats: list[ArmStats] = []
        for s in data["stats"]:
            if s["kind"] == "binary":
                stats.append(BinaryStats(int(s["successes"]), int(s["trials"])))
            else:
                stats.append(GaussianStats(int(s["n"]), float(s["sum"]), float(s["sum_squares"])))
        arms = tuple(data["arms"])
        weights = tuple(int(w) for w in data["weights_bp"])
        try:
            alloc = from_segments(arms, [(int(a), int(b), int(c)) for a, b, c in data["segments"]])
        except (ValueError, IndexError) as exc:
            raise InvalidBanditInput(f"stored bandit ranges are invalid: {exc}") from exc
        # A stored state whose ranges disagree with its weights would route traffic
        # the audit trail does not describe: refuse it rather than guess which is right.
        if len(stats) != len(arms) or [alloc.share(i) for i in range(len(arms))] != list(weights):
            raise InvalidBanditInput("stored bandit state: statistics, weights and ranges disagree")
        return cls(
            arms=arms,
            stats=tuple(stats),
            weights_bp=weights,
            allocation=alloc,
            update_count=int(data["update_count"]),
            removed=tuple(data["removed"]),
            last_update_at=data["last_update_at"],
        )


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """One arm's posterior after an update: mean and 95% credible interval of its
    mean reward, probability it is best (0 once removed) and rewards seen."""

    arm: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    prob_best: float
    removed: bool


@dataclass(frozen=True, slots=True)
class BanditUpdate:
    """The audit record of one step: weights before and after, per-arm posterior
    summaries, buckets that changed arm, and the status (``no_active_arms``
    keeps the previous routing: there is nothing left to route to)."""

    at: float
    update_index: int
    weights_before: tuple[int, ...]
    weights_after: tuple[int, ...]
    arms: tuple[ArmSummary, ...]
    buckets_moved: int
    newly_removed: tuple[str, ...]
    status: UpdateStatus


def initial_state(config: BanditConfig) -> BanditState:
    """The state before any reward: empty statistics and an equal split."""
    kind = config.policy.reward
    empty: ArmStats = BinaryStats() if kind == "binary" else GaussianStats()
    k = len(config.arms)
    weights = largest_remainder(np.full(k, 1.0 / k))
    return BanditState(config.arms, tuple(empty for _ in config.arms), weights,
                       allocate(config.arms, weights))


def step(state: BanditState, new_rewards_by_arm: Mapping[str, ArmStats],
         removed_arms: Collection[str], now: float, config: BanditConfig
         ) -> tuple[BanditState, BanditUpdate]:
    """One controller update: merge the rewards, remove failed arms, reweight.

    An update that brings no reward and removes no arm keeps the weights and
    ranges as they are: the posteriors did not change, and redrawing the Monte
    Carlo would only move units between arms on its noise.

    Returns the new state and its audit record. Raises
    :class:`InvalidBanditInput` for rewards or removals naming an unknown arm or
    of the wrong reward kind, or a state whose arms differ from the config's.
    """
    if state.arms != config.arms:
        raise InvalidBanditInput("the state's arms differ from the config's")
    unknown = (set(new_rewards_by_arm) | set(removed_arms)) - set(config.arms)
    if unknown:
        raise InvalidBanditInput(f"unknown arms: {sorted(unknown)}")
    stats = list(state.stats)
    for i, arm in enumerate(config.arms):
        if arm in new_rewards_by_arm:
            stats[i] = merge_stats(stats[i], new_rewards_by_arm[arm])
    removed_set = set(state.removed) | set(removed_arms)
    removed = tuple(a for a in config.arms if a in removed_set)
    newly = tuple(a for a in removed if a not in state.removed)
    rng = np.random.default_rng([config.seed, state.update_count])
    weights = allocation(config.policy, dict(zip(config.arms, stats, strict=True)),
                         removed=removed, seed=rng)
    evidence = any(r.n > 0 for r in new_rewards_by_arm.values()) or bool(newly)
    if weights.status == "no_active_arms" or not evidence:
        new_weights, new_alloc, moved = state.weights_bp, state.allocation, 0
    else:
        new_weights = weights.weights_bp
        new_alloc = rebalance(state.allocation, new_weights)
        moved = sum(max(o - n, 0) for o, n in zip(state.weights_bp, new_weights, strict=True))
    prior = config.policy.normal_prior()
    summaries = []
    for i, arm in enumerate(config.arms):
        post = posterior(stats[i], prior)
        lo, hi = post.interval(0.95)
        summaries.append(ArmSummary(arm, stats[i].n, post.mean, lo, hi,
                                    weights.prob_best[i], arm in removed_set))
    new_state = BanditState(config.arms, tuple(stats), new_weights, new_alloc,
                            state.update_count + 1, removed, now)
    record = BanditUpdate(now, state.update_count, state.weights_bp, new_weights,
                          tuple(summaries), moved, newly, weights.status)
    return new_state, record
