"""Specification of the Russian identifier and contact-value checks.

Each test name states a rule; the examples come from DOMAIN.md ("Identifiers and their
checks", "What clinics get wrong") or were computed by hand from the rule and
hard-coded here. Errors must name the problem and the fix, and must never echo the
personal value back.
"""
from __future__ import annotations

import random
import re

import pytest

from gateway.validation import identifiers as ids
from gateway.validation.identifiers import InvalidValue


def rejected(func, raw, **kwargs) -> InvalidValue:
    """The InvalidValue raised for raw, after checking it leaks no personal data."""
    with pytest.raises(InvalidValue) as caught:
        func(raw, **kwargs)
    error = caught.value
    assert error.text_ru
    assert error.text_en
    if isinstance(raw, str):
        assert_not_echoed(error, raw, words=func is ids.person_name_part)
    return error


def assert_not_echoed(error: InvalidValue, raw: str, words: bool = False) -> None:
    """No run of 4+ digits, nor the whole value, nor (for names) any word appears."""
    texts = (error.text_ru, error.text_en, str(error))
    digits = re.sub(r"\D", "", raw)
    pieces = re.findall(r"\d{4,}", raw) + ([digits] if len(digits) >= 4 else [])
    pieces += [raw.strip()] if len(raw.strip()) >= 3 else []
    pieces += re.findall(r"[^\W\d_]{3,}", raw) if words else []
    for text in texts:
        for piece in pieces:
            assert piece not in text, f"message echoes the value: {text!r}"


# --- the error type ------------------------------------------------------------------

def test_invalid_value_is_a_value_error_with_russian_and_english_texts():
    error = InvalidValue("по-русски", "in English")
    assert isinstance(error, ValueError)
    assert (error.text_ru, error.text_en, str(error)) == ("по-русски", "in English", "in English")


@pytest.mark.parametrize("func", [ids.snils, ids.inn, ids.ogrn, ids.ogrnip, ids.oms_enp,
                                  ids.passport, ids.division_code, ids.frmo_oid, ids.phone,
                                  ids.email, ids.person_name_part])
@pytest.mark.parametrize("raw", ["", "   ", None, 11223344595])
def test_every_check_rejects_blank_and_non_string_values(func, raw):
    rejected(func, raw)


# --- СНИЛС ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["112-233-445 95", "11223344595", " 112 233 445 95 ",
                                 "112-233-445-95", "112 233 445 95"])
def test_snils_accepts_written_forms_and_stores_bare_digits(raw):
    assert ids.snils(raw) == "11223344595"


@pytest.mark.parametrize(("raw", "branch"), [
    ("003-263-352 96", "S < 100: control is S"),
    ("026-002-389 00", "S = 100: control is 00"),
    ("030-214-884 00", "S = 101: control is 00"),
    ("145-274-508 61", "S > 101: control is S mod 101 (162 → 61)"),
    ("543-546-368 00", "S > 101 and S mod 101 = 100: control is 00 (S = 201)"),
])
def test_snils_control_number_follows_each_branch_of_the_rule(raw, branch):
    assert ids.snils(raw) == re.sub(r"\D", "", raw), branch


@pytest.mark.parametrize("raw", ["001-001-998 00", "001-001-998 64", "000-000-001 23"])
def test_snils_up_to_001_001_998_carries_no_check(raw):
    assert ids.snils(raw) == re.sub(r"\D", "", raw)


def test_snils_check_starts_at_001_001_999():
    assert ids.snils("001-001-999 65") == "00100199965"
    rejected(ids.snils, "001-001-999 00")


@pytest.mark.parametrize("raw", ["112-233-445 96", "112-233-455 95", "121-233-445 95"])
def test_snils_with_wrong_control_number_is_reported_as_a_typo(raw):
    error = rejected(ids.snils, raw)
    assert "Контрольное число" in error.text_ru
    assert "check" in error.text_en


@pytest.mark.parametrize("raw", ["112-233-445 9", "112-233-445 955", "1122334459"])
def test_snils_of_wrong_length_names_the_expected_length(raw):
    error = rejected(ids.snils, raw)
    assert "11 цифр" in error.text_ru
    assert "XXX-XXX-XXX YY" in error.text_ru
    assert "Контрольное" not in error.text_ru


@pytest.mark.parametrize("raw", ["112-233-445 9S", "112/233/445 95", "１１２２３３４４５９５"])
def test_snils_with_other_characters_asks_for_digits_only(raw):
    assert "только цифры" in rejected(ids.snils, raw).text_ru


# --- ИНН -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["7707083893", "7736207543", "1234567894", "77 070 838 93"])
def test_inn_of_an_organization_has_ten_digits_and_one_check_digit(raw):
    assert ids.inn(raw) == ids.inn_organization(raw) == raw.replace(" ", "")


@pytest.mark.parametrize("raw", ["500100732259", "123456789047", "771234567859"])
def test_inn_of_a_person_has_twelve_digits_and_two_check_digits(raw):
    assert ids.inn(raw) == ids.inn_person(raw) == raw


@pytest.mark.parametrize("raw", ["7707083894", "1234567895", "123456789037", "500100732258"])
def test_inn_with_wrong_check_digits_is_rejected(raw):
    assert "Контрольное число ИНН" in rejected(ids.inn, raw).text_ru


@pytest.mark.parametrize("raw", ["770708389", "77070838930", "5001007322590"])
def test_inn_must_have_ten_or_twelve_digits(raw):
    assert "10 (организация) или 12" in rejected(ids.inn, raw).text_ru


def test_inn_organization_refuses_a_person_inn_and_says_why():
    assert "12 цифр — это ИНН физического лица" in rejected(
        ids.inn_organization, "500100732259").text_ru


def test_inn_person_refuses_an_organization_inn_and_says_why():
    assert "10 цифр — это ИНН организации" in rejected(ids.inn_person, "7707083893").text_ru


# --- ОГРН and ОГРНИП ---------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1027700132195", "1027700229193", "1037739010891",
                                 "1145001000011"])
def test_ogrn_control_is_last_digit_of_first_twelve_mod_11(raw):
    assert ids.ogrn(raw) == raw


@pytest.mark.parametrize("raw", ["1027700132196", "1027700229190"])
def test_ogrn_with_wrong_control_digit_is_rejected(raw):
    assert "Контрольное число ОГРН" in rejected(ids.ogrn, raw).text_ru


def test_ogrn_of_fifteen_digits_is_recognised_as_ogrnip():
    error = rejected(ids.ogrn, "304770000000008")
    assert "13" in error.text_ru
    assert "ОГРНИП" in error.text_ru


@pytest.mark.parametrize(("raw", "remainder"), [
    ("304770000000008", 8),
    ("304770000000050", 0),
    ("304770000000020", 10),
    ("304770000000031", 11),
    ("304770000000042", 12),
])
def test_ogrnip_control_is_last_digit_of_first_fourteen_mod_13(raw, remainder):
    assert int(raw[:14]) % 13 == remainder
    assert ids.ogrnip(raw) == raw


def test_ogrnip_remainders_10_to_12_give_0_to_2_not_rejection():
    # python-stdnum rejects these numbers; the tax service keeps the lowest digit.
    assert [ids.ogrnip_check_digit(p) for p in
            ("30477000000002", "30477000000003", "30477000000004")] == ["0", "1", "2"]


@pytest.mark.parametrize("raw", ["304770000000021", "304770000000030", "304770000000049"])
def test_ogrnip_with_wrong_control_digit_is_rejected(raw):
    assert "Контрольное число ОГРНИП" in rejected(ids.ogrnip, raw).text_ru


def test_ogrnip_of_thirteen_digits_is_recognised_as_ogrn():
    error = rejected(ids.ogrnip, "1027700132195")
    assert "15" in error.text_ru
    assert "ОГРН юридического лица" in error.text_ru


# --- полис ОМС единого образца (ЕНП) ---------------------------------------------------------

@pytest.mark.parametrize("raw", ["7700000000000008", "5001508912345675", "1234567890123452"])
def test_enp_is_sixteen_digits(raw):
    assert ids.oms_enp(raw) == ids.oms_enp(raw, verify_check_digit=True) == raw


def test_enp_check_digit_is_not_verified_by_default():
    assert ids.oms_enp("7700000000000001") == "7700000000000001"
    rejected(ids.oms_enp, "7700000000000001", verify_check_digit=True)


@pytest.mark.parametrize("raw", ["7700 0000 0000 0008", "7700-0000-0000-0008",
                                 "770000000000 0008", "7700-0000 0000-000"])
def test_enp_with_spaces_or_dashes_is_an_error_with_a_hint(raw):
    assert "16 цифр без пробелов" in rejected(ids.oms_enp, raw).text_ru


@pytest.mark.parametrize("raw", ["770000000000000", "77000000000000080", "7700000"])
def test_enp_with_missing_or_extra_digits_names_the_expected_length(raw):
    assert "16 цифр" in rejected(ids.oms_enp, raw).text_ru


@pytest.mark.parametrize("raw", ["ЕП 7700000000000008", "77000000000000O8", "№7700000000000008"])
def test_enp_with_letters_or_signs_is_rejected(raw):
    assert "только из цифр" in rejected(ids.oms_enp, raw).text_ru


def _quoted_enp_rule(first_fifteen: str) -> str:
    """The rule as usually quoted, step by step, to hold the implementation to it."""
    from_right = first_fifteen[::-1]
    doubled = int(from_right[0::2]) * 2
    joined = from_right[1::2] + str(doubled)
    total = sum(int(d) for d in joined)
    return str((10 - total % 10) % 10)


def test_enp_check_digit_matches_the_commonly_quoted_rule():
    rng = random.Random(20240320)
    for _ in range(2000):
        first = "".join(rng.choice("0123456789") for _ in range(15))
        assert ids.oms_enp_check_digit(first) == _quoted_enp_rule(first), first


# --- passport --------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["4510 123456", "45 10 123456", "4510-123456", "4510123456",
                                 "45 10 № 123456"])
def test_passport_series_and_number_are_stored_as_ssss_nnnnnn(raw):
    assert ids.passport(raw) == "4510-123456"


@pytest.mark.parametrize("raw", ["4510 12345", "451 123456", "4510 1234567"])
def test_passport_must_have_four_plus_six_digits(raw):
    assert "4 цифр" in rejected(ids.passport, raw).text_ru


@pytest.mark.parametrize("raw", ["AB 1234567", "4510/123456"])
def test_passport_with_letters_or_other_signs_is_rejected(raw):
    rejected(ids.passport, raw)


@pytest.mark.parametrize("raw", ["770-001", "770001", "770 001", " 770-001 "])
def test_division_code_is_stored_as_nnn_dash_nnn(raw):
    assert ids.division_code(raw) == "770-001"


@pytest.mark.parametrize("raw", ["77-001", "7700011", "770_001", "77O-001"])
def test_division_code_must_be_six_digits(raw):
    rejected(ids.division_code, raw)


# --- ФРМО OID -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "1.2.643.5.1.13.13.12.2.28.2675",
    "1.2.643.5.1.13.13.12.2.78.8646",
    "1.2.643.5.1.13.13.12.2.36.20192",
    "1.2.643.5.1.13.13.12.2.51.4977.0.2787.2107",
])
def test_frmo_oid_of_organization_or_department_is_accepted(raw):
    assert ids.frmo_oid(raw) == raw


def test_frmo_oid_loses_an_urn_oid_prefix():
    oid = "1.2.643.5.1.13.13.12.2.77.1234"
    assert ids.frmo_oid("urn:oid:" + oid) == oid


@pytest.mark.parametrize(("raw", "region"), [
    ("1.2.643.5.1.13.13.12.2.77.1234", "77"),
    ("1.2.643.5.1.13.13.12.2.51.4977.0.2787.2107", "51"),
    ("1.2.643.5.1.13.13.12.2.5.123", "05"),
    ("1.2.643.5.1.13.13.12.2.05.123", "05"),
])
def test_frmo_region_is_the_two_digit_subject_code(raw, region):
    assert ids.frmo_region(raw) == region


def test_frmo_book_oid_is_not_an_organization_oid():
    assert "справочника ФРМО" in rejected(ids.frmo_oid, "1.2.643.5.1.13.13.11.1461").text_ru


@pytest.mark.parametrize("raw", [
    "1.2.643.5.1.13.13.12.2.77",
    "1.2.643.5.1.13.13.12.3.77.1234",
    "1.2.643.5.1.13.13.12.2.77..1234",
    "1.2.643.5.1.13.13.12.2.77.1234.",
    "1.2.643.5.1.13.13.12.2.77.12a4",
    "1.2.643.5.1.13.13.12.2.0.1234",
    "1.2.643.5.1.13.13.12.2.100.1234",
    "1.2.643.5.1.13.13.12.2.77.01234",
    "1.2.643.5.1.13.13.12.2.77.1234.0.02787",
    "77.1234",
])
def test_frmo_oid_must_be_prefix_region_and_numeric_arcs(raw):
    rejected(ids.frmo_oid, raw)


# --- phone ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["8 (495) 123-45-67", "+7 495 123 45 67", "+7-495-1234567",
                                 "84951234567", "74951234567", "+7(495)123.45.67",
                                 " +7 (495) 123-45-67 "])
def test_russian_phone_in_any_usual_spelling_becomes_plus_seven_and_ten_digits(raw):
    assert ids.phone(raw) == "+74951234567"


@pytest.mark.parametrize(("raw", "expected"), [
    ("+44 20 7946 0958", "+442079460958"),
    ("+1 (212) 555-0123", "+12125550123"),
    ("+49.30.1234567", "+49301234567"),
    ("+375 29 123-45-67", "+375291234567"),
])
def test_international_phone_is_plausible_e164(raw, expected):
    assert ids.phone(raw) == expected


@pytest.mark.parametrize("raw", ["9161234567", "916 123-45-67", "(495) 123-45-67"])
def test_ten_digits_without_country_code_ask_to_add_plus_seven(raw):
    assert "Добавьте +7" in rejected(ids.phone, raw).text_ru


@pytest.mark.parametrize("raw", ["8 495 123-45-6", "8 495 123-45-678", "+7 495 123 45 6",
                                 "+7 495 123 45 678"])
def test_russian_phone_must_have_ten_digits_after_the_prefix(raw):
    assert "10 цифр" in rejected(ids.phone, raw).text_ru


@pytest.mark.parametrize("raw", ["тел. 84951234567", "+7 495 123 45 67 доб. 12",
                                 "+7 495 123 45 67, 8 916 1234567", "++74951234567",
                                 "7+4951234567", "123", "+0 123 4567 89", "+1234567",
                                 "+1234567890123456", "+8 916 123-45-67", "12-34-56"])
def test_other_phone_values_are_rejected_with_the_expected_format(raw):
    assert "+7XXXXXXXXXX" in rejected(ids.phone, raw).text_ru


# --- e-mail -----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("ivanov@mail.ru", "ivanov@mail.ru"),
    (" Ivanov@Mail.RU ", "Ivanov@mail.ru"),
    ("petrov.a+elmk@clinic.msk.ru", "petrov.a+elmk@clinic.msk.ru"),
    ("vrach@ПОЧТА.РФ", "vrach@почта.рф"),
    ("vrach@xn--80a1acny.xn--p1ai", "vrach@xn--80a1acny.xn--p1ai"),
    ("a@b-c.co", "a@b-c.co"),
])
def test_email_is_stripped_and_its_domain_lowercased(raw, expected):
    assert ids.email(raw) == expected


@pytest.mark.parametrize(("raw", "hint"), [
    ("ivanov.mail.ru", "@"),
    ("ivanov@@mail.ru", "@"),
    ("ivanov@mail@ru", "@"),
    ("@mail.ru", "имя ящика"),
    ("iva nov@mail.ru", "пробелы"),
    ("ivanov@mail", "с точкой"),
    ("ivanov@mail..ru", "лишние точки"),
    ("ivanov@.mail.ru", "лишние точки"),
    ("ivanov@mail.ru.", "лишние точки"),
    ("ivanov@-mail.ru", "дефисов"),
    ("ivanov@ma_il.ru", "дефисов"),
    ("ivanov@mail.r", "не меньше двух"),
    ("ivanov@mail.123", "не меньше двух"),
])
def test_malformed_email_is_rejected_with_what_to_fix(raw, hint):
    error = rejected(ids.email, raw)
    assert hint in error.text_ru


def test_throwaway_domains_include_the_well_known_services():
    assert isinstance(ids.THROWAWAY_DOMAINS, frozenset)
    assert {"mailinator.com", "yopmail.com", "temp-mail.org", "10minutemail.com",
            "guerrillamail.com"} <= ids.THROWAWAY_DOMAINS


@pytest.mark.parametrize(("value", "throwaway"), [
    ("someone@mailinator.com", True),
    ("Someone@YOPMAIL.COM ", True),
    ("someone@inbox.guerrillamail.com", True),
    ("someone@mail.ru", False),
    ("someone@notmailinator.com", False),
    ("no at sign", False),
    ("", False),
])
def test_throwaway_email_is_recognised_for_a_warning(value, throwaway):
    assert ids.is_throwaway_email(value) is throwaway


# --- parts of a person's name ---------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("Иванов", "Иванов"),
    ("  Ольга ", "Ольга"),
    ("Салтыков-Щедрин", "Салтыков-Щедрин"),
    ("Мамед  оглы", "Мамед оглы"),
    ("Д'Артаньян", "Д'Артаньян"),
    ("Ёлкина", "Ёлкина"),
    ("ИВАНОВ", "ИВАНОВ"),
    ("Smith", "Smith"),
    ("McDonald", "McDonald"),
    ("O'Brien-Smith", "O'Brien-Smith"),
    ("Jr.", "Jr."),
])
def test_name_part_accepts_russian_and_foreign_names(raw, expected):
    assert ids.person_name_part(raw) == expected


def test_name_part_composes_decomposed_letters():
    assert ids.person_name_part("Андреи\u0306") == "Андрей"


def test_latin_letters_in_a_cyrillic_name_are_counted_and_located():
    error = rejected(ids.person_name_part, "Ивaнoв")  # Latin "a" and "o"
    assert "Латинских букв: 2" in error.text_ru
    assert "латинские буквы в позициях 3, 5" in error.text_ru
    assert "замените их русскими" in error.text_ru


def test_latin_letters_are_located_within_the_whole_value():
    error = rejected(ids.person_name_part, "Салтыков-Щeдpин")  # Latin "e" and "p"
    assert "позициях 11, 13" in error.text_ru


def test_cyrillic_letters_in_a_latin_name_are_located_too():
    error = rejected(ids.person_name_part, "Smіth")  # Cyrillic "і"
    assert "позициях 3" in error.text_ru
    assert "замените их латинскими" in error.text_ru


@pytest.mark.parametrize("raw", ["ИвановИван", "ИвановИванИванович", "АннаМария"])
def test_lowercase_letter_followed_by_uppercase_means_a_missing_space(raw):
    assert "пропущен пробел или дефис" in rejected(ids.person_name_part, raw).text_ru


@pytest.mark.parametrize("raw", ["Иванов2", "Иванов!", "Иван_ов", "Иванов;Иван", "Ив@нов"])
def test_digits_and_symbols_in_a_name_are_rejected(raw):
    assert "недопустимые символы" in rejected(ids.person_name_part, raw).text_ru


@pytest.mark.parametrize("raw", ["-", ". .", "'"])
def test_name_part_needs_at_least_one_letter(raw):
    assert "ни одной буквы" in rejected(ids.person_name_part, raw).text_ru


@pytest.mark.parametrize(("value", "cyrillic"), [
    ("Иванов", True), ("Салтыков-Щедрин", True), ("Ёлкина", True),
    ("Smith", False), ("Ивaнoв", False), ("", False), ("-", False),
])
def test_is_cyrillic_tells_whether_all_letters_are_cyrillic(value, cyrillic):
    assert ids.is_cyrillic(value) is cyrillic
