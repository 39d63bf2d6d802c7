"""Contextual bandits over a numeric context vector: LinUCB and linear Thompson.

Both keep, per arm, the ridge-regression sufficient statistics
``A = λI + Σ x xᵀ`` (d × d) and ``b = Σ r x`` (d), so ``θ̂ = A⁻¹ b``:

- LinUCB (Li, Chu, Langford & Schapire 2010, "A contextual-bandit approach to
  personalized news article recommendation", disjoint model): the policy picks
  ``argmax xᵀθ̂ₐ + α·√(xᵀAₐ⁻¹x)`` (ties to the lower arm index).
- Linear Thompson sampling (Agrawal & Goyal 2013, "Thompson sampling for
  contextual bandits with linear payoffs"): the policy samples
  ``θ̃ₐ ~ N(θ̂ₐ, v²Aₐ⁻¹)`` and picks ``argmax xᵀθ̃ₐ``. Given ``x`` the scores
  ``xᵀθ̃ₐ`` are independent normals, so the probability of each arm is estimated
  by seeded Monte Carlo over those k scalars.

Every active arm keeps the floor share as in :mod:`rollout.core.bandits.policies`:
the chosen arm's probability is ``floor + (1 − m·floor)·policy probability``.
The choice is replayable: it is the inverse CDF of those probabilities at a
uniform ``u`` in [0, 1) that the caller derives (e.g. from a hash of the
request). The logged propensity is the probability of that choice under the
probabilities actually used, so for linear Thompson it is exact for the seeded
Monte Carlo distribution the choice was drawn from.

Turning declared request attributes into a vector is the caller's job;
:func:`context_vector` is the small helper that does it with an intercept.
This module is off by default and pure: nothing here reads a clock or a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.core.bandits.arms import InvalidBanditInput
from rollout.core.bandits.policies import DEFAULT_FLOOR_BP, apply_floor, check_floor

FloatArray = npt.NDArray[np.float64]


class ContextualConfig(BaseModel):
    """A contextual bandit's settings (off unless the experiment enables it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Literal["linucb", "linear_thompson"] = "linucb"
    arms: tuple[str, ...] = Field(min_length=2)
    attributes: tuple[str, ...] = ()
    floor_bp: int = Field(default=DEFAULT_FLOOR_BP, ge=0, le=10_000)
    # LinUCB's exploration width α and linear Thompson's posterior scale v.
    alpha: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    scale: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    ridge: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    draws: int = Field(default=4_000, ge=100, le=1_000_000)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ContextualConfig:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arm names must be unique")
        if self.floor_bp * len(self.arms) > 10_000:
            raise ValueError("floor_bp times the number of arms exceeds 10000")
        return self

    @property
    def dimension(self) -> int:
        """Length of the context vector: the intercept and one entry per attribute."""
        return 1 + len(self.attributes)


def context_vector(context: Mapping[str, object], attributes: Sequence[str]
                   ) -> FloatArray:
    """``[1, context[a₁], …, context[a_d]]`` as floats.

    The leading 1 is the intercept. A missing attribute counts as 0 (a request
    may omit one); booleans are 0/1. Raises :class:`InvalidBanditInput` for a
    value that is not a finite number, since a model cannot be fitted on it.
    """
    out = np.empty(1 + len(attributes))
    out[0] = 1.0
    for i, name in enumerate(attributes, start=1):
        value = context.get(name, 0.0)
        if value is None:
            value = 0.0
        if not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise InvalidBanditInput(f"context attribute {name!r} is not a finite number")
        out[i] = float(value)
    return out


@dataclass(frozen=True, slots=True)
class LinearArm:
    """One arm's ridge statistics: ``a`` = λI + Σxxᵀ, ``b`` = Σrx, ``n`` updates."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    n: int = 0

    def matrices(self) -> tuple[FloatArray, FloatArray]:
        return np.array(self.a, dtype=np.float64), np.array(self.b, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class ContextualState:
    """Per-arm linear statistics, in the order of the config's arms."""

    arms: tuple[str, ...]
    linear: tuple[LinearArm, ...]

    def to_json(self) -> str:
        """The state as JSON; :meth:`from_json` restores it exactly (floats
        round-trip through ``repr``)."""
        return json.dumps({"arms": list(self.arms),
                           "linear": [{"a": [list(r) for r in arm.a], "b": list(arm.b),
                                       "n": arm.n} for arm in self.linear]})

    @classmethod
    def from_json(cls, text: str) -> ContextualState:
        data = json.loads(text)
        return cls(tuple(data["arms"]), tuple(
            LinearArm(tuple(tuple(float(v) for v in row) for row in arm["a"]),
                      tuple(float(v) for v in arm["b"]), int(arm["n"]))
            for arm in data["linear"]))


def initial_state(config: ContextualConfig) -> ContextualState:
    """Statistics before any reward: ``A = λI``, ``b = 0`` for every arm."""
    d = config.dimension
    eye = np.eye(d) * config.ridge
    arm = LinearArm(tuple(tuple(float(v) for v in row) for row in eye),
                    tuple(0.0 for _ in range(d)))
    return ContextualState(config.arms, tuple(arm for _ in config.arms))


def _check_vector(config: ContextualConfig, x: FloatArray) -> FloatArray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (config.dimension,):
        raise InvalidBanditInput(f"context vector needs shape ({config.dimension},), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidBanditInput("context vector has a non-finite entry")
    return x


def update(config: ContextualConfig, state: ContextualState, arm: str,
           contexts: FloatArray, rewards: FloatArray) -> ContextualState:
    """The state after observing ``rewards`` for ``arm`` at the rows of ``contexts``
    (``n × d``; one row is a 1-d vector): ``A += XᵀX``, ``b += Xᵀr``."""
    if arm not in state.arms:
        raise InvalidBanditInput(f"unknown arm {arm!r}")
    x = np.atleast_2d(np.asarray(contexts, dtype=np.float64))
    r = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
    if x.shape[1] != config.dimension or x.shape[0] != r.shape[0]:
        raise InvalidBanditInput("contexts must be n × d and rewards n long")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(r))):
        raise InvalidBanditInput("contexts and rewards must be finite")
    i = state.arms.index(arm)
    a, b = state.linear[i].matrices()
    a = a + x.T @ x
    b = b + x.T @ r
    new = LinearArm(tuple(tuple(float(v) for v in row) for row in a),
                    tuple(float(v) for v in b), state.linear[i].n + int(x.shape[0]))
    linear = list(state.linear)
    linear[i] = new
    return ContextualState(state.arms, tuple(linear))


@dataclass(frozen=True, slots=True)
class Choice:
    """One request's arm: ``arm`` (name), ``index``, the ``propensity`` with
    which it was chosen (floor included), and every arm's probability."""

    arm: str
    index: int
    propensity: float
    probabilities: tuple[float, ...]


def _mean_and_width(state: ContextualState, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per arm ``xᵀθ̂`` and ``√(xᵀA⁻¹x)``, by solves rather than inverses."""
    means = np.empty(len(state.arms))
    widths = np.empty(len(state.arms))
    for i, arm in enumerate(state.linear):
        a, b = arm.matrices()
        z = np.linalg.solve(a, np.column_stack([b, x]))
        means[i] = float(x @ z[:, 0])
        widths[i] = math.sqrt(max(float(x @ z[:, 1]), 0.0))
    return means, widths


def policy_probabilities(config: ContextualConfig, state: ContextualState, x: FloatArray,
                         removed: Collection[str] = ()) -> FloatArray:
    """Each arm's probability of being chosen for context ``x``, floor included
    (0 for removed arms). LinUCB puts the policy's mass on its argmax; linear
    Thompson on the seeded Monte Carlo frequency of each arm's sampled score
    being the largest."""
    x = _check_vector(config, x)
    active = np.array([a not in removed for a in state.arms])
    if not active.any():
        raise InvalidBanditInput("every arm is removed")
    check_floor(config.floor_bp, int(active.sum()))
    means, widths = _mean_and_width(state, x)
    idx = np.flatnonzero(active)
    if config.policy == "linucb":
        scores = means[idx] + config.alpha * widths[idx]
        share = np.zeros(idx.size)
        share[int(np.argmax(scores))] = 1.0
    else:
        rng = np.random.default_rng(config.seed)
        draws = means[idx] + config.scale * widths[idx] * rng.standard_normal(
            (config.draws, idx.size))
        share = np.bincount(np.argmax(draws, axis=1), minlength=idx.size) / config.draws
    probs = np.zeros(len(state.arms))
    probs[idx] = apply_floor(share, config.floor_bp) if idx.size > 1 else 1.0
    return probs


def choose(config: ContextualConfig, state: ContextualState, x: FloatArray, u: float,
           removed: Collection[str] = ()) -> Choice:
    """The arm for one request with context ``x`` and caller-provided uniform ``u``.

    Returns the arm at ``u`` on the cumulative probabilities of
    :func:`policy_probabilities`, with its propensity; the same ``(state, x, u)``
    always gives the same choice.
    """
    if not (0.0 <= u < 1.0):
        raise InvalidBanditInput(f"u must be in [0, 1), got {u!r}")
    probs = policy_probabilities(config, state, x, removed)
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    index = min(index, len(probs) - 1)
    # Never land on a zero-probability arm through rounding at a boundary.
    while probs[index] == 0.0:
        index -= 1
    return Choice(state.arms[index], index, float(probs[index]), tuple(float(p) for p in probs))
