"""How fast regional systems can read: reads, typical searches and history at 100,000 resources.

Run by hand, never from the test suite:

    .venv/bin/python bench/read.py                       # SQLite, 100,000 resources
    .venv/bin/python bench/read.py --count 20000 --seconds 5
    .venv/bin/python bench/read.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

For each database (a new SQLite file; with `--postgres`, also a new database made on
that server and dropped at the end):

  1. `--count` resources are written through the store's write path in transactions of
     1,000 (untimed; the search index is filled as on any write): 1% Organizations,
     the rest Practitioners and PractitionerRoles half and half, every role at one of
     the organizations, names drawn from common Russian surnames and given names;
  2. a real `gateway serve` (one process, 4 threads, no delivery worker) serves that
     database; the client is this process over HTTP on loopback, `--clients` threads
     with keep-alive sessions, each row run for `--seconds`;
  3. rows: read by id; three typical searches (a worker by СНИЛС, workers by family-name
     prefix with the page of 50, a clinic's staff list with practitioners included);
     a sync poll (`_lastUpdated=gt…` sorted, page of 100); a history page.

Each row runs twice: one client alone (requests/s and the client-side p50/p95 latency
in milliseconds, the latency a regional system sees) and `--clients` at once (requests/s
the server sustains on this machine, and p95 with queueing). The aim line is search p95
under 50 ms at 100,000 resources, one client. Then one bulk `$export` job of the
whole database runs in a fresh process (bench/export.py's child: resources/s and
peak memory, its own, against the 200 MB aim).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import export as export_bench
import requests
from live_server import Server, new_postgres_database

FAMILIES = ["Иванов", "Смирнов", "Кузнецов", "Попов", "Васильев", "Петров", "Соколов",
            "Михайлов", "Новиков", "Фёдоров", "Морозов", "Волков", "Алексеев", "Лебедев",
            "Семёнов", "Егоров", "Павлов", "Козлов", "Степанов", "Николаев", "Орлов",
            "Андреев", "Макаров", "Никитин", "Захаров", "Зайцев", "Соловьёв", "Борисов",
            "Яковлев", "Григорьев", "Романов", "Воробьёв", "Сергеев", "Кузьмин", "Фролов"]
GIVEN = ["Александр", "Сергей", "Дмитрий", "Андрей", "Алексей", "Мария", "Елена", "Ольга",
         "Наталья", "Татьяна", "Ирина", "Анна", "Михаил", "Иван", "Екатерина"]
SNILS = "urn:oid:1.2.643.100.3"
FRMO = "urn:oid:1.2.643.5.1.13.13.11.1461"
PER_TRANSACTION = 1000
AIM_P95_MS = 50.0


# --- the register -------------------------------------------------------------------------

def snils(n: int) -> str:
    first9 = f"{100_000_000 + n:09d}"
    total = sum(int(d) * (9 - i) for i, d in enumerate(first9)) % 101
    return first9 + f"{0 if total == 100 else total:02d}"


def organization(n: int) -> dict:
    return {"resourceType": "Organization", "active": True, "name": f"Поликлиника № {n}",
            "identifier": [{"system": FRMO, "value": f"1.2.643.5.1.13.13.12.2.77.{10000 + n}"}],
            "address": [{"state": "77", "city": "Москва"}]}


def practitioner(n: int, rng: random.Random) -> dict:
    family = rng.choice(FAMILIES)
    given = rng.choice(GIVEN)
    female = given in ("Мария", "Елена", "Ольга", "Наталья", "Татьяна", "Ирина", "Анна",
                       "Екатерина")
    return {"resourceType": "Practitioner", "active": True,
            "identifier": [{"system": SNILS, "value": snils(n)}],
            "name": [{"family": family + ("а" if female else ""), "given": [given]}],
            "gender": "female" if female else "male",
            "birthDate": f"{1950 + n % 50}-{1 + n % 12:02d}-{1 + n % 28:02d}"}


def role(n: int, practitioner_id: str, organization_id: str) -> dict:
    return {"resourceType": "PractitionerRole", "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
            "organization": {"reference": f"Organization/{organization_id}"},
            "code": [{"coding": [{"system": "urn:oid:1.2.643.5.1.13.13.11.1002",
                                  "code": str(100 + n % 60)}]}],
            "period": {"start": f"20{10 + n % 15}-09-01"}}


def fill(url: str, data_dir: Path, count: int, seed: int = 1) -> tuple[float, int, int]:
    """Write the register; (seconds, organizations, practitioners)."""
    from gateway.app import create_app

    app = create_app({"data_dir": str(data_dir), "database_url": url, "log_level": "WARNING"})
    store = app.extensions["gateway"].store
    rng = random.Random(seed)
    organizations = max(1, count // 100)
    practitioners = (count - organizations) // 2
    items: list[tuple[dict, str]] = [(organization(n), f"org-{n}") for n in range(organizations)]
    for n in range(practitioners):
        items.append((practitioner(n, rng), f"prac-{n}"))
        items.append((role(n, f"prac-{n}", f"org-{n % organizations}"), f"role-{n}"))
    started = time.perf_counter()
    for first in range(0, len(items), PER_TRANSACTION):
        with store.write() as conn:
            store.create_many(conn, items[first:first + PER_TRANSACTION])
    seconds = time.perf_counter() - started
    store.engine.dispose()
    return seconds, organizations, practitioners


# --- timing -------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def run_row(label: str, server: Server, make_url: Callable[[random.Random], str],
            clients: int, seconds: float) -> Row:
    """`clients` threads asking `make_url(rng)` for `seconds`, one keep-alive session each."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        rng = random.Random(number)
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {server.token}",
                                "Accept": "application/fhir+json"})
        mine, bad = [], 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = session.get(server.base + make_url(rng), timeout=60)
            mine.append((time.perf_counter() - started) * 1000)
            bad += response.status_code != 200
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Row(label, len(latencies), time.perf_counter() - started, latencies, failures[0])


def rows_for(server: Server, organizations: int, practitioners: int, clients: int,
             seconds: float) -> list[tuple[Row, Row]]:
    """Per kind of request: (one client alone: latency, `clients` at once: throughput)."""
    families = FAMILIES

    def read(rng):
        return f"/fhir/Practitioner/prac-{rng.randrange(practitioners)}"

    def by_snils(rng):
        return f"/fhir/Practitioner?identifier={SNILS}|{snils(rng.randrange(practitioners))}"

    def by_family(rng):
        return f"/fhir/Practitioner?family={rng.choice(families)[:4]}&_count=50"

    def staff(rng):
        return (f"/fhir/PractitionerRole?organization=Organization/org-"
                f"{rng.randrange(organizations)}&_include=PractitionerRole:practitioner"
                "&_count=100")

    since = "2000-01-01T00:00:00Z"

    def sync(rng):
        return f"/fhir/Practitioner?_lastUpdated=gt{since}&_sort=_lastUpdated&_count=100"

    def history(rng):
        return "/fhir/Practitioner/_history?_count=100"

    work = [("read Practitioner/{id}", read),
            ("search identifier=СНИЛС", by_snils),
            ("search family=<prefix>, page of 50", by_family),
            ("search clinic staff + _include", staff),
            ("sync _lastUpdated=gt… sorted, 100", sync),
            ("history Practitioner, 100", history)]
    for label, make in work:                                   # warm caches and pools
        run_row(label, server, make, 1, 0.5)
    return [(run_row(label, server, make, 1, seconds),
             run_row(label, server, make, clients, seconds)) for label, make in work]


# --- databases ----------------------------------------------------------------------------

def measure(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    seconds, organizations, practitioners = fill(url, data_dir, args.count)
    print(f"\n## {label}: {args.count:,} resources written in {seconds:.0f} s "
          f"({organizations:,} organizations, {practitioners:,} practitioners and roles)")
    server = Server(database_url=url, threads=4, prefix="gateway-bench-read-")
    server.env["GATEWAY_EMBEDDED_WORKER"] = "false"            # reads only: no delivery
    with server:
        rows = rows_for(server, organizations, practitioners, args.clients, args.seconds)
    print(f"| row ({args.seconds:.0f} s each) | 1 client: requests/s | p50 ms | p95 ms | "
          f"{args.clients} clients: requests/s | p95 ms | failed |")
    print("|---|---|---|---|---|---|---|")
    for alone, together in rows:
        print(f"| {alone.label} | {alone.rate:,.0f} | {alone.percentile(0.5):.1f} | "
              f"{alone.percentile(0.95):.1f} | {together.rate:,.0f} | "
              f"{together.percentile(0.95):.1f} | {alone.failures + together.failures} |")
    worst = max(alone.percentile(0.95) for alone, _ in rows if alone.label.startswith("search"))
    print(f"search p95 aim (one client): < {AIM_P95_MS:.0f} ms at 100,000 resources; worst "
          f"search p95 here {worst:.1f} ms ({worst / AIM_P95_MS:.2f} of the aim)")
    # Export of the same database, in a fresh process so its peak memory is its own.
    export_bench.report(export_bench.in_child(label, "--export", url, str(data_dir)),
                        args.count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a new database is made)")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{args.count:,} resources, server: gateway serve --workers 1 --threads 4")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-read-") as tmp:
        measure("SQLite", f"sqlite:///{Path(tmp) / 'read.sqlite3'}", Path(tmp) / "sqlite", args)
        if args.postgres:
            url, drop = new_postgres_database(args.postgres, "gw_bench_read_")
            try:
                measure("PostgreSQL", url, Path(tmp) / "postgres", args)
            finally:
                drop()
    print("\nMedians are over all requests of a row; latencies are client-side over "
          "loopback HTTP, JSON included.", file=sys.stderr)


if __name__ == "__main__":
    main()
