"""What the control plane publishes and every gateway replica serves.

A :class:`RoutingSnapshot` is one routing table plus the rollouts' gauges,
versioned by the table. The rollout controller builds it; replicas receive it
by long-poll and swap it in whole. It lives here, in the pure routing
package, so the control plane and the request path share the type without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.routing.router import RoutingTable


@dataclass(frozen=True, slots=True)
class RolloutGauge:
    """What replicas export about a rollout (``rampart_rollout_*`` gauges)."""

    rollout_id: str
    active: bool
    weight_bp: int
    last_transition_at: float


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """A routing table and the rollouts' gauges, published together."""

    table: RoutingTable
    rollouts: tuple[RolloutGauge, ...] = ()

    @property
    def version(self) -> int:
        return self.table.version
