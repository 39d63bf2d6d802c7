"""Who may force an arm or a version with a request header, as configured
(part of the config kernel: pure pydantic).

Forcing lets a tester see a given arm or version on demand (Flagger's header
routing, GrowthBook's forced variations). It is off unless the config has a
``requests.forced_assignment`` section, and even then only for the unit ids
listed in ``allowed_units`` or for a value signed with the key held by the
environment variable ``signing_key_env``. The key itself never appears in the
config: a config is shown, committed and diffed; a key is not.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from serving.kernel.ids import MAX_UNIT_ID_CHARS, UNIT_ID_PATTERN, Frozen

FORCE_HEADER = "X-Rampart-Force"
HEADER_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
# Environment variable names as POSIX shells take them.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# An HMAC-SHA256 key shorter than this is guessable offline from one signed value.
MIN_SIGNING_KEY_BYTES = 16
MAX_ALLOWED_UNITS = 10_000

AllowedUnit = Annotated[str, Field(min_length=1, max_length=MAX_UNIT_ID_CHARS,
                                   pattern=UNIT_ID_PATTERN)]


class ForcedAssignmentConfig(Frozen):
    """``requests.forced_assignment``: the header that forces an arm or a
    version, and who may use it (see :mod:`serving.routing.forcing` for the
    value's grammar)."""

    header: str = Field(default=FORCE_HEADER, pattern=HEADER_PATTERN)
    # Unit ids that may force without a signature (QA accounts).
    allowed_units: tuple[AllowedUnit, ...] = Field(default=(), max_length=MAX_ALLOWED_UNITS)
    # The environment variable holding the HMAC-SHA256 key of signed values
    # (None: only ``allowed_units`` may force). Read by the gateway at start.
    signing_key_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)

    @field_validator("allowed_units")
    @classmethod
    def _distinct(cls, units: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted(u for u, n in Counter(units).items() if n > 1)
        if repeated:
            raise ValueError(f"unit ids listed twice: {repeated[:10]}")
        return units

    @model_validator(mode="after")
    def _someone_may_force(self) -> ForcedAssignmentConfig:
        # A section that lets nobody force is a mistake, not a way to turn it off
        # (leaving the section out does that).
        if not self.allowed_units and self.signing_key_env is None:
            raise ValueError("forced assignment allows nobody: list 'allowed_units' or "
                             "name 'signing_key_env' (leave the section out to turn "
                             "forcing off)")
        return self
