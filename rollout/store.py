"""Rollout state and audit trail in any SQLAlchemy database (SQLite by default).

Each save writes the rollout's whole state (JSON) and its new audit records
in one transaction, so a controller killed at any moment restarts from a
state and a trail that agree. The routing-table version counter lives here
too: a restarted controller never reuses a version number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from rollout.core.controller import AuditRecord, RolloutState

metadata = MetaData()

rollouts = Table(
    "rampart_rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(256), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

audit = Table(
    "rampart_rollout_audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(64), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("from_phase", String(32), nullable=False),
    Column("to_phase", String(32), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("weight_bp", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("figures", Text, nullable=False),
)

counters = Table(
    "rampart_counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)


class RolloutStore:
    """Persistence for rollouts, their audit trail and the routing version."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def save(self, state: RolloutState, records: Sequence[AuditRecord] = ()) -> None:
        """Write the state and append its new audit records, atomically."""
        row = {
            "model_name": state.plan.model_name,
            "phase": state.phase.value,
            "state": state.model_dump_json(),
            "created_at": state.created_at,
            "updated_at": state.updated_at,
        }
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(rollouts.c.id).where(rollouts.c.id == state.id)
            ).first()
            if exists:
                conn.execute(update(rollouts).where(rollouts.c.id == state.id).values(**row))
            else:
                conn.execute(insert(rollouts).values(id=state.id, **row))
            for record in records:
                conn.execute(insert(audit).values(
                    rollout_id=state.id, at=record.at, from_phase=record.from_phase.value,
                    to_phase=record.to_phase.value, step_index=record.step_index,
                    weight_bp=record.weight_bp, reason=record.reason,
                    figures=json.dumps(record.figures, default=str),
                ))

    def all(self) -> list[RolloutState]:
        """Every rollout, oldest first (a restarted controller resumes from these)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(rollouts.c.state).order_by(rollouts.c.created_at)).all()
        return [RolloutState.model_validate_json(r[0]) for r in rows]

    def audit_trail(self, rollout_id: str) -> list[AuditRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit).where(audit.c.rollout_id == rollout_id).order_by(audit.c.seq)
            ).mappings().all()
        return [
            AuditRecord(
                at=r["at"], from_phase=r["from_phase"], to_phase=r["to_phase"],
                step_index=r["step_index"], weight_bp=r["weight_bp"], reason=r["reason"],
                figures=json.loads(r["figures"]),
            )
            for r in rows
        ]

    def next_counter(self, name: str) -> int:
        """Increment and return a named counter (the routing-table version)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(counters.c.value).where(counters.c.name == name)).first()
            value = (row[0] if row else 0) + 1
            if row:
                conn.execute(update(counters).where(counters.c.name == name).values(value=value))
            else:
                conn.execute(insert(counters).values(name=name, value=value))
        return value

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
