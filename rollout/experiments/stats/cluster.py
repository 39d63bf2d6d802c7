"""Cluster-randomized comparisons: cluster-robust standard errors, the
intra-cluster correlation and the design effect.

When a whole cluster (a team, a geo) is assigned to one arm, its units share
whatever the cluster shares (a manager, the weather, each other), so their
outcomes are correlated and the units are not independent replications. A
unit-level test then treats ``N`` correlated units as ``N`` independent ones:
its standard error is too small by about the square root of the design effect
and its false-positive rate is far above alpha. The honest unit of
replication is the cluster.

The estimator per arm is the ratio of means over clusters,
``R_a = Σ_{i∈a} y_i / Σ_{i∈a} w_i`` (``w = 1`` for a mean or a proportion:
the arm's plain mean of units; ``w = x`` the denominator of a ratio
metric), and the effect is ``R_t − R_c``. Its variance is the cluster-robust
sandwich (Liang & Zeger 1986) of the linearized estimator: with residuals
``e_i = y_i − R_a w_i`` and influence ``u_i = e_i / Σ_a w`` signed by arm,

    V = c · Σ_g (Σ_{i∈g} u_i)²,   c = G/(G−1) · (N−1)/(N−K),  K = 2,

``G`` clusters and ``N`` units: the CR1 correction that Stata and statsmodels'
``cov_type="cluster"`` apply. For ``w = 1`` this is exactly the treatment
coefficient's standard error of the OLS regression ``y ~ treated`` with
errors clustered by cluster (checked against statsmodels). The interval and
p-value use Student's t with ``G − 1`` degrees of freedom (Cameron & Miller
2015, "A Practitioner's Guide to Cluster-Robust Inference", §VI): with few
clusters the variance estimate itself is noisy and the normal quantile
over-rejects; with hundreds of clusters the two agree.

The design effect reported is the unequal-size one (Eldridge, Ashby & Kerry
2006), ``DE = 1 + ((1 + CV²)·m̄ − 1)·ICC``, with ``m̄`` the mean cluster size
and ``CV`` the coefficient of variation of the sizes (population standard
deviation, so that ``(1 + CV²)·m̄ = Σm_g²/N``, the size-weighted mean size;
equal sizes give the textbook ``1 + (m̄ − 1)·ICC``). The ICC is the one-way
ANOVA estimator over clusters nested in arms, clipped at 0. Beside it,
``variance_ratio`` is the design effect the data actually show: the
cluster-robust variance over the naive unit-level one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

from rollout.experiments.stats.frequentist import (
    NAN,
    estimate_from,
    failed_estimate,
    ratio_effect,
    relative_effect,
    welch_ttest,
)
from rollout.experiments.stats.summary import EffectEstimate, MeanSummary, PairSummary

# Two clusters per arm are the least that leaves a between-cluster variance.
MIN_CLUSTERS_PER_ARM = 2
_PARAMETERS = 2  # intercept and treatment: K of the CR1 correction


@dataclass(frozen=True, slots=True)
class ClusteredEffect:
    """Treatment minus control with cluster-robust inference, and the
    unit-level figures it replaces.

    ``estimate``: the cluster-robust effect (CI and p-value from t with
    ``df = G − 1``; relative effect by the delta method with the arms'
    cluster-robust covariance). ``naive``: the unit-level test that ignores
    the clusters (Welch's t for a mean or proportion, the delta method for a
    ratio), kept to show what clustering changes. ``var_mean_control``,
    ``var_mean_treatment`` and ``covariance`` are the cluster-robust
    (co)variances of the two arms' estimators (a cluster seen in both arms
    makes them covary). ``clusters_*`` count the distinct clusters with a unit
    in each arm, ``mean_cluster_size`` and ``cluster_size_cv`` describe the
    (cluster, arm) cells, ``icc`` and ``design_effect`` are as in the module's
    docstring, ``variance_ratio`` is Var(cluster-robust)/Var(naive).

    On error ``estimate.error`` is set and what could not be computed is NaN.
    """

    estimate: EffectEstimate
    naive: EffectEstimate
    clusters_control: int
    clusters_treatment: int
    mean_cluster_size: float
    cluster_size_cv: float
    icc: float
    design_effect: float
    variance_ratio: float
    df: float
    var_mean_control: float
    var_mean_treatment: float
    covariance: float


def cluster_robust_effect(
    y: NDArray[np.float64],
    treated: NDArray[np.bool_],
    cluster: NDArray[np.int64],
    alpha: float = 0.05,
    denominator: NDArray[np.float64] | None = None,
) -> ClusteredEffect:
    """Cluster-robust ``R_t − R_c`` from per-unit values (see the module's
    docstring for the estimator, its CR1 variance and the t reference).

    ``treated`` marks the treatment arm's units (the others are the control),
    ``cluster`` is each unit's cluster code (any non-negative integers; a
    cluster may hold units of both arms, as a ramp can make it),
    ``denominator`` each unit's denominator for a ratio metric (None: a mean).

    Errors (on ``estimate``): ``invalid_alpha``, ``invalid_input`` (arrays of
    different lengths, a negative code, a non-finite value), ``empty_arm``,
    ``too_few_clusters`` (an arm with fewer than
    :data:`MIN_CLUSTERS_PER_ARM` clusters), ``zero_denominator``,
    ``zero_variance``, ``non_finite``; ``zero_control_mean`` is partial.
    """
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    cluster = np.asarray(cluster, dtype=np.int64)
    w = (np.ones_like(y) if denominator is None
         else np.asarray(denominator, dtype=np.float64))
    n = y.size
    if not 0.0 < alpha < 1.0:
        return _failed("invalid_alpha")
    if treated.size != n or cluster.size != n or w.size != n or (
            n and (int(cluster.min()) < 0 or not (np.isfinite(y).all() and np.isfinite(w).all()))):
        return _failed("invalid_input")
    n_t = int(np.count_nonzero(treated))
    n_c = n - n_t
    if n_c == 0 or n_t == 0:
        return _failed("empty_arm")
    naive = _naive(y, w, treated, denominator is not None, alpha)
    # (cluster, arm) cells: the groups of the ANOVA, and each arm's clusters
    cells, cell_of = np.unique(cluster * 2 + treated, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    cell_treated = (cells % 2).astype(bool)
    clusters_t = int(np.count_nonzero(cell_treated))
    clusters_c = cells.size - clusters_t
    sizes = np.bincount(cell_of).astype(np.float64)
    mean_size = float(sizes.mean())
    size_cv = float(sizes.std() / mean_size)
    if min(clusters_c, clusters_t) < MIN_CLUSTERS_PER_ARM:
        return _failed("too_few_clusters", naive, clusters_c, clusters_t, mean_size, size_cv)
    sum_w_c, sum_w_t = float(w[~treated].sum()), float(w[treated].sum())
    if sum_w_c == 0.0 or sum_w_t == 0.0:
        return _failed("zero_denominator", naive, clusters_c, clusters_t, mean_size, size_cv)
    r_c, r_t = float(y[~treated].sum()) / sum_w_c, float(y[treated].sum()) / sum_w_t
    residual = y - np.where(treated, r_t, r_c) * w
    # Influence of each unit on each arm's estimator, summed per cluster.
    groups = np.unique(cluster, return_inverse=True)[1].reshape(-1)
    n_groups = int(groups.max()) + 1
    u_c = np.bincount(groups, np.where(treated, 0.0, residual / sum_w_c), n_groups)
    u_t = np.bincount(groups, np.where(treated, residual / sum_w_t, 0.0), n_groups)
    correction = n_groups / (n_groups - 1) * (n - 1) / (n - _PARAMETERS)
    var_c = correction * math.fsum(u_c * u_c)
    var_t = correction * math.fsum(u_t * u_t)
    cov = correction * math.fsum(u_c * u_t)
    variance = var_c + var_t - 2.0 * cov
    icc = _anova_icc(residual, cell_of, cell_treated, sizes)
    design = 1.0 + (float((sizes * sizes).sum()) / n - 1.0) * icc
    naive_var = naive.std_error ** 2 if naive.error in (None, "zero_control_mean") else NAN
    ratio = variance / naive_var if naive_var > 0 else NAN
    df = float(n_groups - 1)

    def described(estimate: EffectEstimate) -> ClusteredEffect:
        return ClusteredEffect(estimate, naive, clusters_c, clusters_t, mean_size, size_cv, icc,
                               design, ratio, df, var_c, var_t, cov)

    if not variance > 0.0:
        return described(failed_estimate("zero_variance"))
    se = math.sqrt(variance)
    diff = r_t - r_c
    statistic = diff / se
    half = float(special.stdtrit(df, 1.0 - alpha / 2.0)) * se
    p = float(2.0 * special.stdtr(df, -abs(statistic)))
    relative = relative_effect(r_c, r_t, var_c, var_t, alpha, covariance=cov)
    return described(estimate_from(r_c, r_t, (se, diff - half, diff + half, statistic, p),
                                   relative))


def _anova_icc(residual: NDArray[np.float64], cell_of: NDArray[np.int64],
               cell_treated: NDArray[np.bool_], sizes: NDArray[np.float64]) -> float:
    """One-way ANOVA ICC over clusters nested in arms, clipped at 0 (NaN when
    no between- or within-cluster degrees of freedom are left).

    ``(MSB − MSW) / (MSB + (m₀ − 1)·MSW)`` on the residuals from each arm's
    estimate, with ``G − K`` between and ``N − G`` within degrees of freedom
    and ``m₀ = (N − Σ_a Σ_g m_g²/N_a) / (G − K)`` the ANOVA's effective
    cluster size for unequal sizes (Donner 1986)."""
    n, groups = residual.size, sizes.size
    df_between, df_within = groups - _PARAMETERS, n - groups
    if df_between <= 0 or df_within <= 0:
        return NAN
    cell_sum = np.bincount(cell_of, residual, groups)
    cell_mean = cell_sum / sizes
    # each arm's residuals sum to zero, so their grand mean per arm is 0
    within = float(np.square(residual - cell_mean[cell_of]).sum())
    between = float((sizes * cell_mean * cell_mean).sum())
    ms_between, ms_within = between / df_between, within / df_within
    per_arm = sum(float(np.square(sizes[cell_treated == arm]).sum())
                  / float(sizes[cell_treated == arm].sum()) for arm in (False, True))
    m0 = (n - per_arm) / df_between
    denominator = ms_between + (m0 - 1.0) * ms_within
    if not denominator > 0.0:
        return NAN
    return max(0.0, (ms_between - ms_within) / denominator)


def _naive(y: NDArray[np.float64], w: NDArray[np.float64], treated: NDArray[np.bool_],
           ratio: bool, alpha: float) -> EffectEstimate:
    """The unit-level test that ignores the clusters."""
    if ratio:
        def pair(mask: NDArray[np.bool_]) -> PairSummary:
            a, b = y[mask], w[mask]
            return PairSummary(int(mask.sum()), float(a.sum()), float(a @ a), float(b.sum()),
                               float(b @ b), float(a @ b))
        return ratio_effect(pair(~treated), pair(treated), alpha)

    def summary(mask: NDArray[np.bool_]) -> MeanSummary:
        a = y[mask]
        return MeanSummary(int(mask.sum()), float(a.sum()), float(a @ a))
    return welch_ttest(summary(~treated), summary(treated), alpha)


def _failed(error: str, naive: EffectEstimate | None = None, clusters_control: int = 0,
            clusters_treatment: int = 0, mean_cluster_size: float = NAN,
            cluster_size_cv: float = NAN) -> ClusteredEffect:
    return ClusteredEffect(failed_estimate(error), naive or failed_estimate(error),
                           clusters_control, clusters_treatment, mean_cluster_size,
                           cluster_size_cv, NAN, NAN, NAN, NAN, NAN, NAN, NAN)
