"""Decision rows grouped by unit key and outcome rows matched to the units
(:func:`rollout.experiments.unit_groups.match_units`), against a plain Python
reference: every unit once, its minimum packed value, its crossover, and each
outcome row's unit, however the keys are spread."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from rollout.experiments import unit_groups
from rollout.experiments.unit_groups import match_units

_INT64 = np.iinfo(np.int64)


def _check(keys: np.ndarray, packed: np.ndarray, arm: np.ndarray,
           outcome_keys: np.ndarray) -> None:
    match = match_units(keys, packed, arm, outcome_keys)
    first: dict[int, int] = {}
    arms: defaultdict[int, set[int]] = defaultdict(set)
    for key, value, a in zip(keys.tolist(), packed.tolist(), arm.tolist(), strict=True):
        first[key] = min(first.get(key, value), value)
        arms[key].add(a)
    assert match.n_units == len(first)
    assert sorted(match.keys.tolist()) == sorted(first)
    assert dict(zip(match.keys.tolist(), match.first.tolist(), strict=True)) == first
    assert match.crossovers == sum(len(a) > 1 for a in arms.values())
    code_of = {key: code for code, key in enumerate(match.keys.tolist())}
    assert match.outcome_codes.dtype == np.int64
    assert match.outcome_codes.tolist() == [code_of.get(k, -1) for k in outcome_keys.tolist()]


@pytest.mark.parametrize("seed", range(4))
def test_random_keys_group_and_match_as_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    units = rng.integers(_INT64.min, _INT64.max, 30_000, dtype=np.int64)
    keys = units[rng.integers(0, units.size, 90_000)]
    packed = rng.integers(0, 1 << 40, keys.size)
    arm = (rng.random(keys.size) < 0.01).astype(np.int64)  # a few crossovers
    outcome_keys = np.concatenate([keys[rng.integers(0, keys.size, 50_000)],
                                   rng.integers(_INT64.min, _INT64.max, 5_000, dtype=np.int64),
                                   [_INT64.min, _INT64.max, 0, -1]])
    rng.shuffle(outcome_keys)
    _check(keys, packed, arm, outcome_keys)


def test_clustered_keys_probe_on_and_are_all_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # small partitions, and keys that are small integers, multiples of a large
    # power of two, the extremes and -1: clusters of linear probing, including
    # clusters that wrap past a table's last slot
    monkeypatch.setattr(unit_groups, "_ROWS_PER_PARTITION", 64)
    keys = np.concatenate([np.arange(3_000, dtype=np.int64),
                           np.arange(1_000, dtype=np.int64) << 40,
                           [_INT64.min, _INT64.max, -1, -1, 0]]).astype(np.int64)
    keys = np.concatenate([keys, keys[::3]])
    packed = np.arange(keys.size, dtype=np.int64)[::-1].copy()
    arm = np.zeros(keys.size, dtype=np.int64)
    arm[-5:] = 1
    outcome_keys = np.concatenate([keys, np.arange(3_000, 4_000, dtype=np.int64),
                                   (np.arange(1_000, 1_100, dtype=np.int64) << 40)])
    _check(keys, packed, arm, outcome_keys)


@pytest.mark.parametrize("rows", [0, 1, 2, 17])
def test_tiny_and_empty_inputs(rows: int) -> None:
    keys = np.arange(rows, dtype=np.int64) % 5
    _check(keys, np.arange(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64),
           np.array([0, 3, 9], dtype=np.int64))
    _check(keys, np.arange(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64),
           np.zeros(0, dtype=np.int64))


def test_one_unit_in_many_rows_and_partitions_with_no_rows() -> None:
    keys = np.full(200_000, 12345, dtype=np.int64)
    packed = np.arange(keys.size, dtype=np.int64) + 7
    arm = np.zeros(keys.size, dtype=np.int64)
    match = match_units(keys, packed, arm, np.array([12345, 1], dtype=np.int64))
    assert match.keys.tolist() == [12345]
    assert match.first.tolist() == [7]
    assert match.crossovers == 0
    assert match.outcome_codes.tolist() == [0, -1]
