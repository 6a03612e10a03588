"""Versioned resources: create, read, update, delete, history, conditional writes.

Every write runs in one database transaction that (1) locks what it depends on,
(2) writes a new row in `resource_versions`, (3) moves the `resources` row to it
and (4) replaces the resource's rows in the search index. A transaction Bundle
runs several such writes in the same database transaction (`Store.write()`).

Concurrency. Conditional creates and updates by business identifier must never
make two resources for one identifier, even when twenty arrive at once:
- SQLite: every write transaction begins IMMEDIATE, so writers are serialised
  and the search-then-create inside one transaction cannot interleave.
- PostgreSQL: the transaction first takes a transaction-scoped advisory lock on
  the condition (`pg_advisory_xact_lock`), so writers of the same identifier
  queue while others proceed; READ COMMITTED lets the next holder see the row the
  previous one committed.
Version checks (`If-Match`) lock the `resources` row (`FOR UPDATE`). A unique key
on (type, id) catches the rest (two create-on-update PUTs of a new id), and the
losing transaction is retried.

Change order. A regional system that polls `_lastUpdated=gt<last seen>` or
`_history?_since=` must never miss a change nor see one twice. That holds only if
changes become visible in the order of their times: a transaction that took its
time first but committed last would be missed by a poll in between. So every
write transaction first locks the one row of `change_clock` (on SQLite BEGIN
IMMEDIATE holds the database lock already), and its changes take one time from
it, at least a millisecond after the previous transaction's (the precision of
meta.lastUpdated). Writers therefore commit one after another in the order of
their times and of `resource_versions.seq`: whatever a reader sees is every
change up to some time, none after it. The price is that writes to PostgreSQL
are serialised, as they are on SQLite; a write transaction is a few
milliseconds of SQL, validation happens before it. Above a thousand write
transactions a second the times run ahead of the wall clock until the load eases.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.errors import Conflict, Gone, InvalidRequest, NotFound, PreconditionFailed
from gateway.store import encryption, indexing, submissions, tenancy
from gateway.store.clock import instant, utcnow
from gateway.store.schema import (
    INDEX_TABLES,
    change_clock,
    resource_versions,
    resources,
    search_token,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RETRIES = 5
TICK = timedelta(milliseconds=1)
EPOCH = datetime(1970, 1, 1)
CLOCK_KEY = "gateway.change_time"        # conn.info: the time of this transaction's changes
# Columns of each index table after (resource_pk, resource_type, param).
INDEX_COLUMNS = {kind: [c.name for c in table.columns][3:] for kind, table in INDEX_TABLES.items()}


@dataclass(frozen=True)
class Stored:
    """A resource version as stored: content includes meta.versionId and lastUpdated."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: dict | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class WriteResult:
    stored: Stored
    outcome: str          # created | updated | unchanged | deleted | matched
    submission: str | None = None   # the outbox entry of this change (or the latest one)


class Store:
    """The store's operations. `engine` is a SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    # --- transactions --------------------------------------------------------------

    @contextmanager
    def write(self):
        """One write transaction (BEGIN IMMEDIATE on SQLite), holding the change clock.

        Before it commits, the tenancy rule settles the owners of what it wrote and
        refuses (rolling everything back) a write the caller may not make.
        """
        with self.engine.connect().execution_options(write=True) as conn:
            conn.info.pop(CLOCK_KEY, None)
            conn.info.pop(tenancy.PENDING_KEY, None)
            try:
                with conn.begin():
                    self._hold_clock(conn)
                    yield conn
                    tenancy.settle(conn)
            finally:
                conn.info.pop(CLOCK_KEY, None)
                conn.info.pop(tenancy.PENDING_KEY, None)

    @contextmanager
    def snapshot(self):
        """One consistent read of several statements (a search page, its total, its includes).

        PostgreSQL: a REPEATABLE READ transaction, one snapshot for all statements.
        SQLite (WAL): a read transaction already sees one snapshot from its first read.
        """
        with self.engine.connect() as conn:
            if not self.sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def run_write(self, work: Callable[[Connection], object]):
        """Run `work(conn)` in a write transaction, retrying lost races."""
        for attempt in range(RETRIES):
            try:
                with self.write() as conn:
                    return work(conn)
            except IntegrityError:
                if attempt == RETRIES - 1:
                    raise
            except OperationalError as exc:
                # PostgreSQL deadlock / serialization failure: try again.
                if attempt == RETRIES - 1 or "deadlock" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    # --- reads ---------------------------------------------------------------------

    def read(self, resource_type: str, rid: str) -> Stored:
        """The current version, if the caller may see it (gateway.store.tenancy)."""
        with self.engine.connect() as conn:
            return self.read_in(conn, resource_type, rid, restricted=True)

    def read_in(self, conn: Connection, resource_type: str, rid: str,
                restricted: bool = False) -> Stored:
        """The current version; `restricted` hides what the caller may not see.

        Writes read unrestricted: the tenancy rule judges them when they settle.
        """
        row = conn.execute(
            select(resource_versions)
            .join(resources, and_(resources.c.pk == resource_versions.c.resource_pk,
                                  resources.c.version == resource_versions.c.version))
            .where(resources.c.resource_type == resource_type, resources.c.id == rid,
                   *([tenancy.visible(resources.c.pk)] if restricted else []))
        ).first()
        if row is None:
            raise NotFound(f"Ресурс {resource_type}/{rid} не найден.",
                           f"Resource {resource_type}/{rid} not found.")
        stored = stored_from_row(row, encryption.keyring_of(conn))
        if stored.deleted:
            raise Gone(f"Ресурс {resource_type}/{rid} удалён.",
                       f"Resource {resource_type}/{rid} was deleted.",
                       headers={"ETag": stored.etag})
        return stored

    def vread(self, resource_type: str, rid: str, version: int) -> Stored:
        with self.engine.connect() as conn:
            row = conn.execute(select(resource_versions).where(
                resource_versions.c.resource_type == resource_type,
                resource_versions.c.id == rid,
                resource_versions.c.version == version,
                tenancy.visible(resource_versions.c.resource_pk))).first()
            keyring = encryption.keyring_of(conn)
        if row is None:
            raise NotFound(f"Версия {version} ресурса {resource_type}/{rid} не найдена.",
                           f"Version {version} of {resource_type}/{rid} not found.")
        stored = stored_from_row(row, keyring)
        if stored.deleted:
            raise Gone(f"Версия {version} ресурса {resource_type}/{rid} — удаление.",
                       f"Version {version} of {resource_type}/{rid} is a deletion.")
        return stored

    def find_ids(self, conn: Connection, resource_type: str,
                 condition: list[tuple[str, str | None, str]]) -> list[str]:
        """Ids of live resources matching every (param, system, code) token condition.

        The query starts from the token index (its (type, param, code, system) index),
        so finding one СНИЛС costs the same among a thousand or a million resources.
        """
        query = select(resources.c.id).where(resources.c.resource_type == resource_type,
                                             resources.c.deleted.is_(False))
        for number, (param, system, code) in enumerate(condition):
            if param == "_id":
                query = query.where(resources.c.id == code)
                continue
            token = search_token.alias(f"t{number}")
            query = query.join(token, and_(
                token.c.resource_pk == resources.c.pk, token.c.resource_type == resource_type,
                token.c.param == param, token.c.code == code,
                *([token.c.system == system] if system is not None else [])))
        return list(dict.fromkeys(conn.execute(query.limit(2)).scalars()))

    # --- writes --------------------------------------------------------------------

    def match(self, conn: Connection, resource_type: str, condition) -> str | None:
        """The id of the one live resource matching a condition, locking the condition.

        The lock is held until the transaction ends, so a writer that finds nothing
        can create without another writer of the same condition slipping in.
        """
        self._lock(conn, resource_type, condition)
        matches = self.find_ids(conn, resource_type, condition)
        if len(matches) > 1:
            raise PreconditionFailed(
                "Условию соответствует несколько ресурсов: уточните условие.",
                "The condition matched more than one resource.")
        return matches[0] if matches else None

    def create(self, conn: Connection, resource: dict,
               condition: list[tuple[str, str | None, str]] | None = None,
               rid: str | None = None) -> WriteResult:
        """Create (id assigned by the server unless given); with a condition, the match wins."""
        resource_type = resource["resourceType"]
        if condition:
            found = self.match(conn, resource_type, condition)
            if found:
                return self.existing(conn, self.read_in(conn, resource_type, found),
                                       "matched")
        return self._insert_new(conn, resource, rid or str(uuid.uuid4()), "POST")

    def update(self, conn: Connection, resource: dict, rid: str,
               if_match: int | None = None) -> WriteResult:
        """Update, or create with the given id (create-on-update)."""
        check_id(rid)
        resource_type = resource["resourceType"]
        if resource.get("id") not in (None, rid):
            raise Conflict("Идентификатор ресурса в теле не совпадает с идентификатором в URL.",
                           f"Resource id {resource.get('id')!r} does not match URL id {rid!r}.",
                           expression=f"{resource_type}.id")
        current = self._lock_row(conn, resource_type, rid)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"Ресурс {resource_type}/{rid} не существует, а If-Match задан.",
                    f"If-Match given but {resource_type}/{rid} does not exist.")
            return self._insert_new(conn, resource, rid, "PUT")
        pk, version, deleted = current
        if if_match is not None and if_match != version:
            raise PreconditionFailed(
                f"Версия устарела: текущая версия {version}, в If-Match указана {if_match}. "
                "Прочитайте ресурс заново и повторите изменение.",
                f"Version conflict: current version is {version}, If-Match names {if_match}.")
        if not deleted:
            previous = self.read_in(conn, resource_type, rid)
            if _same_content(previous.content, resource):
                return self.existing(conn, previous, "unchanged")
        stored = self._write_version(conn, pk, resource, rid, version + 1, "PUT")
        return WriteResult(stored, "updated", self._queue(conn, stored))

    def conditional_update(self, conn: Connection, resource: dict,
                           condition: list[tuple[str, str | None, str]]) -> WriteResult:
        found = self.match(conn, resource["resourceType"], condition)
        return self.update(conn, resource, found or resource.get("id") or str(uuid.uuid4()))

    def delete(self, conn: Connection, resource_type: str, rid: str) -> WriteResult | None:
        """Logical delete: a new, empty version marked deleted. None if nothing to delete."""
        current = self._lock_row(conn, resource_type, rid)
        if current is None:
            return None
        pk, version, deleted = current
        if deleted:
            return None
        tenancy.touched(conn, pk, resource_type, rid, None, existed=True)
        now = self.change_time(conn)
        conn.execute(insert(resource_versions).values(
            resource_pk=pk, resource_type=resource_type, id=rid, version=version + 1,
            last_updated=now, method="DELETE", deleted=True, content=None))
        conn.execute(update(resources).where(resources.c.pk == pk).values(
            version=version + 1, last_updated=now, deleted=True))
        self._unindex(conn, pk)
        stored = Stored(resource_type, rid, version + 1, now, True, None)
        return WriteResult(stored, "deleted", self._queue(conn, stored))

    # --- the change clock (see "Change order" above) ---------------------------------

    def _hold_clock(self, conn: Connection) -> datetime:
        """Lock the change clock until the transaction ends; the latest change's time."""
        query = select(change_clock.c.last_updated).where(change_clock.c.id == 1)
        if not self.sqlite:
            query = query.with_for_update()
        latest = conn.execute(query).scalar()
        if latest is None:                      # a database emptied by hand (or by tests)
            dialect_insert = sqlite_insert if self.sqlite else postgresql_insert
            conn.execute(dialect_insert(change_clock).values(id=1, last_updated=EPOCH)
                         .on_conflict_do_nothing())
            latest = conn.execute(query).scalar_one()
        return latest

    def change_time(self, conn: Connection) -> datetime:
        """The time of every change this transaction makes: after all earlier ones."""
        now = conn.info.get(CLOCK_KEY)
        if now is None:
            now = max(utcnow(), self._hold_clock(conn) + TICK)
            conn.execute(update(change_clock).where(change_clock.c.id == 1)
                         .values(last_updated=now))
            conn.info[CLOCK_KEY] = now
        return now

    # --- internals -----------------------------------------------------------------

    @staticmethod
    def _queue(conn: Connection, stored: Stored) -> str | None:
        """The outbox entry of a change, written in the change's own transaction."""
        return submissions.record(conn, [_change(stored)], stored.last_updated)[0]

    @staticmethod
    def existing(conn: Connection, stored: Stored, outcome: str) -> WriteResult:
        """A write that changed nothing, pointing at the resource's latest submission.

        The caller sees the stored resource in the answer, so the tenancy rule
        checks it may (gateway.store.tenancy).
        """
        pk = conn.execute(select(resources.c.pk).where(
            resources.c.resource_type == stored.resource_type,
            resources.c.id == stored.id)).scalar_one()
        tenancy.touched(conn, pk, stored.resource_type, stored.id, stored.content,
                        existed=True, written=False)
        return WriteResult(stored, outcome,
                           submissions.latest(conn, stored.resource_type, stored.id))

    def _insert_new(self, conn: Connection, resource: dict, rid: str,
                    method: str) -> WriteResult:
        return self.create_many(conn, [(resource, rid)], method)[0]

    def create_many(self, conn: Connection, items: list[tuple[dict, str]],
                    method: str = "POST") -> list[WriteResult]:
        """Create several new resources with given ids in a handful of statements.

        A transaction Bundle of 1,000 entries costs the same few multi-row INSERTs
        as one entry, instead of ten statements per resource.
        """
        if not items:
            return []
        now = self.change_time(conn)
        pks = conn.execute(
            insert(resources).returning(resources.c.pk, sort_by_parameter_order=True),
            [{"resource_type": r["resourceType"], "id": rid, "version": 1, "last_updated": now,
              "deleted": False} for r, rid in items]).scalars().all()
        for pk, (resource, rid) in zip(pks, items, strict=True):
            tenancy.touched(conn, pk, resource["resourceType"], rid, resource, existed=False)
        contents = [_with_meta(resource, rid, 1, now) for resource, rid in items]
        keyring = encryption.keyring_of(conn)      # content and key_id (encryption at rest)
        conn.execute(insert(resource_versions), [
            {"resource_pk": pk, "resource_type": c["resourceType"], "id": c["id"], "version": 1,
             "last_updated": now, "method": method, "deleted": False,
             **keyring.sealed(_dump(c), c["resourceType"], c["id"], 1)}
            for pk, c in zip(pks, contents, strict=True)])
        self._index(conn, list(zip(pks, contents, strict=True)))
        written = [Stored(c["resourceType"], c["id"], 1, now, False, c) for c in contents]
        queued = submissions.record(conn, [_change(s) for s in written], now)
        return [WriteResult(s, "created", sid) for s, sid in zip(written, queued, strict=True)]

    def _write_version(self, conn: Connection, pk: int, resource: dict, rid: str,
                       version: int, method: str) -> Stored:
        """A new version (> 1) of an existing resource."""
        tenancy.touched(conn, pk, resource["resourceType"], rid, resource, existed=True)
        now = self.change_time(conn)
        content = _with_meta(resource, rid, version, now)
        conn.execute(insert(resource_versions).values(
            resource_pk=pk, resource_type=content["resourceType"], id=rid, version=version,
            last_updated=now, method=method, deleted=False,
            **encryption.keyring_of(conn).sealed(_dump(content), content["resourceType"], rid,
                                                 version)))
        conn.execute(update(resources).where(resources.c.pk == pk).values(
            version=version, last_updated=now, deleted=False))
        self._unindex(conn, pk)
        self._index(conn, [(pk, content)])
        return Stored(content["resourceType"], rid, version, now, False, content)

    @staticmethod
    def _unindex(conn: Connection, pk: int) -> None:
        for table in INDEX_TABLES.values():
            conn.execute(delete(table).where(table.c.resource_pk == pk))

    @staticmethod
    def _index(conn: Connection, written: list[tuple[int, dict]]) -> None:
        """Insert the search-index rows of freshly written versions, one INSERT per table."""
        by_kind: dict[str, list[dict]] = {}
        for pk, content in written:
            for kind, param, values in indexing.extract(content):
                by_kind.setdefault(kind, []).append(
                    {"resource_pk": pk, "resource_type": content["resourceType"],
                     "param": param, **dict(zip(INDEX_COLUMNS[kind], values, strict=True))})
        for kind, rows in by_kind.items():
            conn.execute(insert(INDEX_TABLES[kind]), rows)

    def _lock_row(self, conn: Connection, resource_type: str, rid: str):
        query = select(resources.c.pk, resources.c.version, resources.c.deleted).where(
            resources.c.resource_type == resource_type, resources.c.id == rid)
        if not self.sqlite:
            query = query.with_for_update()
        return conn.execute(query).first()

    def _lock(self, conn: Connection, resource_type: str, condition) -> None:
        """Serialise writers of the same condition (SQLite is serialised already)."""
        if self.sqlite:
            return
        key = resource_type + "?" + "&".join(f"{p}={s}|{c}" for p, s, c in sorted(
            condition, key=lambda t: (t[0], t[1] or "", t[2])))
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                     {"key": key})

    def count(self, resource_type: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(resources).where(
                resources.c.resource_type == resource_type,
                resources.c.deleted.is_(False))).scalar_one()


def check_id(rid: str) -> None:
    if not ID_PATTERN.match(rid):
        raise InvalidRequest(
            "Недопустимый идентификатор ресурса: 1–64 символа из латинских букв, цифр, "
            "«-» и «.».", "Invalid resource id: 1-64 characters [A-Za-z0-9-.].")


def _with_meta(resource: dict, rid: str, version: int, now: datetime) -> dict:
    content = dict(resource)
    content["id"] = rid
    meta = dict(content.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(now)
    content["meta"] = meta
    # keep resourceType, id, meta first, as FHIR JSON usually shows them
    head = {k: content.pop(k) for k in ("resourceType", "id", "meta")}
    return {**head, **content}


def _without_server_meta(resource: dict | None) -> dict:
    resource = dict(resource or {})
    meta = {k: v for k, v in (resource.pop("meta", None) or {}).items()
            if k not in ("versionId", "lastUpdated")}
    resource.pop("id", None)
    if meta:
        resource["meta"] = meta
    return resource


def _same_content(stored: dict | None, incoming: dict) -> bool:
    return _without_server_meta(stored) == _without_server_meta(incoming)


def _change(stored: Stored) -> submissions.Change:
    return submissions.Change(stored.resource_type, stored.id, stored.version, stored.content)


def _dump(content: dict) -> str:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def stored_from_row(row, keyring: encryption.Keyring = encryption.PLAIN) -> Stored:
    """A Stored from a full `resource_versions` row; `keyring`: encryption.keyring_of(conn)
    (without it, a row sealed at rest is refused with an error naming its key)."""
    content = keyring.load_row(row)
    return Stored(row.resource_type, row.id, row.version, row.last_updated, row.deleted,
                  content)
