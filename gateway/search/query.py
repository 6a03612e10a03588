"""A parsed search as SQL, run on one connection (SQLAlchemy Core; SQLite and PostgreSQL).

Every condition is a semi-join into an index table through its
(resource_type, param, value...) index: `resources.pk IN (SELECT resource_pk FROM
search_token WHERE resource_type = :t AND param = :p AND code = :c ...)`. Values are
always bound parameters; LIKE patterns escape `%`, `_` and `\\`. Nothing is
filtered in Python, and deleted resources have no index rows and are excluded by
`resources.deleted`.

Paging is keyset pagination, never OFFSET. The order is the `_sort` keys, then
`resources.pk` (creation order, which never changes) as the tie-breaker; without
`_sort` it is `pk` alone. A page asks for the rows strictly after (or, for
`previous`, before) the position the cursor holds, so its cost does not grow with
depth. A parameter sorted on may have several values per resource (a name has a
family and givens): ascending uses the smallest value (a date's earliest start),
descending the largest (a date's latest end); resources with no value come last
in both directions.

String prefix search compares `value >= :prefix AND value < :prefix_successor`
in binary order (COLLATE "C" on PostgreSQL, backed by an index in that collation;
SQLite's default collation is binary), which is exactly "starts with" for the
lower-cased, ё→е values the index holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, case, exists, false, func, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from gateway.issues import Issue
from gateway.search.cursor import Position
from gateway.search.params import (
    Clause,
    DateValue,
    Include,
    QuantityValue,
    Reference,
    SearchRequest,
    SortKey,
    Token,
)
from gateway.store.encryption import keyring_of
from gateway.store.schema import INDEX_TABLES, resource_versions, resources, search_reference
from gateway.store.tenancy import visible

INCLUDE_LIMIT = 1000        # included resources per page, all includes together
_SORT_COLUMN = {"string": "value", "token": "code", "quantity": "value"}


@dataclass
class Match:
    pk: int
    resource_type: str
    id: str
    keys: tuple
    content: dict | None = None


@dataclass
class Page:
    matches: list[Match] = field(default_factory=list)
    included: list[Match] = field(default_factory=list)
    total: int | None = None
    has_next: bool = False
    has_previous: bool = False
    warnings: list[Issue] = field(default_factory=list)


def run(conn: Connection, request: SearchRequest, position: Position | None = None) -> Page:
    """One page of a search: matches, included resources and the total, as asked."""
    page = Page()
    where = filters(conn, request.resource_type, request.clauses)
    if request.total or request.summary == "count":
        page.total = conn.execute(select(func.count()).select_from(resources)
                                  .where(*where)).scalar_one()
    if request.summary == "count" or request.count == 0:
        return page
    rows = _page_rows(conn, request, where, position)
    previous = position is not None and position.direction == "previous"
    more = len(rows) > request.count
    rows = rows[:request.count]
    if previous:
        rows.reverse()
    page.matches = [Match(row.pk, request.resource_type, row.id,
                          tuple(row[f"k{i}"] for i in range(len(request.sort))))
                    for row in (r._mapping for r in rows)]
    page.has_next = (more and not previous) or (previous and position is not None)
    page.has_previous = (more and previous) or (not previous and position is not None)
    _load_contents(conn, page.matches)
    _include(conn, request, page)
    return page


# --- conditions -------------------------------------------------------------------

def filters(conn: Connection, resource_type: str, clauses) -> list[ColumnElement]:
    postgres = conn.dialect.name == "postgresql"
    return [*_live(resources, resource_type, clauses, postgres), visible(resources.c.pk),
            *(_clause(resource_type, clause, resources, postgres) for clause in clauses)]


def _live(row, resource_type: str, clauses, postgres: bool) -> list[ColumnElement]:
    """Rows of the type, not deleted; on SQLite, led by the index tables where possible.

    Without statistics (nobody runs ANALYZE on the embedded database) SQLite would
    walk every resource of the type and probe the index subqueries. When a clause
    looks values up in an index table, `resource_type || ''` keeps SQLite from using
    the type's index on `resources`, so it starts from the index table and fetches
    resources by primary key. PostgreSQL plans from its statistics.
    """
    lookups = [c for c in clauses if c.param.name != "_lastUpdated"
               and c.modifier not in ("missing", "not")]
    by_index = not postgres and bool(lookups) and all(c.param.name != "_id" for c in clauses)
    kind = row.c.resource_type + "" if by_index else row.c.resource_type
    return [kind == resource_type, row.c.deleted.is_(False)]


def _clause(resource_type: str, clause: Clause, row, postgres: bool) -> ColumnElement:
    param = clause.param
    if param.name == "_id":
        return row.c.id.in_(clause.values)
    if param.name == "_lastUpdated":
        return or_(*(_instant(row.c.last_updated, v) for v in clause.values))
    # A fresh alias per clause, so nested subqueries never correlate with each other.
    table = INDEX_TABLES[param.kind].alias()
    rows_of_param = and_(table.c.resource_type == resource_type, table.c.param == param.name)
    if clause.chain is not None:
        target = resources.alias()
        targets = select(target.c.id).where(
            *_live(target, clause.target, [clause.chain], postgres), visible(target.c.pk),
            _clause(clause.target, clause.chain, target, postgres))
        return row.c.pk.in_(select(table.c.resource_pk).where(
            rows_of_param, table.c.target_type == clause.target, table.c.target_id.in_(targets)))
    if clause.modifier == "missing":
        present = exists().where(table.c.resource_pk == row.c.pk, table.c.param == param.name)
        return ~present if clause.missing else present
    matching = or_(*(_value(table, param, v, clause, postgres) for v in clause.values))
    if clause.modifier == "not":
        return ~exists().where(table.c.resource_pk == row.c.pk, table.c.param == param.name,
                               matching)
    return row.c.pk.in_(select(table.c.resource_pk).where(rows_of_param, matching))


def _value(table, param, value, clause: Clause, postgres: bool) -> ColumnElement:
    if isinstance(value, Token):
        conditions = [table.c.code == value.code] if value.code is not None else []
        if not value.any_system:
            conditions.append(table.c.system.is_(None) if value.system is None
                              else table.c.system == value.system)
        return and_(*conditions)
    if isinstance(value, str):
        return _string(table.c.value, value, clause.modifier, postgres)
    if isinstance(value, DateValue):
        return _date(table.c.low, table.c.high, value)
    if isinstance(value, QuantityValue):
        return _quantity(table, value)
    if isinstance(value, Reference):
        if value.type is not None:
            return and_(table.c.target_id == value.id, table.c.target_type == value.type)
        if param.targets:
            return and_(table.c.target_id == value.id,
                        or_(table.c.target_type.in_(param.targets),
                            table.c.target_type.is_(None)))
        return table.c.target_id == value.id
    raise TypeError(value)


def _string(column, value: str, modifier: str | None, postgres: bool) -> ColumnElement:
    if modifier == "exact":
        return column == value
    if modifier == "contains":
        return column.like("%" + _like_escape(value) + "%", escape="\\")
    binary = column.collate("C") if postgres else column
    successor = _successor(value)
    if successor is None:
        return column.like(_like_escape(value) + "%", escape="\\")
    return and_(binary >= value, binary < successor)


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`."""
    point = ord(prefix[-1]) + 1
    if point == 0xD800:
        point = 0xE000
    if point > 0x10FFFF:
        return None
    return prefix[:-1] + chr(point)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date(low, high, value: DateValue) -> ColumnElement:
    """FHIR R4 date comparison of the resource's range [low, high] with the value's.

    A missing low or high is an open end (a Period without an end goes on).
    """
    start, end = value.low, value.high
    inside = and_(low.is_not(None), low >= start, high.is_not(None), high <= end)
    after = or_(high.is_(None), high > end)
    before = or_(low.is_(None), low < start)
    return {
        "eq": inside,
        "ne": or_(low.is_(None), low < start, high.is_(None), high > end),
        "gt": after,
        "lt": before,
        "ge": or_(after, inside),
        "le": or_(before, inside),
        "sa": and_(low.is_not(None), low > end),
        "eb": and_(high.is_not(None), high < start),
    }[value.prefix]


def _instant(column, value: DateValue) -> ColumnElement:
    """`_date` for a column that always holds one instant (meta.lastUpdated).

    Plain range comparisons, so the (resource_type, last_updated) index serves a
    sync poll (`_lastUpdated=gt…`) however many resources the type has.
    """
    start, end = value.low, value.high
    return {
        "eq": and_(column >= start, column <= end),
        "ne": or_(column < start, column > end),
        "gt": column > end, "sa": column > end,
        "lt": column < start, "eb": column < start,
        "ge": column >= start, "le": column <= end,
    }[value.prefix]


def _quantity(table, value: QuantityValue) -> ColumnElement:
    column, number = table.c.value, value.number
    compare = {
        "eq": and_(column >= value.low, column < value.high),
        "ne": or_(column < value.low, column >= value.high),
        "gt": column > number, "sa": column > number,
        "lt": column < number, "eb": column < number,
        "ge": column >= number, "le": column <= number,
    }[value.prefix]
    conditions = [compare]
    if value.system is not None:
        conditions.append(table.c.system == value.system)
    if value.code is not None:
        conditions.append(table.c.code == value.code)
    return and_(*conditions)


# --- the page ---------------------------------------------------------------------

def _sort_expression(key: SortKey):
    param = key.param
    if param.name == "_id":
        return resources.c.id, False
    if param.name == "_lastUpdated":
        return resources.c.last_updated, False
    table = INDEX_TABLES[param.kind].alias()
    if param.kind == "date":
        column = table.c.high if key.descending else table.c.low
    else:
        column = table.c[_SORT_COLUMN[param.kind]]
    pick = func.max if key.descending else func.min
    return select(pick(column)).where(table.c.resource_pk == resources.c.pk,
                                      table.c.param == param.name).scalar_subquery(), True


def _page_rows(conn: Connection, request: SearchRequest, where, position: Position | None):
    expressions = [_sort_expression(key) for key in request.sort]
    inner = select(resources.c.pk, resources.c.id,
                   *(e.label(f"k{i}") for i, (e, _) in enumerate(expressions))) \
        .where(*where).subquery("matched")
    # (expression, descending, nullable-flag?) in order; flags put "no value" last.
    components: list[tuple] = []
    for i, (key, (_, nullable)) in enumerate(zip(request.sort, expressions, strict=True)):
        column = inner.c[f"k{i}"]
        if nullable:
            components.append((case((column.is_(None), 1), else_=0), False, ("flag", i)))
        components.append((column, key.descending, ("value", i)))
    components.append((inner.c.pk, False, ("pk", None)))
    backwards = position is not None and position.direction == "previous"
    query = select(inner)
    if position is not None:
        query = query.where(_keyset(components, position, backwards))
    order = [(expr.desc() if desc != backwards else expr.asc()) for expr, desc, _ in components]
    return conn.execute(query.order_by(*order).limit(request.count + 1)).all()


def _keyset(components, position: Position, backwards: bool) -> ColumnElement:
    """Rows strictly after (before) the position in the page order: the keyset predicate.

    For components c1..cn with the position's values v1..vn this is
    (c1 > v1) OR (c1 = v1 AND c2 > v2) OR ... with > turned to < for descending
    components (and for backwards paging). A key the position's row had no value
    for is equal to every row's missing value and has nothing after it.
    """
    alternatives, equal = [], []
    for expr, descending, (role, index) in components:
        if role == "flag":
            value = 1 if position.keys[index] is None else 0
        elif role == "value":
            value = position.keys[index]
            if value is None:
                continue
        else:
            value = position.pk
        later = descending != backwards
        if role == "pk" and position.inclusive:
            step = expr <= value if later else expr >= value
        else:
            step = expr < value if later else expr > value
        alternatives.append(and_(*equal, step))
        equal.append(expr == value)
    return or_(*alternatives) if alternatives else true()


# What a body's decryption needs (gateway.store.encryption.Keyring.open_row).
_BODY = (resource_versions.c.resource_type, resource_versions.c.id,
         resource_versions.c.version, resource_versions.c.content, resource_versions.c.key_id)


def _load_contents(conn: Connection, matches: list[Match]) -> None:
    by_pk = {m.pk: m for m in matches}
    if not by_pk:
        return
    rows = conn.execute(
        select(resource_versions.c.resource_pk, *_BODY)
        .join(resources, and_(resources.c.pk == resource_versions.c.resource_pk,
                              resources.c.version == resource_versions.c.version))
        .where(resources.c.pk.in_(list(by_pk))))
    keyring = keyring_of(conn)                  # bodies may be encrypted at rest
    for row in rows:
        by_pk[row.resource_pk].content = keyring.load_row(row)


# --- _include and _revinclude -----------------------------------------------------

def _include(conn: Connection, request: SearchRequest, page: Page) -> None:
    if not page.matches or not (request.includes or request.revincludes):
        return
    seen = {(m.resource_type, m.id) for m in page.matches}
    pks = [m.pk for m in page.matches]
    ids = [m.id for m in page.matches]
    keyring = keyring_of(conn)                  # bodies may be encrypted at rest
    for include in request.includes:
        if not _add(page, seen, conn.execute(_forward(conn, request.resource_type, include, pks)
                                             .order_by(resources.c.pk)
                                             .limit(_room(page, seen))), keyring):
            return
    for include in request.revincludes:
        if not _add(page, seen, conn.execute(_reverse(request.resource_type, include, ids,
                                                      conn.dialect.name == "postgresql")
                                             .order_by(resources.c.pk)
                                             .limit(_room(page, seen))), keyring):
            return


def _room(page: Page, seen: set) -> int:
    """Rows to ask for: what still fits, one more to notice the limit, and any repeats."""
    return INCLUDE_LIMIT - len(page.included) + 1 + len(seen)


def _add(page: Page, seen: set, rows, keyring) -> bool:
    """Add included rows not yet in the Bundle; False once the limit is reached."""
    for row in rows:
        if len(page.included) == INCLUDE_LIMIT:
            page.warnings.append(Issue(
                "too-costly", f"Включено не больше {INCLUDE_LIMIT} связанных ресурсов на "
                              "страницу: уменьшите _count.",
                f"At most {INCLUDE_LIMIT} included resources per page; lower _count.",
                severity="warning"))
            return False
        if (row.resource_type, row.id) not in seen:
            seen.add((row.resource_type, row.id))
            page.included.append(Match(row.pk, row.resource_type, row.id, (),
                                       keyring.load_row(row)))
    return True


def _with_content():
    """Included resources with their content: only those the caller may see."""
    return select(resources.c.pk, *_BODY).join(
        resource_versions, and_(resource_versions.c.resource_pk == resources.c.pk,
                                resource_versions.c.version == resources.c.version)) \
        .where(visible(resources.c.pk))


def _forward(conn: Connection, resource_type: str, include: Include, pks: list[int]):
    """The resources the page's matches point to through one reference parameter."""
    ref = search_reference
    allowed = [include.target] if include.target else list(include.param.targets)
    # `resource_type || ''`: start from the page's rows (the resource_pk index), never
    # from every reference of the type (SQLite has no statistics to tell them apart).
    pairs = conn.execute(select(ref.c.target_type, ref.c.target_id).distinct().where(
        ref.c.resource_pk.in_(pks), ref.c.resource_type + "" == resource_type,
        ref.c.param == include.param.name, ref.c.target_type.is_not(None),
        *([ref.c.target_type.in_(allowed)] if allowed else []))).all()
    by_type: dict[str, list[str]] = {}
    for target_type, target_id in pairs:
        by_type.setdefault(target_type, []).append(target_id)
    if not by_type:
        return _with_content().where(false())
    # Targets by their (type, id) key first: asked directly, with the ORDER BY pk the
    # caller adds, SQLite would rather walk the type's rows in pk order.
    target = resources.alias()
    targets = select(target.c.pk).where(or_(*(
        and_(target.c.resource_type == t, target.c.id.in_(ids)) for t, ids in by_type.items())))
    return _with_content().where(resources.c.deleted.is_(False), resources.c.pk.in_(targets))


def _reverse(resource_type: str, include: Include, ids: list[str], postgres: bool):
    """The resources of `include.source` whose reference parameter points to the matches."""
    ref = search_reference
    kind = resources.c.resource_type if postgres else resources.c.resource_type + ""
    return _with_content().where(
        kind == include.source, resources.c.deleted.is_(False),
        resources.c.pk.in_(select(ref.c.resource_pk).where(
            ref.c.resource_type == include.source, ref.c.param == include.param.name,
            ref.c.target_type == resource_type, ref.c.target_id.in_(ids))))

