"""How fast the outbox reaches the upstream: signed Bundles per second, per algorithm.

Run by hand, never from the test suite:

    .venv/bin/python bench/delivery.py [--records 2000] [--batch 100]

For each signing algorithm (ES256, and GOST R 34.10-2012/Streebog-256 through the
pure-Python gostcrypto), in a new temporary data directory with a new SQLite file and
a key of that algorithm:

  1. N Practitioners are written through the gateway's write path (one transaction each,
     untimed), so N submissions are queued. Practitioners depend on nothing, so every
     record is ready at once and the figures are the pipeline's own, not the wait for a
     clinic's approval a register's roles have (see tests/test_delivery_reliability.py);
  2. the mock upstream runs as its own process (`gateway mock-upstream`, faults off,
     processing delay 0), verifying every signature as a real one would;
  3. one delivery worker runs in this process (`Worker.run` in a thread), with the
     settings of `gateway worker` but quick polls; its `sign` is wrapped to add up the
     time spent signing (RFC 8785 canonical JSON + JWS);
  4. timed from the moment everything is queued (the worker's start) to the moment every
     record is `approved`, with the moments when the last Bundle was signed and the last
     record accepted (the upstream's 202, read from the submissions' history).

Then the cost of signing and verifying one Bundle of `--batch` records, in process:
the first Bundle the worker formed, its signature removed, signed and verified again.

The upstream answers a poll of a ticket still processing with Retry-After of at least
1 s (the protocol lets it), so "approved" includes up to a second of waiting that is
neither the gateway's nor the network's; "accepted" is the rate the gateway sends at.
Nothing here asserts a speed; the numbers are printed for a person to judge.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
from live_server import free_port
from sqlalchemy import func, select
from stdnum.ru import inn as stdnum_inn

from gateway import signing
from gateway.app import create_app
from gateway.delivery.worker import Worker
from gateway.store import submissions as subs
from gateway.store.repository import utcnow
from gateway.store.schema import outbox_bundles, submission_events, submissions
from gateway.validation.identifiers import snils_check_digits

PROJECT_DIR = Path(__file__).resolve().parents[1]
PRACTITIONER = PROJECT_DIR / "fixtures" / "valid" / "practitioner-ivanova.json"

ALGORITHMS = ("ES256", "GOST3410-2012-256")
# The worker's settings besides the batch size: quick polls and rounds, no waiting
# between rounds that found work; no faults are injected, so no back-off is seen.
DELIVERY = {"delivery_poll_interval": 0.05, "delivery_idle": 0.01, "delivery_timeout": 60.0,
            "delivery_max_attempts": 10, "circuit_failures": 5, "circuit_open_seconds": 1.0}
DEADLINE = 900.0


@dataclass
class Run:
    alg: str
    records: int
    bundles: int
    write_seconds: float       # writing the records (untimed in the rates)
    signed: float              # seconds from "all queued" to the last Bundle signed
    accepted: float            # ... to the last record accepted by the upstream
    approved: float            # ... to the last record approved
    signing: float             # seconds the worker spent in sign()
    signed_bundles: int

    @property
    def records_per_second(self) -> float:
        return self.records / self.approved

    @property
    def bundles_per_second(self) -> float:
        return self.bundles / self.approved

    @property
    def signing_share(self) -> float:
        return self.signing / self.approved


@dataclass
class Cost:
    alg: str
    entries: int
    payload_bytes: int
    canonical_ms: float
    sign_ms: float
    verify_ms: float


def practitioner(template: dict, n: int) -> dict:
    """Practitioner/prac-{n}: the reviewed sample with a СНИЛС and ИНН of its own."""
    person = json.loads(json.dumps(template))
    person["id"] = f"prac-{n}"
    first9 = f"{300_000_000 + n:09d}"
    person["identifier"][0]["value"] = first9 + snils_check_digits(first9)
    first10 = f"7728{n:06d}"
    person["identifier"][1]["value"] = first10 + stdnum_inn.calc_personal_check_digits(first10)
    return person


# --- one algorithm, end to end --------------------------------------------------------------

class MockProcess:
    """`gateway mock-upstream` on a free port, faults off; stopped at the end."""

    def __init__(self, workdir: Path, jwks_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self._log = open(workdir / "mock-upstream.log", "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "mock-upstream", "--port", str(self.port),
             "--jwks", str(jwks_file), "--database", f"sqlite:///{workdir / 'mock.sqlite3'}",
             "--processing-delay", "0", "--seed", "1"],
            env={**os.environ, "GATEWAY_DATA_DIR": str(workdir / "mock-data")},
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the mock upstream did not start: "
                                   + (workdir / "mock-upstream.log").read_text()[-2000:])
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/_mock/stats", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/_mock/stats", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_one(alg: str, records: int, batch: int) -> tuple[Run, Cost]:
    with tempfile.TemporaryDirectory(prefix="gateway-delivery-bench-") as tmp:
        workdir = Path(tmp)
        app = create_app({"data_dir": str(workdir / "data"), "log_level": "WARNING",
                          "database_url": f"sqlite:///{workdir / 'gateway.sqlite3'}",
                          "signing_alg": alg, "delivery_batch_size": batch, **DELIVERY})
        gateway = app.extensions["gateway"]
        signer = signing.ensure_signer(gateway.settings.keys_path, alg)
        jwks_file = workdir / "jwks.json"
        jwks = signing.jwks(gateway.settings.keys_path)
        jwks_file.write_text(json.dumps(jwks))

        template = json.loads(PRACTITIONER.read_text(encoding="utf-8"))
        started = time.perf_counter()
        for n in range(records):
            gateway.resources.update(practitioner(template, n), "Practitioner", f"prac-{n}",
                                     None)
        write_seconds = time.perf_counter() - started

        mock = MockProcess(workdir, jwks_file)
        try:
            run = _deliver(gateway, mock, alg, records, write_seconds)
            cost = _signing_cost(gateway.engine, signer, jwks)
            stats = mock.stats()
        finally:
            mock.stop()
            gateway.engine.dispose()
    if stats["records_applied"] != records or stats["signature_failures"]:
        print(f"  ! {alg}: the mock applied {stats['records_applied']} of {records} records, "
              f"{stats['signature_failures']} signature failures")
    return run, cost


def _deliver(gateway, mock: MockProcess, alg: str, records: int,
             write_seconds: float) -> Run:
    worker = Worker(gateway.engine, gateway.settings, upstream_url=mock.url)
    signing_time = [0.0, 0, 0.0]           # seconds in sign(), Bundles, when the last ended
    plain_sign = worker.sign

    def timed_sign(bundle: dict, organization: str | None) -> dict:
        begin = time.perf_counter()
        try:
            return plain_sign(bundle, organization)
        finally:
            signing_time[2] = time.perf_counter()
            signing_time[0] += signing_time[2] - begin
            signing_time[1] += 1

    worker.sign = timed_sign                  # run_once hands `self.sign` to outbox.form
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="bench-worker")
    t0 = utcnow()
    started = time.perf_counter()
    thread.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while _approved(gateway.engine) < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{alg}: not all approved in {DEADLINE:.0f} s")
            time.sleep(0.2)
        wall = time.perf_counter() - started
    finally:
        stop.set()
        thread.join(60)
        worker.upstream.session.close()
    with gateway.engine.connect() as conn:
        bundles = conn.execute(select(func.count()).select_from(outbox_bundles)).scalar_one()
        last = dict(conn.execute(select(submission_events.c.status,
                                        func.max(submission_events.c.at))
                                 .group_by(submission_events.c.status)).all())
    approved = (last[subs.APPROVED] - t0).total_seconds()
    return Run(alg, records, bundles, write_seconds, signing_time[2] - started,
               (last[subs.ACCEPTED] - t0).total_seconds(),
               # the history has millisecond instants; the wall clock is the fallback
               approved if approved > 0 else wall, signing_time[0], signing_time[1])


def _approved(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(submissions).where(
            submissions.c.status == subs.APPROVED)).scalar_one()


def _signing_cost(engine, signer: signing.Signer, jwks: dict) -> Cost:
    """Sign and verify the first formed Bundle again, its signature removed."""
    with engine.connect() as conn:
        body = conn.execute(select(outbox_bundles.c.body).order_by(outbox_bundles.c.pk)
                            .limit(1)).scalar_one()
    bundle = {k: v for k, v in json.loads(body).items() if k != "signature"}
    who = {"reference": "Organization/bench"}
    repeats = 30 if signer.alg != signing.GOST else 5
    canonical, signs, verifies = [], [], []
    for _ in range(repeats):
        begin = time.perf_counter()
        payload = signing.canonical(bundle)
        canonical.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        signed = signing.sign_bundle(bundle, signer, who, datetime.now(UTC))
        signs.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        signing.verify_bundle(signed, jwks)
        verifies.append(time.perf_counter() - begin)
    return Cost(signer.alg, len(bundle["entry"]), len(payload),
                statistics.median(canonical) * 1000, statistics.median(signs) * 1000,
                statistics.median(verifies) * 1000)


# --- output ---------------------------------------------------------------------------------

def print_header(args: argparse.Namespace) -> None:
    print("Gateway delivery benchmark (outbox → signed Bundles → mock upstream → approved)")
    print(f"  Python          {platform.python_version()} ({platform.python_implementation()})")
    print(f"  database        SQLite {sqlite3.sqlite_version} (new file per algorithm)")
    print(f"  cores           {os.cpu_count()} (os.cpu_count())")
    print(f"  worker          one, in this process (Worker.run in a thread), batch "
          f"{args.batch}, poll interval {DELIVERY['delivery_poll_interval']} s")
    print("  upstream        gateway mock-upstream, its own process: faults off, processing "
          "delay 0, verifies every signature")
    print(f"  workload        {args.records:,} Practitioners (no dependencies), queued before "
          "the worker starts")
    print()


def print_runs(runs: list[Run]) -> None:
    header = (f"{'algorithm':19} {'records':>7} {'Bundles':>7} {'signed s':>8} "
              f"{'accepted s':>10} {'approved s':>10} {'records/s':>9} {'Bundles/s':>9} "
              f"{'signing s':>9} {'signing':>7} {'ratio':>6}")
    print("Delivery, from all queued (worker start) to all approved")
    print(header)
    print("-" * len(header))
    base = runs[0].records_per_second
    for run in runs:
        print(f"{run.alg:19} {run.records:>7,} {run.bundles:>7,} {run.signed:>8.2f} "
              f"{run.accepted:>10.2f} {run.approved:>10.2f} {run.records_per_second:>9,.0f} "
              f"{run.bundles_per_second:>9.2f} {run.signing:>9.2f} "
              f"{run.signing_share:>7.0%} {run.records_per_second / base:>6.2f}")
    print("signed / accepted / approved: seconds until the last Bundle was signed, the last")
    print("record accepted (202), the last approved. signing: time in Worker.sign (canonical")
    print("JSON + JWS) and its share of the approved time. ratio: records/s to the")
    print("first row. Records were written beforehand, untimed: "
          + ", ".join(f"{r.alg} {r.write_seconds:.1f} s" for r in runs) + ".")
    print()


def print_costs(costs: list[Cost]) -> None:
    header = (f"{'algorithm':19} {'entries':>7} {'payload':>9} {'canonical ms':>12} "
              f"{'sign ms':>8} {'verify ms':>9} {'sign ratio':>10}")
    print("One Bundle, signed and verified in process (median)")
    print(header)
    print("-" * len(header))
    base = costs[0].sign_ms
    for cost in costs:
        print(f"{cost.alg:19} {cost.entries:>7} {cost.payload_bytes:>9,} "
              f"{cost.canonical_ms:>12.1f} {cost.sign_ms:>8.1f} {cost.verify_ms:>9.1f} "
              f"{cost.sign_ms / base:>10.1f}")
    print("sign and verify include the RFC 8785 canonical JSON of the Bundle (the canonical")
    print("column alone). The mock verifies each Bundle it receives at the verify cost, inside")
    print("the POST the worker waits for.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    print_header(args)
    runs, costs = [], []
    for alg in ALGORITHMS:
        print(f"  {alg}: running…", flush=True)
        run, cost = run_one(alg, args.records, args.batch)
        runs.append(run)
        costs.append(cost)
    print()
    print_runs(runs)
    print_costs(costs)


if __name__ == "__main__":
    main()
