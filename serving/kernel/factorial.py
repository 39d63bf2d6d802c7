"""Factorial experiments: factors, their levels, and the cells of their cross
product (part of the config kernel).

An experiment with ``factors`` has no arms of its own: its arms are the cells
of the factors' cross product, one per combination of levels, named
``<factor>.<level>_<factor>.<level>...`` in the factors' config order. Factor
and level names are letters, digits and ``-`` only, so the two separators
(``.`` between a factor and its level, ``_`` between factors) cannot occur in
them and any cell name reads back into its levels (:func:`parse_cell`). A
cell's weight is the product of its levels' weights, in basis points: each
factor is assigned by a bucket under its own salt, so the factors are
independent and a cell's share is the product of its levels' shares.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from serving.kernel.ids import (
    BUCKETS,
    MAX_MODEL_NAME_CHARS,
    MODEL_NAME_PATTERN,
    VERSION_PATTERN,
    Frozen,
    check_salt,
)

FACTOR_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,30}$")
LEVEL_SEPARATOR = "."  # between a factor's name and its level's in a cell name
FACTOR_SEPARATOR = "_"  # between the factors of a cell name
MIN_FACTORS, MAX_FACTORS = 2, 4
MAX_CELLS = 16  # the most arms an experiment may have
MAX_ARM_NAME_CHARS = 64  # what ID_PATTERN admits


def check_factor_name(name: str) -> str:
    """``name`` if it can be part of a cell name; else ``ValueError``."""
    if not FACTOR_NAME_PATTERN.match(name):
        raise ValueError(f"factor and level names are 1-31 letters, digits and '-', starting "
                         f"with a letter or digit (cell names join them with "
                         f"{LEVEL_SEPARATOR!r} and {FACTOR_SEPARATOR!r}); got {name!r}")
    return name


class FactorLevel(Frozen):
    """One level of a factor: a name, its weight in basis points of the
    factor's units, and, on the factor that carries model versions, the
    version the level serves."""

    name: str
    weight_bp: int = Field(ge=0, le=BUCKETS)
    model: str | None = Field(default=None, max_length=MAX_MODEL_NAME_CHARS,
                              pattern=MODEL_NAME_PATTERN)
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_factor_name(name)

    @model_validator(mode="after")
    def _model_and_version(self) -> FactorLevel:
        if (self.model is None) != (self.version is None):
            raise ValueError(f"level {self.name!r}: 'model' and 'version' go together")
        return self

    @property
    def serves_model(self) -> bool:
        return self.model is not None


class FactorSpec(Frozen):
    """A factor of a factorial experiment: its levels (the first is its
    baseline) split the experiment's units by a bucket under the factor's own
    salt, independently of every other factor."""

    name: str
    salt: str
    levels: tuple[FactorLevel, ...] = Field(min_length=2, max_length=MAX_CELLS)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_factor_name(name)

    @field_validator("salt")
    @classmethod
    def _salt(cls, salt: str) -> str:
        return check_salt(salt)

    @field_validator("levels")
    @classmethod
    def _levels(cls, levels: tuple[FactorLevel, ...], info: ValidationInfo
                ) -> tuple[FactorLevel, ...]:
        factor = info.data.get("name", "?")
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise ValueError(f"factor {factor!r}: level names must be distinct, got {names}")
        total = sum(level.weight_bp for level in levels)
        if total != BUCKETS:
            raise ValueError(f"factor {factor!r}: level weights sum to {total} basis points; "
                             f"they must sum to {BUCKETS} (100%)")
        carrying = [level.serves_model for level in levels]
        if any(carrying) and not all(carrying):
            raise ValueError(f"factor {factor!r}: either every level names a model version "
                             "or none does")
        return levels

    @property
    def serves_models(self) -> bool:
        """Whether this factor's levels choose the model version served."""
        return self.levels[0].serves_model


def check_factors(experiment: str, experiment_salt: str | None,
                  factors: tuple[FactorSpec, ...]) -> tuple[FactorSpec, ...]:
    """``factors`` if they can be crossed: 2-4 of them, distinct names, salts
    distinct from each other and from the experiment's (equal salts would make
    two factors, or a factor and the coverage, the same draw), at most one
    carrying model versions (a request is served one version)."""
    if not factors:
        return factors
    if not MIN_FACTORS <= len(factors) <= MAX_FACTORS:
        raise ValueError(f"experiment {experiment!r}: a factorial experiment has "
                         f"{MIN_FACTORS}-{MAX_FACTORS} factors, got {len(factors)}")
    names = [f.name for f in factors]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment {experiment!r}: factor names must be distinct, "
                         f"got {names}")
    salts = [f.salt for f in factors]
    if len(set(salts)) != len(salts) or experiment_salt in salts:
        raise ValueError(f"experiment {experiment!r}: factor salts must differ from each "
                         f"other and from the experiment's salt {experiment_salt!r} "
                         f"(got {salts}); equal salts would assign the same draw twice")
    carrying = [f.name for f in factors if f.serves_models]
    if len(carrying) > 1:
        raise ValueError(f"experiment {experiment!r}: at most one factor may name model "
                         f"versions (a request is served one), got {carrying}")
    return factors


def cell_name(levels: Sequence[tuple[str, str]]) -> str:
    """The arm name of a cell from its ``(factor, level)`` pairs in factor order."""
    return FACTOR_SEPARATOR.join(f"{factor}{LEVEL_SEPARATOR}{level}"
                                 for factor, level in levels)


def parse_cell(arm: str) -> dict[str, str] | None:
    """The ``{factor: level}`` of a cell name; None for a name that is not one
    (a holdout, the default, an ordinary arm without the ``.`` form)."""
    out: dict[str, str] = {}
    for part in arm.split(FACTOR_SEPARATOR):
        factor, dot, level = part.partition(LEVEL_SEPARATOR)
        if not dot or not factor or not level or LEVEL_SEPARATOR in level or factor in out:
            return None
        out[factor] = level
    return out if len(out) >= MIN_FACTORS else None


def label_treatments(factors: Sequence[FactorSpec], arms: Sequence[str]) -> dict[str, str]:
    """Each cell's levels of the factors that carry no model version, as text
    (``color.green``): what a cell applies beyond the version it serves, so
    that two cells serving one version still compare those factors."""
    labels = [f.name for f in factors if all(level.model is None for level in f.levels)]
    out: dict[str, str] = {}
    for arm in arms:
        levels = parse_cell(arm) or {}
        out[arm] = FACTOR_SEPARATOR.join(f"{name}{LEVEL_SEPARATOR}{levels.get(name, '')}"
                                         for name in labels)
    return out


def cell_levels(factors: Sequence[FactorSpec]) -> list[tuple[int, ...]]:
    """Every cell as its factors' level indices, the first factor varying
    slowest (so cell 0, every factor at its first level, is the control)."""
    return list(itertools.product(*(range(len(f.levels)) for f in factors)))


def factorial_arms(experiment: str, factors: Sequence[FactorSpec],
                   cell_model: tuple[str, str] | None) -> list[dict[str, Any]]:
    """The arms of a factorial experiment, as config mappings: one per cell,
    named by :func:`cell_name`, weighted by the product of its levels' weights
    and serving the model factor's level's version, or ``cell_model`` when no
    factor carries versions. ``ValueError`` when the cells do not fit an
    experiment's arms (too many, a name too long, a weight that is not a
    whole number of basis points)."""
    cells = cell_levels(factors)
    if len(cells) > MAX_CELLS:
        raise ValueError(f"experiment {experiment!r}: the factors cross into {len(cells)} "
                         f"cells; an experiment has at most {MAX_CELLS} arms")
    model_factor = next((i for i, f in enumerate(factors) if f.serves_models), None)
    if model_factor is None and cell_model is None:
        raise ValueError(f"experiment {experiment!r}: no factor names model versions and "
                         "there is no 'cell_model' for the cells to serve")
    arms: list[dict[str, Any]] = []
    for cell in cells:
        levels = [f.levels[i] for f, i in zip(factors, cell, strict=True)]
        name = cell_name([(f.name, level.name) for f, level in zip(factors, levels,
                                                                    strict=True)])
        if len(name) > MAX_ARM_NAME_CHARS:
            raise ValueError(f"experiment {experiment!r}: cell name {name!r} is {len(name)} "
                             f"characters; arm names have at most {MAX_ARM_NAME_CHARS}: "
                             "shorten the factor or level names")
        product = math.prod(level.weight_bp for level in levels)
        scale = BUCKETS ** (len(levels) - 1)
        if product % scale:
            shown = " x ".join(f"{level.weight_bp}" for level in levels)
            raise ValueError(f"experiment {experiment!r}: cell {name!r} would weigh {shown} "
                             f"/ {scale} = {product / scale:g} basis points; level weights "
                             "must multiply to whole basis points (e.g. 5000, 2500, 2000)")
        if model_factor is None:
            assert cell_model is not None
            model, version = cell_model
        else:
            served = levels[model_factor]
            assert served.model is not None and served.version is not None
            model, version = served.model, served.version
        arms.append({"name": name, "weight_bp": product // scale, "model": model,
                     "version": version})
    return arms


def with_default_cell_model(data: Any) -> Any:
    """A config mapping whose factorial experiments without a model factor
    serve the config's ``default`` route: it is given to them as their
    ``cell_model``. Anything malformed is left as it is, for validation to name."""
    if not isinstance(data, Mapping):
        return data
    default = data.get("default")
    if default is not None and hasattr(default, "model") and hasattr(default, "version"):
        default = {"model": default.model, "version": default.version}  # a ModelTarget
    experiments = data.get("experiments")
    if not isinstance(default, Mapping) or not isinstance(experiments, list | tuple):
        return data

    def needs_default(exp: Any) -> bool:
        if not isinstance(exp, Mapping) or not exp.get("factors") or "cell_model" in exp:
            return False
        factors = exp["factors"]
        return isinstance(factors, list | tuple) and not any(
            isinstance(level, Mapping) and "model" in level
            for factor in factors if isinstance(factor, Mapping)
            for level in (factor.get("levels") or ()))

    if not any(needs_default(exp) for exp in experiments):
        return data
    cell_model = {key: default[key] for key in ("model", "version") if key in default}
    return {**data, "experiments": [
        {**exp, "cell_model": cell_model} if needs_default(exp) else exp
        for exp in experiments]}
