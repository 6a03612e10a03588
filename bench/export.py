"""How fast a FHIR Bulk Data `$export` job runs, and how much memory it takes.

Run by hand, never from the test suite:

    .venv/bin/python bench/export.py [--count 100000] [--postgres URL]

For SQLite (a new file in a temporary data directory) and, with `--postgres`, for
PostgreSQL (a new database made on that server and dropped at the end):

  1. N resources are written through the store (`Store.create_many`, 1,000 per
     transaction, search index and outbox included; untimed), copies of the valid
     samples in fixtures/valid, each with an id of its own, so every type is there;
  2. in a fresh child process a system-level job (every type) is created and run by
     `gateway.export.bulk.Runner.run_once()`, as the worker's export thread runs it:
     timed, and its ru_maxrss read afterwards; then a second job is run under
     tracemalloc for the peak of Python allocations (tracemalloc slows Python down,
     so that run is not timed).

It prints resources/s, the NDJSON bytes written, the tracemalloc peak and ru_maxrss
(the child's whole process: interpreter, SQLAlchemy, driver) next to the aim: an
export of 100,000 resources under 200 MB. Both steps run in child processes of a
parent that imports little: on Linux a child's ru_maxrss starts from its parent's
resident size (it is kept across exec), so filling in the parent would show in the
export's figure. VmHWM (the peak of the child's own memory) is printed beside it.
Nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from live_server import new_postgres_database

PROJECT_DIR = Path(__file__).resolve().parents[1]
SAMPLES = sorted((PROJECT_DIR / "fixtures" / "valid").glob("*.json"))
AIM_MB = 200
PER_TRANSACTION = 1000


def fill(url: str, data_dir: str, count: int) -> None:
    """Write `count` resources (copies of the samples); prints the seconds it took."""
    from gateway.app import create_app

    app = create_app({"data_dir": str(data_dir), "database_url": url, "log_level": "WARNING"})
    store = app.extensions["gateway"].store
    templates = [json.loads(p.read_text(encoding="utf-8")) for p in SAMPLES]
    started = time.perf_counter()
    for first in range(0, count, PER_TRANSACTION):
        items = []
        for n in range(first, min(count, first + PER_TRANSACTION)):
            sample = dict(templates[n % len(templates)])
            items.append((sample, f"{sample['id']}-{n}"))
        with store.write() as conn:
            store.create_many(conn, items)
    print(json.dumps({"seconds": time.perf_counter() - started}))
    store.engine.dispose()


def export(url: str, data_dir: str) -> None:
    """Run in a fresh process: one timed export job, then one under tracemalloc."""
    from gateway.export import bulk
    from gateway.settings import load_settings
    from gateway.store import database, encryption
    from gateway.store.clock import utcnow

    settings = load_settings({"data_dir": data_dir, "database_url": url,
                              "log_level": "WARNING"})
    engine = database.make_engine(settings.effective_database_url,
                                  encryption.keyring_from(settings))
    runner = bulk.Runner(engine, settings)
    wanted = bulk.parse_request([], prefer="respond-async")
    before = _maxrss_mb(), _hwm_mb()

    job_id = bulk.create(engine, wanted, None, "bench", utcnow())
    started = time.perf_counter()
    runner.run_once()
    seconds = time.perf_counter() - started
    after_timed = _maxrss_mb(), _hwm_mb()
    job = bulk.find(engine, job_id, None)
    folder = bulk.export_root(settings) / job_id
    written = sum(p.stat().st_size for p in folder.iterdir())

    tracemalloc.start()
    bulk.create(engine, wanted, None, "bench", utcnow())
    runner.run_once()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({
        "state": job.state, "error": job.error,
        "resources": sum(o["count"] for o in job.output), "files": len(job.output),
        "bytes": written, "seconds": seconds, "before_mb": before, "after_mb": after_timed,
        "tracemalloc_peak_mb": peak / 2**20}))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux: KiB


def _hwm_mb() -> float | None:
    """VmHWM: the peak resident size of this process's own memory (Linux only)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def in_child(label: str, *args: str) -> dict:
    """Run this script's step `args` in a new process; the JSON it prints last."""
    answer = subprocess.run([sys.executable, __file__, *args], capture_output=True,
                            text=True, check=False)
    if answer.returncode != 0:
        print(answer.stderr[-3000:])
        raise SystemExit(f"{label}: {args[0]} failed")
    return json.loads(answer.stdout.strip().splitlines()[-1])


def measure(label: str, url: str, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-export-") as tmp:
        data_dir = str(Path(tmp) / "data")
        url = url or f"sqlite:///{data_dir}/gateway.sqlite3"
        filled = in_child(label, "--fill", url, data_dir, str(count))
        print(f"{label}: {count:,} resources written in {filled['seconds']:.1f} s (untimed)")
        found = in_child(label, "--export", url, data_dir)
    report(found, count)


def report(found: dict, count: int) -> None:
    """Print what one export child measured (`in_child(..., "--export", ...)`)."""
    if found["state"] != "completed" or found["resources"] != count:
        print(f"  PROBLEM: job {found['state']}, {found['resources']} of {count} resources, "
              f"{found['error'] or ''}")
    rate = found["resources"] / found["seconds"] if found["seconds"] else 0.0
    print(f"  export job: {found['resources']:,} resources in {found['files']} files, "
          f"{found['bytes'] / 2**20:.1f} MB of NDJSON, {found['seconds']:.2f} s, "
          f"{rate:,.0f} resources/s")
    (rss_before, hwm_before), (rss, hwm) = found["before_mb"], found["after_mb"]
    print(f"  memory: tracemalloc peak {found['tracemalloc_peak_mb']:.1f} MB; process peak "
          f"ru_maxrss {rss:.1f} MB, VmHWM {_mb(hwm)} (before the job: {rss_before:.1f} MB, "
          f"{_mb(hwm_before)}); aim: under {AIM_MB} MB for 100,000")


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="resources to export")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server (e.g. postgresql+psycopg://postgres@"
                             "127.0.0.1:5432/test); a new database is made there and dropped")
    parser.add_argument("--fill", nargs=3, help=argparse.SUPPRESS)      # URL DATA_DIR N
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)    # URL DATA_DIR
    args = parser.parse_args()
    if args.fill:
        fill(args.fill[0], args.fill[1], int(args.fill[2]))
        return
    if args.export:
        export(*args.export)
        return
    print(f"Python {platform.python_version()}, {platform.machine()}, "
          f"{len(SAMPLES)} sample resources cycled")
    measure("SQLite", "", args.count)
    if args.postgres:
        url, drop = new_postgres_database(args.postgres)
        try:
            measure("PostgreSQL", url, args.count)
        finally:
            drop()


if __name__ == "__main__":
    main()
