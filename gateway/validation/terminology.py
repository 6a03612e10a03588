"""НСИ terminology: which codes of the Минздрав reference books the gateway accepts.

ЕГИСЗ rejects a document whose coded values are not in the НСИ book they claim, and it
does so long after the clinic pressed "send". This stage catches that at intake: a Coding
whose system is `urn:oid:<OID of a held book>` must carry a code of that book, and its
display, if given, should be the book's name for the code.

Books come from two places:

* the small subsets shipped in `mappings/nsi/` (`load_shipped()`), enough for tests,
  fixtures and a fresh install;
* full books exported from the НСИ portal (nsi.rosminzdrav.ru, FNSI REST API) as JSON
  parts plus a passport, or as CSV. `load_path()` reads them, `save_book()` stores them
  normalised in the data folder, and the app `add()`s `load_saved()` on top of the
  subsets at start, so a full book of the same or a newer version wins.

Lookups are dictionaries, so a check costs the same for a 60-row book and for МКБ-10.
This module is pure apart from reading (and, in `save_book`, writing) book files: no
Flask, no database.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gateway.issues import Issue

# OIDs of the books other stages refer to.
POSITIONS = "1.2.643.5.1.13.13.11.1002"
SPECIALTIES = "1.2.643.5.1.13.13.11.1066"
REGIONS = "1.2.643.5.1.13.13.99.2.206"
VACCINES = "1.2.643.5.1.13.13.11.1078"
LAB_TESTS = "1.2.643.5.1.13.13.11.1080"
ICD10 = "1.2.643.5.1.13.13.11.1005"
EVENT_KINDS = "1.2.643.5.1.13.13.99.2.726"
UNITS = "1.2.643.5.1.13.13.11.1358"
VACCINE_GROUPS = "1.2.643.5.1.13.13.99.2.848"

OID_PREFIX = "urn:oid:"
# Every Минздрав НСИ book lives under this arc; a system here that we do not hold is worth
# a warning, because the code in it went unchecked.
NSI_ARC = "1.2.643.5.1.13.13."

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "mappings" / "nsi"

# Where a book's Coding.code and Coding.display live when the passport's keys do not say it
# right. МКБ-10's primary key is a row number (ID), yet codings carry MKB_CODE. Displays
# follow the columns SEMD uses (1CMedicine/semd_validator, data/FNSIlist.txt); 1358 keeps
# NAME although SEMD shows SHORTNAME, so the shipped subset and a loaded book agree.
_CODE_COLUMNS: dict[str, tuple[str, ...]] = {ICD10: ("MKB_CODE",)}
_DISPLAY_COLUMNS: dict[str, tuple[str, ...]] = {
    ICD10: ("MKB_NAME",),
    REGIONS: ("NAME", "SUBJECT"),
    VACCINES: ("NAMESH", "NAME"),
    LAB_TESTS: ("FULLNAME", "NAME"),
}

_VERSION = re.compile(r"^\d+(?:\.\d+)*$")
_PORTAL_FILE = re.compile(
    r"^(?P<oid>\d+(?:\.\d+)+)_(?P<version>\d+(?:\.\d+)*)_"
    r"(?:part(?P<part>\d+)|(?P<passport>passport))(?:\.json)?$")
_CSV_FILE = re.compile(r"^(?P<oid>\d+(?:\.\d+)+)(?:_(?P<version>\d+(?:\.\d+)*))?\.csv$", re.I)
_CSV_PASSPORT = ".passport.json"


class BookError(ValueError):
    """A book (file) that cannot be understood; the message names the file."""


def version_key(version: str) -> tuple[int, ...]:
    """Order НСИ versions numerically, dot by dot: "3.50" > "3.9" and "3.10" > "3.9".

    НСИ numbers versions major.minor with a plain integer minor part, so 3.50 comes
    after 3.49, not between 3.4 and 3.6 as a decimal reading would have it.
    """
    if not _VERSION.match(version):
        raise BookError(f"НСИ version {version!r} is not numbers separated by dots")
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class Book:
    """One НСИ book, or the part of it we hold: code → display, at one version."""

    oid: str
    version: str
    title: str
    codes: Mapping[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        version_key(self.version)
        object.__setattr__(self, "codes", MappingProxyType(dict(self.codes)))

    @property
    def system(self) -> str:
        return OID_PREFIX + self.oid

    def has(self, code: str) -> bool:
        return code in self.codes

    def display(self, code: str) -> str | None:
        return self.codes.get(code)


class Terminology:
    """The books the gateway checks codes against, one version per OID."""

    def __init__(self, books: Iterable[Book] = ()) -> None:
        self._books: dict[str, Book] = {}
        for book in books:
            self.add(book)

    def add(self, book: Book) -> bool:
        """Hold `book` unless a newer version of it is held already; True if it was taken.

        Versions compare numerically (see `version_key`). An equal version replaces the
        held one, so a full book loaded from the portal supersedes the shipped subset of
        the same version.
        """
        held = self._books.get(book.oid)
        if held is not None and version_key(book.version) < version_key(held.version):
            return False
        self._books[book.oid] = book
        return True

    def book(self, oid: str) -> Book | None:
        return self._books.get(oid)

    def find(self, system: str) -> Book | None:
        """The book a Coding.system names, for `urn:oid:<OID>` systems only."""
        if not system.startswith(OID_PREFIX):
            return None
        return self._books.get(system[len(OID_PREFIX):])

    def __contains__(self, oid_or_system: object) -> bool:
        if not isinstance(oid_or_system, str):
            return False
        return oid_or_system in self._books or self.find(oid_or_system) is not None

    def books(self) -> list[Book]:
        return sorted(self._books.values(), key=lambda b: b.oid)


# --- checking codings -------------------------------------------------------------------

def check_coding(terminology: Terminology, coding: dict, expression: str) -> list[Issue]:
    """Problems with one Coding found at FHIRPath `expression`.

    `expression` points at the Coding itself, e.g. "Practitioner.qualification[0].code
    .coding[0]"; issues point at its `.code`, `.display` or `.system`.

    A code missing from a held book is an error; a display that is not the book's name is
    a warning; a Минздрав book we do not hold is a warning (the code went unchecked);
    any other system is not ours to judge. A coding without system or code is left to
    the structure checks.
    """
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str) or not isinstance(code, str) or not code:
        return []
    book = terminology.find(system)
    if book is None:
        return _unheld_nsi_book(system, code, expression)
    if not book.has(code):
        return [_unknown_code(book, code, coding.get("version"), expression)]
    display, expected = coding.get("display"), book.display(code) or ""
    if isinstance(display, str) and display.strip() and not same_display(display, expected):
        return [_wrong_display(book, code, display, expected, expression)]
    return []


def same_display(given: str, expected: str) -> bool:
    """Displays match ignoring case, ё/е and runs of spaces (clinics type them by hand)."""
    return _fold(given) == _fold(expected)


def _fold(text: str) -> str:
    return " ".join(text.casefold().replace("ё", "е").split())


def _book_ru(book: Book) -> str:
    return f"справочнике НСИ «{book.title}» (OID {book.oid}, загружена версия {book.version})"


def _book_en(book: Book) -> str:
    return f"НСИ book {book.oid} «{book.title}» (loaded version {book.version})"


def _unknown_code(book: Book, code: str, version: object, expression: str) -> Issue:
    asked = f" The coding names version {version}." if isinstance(version, str) else ""
    return Issue(
        code="code-invalid",
        text_ru=(f"Код «{code}» отсутствует в {_book_ru(book)}. Выберите код из этого "
                 "справочника; если код есть в более новой версии справочника, загрузите "
                 "её командой `gateway nsi load`."),
        diagnostics=(f"Code {code!r} is not in {_book_en(book)}.{asked} Choose a code from "
                     "that book, or load a newer version with `gateway nsi load`."),
        expression=f"{expression}.code",
    )


def _wrong_display(book: Book, code: str, display: str, expected: str,
                   expression: str) -> Issue:
    return Issue(
        code="code-invalid",
        severity="warning",
        text_ru=(f"Наименование «{display}» не совпадает с наименованием кода «{code}» в "
                 f"{_book_ru(book)}: «{expected}». Укажите наименование из справочника."),
        diagnostics=(f"Display {display!r} differs from the name of code {code!r} in "
                     f"{_book_en(book)}: {expected!r}. Send the book's name."),
        expression=f"{expression}.display",
    )


def _unheld_nsi_book(system: str, code: str, expression: str) -> list[Issue]:
    oid = system[len(OID_PREFIX):] if system.startswith(OID_PREFIX) else ""
    if not oid.startswith(NSI_ARC):
        return []
    return [Issue(
        code="not-supported",
        severity="warning",
        text_ru=(f"Справочник НСИ {oid} не загружен в шлюз, поэтому код «{code}» не "
                 "проверен. Чтобы такие коды проверялись, загрузите справочник командой "
                 "`gateway nsi load`."),
        diagnostics=(f"НСИ book {oid} is not loaded, so code {code!r} was not checked. "
                     "Load the book with `gateway nsi load` to have it checked."),
        expression=f"{expression}.system",
    )]


# --- shipped subsets --------------------------------------------------------------------

def load_shipped(directory: Path = SHIPPED_DIR) -> Terminology:
    """The subsets in `mappings/nsi/`: `books.toml` says version and title of each CSV."""
    return Terminology(
        read_csv_book(directory / f"{oid}.csv", oid, version, title)
        for oid, (version, title) in _shipped_index(directory).items())


def _shipped_index(directory: Path) -> dict[str, tuple[str, str]]:
    path = directory / "books.toml"
    try:
        with path.open("rb") as f:
            tables = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BookError(f"{path}: cannot read the list of shipped books: {exc}") from exc
    index = {}
    for oid, meta in tables.items():
        if not isinstance(meta, dict) or "version" not in meta or "title" not in meta:
            raise BookError(f"{path}: [{oid!r}] needs `version` and `title`")
        index[oid] = (str(meta["version"]), str(meta["title"]))
    return index


# --- choosing the code and display columns ----------------------------------------------

def _pick_columns(oid: str, columns: list[str], primary: str | None = None,
                  value: str | None = None) -> tuple[str, str] | None:
    """(code column, display column) among `columns`, or None if there is no second column.

    Code: the book's known code column, the passport's PRIMARY key, ID/code, else the
    first column. Display: the book's known display column, the passport's VALUE key,
    NAME, else the second column.
    """
    if not columns:
        return None
    code = _first_present(columns, *_CODE_COLUMNS.get(oid, ()), primary, "ID", "CODE")
    code = code or columns[0]
    rest = [c for c in columns if c != code]
    if not rest:
        return None
    display = _first_present(rest, *_DISPLAY_COLUMNS.get(oid, ()), value, "NAME")
    return code, display or rest[0]


def _first_present(columns: list[str], *wanted: str | None) -> str | None:
    by_upper = {c.upper(): c for c in reversed(columns)}
    for name in wanted:
        if name and name.upper() in by_upper:
            return by_upper[name.upper()]
    return None


def _collect(rows: Iterable[Mapping[str, object]], code_col: str,
             display_col: str) -> dict[str, str]:
    """code → display; rows without a code (МКБ-10 classes and blocks) are skipped."""
    codes: dict[str, str] = {}
    for row in rows:
        code = _text(row.get(code_col))
        if code:
            codes.setdefault(code, _text(row.get(display_col)))
    return codes


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


# --- portal JSON (FNSI REST: /port/rest/data parts + /port/rest/passport) ---------------

def read_portal_json(rows_paths: list[Path], passport_path: Path) -> Book:
    """A book from FNSI REST JSON: `rows_paths` are the data parts, in order."""
    passport = _read_json(passport_path)
    oid, version, title = _passport_identity(passport, passport_path)
    rows: list[dict[str, object]] = []
    totals: list[object] = []
    for path in rows_paths:
        part_rows, total = _portal_part(path)
        rows.extend(part_rows)
        totals.append(total)
    _check_row_count(passport.get("rowsCount", totals[0] if totals else None), len(rows),
                     oid, version, passport_path)
    columns = list(rows[0]) if rows else []
    chosen = _pick_columns(oid, columns, _key(passport, "PRIMARY"), _key(passport, "VALUE"))
    if chosen is None:
        raise BookError(f"{rows_paths[0] if rows_paths else passport_path}: book {oid} "
                        f"{version} has no rows with a code and a name column")
    return Book(oid, version, title, _collect(rows, *chosen))


def _passport_identity(passport: object, path: Path) -> tuple[str, str, str]:
    if not isinstance(passport, dict) or not passport.get("oid") or not passport.get("version"):
        raise BookError(f"{path}: not an НСИ passport (needs `oid` and `version`)")
    oid, version = str(passport["oid"]), str(passport["version"])
    title = passport.get("fullName") or passport.get("shortName") or f"НСИ {oid}"
    try:
        version_key(version)
    except BookError as exc:
        raise BookError(f"{path}: {exc}") from None
    return oid, version, str(title)


def _key(passport: dict, kind: str) -> str | None:
    for key in passport.get("keys") or ():
        if isinstance(key, dict) and key.get("type") == kind and key.get("field"):
            return str(key["field"])
    return None


def _portal_part(path: Path) -> tuple[list[dict[str, object]], object]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("list"), list):
        raise BookError(f"{path}: not an НСИ data part (expected {{\"list\": [[...], ...]}})")
    if data.get("result", "OK") != "OK":
        raise BookError(f"{path}: the portal answered {data.get('result')!r}: "
                        f"{data.get('resultText')}")
    rows = []
    for number, cells in enumerate(data["list"], start=1):
        try:
            rows.append({str(c["column"]): c.get("value") for c in cells})
        except (TypeError, KeyError, AttributeError):
            raise BookError(f"{path}: row {number} is not a list of "
                            "{\"column\": ..., \"value\": ...} cells") from None
    return rows, data.get("total")


def _check_row_count(expected: object, got: int, oid: str, version: str, path: Path) -> None:
    if isinstance(expected, str) and expected.isdigit():
        expected = int(expected)
    if isinstance(expected, int) and expected != got:
        raise BookError(
            f"{path}: book {oid} version {version} has {expected} rows but the parts hold "
            f"{got}; some `_partN` files are missing or incomplete, download them all")


def _read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise BookError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BookError(f"{path}: not UTF-8 JSON: {exc}") from exc


# --- CSV exports ------------------------------------------------------------------------

def read_csv_book(path: Path, oid: str, version: str, title: str) -> Book:
    """A book from a CSV with a header row; `;` or `,` separated, UTF-8 with or without BOM.

    The code column is ID/code (MKB_CODE for МКБ-10), else the first; the display column
    NAME/name (per-book defaults as for portal JSON), else the second.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BookError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BookError(f"{path}: not UTF-8 (save the export as UTF-8): {exc}") from exc
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c.strip() for c in reader.fieldnames or ()]
    chosen = _pick_columns(oid, header) if header else None
    if chosen is None:
        raise BookError(f"{path}: expected a header row with a code and a name column "
                        f"separated by ';' or ','")
    reader.fieldnames = header
    return Book(oid, version, title, _collect(reader, *chosen))


# --- files and folders as the portal gives them ------------------------------------------

def load_path(path: Path) -> list[Book]:
    """Every book in a file or a folder (not recursive), sorted by OID and version.

    Understood names: `<OID>_<version>_part<N>` with `<OID>_<version>_passport` (each may
    end in `.json`), `<OID>_<version>.csv`, and `<OID>.csv` with `<OID>.passport.json`.
    Hidden files and README files in a folder are skipped; anything else is a BookError.
    """
    path = Path(path)
    if path.is_dir():
        directory = path
        files = [p for p in sorted(path.iterdir()) if p.is_file() and not _skipped(p)]
    elif path.is_file():
        directory, files = path.parent, [_csv_of_passport(path) or path]
    else:
        raise BookError(f"{path}: no such file or folder")
    for p in files:
        _require_understood(p)
    books = [_read_csv_named(p) for p in files if _CSV_FILE.match(p.name)]
    covered = {(b.oid, b.version) for b in books}
    books += [_read_portal_group(directory, *key) for key in _portal_keys(files, covered)]
    return sorted(books, key=lambda b: (b.oid, version_key(b.version)))


def _skipped(path: Path) -> bool:
    return path.name.startswith(".") or path.name.upper().startswith("README")


def _csv_of_passport(path: Path) -> Path | None:
    """`<OID>.csv` for `<OID>.passport.json`, if `path` is such a passport."""
    if not path.name.endswith(_CSV_PASSPORT):
        return None
    csv_path = path.with_name(path.name[:-len(_CSV_PASSPORT)] + ".csv")
    if not csv_path.exists():
        raise BookError(f"{path}: passport without its CSV ({csv_path.name})")
    return csv_path


def _require_understood(path: Path) -> None:
    name = path.name
    if _CSV_FILE.match(name) or _PORTAL_FILE.match(name) or _csv_of_passport(path):
        return
    raise BookError(
        f"{path}: not an НСИ book file; expected <OID>_<version>_partN and "
        "<OID>_<version>_passport from the portal, or <OID>_<version>.csv")


def _portal_keys(files: list[Path], covered: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """(OID, version) of each portal book among `files`.

    A passport with no parts is left out when a CSV of the same version came with it
    (the CSV reader takes its title from it).
    """
    keys: list[tuple[str, str]] = []
    with_parts = set()
    for p in files:
        m = _PORTAL_FILE.match(p.name)
        if m:
            key = (m["oid"], m["version"])
            keys += [] if key in keys else [key]
            if m["part"]:
                with_parts.add(key)
    return [k for k in keys if k in with_parts or k not in covered]


def _read_portal_group(directory: Path, oid: str, version: str) -> Book:
    """Passport and parts 1..N of one book version found in `directory`."""
    passport, parts = None, {}
    for p in directory.iterdir():
        m = _PORTAL_FILE.match(p.name)
        if m and (m["oid"], m["version"]) == (oid, version):
            if m["passport"]:
                passport = p
            else:
                parts[int(m["part"])] = p
    stem = directory / f"{oid}_{version}"
    if passport is None:
        raise BookError(f"{stem}_part*: no passport; download {oid}_{version}_passport too")
    if not parts:
        raise BookError(f"{passport}: no data parts ({oid}_{version}_part1, ...) beside it")
    missing = [n for n in range(1, max(parts) + 1) if n not in parts]
    if missing:
        names = ", ".join(f"{oid}_{version}_part{n}" for n in missing)
        raise BookError(f"{stem}_part*: missing {names}")
    book = read_portal_json([parts[n] for n in sorted(parts)], passport)
    if (book.oid, book.version) != (oid, version):
        raise BookError(f"{passport}: the passport is for {book.oid} version {book.version}, "
                        f"the file name says {oid} version {version}")
    return book


def _read_csv_named(path: Path) -> Book:
    m = _CSV_FILE.match(path.name)
    assert m is not None
    oid, version = m["oid"], m["version"]
    passport_path = _csv_passport(path, oid, version)
    if passport_path is not None:
        p_oid, p_version, title = _passport_identity(_read_json(passport_path), passport_path)
        if p_oid != oid or (version and version != p_version):
            raise BookError(f"{passport_path}: passport of {p_oid} {p_version} does not "
                            f"match {path.name}")
        return read_csv_book(path, oid, p_version, title)
    if not version:
        raise BookError(f"{path}: the book version is unknown; name the file "
                        f"{oid}_<version>.csv or put {oid}{_CSV_PASSPORT} beside it")
    return read_csv_book(path, oid, version, _known_title(oid))


def _csv_passport(path: Path, oid: str, version: str | None) -> Path | None:
    names = [f"{oid}{_CSV_PASSPORT}"]
    if version:
        names += [f"{oid}_{version}_passport", f"{oid}_{version}_passport.json"]
    return next((path.with_name(n) for n in names if path.with_name(n).is_file()), None)


def _known_title(oid: str) -> str:
    """The shipped title for a CSV that came without a passport."""
    try:
        return _shipped_index(SHIPPED_DIR).get(oid, ("", f"НСИ {oid}"))[1]
    except BookError:
        return f"НСИ {oid}"


# --- the data folder ---------------------------------------------------------------------

def save_book(book: Book, directory: Path) -> Path:
    """Store `book` as `<directory>/<OID>.json`, replacing any stored version of it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{book.oid}.json"
    data = {"oid": book.oid, "version": book.version, "title": book.title,
            "codes": dict(book.codes)}
    # Write then rename, so a running app never reads a half-written book.
    temporary = directory / f".{book.oid}.json.tmp"
    temporary.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(temporary, target)
    return target


def load_saved(directory: Path) -> list[Book]:
    """The books `save_book` stored in `directory`; none if it does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [_saved_book(p) for p in sorted(directory.glob("*.json"))
            if not p.name.startswith(".")]


def _saved_book(path: Path) -> Book:
    data = _read_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("codes"), dict)
            and all(isinstance(data.get(k), str) for k in ("oid", "version", "title"))):
        raise BookError(f"{path}: not a stored НСИ book (oid, version, title, codes)")
    if data["oid"] != path.stem:
        raise BookError(f"{path}: holds book {data['oid']}, the file name says {path.stem}")
    try:
        return Book(data["oid"], data["version"], data["title"], data["codes"])
    except BookError as exc:
        raise BookError(f"{path}: {exc}") from None
