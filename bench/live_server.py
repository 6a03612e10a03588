"""A real `gateway serve` for the benchmarks in this folder, started and stopped by them.

Shared by ingest.py and intake.py (imported as `live_server`: a script's own folder is
on sys.path when it is run as `.venv/bin/python bench/<name>.py`). It holds:

  - `Server`: `gateway serve` as a subprocess on a free port with a new temporary data
    directory (a new SQLite file, unless a database URL is given). It drains the server's
    output so the pipe never fills, reads the bootstrap admin token from it (or registers
    a client with `gateway clients create` when the database already had clients), waits
    for /healthz and stops the server at the end, even on error. The token line is never
    put into `Server.log`, the lines a benchmark prints when something went wrong;
  - `timed`: wall seconds and server CPU seconds of one piece of work;
  - `new_postgres_database`: a new database on a PostgreSQL server, and its dropping;
  - `free_port`, `gateway_command` and `process_cpu_seconds`, which they use.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gateway_command() -> str:
    beside = Path(sys.executable).with_name("gateway")
    found = str(beside) if beside.exists() else shutil.which("gateway")
    if not found:
        raise SystemExit("The `gateway` command is not installed (pip install -e .).")
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its direct children (Linux /proc), or None."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        stats = list(Path("/proc").glob("[0-9]*/stat"))
    except OSError:
        return None
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks if stats else None


class Server:
    """`gateway serve` as a subprocess on a free port with its own data directory.

    Without `database_url` the server gets a new SQLite file in that directory; with it,
    GATEWAY_DATABASE_URL is set and the benchmark writes into that database. `threads` is
    the server's `--threads` (one worker process always); `prefix` names the directory.
    """

    def __init__(self, database_url: str | None = None, threads: int = 4,
                 prefix: str = "gateway-bench-") -> None:
        self.database_url = database_url
        self.threads = threads
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token: str | None = None
        self.log: deque[str] = deque(maxlen=200)     # server lines other than access log
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.env = self._environment()
        self.proc: subprocess.Popen | None = None

    def _environment(self) -> dict:
        # The per-client rate limit would throttle the benchmark's one client: off here.
        env = dict(os.environ, GATEWAY_DATA_DIR=self._tmp.name, PYTHONUNBUFFERED="1",
                   GATEWAY_RATE_LIMIT_PER_MINUTE="0")
        env.pop("GATEWAY_DATABASE_URL", None)
        if self.database_url:
            env["GATEWAY_DATABASE_URL"] = self.database_url
        return env

    def start(self) -> None:
        command = [gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--threads", str(self.threads)]
        self.proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                     errors="replace")
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_healthy()
        self.token = self.token or self._create_client()

    def _drain(self) -> None:
        """Read the server's output for good: the token, then keep the pipe from filling."""
        previous = ""
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if previous.startswith("No API clients yet"):
                self.token = line.strip()                  # kept out of the printed log
            elif '"' not in line or " HTTP/1." not in line:   # skip access-log lines
                self.log.append(line)
            previous = line

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway serve exited with code "
                                   f"{self.proc.returncode}:\n" + "\n".join(self.log))
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway serve did not answer /healthz within {timeout:.0f} s")

    def _create_client(self) -> str:
        """The database already had clients (PostgreSQL reused): register one for us."""
        out = subprocess.run([gateway_command(), "clients", "create", "--name",
                              f"bench-{uuid.uuid4().hex[:8]}", "--role", "admin"],
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def timed(server: Server, work) -> tuple[float, float | None, object]:
    """Wall seconds, server CPU seconds and result of `work()`."""
    cpu_before = server.cpu_seconds()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    cpu_after = server.cpu_seconds()
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return seconds, cpu, result


def new_postgres_database(server_url: str, prefix: str = "gw_bench_"):
    """A new database on the server of `server_url`: (its URL, a function dropping it)."""
    admin_url = make_url(server_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False), drop
