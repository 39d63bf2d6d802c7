"""A bandit experiment's configuration: its policy, reward and update cadence
(part of the config kernel).

An experiment with ``bandit:`` set is a multi-armed bandit over model
versions: its arms' weights are not fixed by the config but recomputed every
``interval_s`` by the bandit controller (``rollout/bandit_service.py``) from
the rewards its arms earned, and published as a new routing table. The arms'
``weight_bp`` in the config are the *starting* weights: the table before the
first update routes exactly as the config says, so switching a running
experiment to a bandit moves no unit until rewards arrive.

The policy configs (Thompson sampling on Beta or Normal-Inverse-Gamma
posteriors, top-two Thompson, epsilon-greedy) live here, not in the pure
bandit core, because the config kernel may import no other project package;
``rollout.core.bandits`` re-exports them and holds the code that runs them.

Pure: pydantic models and checks only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.kernel.ids import BUCKETS

TOTAL_BP = BUCKETS
DEFAULT_FLOOR_BP = 500
# 20,000 draws put the Monte Carlo standard error of a share of p at
# sqrt(p(1 − p)/20000) <= 0.0035, i.e. at most ~35 bp before the floor is mixed
# in: small against the moves a bandit update makes.
DEFAULT_DRAWS = 20_000

RewardKind = Literal["binary", "continuous"]


@dataclass(frozen=True, slots=True)
class NormalPrior:
    """Normal-Inverse-Gamma prior ``(mean, count, shape, rate)`` = (μ₀, κ₀, α₀, β₀).

    The defaults are weak: a prior mean worth 0.01 observations and a variance
    guess of ``rate / shape`` = 1 worth two observations, so a handful of rewards
    dominates them.
    """

    mean: float = 0.0
    count: float = 0.01
    shape: float = 1.0
    rate: float = 1.0


class _Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    floor_bp: int = Field(default=DEFAULT_FLOOR_BP, ge=0, le=TOTAL_BP)
    draws: int = Field(default=DEFAULT_DRAWS, ge=100, le=1_000_000)


class _NormalPriorFields(BaseModel):
    """The Normal-Inverse-Gamma prior of continuous rewards (see :class:`NormalPrior`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prior_mean: float = Field(default=0.0, allow_inf_nan=False)
    prior_count: float = Field(default=0.01, gt=0, allow_inf_nan=False)
    prior_shape: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    prior_rate: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    def normal_prior(self) -> NormalPrior:
        """The prior these fields describe."""
        return NormalPrior(self.prior_mean, self.prior_count, self.prior_shape, self.prior_rate)


class ThompsonBeta(_Policy):
    """Thompson sampling on binary rewards (Beta posteriors, uniform prior)."""

    policy: Literal["thompson_beta"] = "thompson_beta"

    @property
    def reward(self) -> RewardKind:
        return "binary"

    def normal_prior(self) -> NormalPrior:
        """Unused by Beta posteriors; the default, so every policy answers alike."""
        return NormalPrior()


class ThompsonGaussian(_Policy, _NormalPriorFields):
    """Thompson sampling on continuous rewards (Normal-Inverse-Gamma posteriors)."""

    policy: Literal["thompson_gaussian"] = "thompson_gaussian"

    @property
    def reward(self) -> RewardKind:
        return "continuous"


class TopTwoThompson(_Policy, _NormalPriorFields):
    """Top-two Thompson sampling (best-arm identification) on either reward kind."""

    policy: Literal["top_two_thompson"] = "top_two_thompson"
    reward: RewardKind = "binary"
    # Russo's β: the share of the leader. 1/2 is his recommended default.
    leader_share: float = Field(default=0.5, gt=0.0, lt=1.0)


class EpsilonGreedy(_Policy, _NormalPriorFields):
    """Epsilon-greedy on the posterior means."""

    policy: Literal["epsilon_greedy"] = "epsilon_greedy"
    reward: RewardKind = "binary"
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)


PolicyConfig = Annotated[
    ThompsonBeta | ThompsonGaussian | TopTwoThompson | EpsilonGreedy,
    Field(discriminator="policy"),
]
AnyPolicy = ThompsonBeta | ThompsonGaussian | TopTwoThompson | EpsilonGreedy
# Policies that take either reward kind, named by their own ``reward`` field.
_EITHER_KIND = frozenset({"top_two_thompson", "epsilon_greedy"})


class RewardSpec(BaseModel):
    """The pre-registered reward of a bandit: a metric of the outcomes log and
    the attribution window after a unit's exposure in which its outcomes count.

    ``binary``: an exposure succeeds when the unit has an outcome of ``metric``
    with a positive value within the window. ``continuous``: its reward is the
    sum of the unit's ``metric`` values within the window (0 without any).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: RewardKind
    window_s: float = Field(gt=0, le=90 * 86_400, allow_inf_nan=False)


class BanditGuardrails(BaseModel):
    """The latency and error limits every arm of a bandit is held to at each
    update, on the decisions since the previous one: each arm against the
    pooled other active arms (the same checks as a rollout's guardrails). An
    arm that fails one is removed for the rest of the run, whatever its reward.

    ``min_check_requests`` is higher than a rollout step's: a removal is for
    good, so one window's verdict should not rest on a handful of requests,
    where a single slow first call sets the p99.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    p99_latency_delta_ms: float | None = Field(default=50.0, gt=0, allow_inf_nan=False)
    p99_latency_max_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    error_rate_delta: float | None = Field(default=0.01, gt=0, le=1)
    min_check_requests: int = Field(default=100, ge=1)


class ContextualSpec(BaseModel):
    """A contextual bandit: each request's arm is chosen by a linear model of
    its reward on declared numeric context attributes, fitted per arm by the
    controller (LinUCB, or linear Thompson sampling), instead of by the
    bucket ranges. The request's context must carry the attributes as numbers
    (a missing one counts as 0); the chosen arm's probability is logged.

    ``alpha`` is LinUCB's exploration width, ``scale`` linear Thompson's
    posterior scale, ``ridge`` the prior precision of both, ``draws`` linear
    Thompson's Monte Carlo size for an arm's probability (on the request path:
    kept small).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Literal["linucb", "linear_thompson"] = "linucb"
    attributes: tuple[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")], ...] = (
        Field(min_length=1, max_length=16))
    alpha: float = Field(default=1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    scale: float = Field(default=1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    ridge: float = Field(default=1.0, gt=0.0, le=1e6, allow_inf_nan=False)
    draws: int = Field(default=1_000, ge=100, le=20_000)

    @model_validator(mode="after")
    def _distinct(self) -> ContextualSpec:
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes listed twice: {sorted(self.attributes)}")
        return self


class BanditSpec(BaseModel):
    """A bandit over an experiment's arms (``ExperimentSpec.bandit``).

    ``floor_bp`` is every active arm's least share (it overrides the policy's
    own ``floor_bp``, so there is one place to set it); ``interval_s`` is how
    often weights are recomputed; ``seed`` seeds the Monte Carlo of each update
    (update ``t`` draws from ``(seed, t)``, so a restarted controller gives the
    weights an uninterrupted one would have). ``guardrails`` are the arms'
    latency and error limits (None: no built-in check). With ``contextual``
    each request's arm comes from the linear model on its context; ``policy``
    may then be left out (Thompson sampling of the reward's kind summarises the
    arms in the audit trail).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: PolicyConfig | None = None
    floor_bp: int = Field(default=DEFAULT_FLOOR_BP, ge=0, le=TOTAL_BP)
    reward: RewardSpec
    interval_s: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0)
    guardrails: BanditGuardrails | None = BanditGuardrails()
    contextual: ContextualSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _policy_reward_from_spec(cls, data: Any) -> Any:
        # Top-two Thompson and epsilon-greedy take either reward kind; left
        # unsaid, theirs is the reward's, so the kind is written once.
        if not isinstance(data, Mapping):
            return data
        policy, reward = data.get("policy"), data.get("reward")
        if (isinstance(policy, Mapping) and policy.get("policy") in _EITHER_KIND
                and "reward" not in policy and isinstance(reward, Mapping)
                and reward.get("type") in ("binary", "continuous")):
            return {**data, "policy": {**policy, "reward": reward["type"]}}
        return data

    @model_validator(mode="after")
    def _policy_matches_reward(self) -> BanditSpec:
        if self.policy is None:
            if self.contextual is None:
                raise ValueError("a bandit needs a policy, or contextual: for a contextual one")
            return self
        if self.policy.reward != self.reward.type:
            raise ValueError(f"policy {self.policy.policy} takes {self.policy.reward} rewards; "
                             f"the reward {self.reward.metric!r} is {self.reward.type}")
        if "floor_bp" in self.policy.model_fields_set and self.policy.floor_bp != self.floor_bp:
            raise ValueError("set the floor once, as the bandit's floor_bp, not in its policy")
        return self

    def effective_policy(self) -> AnyPolicy:
        """The policy with the bandit's floor: what the controller runs (for a
        contextual bandit without one, Thompson sampling of the reward's kind,
        which summarises the arms)."""
        policy: AnyPolicy
        if self.policy is not None:
            policy = self.policy
        elif self.reward.type == "binary":
            policy = ThompsonBeta()
        else:
            policy = ThompsonGaussian()
        return policy.model_copy(update={"floor_bp": self.floor_bp})


def check_bandit_experiment(experiment: str, spec: BanditSpec, fields: Mapping[str, Any]
                            ) -> None:
    """Raise ``ValueError`` unless the experiment (its validated ``fields``) can
    run the bandit ``spec``: at least two arms, each on a distinct model version
    (a bandit learns which version earns most, so two arms on one version
    would split its evidence), floors that fit in 10,000 bp, and no cluster,
    switchback or factorial design (each fixes the arm by something other than
    the unit's bucket, which the bandit's ranges move)."""
    for key, design in (("cluster", "cluster-randomized"), ("switchback", "switchback")):
        if fields.get(key) is not None:
            raise ValueError(f"experiment {experiment!r}: a bandit cannot be {design}")
    if fields.get("factors"):
        raise ValueError(f"experiment {experiment!r}: a bandit cannot be factorial")
    arms = fields.get("arms")
    if arms is None:
        return  # the arms are invalid and reported on their own
    if len(arms) < 2:
        raise ValueError(f"experiment {experiment!r}: a bandit needs at least 2 arms")
    versions = [(a.model, a.version) for a in arms]
    if len(set(versions)) != len(versions):
        raise ValueError(f"experiment {experiment!r}: a bandit's arms must each serve a "
                         f"distinct model version, got "
                         f"{[f'{m}/{v}' for m, v in versions]}")
    if spec.floor_bp * len(arms) > TOTAL_BP:
        raise ValueError(f"experiment {experiment!r}: a floor of {spec.floor_bp} bp for each "
                         f"of {len(arms)} arms exceeds {TOTAL_BP} bp")
