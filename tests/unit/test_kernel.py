"""The config kernel's shared pieces: limits telemetry repeats, and the one
error hierarchy (stable codes, HTTP statuses, picklable across Ray)."""

from __future__ import annotations

import pickle

import pytest

from serving.kernel import errors, ids
from telemetry import outcome_events

pytestmark = pytest.mark.unit


def test_telemetry_repeats_the_kernels_limits_exactly() -> None:
    # telemetry never imports serving, so it keeps its own copies of these.
    assert outcome_events.ID_PATTERN == ids.ID_PATTERN
    assert outcome_events.MAX_UNIT_ID_CHARS == ids.MAX_UNIT_ID_CHARS
    assert outcome_events.UNIT_ID_PATTERN == ids.UNIT_ID_PATTERN


def _all_errors() -> list[type[errors.RampartError]]:
    found = [errors.RampartError]
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.RampartError):
            found.append(value)
    return sorted(set(found), key=lambda cls: cls.__name__)


def test_every_error_has_its_own_code_and_an_http_status() -> None:
    classes = _all_errors()
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes), codes
    assert all(400 <= cls.status <= 599 for cls in classes)


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda cls: cls.__name__)
def test_errors_cross_process_boundaries_intact(cls: type[errors.RampartError]) -> None:
    error = cls("something went wrong", request_id="req-1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert copy.body() == {"error": {"code": cls.code, "message": "something went wrong",
                                     "request_id": "req-1"}}


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "../etc", "a/b", "_x", "-x", "a" * 65, ""])
def test_ids_that_would_escape_or_hide_a_path_are_refused(name: str) -> None:
    # Ids become file and directory names (pre-registrations, log partitions).
    import re

    assert re.match(ids.ID_PATTERN, name) is None


@pytest.mark.parametrize("name", ["exp-1", "a", "v1.2_b", "A" * 64])
def test_ordinary_ids_stay_valid_and_stay_inside_their_directory(name: str,
                                                                 tmp_path: object) -> None:
    import re
    from pathlib import Path

    assert re.match(ids.ID_PATTERN, name)
    root = Path(str(tmp_path))
    assert (root / f"{name}.json").resolve().parent == root.resolve()


@pytest.mark.parametrize(("model", "version"), [
    ("../etc", "1"), ("..", "1"), ("a\\b", "1"), ("churn@prod", "1"), ("churn\n", "1"),
    ("churn", "1/../2"), ("churn", ".."), ("churn", "")])
def test_model_names_and_versions_that_would_leave_the_registry_are_refused(
        model: str, version: str) -> None:
    # They become models:/NAME/VERSION URIs and MLflow's own paths.
    from pydantic import ValidationError

    from rollout.core.plan import RolloutPlan
    from serving.kernel.config import ModelSpec, ModelTarget

    with pytest.raises(ValidationError):
        ModelSpec(name=model, versions=(version,))
    with pytest.raises(ValidationError):
        ModelTarget(model=model, version=version)
    with pytest.raises(ValidationError):
        RolloutPlan(model_name=model, baseline_version="7", candidate_version=version)


def test_ordinary_model_names_versions_and_aliases_stay_valid() -> None:
    from serving.kernel.config import ModelSpec, ModelTarget

    assert ModelSpec(name="My churn model.v2", versions=("1", "champion", "canary-2"))
    assert ModelTarget(model="rampart-demo-classifier", version="champion")
