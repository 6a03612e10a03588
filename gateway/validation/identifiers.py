"""Checks and normal forms of Russian identifiers, names and contact values.

Clinic staff type СНИЛС, ИНН, ОГРН, policy numbers, passports, phones and names by
hand, and the upstream (ЕГИСЗ, ФРМР, ЭЛМК) rejects a whole registration for one bad
digit. Each function here takes the raw string, returns the value in the one form the
gateway stores, or raises `InvalidValue` with a Russian text that says what is wrong
and how to fix it, plus an English diagnostic. The texts never repeat the value
itself: it is personal data and ends up in logs and OperationOutcomes.

The rules and their sources are in DOMAIN.md ("Identifiers and their checks"). The
module is pure (no Flask, no database, no I/O); callers attach the field's FHIRPath.
"""
from __future__ import annotations

import re
import unicodedata
from itertools import pairwise

from stdnum.ru import inn as _stdnum_inn


class InvalidValue(ValueError):
    """A value that fails a check; `text_ru` is for clinic staff, `text_en` for developers."""

    def __init__(self, text_ru: str, text_en: str) -> None:
        super().__init__(text_en)
        self.text_ru = text_ru
        self.text_en = text_en


# --- shared helpers -------------------------------------------------------------------

def _text(raw: object, what_ru: str, what_en: str) -> str:
    """The stripped string, or an error if it is not a string or is blank."""
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise InvalidValue(f"{what_ru}: значение должно быть строкой, а не числом или списком.",
                           f"{what_en}: value must be a string, got {type(raw).__name__}.")
    value = raw.strip()
    if not value:
        raise InvalidValue(f"{what_ru}: значение не заполнено. Укажите его.",
                           f"{what_en} is empty.")
    return value


def _digits(raw: object, what_ru: str, what_en: str, separators: str) -> str:
    """The digits of a value in which only the given separator characters may appear."""
    value = _text(raw, what_ru, what_en)
    stripped = "".join(ch for ch in value if ch not in separators)
    if not all(ch in "0123456789" for ch in stripped):
        raise InvalidValue(
            f"{what_ru}: допустимы только цифры{_separator_words(separators)}. "
            "Уберите буквы и другие знаки.",
            f"{what_en} contains characters other than digits and allowed separators.")
    return stripped


def _separator_words(separators: str) -> str:
    words = {" ": "пробелы", "-": "дефисы", "№": "знак №"}
    named = [words[ch] for ch in separators if ch in words]
    return (", " + ", ".join(named)) if named else ""


def _wrong_length(what_ru: str, what_en: str, expected: str, found: int,
                  hint_ru: str = "") -> InvalidValue:
    return InvalidValue(
        f"{what_ru} должен состоять из {expected} цифр, а указано цифр: {found}. "
        f"Проверьте, нет ли пропущенной или лишней цифры.{hint_ru}",
        f"{what_en} must have {expected} digits, found {found}.")


def _wrong_check(what_ru: str, what_en: str) -> InvalidValue:
    return InvalidValue(
        f"Контрольное число {what_ru} не сходится с остальными цифрами: номер введён с "
        "ошибкой. Сверьте все цифры с документом.",
        f"{what_en} check digit does not match.")


# --- СНИЛС -----------------------------------------------------------------------------

_SNILS_UNCHECKED_UP_TO = 1001998  # first nine digits ≤ 001-001-998 carry no check


def snils_check_digits(first_nine: str) -> str:
    """The two control digits of a СНИЛС from its first nine digits."""
    total = sum(int(d) * (9 - i) for i, d in enumerate(first_nine))
    if total > 101:
        total %= 101
    return "00" if total in (100, 101) else f"{total:02d}"


def snils(raw: str) -> str:
    """СНИЛС written `XXX-XXX-XXX YY` or as 11 digits; returns the 11 bare digits."""
    digits = _digits(raw, "СНИЛС", "SNILS", " -")
    if len(digits) != 11:
        raise _wrong_length("СНИЛС", "SNILS", "11", len(digits),
                            " Формат: XXX-XXX-XXX YY или 11 цифр подряд.")
    if int(digits[:9]) > _SNILS_UNCHECKED_UP_TO and snils_check_digits(digits[:9]) != digits[9:]:
        raise InvalidValue(
            "Контрольное число СНИЛС (две последние цифры) не сходится с первыми девятью "
            "цифрами: номер введён с ошибкой. Сверьте все 11 цифр с документом.",
            "SNILS check digits do not match the first nine digits.")
    return digits


# --- ИНН, ОГРН, ОГРНИП --------------------------------------------------------------------

def inn(raw: str) -> str:
    """ИНН of an organization (10 digits) or a person (12 digits); returns the digits."""
    digits = _digits(raw, "ИНН", "INN", " -")
    if len(digits) not in (10, 12):
        raise _wrong_length("ИНН", "INN", "10 (организация) или 12 (физическое лицо)",
                            len(digits))
    if not _stdnum_inn.is_valid(digits):
        raise _wrong_check("ИНН", "INN")
    return digits


def inn_organization(raw: str) -> str:
    """ИНН of an organization: exactly 10 digits."""
    digits = inn(raw)
    if len(digits) != 10:
        raise InvalidValue(
            "ИНН организации состоит из 10 цифр; 12 цифр — это ИНН физического лица или "
            "индивидуального предпринимателя. Укажите ИНН юридического лица.",
            "Organization INN must have 10 digits; 12 digits is a person's INN.")
    return digits


def inn_person(raw: str) -> str:
    """ИНН of a person (including an individual entrepreneur): exactly 12 digits."""
    digits = inn(raw)
    if len(digits) != 12:
        raise InvalidValue(
            "ИНН физического лица состоит из 12 цифр; 10 цифр — это ИНН организации. "
            "Укажите личный ИНН.",
            "Personal INN must have 12 digits; 10 digits is an organization's INN.")
    return digits


def ogrn_check_digit(first_twelve: str) -> str:
    """Control digit of ОГРН: the last digit of (first 12 digits mod 11)."""
    return str(int(first_twelve) % 11 % 10)


def ogrnip_check_digit(first_fourteen: str) -> str:
    """Control digit of ОГРНИП: the last digit of (first 14 digits mod 13), so 10–12 → 0–2."""
    return str(int(first_fourteen) % 13 % 10)


def ogrn(raw: str) -> str:
    """ОГРН of a legal entity, 13 digits; returns the digits."""
    digits = _digits(raw, "ОГРН", "OGRN", " -")
    if len(digits) != 13:
        hint = " 15 цифр — это ОГРНИП индивидуального предпринимателя." if len(digits) == 15 else ""
        raise _wrong_length("ОГРН", "OGRN", "13", len(digits), hint)
    if ogrn_check_digit(digits[:12]) != digits[12]:
        raise _wrong_check("ОГРН", "OGRN")
    return digits


def ogrnip(raw: str) -> str:
    """ОГРНИП of an individual entrepreneur, 15 digits; returns the digits."""
    digits = _digits(raw, "ОГРНИП", "OGRNIP", " -")
    if len(digits) != 15:
        hint = " 13 цифр — это ОГРН юридического лица." if len(digits) == 13 else ""
        raise _wrong_length("ОГРНИП", "OGRNIP", "15", len(digits), hint)
    if ogrnip_check_digit(digits[:14]) != digits[14]:
        raise _wrong_check("ОГРНИП", "OGRNIP")
    return digits


# --- полис ОМС единого образца ----------------------------------------------------------

def oms_enp_check_digit(first_fifteen: str) -> str:
    """The commonly quoted (UNVERIFIED) control digit of a 16-digit ЕНП.

    The quoted rule: digits at odd positions counted from the right (control digit
    excluded) form a number that is doubled; digits at even positions form another
    number written to its left; the control digit tops the sum of all digits up to a
    multiple of 10. Doubling a number carries once per digit ≥ 5 whatever the order,
    so this is exactly Luhn's mod-10 over the first 15 digits, which is what we compute.
    """
    total = 0
    for i, ch in enumerate(reversed(first_fifteen)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def oms_enp(raw: str, verify_check_digit: bool = False) -> str:
    """Полис ОМС единого образца (ЕНП): exactly 16 digits, nothing else between them.

    Spaces and dashes are an error, not something to tidy up: the error catalogue
    lists them among what clinics must be told to fix. The check digit is not verified
    by default because its rule is unconfirmed (see `oms_enp_check_digit`); a setting
    decides whether callers pass `verify_check_digit=True`.
    """
    value = _text(raw, "Номер полиса ОМС", "OMS policy number (ENP)")
    if re.fullmatch(r"[0-9][0-9 \-]*[0-9]", value) and not value.isdigit():
        raise InvalidValue(
            "Номер полиса ОМС содержит пробелы или дефисы. Запишите 16 цифр без пробелов "
            "и дефисов.",
            "OMS policy number (ENP) contains spaces or hyphens; 16 bare digits expected.")
    if not (value.isascii() and value.isdigit()):
        raise InvalidValue(
            "Номер полиса ОМС единого образца состоит только из цифр. Запишите 16 цифр без "
            "букв, пробелов и знаков; полис старого образца (серия и номер) передаётся "
            "отдельным типом идентификатора.",
            "OMS policy number (ENP) contains non-digit characters.")
    if len(value) != 16:
        raise _wrong_length("Номер полиса ОМС", "OMS policy number (ENP)", "16", len(value),
                            " Запишите 16 цифр без пробелов.")
    if verify_check_digit and oms_enp_check_digit(value[:15]) != value[15]:
        raise _wrong_check("полиса ОМС", "OMS policy number (ENP)")
    return value


# --- passport ---------------------------------------------------------------------------

def passport(raw: str) -> str:
    """Series (4 digits) and number (6 digits) of a Russian internal passport → `SSSS-NNNNNN`."""
    digits = _digits(raw, "Серия и номер паспорта", "Passport series and number", " -№")
    if len(digits) != 10:
        raise InvalidValue(
            "Серия и номер паспорта гражданина РФ — это 10 цифр: серия из 4 цифр и номер из "
            f"6 цифр (СССС НННННН), а указано цифр: {len(digits)}. Проверьте по документу; "
            "паспорт иностранного гражданина передаётся другим типом документа.",
            f"Passport series and number must have 4 + 6 digits, found {len(digits)}.")
    return f"{digits[:4]}-{digits[4:]}"


def division_code(raw: str) -> str:
    """Code of the issuing division, `NNN-NNN` (also accepted as six digits) → `NNN-NNN`."""
    digits = _digits(raw, "Код подразделения", "Division code", " -")
    if len(digits) != 6:
        raise InvalidValue(
            "Код подразделения, выдавшего паспорт, состоит из 6 цифр в виде NNN-NNN, а "
            f"указано цифр: {len(digits)}. Перепишите код со страницы паспорта.",
            f"Division code must have 6 digits (NNN-NNN), found {len(digits)}.")
    return f"{digits[:3]}-{digits[3:]}"


# --- ФРМО organization OID -------------------------------------------------------------

FRMO_OID_PREFIX = "1.2.643.5.1.13.13.12.2"
FRMO_BOOK_OID = "1.2.643.5.1.13.13.11.1461"


def _frmo_arcs(raw: str) -> tuple[str, list[str]]:
    value = _text(raw, "OID организации в ФРМО", "FRMO organization OID")
    if value.lower().startswith("urn:oid:"):
        value = value[len("urn:oid:"):]
    if value == FRMO_BOOK_OID:
        raise InvalidValue(
            "Указан OID самого справочника ФРМО, а не организации. Укажите OID "
            "самой организации из ФРМО (1.2.643.5.1.13.13.12.2.<регион>.<номер>).",
            "The value is the OID of the FRMO book itself, not of an organization.")
    arcs = value[len(FRMO_OID_PREFIX) + 1:].split(".")
    if not value.startswith(FRMO_OID_PREFIX + ".") or len(arcs) < 2 or not all(
            a.isascii() and a.isdigit() for a in arcs):
        raise InvalidValue(
            "OID организации в ФРМО имеет вид 1.2.643.5.1.13.13.12.2.<код региона>.<номер>, "
            "для подразделения — с дополнительными числами через точку. Скопируйте OID из "
            "карточки организации в ФРМО.",
            f"FRMO OID must look like {FRMO_OID_PREFIX}.<region>.<n>[.<n>...].")
    return value, arcs


def frmo_oid(raw: str) -> str:
    """OID of an organization or department in ФРМО; returns it without `urn:oid:`.

    The region arc may be written with a leading zero (`05`) or without (`5`): public
    sources show only two-digit regions, so which form ФРМО uses for 01–09 is not
    verified and both are accepted unchanged. Other arcs follow OID syntax (no leading
    zeros).
    """
    value, arcs = _frmo_arcs(raw)
    region, rest = arcs[0], arcs[1:]
    if not 1 <= int(region) <= 99 or len(region) > 2:
        raise InvalidValue(
            "Код региона в OID организации ФРМО должен быть числом от 01 до 99 (код "
            "субъекта РФ). Проверьте OID по карточке организации в ФРМО.",
            "FRMO OID region arc must be 1..99.")
    if any(len(a) > 1 and a.startswith("0") for a in rest):
        raise InvalidValue(
            "В OID организации ФРМО числа между точками не начинаются с нуля. Скопируйте "
            "OID из карточки организации в ФРМО без изменений.",
            "FRMO OID arcs other than the region must not have leading zeros.")
    return value


def frmo_region(oid: str) -> str:
    """Two-digit region code ("77", "05") from a ФРМО organization OID."""
    _, arcs = _frmo_arcs(frmo_oid(oid))
    return f"{int(arcs[0]):02d}"


# --- phone ------------------------------------------------------------------------------

_PHONE_CHARS = re.compile(r"\+?[0-9 ()\-.]+")


def _phone_error(text_ru: str, text_en: str) -> InvalidValue:
    return InvalidValue(
        f"{text_ru} Укажите номер в виде +7XXXXXXXXXX (или 8XXXXXXXXXX), а иностранный — "
        "с + и кодом страны.", text_en)


def phone(raw: str) -> str:
    """A phone number: Russian ones → `+7XXXXXXXXXX`, other international ones → `+digits`."""
    value = _text(raw, "Номер телефона", "Phone number")
    if not _PHONE_CHARS.fullmatch(value):
        raise _phone_error(
            "Номер телефона может содержать только цифры, + в начале, пробелы, дефисы, "
            "скобки и точки; добавочный номер и комментарии укажите отдельно.",
            "Phone number contains letters or other symbols.")
    digits = re.sub(r"\D", "", value)
    if value.startswith("+"):
        return _international_phone(digits)
    if len(digits) == 11 and digits[0] in "78":
        return "+7" + digits[1:]
    if digits[:1] == "8":
        raise _phone_error(f"После 8 должно быть 10 цифр, а указано {len(digits) - 1}.",
                           "Russian number after 8 must have 10 digits.")
    if len(digits) == 10:
        raise _phone_error(
            "В номере 10 цифр без кода страны. Добавьте +7 в начале номера.",
            "10 digits without a country code; prefix +7 expected.")
    raise _phone_error("Номер телефона записан не полностью или в неизвестном формате.",
                       "Phone number is neither Russian nor international (+...).")


def _international_phone(digits: str) -> str:
    if digits.startswith("7"):
        if len(digits) != 11:
            raise _phone_error(f"После +7 должно быть 10 цифр, а указано {len(digits) - 1}.",
                               "Russian number after +7 must have 10 digits.")
        return "+" + digits
    if digits.startswith("89"):  # no country code starts with 89: a Russian "8" after "+"
        raise _phone_error("Код страны +89 не существует: для России пишите +7 или 8.",
                           "Country code +89 does not exist; +7 or 8 meant?")
    if digits.startswith("0") or not 8 <= len(digits) <= 15:
        raise _phone_error(
            "Международный номер — это + и от 8 до 15 цифр, код страны не начинается с 0.",
            "International number must be + and 8-15 digits, country code not 0.")
    return "+" + digits


# --- e-mail -------------------------------------------------------------------------------

THROWAWAY_DOMAINS: frozenset[str] = frozenset({
    "10minutemail.com", "dispostable.com", "dropmail.me", "emailondeck.com",
    "fakeinbox.com", "getnada.com", "guerrillamail.com", "guerrillamail.net",
    "mailinator.com", "maildrop.cc", "mailnesia.com", "mintemail.com", "sharklasers.com",
    "temp-mail.org", "temp-mail.ru", "throwawaymail.com", "trashmail.com", "yopmail.com",
    "yopmail.fr",
})

_DOMAIN_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-)*[^\W_])?")


def _email_error(text_ru: str, text_en: str) -> InvalidValue:
    return InvalidValue(f"Адрес электронной почты: {text_ru} Образец: имя@домен.ru.",
                        f"E-mail address: {text_en}")


def email(raw: str) -> str:
    """An e-mail address; returns it stripped, with the domain in lower case."""
    value = _text(raw, "Адрес электронной почты", "E-mail address")
    if any(ch.isspace() for ch in value):
        raise _email_error("уберите пробелы внутри адреса.", "contains whitespace.")
    if value.count("@") != 1:
        raise _email_error("в адресе должен быть ровно один символ @.",
                           "must contain exactly one '@'.")
    local, domain = value.split("@")
    if not local:
        raise _email_error("перед @ должно быть имя ящика.", "empty local part.")
    _check_email_domain(domain)
    return f"{local}@{domain.lower()}"


def _check_email_domain(domain: str) -> None:
    labels = domain.split(".")
    if len(labels) < 2:
        raise _email_error("после @ должен быть домен с точкой.",
                           "domain has no dot.")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise _email_error(
            "домен после @ состоит из букв, цифр и дефисов, разделённых одной точкой; "
            "уберите лишние точки и знаки.", "domain has an empty or malformed label.")
    tld = labels[-1]
    if not (tld.isalpha() and len(tld) >= 2) and not tld.lower().startswith("xn--"):
        raise _email_error("домен верхнего уровня (после последней точки) — это буквы, "
                           "не меньше двух.", "top-level domain must be ≥2 letters.")


def is_throwaway_email(value: str) -> bool:
    """True if the address is on a well-known disposable-mail domain (or its subdomain)."""
    domain = value.strip().rpartition("@")[2].lower()
    if not domain:
        return False
    parts = domain.split(".")
    return any(".".join(parts[i:]) in THROWAWAY_DOMAINS for i in range(len(parts) - 1))


# --- parts of a person's name --------------------------------------------------------------

_NAME_PUNCTUATION = frozenset("-'’ʼ .")


def _script(ch: str) -> str:
    """'cyr', 'lat' or 'other' for a letter."""
    name = unicodedata.name(ch, "")
    if name.startswith("CYRILLIC"):
        return "cyr"
    return "lat" if name.startswith("LATIN") else "other"


def is_cyrillic(value: str) -> bool:
    """True if the value has letters and all of them are Cyrillic."""
    letters = [ch for ch in value if ch.isalpha()]
    return bool(letters) and all(_script(ch) == "cyr" for ch in letters)


def person_name_part(raw: str) -> str:
    """A family name, given name or patronymic; returns it stripped, spaces collapsed.

    Purely Latin names are accepted (foreign workers exist); use `is_cyrillic` to
    decide what to do with them. Mixed scripts inside one word are not: a Latin "а"
    or "о" looks the same as a Cyrillic one and breaks every search upstream.
    """
    value = unicodedata.normalize("NFC", " ".join(_text(raw, "Часть ФИО", "Name part").split()))
    bad = [i for i, ch in enumerate(value, 1) if not ch.isalpha() and ch not in _NAME_PUNCTUATION]
    if bad:
        raise InvalidValue(
            f"В ФИО недопустимые символы (позиции {_positions(bad)}): цифры и знаки не "
            "допускаются, кроме дефиса, апострофа, пробела и точки. Уберите их.",
            f"Name part has digits or symbols at positions {_positions(bad)}.")
    if not any(ch.isalpha() for ch in value):
        raise InvalidValue("В ФИО нет ни одной буквы. Укажите фамилию, имя или отчество.",
                           "Name part has no letters.")
    _check_mixed_scripts(value)
    _check_missing_separator(value)
    return value


def _positions(positions: list[int]) -> str:
    return ", ".join(str(p) for p in positions)


def _check_mixed_scripts(value: str) -> None:
    """Each word (between spaces and hyphens) must be written in one alphabet."""
    latin: list[int] = []
    cyrillic: list[int] = []
    for match in re.finditer(r"[^ \-]+", value):
        scripts = [(match.start() + i + 1, _script(ch)) for i, ch in enumerate(match.group())]
        n_lat = sum(s == "lat" for _, s in scripts)
        n_cyr = sum(s == "cyr" for _, s in scripts)
        if n_lat and n_cyr:
            wrong = "lat" if n_cyr >= n_lat else "cyr"
            target = latin if wrong == "lat" else cyrillic
            target.extend(pos for pos, s in scripts if s == wrong)
    if latin or cyrillic:
        raise InvalidValue(_mixed_text_ru(latin, cyrillic),
                           "Name part mixes Latin and Cyrillic letters: Latin at "
                           f"{_positions(latin) or '-'}, Cyrillic at "
                           f"{_positions(cyrillic) or '-'}.")


def _mixed_text_ru(latin: list[int], cyrillic: list[int]) -> str:
    text = "В ФИО смешаны латинские и русские буквы, которые выглядят одинаково."
    if latin:
        text += (f" Латинских букв: {len(latin)}, латинские буквы в позициях "
                 f"{_positions(latin)} — замените их русскими.")
    if cyrillic:
        text += (f" Русских букв среди латинских: {len(cyrillic)}, в позициях "
                 f"{_positions(cyrillic)} — замените их латинскими.")
    return text


def _check_missing_separator(value: str) -> None:
    """`ИвановИван`: a lowercase Cyrillic letter right before an uppercase one."""
    for i, (a, b) in enumerate(pairwise(value), 1):
        if a.islower() and b.isupper() and _script(a) == _script(b) == "cyr":
            raise InvalidValue(
                f"В ФИО пропущен пробел или дефис между частями (перед позицией {i + 1}): "
                "строчная буква стоит прямо перед заглавной. Разделите части пробелом или "
                "дефисом, а фамилию, имя и отчество укажите в своих полях.",
                f"Missing space or hyphen between name parts before position {i + 1}.")
