"""Masking of personal data (ПДн) in text that leaves the process: logs, exception text.

Pure functions, no I/O. What is masked, and how:

- СНИЛС `112-233-445 95` or `11223344595` → `***-***-445 95` (the last five digits stay,
  enough to tell two records apart in a log, not enough to identify a person);
- passport series and number `4509 123456`, `45 09 123456`, `4509-123456`,
  `4509№123456` → `**** ***456`;
- полис ОМС / ЕНП, 16 digits (`1234567890123456`, `1234 5678 9012 3456`) →
  `************3456`;
- person names as values of name-like keys — `name=`, `family=`, `given=` (also with a
  modifier or a chain: `name:contains=`, `subject:Patient.name=`) in query strings and
  `key=value` text, and `"family": "…"`, `"given": ["…", "…"]`, `'name': '…'` in JSON or
  Python reprs → first letter + `***`; so is the `text` of an object that has `family`
  or `given` (a HumanName's whole name), while other `text` elements stay.

Numbers are matched only as whole runs: a digit, letter, dot or dash next to a run
means it belongs to something else, so OIDs (`1.2.643.5.1.13.13.12.4.77.1`), dates,
instants and UUIDs are left alone. A run after a percent-escape (`%7C11223344595`,
an encoded `|`) is still masked. Bare 10-digit runs are *not* taken for passports:
they are as often an organization's ИНН or a phone number, which are not the person's
passport; a passport is recognised by its 4 + 6 split.
"""
from __future__ import annotations

import re
from urllib.parse import quote, unquote_plus

__all__ = ["NAME_KEYS", "mask_name", "mask_text", "mask_url"]

#: keys whose values are person names (the last segment of a chained key counts)
NAME_KEYS = frozenset({"name", "family", "given"})

# A number run may follow a percent-escape (`%7C`) or anything that is not part of a
# word, an OID, a date or a signed number; and must not be followed by one.
_BEFORE = r"(?:(?<=%[0-9A-Fa-f]{2})|(?<![0-9A-Za-z_.\-+]))"
_AFTER = r"(?![0-9A-Za-z_\-]|\.\d)"    # a full stop may end a sentence
_SEP = r"(?:[ \-]|%20|\+)"       # a space or dash, also as it comes in a URL

_OMS = re.compile(_BEFORE + r"(?:\d{16}|\d{4}(?:" + _SEP + r"\d{4}){3})" + _AFTER)
_SNILS = re.compile(
    _BEFORE + r"(?:\d{11}|\d{3}-\d{3}-(?P<a>\d{3})" + _SEP + r"(?P<b>\d{2}))" + _AFTER)
_PASSPORT = re.compile(
    _BEFORE + r"\d{2}(?: |%20|\+)?\d{2}(?:\s*(?:№|%E2%84%96)\s*|" + _SEP + r")"
    r"\d{3}(?P<tail>\d{3})" + _AFTER)

_KEY = r"(?:[A-Za-z_\-]+(?::[A-Za-z]+)?\.)?(?:name|family|given)(?::[a-z\-]+)?"
# query strings and key=value text: the value runs to the next & ; # or whitespace
_QUERY_NAME = re.compile(
    r"(?:(?<=^)|(?<=[?&;\s(,]))(?P<key>" + _KEY + r")=(?P<val>[^&;#\s\"'<>]+)")
# JSON / repr: "family": "Иванова" or 'given': ['Анна', 'Петровна']
_QUOTED_NAME = re.compile(
    r"(?P<q>[\"'])(?P<key>name|family|given)(?P=q)\s*:\s*"
    r"(?P<val>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
    r"|\[\s*(?:(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')\s*,?\s*)*\])")
_QUOTED_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
# a HumanName: an innermost object with family or given; its `text` is the whole name
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_HAS_NAME_PART = re.compile(r"[\"'](?:family|given)[\"']\s*:")
_QUOTED_TEXT = re.compile(
    r"(?P<q>[\"'])text(?P=q)\s*:\s*(?P<val>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')")


def mask_name(value: str) -> str:
    """A person's name → its first letter and `***` (`Иванова` → `И***`); empty stays empty."""
    stripped = value.strip()
    if not stripped or set(stripped) <= {"*"}:
        return value
    return stripped[0] + "***"


def _mask_url_name(raw: str) -> str:
    """A name as it stands in a query string, possibly percent-encoded: keep it encoded."""
    if "%" not in raw and "+" not in raw:
        return mask_name(raw)
    decoded = unquote_plus(raw)
    if not decoded.strip():
        return raw
    return quote(decoded.strip()[0], safe="") + "***"


def _snils(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0).replace("%20", ""))
    return f"***-***-{digits[6:9]} {digits[9:11]}"


def _oms(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0).replace("%20", ""))
    return "*" * 12 + digits[-4:]


def _passport(match: re.Match[str]) -> str:
    return "**** ***" + match.group("tail")


def _quoted(match: re.Match[str]) -> str:
    val = match.group("val")

    def one(string: re.Match[str]) -> str:
        text = string.group(0)
        quote_char, inner = text[0], text[1:-1]
        if re.match(r"\\u[0-9A-Fa-f]{4}", inner):       # JSON with ensure_ascii
            return quote_char + inner[:6] + "***" + quote_char
        return quote_char + mask_name(inner) + quote_char

    masked = _QUOTED_STRING.sub(one, val)
    return match.group(0)[: match.start("val") - match.start(0)] + masked


def _human_name(match: re.Match[str]) -> str:
    obj = match.group(0)
    return _QUOTED_TEXT.sub(_quoted, obj) if _HAS_NAME_PART.search(obj) else obj


def mask_text(text: str) -> str:
    """Return `text` with СНИЛС, passport and ОМС numbers and person names masked."""
    if not text:
        return text
    text = _FLAT_OBJECT.sub(_human_name, text)
    text = _QUOTED_NAME.sub(_quoted, text)
    text = _QUERY_NAME.sub(lambda m: f"{m.group('key')}={_mask_url_name(m.group('val'))}", text)
    text = _OMS.sub(_oms, text)
    text = _SNILS.sub(_snils, text)
    return _PASSPORT.sub(_passport, text)


def mask_url(text: str) -> str:
    """A path with its query (or any text holding one), masked as a person would read it:
    percent-escapes are decoded and masked again, in case they hid something."""
    masked = mask_text(text)
    for _ in range(3):
        decoded = unquote_plus(masked)
        if decoded == masked:
            break
        masked = mask_text(decoded)
    return masked
