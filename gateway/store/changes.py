"""The change feed: every version ever written, in commit order, for `_history` and sync.

`resource_versions.seq` numbers changes in the order they committed, and change
times never go back (gateway.store.repository, "Change order"). So a reader's
snapshot holds every change up to its `Horizon` and none after it, and a feed
read newest first below a fixed horizon is a stable list: pages read later
neither skip nor repeat a change, whatever is written meanwhile (newer changes
are above the horizon, for the next poll).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from gateway.store.encryption import keyring_of
from gateway.store.repository import EPOCH, TICK, Stored, stored_from_row
from gateway.store.schema import change_clock, resource_versions, resources
from gateway.store.tenancy import visible


@dataclass(frozen=True)
class Horizon:
    """What a snapshot holds: the changes up to `seq`, made before `sync_point`."""

    seq: int
    latest: datetime                # the time of the newest change (the clock)

    @property
    def sync_point(self) -> datetime:
        """The earliest time a change not yet visible can have: the next `_since`."""
        return self.latest + TICK


@dataclass(frozen=True)
class Change:
    seq: int
    method: str                     # POST | PUT | DELETE
    stored: Stored


def horizon(conn: Connection) -> Horizon:
    """The newest change this snapshot sees (read in the same snapshot as the pages)."""
    seq = conn.execute(select(func.max(resource_versions.c.seq))).scalar()
    latest = conn.execute(select(change_clock.c.last_updated)
                          .where(change_clock.c.id == 1)).scalar()
    return Horizon(seq or 0, latest or EPOCH)


def resource_pk(conn: Connection, resource_type: str, rid: str) -> int | None:
    """The primary key of a resource the caller may see; None otherwise."""
    return conn.execute(select(resources.c.pk).where(
        resources.c.resource_type == resource_type, resources.c.id == rid,
        visible(resources.c.pk))).scalar()


def page(conn: Connection, *, upto: int, count: int, resource_type: str | None = None,
         pk: int | None = None, since: datetime | None = None,
         below: int | None = None) -> list[Change]:
    """Up to `count` changes at or below `upto` (and below `below`), newest first.

    Narrowed to one type, or to one resource by its `resources.pk`, and to
    changes at or after `since`. Each form is one index range: (resource_type,
    seq), (resource_pk, version) or the primary key. Only changes of resources the
    caller may see (gateway.store.tenancy).
    """
    query = select(resource_versions).where(resource_versions.c.seq <= upto,
                                            visible(resource_versions.c.resource_pk))
    if below is not None:
        query = query.where(resource_versions.c.seq < below)
    if pk is not None:
        query = query.where(resource_versions.c.resource_pk == pk)
    elif resource_type is not None:
        query = query.where(resource_versions.c.resource_type == resource_type)
    if since is not None:
        query = query.where(resource_versions.c.last_updated >= since)
    rows = conn.execute(query.order_by(resource_versions.c.seq.desc()).limit(count)).all()
    keyring = keyring_of(conn)
    return [Change(row.seq, row.method, stored_from_row(row, keyring)) for row in rows]


def count(conn: Connection, *, upto: int, pk: int, since: datetime | None = None) -> int:
    """How many versions of one resource the feed holds (`total` of an instance history)."""
    query = select(func.count()).select_from(resource_versions).where(
        resource_versions.c.resource_pk == pk, resource_versions.c.seq <= upto)
    if since is not None:
        query = query.where(resource_versions.c.last_updated >= since)
    return conn.execute(query).scalar_one()
