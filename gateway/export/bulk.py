"""FHIR Bulk Data `$export`: the request, jobs and their leases, the runner writing NDJSON.

The API layer only creates a job and reports on it; the work happens in the
delivery worker process (`Runner`, one thread of `gateway worker`), so a large
export never holds a web request or a gunicorn thread. A job goes through

    accepted → in-progress → completed | failed
    (any) → cancelled          DELETE on the status URL; its files are removed

A job is leased to one runner at a time (`claim`): on PostgreSQL due jobs are
selected `FOR UPDATE SKIP LOCKED`, as the outbox does, and the runner renews its
lease after every batch. A runner that dies stops renewing; when the lease runs
out another runner starts the job again from scratch (after `MAX_ATTEMPTS`
starts it is failed). Each renewal is also where cancellation is noticed.
Finished jobs and their files are removed after `export_retention_hours`.

Memory does not grow with the number of resources: `gateway.export.reader` reads
each type in keyset batches, and every row's stored JSON text goes to the file as
it is, one line, never parsed. The export is the store as of one instant,
`transactionTime` (the reader explains how); as the Bulk Data specification
says, `_since=<transactionTime>` next time gets what changed after it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.export import reader
from gateway.registry import RESOURCE_TYPES
from gateway.rounds import run_rounds
from gateway.settings import Settings
from gateway.store import clients, tenancy
from gateway.store.clock import instant, utcnow
from gateway.store.schema import export_jobs

log = logging.getLogger("gateway.export")

ACCEPTED = "accepted"
IN_PROGRESS = "in-progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)

EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
# For the CapabilityStatement (gateway.capability): `rest.operation` at system level and
# `rest.resource[].operation` of every type in `types`.
OPERATION = {"name": "export", "definition": EXPORT_DEFINITION,
             "levels": ("system", "type"), "types": tuple(RESOURCE_TYPES)}

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
PARAMETERS = ("_type", "_since", "_outputFormat")
NDJSON = "application/fhir+ndjson"
LEASE = timedelta(minutes=2)     # renewed after every batch
MAX_ATTEMPTS = 3                 # starts before a job whose runner keeps dying is failed


# --- the request ---------------------------------------------------------------------

@dataclass(frozen=True)
class ExportRequest:
    """A validated kick-off: which types, changed after when."""

    level: str                      # system | type
    types: tuple[str, ...]
    since: datetime | None
    output_format: str = NDJSON


def parse_request(params: list[tuple[str, str]], resource_type: str | None = None,
                  prefer: str = "") -> ExportRequest:
    """Check a kick-off's parameters and `Prefer` header (pure; InvalidRequest if wrong).

    The Bulk Data specification makes the export asynchronous only, so a client
    that does not say `Prefer: respond-async` would not understand the answer.
    Unknown parameters are refused unless `Prefer: handling=lenient`, as search does.
    """
    preferences = {p.strip().lower().replace(" ", "") for p in prefer.replace(";", ",")
                   .split(",")}
    if "respond-async" not in preferences:
        raise InvalidRequest("Экспорт выполняется асинхронно: добавьте заголовок "
                             "Prefer: respond-async.",
                             "$export is asynchronous: send the header Prefer: respond-async.")
    unknown = sorted({name for name, _ in params if name not in PARAMETERS})
    if unknown and "handling=lenient" not in preferences:
        raise InvalidRequest(f"Параметры не поддерживаются: {', '.join(unknown)}.",
                             f"Unsupported $export parameters: {', '.join(unknown)}.")
    values = {name: [v for n, v in params if n == name] for name in PARAMETERS}
    if resource_type is not None and resource_type not in RESOURCE_TYPES:
        raise NotFound(f"Тип ресурса «{resource_type}» не поддерживается шлюзом.",
                       f"Resource type {resource_type!r} is not supported.")
    types = parse_types(",".join(values["_type"])) if values["_type"] else ()
    if resource_type is not None:
        if types and types != (resource_type,):
            raise InvalidRequest(f"На уровне типа {resource_type} _type может называть "
                                 "только этот тип.",
                                 f"At the {resource_type} level _type may name only "
                                 f"{resource_type}.", expression="_type")
        types = (resource_type,)
    return ExportRequest("system" if resource_type is None else "type",
                         types or tuple(RESOURCE_TYPES),
                         parse_since(values["_since"][-1]) if values["_since"] else None,
                         _output_format(values["_outputFormat"]))


def parse_types(value: str) -> tuple[str, ...]:
    """`_type=Patient,Observation` as known type names, each once, in the order given."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in RESOURCE_TYPES]
    if unknown:
        raise InvalidRequest(f"Типы ресурсов не поддерживаются: {', '.join(unknown)}. "
                             f"Доступны: {', '.join(RESOURCE_TYPES)}.",
                             f"Unsupported resource types in _type: {', '.join(unknown)}.",
                             expression="_type")
    return names


def parse_since(value: str) -> datetime:
    """A FHIR instant (a date alone is its midnight; no time zone means UTC), as naive UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise InvalidRequest(f"Значение _since «{value[:60]}» не является моментом времени, "
                             "например 2026-11-01T00:00:00+03:00.",
                             f"_since {value[:60]!r} is not a FHIR instant.",
                             expression="_since") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _output_format(given: list[str]) -> str:
    # An unencoded "+" in a query string arrives as a space.
    value = given[-1].strip().replace(" ", "+") if given else NDJSON
    if value not in OUTPUT_FORMATS:
        raise InvalidRequest(f"Формат «{value[:60]}» не поддерживается: только "
                             "application/fhir+ndjson.",
                             f"_outputFormat {value[:60]!r} is not supported; use "
                             "application/fhir+ndjson.", expression="_outputFormat")
    return NDJSON


# --- jobs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    pk: int
    id: str
    client_pk: int | None
    level: str
    types: tuple[str, ...]
    since: datetime | None
    state: str
    request_url: str
    total: int | None
    exported: int
    output: tuple[dict, ...]        # {type, file, count}
    error: str | None
    attempts: int
    transaction_time: datetime | None
    completed_at: datetime | None
    updated_at: datetime

    def expires_at(self, retention: timedelta) -> datetime:
        """When a finished job and its files are removed."""
        return (self.completed_at or self.updated_at) + retention


def _job(row) -> Job:
    return Job(row.pk, row.id, row.client_pk, row.level, tuple(json.loads(row.types)),
               row.since, row.state, row.request_url, row.total, row.exported,
               tuple(json.loads(row.output or "[]")), row.error, row.attempts,
               row.transaction_time, row.completed_at, row.updated_at)


def _write(engine: Engine):
    return engine.connect().execution_options(write=True)


def _skip_locked(engine: Engine, query):
    if engine.dialect.name == "sqlite":
        return query                       # SQLite: BEGIN IMMEDIATE serialises writers
    return query.with_for_update(skip_locked=True)


def export_root(settings: Settings) -> Path:
    """Where jobs keep their files: `export_dir`, else `<data_dir>/exports`."""
    if not settings.export_dir:
        return settings.data_path / "exports"
    path = Path(settings.export_dir)
    return path if path.is_absolute() else Path.cwd() / path


def create(engine: Engine, wanted: ExportRequest, client_pk: int | None, request_url: str,
           now: datetime) -> str:
    """Queue a job for the worker; its id names the status URL."""
    job_id = str(uuid.uuid4())
    with _write(engine) as conn, conn.begin():
        conn.execute(export_jobs.insert().values(
            id=job_id, client_pk=client_pk, level=wanted.level, types=json.dumps(wanted.types),
            since=wanted.since, output_format=wanted.output_format, state=ACCEPTED,
            request_url=request_url, exported=0, attempts=0, created_at=now, updated_at=now))
    return job_id


def find(engine: Engine, job_id: str, client_pk: int | None) -> Job:
    """A client's own job; another client's, a cancelled or an unknown one is NotFound."""
    with engine.connect() as conn:
        row = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).first()
    if row is None or row.client_pk != client_pk or row.state == CANCELLED:
        raise NotFound(f"Задание экспорта {job_id[:40]} не найдено.",
                       f"Export job {job_id[:40]!r} not found.")
    return _job(row)


def cancel(engine: Engine, root: Path, job_id: str, client_pk: int | None,
           now: datetime) -> None:
    """Cancel a job (or discard a finished one's files): DELETE on the status URL.

    A running job's files are removed by its runner when it next renews its
    lease (it may be writing them right now); any other job's files go at once.
    """
    job = find(engine, job_id, client_pk)
    with _write(engine) as conn, conn.begin():
        was = conn.execute(select(export_jobs.c.state).where(
            export_jobs.c.pk == job.pk)).scalar_one()
        conn.execute(update(export_jobs).where(export_jobs.c.pk == job.pk).values(
            state=CANCELLED, updated_at=now))
    if was != IN_PROGRESS:
        shutil.rmtree(root / job.id, ignore_errors=True)


def failure(job: Job) -> GatewayError:
    """The error a failed job's status URL answers with (a 500 OperationOutcome)."""
    return GatewayError("Экспорт завершился ошибкой; запустите его заново.",
                        f"The export failed: {job.error or 'unknown error'}.")


def progress(job: Job) -> str:
    """`X-Progress` while a job is not finished."""
    if job.state == ACCEPTED:
        return "accepted: waiting for a worker"
    if not job.total:
        return f"in-progress: {job.exported} resources"
    return f"in-progress: {job.exported} of {job.total} resources " \
           f"({min(100, job.exported * 100 // job.total)}%)"


def manifest(job: Job, files_url: str) -> dict:
    """The completion manifest; `files_url` is where this job's files are downloaded."""
    return {
        "transactionTime": instant(job.transaction_time or job.updated_at),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [{"type": o["type"], "url": f"{files_url}/{o['file']}", "count": o["count"]}
                   for o in job.output],
        "error": [],
    }


def file_path(engine: Engine, root: Path, job_id: str, client_pk: int | None,
              name: str) -> Path:
    """One output file of a client's completed job; anything else is NotFound."""
    job = find(engine, job_id, client_pk)
    path = root / job.id / name
    if job.state != COMPLETED or name not in {o["file"] for o in job.output} \
            or not path.is_file():
        raise NotFound(f"Файл {name[:80]} задания экспорта не найден.",
                       f"Export file {name[:80]!r} not found.")
    return path


# --- leases --------------------------------------------------------------------------

def claim(engine: Engine, owner: str, now: datetime, lease: timedelta = LEASE) -> Job | None:
    """Lease the oldest job due: new, or one whose runner stopped renewing its lease."""
    with _write(engine) as conn, conn.begin():
        conn.execute(update(export_jobs).where(
            export_jobs.c.state == IN_PROGRESS, export_jobs.c.lease_until < now,
            export_jobs.c.attempts >= MAX_ATTEMPTS).values(
            state=FAILED, error=f"the worker stopped {MAX_ATTEMPTS} times while exporting",
            lease_owner=None, lease_until=None, updated_at=now, completed_at=now))
        row = conn.execute(_skip_locked(engine, select(export_jobs).where(or_(
            export_jobs.c.state == ACCEPTED,
            and_(export_jobs.c.state == IN_PROGRESS, export_jobs.c.lease_until < now)))
            .order_by(export_jobs.c.pk).limit(1))).first()
        if row is None:
            return None
        conn.execute(update(export_jobs).where(export_jobs.c.pk == row.pk).values(
            state=IN_PROGRESS, lease_owner=owner, lease_until=now + lease,
            attempts=row.attempts + 1, exported=0, output=None, updated_at=now))
        row = conn.execute(select(export_jobs).where(export_jobs.c.pk == row.pk)).one()
    return _job(row)


def _renew(engine: Engine, job: Job, owner: str, lease: timedelta, **values) -> bool:
    """Renew the lease and record progress; False when the job is no longer ours."""
    now = utcnow()
    with _write(engine) as conn, conn.begin():
        done = conn.execute(update(export_jobs).where(
            export_jobs.c.pk == job.pk, export_jobs.c.lease_owner == owner,
            export_jobs.c.state == IN_PROGRESS).values(
            {"lease_until": now + lease, "updated_at": now, **values}))
    return done.rowcount == 1


def _state(engine: Engine, job: Job) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(export_jobs.c.state).where(
            export_jobs.c.pk == job.pk)).scalar()


def sweep(engine: Engine, root: Path, now: datetime, retention: timedelta) -> int:
    """Remove finished jobs (rows and files) older than the retention period."""
    stale = export_jobs.c.state.in_(FINISHED) & (export_jobs.c.updated_at < now - retention)
    with engine.connect() as conn:
        ids = list(conn.execute(select(export_jobs.c.id).where(stale)).scalars())
    if not ids:
        return 0
    for job_id in ids:
        shutil.rmtree(root / job_id, ignore_errors=True)
    with _write(engine) as conn, conn.begin():
        conn.execute(export_jobs.delete().where(stale, export_jobs.c.id.in_(ids)))
    return len(ids)


# --- writing files -------------------------------------------------------------------

class NdjsonFiles:
    """`<Type>-<n>.ndjson` files in one folder, a new one every `max_lines` resources."""

    def __init__(self, folder: Path, max_lines: int):
        self.folder = folder
        self.max_lines = max(1, max_lines)
        self.output: list[dict] = []          # {type, file, count}, as the manifest wants
        self._file: TextIO | None = None

    def write(self, resource_type: str, lines: list[str]) -> None:
        for line in lines:
            current = self.output[-1] if self.output else None
            if current is None or current["type"] != resource_type \
                    or current["count"] >= self.max_lines:
                self._open(resource_type)
                current = self.output[-1]
            assert self._file is not None
            self._file.write(line)
            self._file.write("\n")
            current["count"] += 1

    def _open(self, resource_type: str) -> None:
        self.close()
        number = sum(o["type"] == resource_type for o in self.output) + 1
        name = f"{resource_type}-{number}.ndjson"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / name, "w", encoding="utf-8", newline="\n")
        self.output.append({"type": resource_type, "file": name, "count": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Interrupted(Exception):
    """The job stopped being ours: cancelled, taken over, or the worker is stopping."""


def job_access(engine: Engine, job: Job) -> tenancy.Access:
    """A job reads what the client that asked for it may see; nothing if it is gone.

    A job no client asked for (made by the operator's tools) reads everything.
    """
    if job.client_pk is None:
        return tenancy.SYSTEM
    client = clients.get(engine, job.client_pk)
    if client is None or not client.active:
        return tenancy.NOBODY
    return tenancy.Access.of(client)


class Runner:
    """Runs export jobs: `run_once` does at most one job; `run` loops until stopped."""

    def __init__(self, engine: Engine, settings: Settings, name: str | None = None,
                 lease: timedelta = LEASE):
        self.engine = engine
        self.settings = settings
        self.root = export_root(settings)
        self.lease = lease
        self.retention = timedelta(hours=settings.export_retention_hours)
        # Fits export_jobs.lease_owner (64 characters), as the delivery worker's name does.
        self.name = name or f"{socket.gethostname()[-38:]}:{os.getpid()}:{id(self):x}"
        self.stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        run_rounds(self.run_once, stop, self.settings.delivery_idle, "export")

    def run_once(self) -> bool:
        """Remove expired jobs, then run one due job; True if there was anything to do."""
        now = utcnow()
        swept = sweep(self.engine, self.root, now, self.retention)
        job = claim(self.engine, self.name, now, self.lease)
        if job is None:
            return swept > 0
        self.run_job(job)
        return True

    def run_job(self, job: Job) -> None:
        """Write a leased job's files and complete it, or fail, or give it up."""
        folder = self.root / job.id
        shutil.rmtree(folder, ignore_errors=True)       # what an earlier attempt left
        access = tenancy.current_access.set(job_access(self.engine, job))
        try:
            output = self._export(job, folder)
            if not _renew(self.engine, job, self.name, self.lease, state=COMPLETED,
                          output=json.dumps(output), lease_until=None, completed_at=utcnow()):
                raise _Interrupted
            log.info("export job %s completed: %d files", job.id, len(output))
        except _Interrupted:
            if _state(self.engine, job) == CANCELLED:
                shutil.rmtree(folder, ignore_errors=True)
        except Exception as error:
            log.exception("export job %s failed", job.id)
            shutil.rmtree(folder, ignore_errors=True)
            _renew(self.engine, job, self.name, self.lease, state=FAILED,
                   error=f"{type(error).__name__}: {error}"[:500], lease_until=None,
                   completed_at=utcnow())
        finally:
            tenancy.current_access.reset(access)

    def _export(self, job: Job, folder: Path) -> list[dict]:
        as_of = reader.latest_change(self.engine)
        total = sum(reader.count(self.engine, t, job.since) for t in job.types)
        self._keep(job, transaction_time=as_of, total=total)
        files = NdjsonFiles(folder, self.settings.export_file_max_resources)
        exported = 0
        try:
            for resource_type in job.types:
                for batch in reader.batches(self.engine, resource_type, as_of,
                                            job.since):
                    files.write(resource_type, [content for _, content in batch])
                    exported += len(batch)
                    self._keep(job, exported=exported)
        finally:
            files.close()
        return files.output

    def _keep(self, job: Job, **values) -> None:
        """Between batches: stop if asked to, else renew the lease and record progress."""
        if self.stop.is_set():          # the worker is stopping: hand the job back
            _renew(self.engine, job, self.name, self.lease, state=ACCEPTED, lease_owner=None,
                   lease_until=None, attempts=job.attempts - 1)
            raise _Interrupted
        if not _renew(self.engine, job, self.name, self.lease, **values):
            raise _Interrupted
