"""Rollout state and audit trail in any SQLAlchemy database: SQLite by default,
PostgreSQL (``postgresql://`` URLs, through psycopg) for controllers that share it.

Each save writes the rollout's whole state (JSON) and its new audit records
in one transaction, so a controller killed at any moment restarts from a
state and a trail that agree. The routing-table version counter lives here
too: a restarted controller never reuses a version number.

Two controllers on one database
-------------------------------
Every rollout row carries a ``revision``. A step runs inside
:meth:`RolloutStore.transition`, which, before the step acts, locks the row
(``SELECT ... FOR UPDATE``) and checks that its revision is the one the
controller last read; the step's write is then ``UPDATE ... WHERE id = :id AND
revision = :expected`` and bumps it. A controller that lost the race waits on
the row lock until the winner commits, finds a newer revision and gets
:class:`StaleRollout` *before* it has published a routing table or touched an
MLflow alias: it reloads the rollout and does not act. So every transition is
written once and its side effects are carried out by one controller.

Why both and not a controller lease: the lock is what keeps the loser's side
effects from running at all (a revision check alone is only known at the
write, after the alias moved); the revision is what tells the loser that it
lost, once the lock is released, and it still refuses a stale write on SQLite,
where ``FOR UPDATE`` does not exist (SQLite is for one controller: there the
check is at the write only). A lease (holder, expires_at) would stop a second
controller from stepping anything, but its safety rests on clocks and on
steps finishing before expiry; the row lock rests on the database alone, and
a controller that dies mid-step releases it with its connection.

The price is a transaction held open across one step's MLflow calls; the lock
wait is bounded (``lock_timeout``), and a step that runs out of it holds the
rollout like a database that is down.

The database going away
-----------------------
A read or write that cannot reach the database raises
:class:`StoreUnavailable`; the step that needed it changed nothing stored
(its transaction rolled back, its audit records with it), and the service
holds the rollout until a later step succeeds. PostgreSQL connections come
from a pool that pings each one before use, so a restarted server is
reconnected without a restart of the controller.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.sql.dml import Insert

from rollout.core.controller import AuditRecord, RolloutState
from serving.kernel.errors import (
    RolloutConflict,
    RolloutNotFound,
    StaleRollout,
    StoreUnavailable,
)

metadata = MetaData()

rollouts = Table(
    "rampart_rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(256), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Bumped by every write: a step is written only over the revision it read.
    Column("revision", Integer, nullable=False, server_default="0"),
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

# Serialises schema setup of controllers starting together on one PostgreSQL
# (CREATE TABLE of two sessions at once fails in one of them).
_SCHEMA_LOCK_KEY = 0x52414D50  # "RAMP"


class StoredRollout(NamedTuple):
    state: RolloutState
    revision: int


class Transition:
    """One step's hold on a rollout's row (see :meth:`RolloutStore.transition`)."""

    def __init__(self, conn: Connection, rollout_id: str, revision: int) -> None:
        self._conn = conn
        self.rollout_id = rollout_id
        self.revision = revision

    def save(self, state: RolloutState, records: Sequence[AuditRecord] = ()) -> int:
        """Write the step's state and audit records; they commit when the
        transition ends. Returns the new revision."""
        if state.id != self.rollout_id:
            raise ValueError(f"transition of {self.rollout_id!r} cannot save {state.id!r}")
        done = self._conn.execute(
            update(rollouts)
            .where(rollouts.c.id == state.id, rollouts.c.revision == self.revision)
            .values(**_row(state), revision=self.revision + 1))
        if done.rowcount != 1:
            raise StaleRollout(f"rollout {state.id!r} changed since revision {self.revision}")
        _append(self._conn, state.id, records)
        self.revision += 1
        return self.revision


class RolloutStore:
    """Persistence for rollouts, their audit trail and the routing version."""

    def __init__(self, url: str, lock_timeout_s: float = 30.0) -> None:
        self.url = url
        self.lock_timeout_s = lock_timeout_s
        self.engine: Engine = _engine_for(url)
        self._prepare_schema()

    # ------------------------------------------------------------------ writes

    def add(self, state: RolloutState, records: Sequence[AuditRecord] = ()) -> int:
        """Store a new rollout at revision 0; RolloutConflict if its id is taken."""
        try:
            with self._reachable("creating a rollout"), self.engine.begin() as conn:
                conn.execute(insert(rollouts).values(id=state.id, revision=0, **_row(state)))
                _append(conn, state.id, records)
        except sa_exc.IntegrityError:
            raise RolloutConflict(f"rollout {state.id!r} already exists") from None
        return 0

    def save(self, state: RolloutState, records: Sequence[AuditRecord] = ()) -> int:
        """Write the state whatever its stored revision, and append its new
        audit records, atomically; returns the new revision.

        For a single writer; a controller that may share the database steps
        through :meth:`transition`.
        """
        with self._reachable("saving a rollout"), self.engine.begin() as conn:
            revision = conn.execute(
                select(rollouts.c.revision).where(rollouts.c.id == state.id)
            ).scalar()
            if revision is None:
                revision = 0
                conn.execute(insert(rollouts).values(id=state.id, revision=0, **_row(state)))
            else:
                revision += 1
                conn.execute(update(rollouts).where(rollouts.c.id == state.id)
                             .values(revision=revision, **_row(state)))
            _append(conn, state.id, records)
        return int(revision)

    @contextmanager
    def transition(self, rollout_id: str, revision: int) -> Iterator[Transition]:
        """Hold the rollout's row for one step that read it at ``revision``.

        Raises :class:`StaleRollout` on entry if the stored revision differs
        (another controller stepped it: reload, do not act), and
        :class:`StoreUnavailable` if the database cannot be reached. On
        PostgreSQL the row stays locked until the block ends, so a second
        controller's step waits here and then finds the new revision. The
        block's writes commit when it ends, and roll back if it raises.
        """
        with self._reachable("stepping a rollout"), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(
                    f"SET LOCAL lock_timeout = {max(1, int(self.lock_timeout_s * 1000))}"))
            stored = conn.execute(
                select(rollouts.c.revision).where(rollouts.c.id == rollout_id).with_for_update()
            ).scalar()
            if stored is None:
                raise RolloutNotFound(f"no rollout {rollout_id!r} in the store")
            if stored != revision:
                raise StaleRollout(f"rollout {rollout_id!r} is at revision {stored}, "
                                   f"not {revision}: another controller stepped it")
            yield Transition(conn, rollout_id, revision)

    def next_counter(self, name: str) -> int:
        """Increment and return a named counter (the routing-table version).

        One atomic ``UPDATE ... RETURNING``, committed on its own: two
        controllers never get the same number, and a step that rolls back
        afterwards does not hand its number out again.
        """
        bump = (update(counters).where(counters.c.name == name)
                .values(value=counters.c.value + 1).returning(counters.c.value))
        with self._reachable("counting routing versions"), self.engine.begin() as conn:
            value = conn.execute(bump).scalar()
            if value is None:
                conn.execute(_insert_if_absent(conn, name))
                value = conn.execute(bump).scalar_one()
        return int(value)

    # ------------------------------------------------------------------ reads

    def load(self, rollout_id: str) -> StoredRollout | None:
        with self._reachable("reading a rollout"), self.engine.connect() as conn:
            row = conn.execute(select(rollouts.c.state, rollouts.c.revision)
                               .where(rollouts.c.id == rollout_id)).first()
        if row is None:
            return None
        return StoredRollout(RolloutState.model_validate_json(row[0]), int(row[1]))

    def load_all(self) -> list[StoredRollout]:
        """Every rollout with its revision, oldest first."""
        with self._reachable("reading rollouts"), self.engine.connect() as conn:
            rows = conn.execute(select(rollouts.c.state, rollouts.c.revision)
                                .order_by(rollouts.c.created_at, rollouts.c.id)).all()
        return [StoredRollout(RolloutState.model_validate_json(r[0]), int(r[1])) for r in rows]

    def all(self) -> list[RolloutState]:
        """Every rollout, oldest first (a restarted controller resumes from these)."""
        return [stored.state for stored in self.load_all()]

    def audit_trail(self, rollout_id: str) -> list[AuditRecord]:
        with self._reachable("reading an audit trail"), self.engine.connect() as conn:
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

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ plumbing

    def _prepare_schema(self) -> None:
        """Create the tables, and add what a database from before lacks."""
        with self._reachable("preparing the schema"), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": _SCHEMA_LOCK_KEY})
            metadata.create_all(conn)
            columns = {c["name"] for c in inspect(conn).get_columns(rollouts.name)}
            if "revision" not in columns:
                conn.execute(text(f"ALTER TABLE {rollouts.name} "
                                  "ADD COLUMN revision INTEGER NOT NULL DEFAULT 0"))

    @contextmanager
    def _reachable(self, doing: str) -> Iterator[None]:
        """Turn "cannot reach the database" into StoreUnavailable; let the
        rest (a constraint violated, a bad statement) through as it is."""
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise StoreUnavailable(f"rollout store unavailable while {doing}: "
                                   f"{_first_line(exc)}") from exc
        except sa_exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise StoreUnavailable(f"rollout store connection lost while {doing}: "
                                   f"{_first_line(exc)}") from exc


def normalise_url(url: str) -> str:
    """A plain ``postgresql://`` (or ``postgres://``) URL goes through psycopg 3,
    the one PostgreSQL driver Rampart installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine_for(url: str) -> Engine:
    normalised = normalise_url(url)
    backend = make_url(normalised).get_backend_name()
    if backend == "sqlite":
        if normalised.startswith("sqlite:///"):
            Path(normalised.removeprefix("sqlite:///")).parent.mkdir(parents=True,
                                                                   exist_ok=True)
        engine = create_engine(normalised)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        # Fail fast when the server is unreachable: a tick waits on no dead host.
        connect_args["connect_timeout"] = 5
    # pre_ping: a pooled connection to a server that restarted is replaced on checkout.
    return create_engine(normalised, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         pool_timeout=30, connect_args=connect_args)


def _row(state: RolloutState) -> dict[str, Any]:
    return {
        "model_name": state.plan.model_name,
        "phase": state.phase.value,
        "state": state.model_dump_json(),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


def _append(conn: Connection, rollout_id: str, records: Sequence[AuditRecord]) -> None:
    for record in records:
        conn.execute(insert(audit).values(
            rollout_id=rollout_id, at=record.at, from_phase=record.from_phase.value,
            to_phase=record.to_phase.value, step_index=record.step_index,
            weight_bp=record.weight_bp, reason=record.reason,
            figures=json.dumps(record.figures, default=str),
        ))


def _insert_if_absent(conn: Connection, name: str) -> Insert:
    """The counter's first row, written by whichever controller gets there first."""
    values = {"name": name, "value": 0}
    if conn.dialect.name == "postgresql":
        return pg_dialect.insert(counters).values(**values).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite_dialect.insert(counters).values(**values).on_conflict_do_nothing()
    return insert(counters).values(**values)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
