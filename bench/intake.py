"""How many vendor records per second the MIS intake takes, against the ceiling of its stack.

Run by hand, never from the test suite:

    .venv/bin/python bench/intake.py [--records 1000] [--csv-rows 10000]

`POST /api/v1/ingest/{mapping}` does, per record, what a clinic's MIS cannot do itself:
apply a YAML mapping, validate every resource it becomes, and write them as conditional
updates keyed by the business identifier, one store transaction per record. This measures
that path on workloads made from the valid fixtures in fixtures/mappings, each record
given business keys of its own (a distinct СНИЛС, ФРМО OID, ИНН, ОГРН, ЕНП and MIS ids, all
with valid check digits), so every timed record is a create:

  (a) bare fhir.resources R4B `model_validate` of the resources the records become
      (engine.apply in process, untimed): the ceiling, since every write goes through it;
  (b) the mapping engine alone (`engine.apply`), in process: what reading vendor data costs;
  (c) JSON arrays of 1,000 records POSTed to the real server (gunicorn, 1 worker process,
      4 threads) over HTTP, for frmo-organization, frmr-person and elmk-record;
  (d) a CSV staff list (frmr-person-csv) posted as text/csv in chunks of 1,000 rows (the
      endpoint's limit per request);
  (e) the same CSV file through `gateway import` into a new SQLite file, the whole command
      timed (start-up, migrations and НСИ loading included);
  (f) the second pass of (c) and (d): the same arrays and chunks sent again. Every record
      should come back "unchanged" (no new resource, no new version): the idempotent
      re-push a MIS does after a timeout.

Each row gives records/s and FHIR resources/s, the latter also as a ratio to (a). Every
response is checked: accepted, rejected and unchanged records are counted, and any
rejection (the workload is valid) is listed under "Problems" with its OperationOutcome.
Nothing here asserts a speed; the numbers are printed for a person to judge.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import platform
import re
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from itertools import count
from pathlib import Path

import requests
from live_server import Server, gateway_command, timed
from stdnum.ru import inn as stdnum_inn

from gateway import fhir
from gateway.mapping import csv_records, engine
from gateway.mapping.loader import load_all
from gateway.validation.identifiers import (
    ogrn_check_digit,
    oms_enp_check_digit,
    snils_check_digits,
)
from gateway.validation.terminology import load_shipped

PROJECT_DIR = Path(__file__).resolve().parents[1]
FIXTURES_DIR = PROJECT_DIR / "fixtures" / "mappings"
JSON_MAPPINGS = ("frmo-organization", "frmr-person", "elmk-record")
CSV_MAPPING = "frmr-person-csv"
CSV_TEMPLATE = FIXTURES_DIR / CSV_MAPPING / "staff-utf8.csv"
ARRAY_SIZE = 1000           # records per request: intake.MAX_RECORDS
WARMUP = 20                 # records per mapping sent before the timed rows
SERVER_THREADS = 4
FRMO_PREFIX = "1.2.643.5.1.13.13.12.2.77"
REQUEST_TIMEOUT = 600


@dataclass
class Row:
    label: str
    records: int
    resources: int
    seconds: float
    counts: dict | None = None          # accepted / rejected / unchanged
    server_cpu: float | None = None     # CPU seconds the server used during the row

    @property
    def record_rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def resource_rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- business keys with valid check digits -------------------------------------------------

class Keys:
    """Fresh identifiers, never repeated within a run (so every timed record is a create).

    Ranges are apart from the fixtures' own identifiers, and one counter serves all
    kinds, so no СНИЛС, ИНН or OID of one workload turns up in another.
    """

    def __init__(self, start: int = 1) -> None:
        self._next = count(start)

    def number(self) -> int:
        return next(self._next)

    def snils(self, written: bool = False) -> str:
        first9 = f"{200_000_000 + self.number():09d}"
        value = first9 + snils_check_digits(first9)
        return f"{value[:3]}-{value[3:6]}-{value[6:9]} {value[9:]}" if written else value

    def inn_org(self) -> str:
        first9 = f"77{self.number():07d}"
        return first9 + stdnum_inn.calc_company_check_digit(first9)

    def inn_person(self) -> str:
        first10 = f"77{self.number():08d}"
        return first10 + stdnum_inn.calc_personal_check_digits(first10)

    def ogrn(self) -> str:
        first12 = f"12077{self.number():07d}"
        return first12 + ogrn_check_digit(first12)

    def enp(self) -> str:
        first15 = f"77{self.number():013d}"
        return first15 + oms_enp_check_digit(first15)

    def frmo_oid(self) -> str:
        return f"{FRMO_PREFIX}.{100_000 + self.number()}"

    def mis_id(self, kind: str) -> str:
        return f"BENCH-{kind}-{self.number():08d}"


# --- workloads ---------------------------------------------------------------------------

def load_templates(mapping: str) -> list[dict]:
    """The valid records of a mapping's fixtures: full, minimal and the array's items."""
    folder = FIXTURES_DIR / mapping
    templates = []
    for name in ("valid-full.json", "valid-minimal.json", "valid-array.json"):
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        templates += data if isinstance(data, list) else [data]
    return templates


def _written(value) -> bool:
    return isinstance(value, str) and "-" in value


def rekey_organization(record: dict, keys: Keys) -> dict:
    record["oid"] = keys.frmo_oid()
    record["regionCode"] = "77"                      # the region arc of the OID
    record["inn"] = keys.inn_org()
    record["ogrn"] = keys.ogrn()
    if "kpp" in record:
        record["kpp"] = record["inn"][:4] + "01001"
    for number, department in enumerate(record.get("departments") or [], 1):
        department["oid"] = f"{record['oid']}.0.1.{number}"
    return record


def rekey_person(record: dict, keys: Keys) -> dict:
    record["snils"] = keys.snils(written=_written(record["snils"]))
    if "inn" in record:
        record["inn"] = keys.inn_person()
    if "document" in record:
        record["document"]["number"] = f"{keys.number() % 1_000_000:06d}"
    return record


def rekey_elmk(record: dict, keys: Keys) -> dict:
    worker, employer = record["worker"], record["employer"]
    worker["snils"] = keys.snils(written=_written(worker["snils"]))
    worker["omsPolicy"] = keys.enp()
    employer["inn"] = keys.inn_org()
    if "ogrn" in employer:
        employer["ogrn"] = keys.ogrn()
    for part, kind in (("vaccinations", "VAC"), ("examinations", "EXAM"), ("labResults", "LAB")):
        for item in record.get(part) or []:
            item["id"] = keys.mis_id(kind)
    return record


REKEY = {"frmo-organization": rekey_organization, "frmr-person": rekey_person,
         "elmk-record": rekey_elmk}


def make_records(mapping: str, n: int, keys: Keys) -> list[dict]:
    """n records cycling through the mapping's valid fixtures, each with keys of its own."""
    templates = load_templates(mapping)
    return [REKEY[mapping](copy.deepcopy(templates[i % len(templates)]), keys)
            for i in range(n)]


def make_csv_rows(n: int, keys: Keys) -> tuple[list[str], list[list[str]]]:
    """Header and n rows cycling through staff-utf8.csv, each with its own СНИЛС (and ИНН)."""
    with open(CSV_TEMPLATE, encoding="utf-8-sig", newline="") as fh:
        header, *templates = list(csv.reader(fh, delimiter=";"))
    snils_at, inn_at = header.index("СНИЛС"), header.index("ИНН")
    rows = []
    for i in range(n):
        row = list(templates[i % len(templates)])
        row[snils_at] = keys.snils(written=_written(row[snils_at]))
        if row[inn_at]:
            row[inn_at] = keys.inn_person()
        rows.append(row)
    return header, rows


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    """A file as HR departments save it: UTF-8 with a BOM, `;`, CRLF."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8-sig")


def encode(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_bodies(records: list[dict]) -> list[bytes]:
    return [encode(records[i:i + ARRAY_SIZE]) for i in range(0, len(records), ARRAY_SIZE)]


def csv_bodies(header: list[str], rows: list[list[str]]) -> list[bytes]:
    return [csv_bytes(header, rows[i:i + ARRAY_SIZE]) for i in range(0, len(rows), ARRAY_SIZE)]


# --- in-process rows ---------------------------------------------------------------------

def map_records(mapping, records: list[dict], books, report: Report) -> tuple[list[dict], float]:
    """The FHIR resources the records become (engine.apply), and the seconds it took."""
    resources, failed = [], 0
    start = time.perf_counter()
    for record in records:
        mapped = engine.apply(mapping, record, books)
        failed += any(i.severity in ("error", "fatal") for i in mapped.issues)
        resources += [item.resource for item in mapped.resources]
    seconds = time.perf_counter() - start
    if failed:
        report.problems.append(f"(b) {mapping.name}: engine.apply reported errors for "
                               f"{failed} of {len(records)} records")
    return resources, seconds


def time_bare_validation(resources: list[dict], report: Report | None = None) -> float:
    pairs = [(fhir.model_class(r["resourceType"]), r) for r in resources]
    failures: list[str] = []
    start = time.perf_counter()
    for cls, resource in pairs:
        try:
            cls.model_validate(resource)
        except ValueError as exc:        # pydantic.ValidationError is a ValueError
            failures.append(f"{resource['resourceType']}: {exc}")
    seconds = time.perf_counter() - start
    if failures and report is not None:
        report.problems.append(f"(a) model_validate refused {len(failures)} of "
                               f"{len(resources)} mapped resources; first: {failures[0][:600]}")
    return seconds


# --- HTTP rows ---------------------------------------------------------------------------

@dataclass
class Tally:
    """What the replies of one row said, record by record."""

    accepted: int = 0
    rejected: int = 0
    unchanged: int = 0
    resources: int = 0                  # resources written by accepted records
    with_warnings: int = 0
    first_rejection: dict | None = None
    first_warning: dict | None = None
    first_changed: dict | None = None   # second pass: a record that was not "unchanged"
    failures: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {"accepted": self.accepted, "rejected": self.rejected,
                "unchanged": self.unchanged}


def post_all(session: requests.Session, url: str, bodies: list[bytes],
             content_type: str) -> list[requests.Response]:
    return [session.post(url, data=body, headers={"Content-Type": content_type},
                         timeout=REQUEST_TIMEOUT) for body in bodies]


def tally_replies(replies: list[requests.Response]) -> Tally:
    tally = Tally()
    for number, reply in enumerate(replies):
        if reply.status_code != 200:
            tally.failures.append(f"request {number}: HTTP {reply.status_code}: "
                                  f"{reply.text[:500]}")
            continue
        body = reply.json()
        summary = body.get("summary", {})
        tally.accepted += summary.get("accepted", 0)
        tally.rejected += summary.get("rejected", 0)
        tally.unchanged += summary.get("unchanged", 0)
        for record in body.get("records", []):
            if record["status"] == "rejected":
                tally.first_rejection = tally.first_rejection or record
                continue
            tally.resources += len(record["resources"])
            if record.get("outcome"):
                tally.with_warnings += 1
                tally.first_warning = tally.first_warning or record
            if any(r["outcome"] != "unchanged" for r in record["resources"]):
                tally.first_changed = tally.first_changed or record
    return tally


def note_tally(label: str, tally: Tally, expected: int, second_pass: bool,
               report: Report) -> None:
    """Problems of one row: failed requests, rejections, missing records, changes on re-push."""
    for failure in tally.failures[:3]:
        report.problems.append(f"{label}: {failure}")
    seen = tally.accepted + tally.rejected
    if seen != expected and not tally.failures:
        report.problems.append(f"{label}: {seen} records answered for {expected} sent")
    if tally.rejected:
        outcome = json.dumps(tally.first_rejection.get("outcome"), ensure_ascii=False,
                             indent=2)
        report.problems.append(f"{label}: {tally.rejected} of {expected} valid records "
                               f"rejected; first (index {tally.first_rejection['index']} of "
                               f"its request):\n{_indent(outcome)}")
    if second_pass and tally.accepted != tally.unchanged:
        changed = json.dumps(tally.first_changed, ensure_ascii=False)[:800]
        report.problems.append(f"{label}: {tally.accepted - tally.unchanged} of "
                               f"{tally.accepted} re-pushed records were not 'unchanged'; "
                               f"first: {changed}")
    if tally.with_warnings:
        outcome = json.dumps(tally.first_warning.get("outcome"), ensure_ascii=False)[:800]
        report.notes.append(f"{label}: {tally.with_warnings} accepted records carried "
                            f"warnings; first: {outcome}")


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def note_request_times(label: str, replies: list[requests.Response], report: Report) -> None:
    """First, last, fastest and slowest request of a row: does the rate fall as data grows?"""
    if len(replies) < 3:
        return
    times = [reply.elapsed.total_seconds() for reply in replies]
    report.notes.append(f"{label}: {len(times)} requests, first {times[0]:.2f} s, last "
                        f"{times[-1]:.2f} s, fastest {min(times):.2f} s, slowest "
                        f"{max(times):.2f} s")


@dataclass
class Workload:
    label: str
    url_name: str
    content_type: str
    bodies: list[bytes]
    records: int


def run_http_rows(workloads: list[Workload], warmups: list[Workload], server: Server,
                  report: Report) -> None:
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {server.token}",
                            "Accept": "application/json"})
    with session:
        for warm in warmups:                        # first requests pay for imports, caches
            url = f"{server.base}/api/v1/ingest/{warm.url_name}"
            note_tally(f"warm-up {warm.label}", tally_replies(
                post_all(session, url, warm.bodies, warm.content_type)),
                warm.records, False, report)
        for second_pass in (False, True):
            for work in workloads:
                url = f"{server.base}/api/v1/ingest/{work.url_name}"
                label = f"(f) re-push {work.label[4:]}" if second_pass else work.label
                seconds, cpu, replies = timed(server, lambda w=work, u=url: post_all(
                    session, u, w.bodies, w.content_type))
                tally = tally_replies(replies)
                note_tally(label, tally, work.records, second_pass, report)
                note_request_times(label, replies, report)
                report.rows.append(Row(label, work.records, tally.resources, seconds,
                                       tally.counts(), cpu))


# --- the CLI row -------------------------------------------------------------------------

CLI_SUMMARY = re.compile(r"Rows read: (\d+), accepted: (\d+) \(unchanged: (\d+)\), "
                         r"rejected: (\d+)\.")


def run_cli_import(data: bytes) -> tuple[float, dict | None, str]:
    """`gateway import` of one file into a new SQLite file: seconds, counts, output."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-import-") as tmp:
        path = Path(tmp) / "staff.csv"
        path.write_bytes(data)
        env = dict(os.environ, GATEWAY_DATA_DIR=tmp,
                   GATEWAY_DATABASE_URL=f"sqlite:///{Path(tmp) / 'import.sqlite3'}")
        command = [gateway_command(), "import", "--mapping", CSV_MAPPING, str(path)]
        start = time.perf_counter()
        out = subprocess.run(command, env=env, capture_output=True, text=True,
                             encoding="utf-8", errors="replace", check=False)
        seconds = time.perf_counter() - start
    output = (out.stdout + out.stderr).strip()
    match = CLI_SUMMARY.search(out.stdout) if out.returncode == 0 else None
    if not match:
        return seconds, None, output
    _, accepted, unchanged, rejected = (int(g) for g in match.groups())
    return seconds, {"accepted": accepted, "rejected": rejected, "unchanged": unchanged}, output


def add_cli_row(data: bytes, rows: int, resources: int, report: Report) -> None:
    label = f"(e) {CSV_MAPPING}, `gateway import`"
    seconds, counts, output = run_cli_import(data)
    if counts is None:
        report.problems.append(f"{label}: failed or printed no summary:\n"
                               f"{_indent(output[-2000:])}")
        return
    if counts["rejected"]:
        report.problems.append(f"{label}: {counts['rejected']} of {rows} valid rows "
                               f"rejected:\n{_indent(output[-1500:])}")
    written = resources * counts["accepted"] // rows if rows else 0
    report.rows.append(Row(label, rows, written, seconds, counts))
    header, first_row, _ = data.split(b"\r\n", 2)
    fixed, _, _ = run_cli_import(header + b"\r\n" + first_row + b"\r\n")
    report.notes.append(f"(e) is the whole command, start-up included: a 1-row file takes "
                        f"{fixed:.2f} s with the same command.")


# --- output ------------------------------------------------------------------------------

def print_header(args: argparse.Namespace) -> None:
    print("Gateway intake benchmark (POST /api/v1/ingest/{mapping})")
    print(f"  Python          {platform.python_version()} ({platform.python_implementation()})")
    print(f"  fhir.resources  {version('fhir.resources')} (R4B models)")
    print(f"  database        SQLite {sqlite3.sqlite_version} (new file in a temporary "
          "directory, one for the server, one for the CLI)")
    print(f"  cores           {os.cpu_count()} (os.cpu_count())")
    print(f"  server          gateway serve --workers 1 --threads {SERVER_THREADS} "
          "(gunicorn gthread)")
    print(f"  workload        {args.records:,} records per JSON mapping "
          f"({', '.join(JSON_MAPPINGS)}), arrays of {ARRAY_SIZE:,};")
    print(f"                  {args.csv_rows:,}-row CSV ({CSV_MAPPING}), chunks of "
          f"{ARRAY_SIZE:,} rows; 1 client thread, requests one after another")
    for mapping in JSON_MAPPINGS:
        print(f"    {mapping:18} {len(load_templates(mapping))} valid fixture records, "
              f"cycled, each with its own keys")
    print()


def print_table(report: Report) -> None:
    ceiling = report.rows[0].resource_rate if report.rows else 0.0
    header = (f"{'':40} {'records':>7} {'resources':>9} {'seconds':>8} {'records/s':>10} "
              f"{'resources/s':>11} {'vs (a)':>7} {'accepted':>8} {'rejected':>8} "
              f"{'unchanged':>9} {'server CPU':>10}")
    print(header)
    print("-" * len(header))
    for row in report.rows:
        ratio = f"{row.resource_rate / ceiling:.2f}x" if ceiling else "-"
        cpu = f"{100 * row.server_cpu / row.seconds:.0f}%" if row.server_cpu is not None \
            else "-"
        counts = row.counts or {}
        acc, rej, unch = (f"{counts[k]:,}" if k in counts else "-"
                          for k in ("accepted", "rejected", "unchanged"))
        print(f"{row.label:40} {row.records:>7,} {row.resources:>9,} {row.seconds:>8.2f} "
              f"{row.record_rate:>10,.0f} {row.resource_rate:>11,.0f} {ratio:>7} "
              f"{acc:>8} {rej:>8} {unch:>9} {cpu:>10}")
    print()
    print("resources: FHIR resources the records became (HTTP rows: as the replies list them;")
    print("(e): the in-process count for the accepted rows). (a) and (b) run on one thread of")
    print("this process; the server runs 1 worker process (one GIL), so the HTTP figures are")
    print("per core. 'server CPU' is the server's CPU time over the row's wall time (100% =")
    print("one core); the client shares the machine.")


def print_problems(report: Report, server_log: list[str]) -> None:
    print()
    for note in report.notes:
        print(f"Note: {note}")
    if report.notes:
        print()
    if not report.problems:
        print("Problems: none (every request answered 200, every valid record accepted, "
              "every re-pushed record unchanged).")
        return
    print("Problems:")
    for problem in report.problems:
        print(f"  - {problem}")
    if server_log:
        print("Server output (last lines, access log left out):")
        for line in server_log[-40:]:
            print(f"    {line}")


# --- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000,
                        help="records per JSON mapping (default 1000)")
    parser.add_argument("--csv-rows", type=int, default=10000,
                        help="rows of the CSV staff list (default 10000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keys = Keys()
    books = load_shipped()
    mappings = load_all(books)
    records = {name: make_records(name, args.records, keys) for name in JSON_MAPPINGS}
    header, rows = make_csv_rows(args.csv_rows, keys)
    csv_file = csv_bytes(header, rows)
    records[CSV_MAPPING] = csv_records.read_records(csv_file, mappings[CSV_MAPPING])
    print_header(args)
    report = Report()

    # (a) and (b): the mapped resources, in process
    map_seconds, per_mapping = 0.0, {}
    for name, batch in records.items():
        map_records(mappings[name], batch[:WARMUP], books, Report())
        per_mapping[name], seconds = map_records(mappings[name], batch, books, report)
        map_seconds += seconds
    total_records = sum(len(batch) for batch in records.values())
    total_resources = sum(len(res) for res in per_mapping.values())
    time_bare_validation([r for res in per_mapping.values() for r in res[:100]])
    validate_seconds = {name: time_bare_validation(res, report)
                        for name, res in per_mapping.items()}
    report.rows.append(Row("(a) fhir.resources R4B model_validate", total_records,
                           total_resources, sum(validate_seconds.values())))
    report.rows.append(Row("(b) mapping engine.apply, in process", total_records,
                           total_resources, map_seconds))
    rates = ", ".join(f"{name} {len(per_mapping[name]) / seconds:,.0f}"
                      for name, seconds in validate_seconds.items())
    report.notes.append(f"(a) per mapping, resources/s: {rates}")

    # (c), (d), (f): the real server
    json_type, csv_type = "application/json", "text/csv; charset=utf-8"
    workloads = [Workload(f"(c) {name}, JSON", name, json_type,
                          json_bodies(records[name]), len(records[name]))
                 for name in JSON_MAPPINGS]
    workloads.append(Workload(f"(d) {CSV_MAPPING}, text/csv",
                              CSV_MAPPING, csv_type, csv_bodies(header, rows), len(rows)))
    warm_keys = Keys(start=5_000_000)               # apart from the timed keys
    warmups = [Workload(name, name, json_type, json_bodies(make_records(name, WARMUP, warm_keys)),
                        WARMUP) for name in JSON_MAPPINGS]
    warmups.append(Workload(CSV_MAPPING, CSV_MAPPING, csv_type,
                            csv_bodies(*make_csv_rows(WARMUP, warm_keys)), WARMUP))
    server_log: list[str] = []
    try:
        with Server(threads=SERVER_THREADS, prefix="gateway-bench-intake-") as server:
            try:
                run_http_rows(workloads, warmups, server, report)
            finally:
                server_log = list(server.log)
    except (RuntimeError, requests.RequestException, subprocess.CalledProcessError) as exc:
        report.problems.append(f"HTTP rows stopped: {type(exc).__name__}: {exc}")

    # (e): the CLI, into its own new SQLite file
    add_cli_row(csv_file, len(rows), len(per_mapping[CSV_MAPPING]), report)
    report.rows.sort(key=lambda row: row.label[:3])  # (a) … (f), in the order of the doc

    print_table(report)
    print_problems(report, server_log)


if __name__ == "__main__":
    main()
