"""A bandit experiment's config: what loads, and what is refused with its path."""

from __future__ import annotations

from typing import Any

import pytest

import rollout.core.bandits as core_bandits
from rollout.core.bandits import policies as core_policies
from serving.kernel import bandit as kernel_bandit
from serving.kernel.config import ExperimentSpec
from serving.kernel.errors import ConfigError
from tests.unit.fakes import make_config

pytestmark = pytest.mark.unit


def bandit_experiment(**changes: Any) -> dict[str, Any]:
    """Two arms on the two versions of ``clf``, Thompson sampling on clicks."""
    experiment: dict[str, Any] = {
        "id": "bandit-a",
        "salt": "bandit-a-salt",
        "arms": [
            {"name": "control", "model": "clf", "version": "champion", "weight_bp": 5000},
            {"name": "challenger", "model": "clf", "version": "challenger", "weight_bp": 5000},
        ],
        "bandit": {
            "policy": {"policy": "thompson_beta"},
            "reward": {"metric": "click", "type": "binary", "window_s": 600},
        },
    }
    experiment.update(changes)
    return experiment


def with_bandit(**changes: Any) -> dict[str, Any]:
    experiment = bandit_experiment()
    experiment["bandit"] = {**experiment["bandit"], **changes}
    return experiment


def test_a_bandit_config_loads_with_its_defaults() -> None:
    config = make_config(experiments=[bandit_experiment()])
    spec = config.experiments[0].bandit
    assert spec is not None
    assert isinstance(spec.policy, kernel_bandit.ThompsonBeta)
    assert (spec.floor_bp, spec.interval_s, spec.seed) == (500, 60.0, 0)
    assert (spec.reward.metric, spec.reward.type, spec.reward.window_s) == ("click", "binary",
                                                                            600.0)
    # The controller runs the policy with the bandit's floor.
    assert with_floor(300).effective_policy().floor_bp == 300
    assert make_config().experiments[0].bandit is None


def with_floor(floor_bp: int) -> kernel_bandit.BanditSpec:
    spec = make_config(experiments=[with_bandit(floor_bp=floor_bp)]).experiments[0].bandit
    assert spec is not None
    return spec


def test_either_kind_policies_take_the_rewards_kind_when_unsaid() -> None:
    config = make_config(experiments=[with_bandit(
        policy={"policy": "top_two_thompson", "leader_share": 0.6},
        reward={"metric": "revenue", "type": "continuous", "window_s": 3600})])
    spec = config.experiments[0].bandit
    assert spec is not None and isinstance(spec.policy, kernel_bandit.TopTwoThompson)
    assert spec.policy.reward == "continuous"


def test_the_policy_configs_are_one_set_of_classes() -> None:
    """Moved into the config kernel; the pure core re-exports the very same classes."""
    for name in ("ThompsonBeta", "ThompsonGaussian", "TopTwoThompson", "EpsilonGreedy"):
        assert getattr(core_bandits, name) is getattr(kernel_bandit, name)
        assert getattr(core_policies, name) is getattr(kernel_bandit, name)


def _factorial() -> dict[str, Any]:
    experiment = bandit_experiment()
    del experiment["arms"]
    experiment["factors"] = [
        {"name": "ranker", "salt": "f-ranker", "levels": [
            {"name": "old", "weight_bp": 5000, "model": "clf", "version": "champion"},
            {"name": "new", "weight_bp": 5000, "model": "clf", "version": "challenger"}]},
        {"name": "color", "salt": "f-color", "levels": [
            {"name": "blue", "weight_bp": 5000}, {"name": "green", "weight_bp": 5000}]}]
    return experiment


def _same_version() -> dict[str, Any]:
    experiment = bandit_experiment()
    experiment["arms"][1]["version"] = "champion"
    return experiment


REFUSALS = [
    (with_bandit(reward={"metric": "revenue", "type": "continuous", "window_s": 60}),
     "experiments.0.bandit: policy thompson_beta takes binary rewards; the reward "
     "'revenue' is continuous"),
    (with_bandit(policy={"policy": "thompson_gaussian"}),
     "experiments.0.bandit: policy thompson_gaussian takes continuous rewards"),
    (with_bandit(policy={"policy": "epsilon_greedy", "reward": "continuous"}),
     "experiments.0.bandit: policy epsilon_greedy takes continuous rewards"),
    (with_bandit(floor_bp=5001),
     "experiments.0.bandit: experiment 'bandit-a': a floor of 5001 bp for each of 2 arms "
     "exceeds 10000 bp"),
    (with_bandit(policy={"policy": "thompson_beta", "floor_bp": 100}),
     "experiments.0.bandit: set the floor once"),
    (bandit_experiment(cluster="team"),
     "experiments.0.bandit: experiment 'bandit-a': a bandit cannot be cluster-randomized"),
    (bandit_experiment(switchback={"window_s": 3600}),
     "experiments.0.bandit: experiment 'bandit-a': a bandit cannot be switchback"),
    (_factorial(), "experiments.0.bandit: experiment 'bandit-a': a bandit cannot be factorial"),
    (_same_version(),
     "experiments.0.bandit: experiment 'bandit-a': a bandit's arms must each serve a "
     "distinct model version"),
    (with_bandit(reward={"metric": "click", "type": "binary", "window_s": 0}),
     "experiments.0.bandit.reward.window_s"),
    (with_bandit(reward={"metric": "click", "type": "ordinal", "window_s": 60}),
     "experiments.0.bandit.reward.type"),
    (with_bandit(interval_s=0), "experiments.0.bandit.interval_s"),
    (with_bandit(policy={"policy": "ucb"}), "experiments.0.bandit.policy"),
]


@pytest.mark.parametrize(("experiment", "message"), REFUSALS)
def test_bad_bandits_are_refused_with_their_path(experiment: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(experiments=[experiment])
    assert message in str(caught.value)


def test_a_bandit_needs_two_arms() -> None:
    """Held by the arms' own bound and again by the bandit's check."""
    experiment = bandit_experiment()
    experiment["arms"] = experiment["arms"][:1]
    with pytest.raises(ConfigError, match=r"experiments\.0\.arms"):
        make_config(experiments=[experiment])
    fields = {"arms": ExperimentSpec.model_validate(bandit_experiment()).arms[:1]}
    spec = with_floor(500)
    with pytest.raises(ValueError, match="at least 2 arms"):
        kernel_bandit.check_bandit_experiment("bandit-a", spec, fields)
