"""Reading the store for exports: every live resource of a type as of one instant.

Used by `$export` jobs (gateway.export.bulk) and by `gateway export`. Memory does
not grow with the number of resources: a type is read in keyset pages of `BATCH`
rows (`resources.pk > last`, one short query each, no transaction held between
them), and each row's stored JSON text is handed on as it is (decrypted, if it is
encrypted at rest: gateway.store.encryption), never parsed.
Only resources the caller may see are read (gateway.store.tenancy: a job runs
with the access of the client that asked for it).

Consistency: `latest_change` is the time of the latest committed change (the
change clock; gateway.store.repository "Change order" explains why every change
up to it is then visible). Reading "as of" it, a resource changed or deleted
while an export runs comes in its version as of then, so it appears exactly
once, and one created later does not appear.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection, Engine

from gateway.store.clock import utcnow
from gateway.store.encryption import keyring_of
from gateway.store.schema import change_clock, resource_versions, resources
from gateway.store.tenancy import visible

BATCH = 1000                     # rows per query: the unit of memory and of cancellation


def latest_change(engine: Engine) -> datetime:
    """The time of the latest committed change: every change up to it is visible now.

    Without the clock's row (a database emptied by hand) nothing can be newer than now.
    """
    with engine.connect() as conn:
        latest = conn.execute(select(change_clock.c.last_updated).where(
            change_clock.c.id == 1)).scalar()
    return latest or utcnow()


def count(engine: Engine, resource_type: str, since: datetime | None = None) -> int:
    """Live resources of a type (changed after `since`): the total a progress bar shows."""
    query = select(func.count()).select_from(resources).where(
        resources.c.resource_type == resource_type, resources.c.deleted.is_(False),
        visible(resources.c.pk))
    if since is not None:
        query = query.where(resources.c.last_updated > since)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def batches(engine: Engine, resource_type: str, as_of: datetime,
            since: datetime | None = None, size: int = BATCH) -> Iterator[list[tuple[str, str]]]:
    """The live resources of a type as of `as_of`, as (id, JSON text), a batch per page.

    Keyset pages in `resources.pk` order: each page is one short query (no
    transaction is held between pages) and each resource comes once. A resource
    changed after `as_of` comes in its version as of then, or not at all if it did
    not exist or was deleted then.
    """
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(_page(resource_type, after, as_of, since, size)).all()
            older = _versions_as_of(conn, [r.pk for r in rows if r.last_updated > as_of],
                                    as_of)
            keyring = keyring_of(conn)          # bodies may be encrypted at rest
        batch = []
        for row in rows:
            if row.last_updated <= as_of:
                batch.append((row.id, keyring.open_row(row)))
            elif row.pk in older and (since is None or older[row.pk][0] > since):
                batch.append((row.id, older[row.pk][1]))
        yield batch
        if len(rows) < size:
            return
        after = rows[-1].pk


def _page(resource_type: str, after: int, as_of: datetime, since: datetime | None,
          size: int):
    """One keyset page of a type's resources with their current version's content.

    The page is limited before contents are joined to it, so each page joins
    `size` rows whatever plan the statistics suggest (on a freshly filled
    PostgreSQL table a join-then-limit sorted every remaining row on each page).
    """
    page = select(resources.c.pk, resources.c.id, resources.c.version,
                  resources.c.last_updated).where(
        resources.c.resource_type == resource_type, resources.c.pk > after,
        visible(resources.c.pk),            # only what the caller may see (tenancy)
        # deleted ones only if deleted after as_of (they were live then)
        or_(resources.c.deleted.is_(False), resources.c.last_updated > as_of),
    ).order_by(resources.c.pk).limit(size)
    if since is not None:
        page = page.where(resources.c.last_updated > since)
    page = page.subquery()
    return select(page.c.pk, page.c.id, page.c.last_updated, resource_versions.c.resource_type,
                  resource_versions.c.version, resource_versions.c.content,
                  resource_versions.c.key_id) \
        .join(resource_versions, and_(resource_versions.c.resource_pk == page.c.pk,
                                      resource_versions.c.version == page.c.version)) \
        .order_by(page.c.pk)


def _versions_as_of(conn: Connection, pks: list[int],
                    as_of: datetime) -> dict[int, tuple[datetime, str]]:
    """Per resource, its latest version at `as_of` if it was live then: (time, content)."""
    if not pks:
        return {}
    rows = conn.execute(select(resource_versions.c.resource_pk, resource_versions.c.deleted,
                               resource_versions.c.last_updated, resource_versions.c.resource_type,
                               resource_versions.c.id, resource_versions.c.version,
                               resource_versions.c.content, resource_versions.c.key_id)
                        .where(resource_versions.c.resource_pk.in_(pks),
                               resource_versions.c.last_updated <= as_of)
                        .order_by(resource_versions.c.resource_pk,
                                  resource_versions.c.version.desc())).all()
    found: dict[int, tuple[datetime, str] | None] = {}
    keyring = keyring_of(conn)
    for row in rows:
        if row.resource_pk not in found:
            found[row.resource_pk] = None if row.deleted else (row.last_updated,
                                                               keyring.open_row(row))
    return {pk: value for pk, value in found.items() if value is not None}
