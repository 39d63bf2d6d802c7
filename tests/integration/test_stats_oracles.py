"""``rollout/stats`` cross-checked against GrowthBook's ``gbstats`` 0.8.0.

gbstats pins numpy<2 and pandas<2, so it never enters Rampart's environment:
a module fixture builds ``.rampart/oracle-venv`` from
``tests/oracles/requirements.txt`` (again only when the file's hash or the
Python minor version changed) and runs ``tests/oracles/gbstats_oracle.py``
there once, on every case below, through stdin/stdout JSON. If the registry
cannot be reached the fixture *fails*: a skipped cross-check proves nothing.

What is compared, and why the rest is not, is written down in the oracle
script's docstring. Where the formulas are the same, values must agree to
``REL_TOL`` (1e-9 relative). Two absolute floors are added, both far below
any statistical meaning:

* ``P_ABS_TOL`` on p-values: gbstats computes ``2·(1 − F_t(|t|))``, which
  cancels to an absolute error of a few 1e-16 (and to exactly 0 below about
  1e-16) where Rampart evaluates the tail directly;
* ``ROUNDING`` times the operands' magnitude on values that are differences
  of nearly equal numbers (an effect close to zero, a CI end close to zero):
  the two sides order the same arithmetic differently (``t/c − 1`` against
  ``(t − c)/c``; CUPED means adjusted around ``x̄`` or not), so such values
  agree to rounding of the operands, not of the result.

A CI that gbstats builds with a t quantile where Rampart uses the normal one
is compared as ``estimate ± z·se`` with gbstats' own ``se``.

CUPED is checked against statsmodels instead: gbstats' regression-adjusted
statistic has one slope for both arms, Rampart's has one per arm (Lin 2013),
so each arm is fitted with ``OLS(y ~ 1 + (x − x̄))`` and the documented
variance is rebuilt from the fits, to ``CUPED_REL`` (1e-10 relative).
Post-stratification (gbstats has none) is checked the same way: the effect
and variance are the treatment coefficient and HC2 variance of statsmodels'
OLS on the treatment, centred stratum dummies and their interactions.

The largest differences seen are written to ``.rampart/reports/stats_oracles.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import special, stats
from statsmodels.regression.linear_model import OLS

from rollout.experiments.stats.bayes import normal_means
from rollout.experiments.stats.cuped import cuped_effect
from rollout.experiments.stats.frequentist import ratio_effect, two_proportion_ztest, welch_ttest
from rollout.experiments.stats.sequential import msprt
from rollout.experiments.stats.srm import combined_srm_test, srm_test
from rollout.experiments.stats.stratified import Stratum, post_stratified_effect
from rollout.experiments.stats.summary import EffectEstimate, MeanSummary, PairSummary

ROOT = Path(__file__).resolve().parents[2]
ORACLES = ROOT / "tests" / "oracles"
REQUIREMENTS = ORACLES / "requirements.txt"
ORACLE_SCRIPT = ORACLES / "gbstats_oracle.py"
VENV = ROOT / ".rampart" / "oracle-venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements-stamp"
LOCK = ROOT / ".rampart" / "oracle-venv.lock"
REPORT = ROOT / ".rampart" / "reports" / "stats_oracles.json"

REL_TOL = 1e-9
CUPED_REL = 1e-10
P_ABS_TOL = 1e-14
ROUNDING = 1e-12

Json = dict[str, Any]


# --------------------------------------------------------------------------- environment


def _run_or_fail(command: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: no answer within {timeout:.0f} s", pytrace=False)
    except OSError as exc:
        pytest.fail(f"{what}: {exc}", pytrace=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-25:])
        pytest.fail(f"{what} (exit {done.returncode}):\n{tail}", pytrace=False)


def _wanted_stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{digest} python{sys.version_info.major}.{sys.version_info.minor}"


def ensure_oracle_venv() -> float | None:
    """Build ``.rampart/oracle-venv`` unless its stamp matches; seconds taken, or None.

    The venv is made from this interpreter (the project's ``python3``), since
    the pinned wheels are for its minor version. A lock keeps two test runs
    in the same tree from building it at once.
    """
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _wanted_stamp()
        if (
            VENV_PYTHON.exists()
            and STAMP.exists()
            and STAMP.read_text().splitlines()[:1] == [wanted]
        ):
            return None
        shutil.rmtree(VENV, ignore_errors=True)
        start = time.monotonic()
        _run_or_fail(
            [sys.executable, "-m", "venv", str(VENV)],
            "creating the oracle virtualenv .rampart/oracle-venv",
            timeout=60,
        )
        _run_or_fail(
            [
                str(VENV_PYTHON),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--timeout",
                "30",
                "--retries",
                "2",
                "-r",
                str(REQUIREMENTS),
            ],
            "installing tests/oracles/requirements.txt into .rampart/oracle-venv failed; "
            "the oracle environment is needed for this test (is the package registry "
            "reachable?)",
            timeout=420,
        )
        elapsed = time.monotonic() - start
        STAMP.write_text(f"{wanted}\ncreated in {elapsed:.1f} s\n")
        return elapsed


# --------------------------------------------------------------------------- data


def _mean(y: NDArray[np.float64]) -> MeanSummary:
    return MeanSummary(int(y.size), float(y.sum()), float(np.dot(y, y)))


def _pair(y: NDArray[np.float64], x: NDArray[np.float64]) -> PairSummary:
    return PairSummary(
        int(y.size),
        float(y.sum()),
        float(np.dot(y, y)),
        float(x.sum()),
        float(np.dot(x, x)),
        float(np.dot(x, y)),
    )


def _binary(n: int, successes: int) -> MeanSummary:
    return MeanSummary(n, float(successes), float(successes))


def _mean_spec(s: MeanSummary) -> Json:
    return {"kind": "mean", "n": s.n, "sum": s.sum, "sum_squares": s.sum_squares}


def _proportion_spec(s: MeanSummary) -> Json:
    return {"kind": "proportion", "n": s.n, "sum": s.sum}


def _ratio_spec(p: PairSummary) -> Json:
    return {
        "kind": "ratio",
        "n": p.n,
        "numerator": _mean_spec(p.y()),
        "denominator": _mean_spec(p.x()),
        "sum_products": p.sum_xy,
    }


def _mean_cases() -> dict[str, tuple[MeanSummary, MeanSummary]]:
    rng = np.random.default_rng(20_261_101)
    return {
        # A dozen units, skewed (revenue-like), unequal arm sizes.
        "small": (_mean(rng.lognormal(1.0, 0.8, 12)), _mean(rng.lognormal(1.2, 0.7, 9))),
        "large": (_mean(rng.normal(10.0, 4.0, 200_000)), _mean(rng.normal(10.05, 4.0, 200_000))),
        # 95/5 split with unequal variances: Welch's df far from n − 2.
        "unbalanced": (_mean(rng.gamma(2.0, 1.5, 95_000)), _mean(rng.gamma(1.2, 2.6, 5_000))),
        "negative_control": (
            _mean(rng.normal(-2.0, 1.0, 3_000)),
            _mean(rng.normal(-1.9, 1.3, 2_500)),
        ),
    }


def _binary_cases() -> dict[str, tuple[MeanSummary, MeanSummary]]:
    rng = np.random.default_rng(20_261_102)
    return {
        "small": (_binary(40, 18), _binary(45, 27)),
        # Practically no difference: the mSPRT's 1/Λ exceeds 1 and is capped.
        "null": (_binary(5_000, 600), _binary(5_000, 601)),
        "large": (
            _binary(1_000_000, int(rng.binomial(1_000_000, 0.031))),
            _binary(1_000_000, int(rng.binomial(1_000_000, 0.0325))),
        ),
        "unbalanced": (
            _binary(190_000, int(rng.binomial(190_000, 0.12))),
            _binary(10_000, int(rng.binomial(10_000, 0.126))),
        ),
    }


def _ratio_cases() -> dict[str, tuple[PairSummary, PairSummary]]:
    rng = np.random.default_rng(20_261_103)

    def clicks_per_view(n: int, ctr: float) -> PairSummary:
        views = (rng.poisson(6.0, n) + 1).astype(np.float64)
        clicks = rng.binomial(views.astype(np.int64), ctr).astype(np.float64)
        return _pair(clicks, views)

    def revenue_per_session(n: int, scale: float) -> PairSummary:
        sessions = rng.geometric(0.3, n).astype(np.float64)
        revenue = sessions * rng.gamma(2.0, scale, n)
        return _pair(revenue, sessions)

    return {
        "small": (clicks_per_view(50, 0.10), clicks_per_view(60, 0.12)),
        "unbalanced": (revenue_per_session(50_000, 2.0), revenue_per_session(8_000, 2.06)),
        "large": (clicks_per_view(300_000, 0.050), clicks_per_view(300_000, 0.0505)),
    }


def _correlated(
    rng: np.random.Generator, n: int, rho: float, effect: float, pre_mean: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pre-period ``x`` and in-experiment ``y``, correlation ``rho``, ``x̄`` = ``pre_mean``."""
    x = rng.gamma(4.0, 2.5, n)
    noise = rng.normal(0.0, 1.0, n) * x.std() * math.sqrt(1.0 - rho * rho) / rho
    y = x + noise + effect
    return y, x - x.mean() + pre_mean


Arrays = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
               NDArray[np.float64]]


def _cuped_cases() -> dict[str, Arrays]:
    """Continuous CUPED cases ``(y_c, x_c, y_t, x_t)``: unequal arms, different slopes."""
    rng = np.random.default_rng(20_261_104)

    def arm(n: int, slope: float, noise: float, shift: float, pre_mean: float = 10.0
            ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        x = rng.gamma(4.0, 2.5, n) - 10.0 + pre_mean
        return 3.0 + shift + slope * (x - 10.0) + rng.normal(0.0, noise, n), x

    return {
        "small": (*arm(200, 0.8, 2.0, 0.0), *arm(150, 0.5, 2.5, 0.4)),
        "large": (*arm(80_000, 0.7, 3.0, 0.0), *arm(80_000, 0.9, 3.0, 0.05)),
        "unbalanced_90_10": (*arm(60_000, 1.0, 2.0, 0.0), *arm(6_000, 0.25, 2.0, 0.1)),
        "opposite_slopes": (*arm(9_000, 1.2, 1.0, 0.0), *arm(1_000, -0.6, 1.5, 0.2)),
        # The arms' pre-period means differ (by chance and a bit more).
        "imbalanced_pre": (*arm(3_000, 0.8, 2.0, 0.0), *arm(2_000, 0.8, 2.0, 0.3, 10.4)),
    }


def _binary_cuped_cases() -> dict[str, Arrays]:
    """0/1 metric and 0/1 pre-period covariate, ``(y_c, x_c, y_t, x_t)``."""
    rng = np.random.default_rng(20_261_105)

    def arm(n: int, pre_rate: float, p_if_pre: float, p_if_not: float
            ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        x = np.zeros(n)
        x[: round(n * pre_rate)] = 1.0
        rng.shuffle(x)
        y = (rng.random(n) < np.where(x == 1.0, p_if_pre, p_if_not)).astype(np.float64)
        return y, x

    return {
        "balanced": (*arm(20_000, 0.3, 0.50, 0.10), *arm(20_000, 0.3, 0.52, 0.11)),
        "unbalanced": (*arm(40_000, 0.25, 0.40, 0.05), *arm(8_000, 0.25, 0.30, 0.08)),
    }


SRM_CASES: dict[str, tuple[list[int], list[float]]] = {
    "balanced": ([50_120, 49_880], [1.0, 1.0]),
    "split_90_10_mismatch": ([90_500, 9_500], [9000.0, 1000.0]),
    "three_arms": ([33_010, 33_500, 33_490], [1.0, 1.0, 1.0]),
    "uneven_weights": ([500_000, 252_000, 248_500], [0.5, 0.25, 0.25]),
    "tiny": ([3, 7], [50.0, 50.0]),
    "extreme": ([10_000, 11_500], [1.0, 1.0]),
}

MSPRT_CASES: dict[str, tuple[str, str, str, float, float]] = {
    # name: (family, data case, difference type, tuning parameter, alpha)
    "means_large_abs": ("means", "large", "absolute", 5_000.0, 0.05),
    "means_small_abs": ("means", "small", "absolute", 5_000.0, 0.05),
    "means_unbalanced_rel": ("means", "unbalanced", "relative", 20_000.0, 0.10),
    "binary_large_rel": ("binary", "large", "relative", 5_000.0, 0.05),
    "binary_large_abs": ("binary", "large", "absolute", 200_000.0, 0.01),
    "binary_null_abs": ("binary", "null", "absolute", 5_000.0, 0.05),
}


@dataclass(frozen=True)
class Cases:
    means: dict[str, tuple[MeanSummary, MeanSummary]]
    binary: dict[str, tuple[MeanSummary, MeanSummary]]
    ratio: dict[str, tuple[PairSummary, PairSummary]]
    cuped: dict[str, Arrays]
    cuped_binary: dict[str, Arrays]


CASES = Cases(
    means=_mean_cases(),
    binary=_binary_cases(),
    ratio=_ratio_cases(),
    cuped=_cuped_cases(),
    cuped_binary=_binary_cuped_cases(),
)
ALPHA = 0.05


def _ttest(
    case_id: str, control: Json, treatment: Json, difference: str, alpha: float = ALPHA
) -> Json:
    return {
        "id": case_id,
        "method": "ttest",
        "control": control,
        "treatment": treatment,
        "alpha": alpha,
        "difference_type": difference,
    }


def _oracle_cases() -> list[Json]:
    out: list[Json] = []
    for name, (users, weights) in SRM_CASES.items():
        out.append({"id": f"srm/{name}", "method": "srm", "users": users, "weights": weights})
    out.append(
        {
            "id": "srm/zero_weight_empty_arm",
            "method": "srm",
            "users": [5_300, 4_700, 0],
            "weights": [0.5, 0.5, 0.0],
        }
    )
    for difference in ("absolute", "relative"):
        for name, (c, t) in CASES.means.items():
            out.append(
                _ttest(f"means/{name}/{difference}", _mean_spec(c), _mean_spec(t), difference)
            )
        for name, (c, t) in CASES.binary.items():
            out.append(
                _ttest(
                    f"binary/{name}/{difference}",
                    _proportion_spec(c),
                    _proportion_spec(t),
                    difference,
                )
            )
        for name, (pc, pt) in CASES.ratio.items():
            out.append(
                _ttest(f"ratio/{name}/{difference}", _ratio_spec(pc), _ratio_spec(pt), difference)
            )
    for name, (family, data, difference, tuning, alpha) in MSPRT_CASES.items():
        c, t = (CASES.means if family == "means" else CASES.binary)[data]
        spec = _mean_spec if family == "means" else _proportion_spec
        out.append(
            {
                "id": f"msprt/{name}",
                "method": "sequential",
                "control": spec(c),
                "treatment": spec(t),
                "alpha": alpha,
                "difference_type": difference,
                "tuning_parameter": tuning,
            }
        )
    for family in ("means", "binary"):
        for name, (c, t) in (CASES.means if family == "means" else CASES.binary).items():
            for credible in (0.95, 0.9):
                # 0/1 data goes in as a mean statistic (ddof 1), as normal_means reads it.
                out.append(
                    {
                        "id": f"bayes/{family}/{name}/{credible}",
                        "method": "bayesian",
                        "control": _mean_spec(c),
                        "treatment": _mean_spec(t),
                        "alpha": 1.0 - credible,
                        "difference_type": "absolute",
                        "prior": {"proper": False},
                    }
                )
    return out


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Difference:
    case: str
    quantity: str
    rampart: float
    gbstats: float

    @property
    def absolute(self) -> float:
        return abs(self.rampart - self.gbstats)

    @property
    def relative(self) -> float:
        return self.absolute / abs(self.gbstats) if self.gbstats != 0.0 else self.absolute


RECORDS: list[Difference] = []


def agree(
    case: str,
    quantity: str,
    ours: float,
    theirs: float,
    *,
    rel: float = REL_TOL,
    abs_tol: float = 0.0,
) -> None:
    """Assert ``|ours − theirs| ≤ rel·|theirs| + abs_tol`` and record the difference."""
    record = Difference(case, quantity, float(ours), float(theirs))
    RECORDS.append(record)
    assert math.isfinite(ours) and math.isfinite(theirs), record
    assert record.absolute <= rel * abs(theirs) + abs_tol, (
        f"{case}: {quantity} Rampart {ours!r} vs gbstats {theirs!r} "
        f"(relative difference {record.relative:.3g})"
    )


def _z(alpha: float) -> float:
    return float(special.ndtri(1.0 - alpha / 2.0))


@pytest.fixture(scope="module")
def oracle() -> Iterator[dict[str, Json]]:
    """gbstats' answers for every case, keyed by case id."""
    build_seconds = ensure_oracle_venv()
    cases = _oracle_cases()
    try:
        done = subprocess.run(
            [str(VENV_PYTHON), "-I", str(ORACLE_SCRIPT)],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the gbstats oracle did not answer within 60 s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"the gbstats oracle failed (exit {done.returncode}):\n{done.stderr}", pytrace=False
        )
    results = {r["id"]: r for r in json.loads(done.stdout)}
    assert set(results) == {c["id"] for c in cases}
    RECORDS.clear()
    yield results
    worst: dict[str, Json] = {}
    for r in RECORDS:
        key = f"{r.case.split('/')[0]}: {r.quantity}"
        if key not in worst or r.relative > worst[key]["relative"]:
            worst[key] = {"relative": r.relative, "absolute": r.absolute, "case": r.case}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "oracle_venv_build_seconds": build_seconds,
                "comparisons": len(RECORDS),
                "max_relative_difference": max((r.relative for r in RECORDS), default=0.0),
                "worst_by_quantity": dict(sorted(worst.items())),
            },
            indent=2,
        )
        + "\n"
    )


def _check_effect(
    case: str,
    ours: EffectEstimate,
    absolute: Json,
    relative: Json,
    alpha: float,
    *,
    t_reference: bool,
    compare_test: bool,
    compare_statistic: bool,
) -> None:
    """Compare an ``EffectEstimate`` with gbstats' absolute and relative t-test results.

    ``t_reference``: Rampart's absolute CI and p-value use Welch's t as gbstats
    does (else its CI is checked as ``± z·se`` with gbstats' se).
    ``compare_test``: the p-value is the same test. ``compare_statistic``: so is
    the statistic (effect over its unpooled se).
    """
    assert ours.error is None and absolute["error"] is None and relative["error"] is None
    scale = max(abs(ours.mean_control), abs(ours.mean_treatment))
    agree(case, "mean_control", ours.mean_control, absolute["unadjusted_mean_control"])
    agree(case, "mean_treatment", ours.mean_treatment, absolute["unadjusted_mean_treatment"])
    agree(case, "abs_effect", ours.abs_effect, absolute["expected"], abs_tol=ROUNDING * scale)
    agree(case, "std_error", ours.std_error, absolute["std_error"])
    if t_reference:
        low, high = absolute["ci_low"], absolute["ci_high"]
    else:
        half = _z(alpha) * absolute["std_error"]
        low, high = absolute["expected"] - half, absolute["expected"] + half
    agree(case, "ci_low", ours.ci_low, low, abs_tol=ROUNDING * scale)
    agree(case, "ci_high", ours.ci_high, high, abs_tol=ROUNDING * scale)
    if compare_statistic:
        agree(
            case,
            "statistic",
            ours.statistic,
            absolute["statistic"],
            abs_tol=ROUNDING * scale / absolute["std_error"],
        )
    if compare_test:
        agree(case, "p_value", ours.p_value, absolute["p_value"], abs_tol=P_ABS_TOL)

    agree(case, "rel_effect", ours.rel_effect, relative["expected"], abs_tol=ROUNDING)
    rel_half = _z(alpha) * relative["std_error"]
    rel_scale = abs(relative["expected"]) + rel_half
    agree(
        case,
        "rel_ci_low",
        ours.rel_ci_low,
        relative["expected"] - rel_half,
        abs_tol=ROUNDING * rel_scale,
    )
    agree(
        case,
        "rel_ci_high",
        ours.rel_ci_high,
        relative["expected"] + rel_half,
        abs_tol=ROUNDING * rel_scale,
    )


# --------------------------------------------------------------------------- tests


def test_oracle_environment_is_exactly_the_pinned_one(oracle: dict[str, Json]) -> None:
    """Every installed distribution is pinned in requirements.txt at the installed version."""
    done = subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    def normalized(lines: list[str]) -> set[str]:
        pins = set()
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version.strip()}")
        return pins

    installed = normalized(done.stdout.splitlines())
    installed = {p for p in installed if not p.startswith(("pip==", "setuptools=="))}
    assert installed == normalized(REQUIREMENTS.read_text().splitlines())


@pytest.mark.parametrize("name", sorted(SRM_CASES))
def test_srm_p_value_matches_check_srm(oracle: dict[str, Json], name: str) -> None:
    users, weights = SRM_CASES[name]
    ours = srm_test(users, weights)
    assert ours.error is None
    agree(
        f"srm/{name}", "p_value", ours.p_value, oracle[f"srm/{name}"]["p_value"], abs_tol=P_ABS_TOL
    )


def test_srm_zero_weight_arm_differs_only_in_degrees_of_freedom(
    oracle: dict[str, Json],
) -> None:
    """An empty zero-weight arm: same statistic, but gbstats still counts the arm in the df.

    gbstats' p-value is the χ² tail of Rampart's statistic with ``k − 1 = 2``
    df; Rampart leaves the arm out (1 df), the correct reference: an arm that
    can receive nobody adds no free cell to the multinomial.
    """
    ours = srm_test([5_300, 4_700, 0], [0.5, 0.5, 0.0])
    theirs = oracle["srm/zero_weight_empty_arm"]["p_value"]
    agree(
        "srm/zero_weight_empty_arm",
        "p_value (2 df)",
        float(stats.chi2.sf(ours.statistic, 2)),
        theirs,
        abs_tol=P_ABS_TOL,
    )
    agree(
        "srm/zero_weight_empty_arm",
        "p_value (1 df)",
        ours.p_value,
        float(stats.chi2.sf(ours.statistic, 1)),
        abs_tol=P_ABS_TOL,
    )
    assert ours.p_value < theirs


def test_combined_srm_over_a_ramp_matches_scipy() -> None:
    """SRM across a ramp (1 -> 5 -> 25 -> 50 %): the sum of each split's
    ``scipy.stats.chisquare`` statistic, its tail on the summed degrees of freedom."""
    observed = [[9_905, 95], [19_020, 980], [30_100, 9_900], [40_200, 39_800]]
    weights = [[9_900, 100], [9_500, 500], [7_500, 2_500], [5_000, 5_000]]
    ours = combined_srm_test(observed, weights)
    parts = [stats.chisquare(o, sum(o) * np.asarray(w, dtype=float) / sum(w))
             for o, w in zip(observed, weights, strict=True)]
    statistic = sum(float(p.statistic) for p in parts)
    agree("srm/ramp", "statistic", ours.statistic, statistic)
    agree("srm/ramp", "p_value", ours.p_value, float(stats.chi2.sf(statistic, 4)),
          abs_tol=P_ABS_TOL)
    for k, (split, part) in enumerate(zip(ours.splits, parts, strict=True)):
        agree("srm/ramp", f"split {k} p_value", split.p_value, float(part.pvalue),
              abs_tol=P_ABS_TOL)


@pytest.mark.parametrize("name", sorted(CASES.means))
def test_welch_ttest_matches_two_sided_ttest(oracle: dict[str, Json], name: str) -> None:
    control, treatment = CASES.means[name]
    _check_effect(
        f"means/{name}",
        welch_ttest(control, treatment, ALPHA),
        oracle[f"means/{name}/absolute"],
        oracle[f"means/{name}/relative"],
        ALPHA,
        t_reference=True,
        compare_test=True,
        compare_statistic=True,
    )


@pytest.mark.parametrize("name", sorted(CASES.binary))
def test_two_proportion_ztest_matches_proportion_statistic(
    oracle: dict[str, Json], name: str
) -> None:
    """Unpooled se, effects and CIs; the pooled z statistic has no gbstats counterpart."""
    control, treatment = CASES.binary[name]
    _check_effect(
        f"binary/{name}",
        two_proportion_ztest(control, treatment, ALPHA),
        oracle[f"binary/{name}/absolute"],
        oracle[f"binary/{name}/relative"],
        ALPHA,
        t_reference=False,
        compare_test=False,
        compare_statistic=False,
    )


@pytest.mark.parametrize("name", sorted(CASES.ratio))
def test_ratio_effect_matches_ratio_statistic(oracle: dict[str, Json], name: str) -> None:
    control, treatment = CASES.ratio[name]
    # For a ratio statistic gbstats' "unadjusted mean" is the ratio of sums.
    _check_effect(
        f"ratio/{name}",
        ratio_effect(control, treatment, ALPHA),
        oracle[f"ratio/{name}/absolute"],
        oracle[f"ratio/{name}/relative"],
        ALPHA,
        t_reference=False,
        compare_test=False,
        compare_statistic=True,
    )


def _per_arm_fit(
    y: NDArray[np.float64], x: NDArray[np.float64], x_bar: float
) -> tuple[float, float, float]:
    """statsmodels' OLS of one arm's ``y`` on ``1 + (x − x̄)``: intercept, slope and the
    residual sum of squares."""
    fit = OLS(y, np.column_stack([np.ones_like(x), x - x_bar])).fit()
    return float(fit.params[0]), float(fit.params[1]), float(fit.ssr)


def _check_lin(case: str, arrays: Arrays, *, binary: bool) -> float:
    """Compare :func:`cuped_effect` with per-arm OLS fits plus the documented
    covariate-mean term; returns the variance reduction."""
    y_c, x_c, y_t, x_t = arrays
    ours = cuped_effect(_pair(y_c, x_c), _pair(y_t, x_t), ALPHA, binary=binary)
    est = ours.estimate
    assert est.error is None and ours.method == "lin_interacted"
    n_c, n_t = y_c.size, y_t.size
    x_bar = float(np.concatenate([x_c, x_t]).mean())
    m_c, beta_c, rss_c = _per_arm_fit(y_c, x_c, x_bar)
    m_t, beta_t, rss_t = _per_arm_fit(y_t, x_t, x_bar)
    # Intercepts' difference of the interacted regression y ~ 1 + T + x̃ + T·x̃.
    treated = np.concatenate([np.zeros(n_c), np.ones(n_t)])
    centred = np.concatenate([x_c, x_t]) - x_bar
    joint = OLS(np.concatenate([y_c, y_t]),
                np.column_stack([np.ones_like(treated), treated, centred, treated * centred])
                ).fit()
    # The documented variance: residuals (ddof 1) over n, plus (β_t − β_c)²·v with
    # v = a_c·a_t/(a_c + a_t), a the squared standard error of each arm's x̄.
    resid_c, resid_t = rss_c / (n_c - 1) / n_c, rss_t / (n_t - 1) / n_t
    a_c, a_t = np.var(x_c, ddof=1) / n_c, np.var(x_t, ddof=1) / n_t
    v = a_c * a_t / (a_c + a_t)
    spread = (beta_t - beta_c) ** 2 * v
    variance = resid_c + resid_t + spread
    unadjusted = np.var(y_c, ddof=1) / n_c + np.var(y_t, ddof=1) / n_t
    effect = m_t - m_c
    se = math.sqrt(variance)
    if binary:
        quantile = _z(ALPHA)
        p_value = 2.0 * stats.norm.sf(abs(effect) / se)
    else:
        df = variance**2 / (resid_c**2 / (n_c - 1) + resid_t**2 / (n_t - 1)
                            + spread**2 / (n_c + n_t - 2))
        quantile = float(stats.t.ppf(1.0 - ALPHA / 2.0, df))
        p_value = 2.0 * stats.t.sf(abs(effect) / se, df)
    # Delta method on m_t/m_c with Var(m_a) = R_a + β_a²v and Cov = β_c·β_t·v.
    g = m_t / m_c
    rel_var = (resid_t + beta_t**2 * v + g * g * (resid_c + beta_c**2 * v)
               - 2.0 * g * beta_c * beta_t * v) / m_c**2
    rel_half = _z(ALPHA) * math.sqrt(rel_var)
    scale = max(abs(m_c), abs(m_t))
    for quantity, mine, theirs, floor in (
        ("slope_control", ours.slope_control, beta_c, 0.0),
        ("slope_treatment", ours.slope_treatment, beta_t, 0.0),
        ("mean_control", est.mean_control, m_c, 0.0),
        ("mean_treatment", est.mean_treatment, m_t, 0.0),
        ("abs_effect", est.abs_effect, effect, ROUNDING * scale),
        ("abs_effect (interacted OLS)", est.abs_effect, float(joint.params[1]), ROUNDING * scale),
        ("std_error", est.std_error, se, 0.0),
        ("ci_low", est.ci_low, effect - quantile * se, ROUNDING * scale),
        ("ci_high", est.ci_high, effect + quantile * se, ROUNDING * scale),
        ("statistic", est.statistic, effect / se, ROUNDING * scale / se),
        ("p_value", est.p_value, p_value, P_ABS_TOL),
        ("variance_reduction", ours.variance_reduction, 1.0 - variance / unadjusted, ROUNDING),
        ("rel_effect", est.rel_effect, g - 1.0, ROUNDING),
        ("rel_ci_low", est.rel_ci_low, g - 1.0 - rel_half, ROUNDING),
        ("rel_ci_high", est.rel_ci_high, g - 1.0 + rel_half, ROUNDING),
    ):
        agree(case, quantity, mine, theirs, rel=CUPED_REL, abs_tol=floor)
    return ours.variance_reduction


@pytest.mark.parametrize("name", sorted(CASES.cuped))
def test_cuped_matches_per_arm_regressions(name: str) -> None:
    """Per-arm slopes, adjusted means, Welch–Satterthwaite t inference, relative effect."""
    reduction = _check_lin(f"cuped/{name}", CASES.cuped[name], binary=False)
    assert reduction > 0.2


@pytest.mark.parametrize("name", sorted(CASES.cuped_binary))
def test_binary_cuped_matches_per_arm_regressions(name: str) -> None:
    """0/1 metric with ``binary=True``: z inference on the same adjusted figures."""
    reduction = _check_lin(f"cuped_binary/{name}", CASES.cuped_binary[name], binary=True)
    assert reduction > 0.0


def _stratified_case(name: str) -> tuple[NDArray[np.float64], NDArray[np.bool_],
                                         NDArray[np.int64]]:
    """``(y, treated, stratum)``: strata whose means differ, unequal arms."""
    rng = np.random.default_rng(20_261_106 + len(name))
    if name == "mean_4_strata":
        stratum = rng.choice(4, size=12_000, p=[0.4, 0.3, 0.2, 0.1])
        treated = rng.random(stratum.size) < 0.3
        y = (np.array([1.0, 6.0, -2.0, 12.0])[stratum]
             + rng.gamma(2.0, 1.5, stratum.size) + 0.2 * treated)
    else:  # "binary_3_strata": conversion rates far apart by platform
        stratum = rng.choice(3, size=30_000, p=[0.6, 0.3, 0.1])
        treated = rng.random(stratum.size) < 0.5
        rate = np.array([0.05, 0.3, 0.6])[stratum] + 0.01 * treated
        y = (rng.random(stratum.size) < rate).astype(np.float64)
    return y, treated, stratum.astype(np.int64)


@pytest.mark.parametrize("name", ["mean_4_strata", "binary_3_strata"])
def test_post_stratification_matches_the_interacted_regression(name: str) -> None:
    """The post-stratified effect is the treatment coefficient of statsmodels' OLS
    of y on T, the centred stratum dummies and their interactions, and its
    variance that fit's HC2 variance (Lin 2013), to ``CUPED_REL``."""
    y, treated, stratum = _stratified_case(name)
    strata = [Stratum(str(s), _mean(y[(stratum == s) & ~treated]),
                      _mean(y[(stratum == s) & treated])) for s in range(stratum.max() + 1)]
    ours = post_stratified_effect(strata, ALPHA)
    est = ours.estimate
    assert est.error is None and not ours.collapsed
    dummies = np.eye(stratum.max() + 1)[stratum][:, 1:]
    centred = dummies - dummies.mean(axis=0)
    t = treated.astype(np.float64)
    fit = OLS(y, np.column_stack([np.ones_like(t), t, centred, t[:, None] * centred])
              ).fit(cov_type="HC2")
    effect, se = float(fit.params[1]), float(fit.bse[1])
    unadjusted = (np.var(y[treated], ddof=1) / treated.sum()
                  + np.var(y[~treated], ddof=1) / (~treated).sum())
    scale = float(np.abs(y).mean())
    case = f"stratified/{name}"
    for quantity, mine, theirs, floor in (
        ("abs_effect", est.abs_effect, effect, ROUNDING * scale),
        ("std_error", est.std_error, se, 0.0),
        ("ci_low", est.ci_low, effect - _z(ALPHA) * se, ROUNDING * scale),
        ("ci_high", est.ci_high, effect + _z(ALPHA) * se, ROUNDING * scale),
        ("p_value", est.p_value, 2.0 * stats.norm.sf(abs(effect) / se), P_ABS_TOL),
        ("unadjusted_std_error", ours.unadjusted_std_error, math.sqrt(unadjusted), 0.0),
        ("variance_reduction", ours.variance_reduction, 1.0 - se * se / unadjusted, ROUNDING),
    ):
        agree(case, quantity, mine, theirs, rel=CUPED_REL, abs_tol=floor)
    assert ours.variance_reduction > 0.05


@pytest.mark.parametrize("name", sorted(MSPRT_CASES))
def test_msprt_matches_sequential_ttest(oracle: dict[str, Json], name: str) -> None:
    """One look: gbstats' e-value and interval are the normal mixture with ``τ² = N·ρ²·V``."""
    family, data, difference, _, alpha = MSPRT_CASES[name]
    control, treatment = (CASES.means if family == "means" else CASES.binary)[data]
    estimate = (welch_ttest if family == "means" else two_proportion_ztest)(
        control, treatment, ALPHA
    )
    if difference == "absolute":
        effect, variance = estimate.abs_effect, estimate.std_error**2
    else:
        effect = estimate.rel_effect
        variance = ((estimate.rel_ci_high - estimate.rel_ci_low) / (2.0 * _z(ALPHA))) ** 2
    theirs = oracle[f"msprt/{name}"]
    assert theirs["error"] is None
    tau2 = theirs["n_total"] * theirs["rho"] ** 2 * variance
    ours = msprt([effect], [variance], alpha, mixing_variance=tau2)
    case = f"msprt/{name}"
    scale = abs(effect) + (ours.ci_high - ours.ci_low) / 2.0
    agree(case, "estimate", effect, theirs["expected"], abs_tol=ROUNDING * scale)
    agree(case, "p_value", ours.p_value, theirs["p_value"], abs_tol=P_ABS_TOL)
    agree(case, "cs_low", ours.ci_low, theirs["ci_low"], abs_tol=ROUNDING * scale)
    agree(case, "cs_high", ours.ci_high, theirs["ci_high"], abs_tol=ROUNDING * scale)


def test_msprt_cases_cover_both_outcomes(oracle: dict[str, Json]) -> None:
    p_values = [oracle[f"msprt/{name}"]["p_value"] for name in MSPRT_CASES]
    assert min(p_values) < 0.01 and max(p_values) == 1.0


@pytest.mark.parametrize(
    ("family", "name", "credible"),
    [
        (f, n, c)
        for f, table in (("means", CASES.means), ("binary", CASES.binary))
        for n in sorted(table)
        for c in (0.95, 0.9)
    ],
)
def test_normal_means_matches_effect_bayesian_test(
    oracle: dict[str, Json], family: str, name: str, credible: float
) -> None:
    """Flat prior, absolute difference: posterior N(d, σ²), chance to win, CI and losses."""
    control, treatment = (CASES.means if family == "means" else CASES.binary)[name]
    ours = normal_means(control, treatment, credible)
    theirs = oracle[f"bayes/{family}/{name}/{credible}"]
    case = f"bayes/{family}/{name}/{credible}"
    assert ours.error is None and theirs["error"] is None
    sigma = theirs["std_error"]
    scale = abs(theirs["expected"]) + sigma
    agree(case, "prob_better", ours.prob_better, theirs["chance_to_win"])
    agree(case, "ci_low", ours.ci_low, theirs["ci_low"], abs_tol=ROUNDING * scale)
    agree(case, "ci_high", ours.ci_high, theirs["ci_high"], abs_tol=ROUNDING * scale)
    # gbstats' risk is [loss of keeping control, loss of shipping treatment].
    agree(
        case,
        "expected_loss_control",
        ours.expected_loss_control,
        theirs["risk_control"],
        abs_tol=ROUNDING * scale,
    )
    agree(
        case,
        "expected_loss_treatment",
        ours.expected_loss_treatment,
        theirs["risk_treatment"],
        abs_tol=ROUNDING * scale,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_robust_effect_matches_clustered_ols(seed: int) -> None:
    """The cluster-robust effect is the treatment coefficient of statsmodels' OLS
    ``y ~ 1 + treated`` with ``cov_type="cluster"`` (CR1), and its interval and
    p-value are that fit's with ``use_t`` (t on clusters − 1 df). Clusters of
    unequal size, one of them (seed 2) split between the arms as a ramp can."""
    from rollout.experiments.stats.cluster import cluster_robust_effect

    rng = np.random.default_rng(seed)
    clusters = 40 + 10 * seed
    sizes = 1 + rng.poisson(8, clusters)
    cluster = np.repeat(np.arange(clusters), sizes)
    treated = (rng.random(clusters) < 0.5)[cluster]
    if seed == 2:
        treated[cluster == 0] = np.arange(int(sizes[0])) % 2 == 0
    y = rng.normal(0, 0.6, clusters)[cluster] + rng.exponential(2.0, cluster.size) + 0.3 * treated
    ours = cluster_robust_effect(y, treated, cluster)
    fit = OLS(y, np.column_stack([np.ones(y.size), treated.astype(float)])).fit(
        cov_type="cluster", cov_kwds={"groups": cluster}, use_t=True)
    case = f"cluster/{seed}"
    est = ours.estimate
    assert est.error is None
    agree(case, "abs_effect", est.abs_effect, float(fit.params[1]))
    agree(case, "std_error", est.std_error, float(fit.bse[1]))
    agree(case, "p_value", est.p_value, float(fit.pvalues[1]), abs_tol=P_ABS_TOL)
    low, high = fit.conf_int(0.05)[1]
    agree(case, "ci_low", est.ci_low, float(low))
    agree(case, "ci_high", est.ci_high, float(high))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factorial_effects_match_the_effect_coded_regression(seed: int) -> None:
    """A 2×2×2 factorial's main effects and two-way interactions against
    statsmodels' OLS of ``y`` on the saturated effect-coded design (±1 per
    factor, all products) with ``cov_type="HC2"``: with ``+1`` on each
    factor's first level a main effect is ``−2β`` and a two-way interaction
    ``4β``, and their standard errors scale alike. Unequal cells and a spread
    that a factor changes (heteroskedastic). The Holm-adjusted p-values are
    ``multipletests(method="holm")``'s."""
    from statsmodels.stats.multitest import multipletests

    from rollout.experiments.stats.factorial import Factor, cell_statistics, factorial_effects

    rng = np.random.default_rng(seed)
    n = 1500 + 500 * seed
    levels = [(rng.random(n) < share).astype(np.int64) for share in (0.5, 0.3, 0.8)]
    a, b, c = levels
    y = 1.0 + 0.4 * a - 0.2 * b + 0.3 * a * c + rng.normal(0.0, 1.0 + a + 0.5 * b, n)
    factors = [Factor(name, ("first", "second")) for name in "abc"]
    ours = factorial_effects(cell_statistics(y, levels, factors))
    sign = [1.0 - 2.0 * lv for lv in levels]  # +1 on the first level, −1 on the second
    columns = {"1": np.ones(n), "a": sign[0], "b": sign[1], "c": sign[2],
               "ab": sign[0] * sign[1], "ac": sign[0] * sign[2], "bc": sign[1] * sign[2],
               "abc": sign[0] * sign[1] * sign[2]}
    fit = OLS(y, np.column_stack(list(columns.values()))).fit(cov_type="HC2")
    index = {name: i for i, name in enumerate(columns)}
    expected = [("a", -2.0), ("b", -2.0), ("c", -2.0), ("ab", 4.0), ("ac", 4.0), ("bc", 4.0)]
    assert [e.factors for e in ours.effects] == [
        ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]
    for effect, (term, scale) in zip(ours.effects, expected, strict=True):
        case = f"factorial/{seed}/{term}"
        i = index[term]
        agree(case, "estimate", effect.estimate, scale * float(fit.params[i]))
        agree(case, "std_error", effect.std_error, abs(scale) * float(fit.bse[i]))
        agree(case, "p_value", effect.p_value, float(fit.pvalues[i]), abs_tol=P_ABS_TOL)
    holm = multipletests([e.p_value for e in ours.effects], method="holm")[1]
    for effect, theirs in zip(ours.effects, holm, strict=True):
        agree(f"factorial/{seed}/holm", "p_value_adjusted", effect.p_value_adjusted,
              float(theirs), abs_tol=P_ABS_TOL)


def test_factorial_effects_of_a_three_level_factor_match_cell_contrasts() -> None:
    """A 3×2 factorial under both covariances against statsmodels' cell-means
    OLS (one indicator per cell) and its ``t_test`` of the contrasts written out
    here: each level of ``a`` against its first averaged over ``b``, ``b``'s
    second level averaged over ``a``, and the differences-in-differences.
    ``classical`` is the plain OLS covariance with t inference; ``hc2`` HC2
    with normal inference."""
    from rollout.experiments.stats.factorial import Factor, cell_statistics, factorial_effects

    rng = np.random.default_rng(11)
    n = 2400
    a = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    b = (rng.random(n) < 0.4).astype(np.int64)
    y = 2.0 + 0.3 * (a == 1) + 0.5 * (a == 2) * b + rng.exponential(1.0 + 0.5 * b, n)
    cell = a * 2 + b  # cells in row-major order: (a0,b0), (a0,b1), (a1,b0), ...
    design = np.eye(6)[cell]

    def mu(la: int, lb: int) -> NDArray[np.float64]:
        row = np.zeros(6)
        row[la * 2 + lb] = 1.0
        return row

    contrasts = np.array([
        ((mu(1, 0) - mu(0, 0)) + (mu(1, 1) - mu(0, 1))) / 2,
        ((mu(2, 0) - mu(0, 0)) + (mu(2, 1) - mu(0, 1))) / 2,
        sum(mu(la, 1) - mu(la, 0) for la in range(3)) / 3,
        mu(1, 1) - mu(0, 1) - mu(1, 0) + mu(0, 0),
        mu(2, 1) - mu(0, 1) - mu(2, 0) + mu(0, 0),
    ])
    factors = [Factor("a", ("a0", "a1", "a2")), Factor("b", ("b0", "b1"))]
    for covariance, cov_type in (("hc2", "HC2"), ("classical", "nonrobust")):
        ours = factorial_effects(cell_statistics(y, [a, b], factors), covariance=covariance)
        test = OLS(y, design).fit(cov_type=cov_type).t_test(contrasts)
        intervals = test.conf_int(alpha=0.05)
        for i, effect in enumerate(ours.effects):
            case = f"factorial/3x2/{covariance}/{effect.label}"
            agree(case, "estimate", effect.estimate, float(test.effect[i]))
            agree(case, "std_error", effect.std_error, float(test.sd[i]))
            agree(case, "p_value", effect.p_value, float(test.pvalue[i]), abs_tol=P_ABS_TOL)
            agree(case, "ci_low", effect.ci_low, float(intervals[i][0]))
            agree(case, "ci_high", effect.ci_high, float(intervals[i][1]))
