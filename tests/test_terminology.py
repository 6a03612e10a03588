"""The terminology stage: which НСИ codes the gateway accepts, and where books come from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.validation.terminology import (
    EVENT_KINDS,
    ICD10,
    LAB_TESTS,
    POSITIONS,
    REGIONS,
    SPECIALTIES,
    UNITS,
    VACCINE_GROUPS,
    VACCINES,
    Book,
    BookError,
    Terminology,
    check_coding,
    load_path,
    load_saved,
    load_shipped,
    read_csv_book,
    read_portal_json,
    save_book,
    version_key,
)

PORTAL_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "nsi-portal"
AT = "Practitioner.qualification[0].code.coding[0]"


@pytest.fixture(scope="module")
def shipped() -> Terminology:
    return load_shipped()


def coding(oid: str, code: str, display: str | None = None) -> dict:
    c = {"system": f"urn:oid:{oid}", "code": code}
    if display is not None:
        c["display"] = display
    return c


def portal_part(rows: list[dict[str, str | None]], total: int | None = None) -> dict:
    """A /port/rest/data answer holding `rows` (column → value)."""
    return {"result": "OK", "resultText": None, "total": total,
            "list": [[{"column": k, "value": v} for k, v in row.items()] for row in rows]}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# --- the shipped subsets --------------------------------------------------------------

@pytest.mark.parametrize(("oid", "version"), [
    (POSITIONS, "9.6"), (SPECIALTIES, "5.4"), (REGIONS, "6.5"), (VACCINES, "4.5"),
    (VACCINE_GROUPS, "1.3"), (LAB_TESTS, "3.50"), (ICD10, "2.24"), (EVENT_KINDS, "3.10"),
    (UNITS, "3.23"),
])
def test_every_shipped_subset_loads_at_its_source_version(shipped, oid, version):
    book = shipped.book(oid)
    assert book is not None
    assert book.version == version
    assert book.system == f"urn:oid:{oid}"
    assert len(book.codes) > 0


def test_shipped_positions_hold_the_books_own_names(shipped):
    positions = shipped.book(POSITIONS)
    assert positions.title == "Должности медицинских и фармацевтических работников"
    assert positions.display("109") == "Врач-терапевт"
    assert positions.display("159") == "Медицинская сестра"


def test_regions_are_shipped_in_full_and_coded_by_id(shipped):
    regions = shipped.book(REGIONS)
    assert len(regions.codes) == 90
    assert regions.display("77") == "г. Москва"
    assert regions.display("61") == "Ростовская область"
    assert not regions.has("01"), "the zero-padded ФНС code is a separate column"


def test_icd10_is_coded_by_mkb_code_including_minzdrav_additions(shipped):
    icd10 = shipped.book(ICD10)
    assert icd10.display("Z00.0") == "Общий медицинский осмотр"
    assert icd10.has("U07.1")


def test_other_books_use_the_display_columns_semd_uses(shipped):
    assert shipped.book(LAB_TESTS).display("1017128") == (
        "Гемоглобин общий, массовая концентрация в крови")
    assert shipped.book(EVENT_KINDS).display("19") == "Медицинский периодический осмотр"
    assert shipped.book(UNITS).display("60") == "Грамм в литре"


# --- checking codings -------------------------------------------------------------------

def test_a_known_code_with_the_books_display_passes(shipped):
    assert check_coding(shipped, coding(POSITIONS, "109", "Врач-терапевт"), AT) == []


def test_an_unknown_code_is_code_invalid_naming_book_and_version(shipped):
    [issue] = check_coding(shipped, coding(POSITIONS, "99999"), AT)
    assert issue.code == "code-invalid"
    assert issue.severity == "error"
    assert issue.expression == f"{AT}.code"
    for text in (issue.text_ru, issue.diagnostics):
        assert "99999" in text
        assert POSITIONS in text
        assert "9.6" in text
        assert "gateway nsi load" in text
    assert "Должности медицинских и фармацевтических работников" in issue.text_ru


def test_the_unknown_code_diagnostic_mentions_the_version_the_coding_names(shipped):
    c = coding(POSITIONS, "99999") | {"version": "9.12"}
    [issue] = check_coding(shipped, c, AT)
    assert "9.12" in issue.diagnostics


def test_a_wrong_display_is_a_warning_on_display(shipped):
    [issue] = check_coding(shipped, coding(POSITIONS, "109", "Врач-хирург"), AT)
    assert issue.severity == "warning"
    assert issue.code == "code-invalid"
    assert issue.expression == f"{AT}.display"
    assert "Врач-терапевт" in issue.text_ru


@pytest.mark.parametrize("display", [
    "врач-терапевт", "ВРАЧ-ТЕРАПЕВТ", "  Врач-терапевт ",
])
def test_display_ignores_case_and_spacing(shipped, display):
    assert check_coding(shipped, coding(POSITIONS, "109", display), AT) == []


def test_display_treats_yo_as_ye(shipped):
    # The book writes «подсчёта»; clinics often type «подсчета».
    display = "Гематокрит крови методом автоматизированного подсчета"
    assert check_coding(shipped, coding(LAB_TESTS, "1017359", display), AT) == []


@pytest.mark.parametrize("system", [
    "http://loinc.org", "urn:oid:1.2.643.2.69.1.1.1.6.223", "https://fhir.ru/ig/core/systems/snils",
])
def test_systems_outside_nsi_are_not_judged(shipped, system):
    assert check_coding(shipped, {"system": system, "code": "whatever"}, AT) == []


def test_an_nsi_book_not_loaded_is_a_warning_that_the_code_went_unchecked(shipped):
    nmu = "1.2.643.5.1.13.13.11.1070"
    [issue] = check_coding(shipped, coding(nmu, "A01.01.001"), AT)
    assert issue.severity == "warning"
    assert issue.code == "not-supported"
    assert nmu in issue.text_ru
    assert "не проверен" in issue.text_ru


@pytest.mark.parametrize("c", [
    {"system": f"urn:oid:{POSITIONS}"}, {"code": "109"}, {"system": f"urn:oid:{POSITIONS}",
                                                           "code": ""},
])
def test_a_coding_without_system_or_code_is_left_to_structure_checks(shipped, c):
    assert check_coding(shipped, c, AT) == []


# --- versions ---------------------------------------------------------------------------

def test_versions_compare_numerically_dot_by_dot():
    assert version_key("3.50") > version_key("3.9")
    assert version_key("3.10") > version_key("3.9")
    assert version_key("10.1") > version_key("9.12")
    with pytest.raises(BookError):
        version_key("v3")


def test_a_newer_book_replaces_the_held_subset_and_an_older_one_does_not():
    terminology = load_shipped()
    assert terminology.add(Book(POSITIONS, "9.12", "Должности", {"109": "Врач-терапевт"}))
    assert terminology.book(POSITIONS).version == "9.12"
    assert not terminology.add(Book(POSITIONS, "9.6", "Должности", {"1": "x"}))
    assert terminology.book(POSITIONS).version == "9.12"


def test_a_book_of_the_same_version_replaces_the_held_one():
    terminology = Terminology([Book(LAB_TESTS, "3.50", "ФСЛИ", {"1": "a"})])
    assert terminology.add(Book(LAB_TESTS, "3.50", "ФСЛИ", {"1": "a", "2": "b"}))
    assert terminology.book(LAB_TESTS).has("2")
    assert not terminology.add(Book(LAB_TESTS, "3.9", "ФСЛИ", {}))


def test_books_are_found_by_oid_or_urn_oid_system_only(shipped):
    assert POSITIONS in shipped
    assert f"urn:oid:{POSITIONS}" in shipped
    assert shipped.find(f"urn:oid:{POSITIONS}") is shipped.book(POSITIONS)
    assert shipped.find(POSITIONS) is None
    assert shipped.find("http://loinc.org") is None
    assert len(shipped.books()) == 9


# --- full books from the НСИ portal -------------------------------------------------------

def test_the_portal_fixture_loads_from_its_folder():
    [book] = load_path(PORTAL_FIXTURE)
    assert (book.oid, book.version) == (POSITIONS, "9.6")
    assert book.title == "Должности медицинских и фармацевтических работников"
    assert dict(book.codes) == {
        "109": "Врач-терапевт", "110": "Врач-терапевт участковый", "122": "Врач-хирург",
        "49": "Врач общей практики (семейный врач)", "159": "Медицинская сестра",
    }


def test_one_part_file_loads_its_whole_book():
    [book] = load_path(PORTAL_FIXTURE / f"{POSITIONS}_9.6_part2")
    assert len(book.codes) == 5


def test_portal_parts_are_read_in_order_with_the_passport_primary_key(tmp_path):
    part1 = write_json(tmp_path / "p1", portal_part([{"ID": "7", "CODE": "X", "NAME": "Семь"}]))
    part2 = write_json(tmp_path / "p2", portal_part([{"ID": "8", "CODE": "Y", "NAME": "Восемь"}]))
    passport = write_json(tmp_path / "pp", {
        "oid": "1.2.643.5.1.13.13.99.2.1", "version": "2.1", "fullName": "Книга",
        "rowsCount": 2, "keys": [{"field": "CODE", "type": "PRIMARY"}]})
    book = read_portal_json([part1, part2], passport)
    assert dict(book.codes) == {"X": "Семь", "Y": "Восемь"}
    assert book.title == "Книга"


def test_icd10_from_the_portal_is_keyed_by_mkb_code_not_its_row_id(tmp_path):
    rows = [
        {"ID": "1", "MKB_CODE": None, "MKB_NAME": "Некоторые инфекционные болезни"},
        {"ID": "14064", "MKB_CODE": "Z00.0", "MKB_NAME": "Общий медицинский осмотр"},
    ]
    part = write_json(tmp_path / f"{ICD10}_2.27_part1", portal_part(rows, total=2))
    passport = write_json(tmp_path / f"{ICD10}_2.27_passport", {
        "oid": ICD10, "version": "2.27", "fullName": "МКБ-10", "rowsCount": 2,
        "keys": [{"field": "ID", "type": "PRIMARY"}, {"field": "MKB_NAME", "type": "VALUE"}]})
    book = read_portal_json([part], passport)
    assert dict(book.codes) == {"Z00.0": "Общий медицинский осмотр"}


def test_without_keys_the_code_is_id_and_the_display_name(tmp_path):
    part = write_json(tmp_path / "p", portal_part([{"PID": "1", "NAME": "Имя", "ID": "5"}]))
    passport = write_json(tmp_path / "pp", {"oid": "1.2.3", "version": "1.0"})
    assert dict(read_portal_json([part], passport).codes) == {"5": "Имя"}


def test_a_missing_part_is_a_clear_error(tmp_path):
    part = write_json(tmp_path / f"{POSITIONS}_9.6_part1", portal_part([{"ID": "1", "NAME": "a"}]))
    passport = write_json(tmp_path / f"{POSITIONS}_9.6_passport", {
        "oid": POSITIONS, "version": "9.6", "fullName": "Должности", "rowsCount": 553})
    with pytest.raises(BookError, match=r"553 rows but the parts hold 1.*missing"):
        read_portal_json([part], passport)
    with pytest.raises(BookError, match="553 rows"):
        load_path(tmp_path)


def test_a_gap_in_part_numbers_names_the_missing_part(tmp_path):
    for n in (1, 3):
        write_json(tmp_path / f"{POSITIONS}_9.6_part{n}", portal_part([{"ID": str(n)}]))
    write_json(tmp_path / f"{POSITIONS}_9.6_passport", {"oid": POSITIONS, "version": "9.6"})
    with pytest.raises(BookError, match=rf"missing {POSITIONS}_9\.6_part2"):
        load_path(tmp_path)


def test_parts_without_a_passport_are_an_error(tmp_path):
    write_json(tmp_path / f"{POSITIONS}_9.6_part1", portal_part([{"ID": "1", "NAME": "a"}]))
    with pytest.raises(BookError, match="no passport"):
        load_path(tmp_path)


def test_a_file_that_is_not_a_book_is_an_error_naming_it(tmp_path):
    (tmp_path / "positions.xlsx").write_bytes(b"PK")
    with pytest.raises(BookError, match=r"positions\.xlsx"):
        load_path(tmp_path)


def test_a_broken_part_is_an_error_naming_it(tmp_path):
    (tmp_path / f"{POSITIONS}_9.6_part1").write_text("<html>", encoding="utf-8")
    write_json(tmp_path / f"{POSITIONS}_9.6_passport", {"oid": POSITIONS, "version": "9.6"})
    with pytest.raises(BookError, match=rf"{POSITIONS}_9\.6_part1: not UTF-8 JSON"):
        load_path(tmp_path)


# --- CSV exports --------------------------------------------------------------------------

def test_a_semicolon_csv_with_bom_loads(tmp_path):
    path = tmp_path / f"{POSITIONS}_9.12.csv"
    path.write_bytes("\ufeffID;PID;NAME\r\n109;12;Врач-терапевт\r\n122;12;Врач-хирург\r\n"
                     .encode("utf-8"))
    [book] = load_path(path)
    assert (book.oid, book.version) == (POSITIONS, "9.12")
    assert book.title == "Должности медицинских и фармацевтических работников"
    assert dict(book.codes) == {"109": "Врач-терапевт", "122": "Врач-хирург"}


def test_a_csv_without_known_headers_uses_the_first_two_columns(tmp_path):
    path = tmp_path / "book.csv"
    path.write_text("Код,Наименование\n1,Один\n", encoding="utf-8")
    assert dict(read_csv_book(path, "1.2.3", "1.0", "Книга").codes) == {"1": "Один"}


def test_a_csv_named_by_oid_takes_version_and_title_from_its_passport(tmp_path):
    (tmp_path / f"{UNITS}.csv").write_text("code,name\n60,Грамм в литре\n", encoding="utf-8")
    write_json(tmp_path / f"{UNITS}.passport.json",
               {"oid": UNITS, "version": "3.30", "fullName": "Единицы измерения"})
    [book] = load_path(tmp_path)
    assert (book.version, book.title) == ("3.30", "Единицы измерения")


def test_a_csv_without_a_version_is_an_error(tmp_path):
    (tmp_path / f"{UNITS}.csv").write_text("code,name\n60,Грамм в литре\n", encoding="utf-8")
    with pytest.raises(BookError, match="version is unknown"):
        load_path(tmp_path)


# --- the data folder ----------------------------------------------------------------------

def test_saved_books_round_trip(tmp_path):
    book = Book(ICD10, "2.27", "МКБ-10", {"Z00.0": "Общий медицинский осмотр", "U07.1": "COVID"})
    save_book(book, tmp_path / "nsi")
    assert load_saved(tmp_path / "nsi") == [book]


def test_no_data_folder_means_no_saved_books(tmp_path):
    assert load_saved(tmp_path / "nsi") == []


def test_the_app_start_up_prefers_a_saved_full_book_over_the_subset(tmp_path):
    for book in load_path(PORTAL_FIXTURE):
        save_book(book, tmp_path / "nsi")
    terminology = load_shipped()
    for book in load_saved(tmp_path / "nsi"):
        terminology.add(book)
    # Same version as the subset, so the loaded book wins: 334 is only in the subset.
    assert check_coding(terminology, coding(POSITIONS, "334"), AT)[0].code == "code-invalid"
    assert check_coding(terminology, coding(POSITIONS, "109"), AT) == []
