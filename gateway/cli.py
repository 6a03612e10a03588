"""The `gateway` command: serve, database, clients, offline validation, НСИ books.

    gateway serve [--host H] [--port P]       production server (gunicorn, gthread)
    gateway db upgrade                        create or migrate the schema
    gateway clients create --name N --role R [--org OID]... [--region RR] [--access A]
                                              prints the new token on its last line
    gateway clients list|revoke ID|rotate ID|set-jwks ID FILE
    gateway tenancy rebuild                   recompute resource owners (after upgrade)
    gateway validate FILE                     OperationOutcome for a JSON/XML file
    gateway nsi load FILE|DIR                 load full НСИ books into the data dir
    gateway worker [--once]                   deliver the outbox, run bulk export jobs
    gateway keys new-encryption-key|reencrypt encryption at rest: a key line; rotate rows
    gateway export --format F --output DIR    ndjson | fhir-json | fhir-xml | legacy-xml files
    gateway audit verify                      check the audit trail's hash chain
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.settings import Settings, load_settings


@click.group()
def main() -> None:
    """HL7 FHIR gateway between clinic MIS and ЕГИСЗ (ФРМО, ФРМР, ЭЛМК)."""


def _engine(settings: Settings):
    from gateway.store import database, encryption
    settings.data_path.mkdir(parents=True, exist_ok=True)
    try:
        keyring = encryption.keyring_from(settings)
    except encryption.KeyringError as exc:
        raise click.ClickException(str(exc)) from None
    return database.make_engine(settings.effective_database_url, keyring)


# --- serve ---------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", type=int, help="Worker processes (default from settings).")
@click.option("--threads", type=int, help="Threads per worker (default from settings).")
def serve(host: str, port: int, workers: int | None, threads: int | None) -> None:
    """Run the gateway under gunicorn (several processes, several threads each)."""
    from gunicorn.app.base import BaseApplication

    from gateway.app import create_app
    from gateway.store import database
    from gateway.store.clients import any_client, create_client

    settings = load_settings()
    engine = _engine(settings)
    database.upgrade(engine)            # once, before the workers start
    if not any_client(engine):
        _, token = create_client(engine, "demo-admin", "admin")
        click.echo("No API clients yet: created 'demo-admin'. Its bearer token, shown once:")
        click.echo(token)
    engine.dispose()
    from gateway import signing
    signer = signing.ensure_signer(settings.keys_path, settings.signing_alg)
    click.echo(f"Gateway on http://{host}:{port}/fhir  (database: "
               f"{engine.url.render_as_string(hide_password=True)}; signing key {signer.kid}, "
               f"{signer.alg})")
    children = _delivery_children(settings, host, port)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers or settings.serve_workers)
            self.cfg.set("threads", threads or settings.serve_threads)
            self.cfg.set("worker_class", "gthread")
            # A worker silent this long is killed (request_timeout_seconds; PostgreSQL's
            # statement_timeout, the same, answers 503 first where the database is slow).
            self.cfg.set("timeout", settings.request_timeout_seconds + 5)
            # No gunicorn access log: the app writes one masked line per request, with
            # its request id (gateway.api.protection, gateway.logs).
            self.cfg.set("accesslog", None)

        def load(self):
            return create_app({"auto_migrate": False})

    try:
        Server().run()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


def _delivery_children(settings: Settings, host: str, port: int) -> list:
    """The embedded default's delivery: the mock upstream (no upstream configured) and
    one worker, as child processes that live and die with `gateway serve`."""
    import os
    import socket
    import subprocess

    children = []
    upstream_url = settings.upstream_url
    if not upstream_url:
        with socket.socket() as probe:                 # a free port for the mock
            probe.bind(("127.0.0.1", 0))
            mock_port = probe.getsockname()[1]
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        children.append(subprocess.Popen([
            sys.executable, "-m", "gateway", "mock-upstream", "--port", str(mock_port),
            "--jwks", f"http://{local}:{port}/.well-known/jwks.json",
            "--clarification-rate", str(settings.mock_clarification_rate),
            "--processing-delay", str(settings.mock_processing_delay)]))
        upstream_url = f"http://127.0.0.1:{mock_port}/fhir"
        click.echo(f"No upstream configured: the mock upstream runs on {upstream_url} "
                   f"(stats: http://127.0.0.1:{mock_port}/_mock/stats)")
    if settings.embedded_worker:
        children.append(subprocess.Popen([sys.executable, "-m", "gateway", "worker"],
                                         env={**os.environ,
                                              "GATEWAY_UPSTREAM_URL": upstream_url}))
        click.echo(f"Delivery worker started for {upstream_url}")
    return children


# --- db ------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Create the schema or migrate it to the newest version."""
    from gateway.store import database
    settings = load_settings()
    database.upgrade(_engine(settings))
    click.echo("Database schema is up to date.")


# --- clients -------------------------------------------------------------------------

@main.group()
def clients() -> None:
    """API clients and their bearer tokens."""


@clients.command("create")
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice(["mis", "region", "admin"]))
@click.option("--org", "organizations", multiple=True,
              help="ФРМО OID of an organization of an mis client (repeat for several).")
@click.option("--region", help="Two-digit region code, for regional systems.")
@click.option("--access", default="read-write", show_default=True,
              type=click.Choice(["read", "write", "read-write"]))
@click.option("--scopes", help="SMART scopes it may take with OAuth, e.g. 'system/*.rs'.")
@click.option("--jwks", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON Web Key Set of its public keys, for OAuth client assertions.")
def clients_create(name: str, role: str, organizations: tuple[str, ...], region: str | None,
                   access: str, scopes: str | None, jwks: Path | None) -> None:
    """Register a client; its token is printed once, on the last line."""
    from gateway.store.clients import ClientError, create_client
    engine = _upgraded_engine()
    try:
        client, token = create_client(engine, name, role, organizations, region, access,
                                      scopes, _read_jwks(jwks))
    except ClientError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"Client {client.name!r} (id {client.pk}, role {client.role}) created. "
               "Bearer token:")
    click.echo(token)


@clients.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def clients_list(as_json: bool) -> None:
    """Every client with its role, organizations or region and state (never tokens)."""
    from gateway.store.clients import list_clients
    found = list_clients(_upgraded_engine())
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    for c in found:
        bound = ",".join(c["organizations"]) or c["region"] or "-"
        state = "active" if c["active"] else f"revoked {c['revoked']}"
        click.echo(f"{c['id']:>5}  {c['name']:<30} {c['role']:<7} {c['access']:<10} "
                   f"{bound:<40} {state}")


@clients.command("revoke")
@click.argument("client_id", type=int)
def clients_revoke(client_id: int) -> None:
    """Disable a client: its token and every OAuth token it holds stop working at once."""
    from gateway.store.clients import revoke
    if not revoke(_upgraded_engine(), client_id):
        raise click.ClickException(f"No active client with id {client_id}.")
    click.echo(f"Client {client_id} revoked.")


@clients.command("rotate")
@click.argument("client_id", type=int)
def clients_rotate(client_id: int) -> None:
    """Give a client a new token (printed on the last line); the old one stops working."""
    from gateway.store.clients import rotate
    token = rotate(_upgraded_engine(), client_id)
    if token is None:
        raise click.ClickException(f"No active client with id {client_id}.")
    click.echo(f"Client {client_id} has a new bearer token:")
    click.echo(token)


@clients.command("set-jwks")
@click.argument("client_id", type=int)
@click.argument("jwks", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def clients_set_jwks(client_id: int, jwks: Path) -> None:
    """Register (or replace) the public keys a client signs its OAuth assertions with."""
    from gateway.store.clients import set_jwks
    if not set_jwks(_upgraded_engine(), client_id, _read_jwks(jwks)):
        raise click.ClickException(f"No client with id {client_id}.")
    click.echo(f"Client {client_id}: keys registered.")


def _read_jwks(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise click.UsageError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise click.UsageError(f"{path}: a JWK Set has a 'keys' list")
    return keys


def _upgraded_engine():
    from gateway.store import database
    engine = _engine(load_settings())
    database.upgrade(engine)
    return engine


@main.group()
def tenancy() -> None:
    """Which organizations own which resources (what mis and region clients see)."""


@tenancy.command("rebuild")
def tenancy_rebuild() -> None:
    """Recompute every resource's owners from its content (after upgrading to 0006)."""
    from gateway.store import tenancy as rule
    done = rule.rebuild(_upgraded_engine())
    click.echo(f"Owners recomputed for {done} resources.")


# --- validate ------------------------------------------------------------------------

@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Validate a FHIR JSON or XML file offline and print the OperationOutcome.

    Exits 0 when the resource would be accepted, 1 when it would be refused.
    """
    from gateway import fhir, validation
    from gateway.errors import GatewayError
    from gateway.issues import has_errors, operation_outcome
    from gateway.services import load_terminology

    settings = load_settings()
    body = file.read_bytes()
    try:
        if body.lstrip()[:1] == b"<":
            resource = fhir.parse_xml(body)
        else:
            resource = fhir.parse_json(body, settings.max_json_depth)
        ctx = validation.ValidationContext(load_terminology(settings),
                                           max_attachment_bytes=settings.max_attachment_bytes,
                                           oms_check_digit=settings.oms_check_digit)
        _, issues = validation.validate(resource, ctx)
    except GatewayError as error:
        issues = error.issues
    click.echo(json.dumps(operation_outcome(issues), ensure_ascii=False, indent=2))
    sys.exit(1 if has_errors(issues) else 0)


# --- nsi -----------------------------------------------------------------------------

@main.group()
def nsi() -> None:
    """НСИ reference books."""


@nsi.command("load")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def nsi_load(path: Path) -> None:
    """Load full books exported from the НСИ portal (JSON parts + passport, or CSV).

    A book replaces the shipped subset (or an earlier load) when its version is the
    same or newer. Restart the gateway to use it.
    """
    from gateway.services import load_terminology
    from gateway.validation import terminology

    settings = load_settings()
    held = load_terminology(settings)
    try:
        books = terminology.load_path(path)
    except terminology.BookError as error:
        raise click.ClickException(str(error)) from None
    for book in books:
        current = held.book(book.oid)
        if current is not None and \
                terminology.version_key(book.version) < terminology.version_key(current.version):
            click.echo(f"{book.oid}: version {book.version} is older than the loaded "
                       f"{current.version}; skipped.")
            continue
        terminology.save_book(book, settings.data_path / "nsi")
        click.echo(f"{book.oid} «{book.title}» v{book.version}: {len(book.codes)} codes loaded.")


# --- mappings and import ----------------------------------------------------------------

@main.group()
def mappings() -> None:
    """Mapping files (mappings/*.yaml)."""


@mappings.command("check")
def mappings_check() -> None:
    """Check every mapping file; a problem is reported with its file and line."""
    from gateway.mapping.loader import MappingError, load_all
    from gateway.services import load_terminology
    try:
        found = load_all(load_terminology(load_settings()))
    except MappingError as error:
        raise click.ClickException(str(error)) from None
    for mapping in found.values():
        click.echo(f"{mapping.name}: {mapping.path.name}, {mapping.format}, "
                   f"{len(mapping.resources)} resource kinds — ok")


@main.command("import")
@click.option("--mapping", "mapping_name", required=True, help="e.g. frmr-person-csv")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the per-row error report (default: next to FILE).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_file(mapping_name: str, report: Path | None, file: Path) -> None:
    """Import a CSV staff list or a JSON file of records through a mapping.

    Shows progress, ends with a summary, and writes every refused row's problems
    (row, column, message) to a CSV report. Re-running the same file changes nothing.
    """
    from gateway.app import create_app

    gateway = create_app().extensions["gateway"]
    try:
        _import_records(gateway, mapping_name, report, file)
    finally:
        gateway.engine.dispose()


def _import_records(gateway, mapping_name: str, report: Path | None, file: Path) -> None:
    import csv

    from gateway import fhir, intake
    from gateway.errors import GatewayError
    from gateway.mapping import csv_records

    mapping = gateway.mappings.get(mapping_name)
    if mapping is None:
        raise click.ClickException(f"no mapping {mapping_name!r}; known: "
                                   f"{', '.join(gateway.mappings)}")
    try:
        if mapping.format == "csv":
            records = csv_records.read_records(file.read_bytes(), mapping)
        else:
            data = fhir.parse_json_value(file.read_bytes(), gateway.settings.max_json_depth)
            records = data if isinstance(data, list) else [data]
    except GatewayError as error:
        raise click.ClickException(error.issues[0].text_ru) from None
    results = []
    with click.progressbar(records, label=f"Importing {file.name}", show_pos=True) as bar:
        for index, record in enumerate(bar):
            results.append(intake.ingest_one(mapping, record, index, gateway.resources,
                                             gateway.books))
    report = report or file.with_name(file.stem + ".errors.csv")
    rows = _report_rows(mapping, results)
    with open(report, "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["Строка", "Столбец", "Сообщение", "Diagnostics"])
        writer.writerows(rows)
    accepted = sum(r.status == "accepted" for r in results)
    unchanged = sum(r.unchanged for r in results)
    click.echo(f"Rows read: {len(results)}, accepted: {accepted} (unchanged: {unchanged}), "
               f"rejected: {len(results) - accepted}.")
    click.echo(f"Error report: {report} ({len(rows)} problems).")


def _report_rows(mapping, results) -> list[list[str]]:
    """(row, column, message) per problem; row 1 is the first data row after the header."""
    from gateway.mapping import csv_records
    rows = []
    for result in results:
        for issue in result.issues:
            if issue.severity not in ("error", "fatal"):
                continue
            location = issue.locations[-1] if issue.locations else (issue.expression or "")
            column = csv_records.column_of(mapping, location) if mapping.csv_columns \
                else location
            rows.append([str(result.index + 1), column or location, issue.text_ru,
                         issue.diagnostics])
    return rows


# --- delivery: keys, worker, outbox, mock upstream ---------------------------------------

@main.group()
def keys() -> None:
    """Signing keys of the Bundles sent upstream (kept in the data directory)."""


@keys.command("generate")
@click.option("--alg", default=None, type=click.Choice(["ES256", "RS256", "GOST3410-2012-256"]),
              help="Default: signing_alg from the settings.")
def keys_generate(alg: str | None) -> None:
    """Write a new key pair into the data directory and print its kid (last line).

    The new key signs from the next worker start; older keys stay published in the
    JWKS until retired, so Bundles signed with them still verify.
    """
    from gateway import signing
    settings = load_settings()
    signer = signing.generate_key(settings.keys_path, alg or settings.signing_alg)
    click.echo(f"New {signer.alg} key in {settings.keys_path}; kid:")
    click.echo(signer.kid)


@keys.command("list")
def keys_list() -> None:
    """The published keys (the JWKS)."""
    from gateway import signing
    for jwk in signing.jwks(load_settings().keys_path)["keys"]:
        click.echo(f"{jwk['kid']}  {jwk.get('alg', '')}")


@keys.command("retire")
@click.argument("kid")
def keys_retire(kid: str) -> None:
    """Stop publishing a key and never sign with it again."""
    from gateway import signing
    signing.retire_key(load_settings().keys_path, kid)
    click.echo(f"Key {kid} retired.")


# --- keys: encryption at rest (gateway.store.encryption) ----------------------------------

@keys.command("new-encryption-key")
@click.option("--kid", help="Key id (default: k<UTC date and time>).")
def keys_new_encryption_key(kid: str | None) -> None:
    """Print a fresh AES-256 key as `kid:base64` for encryption_keys (nothing is stored)."""
    from gateway.store import encryption
    try:
        click.echo(encryption.new_key_line(kid))
    except encryption.KeyringError as exc:
        raise click.ClickException(str(exc)) from None


@keys.command("reencrypt")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1))
def keys_reencrypt(batch_size: int) -> None:
    """Seal every stored resource body with the active encryption key (rotation).

    Rows under older keys and plain rows (written with encryption off) are moved in
    batches; the gateway may keep running. Afterwards the old keys can be removed.
    """
    from gateway.store import encryption
    engine = _engine(load_settings())
    try:
        moved = encryption.reencrypt(engine, batch_size,
                                     progress=lambda n: click.echo(f"{n} rows...", err=True))
    except (encryption.KeyringError, encryption.StoredBodyUnreadable) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"{moved} stored versions re-encrypted with the active key.")
# --- end keys: encryption at rest ---------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="Work until nothing is due now, then exit.")
def worker(once: bool) -> None:
    """Deliver the outbox to the upstream: sign, send, retry, poll, update statuses.

    Several workers may run against PostgreSQL (they share the work without
    sending anything twice); with SQLite run one.
    """
    import signal
    import threading

    from gateway.delivery.worker import Worker
    from gateway.store import database

    settings = load_settings()
    if not settings.upstream_url:
        raise click.ClickException("upstream_url is empty: set GATEWAY_UPSTREAM_URL.")
    engine = _engine(settings)
    database.upgrade(engine)
    delivery = Worker(engine, settings)
    if once:
        delivery.drain()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    delivery.run(stop)


@main.group("outbox")
def outbox_group() -> None:
    """Inspect and replay what waits to go upstream."""


@outbox_group.command("list")
@click.option("--state", type=click.Choice(["pending", "sending", "sent", "done", "dead"]))
@click.option("--limit", default=50, show_default=True)
def outbox_list(state: str | None, limit: int) -> None:
    """Bundles, newest first, with their state, attempts and last error."""
    from gateway.delivery import outbox
    engine = _engine(load_settings())
    summary = outbox.summary(engine)
    click.echo("Bundles: " + (", ".join(f"{k} {v}" for k, v in sorted(
        summary["bundles"].items())) or "none"))
    click.echo("Records: " + (", ".join(f"{k} {v}" for k, v in sorted(
        summary["submissions"].items())) or "none"))
    for bundle in outbox.list_bundles(engine, state, limit):
        click.echo(f"{bundle['identifier']}  {bundle['destination']}  {bundle['state']:<7} "
                   f"records {bundle['records']:<4} attempts {bundle['attempts']:<3} "
                   f"{bundle['last_error'] or ''}")


@outbox_group.command("retry")
@click.argument("identifier")
def outbox_retry(identifier: str) -> None:
    """Send a Bundle (by its identifier or a submission id) now; a dead one comes back."""
    from gateway.delivery import outbox
    from gateway.store.repository import utcnow
    result = outbox.retry(_engine(load_settings()), identifier, utcnow())
    if result is None:
        raise click.ClickException(f"no Bundle or submission {identifier!r}")
    click.echo(f"{result['identifier']}: {result['state']}"
               + ("" if result["changed"] else " (already answered; nothing to retry)"))


@outbox_group.command("requeue-dead")
def outbox_requeue_dead() -> None:
    """Every dead Bundle back to the queue, with a fresh count of attempts."""
    from gateway.delivery import outbox
    from gateway.store.repository import utcnow
    count = outbox.requeue_dead(_engine(load_settings()), utcnow())
    click.echo(f"Requeued {count} dead Bundle(s).")


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8091, show_default=True, type=int, help="0: a free port.")
@click.option("--jwks", help="The gateway's JWKS: a URL or a file. Default: the gateway at "
                             "http://127.0.0.1:8080/.well-known/jwks.json.")
@click.option("--database", help="The mock's own database URL (default: a SQLite file in the "
                                 "data directory).")
@click.option("--fault-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests answered with a fault (5xx, 429, timeout, slow).")
@click.option("--latency-ms", default=0, show_default=True, type=click.IntRange(0))
@click.option("--drop-after-receive", default=0.0, show_default=True,
              type=click.FloatRange(0, 1),
              help="Share of Bundles processed whose connection is then dropped unanswered.")
@click.option("--clarification-rate", default=0.0, show_default=True,
              type=click.FloatRange(0, 1), help="Share of records answered "
                                                "clarification_required.")
@click.option("--processing-delay", default=0.5, show_default=True, type=float,
              help="Seconds a ticket stays processing.")
@click.option("--timeout-seconds", default=30.0, show_default=True, type=float,
              help="How long a 'timeout' fault holds the request.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Same seed, same faults for the same requests.")
def mock_upstream(host: str, port: int, jwks: str | None, database: str | None,
                  fault_rate: float, latency_ms: int, drop_after_receive: float,
                  clarification_rate: float, processing_delay: float, timeout_seconds: float,
                  seed: int) -> None:
    """Run the bundled mock of ЕГИСЗ (ФРМО, ФРМР, ЭЛМК) for integration testing.

    It verifies signatures against the gateway's JWKS, applies the registers'
    business rules, answers asynchronously with tickets, and injects faults on
    demand. GET /_mock/stats shows what arrived.
    """
    from gateway.mock_upstream.config import DEFAULT_JWKS_URL, MockConfig
    from gateway.mock_upstream.server import run_mock

    settings = load_settings()
    settings.data_path.mkdir(parents=True, exist_ok=True)
    config = MockConfig(
        database_url=database or f"sqlite:///{settings.data_path / 'mock-upstream.sqlite3'}",
        jwks=jwks or DEFAULT_JWKS_URL, fault_rate=fault_rate, latency_ms=latency_ms,
        drop_after_receive=drop_after_receive, clarification_rate=clarification_rate,
        processing_delay_seconds=processing_delay, timeout_seconds=timeout_seconds, seed=seed)
    run_mock(host, port, config)


# --- export ------------------------------------------------------------------------------

@main.command("export")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["ndjson", "fhir-json", "fhir-xml", "legacy-xml"]))
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="A resource type (repeat for several). Default: every type, or the "
                   "register's.")
@click.option("--register", type=click.Choice(["frmo", "frmr", "elmk"]),
              help="Only what goes to this register (required for legacy-xml).")
@click.option("--since", help="Only resources changed after this instant, e.g. "
                              "2026-11-01T00:00:00+03:00.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the files (created if missing).")
def export(fmt: str, types: tuple[str, ...], register: str | None, since: str | None,
           output: Path) -> None:
    """Write whole registers to files: one per type (<Type>.ndjson, .json or .xml, a
    collection Bundle), or the register's signed legacy XML. Progress goes to stderr.

    The files are the store as of one instant (printed at the end): changes made
    while the export runs are not in them.
    """
    from gateway.errors import GatewayError
    from gateway.export import bulk
    from gateway.store import database

    settings = load_settings()
    try:
        chosen = bulk.parse_types(",".join(types)) if types else ()
        moment = bulk.parse_since(since) if since else None
    except GatewayError as error:
        raise click.ClickException(error.issues[0].diagnostics) from None
    engine = _engine(settings)
    database.upgrade(engine)
    output.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "legacy-xml":
            if not register or chosen:
                raise click.ClickException("legacy-xml needs --register and takes no --type.")
            _export_legacy(engine, settings, register, moment, output)
        else:
            _export_fhir(engine, settings, fmt, chosen, register, moment, output)
    finally:
        engine.dispose()


def _export_fhir(engine, settings: Settings, fmt: str, types: tuple[str, ...],
                 register: str | None, since, output: Path) -> None:
    from gateway.export import files, reader
    from gateway.store.clock import instant

    types = types or files.register_types(register)
    as_of = reader.latest_change(engine)
    counts = {t: reader.count(engine, t, since) for t in types}
    written = {}
    with click.progressbar(length=sum(counts.values()), label=f"Exporting {fmt}",
                           show_pos=True, file=sys.stderr) as bar:
        for resource_type in (t for t in types if counts[t]):
            path = output / f"{resource_type}.{files.FORMATS[fmt]}"
            read = files.of_register(reader.batches(engine, resource_type, as_of, since),
                                     resource_type, register, bar.update)
            with open(path, "wb") as out:
                written[path] = files.write(fmt, out, resource_type, read, as_of,
                                            settings.base_url or None, bar.update)
    for path, number in written.items():
        click.echo(f"{path}: {number} resources")
    click.echo(f"As of {instant(as_of)}: {sum(written.values())} resources in "
               f"{len(written)} files.")


def _export_legacy(engine, settings: Settings, register: str, since, output: Path) -> None:
    from gateway import signing
    from gateway.export import legacy

    signer = signing.load_signer(settings.keys_path, kid=settings.signing_kid) \
        if settings.signing_kid else signing.ensure_signer(settings.keys_path,
                                                           settings.signing_alg)
    path = output / f"{register}.xml"
    with click.progressbar(length=legacy.count(engine, register, since=since),
                           label=f"Exporting {register} (legacy XML)", show_pos=True,
                           file=sys.stderr) as bar:
        with open(path, "wb") as out:
            legacy.write_legacy(engine, register, out, signer, since=since,
                                progress=bar.update)
    click.echo(f"{path}: written, signed with key {signer.kid}.")


# --- audit -------------------------------------------------------------------------------

@main.group("audit")
def audit_group() -> None:
    """The audit trail (every request that touched data, hash-chained)."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Check every record's hash and link; exit 1 at the first broken link."""
    from sqlalchemy.exc import DatabaseError

    from gateway.store import audit

    engine = _engine(load_settings())
    try:
        found = audit.verify(engine)
    except DatabaseError as exc:
        raise click.ClickException(f"cannot read the audit trail ({type(exc).__name__}); "
                                   "is the schema up to date (gateway db upgrade)?") from None
    finally:
        engine.dispose()
    if found.intact:
        click.echo(f"Audit trail intact: {found.checked} records checked.")
        return
    click.echo(f"Audit trail broken at record #{found.broken_at}: {found.reason}. "
               f"{found.checked - 1} records before it are intact.")
    sys.exit(1)
# --- end audit ---
