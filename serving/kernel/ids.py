"""Identifiers, patterns and limits shared by every layer's schemas.

Part of the config kernel: pure pydantic and the standard library, no other
package of the project.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

BUCKETS = 10_000
"""Buckets of the assignment hash; weights are basis points of them."""

UnitType = Literal["user_id", "session_id", "device_id", "cluster_id"]
SALT_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_UNIT_ID_CHARS = 256
MAX_BODY_BYTES = 1 << 20

FeatureValue = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # ints accepted, bools not
ContextValue = StrictStr | StrictInt | StrictFloat | StrictBool


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def check_salt(salt: str) -> str:
    """``salt`` if it is 1-64 characters of ``[A-Za-z0-9_.:-]``; else ``ValueError``."""
    if not SALT_PATTERN.match(salt):
        raise ValueError(
            "salt must be 1-64 characters of letters, digits and '_.:-' "
            f"(got {salt!r})"
        )
    return salt
