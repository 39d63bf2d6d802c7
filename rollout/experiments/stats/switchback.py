"""Switchback experiments: time windows (crossed with regions) are the units.

In a switchback experiment every request of a window (and region) is on the
same arm, so requests of one window share the window's shocks (demand, weather,
an outage) and are not independent observations: a per-request test takes the
requests of one window for independent evidence and overstates its precision
(its false-positive rate grows with the requests per window). The units of
the design are the windows, so the analysis is of one aggregate per window
cell (Bojinov, Simchi-Levi & Zhao 2023, "Design and analysis of switchback
experiments", Management Science 69(7)).

**Cells.** A cell is a (window, region); its outcome is the mean per request,
the outcome total over the requests counted, both after the burn-in.

**Burn-in.** When a cell's arm differs from the previous window's arm in the
same region, the previous arm may keep acting for a while (queued work, prices
that take time to propagate, caches): carry-over. The rows (requests and
outcome events) in the first ``burn_in_s`` seconds of such a cell are dropped;
a cell whose arm continues the previous window's keeps them all, since there is
nothing to carry over.

**Regression.** OLS of the cell means on the treatment indicator with region
fixed effects (one dummy per region), i.e. the within-region difference of
cell means, with the HC2 heteroskedasticity-robust standard error (MacKinnon &
White 1985; exact under homoskedasticity for a difference in means and
close to Welch's otherwise) and a t reference on ``cells − regions − 1``
degrees of freedom. Arms are assigned to cells independently, so the error
terms' correlation across windows (autocorrelated demand) does not bias the
variance of the difference: the indicator is uncorrelated with time.

**Randomization inference.** Under the sharp null (no effect on any cell) the
cell outcomes are fixed and only the assignment is random. The arms of the
cells are permuted within each region (the design's assignment conditioned on
each region's count of cells per arm), ``draws`` times with a seeded
generator, and the p-value is ``(1 + #{|β*| ≥ |β|}) / (1 + draws)`` with β the
fixed-effects coefficient: exact at any number of cells, whatever the
distribution of the outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats as scipy_stats

MICROS = 1_000_000
RANDOMIZATION_DRAWS = 2000
# Two cells per arm: a mean and a spread of cell means in each.
MIN_CELLS_PER_ARM = 2

ArmOfCells = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.int64]]
"""``(windows, region codes) -> arm`` by the design (the hash), for cells
without decisions to tell it."""


@dataclass(frozen=True)
class SwitchbackCells:
    """Per (window, region) cell, after the burn-in: the cell's arm, the outcome
    total and the requests counted. ``regions`` labels the region codes (one
    unnamed region when windows are not crossed with regions).

    ``burn_in_requests`` and ``burn_in_events`` count the rows the burn-in
    dropped; ``mixed_cells`` the cells left out because their decisions were in
    more than one arm (a config changed mid-window: no arm to credit them to)."""

    window: NDArray[np.int64]
    region: NDArray[np.int64]
    arm: NDArray[np.int64]
    total: NDArray[np.float64]
    count: NDArray[np.int64]
    regions: tuple[str, ...] = ("",)
    burn_in_requests: int = 0
    burn_in_events: int = 0
    mixed_cells: int = 0
    # the design the cells were cut by (region_key: the context key of the regions)
    window_s: int = 0
    burn_in_s: int = 0
    region_key: str | None = None


def window_of(at_us: NDArray[np.int64], window_s: int) -> NDArray[np.int64]:
    """The window index of each time (microseconds since the epoch), floor division."""
    return np.floor_divide(at_us, window_s * MICROS)


def switchback_cells(
    window_s: int,
    burn_in_s: int,
    decision_at_us: NDArray[np.int64],
    decision_region: NDArray[np.int64],
    decision_arm: NDArray[np.int64],
    event_at_us: NDArray[np.int64],
    event_region: NDArray[np.int64],
    event_value: NDArray[np.float64],
    regions: tuple[str, ...] = ("",),
    arm_of: ArmOfCells | None = None,
    region_key: str | None = None,
) -> SwitchbackCells:
    """Cells from rows: decisions (requests: time, region code, arm) and outcome
    events (time, region code, value), each placed in the window of its own
    time; a cell's arm is its decisions'. Events in a cell without decisions
    have no arm and are left out.

    The previous window's arm, which decides whether a cell starts with a
    switch, is its decisions' when it had any, else ``arm_of`` (the design's
    hash) when given, else unknown and taken as a switch (the burn-in then
    drops rows it might have kept, never keeps rows it should drop).
    """
    n_regions = max(len(regions), 1)
    d_window = window_of(decision_at_us, window_s)
    d_cell = d_window * n_regions + decision_region
    cells, d_index = np.unique(d_cell, return_inverse=True)
    d_index = d_index.reshape(-1)
    low = np.full(cells.size, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full(cells.size, -1, dtype=np.int64)
    np.minimum.at(low, d_index, decision_arm)
    np.maximum.at(high, d_index, decision_arm)
    mixed = low != high
    arm = low
    window = np.floor_divide(cells, n_regions)
    region = cells - window * n_regions

    # The previous window's arm in the same region: from the decisions, else the design.
    previous_cell = (window - 1) * n_regions + region
    position = np.searchsorted(cells, previous_cell)
    position_ok = position < cells.size
    found = np.zeros(cells.size, dtype=bool)
    found[position_ok] = (cells[position[position_ok]] == previous_cell[position_ok]) & ~mixed[
        position[position_ok]]
    previous_arm = np.full(cells.size, -1, dtype=np.int64)
    previous_arm[found] = arm[position[found]]
    if arm_of is not None and (~found).any():
        previous_arm[~found] = arm_of(window[~found] - 1, region[~found])
    switched = previous_arm != arm

    start_us = window * window_s * MICROS
    burn_us = burn_in_s * MICROS
    d_burn = switched[d_index] & (decision_at_us - start_us[d_index] < burn_us)
    count = np.bincount(d_index[~d_burn], minlength=cells.size).astype(np.int64)

    e_cell = window_of(event_at_us, window_s) * n_regions + event_region
    e_position = np.searchsorted(cells, e_cell)
    e_ok = e_position < cells.size
    e_ok[e_ok] = cells[e_position[e_ok]] == e_cell[e_ok]
    e_index = np.where(e_ok, e_position, 0)
    e_burn = e_ok & switched[e_index] & (event_at_us - start_us[e_index] < burn_us)
    counted = e_ok & ~e_burn
    total = np.bincount(e_index[counted], weights=event_value[counted],
                        minlength=cells.size).astype(np.float64)

    keep = ~mixed
    return SwitchbackCells(window[keep], region[keep], arm[keep], total[keep], count[keep],
                           tuple(regions) or ("",), int(d_burn.sum()), int(e_burn.sum()),
                           int(mixed.sum()), window_s, burn_in_s, region_key)


@dataclass(frozen=True)
class SwitchbackEstimate:
    """Treatment minus control over window cells.

    ``abs_effect`` is the region-fixed-effects OLS coefficient (the difference
    of cell means between the arms, within regions), ``std_error`` its HC2
    standard error, ``ci_low``/``ci_high`` and ``p_value`` from a t with
    ``df`` degrees of freedom; ``ri_p_value`` the randomization-inference
    p-value over ``ri_draws`` within-region permutations. ``mean_control`` and
    ``mean_treatment`` are the plain means of the arms' cell means;
    ``cells_*`` the cells with requests in each arm; ``mean_control_se`` the
    standard error of ``mean_control`` (the spread of the control cells'
    means), which a relative interval needs. ``error`` names why there is no
    estimate (the numbers are NaN then)."""

    abs_effect: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float
    ri_p_value: float
    ri_draws: int
    df: int
    mean_control: float
    mean_treatment: float
    cells_control: int
    cells_treatment: int
    error: str | None = None
    mean_control_se: float = math.nan


def switchback_effect(cells: SwitchbackCells, treatment_arm: int, control_arm: int = 0,
                      alpha: float = 0.05, draws: int = RANDOMIZATION_DRAWS, seed: int = 0
                      ) -> SwitchbackEstimate:
    """The window-level effect of ``treatment_arm`` against ``control_arm`` over
    the cells with requests in either (see the module's text for the methods)."""
    pair = ((cells.arm == control_arm) | (cells.arm == treatment_arm)) & (cells.count > 0)
    y = cells.total[pair] / cells.count[pair]
    treated = (cells.arm[pair] == treatment_arm).astype(np.float64)
    region = cells.region[pair]
    n_treated, n = int(treated.sum()), int(y.size)
    n_control = n - n_treated
    mean_c = float(y[treated == 0].mean()) if n_control else math.nan
    mean_t = float(y[treated == 1].mean()) if n_treated else math.nan

    def failed(error: str) -> SwitchbackEstimate:
        nan = math.nan
        return SwitchbackEstimate(nan, nan, nan, nan, nan, nan, 0, 0, mean_c, mean_t,
                                  n_control, n_treated, error)

    if not 0.0 < alpha < 1.0:
        return failed("invalid_alpha")
    if not np.isfinite(y).all():
        return failed("non_finite")
    if min(n_control, n_treated) < MIN_CELLS_PER_ARM:
        return failed("too_few_windows")
    codes, region_index = np.unique(region, return_inverse=True)
    region_index = region_index.reshape(-1)
    n_regions = int(codes.size)
    sizes = np.bincount(region_index, minlength=n_regions).astype(np.float64)

    def within(values: NDArray[np.float64]) -> NDArray[np.float64]:
        means = np.bincount(region_index, weights=values, minlength=n_regions) / sizes
        out: NDArray[np.float64] = values - means[region_index]
        return out

    d_tilde, y_tilde = within(treated), within(y)
    sxx = float(d_tilde @ d_tilde)
    df = n - n_regions - 1
    if sxx <= 1e-12 or df < 1:  # no region holds both arms, or nothing left to estimate
        return failed("too_few_windows")
    beta = float(d_tilde @ y_tilde) / sxx
    residual = y_tilde - beta * d_tilde
    # HC2: each squared residual scaled by 1/(1 − h); h of the FE regression is
    # 1/n_region + d̃²/Σd̃². A cell alone in its region has h = 1 and residual 0.
    leverage = 1.0 / sizes[region_index] + d_tilde * d_tilde / sxx
    room = 1.0 - leverage
    scaled = np.where(room > 1e-12, residual * residual / np.where(room > 1e-12, room, 1.0),
                      0.0)
    variance = float((d_tilde * d_tilde) @ scaled) / (sxx * sxx)
    if not variance > 0.0:
        return failed("zero_variance")
    se = math.sqrt(variance)
    t = beta / se
    quantile = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df))
    p = float(2.0 * scipy_stats.t.sf(abs(t), df))
    ri_p = randomization_p_value(treated, y_tilde, region_index, draws, seed)
    control_se = float(y[treated == 0].std(ddof=1)) / math.sqrt(n_control)
    return SwitchbackEstimate(beta, se, beta - quantile * se, beta + quantile * se, p, ri_p,
                              draws, df, mean_c, mean_t, n_control, n_treated,
                              mean_control_se=control_se)


def randomization_p_value(treated: NDArray[np.float64], y_tilde: NDArray[np.float64],
                          region_index: NDArray[np.int64], draws: int, seed: int) -> float:
    """The two-sided randomization-inference p-value of the fixed-effects
    coefficient: the treated labels permuted within each region ``draws`` times.

    Within-region permutations keep each region's mean of the indicator, so
    the coefficient of a permutation is ``d*·ỹ / Σd̃²`` with a denominator
    common to all: comparing ``|d*·ỹ|`` with ``|d·ỹ|`` compares coefficients.
    """
    if draws < 1:
        return math.nan
    rng = np.random.default_rng(seed)
    permuted = np.empty((draws, treated.size), dtype=np.float64)
    for code in np.unique(region_index):
        members = np.flatnonzero(region_index == code)
        permuted[:, members] = rng.permuted(np.tile(treated[members], (draws, 1)), axis=1)
    observed = abs(float(treated @ y_tilde))
    statistics = np.abs(permuted @ y_tilde)
    # a relative tolerance, so that permutations tied with the observed
    # assignment count as extreme whatever the rounding of the sums
    extreme = int(np.count_nonzero(statistics >= observed * (1.0 - 1e-9) - 1e-12))
    return (1.0 + extreme) / (1.0 + draws)
