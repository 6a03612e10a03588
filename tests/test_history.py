"""History and incremental sync: `_history` of a resource, a type and the server.

What a regional system relies on: history Bundles newest first with request and
response entries (deletes included), `_since` and `_count`, cursor pages that
neither skip nor repeat, and a sync point (`meta.lastUpdated`) from which the
next poll gets every later change exactly once, even while writers commit
concurrently and hold their transactions open.
"""
from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from lxml import etree
from sqlalchemy import select

from gateway.store.schema import resource_versions
from tests.delivery_data import organization, practitioner

JSON = "application/fhir+json"


def get(client, auth, url: str, status: int = 200, **headers) -> dict:
    response = client.get(url, headers={**auth, **headers})
    assert response.status_code == status, response.json
    return response.json


def changes_of(bundle: dict) -> list[tuple[str, str, str]]:
    """(method, Type/id, versionId) of each entry."""
    return [(e["request"]["method"], e["fullUrl"].split("/fhir/")[1],
             e["response"]["etag"][3:-1]) for e in bundle.get("entry", [])]


def walk(client, auth, url: str) -> tuple[list[dict], list[dict]]:
    """Every page of a history, following `next`: (pages, entries)."""
    pages, entries = [], []
    while url:
        parts = urlsplit(url)
        page = get(client, auth, f"{parts.path}?{parts.query}" if parts.query else parts.path)
        pages.append(page)
        entries += page.get("entry", [])
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    return pages, entries


@pytest.fixture
def written(client, auth, put):
    """Two practitioners and an organization, one practitioner updated, one deleted."""
    put(practitioner(1))
    put(organization(1))
    put(practitioner(2))
    changed = practitioner(1)
    changed["active"] = False
    put(changed)
    assert client.delete("/fhir/Practitioner/prac-2", headers=auth).status_code == 204


# --- the Bundles ----------------------------------------------------------------------

def test_type_history_lists_every_change_of_the_type_newest_first(client, auth, written):
    bundle = get(client, auth, "/fhir/Practitioner/_history")
    assert bundle["type"] == "history"
    assert changes_of(bundle) == [("DELETE", "Practitioner/prac-2", "2"),
                                  ("PUT", "Practitioner/prac-1", "2"),
                                  ("PUT", "Practitioner/prac-2", "1"),
                                  ("PUT", "Practitioner/prac-1", "1")]
    deletion, update = bundle["entry"][0], bundle["entry"][1]
    assert "resource" not in deletion
    assert deletion["request"] == {"method": "DELETE", "url": "Practitioner/prac-2"}
    assert deletion["response"]["status"] == "204"
    assert update["resource"]["active"] is False
    created = bundle["entry"][3]
    assert created["request"] == {"method": "PUT", "url": "Practitioner/prac-1"}
    assert created["response"]["status"] == "201"
    assert update["response"]["lastModified"] == update["resource"]["meta"]["lastUpdated"]


def test_a_created_version_is_answered_as_created(client, auth, post):
    created = post(practitioner(5)).json
    entry = get(client, auth, "/fhir/Practitioner/_history")["entry"][0]
    assert entry["request"] == {"method": "POST", "url": "Practitioner"}
    assert entry["response"]["status"] == "201"
    assert entry["resource"]["id"] == created["id"]


def test_system_history_holds_every_type(client, auth, written):
    bundle = get(client, auth, "/fhir/_history")
    assert [c[1] for c in changes_of(bundle)] == [
        "Practitioner/prac-2", "Practitioner/prac-1", "Practitioner/prac-2",
        "Organization/org-1", "Practitioner/prac-1"]


def test_instance_history_counts_its_versions(client, auth, written):
    bundle = get(client, auth, "/fhir/Practitioner/prac-1/_history")
    assert bundle["total"] == 2
    assert [c[2] for c in changes_of(bundle)] == ["2", "1"]
    get(client, auth, "/fhir/Practitioner/nobody/_history", status=404)


def test_history_of_an_unsupported_type_is_not_found(client, auth):
    get(client, auth, "/fhir/Basic/_history", status=404)


def test_since_keeps_the_changes_at_or_after_the_instant(client, auth, put, written):
    everything = get(client, auth, "/fhir/Practitioner/_history")["entry"]
    third_oldest = everything[1]["response"]["lastModified"]
    since = get(client, auth, f"/fhir/Practitioner/_history?_since={third_oldest}")
    assert changes_of(since) == changes_of({"entry": everything[:2]})
    moscow = datetime.fromisoformat(third_oldest).astimezone(timezone(timedelta(hours=3)))
    assert moscow.isoformat().endswith("+03:00")
    in_moscow = client.get("/fhir/Practitioner/_history",
                           query_string={"_since": moscow.isoformat()}, headers=auth).json
    assert changes_of(in_moscow) == changes_of(since)


@pytest.mark.parametrize("query", ["_since=2026-01-01", "_since=yesterday", "_count=-1",
                                   "_count=ten", "_at=2026-01-01T00:00:00Z", "_sort=_id",
                                   "name=Иванов"])
def test_a_wrong_history_parameter_is_refused_with_an_outcome(client, auth, query):
    outcome = get(client, auth, f"/fhir/_history?{query}", status=400)
    assert outcome["resourceType"] == "OperationOutcome"


def test_an_unknown_parameter_is_ignored_when_the_client_prefers_lenient(client, auth, written):
    lenient = get(client, auth, "/fhir/_history?name=Иванов", Prefer="handling=lenient")
    assert len(lenient["entry"]) == 5
    get(client, auth, "/fhir/_history?_at=2026-01-01T00:00:00Z", status=400,
        Prefer="handling=lenient")


def test_history_bundles_are_valid_fhir_xml(client, auth, written, fhir_schema):
    for url in ("/fhir/_history?_count=2", "/fhir/Practitioner/_history?_format=xml",
                "/fhir/Practitioner/prac-2/_history"):
        response = client.get(url, headers={**auth, "Accept": "application/fhir+xml"})
        assert response.status_code == 200
        assert response.mimetype == "application/fhir+xml"
        fhir_schema.assertValid(etree.fromstring(response.data))


# --- paging and sync ------------------------------------------------------------------

def test_pages_hold_every_change_once_while_writes_go_on(client, auth, put, written):
    first = get(client, auth, "/fhir/_history?_count=2")
    sync_point = first["meta"]["lastUpdated"]
    put(practitioner(7))                                       # after the first page
    pages, entries = [first], list(first["entry"])
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    more_pages, more = walk(client, auth, url)
    pages += more_pages
    entries += more
    assert [len(p.get("entry", [])) for p in pages] == [2, 2, 1]
    assert {p["meta"]["lastUpdated"] for p in pages} == {sync_point}
    assert [c[1] for c in changes_of({"entry": entries})] == [
        "Practitioner/prac-2", "Practitioner/prac-1", "Practitioner/prac-2",
        "Organization/org-1", "Practitioner/prac-1"]
    later = get(client, auth, f"/fhir/_history?_since={sync_point}".replace("+", "%2B"))
    assert changes_of(later) == [("PUT", "Practitioner/prac-7", "1")]


def test_a_changed_cursor_is_refused(client, auth, written):
    first = get(client, auth, "/fhir/_history?_count=1")
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    token = url.split("_cursor=")[1]
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    get(client, auth, f"/fhir/_history?_cursor={tampered}", status=400)
    get(client, auth, f"/fhir/Practitioner/_history?_cursor={token}", status=400)
    get(client, auth, f"/fhir/_history?_cursor={token}&_count=5", status=400)


def test_search_by_last_updated_sees_each_change_after_the_last_seen_once(client, auth, put):
    put(practitioner(1))
    seen = get(client, auth, "/fhir/Practitioner?_sort=_lastUpdated")["entry"]
    newest = seen[-1]["resource"]["meta"]["lastUpdated"]
    put(practitioner(2))
    changed = practitioner(1)
    changed["active"] = False
    put(changed)
    later = client.get("/fhir/Practitioner", query_string={
        "_lastUpdated": f"gt{newest}", "_sort": "_lastUpdated"}, headers=auth).json
    assert [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in later["entry"]] \
        == [("prac-2", "1"), ("prac-1", "2")]


def test_change_times_increase_with_the_commit_order(app, put):
    for n in range(20):
        put(practitioner(n))
    with app.extensions["gateway"].engine.connect() as conn:
        rows = conn.execute(select(resource_versions.c.seq, resource_versions.c.last_updated)
                            .order_by(resource_versions.c.seq)).all()
    times = [row.last_updated for row in rows]
    assert times == sorted(times)
    assert len(set(times)) == len(times)


def test_concurrent_writers_never_make_a_poller_miss_or_repeat_a_change(app, client, auth):
    """Writers commit at random moments, some holding their transaction open for a while;
    a poller asks `_since=<sync point>` and follows `next` again and again. It must end
    with every change exactly once, and so must a poller of `_lastUpdated=gt`."""
    services = app.extensions["gateway"]
    store, resources = services.store, services.resources
    writers, per_writer = 4, 15
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for n in range(per_writer):
                person = practitioner(worker * 100 + n)
                if rng.random() < 0.3:
                    # a slow transaction: it takes its time early and commits late
                    with store.write() as conn:
                        store.update(conn, resources.prepare(person, "Practitioner"),
                                     person["id"])
                        time.sleep(rng.uniform(0.01, 0.05))
                else:
                    resources.update(person, "Practitioner", person["id"], None)
                if n % 5 == 4:
                    person["active"] = False
                    resources.update(person, "Practitioner", person["id"], None)
                time.sleep(rng.uniform(0, 0.01))
        except BaseException as exc:               # noqa: BLE001 - reported by the test
            errors.append(exc)

    seen_history: list[tuple[str, str]] = []
    seen_search: list[tuple[str, str]] = []

    def poll_history(sync_point: str | None) -> str:
        url = "/fhir/Practitioner/_history?_count=7" + \
            (f"&_since={sync_point}".replace("+", "%2B") if sync_point else "")
        pages, entries = walk(client, auth, url)
        seen_history.extend((e["resource"]["id"], e["resource"]["meta"]["versionId"])
                            for e in entries)
        return pages[0]["meta"]["lastUpdated"]

    def poll_search(newest: str | None) -> str | None:
        query = {"_sort": "_lastUpdated", "_count": "9"}
        if newest:
            query["_lastUpdated"] = f"gt{newest}"
        url = "/fhir/Practitioner?" + "&".join(
            f"{k}={v}".replace("+", "%2B") for k, v in query.items())
        _, entries = walk(client, auth, url)
        seen_search.extend((e["resource"]["id"], e["resource"]["meta"]["versionId"])
                           for e in entries)
        return entries[-1]["resource"]["meta"]["lastUpdated"] if entries else newest

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    sync_point, newest = None, None
    while any(thread.is_alive() for thread in threads):
        sync_point = poll_history(sync_point)
        newest = poll_search(newest)
    for thread in threads:
        thread.join()
    sync_point = poll_history(sync_point)                      # the last changes
    poll_search(newest)
    assert not errors

    with services.engine.connect() as conn:
        stored = sorted((row.id, str(row.version)) for row in conn.execute(
            select(resource_versions.c.id, resource_versions.c.version)))
    assert len(stored) == writers * (per_writer + per_writer // 5)
    assert sorted(seen_history) == stored                      # every change, once
    # search shows current versions: a version replaced before a poll is never shown
    assert len(seen_search) == len(set(seen_search))
    latest = {}
    for rid, version in stored:
        latest[rid] = max(latest.get(rid, "0"), version, key=int)
    assert {rid: v for rid, v in seen_search if latest[rid] == v} == latest
