"""The mock's private database: bundles and tickets, applied records, the registry.

A test double's own store, so its tables are made by `metadata.create_all` and
never migrated. Four tables:

- `bundles`: every distinct Bundle received, in order of receipt (`seq`), with its
  ticket, its status (processing → completed) and, once completed, the per-entry
  answers the ticket reports.
- `applied`: one row per processed entry, keyed by (reference, version) under a
  unique constraint. `count` says how many times that version was processed; the
  mock exists to show it is always 1, so a second processing raises the count
  (and logs an error) instead of hiding behind the constraint.
- `registry`: what each register (frmo, frmr, elmk) holds now: the approved
  version of each resource, with the fields the business rules look up.
- `counters`: what the stats report that the other tables cannot tell
  (signature failures, duplicates, injected faults).

SQLite is reached through `gateway.store.database.make_engine` (WAL, BEGIN
IMMEDIATE for writers), so the request threads and the processing thread queue
for the write lock instead of failing half-way.
"""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url

from gateway.store import database

metadata = MetaData()

PROCESSING = "processing"
COMPLETED = "completed"

bundles = Table(
    "mock_bundles", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("ticket", String(64), nullable=False, unique=True),
    Column("identifier", String(255), nullable=False, unique=True),
    Column("destination", String(8), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("content", JSON, nullable=False),
    Column("entries_digest", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("completed_at", Float),
    Column("result", JSON),
)

applied = Table(
    "mock_applied", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reference", String(255), nullable=False),
    Column("version", String(255), nullable=False),
    Column("destination", String(8), nullable=False),
    Column("method", String(8), nullable=False),
    Column("ticket", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("count", Integer, nullable=False, default=1),
    Column("applied_at", Float, nullable=False),
    UniqueConstraint("reference", "version", name="uq_mock_applied_reference_version"),
)

registry = Table(
    "mock_registry", metadata,
    Column("destination", String(8), primary_key=True),
    Column("reference", String(255), primary_key=True),
    Column("version", String(64)),
    Column("content", JSON, nullable=False),
    Column("practitioner", String(255)),
    Column("organization", String(255)),
    Column("position", String(64)),
    Column("registered_at", Float, nullable=False),
)

counters = Table(
    "mock_counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False, default=0),
)

COUNTERS = ("bundles_received", "bundles_invalid", "duplicates_ignored",
            "duplicates_conflicting", "signature_failures", "connections_dropped")


def make_engine(url: str) -> Engine:
    """The mock's engine; an in-memory SQLite would give every thread its own database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("The mock upstream needs a database file (sqlite:///path), "
                         "not an in-memory SQLite: its threads share the database.")
    return database.make_engine(url)


class MockStore:
    """Small, named operations on the mock's tables; the rules live in processing.py."""

    def __init__(self, engine: Engine, fault_kinds: tuple[str, ...] = ()) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        metadata.create_all(engine)
        names = list(COUNTERS) + [f"fault_{kind}" for kind in fault_kinds]
        with self.write() as conn:
            known = set(conn.scalars(select(counters.c.name)))
            missing = [{"name": n, "value": 0} for n in names if n not in known]
            if missing:
                conn.execute(insert(counters), missing)

    def write(self):
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        return self._writer.begin()

    def read(self):
        return self.engine.connect()

    # --- counters -------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        with self.write() as conn:
            conn.execute(update(counters).where(counters.c.name == name)
                         .values(value=counters.c.value + by))

    # --- bundles --------------------------------------------------------------------

    def bundle_by_identifier(self, identifier: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(select(bundles).where(bundles.c.identifier == identifier)
                               ).mappings().first()
        return dict(row) if row else None

    def bundle_by_ticket(self, ticket: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(select(bundles).where(bundles.c.ticket == ticket)
                               ).mappings().first()
        return dict(row) if row else None

    def add_bundle(self, row: dict) -> None:
        """Store a new Bundle; raises IntegrityError if its identifier arrived meanwhile."""
        with self.write() as conn:
            conn.execute(insert(bundles).values(status=PROCESSING, **row))

    def oldest_processing(self, conn: Connection | None = None) -> dict | None:
        """The first Bundle still waiting, in order of receipt (FIFO)."""
        query = (select(bundles).where(bundles.c.status == PROCESSING)
                 .order_by(bundles.c.seq).limit(1))
        if conn is not None:
            row = conn.execute(query.with_for_update()).mappings().first()
            return dict(row) if row else None
        with self.read() as c:
            row = c.execute(query).mappings().first()
        return dict(row) if row else None

    # --- what the mock-only endpoints show ------------------------------------------------

    def stats(self) -> dict:
        with self.read() as conn:
            values = dict(conn.execute(select(counters.c.name, counters.c.value)).all())
            by_bundle_status = dict(conn.execute(
                select(bundles.c.status, func.count()).group_by(bundles.c.status)).all())
            by_entry_status = dict(conn.execute(
                select(applied.c.status, func.count()).group_by(applied.c.status)).all())
            records = conn.execute(select(func.count(), func.coalesce(func.sum(
                applied.c.count), 0))).one()
            repeated = conn.scalar(select(func.count()).where(applied.c.count > 1))
            registered = dict(conn.execute(
                select(registry.c.destination, func.count())
                .group_by(registry.c.destination)).all())
        faults = {name[len("fault_"):]: value for name, value in values.items()
                  if name.startswith("fault_")}
        return {
            "bundles_received": values.get("bundles_received", 0),
            "bundles_unique": sum(by_bundle_status.values()),
            "bundles_invalid": values.get("bundles_invalid", 0),
            "records_applied": records[0],
            "applications_total": int(records[1]),
            "records_applied_more_than_once": repeated,
            "duplicates_ignored": values.get("duplicates_ignored", 0),
            "duplicates_conflicting": values.get("duplicates_conflicting", 0),
            "signature_failures": values.get("signature_failures", 0),
            "connections_dropped": values.get("connections_dropped", 0),
            "faults_injected": faults,
            "tickets_processing": by_bundle_status.get(PROCESSING, 0),
            "tickets_completed": by_bundle_status.get(COMPLETED, 0),
            "approved": by_entry_status.get("approved", 0),
            "rejected": by_entry_status.get("rejected", 0),
            "clarification_required": by_entry_status.get("clarification_required", 0),
            "registered": {d: registered.get(d, 0) for d in ("frmo", "frmr", "elmk")},
        }

    def applied_records(self) -> list[dict]:
        with self.read() as conn:
            rows = conn.execute(select(applied).order_by(applied.c.id)).mappings().all()
        return [{"reference": r["reference"], "version": r["version"],
                 "destination": r["destination"], "method": r["method"],
                 "status": r["status"], "ticket": r["ticket"], "count": r["count"]}
                for r in rows]

    def registered(self, destination: str) -> list[dict]:
        with self.read() as conn:
            rows = conn.execute(select(registry).where(registry.c.destination == destination)
                                .order_by(registry.c.reference)).mappings().all()
        return [{"reference": r["reference"], "version": r["version"],
                 "resource": r["content"]} for r in rows]
