"""Delivery under failure, end to end: real processes, real HTTP, real databases.

The mock upstream (`gateway mock-upstream`) and the delivery worker (`gateway worker`)
run as child processes, exactly as an operator starts them; the test process only
writes accepted records into the gateway's database (through the app's write path,
one transaction per record) and watches the submissions' statuses there. What must
hold whatever goes wrong on the way (faults, dropped answers, a killed worker, an
upstream that is down for a while, two workers at once):

- every record ends `approved` or `rejected`, as its content deserves, and nothing is
  left `queued`, `sent`, `accepted` or `processing`;
- the upstream applied each record exactly once: `/_mock/records` lists exactly the
  gateway's submissions, each with count 1, and `/_mock/stats` agrees.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, text

from gateway import signing
from gateway.app import create_app
from gateway.delivery import outbox
from gateway.store import submissions as subs
from gateway.store.schema import outbox_bundles, submissions
from tests import delivery_data as data
from tests.conftest import empty_postgres

pytestmark = pytest.mark.slow

# The worker's settings: quick retries, quick polls, never dead within a test.
FAST_DELIVERY = {
    "GATEWAY_DELIVERY_TIMEOUT": "1.5", "GATEWAY_DELIVERY_BACKOFF_BASE": "0.05",
    "GATEWAY_DELIVERY_BACKOFF_MAX": "0.5", "GATEWAY_DELIVERY_POLL_INTERVAL": "0.05",
    "GATEWAY_DELIVERY_IDLE": "0.05", "GATEWAY_DELIVERY_MAX_ATTEMPTS": "1000",
    "GATEWAY_CIRCUIT_FAILURES": "5", "GATEWAY_CIRCUIT_OPEN_SECONDS": "0.5",
    "GATEWAY_DELIVERY_BATCH_SIZE": "50", "GATEWAY_LOG_LEVEL": "WARNING",
}
# Every kind of fault on 30% of requests (500, 503 and 429 with Retry-After, timeouts
# longer than the worker waits, "slow"), and one received Bundle in ten never answered.
FAULTY = {"fault_rate": 0.3, "drop_after_receive": 0.1}
FINAL = (subs.APPROVED, subs.REJECTED)
DEADLINE = 240.0            # seconds; a healthy run needs a small part of it


# --- the data: a register whose upstream answers are known in advance ----------------

@dataclass
class Register:
    resources: list[dict] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)     # reference → final status
    pairs: list[tuple[str, str]] = field(default_factory=list)  # one of each is rejected

    def add(self, resource: dict, expected: str | None = None) -> None:
        self.resources.append(resource)
        if expected:
            self.expected[f"{resource['resourceType']}/{resource['id']}"] = expected


def build_register(good: int, per_organization: int, bad: int, duplicates: int) -> Register:
    """Clinics with practitioners and their roles, and what ЕГИСЗ will answer.

    - `good` clinics, each with `per_organization` practitioners holding one post
      there: all approved;
    - `bad` clinics whose ОГРН names another region than their ИНН: rejected (and
      nothing depends on them, so nothing waits for them forever);
    - `duplicates` roles repeating a practitioner's post at his clinic under another
      id: of each pair (original, repeat) exactly one is rejected.
    Records: good + 2 * good * per_organization + bad + duplicates.
    """
    register = Register()
    people = good * per_organization
    repeated = set(range(0, people, max(1, people // duplicates))[:duplicates]) \
        if duplicates else set()
    assert len(repeated) == duplicates
    for o in range(good):
        register.add(data.organization(o), subs.APPROVED)
        if o < bad:                     # the refused clinics come in between the others
            register.add(data.organization(good + o, ogrn_region="50"), subs.REJECTED)
        for k in range(per_organization):
            n = o * per_organization + k
            register.add(data.practitioner(n), subs.APPROVED)
            role = data.role(n, n, o)
            if n in repeated:
                repeat = data.role(100_000 + n, n, o)
                register.add(role)
                register.add(repeat)
                register.pairs.append((f"PractitionerRole/{role['id']}",
                                       f"PractitionerRole/{repeat['id']}"))
            else:
                register.add(role, subs.APPROVED)
    assert len(register.resources) == good + 2 * people + bad + duplicates
    return register


# --- processes ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The gateway's database (in this process), the mock upstream and the workers
    (child processes). `close()` kills every child still running."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.data_dir = tmp_path / "data"
        self.app = create_app({"data_dir": str(self.data_dir), "database_url": database_url,
                               "log_level": "WARNING"})
        self.gateway = self.app.extensions["gateway"]
        self.engine = self.gateway.engine
        empty_postgres(self.engine)            # a shared PostgreSQL database starts clean
        signing.ensure_signer(self.gateway.settings.keys_path, "ES256")
        self.jwks_file = tmp_path / "jwks.json"
        self.jwks_file.write_text(json.dumps(signing.jwks(self.gateway.settings.keys_path)))
        self.mock_port = free_port()
        self.mock_root = f"http://127.0.0.1:{self.mock_port}"
        self.mock_database = f"sqlite:///{tmp_path / 'mock-upstream.sqlite3'}"
        self.mock: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._children: list[tuple[subprocess.Popen, object, Path]] = []

    # --- children ---

    def _spawn(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log_path = self.tmp_path / f"{name}-{len(self._children)}.log"
        log = open(log_path, "w", encoding="utf-8")
        try:
            child = subprocess.Popen([sys.executable, "-m", "gateway", *command], env=env,
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        except BaseException:
            log.close()
            raise
        self._children.append((child, log, log_path))
        return child

    def start_mock(self, fault_rate: float = 0.0, drop_after_receive: float = 0.0,
                   seed: int = 11) -> subprocess.Popen:
        env = {**os.environ, "GATEWAY_DATA_DIR": str(self.tmp_path / "mock-data")}
        self.mock = self._spawn("mock", [
            "mock-upstream", "--port", str(self.mock_port), "--jwks", str(self.jwks_file),
            "--database", self.mock_database, "--fault-rate", str(fault_rate),
            "--drop-after-receive", str(drop_after_receive), "--seed", str(seed),
            "--processing-delay", "0.05", "--timeout-seconds", "3"], env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.mock.poll() is not None:
                pytest.fail(f"the mock upstream exited:\n{self.log_of(self.mock)}")
            try:
                if requests.get(f"{self.mock_root}/_mock/stats", timeout=2).ok:
                    return self.mock
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the mock upstream did not answer:\n{self.log_of(self.mock)}")

    def start_worker(self) -> subprocess.Popen:
        env = {**os.environ, **FAST_DELIVERY, "GATEWAY_DATA_DIR": str(self.data_dir),
               "GATEWAY_DATABASE_URL": self.database_url,
               "GATEWAY_UPSTREAM_URL": f"{self.mock_root}/fhir",
               # libpq names the worker's PostgreSQL sessions (see wait_connected).
               "PGAPPNAME": f"delivery-worker-{len(self.workers) + 1}"}
        worker = self._spawn("worker", ["worker"], env)
        self.workers.append(worker)
        return worker

    def wait_connected(self, workers: list[subprocess.Popen], seconds: float = 60) -> None:
        """Until each worker has a session on the PostgreSQL database (it is running)."""
        wanted = {f"delivery-worker-{self.workers.index(w) + 1}" for w in workers}
        deadline = time.monotonic() + seconds
        while True:
            with self.engine.connect() as conn:
                names = set(conn.execute(text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database()")).scalars())
            if wanted <= names:
                return
            for worker in workers:
                if worker.poll() is not None:
                    pytest.fail(f"a worker exited:\n{self.log_of(worker)}")
            if time.monotonic() > deadline:
                pytest.fail(f"workers not connected in {seconds:.0f} s: {wanted - names}")
            time.sleep(0.1)

    @staticmethod
    def kill(child: subprocess.Popen) -> None:
        """SIGKILL: no clean-up of any kind, as when a machine loses power."""
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    def log_of(self, child: subprocess.Popen, tail: int = 4000) -> str:
        for known, log, path in self._children:
            if known is child:
                log.flush()
                return path.read_text(encoding="utf-8", errors="replace")[-tail:]
        return ""

    def close(self) -> None:
        for child, log, _ in self._children:
            self.kill(child)
            log.close()
        empty_postgres(self.engine)
        self.engine.dispose()

    # --- data ---

    def write(self, register: Register, start: int = 0, stop: int | None = None) -> None:
        """Accept records through the write path, one transaction per record."""
        for resource in register.resources[start:stop]:
            self.gateway.resources.update(resource, resource["resourceType"], resource["id"],
                                          None)

    def statuses(self) -> dict[tuple[str, str], str]:
        """(`Type/id`, version) → status of every submission."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(submissions.c.resource_type, submissions.c.resource_id,
                                       submissions.c.version, submissions.c.status)).all()
        return {(f"{t}/{i}", str(v)): s for t, i, v, s in rows}

    def counts(self) -> Counter:
        return Counter(self.statuses().values())

    def wait_until(self, done, what: str, seconds: float = DEADLINE) -> Counter:
        """Poll the statuses until `done(counts)`; fail with what is where if it never is."""
        deadline = time.monotonic() + seconds
        while True:
            counts = self.counts()
            if done(counts):
                return counts
            stuck = {s: counts[s] for s in (subs.DEAD, subs.CLARIFICATION) if counts[s]}
            if stuck:                             # final, and never what this data deserves
                pytest.fail(f"records ended {stuck}; submissions {dict(counts)}\n"
                            f"last worker log:\n{self.log_of(self.workers[-1])}")
            for worker in self.workers:
                if worker.poll() not in (None, -signal.SIGKILL):
                    pytest.fail(f"a worker exited with {worker.returncode}:\n"
                                f"{self.log_of(worker)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached in {seconds:.0f} s; submissions "
                            f"{dict(counts)}, Bundles {outbox.summary(self.engine)['bundles']}"
                            f"\nlast worker log:\n{self.log_of(self.workers[-1])}")
            time.sleep(0.1)

    def wait_all_final(self, total: int) -> Counter:
        return self.wait_until(lambda c: sum(c[s] for s in FINAL) == total == sum(c.values()),
                               f"all {total} records approved or rejected")

    def mock_get(self, path: str) -> dict:
        response = requests.get(f"{self.mock_root}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def lease_owner_pids(self) -> Counter:
        """Which worker process last held each Bundle (names are host:pid:object)."""
        with self.engine.connect() as conn:
            owners = conn.execute(select(outbox_bundles.c.lease_owner)).scalars().all()
        return Counter(int(owner.split(":")[-2]) for owner in owners if owner)


@pytest.fixture
def sqlite_stack(tmp_path):
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def postgres_stack(tmp_path, postgres_database):
    stack = Stack(tmp_path, postgres_database)
    try:
        yield stack
    finally:
        stack.close()


# --- what must hold at the end ----------------------------------------------------------

def assert_delivered_exactly_once(stack: Stack, register: Register) -> dict:
    """Each record final as its content deserves, and applied upstream exactly once."""
    statuses = stack.statuses()
    assert len(statuses) == len(register.resources)
    leftovers = Counter(s for s in statuses.values() if s not in FINAL)
    assert not leftovers, f"records not final: {dict(leftovers)}"
    by_reference = {reference: status for (reference, _), status in statuses.items()}
    wrong = {r: (by_reference.get(r), want) for r, want in register.expected.items()
             if by_reference.get(r) != want}
    assert not wrong, f"(got, expected) per record: {wrong}"
    for pair in register.pairs:
        assert sorted(by_reference[r] for r in pair) == [subs.APPROVED, subs.REJECTED], pair

    records = stack.mock_get("/_mock/records")["records"]
    repeated = [r for r in records if r["count"] != 1]
    assert not repeated, f"applied more than once upstream: {repeated[:5]}"
    applied = {(r["reference"], str(r["version"])): r["status"] for r in records}
    assert len(applied) == len(records)
    assert set(applied) == set(statuses), (
        f"applied upstream only: {sorted(set(applied) - set(statuses))[:5]}; "
        f"never applied: {sorted(set(statuses) - set(applied))[:5]}")
    assert applied == statuses                    # the gateway reports what ЕГИСЗ decided
    stats = stack.mock_get("/_mock/stats")
    assert stats["records_applied"] == stats["applications_total"] == len(statuses)
    assert stats["records_applied_more_than_once"] == 0
    assert stats["duplicates_conflicting"] == 0   # every retry carried the same entries
    assert stats["signature_failures"] == 0
    assert stats["tickets_processing"] == 0
    return stats


# --- the scenarios ------------------------------------------------------------------------

def test_a_thousand_records_through_thirty_percent_faults_arrive_exactly_once(sqlite_stack):
    register = build_register(good=20, per_organization=24, bad=5, duplicates=15)
    assert len(register.resources) == 1000
    sqlite_stack.write(register)
    assert sqlite_stack.counts() == {subs.QUEUED: 1000}
    sqlite_stack.start_mock(**FAULTY)
    sqlite_stack.start_worker()

    counts = sqlite_stack.wait_all_final(1000)

    assert counts == {subs.APPROVED: 1000 - 5 - 15, subs.REJECTED: 5 + 15}
    stats = assert_delivered_exactly_once(sqlite_stack, register)
    # The faults did happen, and were retried through.
    assert set(stats["faults_injected"]) == {"500", "503", "429", "timeout", "slow"}
    assert all(stats["faults_injected"].values()), stats["faults_injected"]
    assert stats["connections_dropped"] > 0
    assert stats["duplicates_ignored"] > 0        # resends after drops and timeouts
    assert stats["bundles_received"] > stats["bundles_unique"]


def test_a_worker_killed_mid_run_and_started_again_loses_and_repeats_nothing(sqlite_stack):
    register = build_register(good=10, per_organization=12, bad=2, duplicates=5)
    total = len(register.resources)
    sqlite_stack.write(register)
    sqlite_stack.start_mock(**FAULTY)
    first = sqlite_stack.start_worker()
    sqlite_stack.wait_until(lambda c: sum(c[s] for s in FINAL) >= total // 4,
                            "a quarter of the records final")
    # Kill it while a Bundle is leased to it, if one is within a few seconds.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _leased(sqlite_stack):
        time.sleep(0.01)
    Stack.kill(first)
    at_kill = sqlite_stack.counts()
    assert sum(at_kill[s] for s in FINAL) < total, "the run ended before the kill"

    sqlite_stack.start_worker()
    sqlite_stack.wait_all_final(total)

    assert_delivered_exactly_once(sqlite_stack, register)


def _leased(stack: Stack) -> bool:
    with stack.engine.connect() as conn:
        return conn.execute(select(outbox_bundles.c.pk).where(
            outbox_bundles.c.state == outbox.SENDING).limit(1)).first() is not None


def test_a_backlog_drains_by_itself_once_the_upstream_is_back(sqlite_stack):
    register = build_register(good=10, per_organization=12, bad=2, duplicates=5)
    total = len(register.resources)
    sqlite_stack.write(register)
    sqlite_stack.start_mock(**FAULTY)
    worker = sqlite_stack.start_worker()
    sqlite_stack.wait_until(lambda c: c[subs.APPROVED] > 0, "a first approved record")
    Stack.kill(sqlite_stack.mock)
    down = sqlite_stack.counts()
    assert down[subs.QUEUED] > 0, down

    time.sleep(3)                                 # the worker keeps trying meanwhile
    assert worker.poll() is None
    assert sum(sqlite_stack.counts()[s] for s in FINAL) < total
    assert any("connection failed" in error for error in _last_errors(sqlite_stack))
    sqlite_stack.start_mock(**FAULTY)             # same port, same database
    sqlite_stack.wait_all_final(total)

    assert worker.poll() is None                  # never restarted
    assert_delivered_exactly_once(sqlite_stack, register)


def _last_errors(stack: Stack) -> list[str]:
    with stack.engine.connect() as conn:
        return list(conn.execute(select(outbox_bundles.c.last_error).where(
            outbox_bundles.c.last_error.is_not(None))).scalars())


def test_two_workers_on_postgresql_share_the_outbox_and_send_nothing_twice(postgres_stack):
    register = build_register(good=16, per_organization=9, bad=2, duplicates=4)
    total = len(register.resources)
    postgres_stack.start_mock()                   # no faults: any repeat is the gateway's
    one, two = postgres_stack.start_worker(), postgres_stack.start_worker()
    postgres_stack.wait_connected([one, two])
    postgres_stack.write(register)                # while both are running
    postgres_stack.wait_all_final(total)

    stats = assert_delivered_exactly_once(postgres_stack, register)
    assert stats["bundles_received"] == stats["bundles_unique"]
    assert stats["duplicates_ignored"] == 0
    owners = postgres_stack.lease_owner_pids()
    assert set(owners) == {one.pid, two.pid}, owners
