"""Forced assignment: a request header that chooses the arm or the version
instead of the hash, for QA (Flagger's header routing, GrowthBook's forced
variations).

Pure: parsing, signature checks and the forced :class:`Decision` take the
header's text, the key's bytes and the time as arguments; reading headers
and the environment is the gateway's job.

The header's value (``requests.forced_assignment.header``, default
``X-Rampart-Force``)::

    value   = target [";exp=" EPOCH] [";sig=" HEX]
    target  = EXPERIMENT_ID "=" ARM          an arm of an experiment
            | "version=" MODEL "/" VERSION   a served version, outside experiments

``HEX`` is ``HMAC-SHA256(key, UTF-8("<unit_id>|<value before ';sig='>"))`` in
hexadecimal, so a signature is good for one unit and one value (expiry
included) only. ``EPOCH`` is seconds since the epoch after which the value is
refused, signed or not. A target whose key is ``version`` and whose right side
holds a ``/`` is a version (arm names cannot hold one); ``version=treatment``
is the arm ``treatment`` of an experiment named ``version``.

A unit may force when its id is in ``allowed_units`` or the value carries a
good signature; otherwise the request is refused (:class:`ForceRefused`, 403)
rather than served unforced, so a tester never mistakes the hash's choice for
the forced one. An experiment, arm or version the routing table does not have
is :class:`ForceInvalid` (400).

A forced arm is served its configured version as it is: the experiment's
targeting, coverage and layer, and any rollout splitting that version, are
not applied (a forced request must get what it asked for). The decision is
logged with the experiment and arm, ``forced`` true, and no bucket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from serving.kernel.errors import ForceInvalid, ForceRefused
from serving.kernel.forcing import ForcedAssignmentConfig
from serving.kernel.ids import ID_PATTERN, ContextValue
from serving.routing.router import (
    DEFAULT_ARM,
    EXPERIMENT_LAYER_PREFIX,
    Decision,
    ModelRef,
    RoutingTable,
    unit_for,
)

FORCED_LAYER = "forced"  # the layer column of a forced version (no experiment decided it)
VERSION_KEY = "version"
SIGNATURE_PREFIX = ";sig="
EXPIRY_PREFIX = ";exp="
MAX_FORCE_CHARS = 512
_ID = re.compile(ID_PATTERN)
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_EPOCH = re.compile(r"^[0-9]{1,12}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


@dataclass(frozen=True, slots=True)
class ForcedArm:
    """Serve ``experiment_id``'s arm ``arm``."""

    experiment_id: str
    arm: str


@dataclass(frozen=True, slots=True)
class ForcedVersion:
    """Serve ``model``'s version (or alias) ``version``, outside any experiment."""

    model: str
    version: str


ForceTarget = ForcedArm | ForcedVersion


@dataclass(frozen=True, slots=True)
class ForceValue:
    """A parsed header value. ``signed_text`` is what a signature covers (the
    value before ``;sig=``), ``signature`` the hex digest if one was given."""

    target: ForceTarget
    signed_text: str
    expires_at: int | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ForcingPolicy:
    """Who may force, as the gateway holds it: the header (lower case, as ASGI
    headers are), the allowlisted unit ids and the signing key (None: signed
    values are not accepted)."""

    header: str
    allowed_units: frozenset[str]
    signing_key: bytes | None = None

    @classmethod
    def from_config(cls, config: ForcedAssignmentConfig, signing_key: bytes | None
                    ) -> ForcingPolicy:
        return cls(config.header.lower(), frozenset(config.allowed_units), signing_key)


def parse_force(value: str) -> ForceValue:
    """The header's value parsed; :class:`ForceInvalid` saying what is wrong."""
    text = value.strip()
    if not text or len(text) > MAX_FORCE_CHARS or not _PRINTABLE.match(text):
        raise ForceInvalid(f"forcing header: expected EXPERIMENT=ARM or version=MODEL/VERSION "
                           f"(at most {MAX_FORCE_CHARS} printable characters, no spaces), got "
                           f"{_shown(text)}")
    signed_text, signature = text, None
    if SIGNATURE_PREFIX in text:
        signed_text, _, signature = text.rpartition(SIGNATURE_PREFIX)
        if not _HEX.match(signature):
            raise ForceInvalid("forcing header: ';sig=' must end the value and hold 64 hex "
                               "digits (HMAC-SHA256)")
    target_text, expires_at = signed_text, None
    if EXPIRY_PREFIX in signed_text:
        target_text, _, epoch = signed_text.partition(EXPIRY_PREFIX)
        if not _EPOCH.match(epoch):
            raise ForceInvalid(f"forcing header: ';exp=' must be seconds since the epoch, got "
                               f"{_shown(epoch)}")
        expires_at = int(epoch)
    return ForceValue(_target(target_text), signed_text, expires_at,
                      None if signature is None else signature.lower())


def _target(text: str) -> ForceTarget:
    key, equals, right = text.partition("=")
    if not equals:
        raise ForceInvalid(f"forcing header: expected EXPERIMENT=ARM or "
                           f"version=MODEL/VERSION, got {_shown(text)}")
    if key == VERSION_KEY and "/" in right:
        model, _, version = right.partition("/")
        if not model or not _ID.match(version):
            raise ForceInvalid(f"forcing header: expected version=MODEL/VERSION, got "
                               f"{_shown(text)}")
        return ForcedVersion(model, version)
    if not _ID.match(key) or not _ID.match(right):
        raise ForceInvalid(f"forcing header: expected EXPERIMENT=ARM (ids of letters, digits "
                           f"and '_.-'), got {_shown(text)}")
    return ForcedArm(key, right)


def _shown(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def force_signature(key: bytes, unit_id: str, signed_text: str) -> str:
    """The signature of ``signed_text`` for ``unit_id``: HMAC-SHA256 of
    ``"<unit_id>|<signed_text>"``, in hex."""
    message = f"{unit_id}|{signed_text}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_force(key: bytes, unit_id: str, target: str, expires_at: int | None = None) -> str:
    """A signed header value forcing ``target`` (``EXPERIMENT=ARM`` or
    ``version=MODEL/VERSION``) for ``unit_id``, good until ``expires_at``
    (seconds since the epoch; None: no expiry)."""
    signed_text = target if expires_at is None else f"{target}{EXPIRY_PREFIX}{expires_at}"
    return f"{signed_text}{SIGNATURE_PREFIX}{force_signature(key, unit_id, signed_text)}"


def authorize(policy: ForcingPolicy, force: ForceValue, unit_id: str, now: float) -> None:
    """Nothing when ``unit_id`` may force ``force`` at ``now`` (seconds since
    the epoch); :class:`ForceRefused` with the reason otherwise."""
    if force.expires_at is not None and now >= force.expires_at:
        raise ForceRefused(f"forcing header expired at {force.expires_at} (epoch seconds)")
    if unit_id in policy.allowed_units:
        return
    if force.signature is None:
        raise ForceRefused(f"unit {unit_id!r} may not force: it is not in "
                           "forced_assignment.allowed_units and the value is not signed")
    if policy.signing_key is None:
        raise ForceRefused(f"unit {unit_id!r} may not force: it is not in "
                           "forced_assignment.allowed_units and this gateway has no signing "
                           "key (forced_assignment.signing_key_env)")
    expected = force_signature(policy.signing_key, unit_id, force.signed_text)
    if not hmac.compare_digest(expected, force.signature):
        raise ForceRefused(f"forcing header: the signature does not match unit {unit_id!r} "
                           "and this value")


def forced_decision(table: RoutingTable, target: ForceTarget, unit_id: str,
                    context: Mapping[str, ContextValue]) -> Decision:
    """The decision ``target`` forces for ``unit_id``; :class:`ForceInvalid`
    naming an experiment, arm or version ``table`` does not have."""
    if isinstance(target, ForcedVersion):
        return Decision(unit_id, "user_id", None, DEFAULT_ARM, None,
                        routed_version(table, target), FORCED_LAYER, forced=True)
    experiment = next((e for e in table.experiments if e.id == target.experiment_id), None)
    if experiment is None:
        raise ForceInvalid(f"forcing header: no experiment {target.experiment_id!r}; "
                           f"experiments are {sorted(e.id for e in table.experiments)}")
    arms = experiment.allocation.arm_names
    if target.arm not in arms:
        raise ForceInvalid(f"forcing header: experiment {experiment.id!r} has no arm "
                           f"{target.arm!r}; its arms are {list(arms)}")
    index = arms.index(target.arm)
    layer = experiment.layer
    return Decision(unit_for(experiment.unit_type, unit_id, context), experiment.unit_type,
                    experiment.id, target.arm, None, experiment.arm_models[index],
                    EXPERIMENT_LAYER_PREFIX + experiment.id if layer is None else layer.name,
                    arm_weights=experiment.arm_weights, forced=True)


def routed_version(table: RoutingTable, target: ForcedVersion) -> ModelRef:
    """The version ``target`` names (by number or by the alias the config
    used) among those ``table`` routes requests to; shadows answer nobody."""
    routed = [table.default, *(m for e in table.experiments for m in e.arm_models)]
    for split in table.rollouts:
        routed += [split.baseline, split.candidate]
    for ref in routed:
        if ref.name == target.model and target.version in (ref.version, ref.alias):
            return ref
    shown = sorted({f"{r.name}/{r.version}" for r in routed})
    raise ForceInvalid(f"forcing header: version {target.model}/{target.version} is not one "
                       f"this gateway routes to; routed versions are {shown}")


def resolve_force(policy: ForcingPolicy, table: RoutingTable, force: ForceValue,
                  unit_id: str, context: Mapping[str, ContextValue], now: float) -> Decision:
    """The forced decision for one row: the unit may force (else
    :class:`ForceRefused`) a target the table has (else :class:`ForceInvalid`)."""
    authorize(policy, force, unit_id, now)
    return forced_decision(table, force.target, unit_id, context)
