"""Per-arm sufficient statistics and the conjugate posteriors built from them.

A bandit policy never sees individual rewards: it sees, per arm, the sufficient
statistics of the rewards observed so far, which merge by addition across
batches, replicas and partitions of a log.

- Binary rewards: :class:`BinaryStats` (``successes``, ``trials``) and a
  Beta(``1 + successes``, ``1 + trials − successes``) posterior (uniform prior),
  the model of Thompson (1933).
- Continuous rewards: :class:`GaussianStats` (``n``, ``sum``, ``sum_squares``)
  and the Normal-Inverse-Gamma posterior of a normal model with unknown mean
  and variance; the mean's marginal posterior is a Student-t with
  ``2·alpha_n`` degrees of freedom (e.g. Murphy 2007, "Conjugate Bayesian
  analysis of the Gaussian distribution", §6).

Everything here is pure numpy/scipy and deterministic given a generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

# The prior's fields are part of a policy's config, validated in the config kernel.
from serving.kernel.bandit import NormalPrior as NormalPrior
from serving.kernel.errors import RampartError


class InvalidBanditInput(RampartError):
    """Statistics, weights or a context a caller supplied that a bandit cannot use."""

    code, status = "invalid_bandit_input", 422


@dataclass(frozen=True, slots=True)
class BinaryStats:
    """Sufficient statistics of one arm's 0/1 rewards: ``successes`` out of ``trials``."""

    successes: int = 0
    trials: int = 0

    def __post_init__(self) -> None:
        if self.trials < 0 or self.successes < 0 or self.successes > self.trials:
            raise InvalidBanditInput(
                f"binary statistics need 0 <= successes <= trials, got "
                f"{self.successes} of {self.trials}")

    @property
    def n(self) -> int:
        return self.trials

    def merge(self, other: BinaryStats) -> BinaryStats:
        """The statistics of both batches together (they add)."""
        return BinaryStats(self.successes + other.successes, self.trials + other.trials)


@dataclass(frozen=True, slots=True)
class GaussianStats:
    """Sufficient statistics of one arm's continuous rewards ``y``: ``n``, Σy, Σy²."""

    n: int = 0
    sum: float = 0.0
    sum_squares: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 0 or not (math.isfinite(self.sum) and math.isfinite(self.sum_squares)):
            raise InvalidBanditInput(
                f"continuous statistics need n >= 0 and finite sums, got n={self.n}, "
                f"sum={self.sum}, sum_squares={self.sum_squares}")
        # Σy² >= (Σy)²/n by Cauchy-Schwarz; allow rounding slack only.
        if self.n == 0 and (self.sum != 0.0 or self.sum_squares != 0.0):
            raise InvalidBanditInput("continuous statistics with n=0 must have zero sums")
        if self.n > 0 and self.sum_squares < self.sum * self.sum / self.n * (1 - 1e-9) - 1e-9:
            raise InvalidBanditInput("continuous statistics need sum_squares >= sum**2 / n")

    def merge(self, other: GaussianStats) -> GaussianStats:
        """The statistics of both batches together (they add)."""
        return GaussianStats(self.n + other.n, self.sum + other.sum,
                             self.sum_squares + other.sum_squares)


ArmStats = BinaryStats | GaussianStats


def merge_stats(a: ArmStats, b: ArmStats) -> ArmStats:
    """``a`` and ``b`` added; both must be of the same reward kind."""
    if isinstance(a, BinaryStats) and isinstance(b, BinaryStats):
        return a.merge(b)
    if isinstance(a, GaussianStats) and isinstance(b, GaussianStats):
        return a.merge(b)
    raise InvalidBanditInput("cannot merge binary and continuous statistics")


@dataclass(frozen=True, slots=True)
class Posterior:
    """The posterior of one arm's mean reward, as a location-scale family.

    ``kind`` is ``"beta"`` (parameters ``a``, ``b``) or ``"student_t"``
    (``df``, ``loc``, ``scale``). :meth:`sample` and :meth:`interval` read them.
    """

    kind: str
    a: float = 0.0
    b: float = 0.0
    df: float = 0.0
    loc: float = 0.0
    scale: float = 0.0

    @property
    def mean(self) -> float:
        """Posterior mean of the arm's mean reward."""
        if self.kind == "beta":
            return self.a / (self.a + self.b)
        return self.loc

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Equal-tailed credible interval of the mean at ``level``."""
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        if self.kind == "beta":
            lo, hi = sps.beta.ppf([lo_q, hi_q], self.a, self.b)
        else:
            lo, hi = sps.t.ppf([lo_q, hi_q], self.df, loc=self.loc, scale=self.scale)
        return float(lo), float(hi)

    def sample(self, rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        """``size`` independent draws of the arm's mean from the posterior."""
        if self.kind == "beta":
            return rng.beta(self.a, self.b, size)
        return self.loc + self.scale * rng.standard_t(self.df, size)


def posterior(stats: ArmStats, prior: NormalPrior | None = None) -> Posterior:
    """The posterior of an arm's mean given its statistics.

    Binary: Beta(1 + s, 1 + t − s). Continuous: the Student-t marginal of the
    Normal-Inverse-Gamma posterior,
    ``κₙ = κ₀ + n``, ``μₙ = (κ₀μ₀ + Σy)/κₙ``, ``αₙ = α₀ + n/2``,
    ``βₙ = β₀ + ½·(Σy² − n·ȳ²) + κ₀·n·(ȳ − μ₀)²/(2κₙ)``,
    mean ~ t(2αₙ, μₙ, √(βₙ/(αₙκₙ))).
    """
    if isinstance(stats, BinaryStats):
        return Posterior("beta", a=1.0 + stats.successes, b=1.0 + stats.trials - stats.successes)
    p = prior or NormalPrior()
    n = stats.n
    kappa = p.count + n
    mu = (p.count * p.mean + stats.sum) / kappa
    alpha = p.shape + n / 2.0
    if n > 0:
        ybar = stats.sum / n
        # Centered sum of squares, clipped at 0 against rounding.
        ss = max(stats.sum_squares - n * ybar * ybar, 0.0)
        beta = p.rate + 0.5 * ss + p.count * n * (ybar - p.mean) ** 2 / (2.0 * kappa)
    else:
        beta = p.rate
    return Posterior("student_t", df=2.0 * alpha, loc=mu, scale=math.sqrt(beta / (alpha * kappa)))


def empirical_mean(stats: ArmStats) -> float | None:
    """The arm's observed mean reward, ``None`` before its first reward."""
    if stats.n == 0:
        return None
    if isinstance(stats, BinaryStats):
        return stats.successes / stats.trials
    return stats.sum / stats.n
