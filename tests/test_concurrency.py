"""Concurrent writes over a real HTTP server (`gateway serve`: gunicorn, several worker
processes with several threads each), on SQLite and on PostgreSQL.

Twenty parallel conditional creates of the same СНИЛС must leave exactly one
Practitioner — a known failure of HAPI FHIR, Microsoft FHIR Server and Medplum.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from gateway.store.database import make_engine
from gateway.store.schema import resources
from tests.conftest import empty_postgres, load_fixture

pytestmark = pytest.mark.slow
SNILS_SYSTEM = "urn:oid:1.2.643.2.69.1.1.1.6.223"
PARALLEL = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(database_url, tmp_path):
    """`gateway serve` in a subprocess; yields (base_url, token)."""
    port = _free_port()
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path / "data"),
           "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LOG_LEVEL": "WARNING"}
    log = open(tmp_path / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "4", "--threads", "4"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        token = _read_token(process)
        base = f"http://127.0.0.1:{port}"
        _wait_until_healthy(base, process, Path(log.name))
        yield base, token
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()
        log.close()
        engine = make_engine(database_url)
        empty_postgres(engine)
        engine.dispose()


def _read_token(process) -> str:
    for _ in range(20):
        line = process.stdout.readline()
        if line.startswith("gw_"):
            return line.strip()
        if not line and process.poll() is not None:
            break
    raise RuntimeError("gateway serve printed no bootstrap token")


def _wait_until_healthy(base: str, process, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not become healthy: {log.read_text()}")


def _count(database_url: str, resource_type: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(resources).where(
                resources.c.resource_type == resource_type)).scalar_one()
    finally:
        engine.dispose()


def _in_parallel(send, n: int = PARALLEL) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: send(), range(n)))


def test_parallel_conditional_creates_of_one_snils_leave_exactly_one(live_server,
                                                                      database_url):
    base, token = live_server
    practitioner = load_fixture("valid/practitioner-ivanova.json")
    practitioner.pop("id")
    snils = next(i["value"] for i in practitioner["identifier"] if i["system"] == SNILS_SYSTEM)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
               "If-None-Exist": f"identifier={SNILS_SYSTEM}|{snils}"}
    body = json.dumps(practitioner, ensure_ascii=False).encode()

    responses = _in_parallel(lambda: requests.post(f"{base}/fhir/Practitioner", data=body,
                                                   headers=headers, timeout=60))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (PARALLEL - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert _count(database_url, "Practitioner") == 1


def test_parallel_conditional_updates_of_one_snils_leave_exactly_one(live_server,
                                                                      database_url):
    base, token = live_server
    practitioner = load_fixture("valid/practitioner-sokolov.json")
    practitioner.pop("id")
    snils = next(i["value"] for i in practitioner["identifier"] if i["system"] == SNILS_SYSTEM)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    url = f"{base}/fhir/Practitioner?identifier={SNILS_SYSTEM}|{snils}"
    body = json.dumps(practitioner, ensure_ascii=False).encode()

    responses = _in_parallel(lambda: requests.put(url, data=body, headers=headers, timeout=60))

    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert [r.status_code for r in responses].count(201) == 1
    assert _count(database_url, "Practitioner") == 1


def test_parallel_updates_with_the_same_if_match_let_exactly_one_win(live_server):
    base, token = live_server
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    organization = load_fixture("valid/organization-msk-clinic.json")
    created = requests.put(f"{base}/fhir/Organization/{organization['id']}",
                           data=json.dumps(organization), headers=headers, timeout=30).json()

    def update(n: int):
        changed = {**created, "name": f"{created['name']} (вариант {n})"}
        return requests.put(f"{base}/fhir/Organization/{created['id']}",
                            data=json.dumps(changed), timeout=60,
                            headers={**headers, "If-Match": 'W/"1"'})

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(update, range(10)))

    assert sorted(r.status_code for r in responses) == [200] + [412] * 9
    final = requests.get(f"{base}/fhir/Organization/{created['id']}", headers=headers,
                         timeout=30).json()
    assert final["meta"]["versionId"] == "2"
