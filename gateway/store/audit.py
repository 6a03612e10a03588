"""The audit trail in the database: append with a hash chain, search, verify.

Each row's `hash` is the SHA-256 of the canonical JSON of its content (every
column but `pk` and `hash`) together with `previous_hash`, the hash of the row
before it; the first row follows `GENESIS` (64 zeros). Rewriting a row breaks
its own hash; removing one breaks the link of the row after it. Only the last
rows can be cut off without a trace in the chain itself (compare counts with a
copy kept elsewhere for that).

Appending keeps the chain linear however many requests finish at once: the
transaction first takes the trail's lock (PostgreSQL: a transaction-scoped
advisory lock; SQLite: BEGIN IMMEDIATE through the engine's `write` option),
then reads the last hash and inserts, so `pk` order is chain order.

The hashing helpers (`canonical`, `chain_hash`, `verify_rows`) work on plain
values and touch no database. Nothing here masks personal data: callers pass
`path` and `detail` already masked (gateway.masking).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, or_, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from gateway.store.schema import audit_events as table

GENESIS = "0" * 64
# The key of the PostgreSQL advisory lock that serialises appends ("audit" in ASCII).
LOCK_KEY = 0x6175646974
# The columns a hash covers, besides previous_hash.
FIELDS = ("at", "client_pk", "client_name", "role", "organizations", "action", "operation",
          "resource_type", "resource_ids", "outcome", "address", "request_id", "method",
          "path", "detail")
PAGE = 1000


# --- hashing (pure) -----------------------------------------------------------------------

def canonical(fields: Mapping, previous_hash: str) -> bytes:
    """The bytes a record's hash covers: sorted-key compact JSON of its fields and link."""
    values = {name: _plain(fields.get(name)) for name in FIELDS}
    values["previous_hash"] = previous_hash
    return json.dumps(values, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def chain_hash(fields: Mapping, previous_hash: str) -> str:
    return hashlib.sha256(canonical(fields, previous_hash)).hexdigest()


def _plain(value):
    if isinstance(value, datetime):                 # stored naive UTC, millisecond precision
        return value.isoformat(timespec="milliseconds")
    return value


@dataclass(frozen=True)
class Verification:
    """What `verify` found: how many records it read and the first broken link, if any."""

    checked: int
    broken_at: int | None = None        # pk of the first record that does not hold
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify_rows(rows: Iterable[Mapping]) -> Verification:
    """Walk rows in pk order; stop at the first whose link or content does not hold."""
    previous, previous_pk, checked = GENESIS, None, 0
    for row in rows:
        checked += 1
        if row["previous_hash"] != previous:
            if previous_pk is None:
                reason = ("it does not follow the start of the trail: a record before it "
                          "was removed")
            else:
                gap = (f"; records #{previous_pk + 1}..#{row['pk'] - 1} are missing"
                       if row["pk"] - previous_pk > 1 else "")
                reason = (f"its previous_hash does not match the hash of record "
                          f"#{previous_pk} (a record between was removed or rewritten){gap}")
            return Verification(checked, row["pk"], reason)
        if chain_hash(row, row["previous_hash"]) != row["hash"]:
            return Verification(checked, row["pk"],
                                "its content does not match its hash (the record was altered)")
        previous, previous_pk = row["hash"], row["pk"]
    return Verification(checked)


# --- appending ----------------------------------------------------------------------------

def append(engine: Engine, fields: Mapping) -> tuple[int, str]:
    """Add one record (the FIELDS, already masked) at the end of the chain: (pk, hash)."""
    values = {name: fields.get(name) for name in FIELDS}
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        previous = conn.execute(select(table.c.hash).order_by(table.c.pk.desc())
                                .limit(1)).scalar() or GENESIS
        digest = chain_hash(values, previous)
        pk = conn.execute(insert(table).values(**values, previous_hash=previous, hash=digest)
                          .returning(table.c.pk)).scalar_one()
    return pk, digest


# --- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DateBound:
    prefix: str                 # eq ne gt lt ge le sa eb
    low: datetime               # the instants the given date covers, inclusive
    high: datetime


@dataclass(frozen=True)
class Filters:
    """A search of the trail: each tuple is one parameter's groups (AND), OR inside a group.

    `outcomes` are AuditEvent outcome codes (0, 4, 8, 12); `entities` are
    (type or None, id) pairs.
    """

    dates: tuple[DateBound, ...] = ()
    agents: tuple[tuple[int, ...], ...] = ()
    entity_types: tuple[tuple[str, ...], ...] = ()
    entities: tuple[tuple[tuple[str | None, str], ...], ...] = ()
    actions: tuple[tuple[str, ...], ...] = ()
    outcomes: tuple[tuple[str, ...], ...] = ()


def get(conn: Connection, pk: int) -> dict | None:
    row = conn.execute(select(table).where(table.c.pk == pk)).mappings().first()
    return dict(row) if row is not None else None


def search(conn: Connection, filters: Filters, count: int,
           before: int | None = None) -> tuple[list[dict], int | None]:
    """Newest first, `count` records with pk below `before`; and the next page's `before`."""
    query = select(table).where(*_where(filters)).order_by(table.c.pk.desc()).limit(count + 1)
    if before is not None:
        query = query.where(table.c.pk < before)
    rows = [dict(row) for row in conn.execute(query).mappings()]
    more = len(rows) > count
    rows = rows[:count]
    return rows, (rows[-1]["pk"] if more and rows else None)


def _where(filters: Filters) -> list[ColumnElement]:
    where: list[ColumnElement] = [_date(bound) for bound in filters.dates]
    where += [table.c.client_pk.in_(group) for group in filters.agents]
    where += [table.c.action.in_(group) for group in filters.actions]
    where += [or_(*(_outcome(code) for code in group)) for group in filters.outcomes]
    where += [or_(*(_entity_type(name) for name in group)) for group in filters.entity_types]
    where += [or_(*(_entity(kind, rid) for kind, rid in group)) for group in filters.entities]
    return where


def _date(bound: DateBound) -> ColumnElement:
    at, low, high = table.c.at, bound.low, bound.high
    return {
        "eq": and_(at >= low, at <= high), "ne": or_(at < low, at > high),
        "gt": at > high, "sa": at > high, "lt": at < low, "eb": at < low,
        "ge": at >= low, "le": at <= high,
    }[bound.prefix]


def outcome_code(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor, 8 serious, 12 major.

    A refused request (4xx) is a minor failure, an error of the gateway (5xx) a
    serious one, and 503 (the gateway cannot reach its database) a major one.
    """
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    return "12" if status == 503 else "8"


def _outcome(code: str) -> ColumnElement:
    status = table.c.outcome
    return {
        "0": status < 400,
        "4": and_(status >= 400, status < 500),
        "8": and_(status >= 500, status != 503),
        "12": status == 503,
    }.get(code, status.is_(None))           # an unknown code matches nothing


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _entity_type(name: str) -> ColumnElement:
    """Records about resources of a type: as their main type or among their ids (`Type/id`)."""
    return or_(table.c.resource_type == name,
               table.c.resource_ids.like(f'%"{_like(name)}/%', escape="\\"))


def _entity(kind: str | None, rid: str) -> ColumnElement:
    """Records that touched one resource: `id` of the record's type, or `Type/id` listed."""
    plain = table.c.resource_ids.like(f'%"{_like(rid)}"%', escape="\\")
    if kind is None:
        return or_(plain, table.c.resource_ids.like(f'%/{_like(rid)}"%', escape="\\"))
    return or_(and_(table.c.resource_type == kind, plain),
               table.c.resource_ids.like(f'%"{_like(kind)}/{_like(rid)}"%', escape="\\"))


# --- verifying ----------------------------------------------------------------------------

def rows_in_order(engine: Engine, page: int = PAGE) -> Iterator[dict]:
    """Every record in pk order, read page by page (a long trail never sits in memory)."""
    after = 0
    while True:
        with engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(
                select(table).where(table.c.pk > after).order_by(table.c.pk).limit(page))
                .mappings()]
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1]["pk"]


def verify(engine: Engine) -> Verification:
    return verify_rows(rows_in_order(engine))
