"""Who is eligible for an experiment: rules on the request context, composed
with ``all``, ``any`` and ``not`` (part of the config kernel).

A leaf rule tests one context attribute::

    {attribute: country, op: in, values: [US, CA]}
    {attribute: sessions, op: gte, value: 3}
    {attribute: app_version, op: semver_gte, value: "2.3.0"}
    {attribute: email, op: matches, value: "@example\\.com$"}
    {attribute: beta_tester, op: present}

and nodes compose rules::

    {all: [rule, {any: [rule, rule]}, {not: rule}]}

An experiment's ``targeting`` is a list of such nodes, all of which must hold
(the list reads as ``all``). Every rule is checked when the config loads: an
unknown operator, a missing or mistyped operand, a pattern that does not
compile, a version that is not semantic versioning is refused with its path.

Evaluation is total: an attribute the context lacks satisfies only
``absent`` (and ``not`` of something it fails); a value of the wrong type for
the operator (a string against ``gt``, a number against ``matches``, a
string that is not a version against ``semver_*``) fails the rule rather
than raising, so a malformed context makes a request ineligible, never an
error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from serving.kernel.ids import Frozen

ContextScalar = str | int | float | bool

# Patterns are matched against context values of at most a few hundred
# characters; a bounded pattern keeps the worst case of Python's backtracking
# engine bounded too.
MAX_PATTERN_CHARS = 256
MAX_RULES = 64  # leaves in one experiment's targeting

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")

SemverKey = tuple[int, int, int, tuple[tuple[int, int | str], ...]]


def semver_key(text: str) -> SemverKey | None:
    """A sort key with semantic versioning's precedence (semver.org, §11), or
    None when ``text`` is not a version. ``v`` before the number and missing
    minor or patch parts (``2``, ``2.3``) are accepted, as app stores and
    user agents write them; build metadata (``+...``) does not count."""
    found = _SEMVER.match(text)
    if found is None:
        return None
    major, minor, patch, pre = found.groups()
    # A release sorts after every pre-release of it: its identifier list is
    # one element that compares above any identifier.
    identifiers: tuple[tuple[int, int | str], ...] = ((2, 0),)
    if pre is not None:
        # numeric identifiers sort numerically and below alphanumeric ones
        identifiers = tuple((0, int(part)) if part.isdigit() else (1, part)
                            for part in pre.split("."))
    return int(major), int(minor or 0), int(patch or 0), identifiers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# one Literal, so that a wrong operator is one error listing them all
TargetingOp = Literal["in", "not_in", "eq", "ne", "gt", "gte", "lt", "lte", "matches",
                      "semver_eq", "semver_gt", "semver_gte", "semver_lt", "semver_lte",
                      "present", "absent"]
_ORDER = {"gt": (1,), "gte": (0, 1), "lt": (-1,), "lte": (-1, 0), "eq": (0,)}


class TargetingRule(Frozen):
    """One test of one context attribute (see the module's docstring)."""

    attribute: str = Field(min_length=1, max_length=64)
    op: TargetingOp
    values: tuple[ContextScalar, ...] = ()
    value: ContextScalar | None = None

    @model_validator(mode="after")
    def _operands(self) -> TargetingRule:
        op = self.op
        if op in ("in", "not_in"):
            if not self.values:
                raise ValueError(f"op {op!r} needs a non-empty 'values' list")
            if self.value is not None:
                raise ValueError(f"op {op!r} takes 'values', not 'value'")
            return self
        if self.values:
            wanted = "no operand" if op in ("present", "absent") else "a 'value'"
            raise ValueError(f"op {op!r} takes {wanted}, not 'values'")
        if op in ("present", "absent"):
            if self.value is not None:
                raise ValueError(f"op {op!r} takes no 'value'")
            return self
        if self.value is None:
            raise ValueError(f"op {op!r} needs a 'value'")
        if op in ("gt", "gte", "lt", "lte") and _number(self.value) is None:
            raise ValueError(f"op {op!r} needs a numeric 'value'")
        if op == "matches":
            if not isinstance(self.value, str) or len(self.value) > MAX_PATTERN_CHARS:
                raise ValueError(f"op 'matches' needs a pattern of at most "
                                 f"{MAX_PATTERN_CHARS} characters")
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"pattern {self.value!r} does not compile: {exc}") from None
        if op.startswith("semver_") and (not isinstance(self.value, str)
                                         or semver_key(self.value) is None):
            raise ValueError(f"op {op!r} needs a semantic version such as '2.3.0', "
                             f"got {self.value!r}")
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        assert isinstance(self.value, str)
        return re.compile(self.value)

    @cached_property
    def _version(self) -> SemverKey | None:
        return semver_key(self.value) if isinstance(self.value, str) else None

    def matches(self, context: Mapping[str, Any]) -> bool:
        # One evaluation of the rule, the one routing tables compile once
        # (:class:`CompiledTargeting`); compiled here at each call, since this
        # form serves checks and tests, never the request path.
        return _compiled_rule(self)(context)

    def leaves(self) -> int:
        return 1


class AllOf(Frozen):
    """Every node holds (an empty list always holds)."""

    all: tuple[Targeting, ...]

    def matches(self, context: Mapping[str, Any]) -> bool:
        return all(node.matches(context) for node in self.all)

    def leaves(self) -> int:
        return sum(node.leaves() for node in self.all)


class AnyOf(Frozen):
    """At least one node holds (an empty list never holds)."""

    any: tuple[Targeting, ...]

    @model_validator(mode="after")
    def _not_empty(self) -> AnyOf:
        if not self.any:
            raise ValueError("an 'any' node needs at least one node")
        return self

    def matches(self, context: Mapping[str, Any]) -> bool:
        return any(node.matches(context) for node in self.any)

    def leaves(self) -> int:
        return sum(node.leaves() for node in self.any)


class NotOf(Frozen):
    """The node does not hold."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    not_: Targeting = Field(alias="not")

    def matches(self, context: Mapping[str, Any]) -> bool:
        return not self.not_.matches(context)

    def leaves(self) -> int:
        return self.not_.leaves()


def _shape(value: Any) -> str:
    """Which node a mapping is, by its keys, so that a mistake is reported
    against that node alone (a plain union would list every alternative's
    errors); a node with ``all``, ``any`` or ``not`` and other keys is then
    refused by that node's own unknown-key check."""
    if isinstance(value, Mapping):
        for key in ("all", "any", "not"):
            if key in value:
                return f"<{key}>"
        if "not_" in value:  # a node dumped by its field name, not its alias
            return "<not>"
    elif isinstance(value, AllOf | AnyOf | NotOf):
        return {AllOf: "<all>", AnyOf: "<any>", NotOf: "<not>"}[type(value)]
    return "<rule>"


# The union's tags, which pydantic puts in an error's path (``0.any.any.0.rule``):
# a path printed for people leaves them out (``0.any.0``).
TAGS = ("<rule>", "<all>", "<any>", "<not>")

Targeting = Annotated[
    Annotated[TargetingRule, Tag("<rule>")] | Annotated[AllOf, Tag("<all>")]
    | Annotated[AnyOf, Tag("<any>")] | Annotated[NotOf, Tag("<not>")],
    Discriminator(_shape)]

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()


Predicate = Callable[[Mapping[str, Any]], bool]


class CompiledTargeting:
    """The targeting as one function of the context, with the same answers as
    :func:`targeting_matches`, built once per routing table: each rule becomes
    a closure over its operands (a set for ``in``, the compiled pattern, the
    parsed version), so a request pays no dispatch on the operator's name.
    Pickled as its rules (a routing table travels to the replicas) and
    compiled again where it lands."""

    __slots__ = ("_predicate", "nodes")

    def __init__(self, nodes: tuple[Targeting, ...]) -> None:
        self.nodes = nodes
        self._predicate = _compiled_all(nodes)

    def __call__(self, context: Mapping[str, Any]) -> bool:
        return self._predicate(context)

    def __reduce__(self) -> tuple[type[CompiledTargeting], tuple[tuple[Targeting, ...]]]:
        return CompiledTargeting, (self.nodes,)


def compile_targeting(nodes: tuple[Targeting, ...]) -> CompiledTargeting:
    """:class:`CompiledTargeting` of an experiment's targeting."""
    return CompiledTargeting(nodes)


def _compiled_all(nodes: tuple[Targeting, ...]) -> Predicate:
    parts = [_compiled(node) for node in nodes]
    if not parts:
        return lambda _context: True
    if len(parts) == 1:
        return parts[0]
    return lambda context: all(part(context) for part in parts)


def _compiled(node: Targeting) -> Predicate:
    if isinstance(node, AllOf):
        return _compiled_all(node.all)
    if isinstance(node, AnyOf):
        options = [_compiled(n) for n in node.any]
        return lambda context: any(option(context) for option in options)
    if isinstance(node, NotOf):
        inner = _compiled(node.not_)
        return lambda context: not inner(context)
    return _compiled_rule(node)


def _compiled_rule(rule: TargetingRule) -> Predicate:
    name, op, value = rule.attribute, rule.op, rule.value
    missing = object()
    if op == "present":
        return lambda context: name in context
    if op == "absent":
        return lambda context: name not in context
    if op in ("in", "not_in"):
        try:
            values: frozenset[Any] | tuple[Any, ...] = frozenset(rule.values)
        except TypeError:  # pragma: no cover - scalars are hashable
            values = rule.values
        if op == "in":
            return lambda context: (actual := context.get(name, missing)) is not missing and (
                actual in values)
        return lambda context: (actual := context.get(name, missing)) is not missing and (
            actual not in values)
    if op == "eq":
        return lambda context: (actual := context.get(name, missing)) is not missing and bool(
            actual == value)
    if op == "ne":
        return lambda context: (actual := context.get(name, missing)) is not missing and bool(
            actual != value)
    if op == "matches":
        # search, not full match: anchor with ^ and $ for a whole value
        search = rule._pattern.search
        return lambda context: isinstance(actual := context.get(name), str) and (
            search(actual) is not None)
    if op.startswith("semver_"):
        theirs = rule._version
        wanted = _ORDER[op.removeprefix("semver_")]

        def semver(context: Mapping[str, Any]) -> bool:
            actual = context.get(name)
            mine = semver_key(actual) if isinstance(actual, str) else None
            if mine is None or theirs is None:
                return False
            return ((mine > theirs) - (mine < theirs)) in wanted
        return semver
    threshold: int | float | None = (
        value if isinstance(value, int | float) and not isinstance(value, bool) else None)
    order = _ORDER[op]

    def compare(context: Mapping[str, Any]) -> bool:
        actual = context.get(name)
        if isinstance(actual, bool) or not isinstance(actual, int | float) or threshold is None:
            return False
        # compared as they are: Python orders ints and floats exactly
        return ((actual > threshold) - (actual < threshold)) in order
    return compare


def targeting_matches(nodes: tuple[Targeting, ...], context: Mapping[str, Any]) -> bool:
    """Whether ``context`` is eligible under an experiment's targeting (every
    node holds; no targeting: everyone)."""
    return all(node.matches(context) for node in nodes)


def describe_targeting(nodes: tuple[Targeting, ...]) -> list[dict[str, Any]]:
    """The targeting as the config writes it (``not`` under its own name)."""
    return [node.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
            for node in nodes]


def targeting_text(nodes: tuple[Targeting, ...]) -> str:
    """The targeting in words, for people (``country in [US, CA] and not
    (beta present)``); empty without targeting."""
    return " and ".join(_text(node) for node in nodes)


def _text(node: Targeting) -> str:
    if isinstance(node, AllOf):
        return "(" + " and ".join(_text(n) for n in node.all) + ")" if node.all else "everyone"
    if isinstance(node, AnyOf):
        return "(" + " or ".join(_text(n) for n in node.any) + ")"
    if isinstance(node, NotOf):
        return f"not {_text(node.not_)}"
    if node.op in ("in", "not_in"):
        return f"{node.attribute} {node.op.replace('_', ' ')} [{', '.join(map(str, node.values))}]"
    if node.op in ("present", "absent"):
        return f"{node.attribute} {node.op}"
    return f"{node.attribute} {node.op} {node.value!r}"
