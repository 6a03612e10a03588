"""FHIR search: `GET /fhir/{type}?...` and `POST /fhir/{type}/_search`, from request to Bundle.

    pairs --params.parse--> SearchRequest --query.run(conn)--> Page --bundle--> searchset

- `params`: the request's parameters, checked against the registry (pure);
- `query`: the SQL over the index tables, one page by keyset, includes (one connection);
- `cursor`: the signed, opaque cursors of the `next` and `previous` links (pure);
- `bundle`: the searchset Bundle, `_summary` and `_elements` (pure).

Paging guarantee. Pages are keyset pages over (sort keys, resources.pk): a page
holds the rows after (before) the row the cursor names, as they are when the page
is read. Hence, paging forward through `next` links:
- a resource that matches throughout and whose sort keys do not change appears
  exactly once, whatever is created, updated or deleted meanwhile;
- a resource created meanwhile appears if and only if its position is after the
  cursor (without `_sort` the order is creation order, so new ones come last and
  always appear);
- a resource whose sort key changes (sorting by `_lastUpdated`, or by a value it
  was updated in) appears at its old position if that page was read before the
  change, and again at its new position only if that is after the cursor; it is
  never lost when it moves forward, and may be missed only when it moves back to
  before the cursor. Without `_sort` (or with `_id`) positions never change;
- a deleted resource, or one that no longer matches, is not returned by later pages.
The total is counted when each page is read. Each page, its total and its
includes are read in one snapshot (REPEATABLE READ on PostgreSQL, one read
transaction on SQLite).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlencode

from sqlalchemy.engine import Connection

from gateway.errors import InvalidRequest
from gateway.search import bundle, cursor, params, query
from gateway.search.cursor import Cursor, Position
from gateway.search.params import SearchRequest, parse

CURSOR = "_cursor"
STREAM_PAGE = 1000

__all__ = ["CURSOR", "SearchRequest", "bundle", "cursor", "params", "parse", "query", "search",
           "stream", "streamable"]


def search(conn: Connection, resource_type: str, pairs: list[tuple[str, str]], *,
           lenient: bool, secret: bytes, base: str,
           keep: tuple[tuple[str, str], ...] = (), limits: dict | None = None) -> dict:
    """The searchset Bundle answering `pairs` (a first page, or the page a cursor names).

    `keep` are pairs every link repeats (the client's `_format`); `limits` are
    `params.parse`'s `max_count` and `max_includes`.
    """
    limits = limits or {}
    tokens = [value for name, value in pairs if name == CURSOR]
    if tokens:
        others = sorted({name for name, _ in pairs if name not in (CURSOR, *params.IGNORED_PARAMS)})
        if len(tokens) > 1 or others:
            raise InvalidRequest("Курсор страницы уже содержит запрос: не добавляйте к нему "
                                 "других параметров.",
                                 "A paging cursor carries its query; send it alone "
                                 f"(found also: {', '.join(others) or CURSOR}).",
                                 expression=CURSOR)
        found = cursor.decode(tokens[0], secret, resource_type)
        request, position = parse(resource_type, list(found.query), **limits), found.position
        if len(position.keys) != len(request.sort):
            raise cursor.refused()
    else:
        request, position = parse(resource_type, pairs, lenient, **limits), None
    page = query.run(conn, request, position)
    return bundle.searchset(request, page, base,
                            _links(request, page, position, base, secret, keep))


def streamable(request: SearchRequest) -> SearchRequest:
    """The request, if it can be answered as NDJSON (a count alone cannot)."""
    if request.summary == "count":
        raise InvalidRequest("_summary=count не сочетается с форматом ndjson.",
                             "_summary=count cannot be answered in NDJSON.",
                             expression="_summary")
    return request


def stream(conn: Connection, request: SearchRequest, limited: bool) -> Iterator[dict]:
    """Every resource a search finds, page after page in one snapshot, for NDJSON.

    Matches (shaped by `_summary`/`_elements`) then each page's includes, each
    included resource once. Memory holds one page of `STREAM_PAGE` rows; `_count`,
    when the client gave it (`limited`), caps the number of matches. Check the
    request with `streamable` first: once streaming has begun, an error can no
    longer be answered.
    """
    left = request.count if limited else None
    request = replace(request, count=min(left or STREAM_PAGE, STREAM_PAGE), total=False)
    position, included = None, set()
    while left is None or left > 0:
        page = query.run(conn, request, position)
        matches = page.matches[:left] if left is not None else page.matches
        for match in matches:
            yield bundle.shape(match.content, request)
        for match in page.included:
            if (match.resource_type, match.id) not in included:
                included.add((match.resource_type, match.id))
                yield match.content
        if left is not None:
            left -= len(matches)
        if not page.has_next or not page.matches:
            return
        last = page.matches[-1]
        position = Position("next", last.keys, last.pk)


def _links(request: SearchRequest, page: query.Page, position: Position | None, base: str,
           secret: bytes, keep) -> list[tuple[str, str]]:
    url = f"{base}/{request.resource_type}"

    def at(where: Position) -> str:
        token = cursor.encode(Cursor(request.resource_type, request.query, where), secret)
        return f"{url}?{urlencode([(CURSOR, token), *keep])}"

    if position is None:
        query_string = urlencode([*request.query, *keep])
        links = [("self", f"{url}?{query_string}" if query_string else url)]
    else:
        links = [("self", at(position))]
    first, last = (page.matches[0], page.matches[-1]) if page.matches else (None, None)
    if page.has_next:
        links.append(("next", at(Position("next", last.keys, last.pk)) if last else
                      at(Position("next", position.keys, position.pk, inclusive=True))))
    if page.has_previous:
        links.append(("previous", at(Position("previous", first.keys, first.pk)) if first else
                      at(Position("previous", position.keys, position.pk, inclusive=True))))
    return links
