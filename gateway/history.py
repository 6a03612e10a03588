"""FHIR history (`_history` of a resource, a type or the whole server), paged and fit for sync.

    pairs --parse--> HistoryRequest --read(conn)--> changes --bundle--> history Bundle

Newest first, as FHIR orders history. The first page fixes a horizon: the
newest change its snapshot sees (gateway.store.changes). Its `next` link carries
that horizon and the last change shown, so the following pages hold exactly the
older changes, whatever is written meanwhile.

Incremental sync. Every page's `meta.lastUpdated` is the sync point of the
first page: one millisecond after the newest change it could see. Changes
commit in the order of their times (gateway.store.repository, "Change order"),
so everything before the sync point was in the pages, and everything committed
later has a time at or after it. A regional system that follows `next` to the
end and then asks `_since=<that meta.lastUpdated>` (FHIR's `_since` is "at or
after") gets every later change exactly once. The same holds for search with
`_lastUpdated=gt<the newest lastUpdated seen>`, for current versions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy.engine import Connection

from gateway.errors import InvalidRequest, NotFound
from gateway.search import cursor
from gateway.store import changes
from gateway.store.changes import Change, Horizon
from gateway.store.clock import instant
from gateway.store.indexing import date_range

CURSOR = "_cursor"
DEFAULT_COUNT = 50
MAX_COUNT = 1000
RENDERING = ("_format", "_pretty")
UNSUPPORTED = ("_at", "_list", "_sort")


@dataclass(frozen=True)
class HistoryRequest:
    resource_type: str | None       # None: the whole server
    rid: str | None                 # one resource
    since: datetime | None
    count: int
    horizon: Horizon | None = None  # fixed by the first page
    below: int | None = None        # the last change the previous page showed


def parse(resource_type: str | None, rid: str | None, pairs: list[tuple[str, str]],
          lenient: bool, secret: bytes) -> HistoryRequest:
    """The request as understood: `_since`, `_count`, or a `_cursor` carrying both."""
    names = {name for name, _ in pairs if name not in RENDERING}
    if CURSOR in names:
        if names != {CURSOR} or sum(name == CURSOR for name, _ in pairs) > 1:
            raise InvalidRequest("Курсор страницы уже содержит запрос: не добавляйте к нему "
                                 "других параметров.",
                                 "A paging cursor carries its query; send it alone.",
                                 expression=CURSOR)
        return _from_cursor(dict(pairs)[CURSOR], secret, resource_type, rid)
    since, count = None, DEFAULT_COUNT
    for name, value in pairs:
        if name == "_since":
            since = _instant(value)
        elif name == "_count":
            count = _count(value)
        elif name in RENDERING or (lenient and name not in UNSUPPORTED):
            continue
        else:
            raise InvalidRequest(f"Параметр «{name[:64]}» не поддерживается историей: "
                                 "допустимы _since и _count.",
                                 f"History does not support {name[:64]!r}; "
                                 "use _since and _count.", expression=name[:64])
    return HistoryRequest(resource_type, rid, since, count)


def read(conn: Connection, request: HistoryRequest) -> tuple[HistoryRequest, list[Change],
                                                              bool, int | None]:
    """One page: (the request with its horizon, changes, whether more follow, total).

    `total` is given for one resource's history only: counting a type's or the
    server's whole feed would cost a scan on every page.
    """
    pk = None
    if request.rid is not None:
        pk = changes.resource_pk(conn, request.resource_type, request.rid)
        if pk is None:
            raise NotFound(f"Ресурс {request.resource_type}/{request.rid} не найден.",
                           f"Resource {request.resource_type}/{request.rid} not found.")
    if request.horizon is None:
        request = replace(request, horizon=changes.horizon(conn))
    found = changes.page(conn, upto=request.horizon.seq, count=request.count + 1,
                         resource_type=request.resource_type, pk=pk, since=request.since,
                         below=request.below)
    total = changes.count(conn, upto=request.horizon.seq, pk=pk, since=request.since) \
        if pk is not None else None
    return request, found[:request.count], len(found) > request.count, total


def bundle(request: HistoryRequest, found: list[Change], more: bool, total: int | None,
           base: str, self_url: str, next_url: str | None) -> dict:
    result: dict = {"resourceType": "Bundle",
                    "meta": {"lastUpdated": instant(request.horizon.sync_point)},
                    "type": "history"}
    if total is not None:
        result["total"] = total
    result["link"] = [{"relation": "self", "url": self_url}]
    if more and next_url:
        result["link"].append({"relation": "next", "url": next_url})
    if found:
        result["entry"] = [_entry(base, change) for change in found]
    return result


def history(conn: Connection, resource_type: str | None, rid: str | None,
            pairs: list[tuple[str, str]], *, lenient: bool, secret: bytes, base: str,
            keep: tuple[tuple[str, str], ...] = ()) -> dict:
    """The history Bundle answering `pairs` at `base/[type/[id/]]_history`."""
    request = parse(resource_type, rid, pairs, lenient, secret)
    token = dict(pairs).get(CURSOR)
    request, found, more, total = read(conn, request)
    url = "/".join(part for part in (base, resource_type, rid, "_history") if part)
    if token:
        self_url = f"{url}?{urlencode([(CURSOR, token), *keep])}"
    else:
        shown = [(n, v) for n, v in pairs if n in ("_since", "_count")] + list(keep)
        self_url = f"{url}?{urlencode(shown)}" if shown else url
    next_url = None
    if more and found:
        following = replace(request, below=found[-1].seq)
        next_url = f"{url}?{urlencode([(CURSOR, _to_cursor(following, secret)), *keep])}"
    return bundle(request, found, more, total, base, self_url, next_url)


def _entry(base: str, change: Change) -> dict:
    stored = change.stored
    path = f"{stored.resource_type}/{stored.id}"
    entry: dict = {"fullUrl": f"{base}/{path}"}
    if stored.content is not None:
        entry["resource"] = stored.content
    entry["request"] = {"method": change.method,
                        "url": stored.resource_type if change.method == "POST" else path}
    status = "204" if stored.deleted else "201" if stored.version == 1 else "200"
    entry["response"] = {"status": status, "etag": stored.etag,
                         "lastModified": instant(stored.last_updated)}
    return entry


# --- parameters and cursors ------------------------------------------------------------

def _instant(value: str) -> datetime:
    text = value.strip().replace(" ", "+")          # "+03:00" arrives as " 03:00"
    covered = date_range(text) if "T" in text else None
    if covered is None:
        raise InvalidRequest("_since — момент времени с часовым поясом, например "
                             "2026-11-23T10:00:00.000+03:00.",
                             "_since must be an instant with a time zone, e.g. "
                             "2026-11-23T10:00:00.000+03:00.", expression="_since")
    return covered[0]


def _count(value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest("_count — целое неотрицательное число.",
                             "_count must be a non-negative integer.", expression="_count")
    return min(int(value[:7]), MAX_COUNT)


def _to_cursor(request: HistoryRequest, secret: bytes) -> str:
    return cursor.seal({"kind": "history", "t": request.resource_type, "i": request.rid,
                        "s": request.since.isoformat() if request.since else None,
                        "c": request.count, "u": request.horizon.seq,
                        "l": request.horizon.latest.isoformat(), "b": request.below}, secret)


def _from_cursor(token: str, secret: bytes, resource_type: str | None,
                 rid: str | None) -> HistoryRequest:
    payload = cursor.unseal(token, secret)
    try:
        if payload["kind"] != "history" or (payload["t"], payload["i"]) != (resource_type, rid):
            raise cursor.refused()
        return HistoryRequest(
            resource_type, rid,
            datetime.fromisoformat(payload["s"]) if payload["s"] else None,
            int(payload["c"]),
            Horizon(int(payload["u"]), datetime.fromisoformat(payload["l"])),
            int(payload["b"]))
    except (KeyError, TypeError, ValueError):
        raise cursor.refused() from None
