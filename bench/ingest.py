"""How many resources per second the gateway ingests, against the ceiling of its stack.

Run by hand, never from the test suite:

    .venv/bin/python bench/ingest.py [--n 3000] [--database-url URL]

Every row works on the same workload, a realistic mix of the valid sample
resources in fixtures/valid (directory data once, clinical data two or three
times per round; the DiagnosticReport with the PDF attachment included), each
copy with its `id` removed so the server assigns a new one:

  (a) bare fhir.resources R4B `model_validate`: the ceiling, since every write
      goes through it and nothing in the gateway can be faster;
  (b) the gateway's whole validation (structure, Russian rules, terminology,
      attachments), in process: how much the gateway's own rules cost;
  (c) transaction Bundles of 1,000 entries POSTed to /fhir of the real server
      (gunicorn, 1 worker process, 4 threads) over HTTP: the bulk-load path;
  (d) single creates, POST /fhir/<Type> one by one, from 1 and from 4 client
      threads: the path a clinic's MIS takes for each new record.

Each row is also given as a ratio to (a). The server runs one worker process, so
the figures of (c) and (d) are per core. The client shares the machine with the
server, so "server CPU" shows how busy the server was during each HTTP row.
Nothing here asserts a speed; the numbers are printed for a person to judge.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sqlite3
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import requests
from live_server import Server, timed
from sqlalchemy.engine import make_url

from gateway import fhir
from gateway.validation import ValidationContext, validate
from gateway.validation.terminology import load_shipped

PROJECT_DIR = Path(__file__).resolve().parents[1]
FIXTURES_DIR = PROJECT_DIR / "fixtures" / "valid"

# Copies of each fixture of a type per round of the mix: a clinic sends far more
# clinical records than directory entries.
WEIGHTS = {"Organization": 1, "Practitioner": 1, "PractitionerRole": 1, "Patient": 2,
           "Immunization": 2, "Observation": 3, "DiagnosticReport": 2}
WARMUP = 200
CLIENT_THREADS = 4
AIM = "(c) aim: >= 1,500 resources/s per core on SQLite"
FHIR_JSON = "application/fhir+json"


@dataclass
class Row:
    label: str
    n: int
    seconds: float
    server_cpu: float | None = None     # CPU seconds the server used during the row

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --- workload ------------------------------------------------------------------------

def load_round() -> list[dict]:
    """One round of the mix: each valid fixture, repeated by its type's weight."""
    templates = [json.loads(p.read_text(encoding="utf-8"))
                 for p in sorted(FIXTURES_DIR.glob("*.json"))]
    order = list(WEIGHTS)
    templates.sort(key=lambda r: order.index(r["resourceType"]))
    return [r for r in templates for _ in range(WEIGHTS[r["resourceType"]])]


def make_workload(n: int) -> list[dict]:
    """n fresh resources cycling through the mix, each without an `id`."""
    mix = load_round()
    resources = []
    for i in range(n):
        resource = copy.deepcopy(mix[i % len(mix)])
        resource.pop("id", None)
        resources.append(resource)
    return resources


def describe_mix() -> str:
    mix = load_round()
    counts = {t: sum(r["resourceType"] == t for r in mix) for t in WEIGHTS}
    parts = ", ".join(f"{t} {c}" for t, c in counts.items())
    pdfs = sum("presentedForm" in r for r in mix)
    return f"{len(mix)} per round: {parts}; {pdfs} with a PDF attachment"


def encode(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def transaction_bundles(resources: list[dict], size: int) -> list[bytes]:
    """JSON bodies of transaction Bundles of `size` POST entries each."""
    bodies = []
    for start in range(0, len(resources), size):
        entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r,
                    "request": {"method": "POST", "url": r["resourceType"]}}
                   for r in resources[start:start + size]]
        bodies.append(encode({"resourceType": "Bundle", "type": "transaction",
                              "entry": entries}))
    return bodies


# --- in-process rows -----------------------------------------------------------------

def time_bare_validation(resources: list[dict]) -> float:
    pairs = [(fhir.model_class(r["resourceType"]), r) for r in resources]
    start = time.perf_counter()
    for cls, resource in pairs:
        cls.model_validate(resource)
    return time.perf_counter() - start


def time_gateway_validation(resources: list[dict], ctx: ValidationContext,
                            report: Report) -> float:
    failures = 0
    start = time.perf_counter()
    for resource in resources:
        _, issues = validate(resource, ctx)
        failures += any(i.severity == "error" for i in issues)
    seconds = time.perf_counter() - start
    if failures:
        report.problems.append(f"(b) {failures} of {len(resources)} resources had errors")
    return seconds


# --- the server ----------------------------------------------------------------------

def session_for(server: Server) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {server.token}",
                            "Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    return session


# --- HTTP rows -----------------------------------------------------------------------

def post_bundles(session: requests.Session, url: str, bodies: list[bytes]) -> list:
    return [session.post(url, data=body) for body in bodies]


def check_bundle_replies(replies: list, sizes: list[int], report: Report) -> int:
    """Resources stored according to the transaction-responses; problems noted."""
    stored = 0
    for number, (reply, size) in enumerate(zip(replies, sizes, strict=True)):
        if reply.status_code != 200:
            report.problems.append(f"(c) Bundle {number}: HTTP {reply.status_code}: "
                                   f"{reply.text[:500]}")
            continue
        statuses = [e.get("response", {}).get("status", "")
                    for e in reply.json().get("entry", [])]
        created = sum(s.startswith("201") for s in statuses)
        if created != size:
            report.problems.append(f"(c) Bundle {number}: {created} of {size} entries created")
        stored += created
    return stored


def post_singles(server: Server, bodies: list[tuple[str, bytes]]) -> list[tuple[int, str]]:
    """POST each resource on its own; (status, body) of the failures."""
    session = session_for(server)
    failures = []
    for resource_type, body in bodies:
        reply = session.post(f"{server.base}/fhir/{resource_type}", data=body)
        if reply.status_code != 201:
            failures.append((reply.status_code, reply.text[:500]))
    session.close()
    return failures


def post_singles_threaded(server: Server, bodies: list[tuple[str, bytes]],
                          threads: int) -> list[tuple[int, str]]:
    chunks = [bodies[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda chunk: post_singles(server, chunk), chunks)
        return [failure for result in results for failure in result]


def note_single_failures(label: str, failures: list, total: int, report: Report) -> None:
    if failures:
        codes = sorted({status for status, _ in failures})
        report.problems.append(f"{label}: {len(failures)} of {total} creates failed "
                               f"(HTTP {codes}); first: {failures[0][1]}")


def run_http_rows(resources: list[dict], bundle_size: int, server: Server,
                  report: Report) -> None:
    bundle_url = f"{server.base}/fhir"
    singles = [(r["resourceType"], encode(r)) for r in resources]
    bundles = transaction_bundles(resources, bundle_size)
    sizes = [min(bundle_size, len(resources) - i) for i in range(0, len(resources), bundle_size)]

    with session_for(server) as session:            # warm up both paths
        warm = make_workload(WARMUP)
        check_bundle_replies(post_bundles(session, bundle_url, transaction_bundles(warm, 100)),
                             [100] * (WARMUP // 100), Report())
        post_singles(server, [(r["resourceType"], encode(r)) for r in warm[:50]])

        seconds, cpu, replies = timed(server, lambda: post_bundles(session, bundle_url, bundles))
    stored = check_bundle_replies(replies, sizes, report)
    report.rows.append(Row(f"(c) transaction Bundles of {bundle_size:,}, HTTP", stored,
                           seconds, cpu))

    seconds, cpu, failures = timed(server, lambda: post_singles(server, singles))
    note_single_failures("(d) 1 thread", failures, len(singles), report)
    report.rows.append(Row("(d) single creates, 1 client thread", len(singles) - len(failures),
                           seconds, cpu))

    seconds, cpu, failures = timed(
        server, lambda: post_singles_threaded(server, singles, CLIENT_THREADS))
    note_single_failures(f"(d) {CLIENT_THREADS} threads", failures, len(singles), report)
    report.rows.append(Row(f"(d) single creates, {CLIENT_THREADS} client threads",
                           len(singles) - len(failures), seconds, cpu))


# --- output --------------------------------------------------------------------------

def database_label(database_url: str | None) -> str:
    if not database_url:
        return f"SQLite {sqlite3.sqlite_version} (new file in a temporary directory)"
    url = make_url(database_url)
    name = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(url.get_backend_name(),
                                                                url.get_backend_name())
    return f"{name} ({url.render_as_string(hide_password=True)})"


def print_header(args: argparse.Namespace) -> None:
    print("Gateway ingest benchmark")
    print(f"  Python          {platform.python_version()} ({platform.python_implementation()})")
    print(f"  fhir.resources  {version('fhir.resources')} (R4B models)")
    print(f"  database        {database_label(args.database_url)}")
    print(f"  cores           {os.cpu_count()} (os.cpu_count())")
    print(f"  N               {args.n:,} resources per row")
    print(f"  mix             {describe_mix()}")
    print()


def print_table(report: Report) -> None:
    ceiling = report.rows[0].rate if report.rows else 0.0
    header = (f"{'':44} {'N':>6} {'seconds':>8} {'resources/s':>12} {'vs (a)':>7} "
              f"{'per core':>9} {'server CPU':>10}")
    print(header)
    print("-" * len(header))
    for row in report.rows:
        ratio = f"{row.rate / ceiling:.2f}x" if ceiling else "-"
        cpu = f"{100 * row.server_cpu / row.seconds:.0f}%" if row.server_cpu is not None else "-"
        print(f"{row.label:44} {row.n:>6,} {row.seconds:>8.2f} {row.rate:>12,.0f} {ratio:>7} "
              f"{row.rate:>9,.0f} {cpu:>10}")
    print()
    print("per core: (a) and (b) run on one thread of this process; the server of (c) and (d)")
    print("runs 1 worker process (gunicorn gthread, 4 threads, one GIL), so its figures are per")
    print("core as they stand. The client runs on the same machine and takes CPU of its own;")
    print("'server CPU' is the server's CPU time over the row's wall time (100% = one core).")
    print()
    print(AIM)
    bundles = next((r for r in report.rows if r.label.startswith("(c)")), None)
    if bundles is not None:
        print(f"    measured: {bundles.rate:,.0f} resources/s per core")


def print_problems(report: Report, server_log: list[str]) -> None:
    print()
    if not report.problems:
        print("Problems: none (every Bundle entry and every create answered 201).")
        return
    print("Problems:")
    for problem in report.problems:
        print(f"  - {problem}")
    if server_log:
        print("Server output (last lines, access log left out):")
        for line in server_log[-40:]:
            print(f"    {line}")


# --- main ----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="resources per row (default 3000)")
    parser.add_argument("--database-url", help="GATEWAY_DATABASE_URL for the server "
                        "(default: a new SQLite file); the benchmark writes into it")
    parser.add_argument("--bundle-size", type=int, default=1000,
                        help="entries per transaction Bundle (default 1000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_header(args)
    report = Report()
    resources = make_workload(args.n)
    warm = make_workload(WARMUP)

    time_bare_validation(warm)
    report.rows.append(Row("(a) fhir.resources R4B model_validate", args.n,
                           time_bare_validation(resources)))

    ctx = ValidationContext(load_shipped())
    time_gateway_validation(warm, ctx, Report())
    report.rows.append(Row("(b) gateway validate(), in process", args.n,
                           time_gateway_validation(resources, ctx, report)))

    server_log: list[str] = []
    try:
        with Server(args.database_url, threads=CLIENT_THREADS) as server:
            try:
                run_http_rows(resources, args.bundle_size, server, report)
            finally:
                server_log = list(server.log)
    except (RuntimeError, requests.RequestException, subprocess.CalledProcessError) as exc:
        report.problems.append(f"HTTP rows stopped: {type(exc).__name__}: {exc}")

    print_table(report)
    print_problems(report, server_log)


if __name__ == "__main__":
    main()
