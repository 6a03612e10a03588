"""The parameters of one search request, parsed and checked (pure: no Flask, no database).

`parse(resource_type, pairs, lenient)` turns the (name, value) pairs of a query
string or form body into a `SearchRequest`:

- one `Clause` per occurrence of a search parameter: occurrences are ANDed, the
  comma-separated values of one occurrence are ORed (`\\,` is a literal comma);
- the result parameters `_sort`, `_count`, `_total`, `_summary`, `_elements`,
  `_include` and `_revinclude`;
- `query`, the pairs as understood (the self link shows them, a cursor carries them).

Only what `gateway.registry` declares is accepted. An unknown parameter, modifier
or include is refused with InvalidRequest listing every one, or, when the client
prefers lenient handling, dropped and kept as a warning for the Bundle. A value
that cannot be read (a date like 2024-13-01, a number like 1,2e) is refused either way.
Values are normalised the way the index stores them, so `Иванова`, `иванова` and
`ИВАНОВА` are one search, and `ё` finds `е`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from gateway.errors import InvalidRequest
from gateway.issues import Issue
from gateway.registry import RESOURCE_TYPES, SearchParam, includes, revincludes, searchable
from gateway.store.indexing import date_range, normalize_string, reference_key
from gateway.validation.systems import normalised_identifier

DEFAULT_COUNT = 50
MAX_COUNT = 1000
MAX_CLAUSES = 50            # parameters in one request
MAX_VALUES = 100            # comma-separated values of one parameter
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
RESULT_PARAMS = ("_sort", "_count", "_total", "_summary", "_elements", "_include",
                 "_revinclude")
IGNORED_PARAMS = ("_format", "_pretty")      # rendering only: negotiation reads _format
SORTABLE = ("token", "string", "date", "quantity")
SUMMARIES = ("true", "text", "data", "count", "false")

# The modifiers each kind of parameter understands (a reference also takes a type).
MODIFIERS = {
    "token": ("missing", "not"),
    "string": ("missing", "exact", "contains"),
    "date": ("missing",),
    "reference": ("missing",),
    "quantity": ("missing",),
}
KIND_NOTES = {
    "token": "system|code, |code (no system), system| (any code), code; :missing, :not",
    "string": "starts with, case- and ё/е-insensitive; :exact (whole value), :contains, "
              ":missing",
    "date": "prefixes eq ne gt lt ge le sa eb; YYYY, YYYY-MM, YYYY-MM-DD or a dateTime; "
            ":missing",
    "reference": "Type/id or id; :Type modifier; chained one level (param.name=...); "
                 ":missing",
    "quantity": "[prefix]number|system|code, number||code or number; :missing",
}
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")


# --- what a request becomes -------------------------------------------------------

@dataclass(frozen=True)
class Token:
    system: str | None          # None with any_system False: the code has no system
    code: str | None            # None: any code of the system
    any_system: bool = False


@dataclass(frozen=True)
class DateValue:
    prefix: str
    low: datetime               # the instants the given date covers, inclusive
    high: datetime


@dataclass(frozen=True)
class QuantityValue:
    prefix: str
    number: float
    low: float                  # eq: [low, high), the number's implicit precision
    high: float
    system: str | None
    code: str | None


@dataclass(frozen=True)
class Reference:
    type: str | None
    id: str


@dataclass(frozen=True)
class Clause:
    """One occurrence of a parameter: its values are ORed; a request's clauses ANDed."""

    param: SearchParam
    modifier: str | None = None          # missing, not, exact, contains
    values: tuple = ()                   # Token | str | DateValue | QuantityValue | Reference
    missing: bool | None = None          # :missing=true|false
    chain: Clause | None = None          # reference chained to a parameter of `target`
    target: str | None = None            # the type a reference or chain is limited to


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class Include:
    source: str                          # the type holding the reference
    param: SearchParam
    target: str | None = None


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str
    clauses: tuple[Clause, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    total: bool = True                   # _total=accurate (the default) or none
    summary: str | None = None           # true | text | data | count
    elements: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    warnings: tuple[Issue, ...] = field(default=(), compare=False)


# --- parsing ----------------------------------------------------------------------

def parse(resource_type: str, pairs: list[tuple[str, str]], lenient: bool = False, *,
          max_count: int = MAX_COUNT, max_includes: int = 0) -> SearchRequest:
    """`max_count`: the largest page (`max_page_size`); `max_includes` > 0: the most
    `_include` plus `_revinclude` parameters (`max_includes`), 400 beyond."""
    spec = searchable(resource_type)
    if spec is None:
        raise InvalidRequest(f"Поиск ресурсов {resource_type} не поддерживается.",
                             f"Search is not supported for {resource_type}.")
    _check_includes(pairs, max_includes)
    state = _State(resource_type, lenient, max_count)
    for name, value in pairs:
        _check_text(name, "параметра", "parameter name")
        _check_text(value, f"параметра «{_shown(name)}»", f"parameter {_shown(name)!r}")
        if name in IGNORED_PARAMS or value == "":
            continue                     # an empty parameter is ignored (FHIR search)
        base = name.partition(":")[0].partition(".")[0]
        if base in RESULT_PARAMS:
            state.result(name, base, value)
        else:
            clause = state.clause(name, value)
            if clause is not None:
                state.clauses.append(clause)
                state.query.append((name, value))
    if len(state.clauses) > MAX_CLAUSES:
        raise InvalidRequest(f"Слишком много условий поиска (больше {MAX_CLAUSES}).",
                             f"Too many search parameters (more than {MAX_CLAUSES}).")
    if state.unknown and not lenient:
        raise InvalidRequest(issues=state.unknown)
    if state.summary not in (None, "count") and state.elements:
        raise InvalidRequest("Параметры _summary и _elements вместе не используются.",
                             "_summary and _elements cannot be combined.")
    return SearchRequest(
        resource_type, tuple(state.clauses), tuple(state.sort), state.count, state.total,
        state.summary, tuple(state.elements), tuple(dict.fromkeys(state.includes)),
        tuple(dict.fromkeys(state.revincludes)), tuple(state.query),
        tuple(state.warnings) + tuple(state.unknown))


def _check_includes(pairs: list[tuple[str, str]], limit: int) -> None:
    given = sum(name.partition(":")[0] in ("_include", "_revinclude") for name, _ in pairs)
    if 0 < limit < given:
        raise InvalidRequest(
            f"Слишком много параметров _include и _revinclude ({given}, допустимо {limit}).",
            f"Too many _include and _revinclude parameters: {given}, limit {limit}.",
            expression="_include")


class _State:
    """What has been read of one request so far."""

    def __init__(self, resource_type: str, lenient: bool, max_count: int = MAX_COUNT):
        self.type = resource_type
        self.lenient = lenient
        self.max_count = max_count
        self.clauses: list[Clause] = []
        self.sort: list[SortKey] = []
        self.count = DEFAULT_COUNT
        self.total = True
        self.summary: str | None = None
        self.elements: list[str] = []
        self.includes: list[Include] = []
        self.revincludes: list[Include] = []
        self.query: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.warnings: list[Issue] = []
        self.unknown: list[Issue] = []

    def not_supported(self, name: str, text_ru: str, text_en: str) -> None:
        severity = "warning" if self.lenient else "error"
        suffix_ru = " Параметр пропущен (Prefer: handling=lenient)." if self.lenient else ""
        suffix_en = " Ignored (Prefer: handling=lenient)." if self.lenient else ""
        self.unknown.append(Issue("not-supported", text_ru + suffix_ru, text_en + suffix_en,
                                  _shown(name), severity=severity))

    # --- search parameters --------------------------------------------------------

    def clause(self, name: str, value: str, resource_type: str | None = None,
               chained: bool = False) -> Clause | None:
        resource_type = resource_type or self.type
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        param = RESOURCE_TYPES[resource_type].param(code)
        if param is None:
            self.not_supported(name, f"Параметр поиска «{_shown(code)}» не поддерживается для "
                                     f"{resource_type}.",
                               f"Unknown search parameter {_shown(code)!r} for {resource_type}.")
            return None
        if dot:
            return self.chain(name, param, modifier or None, rest, value, resource_type,
                              chained)
        if modifier and not self.modifier_ok(name, param, modifier):
            return None
        if modifier == "missing":
            return Clause(param, "missing", missing=_boolean(name, value))
        values = split(value, ",")
        if len(values) > MAX_VALUES:
            raise InvalidRequest(f"Слишком много значений через запятую (больше {MAX_VALUES}).",
                                 f"Too many comma-separated values (more than {MAX_VALUES}).")
        target = modifier if param.kind == "reference" and modifier else None
        parsed = [v for v in (_value(param, name, raw, target) for raw in values)
                  if v is not None]
        if not parsed:
            raise _bad_value(name, value, "непустое значение", "a non-empty value")
        return Clause(param, modifier if not target else None, tuple(parsed), target=target)

    def modifier_ok(self, name: str, param: SearchParam, modifier: str) -> bool:
        allowed = () if param.name in ("_id", "_lastUpdated") else MODIFIERS[param.kind]
        if modifier in allowed:
            return True
        if param.kind == "reference" and modifier in RESOURCE_TYPES and \
                (not param.targets or modifier in param.targets):
            return True
        self.not_supported(name, f"Модификатор «:{_shown(modifier)}» не поддерживается для "
                                 f"параметра {param.name}.",
                           f"Modifier :{_shown(modifier)} is not supported for {param.name}.")
        return False

    def chain(self, name: str, param: SearchParam, modifier: str | None, rest: str,
              value: str, resource_type: str, chained: bool) -> Clause | None:
        if chained or "." in rest:
            raise InvalidRequest("Цепочки параметров поддерживаются на один уровень "
                                 "(например practitioner.identifier).",
                                 "Chained parameters are supported one level deep only.")
        if param.kind != "reference":
            self.not_supported(name, f"Параметр {param.name} не ссылка: цепочка невозможна.",
                               f"{param.name} is not a reference parameter: cannot chain.")
            return None
        inner_code = rest.partition(":")[0]
        if modifier is not None:
            if modifier not in RESOURCE_TYPES:
                self.not_supported(name, f"В цепочке после «:» указывается тип ресурса, а не "
                                         f"«{_shown(modifier)}».",
                                   f"A chain takes a resource type modifier, not "
                                   f"{_shown(modifier)!r}.")
                return None
            if not self.modifier_ok(name, param, modifier):
                return None
            candidates = [modifier] if RESOURCE_TYPES[modifier].param(inner_code) else []
        else:
            candidates = [t for t in (param.targets or RESOURCE_TYPES)
                          if searchable(t) and RESOURCE_TYPES[t].param(inner_code)]
        if not candidates:
            self.not_supported(name, f"Параметр цепочки «{_shown(rest)}» не поддерживается.",
                               f"Unknown chained parameter {_shown(rest)!r}.")
            return None
        if len(candidates) > 1:
            raise InvalidRequest(
                f"Ссылка {param.name} может вести к {', '.join(candidates)}: укажите тип, "
                f"например {param.name}:{candidates[0]}.{rest}.",
                f"{param.name} may point to {', '.join(candidates)}: name the type, e.g. "
                f"{param.name}:{candidates[0]}.{rest}.")
        inner = self.clause(rest, value, candidates[0], chained=True)
        return None if inner is None else Clause(param, chain=inner, target=candidates[0])

    # --- result parameters --------------------------------------------------------

    def result(self, name: str, base: str, value: str) -> None:
        if name != base:
            self.not_supported(name, f"Модификатор параметра {base} не поддерживается.",
                               f"{_shown(name)!r}: modifiers of {base} are not supported.")
            return
        if base not in ("_include", "_revinclude"):
            if base in self.seen:
                raise InvalidRequest(f"Параметр {base} указан дважды.",
                                     f"{base} is given more than once.")
            self.seen.add(base)
        kept = getattr(self, "read" + base)(value)
        if kept is not None:
            self.query.append((base, kept))

    def read_sort(self, value: str) -> str | None:
        keys = []
        for item in (v.strip() for v in value.split(",")):
            descending, code = item.startswith("-"), item.lstrip("-")
            param = RESOURCE_TYPES[self.type].param(code) if code else None
            if param is None:
                self.not_supported(item, f"Сортировка по «{_shown(code)}» не поддерживается.",
                                   f"Cannot sort by unknown parameter {_shown(code)!r}.")
            elif param.kind not in SORTABLE:
                raise InvalidRequest(f"Сортировка по ссылке {code} невозможна.",
                                     f"Cannot sort by the reference parameter {code}.")
            elif all(k.param.name != code for k in keys):
                keys.append(SortKey(param, descending))
        self.sort = keys
        return ",".join(("-" if k.descending else "") + k.param.name for k in keys) or None

    def read_count(self, value: str) -> str:
        if not value.isdigit() or not value.isascii():
            raise InvalidRequest("_count — целое неотрицательное число.",
                                 "_count must be a non-negative integer.")
        self.count = int(value)
        limit = self.max_count
        if self.count > limit:
            self.warnings.append(Issue(
                "informational", f"_count={min(self.count, 10**9)} больше допустимого: "
                                 f"на странице не более {limit} записей.",
                f"_count is limited to {limit}; pages hold at most {limit} entries.",
                "_count", severity="warning"))
            self.count = limit
        return str(self.count)

    def read_total(self, value: str) -> str:
        if value not in ("none", "estimate", "accurate"):
            raise InvalidRequest("_total принимает значения none, estimate или accurate.",
                                 "_total must be none, estimate or accurate.")
        self.total = value != "none"          # an estimate is given exactly
        return "none" if value == "none" else "accurate"

    def read_summary(self, value: str) -> str:
        if value not in SUMMARIES:
            raise InvalidRequest("_summary принимает значения true, text, data, count, false.",
                                 "_summary must be true, text, data, count or false.")
        self.summary = None if value == "false" else value
        return value

    def read_elements(self, value: str) -> str | None:
        names = []
        for item in (v.strip() for v in value.split(",") if v.strip()):
            prefix, _, element = item.rpartition(".")
            if prefix not in ("", self.type) or not _ELEMENT.match(element):
                raise InvalidRequest(f"_elements: «{_shown(item)}» — не имя элемента "
                                     f"верхнего уровня ресурса {self.type}.",
                                     f"_elements: {_shown(item)!r} is not a top-level element.")
            names.append(element)
        self.elements = list(dict.fromkeys(names))
        return ",".join(self.elements) or None

    def read_include(self, value: str) -> str | None:
        found = self._include(value, includes(self.type), "_include")
        if found:
            self.includes.append(found)
        return value if found else None

    def read_revinclude(self, value: str) -> str | None:
        found = self._include(value, revincludes(self.type), "_revinclude")
        if found:
            self.revincludes.append(found)
        return value if found else None

    def _include(self, value: str, offered, name: str) -> Include | None:
        source, _, rest = value.partition(":")
        code, _, target = rest.partition(":")
        param = next((p for s, p in offered if s == source and p.name == code), None)
        reverse = name == "_revinclude"
        target_ok = not target or (target == self.type if reverse else
                                   target in RESOURCE_TYPES and
                                   (not param or not param.targets or target in param.targets))
        if param is None or not target_ok:
            self.not_supported(name, f"{name}={_shown(value)} не поддерживается для "
                                     f"{self.type}: см. /fhir/metadata.",
                               f"{name}={_shown(value)} is not supported for {self.type} "
                               "(see /fhir/metadata).")
            return None
        return Include(source, param, None if reverse else (target or None))


# --- values -----------------------------------------------------------------------

def _value(param: SearchParam, name: str, raw: str, target: str | None):
    if param.name == "_id":
        return unescape(raw) or None
    kind = param.kind
    if kind == "string":
        return normalize_string(unescape(raw)) or None
    if kind == "token":
        return _token(param, name, raw)
    if kind == "date":
        return _date(name, raw)
    if kind == "quantity":
        return _quantity(name, raw)
    return _reference(name, raw, target)


def _token(param: SearchParam, name: str, raw: str) -> Token | None:
    parts = split(raw, "|")
    if len(parts) == 1:
        code = unescape(parts[0])
        return Token(None, code, any_system=True) if code else None
    if len(parts) > 2:
        raise _bad_value(name, raw, "система|код", "system|code")
    system, code = unescape(parts[0]) or None, unescape(parts[1]) or None
    if system is None and code is None:
        raise _bad_value(name, raw, "система|код", "system|code")
    if param.name == "identifier" and system and code:
        system, code = normalised_identifier(system, code)
    return Token(system, code)


def _prefixed(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2].isalpha():
        return raw[:2], raw[2:]
    return "eq", raw


def _date(name: str, raw: str) -> DateValue:
    prefix, text = _prefixed(unescape(raw).replace(" ", "+"))   # "+03:00" arrives as " 03:00"
    if prefix not in PREFIXES:
        raise _bad_prefix(name, prefix)
    try:
        covered = date_range(text)
    except (ValueError, OverflowError):
        covered = None
    if covered is None:
        raise _bad_value(name, raw, "дата ГГГГ, ГГГГ-ММ, ГГГГ-ММ-ДД или ГГГГ-ММ-ДДTчч:мм:сс+03:00",
                         "YYYY, YYYY-MM, YYYY-MM-DD or a dateTime")
    return DateValue(prefix, *covered)


def _quantity(name: str, raw: str) -> QuantityValue:
    parts = [unescape(p) for p in split(raw, "|")]
    if len(parts) not in (1, 3):
        raise _bad_value(name, raw, "[префикс]число|система|код", "[prefix]number|system|code")
    prefix, number = _prefixed(parts[0])
    if prefix not in PREFIXES:
        raise _bad_prefix(name, prefix)
    if not _NUMBER.match(number):
        raise _bad_value(name, raw, "число, например 5.4", "a number such as 5.4")
    try:
        exact = Decimal(number)
        half = Decimal(5).scaleb(exact.as_tuple().exponent - 1)     # 5.4 -> 0.05
    except InvalidOperation:
        raise _bad_value(name, raw, "число, например 5.4", "a number such as 5.4") from None
    system, code = (parts[1] or None, parts[2] or None) if len(parts) == 3 else (None, None)
    if not math.isfinite(float(exact)):
        raise _bad_value(name, raw, "число, например 5.4", "a number such as 5.4")
    return QuantityValue(prefix, float(exact), float(exact - half), float(exact + half),
                         system, code)


def _reference(name: str, raw: str, target: str | None) -> Reference:
    kind, rid = reference_key(unescape(raw).strip())
    if not rid:
        raise _bad_value(name, raw, "Тип/id или id", "Type/id or id")
    if target and kind and kind != target:
        raise _bad_value(name, raw, f"{target}/id или id", f"{target}/id or id")
    return Reference(kind or target, rid)


def _boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise _bad_value(name, value, "true или false", "true or false")
    return value == "true"


# --- text helpers -----------------------------------------------------------------

def split(value: str, separator: str) -> list[str]:
    """Split on `separator` unless escaped with a backslash (escapes are kept)."""
    parts, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def _check_text(text: str, what_ru: str, what_en: str) -> None:
    """Control characters never reach the database (PostgreSQL refuses NUL) nor XML."""
    if _CONTROL.search(text) or len(text) > 8000:
        raise InvalidRequest(f"Недопустимые символы или длина значения {what_ru}.",
                             f"Control characters or excessive length in {what_en}.")


def _shown(text: str) -> str:
    """A parameter as quoted back to the client: printable and short."""
    return text[:100]


def _bad_value(name: str, raw: str, expected_ru: str, expected_en: str) -> InvalidRequest:
    return InvalidRequest(f"Параметр {_shown(name)}: значение «{_shown(raw)}» не распознано; "
                          f"ожидается {expected_ru}.",
                          f"{_shown(name)}: cannot read {_shown(raw)!r}; expected {expected_en}.",
                          expression=_shown(name))


def _bad_prefix(name: str, prefix: str) -> InvalidRequest:
    return InvalidRequest(f"Параметр {_shown(name)}: префикс «{prefix}» не поддерживается; "
                          f"допустимы {', '.join(PREFIXES)}.",
                          f"{_shown(name)}: prefix {prefix!r} is not supported "
                          f"(use {', '.join(PREFIXES)}).", expression=_shown(name))
