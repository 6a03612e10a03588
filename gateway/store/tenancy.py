"""Who may see and change which resources: the tenancy rule, in one place.

Every request runs with an `Access` (set by the API layer from the client; the
worker and the CLI run as `SYSTEM`). The store consults it itself, so no
endpoint can forget it:
- reads: `visible(pk_column)` is a condition on a resource's primary key that
  every read path adds to its query (read, vread, search and its includes and
  chains, history, bulk export, the legacy export, submissions). What a client
  may not see does not exist for it: 404, never 403, so existence does not leak;
- writes: each write records what it touched in the transaction, and `settle`
  runs just before the commit, computes the owners and refuses (403, rolling the
  whole transaction back) a write of another organization's data.

Ownership. A resource belongs to the ФРМО organizations (their OIDs) in
`resource_owners`, for one of three reasons (`source`):
- "content": the resource is an organization with a ФРМО OID, a department of
  one (`partOf`), a PractitionerRole at one, or a record naming one as performer;
- "role": a Practitioner with a live PractitionerRole at the organization;
- "writer": an `mis` client of the organization wrote it (patients and the
  records a clinic submitted name no organization of their own).
An organization's region is its `address[0].state` (the subject code, e.g. 77),
kept in `organization_regions`; a `region` client sees what belongs to an
organization of its region, whenever that organization arrived.

Writes by an `mis` client are refused when:
- an Organization or PractitionerRole names an organization not its own;
- the resource exists and belongs to none of its organizations (a Practitioner
  is also the clinic's when, after the write, he has a role there: a clinic may
  register a doctor who already works elsewhere);
- a conditional create or an unchanged write matched a resource it may not see.
`region` clients and read-only clients never write.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import and_, bindparam, delete, exists, insert, or_, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway.delivery import routing
from gateway.errors import Forbidden
from gateway.store.schema import (
    organization_regions,
    resource_owners,
    resources,
    search_reference,
)
from gateway.validation import systems

T = TypeVar("T")
CONTENT, ROLE, WRITER = "content", "role", "writer"
PENDING_KEY = "gateway.tenancy.pending"     # conn.info: what this transaction touched
STRUCTURE = ("Organization", "PractitionerRole")
# The search-index references by which resources name an organization.
NAMING_ORGANIZATIONS = (("Organization", "partof"), ("PractitionerRole", "organization"),
                        ("Immunization", "performer"), ("DiagnosticReport", "performer"))
_CLAIMED_BY = {"Organization": "Organization.identifier", "PractitionerRole":
               "PractitionerRole.organization"}


@dataclass(frozen=True)
class Access:
    """What the current caller may see and change."""

    role: str                               # system | admin | mis | region
    organizations: frozenset[str] = frozenset()
    region: str | None = None
    can_write: bool = True
    label: str = ""                         # who, for messages (the client's name)

    @property
    def unrestricted(self) -> bool:
        return self.role in ("system", "admin")

    @classmethod
    def of(cls, client) -> Access:
        """The access of an API client (gateway.store.clients.Client)."""
        return cls(client.role, frozenset(client.organizations), client.region,
                   client.can_write, client.name)


SYSTEM = Access("system", label="gateway")
NOBODY = Access("mis", can_write=False, label="anonymous")   # sees and writes nothing

# The access of the code running now. Outside a request (worker, CLI) it is SYSTEM;
# the API layer sets it for every request, NOBODY until the client is known.
current_access: ContextVar[Access] = ContextVar("current_access", default=SYSTEM)


def carrying(chunks: Iterable[T]) -> Iterator[T]:
    """An iterator that reads with the access current now, whenever it is consumed.

    A streamed response is consumed after the request's teardown has restored the
    access of the thread; its lazy reads must still be the client's.
    """
    return _carried(iter(chunks), current_access.get())     # taken now, not when consumed


def _carried(iterator: Iterator[T], access: Access) -> Iterator[T]:
    while True:
        previous = current_access.get()
        current_access.set(access)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            current_access.set(previous)
        yield chunk


# --- reading --------------------------------------------------------------------------

def visible(pk_column, access: Access | None = None) -> ColumnElement:
    """The condition a resource's primary key must meet to be seen by `access`."""
    access = access or current_access.get()
    if access.unrestricted:
        return true()
    return pk_column.in_(owned_pks(access))


def owned_pks(access: Access):
    """SELECT of the primary keys of every resource `access` may see (not unrestricted)."""
    owners = resource_owners
    if access.role == "mis":
        return select(owners.c.resource_pk).where(
            owners.c.organization.in_(sorted(access.organizations)))
    if access.role == "region" and access.region:
        in_region = select(organization_regions.c.organization).where(
            organization_regions.c.region == access.region)
        return select(owners.c.resource_pk).where(owners.c.organization.in_(in_region))
    return select(owners.c.resource_pk).where(owners.c.organization.is_(None))   # nothing


def visible_by_key(type_column, id_column, access: Access | None = None) -> ColumnElement:
    """The same condition for a row naming a resource by (type, id), e.g. a submission."""
    access = access or current_access.get()
    if access.unrestricted:
        return true()
    return exists().where(resources.c.resource_type == type_column,
                          resources.c.id == id_column, resources.c.pk.in_(owned_pks(access)))


# --- writing --------------------------------------------------------------------------

def touched(conn: Connection, pk: int, resource_type: str, rid: str, content: dict | None,
            existed: bool, written: bool = True) -> None:
    """Note a resource this transaction writes (or matched, `written=False`).

    Called before the write changes the search index: the owners and, for a
    role, the practitioner it named are read now, as they were.
    """
    pending = conn.info.setdefault(PENDING_KEY, {})
    if pk in pending:
        sources, linked = pending[pk]["sources"], pending[pk]["linked"]
        written = written or pending[pk]["written"]
    else:
        sources = _owners_by_source(conn, pk) if existed else None
        linked = _practitioners_of_role_pk(conn, pk) \
            if existed and resource_type == "PractitionerRole" else set()
    pending[pk] = {"type": resource_type, "id": rid, "content": content, "sources": sources,
                   "before": set().union(*sources.values()) if sources is not None else None,
                   "written": written, "linked": linked}


def settle(conn: Connection, access: Access | None = None) -> None:
    """Recompute the owners of what this transaction touched, then check the caller may.

    Runs inside the write transaction just before it commits; a refusal raises
    Forbidden and the whole transaction rolls back.
    """
    pending = conn.info.pop(PENDING_KEY, None)
    if not pending:
        return
    access = access or current_access.get()
    written = [pk for pk, item in pending.items() if item["written"]]
    if written and not access.can_write:
        raise Forbidden("Этому клиенту запись запрещена (доступ только на чтение).",
                        "This client may not write (read-only access).")
    practitioners: set[str] = set()
    # Organizations first: what else this transaction wrote may name them.
    order = sorted(pending, key=lambda pk: pending[pk]["type"] != "Organization")
    for pk in order:
        item = pending[pk]
        if not item["written"]:
            continue
        claims = _content_owners(conn, item["type"], item["content"], item["id"])
        if not access.unrestricted:
            _check_claims(access, item["type"], item["id"], claims)
        had = item["sources"] or {}
        _sync(conn, pk, CONTENT, had.get(CONTENT, set()), claims)
        if access.role == "mis":
            writers = had.get(WRITER, set())
            _sync(conn, pk, WRITER, writers, writers | access.organizations)
        if item["type"] == "Organization":
            _set_region(conn, item["content"], claims)
            if claims != had.get(CONTENT, set()):       # what names it may now be its
                _refresh_dependants(conn, item["id"])
        if item["type"] == "Practitioner" and item["sources"] is None:
            practitioners.add(item["id"])       # new: roles may already name him
        if item["type"] == "PractitionerRole":
            practitioners |= _practitioners_named(item["content"]) | item["linked"]
    for rid in practitioners:
        _refresh_practitioner(conn, rid)
    if access.unrestricted:
        return
    for pk, item in pending.items():
        _check_ownership(conn, access, pk, item)


def _check_claims(access: Access, resource_type: str, rid: str, claims: set[str]) -> None:
    """An organization must be the writer's or a department of it; a role must be there.

    The claims of a department hold its own OID and its clinic's, so one of them
    being the writer's is enough; an organization that names none (an employer in
    a medical book) belongs to its writer.
    """
    if resource_type not in STRUCTURE or not claims:
        return
    if claims.isdisjoint(access.organizations):
        raise Forbidden(
            f"{resource_type} относится к чужой организации: клиент может изменять "
            "только данные своих организаций.",
            f"The {resource_type} belongs to another organization; this client may change "
            "only its own organizations' data.", expression=_CLAIMED_BY.get(resource_type))


def _check_ownership(conn: Connection, access: Access, pk: int, item: dict) -> None:
    mine = access.organizations if access.role == "mis" else frozenset()
    before = item["before"]
    if item["written"] and before is not None and before.isdisjoint(mine):
        after = owners_of(conn, pk, sources=(CONTENT, ROLE))
        if not (item["type"] == "Practitioner" and not after.isdisjoint(mine)):
            raise _foreign(item)
    if not item["written"] and owners_of(conn, pk).isdisjoint(mine):
        # Found by a condition the caller gave: name nothing of what was found.
        raise Forbidden("Условию соответствует ресурс другой организации: изменять его этот "
                        "клиент не может.",
                        "The condition matched a resource of another organization; this "
                        "client may not change it.")


def _foreign(item: dict) -> Forbidden:
    """Refusal naming only the type: the id may have been found by a condition."""
    return Forbidden(
        f"{item['type']} принадлежит другой организации: изменять его этот клиент не может.",
        f"The {item['type']} belongs to another organization; this client may not change it.")


# The statements every write runs, built once: building SQLAlchemy expressions costs more
# than running these indexed lookups.
_OWNERS = select(resource_owners.c.source, resource_owners.c.organization).where(
    resource_owners.c.resource_pk == bindparam("pk"))
_OWNERS_OF_RESOURCE = select(resource_owners.c.organization).join(
    resources, resources.c.pk == resource_owners.c.resource_pk).where(
    resources.c.resource_type == bindparam("resource_type"), resources.c.id == bindparam("id"),
    resource_owners.c.source == bindparam("source"))
_NAMING = select(search_reference.c.resource_pk, resources.c.resource_type, resources.c.id) \
    .join(resources, resources.c.pk == search_reference.c.resource_pk).where(
    # each term leads with (resource_type, param, target_id): the index's own order
    or_(*(and_(search_reference.c.resource_type == rtype, search_reference.c.param == param)
          for rtype, param in NAMING_ORGANIZATIONS)),
    search_reference.c.target_id == bindparam("id"),
    search_reference.c.target_type == "Organization", resources.c.deleted.is_(False))


def owners_of(conn: Connection, pk: int, sources: tuple[str, ...] | None = None) -> set[str]:
    return {organization for source, organization in conn.execute(_OWNERS, {"pk": pk})
            if sources is None or source in sources}


def _owners_by_source(conn: Connection, pk: int) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for source, organization in conn.execute(_OWNERS, {"pk": pk}):
        found.setdefault(source, set()).add(organization)
    return found


def _sync(conn: Connection, pk: int, source: str, have: set[str], want) -> None:
    """Make a resource's owners of one source `want`, knowing it has `have`: only changes
    are written (an update that keeps its owners costs no statement)."""
    want = set(want)
    if have - want:
        conn.execute(delete(resource_owners).where(
            resource_owners.c.resource_pk == pk, resource_owners.c.source == source,
            resource_owners.c.organization.in_(sorted(have - want))))
    if want - have:
        conn.execute(insert(resource_owners), [
            {"resource_pk": pk, "organization": oid, "source": source}
            for oid in sorted(want - have)])


def _replace(conn: Connection, pk: int, source: str, organizations) -> None:
    _sync(conn, pk, source, owners_of(conn, pk, sources=(source,)), organizations)


def _add(conn: Connection, pk: int, source: str, organizations) -> None:
    have = owners_of(conn, pk, sources=(source,))
    _sync(conn, pk, source, have, have | set(organizations))


# --- what a resource names ---------------------------------------------------------------

def _content_owners(conn: Connection, resource_type: str, content: dict | None,
                    rid: str) -> set[str]:
    """The organizations a resource's content places it in (ФРМО OIDs)."""
    if content is None:                              # a deletion keeps its owners
        return _current(conn, resource_type, rid, CONTENT)
    if resource_type == "Organization":         # itself, and the clinic it is part of
        own = routing.frmo_oid(content)
        parent = content.get("partOf")
        return ({own} if own else set()) | (
            _organizations(conn, [parent]) if isinstance(parent, dict) else set())
    return _organizations(conn, routing.organization_references(resource_type, content))


def _organizations(conn: Connection, references: list[dict]) -> set[str]:
    """The ФРМО OIDs behind Organization references (literal or by identifier)."""
    found: set[str] = set()
    for reference in references:
        identifier = reference.get("identifier")
        if isinstance(identifier, dict) and identifier.get("system") == systems.FRMO \
                and isinstance(identifier.get("value"), str):
            found.add(identifier["value"].removeprefix("urn:oid:"))
            continue
        literal = reference.get("reference")
        if isinstance(literal, str) and literal.startswith("Organization/"):
            found |= _current(conn, "Organization", literal.split("/")[1], CONTENT)
    return found


def _current(conn: Connection, resource_type: str, rid: str, source: str) -> set[str]:
    return set(conn.execute(_OWNERS_OF_RESOURCE, {"resource_type": resource_type, "id": rid,
                                                  "source": source}).scalars())


def _set_region(conn: Connection, organization: dict | None, claims: set[str]) -> None:
    """Remember the region of an organization with its own ФРМО OID."""
    oid = routing.frmo_oid(organization) if organization else None
    addresses = (organization or {}).get("address") or []
    state = addresses[0].get("state") if addresses and isinstance(addresses[0], dict) else None
    if not oid or not isinstance(state, str):
        return
    if conn.execute(update(organization_regions).where(
            organization_regions.c.organization == oid).values(region=state)).rowcount == 0:
        conn.execute(insert(organization_regions).values(organization=oid, region=state))


def _refresh_dependants(conn: Connection, organization_id: str) -> None:
    """An organization's OID may have arrived after what names it: recompute those."""
    named = conn.execute(_NAMING, {"id": organization_id}).all()
    owners = _current(conn, "Organization", organization_id, CONTENT)
    for pk, resource_type, rid in named:
        if owners - owners_of(conn, pk, sources=(CONTENT,)):
            _add(conn, pk, CONTENT, owners)
            if resource_type == "Organization":           # a department: and what it has
                _refresh_dependants(conn, rid)
            if resource_type == "PractitionerRole":
                for practitioner in _practitioners_of_role_pk(conn, pk):
                    _refresh_practitioner(conn, practitioner)


def _practitioners_named(role: dict | None) -> set[str]:
    reference = (role or {}).get("practitioner") or {}
    literal = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(literal, str) and literal.startswith("Practitioner/"):
        return {literal.split("/")[1]}
    return set()


def _practitioners_of_role_pk(conn: Connection, pk: int) -> set[str]:
    ref = search_reference
    return set(conn.execute(select(ref.c.target_id).where(
        ref.c.resource_pk == pk, ref.c.param == "practitioner",
        ref.c.target_type == "Practitioner")).scalars())


def _refresh_practitioner(conn: Connection, rid: str) -> None:
    """A practitioner belongs to every organization where he has a live role."""
    pk = conn.execute(select(resources.c.pk).where(
        resources.c.resource_type == "Practitioner", resources.c.id == rid)).scalar()
    if pk is None:
        return
    ref, role_owners = search_reference, resource_owners.alias()
    organizations = conn.execute(select(role_owners.c.organization).distinct().join(
        ref, ref.c.resource_pk == role_owners.c.resource_pk).where(
        ref.c.resource_type == "PractitionerRole", ref.c.param == "practitioner",
        ref.c.target_type == "Practitioner", ref.c.target_id == rid,
        role_owners.c.source == CONTENT)).scalars().all()
    _replace(conn, pk, ROLE, organizations)


def rebuild(engine, batch: int = 1000) -> int:
    """Recompute content and role owners of every resource (after an upgrade); the count.

    One short write transaction per batch, so serving goes on meanwhile.
    """
    done, last = 0, 0
    while True:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            rows = conn.execute(select(resources.c.pk, resources.c.resource_type,
                                       resources.c.id).where(resources.c.pk > last)
                                .order_by(resources.c.pk).limit(batch)).all()
            for pk, resource_type, rid in rows:
                touched(conn, pk, resource_type, rid, _content(conn, pk), existed=True)
            settle(conn, SYSTEM)
        if not rows:
            return done
        done, last = done + len(rows), rows[-1].pk


def _content(conn: Connection, pk: int) -> dict | None:
    from gateway.store.repository import stored_from_row
    from gateway.store.schema import resource_versions
    row = conn.execute(select(resource_versions).join(resources, and_(
        resources.c.pk == resource_versions.c.resource_pk,
        resources.c.version == resource_versions.c.version)).where(
        resources.c.pk == pk)).first()
    from gateway.store.encryption import keyring_of  # bodies may be encrypted at rest
    return stored_from_row(row, keyring_of(conn)).content if row is not None else None
