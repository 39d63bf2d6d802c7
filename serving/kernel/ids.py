"""Identifiers, patterns and limits shared by every layer's schemas.

Part of the config kernel: pure pydantic and the standard library, no other
package of the project.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

BUCKETS = 10_000
"""Buckets of the assignment hash; weights are basis points of them."""

UnitType = Literal["user_id", "session_id", "device_id", "cluster_id"]
SALT_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Ids name files and directories (an experiment's pre-registration, a log
# partition): no separator, and a first character that makes neither ``.``,
# ``..`` nor a hidden name.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A registered model's name and a version (a number or an alias) become a
# ``models:/NAME/VERSION`` URI and file names of MLflow's: neither may carry a
# separator, a control character or ``@`` (which would make the URI an
# alias's), nor be only dots (``.``, ``..``).
MODEL_NAME_PATTERN = r"^[^/\\@\x00-\x1f\x7f]*[^/\\@\x00-\x1f\x7f.][^/\\@\x00-\x1f\x7f]*$"
MAX_MODEL_NAME_CHARS = 256
VERSION_PATTERN = ID_PATTERN
MAX_UNIT_ID_CHARS = 256
# Characters no id or context value may hold: C0 and C1 controls (NUL, newline,
# escape...), and the invisible ones that make a logged value read as another
# (zero-width, line and paragraph separators, bidirectional overrides and
# isolates such as RLO, the byte-order mark). The same class reads alike in
# Python's ``re`` and in pydantic's regex engine.
_HIDDEN = "\\x00-\\x1f\\x7f-\\x9f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff"
UNIT_ID_PATTERN = f"^[^{_HIDDEN}]+$"
HIDDEN_CHARACTER = re.compile(f"[{_HIDDEN}]")
MAX_BODY_BYTES = 1 << 20

FeatureValue = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # ints accepted, bools not
ContextValue = StrictStr | StrictInt | StrictFloat | StrictBool

# A request's context is logged with every row and may carry the unit id of an
# experiment's unit type (``context.session_id``): bounded like the unit id, so
# one request cannot make a row, a log file or a replica's memory balloon.
MAX_CONTEXT_KEYS = 64
MAX_CONTEXT_KEY_CHARS = 64
MAX_CONTEXT_TEXT_CHARS = MAX_UNIT_ID_CHARS


def bounded_context(value: Any) -> Any:
    """Refuse a context over the bounds with one message naming the key, before
    its values are validated (a union's per-branch errors would say it four times)."""
    if not isinstance(value, dict):
        return value
    if len(value) > MAX_CONTEXT_KEYS:
        raise ValueError(f"{len(value)} keys; the limit is {MAX_CONTEXT_KEYS}")
    for key, item in value.items():
        if isinstance(key, str) and not 1 <= len(key) <= MAX_CONTEXT_KEY_CHARS:
            raise ValueError(f"key {key[:16]!r} is {len(key)} characters; keys are "
                             f"1-{MAX_CONTEXT_KEY_CHARS}")
        if isinstance(item, str) and len(item) > MAX_CONTEXT_TEXT_CHARS:
            raise ValueError(f"{key[:64]} is {len(item)} characters; the limit is "
                             f"{MAX_CONTEXT_TEXT_CHARS}")
        for text in (key, item):
            if isinstance(text, str) and HIDDEN_CHARACTER.search(text):
                raise ValueError(f"{key[:64]!r}: control and invisible characters "
                                 "are not allowed")
    return value


Context = Annotated[dict[str, ContextValue], BeforeValidator(bounded_context)]


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
