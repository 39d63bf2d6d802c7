"""Execute the control plane's typed commands against a :class:`RolloutService`.

One function, :func:`execute`, takes any command of
:mod:`serving.kernel.commands` and returns its typed result, or raises a
:class:`~serving.kernel.errors.RampartError` subclass. The same function runs
in-process (:class:`LocalControlPlane`) and inside the controller actor; its
errors cross Ray's boundary as the exceptions they are, and the HTTP layer
answers every one of them in one place.
"""

from __future__ import annotations

import asyncio
from typing import overload

from rollout.core.plan import parse_plan
from rollout.service import RolloutService
from serving.kernel.commands import (
    AlertResult,
    AlertWebhook,
    Command,
    CommandResult,
    CreateRollout,
    DescribeBandit,
    DescribeRollout,
    DescribeRouting,
    ListRollouts,
    RolloutCommand,
    RolloutList,
    RolloutStatus,
    RoutingStatus,
    SetShadow,
    ShadowsResult,
)
from serving.kernel.errors import BanditNotFound


@overload
def execute(service: RolloutService,
            command: CreateRollout | DescribeRollout | RolloutCommand) -> RolloutStatus: ...
@overload
def execute(service: RolloutService, command: ListRollouts) -> RolloutList: ...
@overload
def execute(service: RolloutService, command: AlertWebhook) -> AlertResult: ...
@overload
def execute(service: RolloutService, command: SetShadow) -> ShadowsResult: ...
@overload
def execute(service: RolloutService, command: DescribeRouting) -> RoutingStatus: ...
@overload
def execute(service: RolloutService, command: Command) -> CommandResult: ...


def execute(service: RolloutService, command: Command) -> CommandResult:
    """Run one command; raises RampartError subclasses for every refusal."""
    match command:
        case CreateRollout():
            state = service.create(parse_plan(command.plan, source="plan"))
            return service.describe(state.id)
        case DescribeRollout():
            return service.describe(command.id)
        case ListRollouts():
            return RolloutList(rollouts=service.summaries())
        case RolloutCommand():
            state = service.command(command.id, command.kind, command.reason)
            return service.describe(state.id)
        case AlertWebhook():
            return service.alert(command.payload)
        case SetShadow():
            snapshot = service.set_shadow(command.shadow, enabled=command.enabled)
            return ShadowsResult(routing_version=snapshot.version,
                                 shadows=snapshot.table.describe()["shadows"])
        case DescribeRouting():
            return service.routing_status()
        case DescribeBandit():
            # Bandits run beside the rollouts on the controller actor
            # (rollout/actor.py answers this command itself); this plane has none.
            raise BanditNotFound(f"no bandit experiment {command.id!r} runs here")


class LocalControlPlane:
    """The control plane in the gateway's own process (tests, a single process)."""

    def __init__(self, service: RolloutService) -> None:
        self.service = service

    async def execute(self, command: Command) -> CommandResult:
        # The service blocks (SQLite, MLflow): keep it off the event loop.
        return await asyncio.to_thread(execute, self.service, command)
