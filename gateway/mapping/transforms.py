"""The fixed set of named transforms a mapping file may use (pure).

Each transform takes the value found at the source, the argument written in the
mapping and the context (the НСИ books), and returns the value to write at the
target — or raises TransformError saying, in the vendor's terms, what is wrong.
The set is closed on purpose: a mapping file is data, and nothing in it can run
code. `check_argument` lets the loader refuse a bad argument at start-up.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.validation import systems
from gateway.validation.terminology import Terminology


class TransformError(ValueError):
    def __init__(self, code: str, text_ru: str, text_en: str):
        super().__init__(text_en)
        self.code, self.text_ru, self.text_en = code, text_ru, text_en


@dataclass(frozen=True)
class Transform:
    run: Callable                      # (value, argument, terminology) -> value
    argument: type | tuple | None      # what the mapping must give: None = no argument


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        raise TransformError("value", "Ожидалось простое значение, а не объект или список.",
                             "Expected a plain value, not an object or array.")
    return str(value)


def _trim(value, _arg, _books):
    return re.sub(r"\s+", " ", _text(value)).strip()


def _digits(value, _arg, _books):
    return "".join(ch for ch in _text(value) if ch.isdigit())


def _date(value, fmt: str, _books):
    text = _text(value).strip()
    if fmt == "iso":
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            try:
                datetime.strptime(text, "%Y-%m-%d")
                return text
            except ValueError:
                pass
        hint = " Похоже на ДД.ММ.ГГГГ: запишите как ГГГГ-ММ-ДД." \
            if re.fullmatch(r"\d{1,2}\.\d{1,2}\.\d{4}", text) else ""
        raise TransformError("value", f"Дата должна быть в формате ГГГГ-ММ-ДД, например "
                                      f"1985-03-14.{hint}",
                             "Date must be YYYY-MM-DD.")
    try:
        return datetime.strptime(text, fmt).date().isoformat()
    except ValueError:
        human = fmt.replace("%d", "ДД").replace("%m", "ММ").replace("%Y", "ГГГГ")
        raise TransformError("value", f"Дата должна быть в формате {human}.",
                             f"Date must match the format {fmt}.") from None


def _datetime(value, fmt: str, _books):
    text = _text(value).strip()
    if fmt == "iso":
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return _date(text, "iso", _books)
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
            return text
        except ValueError:
            raise TransformError("value", "Дата и время должны быть в формате ISO 8601, "
                                          "например 2024-05-17 или 2024-05-17T10:30:00+03:00.",
                                 "Date-time must be ISO 8601.") from None
    try:
        return datetime.strptime(text, fmt).isoformat()
    except ValueError:
        raise TransformError("value", f"Дата и время не соответствуют формату {fmt}.",
                             f"Date-time must match the format {fmt}.") from None


def _number(value, _arg, _books):
    if isinstance(value, bool):
        raise TransformError("value", "Ожидалось число.", "Expected a number.")
    if isinstance(value, (int, float)):
        return value
    text = _text(value).strip().replace(",", ".").replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        raise TransformError("value", "Ожидалось число (например 0.5 или 0,5).",
                             "Expected a number.") from None
    return int(number) if number.is_integer() and "." not in text else number


def _integer(value, _arg, _books):
    number = _number(value, None, None)
    if isinstance(number, float) and not number.is_integer():
        raise TransformError("value", "Ожидалось целое число.", "Expected an integer.")
    return int(number)


_TRUE = {"true", "1", "да", "yes", "y", "д"}
_FALSE = {"false", "0", "нет", "no", "n", "н"}


def _boolean(value, _arg, _books):
    if isinstance(value, bool):
        return value
    text = _text(value).strip().casefold()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TransformError("value", "Ожидалось логическое значение: true/false или да/нет.",
                         "Expected a boolean.")


def _enum(value, table: dict, _books):
    key = _text(value).strip()
    if key in table:
        return table[key]
    allowed = ", ".join(str(k) for k in table)
    raise TransformError("code-invalid", f"Недопустимое значение: допустимы {allowed}.",
                         f"Value not allowed; expected one of: {allowed}.")


def _nsi(value, oid: str, books: Terminology):
    book = books.book(oid)
    code = _text(value).strip()
    if book is None or not book.has(code):
        where = f"«{book.title}» ({oid}, версия {book.version})" if book else oid
        raise TransformError("code-invalid",
                             f"Код отсутствует в справочнике НСИ {where}: выберите код из "
                             "справочника.",
                             f"Code not in НСИ book {oid}"
                             f"{' v' + book.version if book else ''}.")
    return {"system": book.system, "version": book.version, "code": code,
            "display": book.display(code)}


def _identifier(value, system: str, _books):
    return {"system": system, "value": _text(value).strip()}


def _reference(value, resource_type: str, _books):
    return {"reference": f"{resource_type}/{_text(value).strip()}"}


def _frmo(value, _arg, _books):
    return {"identifier": {"system": systems.FRMO, "value": _text(value).strip()}}


def _snils_reference(value, _arg, _books):
    return {"identifier": {"system": systems.SNILS, "value": _text(value).strip()}}


def _attachment(value, _arg, _books):
    if not isinstance(value, dict):
        raise TransformError("structure", "Вложение должно быть объектом {fileName, "
                                          "contentType, data}.",
                             "An attachment must be an object {fileName, contentType, data}.")
    attachment = {"contentType": value.get("contentType"), "data": value.get("data"),
                  "title": value.get("fileName")}
    return {k: v for k, v in attachment.items() if v not in (None, "")}


TRANSFORMS: dict[str, Transform] = {
    "trim": Transform(_trim, None),
    "digits": Transform(_digits, None),
    "upper": Transform(lambda v, _a, _b: _text(v).upper(), None),
    "lower": Transform(lambda v, _a, _b: _text(v).lower(), None),
    "date": Transform(_date, str),
    "datetime": Transform(_datetime, str),
    "number": Transform(_number, None),
    "integer": Transform(_integer, None),
    "boolean": Transform(_boolean, None),
    "enum": Transform(_enum, dict),
    "nsi": Transform(_nsi, str),
    "identifier": Transform(_identifier, str),
    "reference": Transform(_reference, str),
    "frmo": Transform(_frmo, None),
    "snils-reference": Transform(_snils_reference, None),
    "attachment": Transform(_attachment, None),
}


# Target field ← source field, for transforms that turn an object into another object,
# so an error on Attachment.contentType points at the vendor's contentType.
SUBFIELDS = {"attachment": (("title", "fileName"), ("contentType", "contentType"),
                            ("data", "data"))}


def parse_step(step) -> tuple[str, object]:
    """`trim` or `{date: "%d.%m.%Y"}` as (name, argument)."""
    if isinstance(step, str):
        return step, None
    if isinstance(step, dict) and len(step) == 1:
        return next(iter(step.items()))
    raise ValueError("a transform is a name or a one-key mapping {name: argument}")


def check_argument(name: str, argument, books: Terminology) -> str | None:
    """What is wrong with a transform step, or None."""
    transform = TRANSFORMS.get(name)
    if transform is None:
        return f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}"
    if transform.argument is None and argument is not None:
        return f"transform {name!r} takes no argument"
    if transform.argument is not None and not isinstance(argument, transform.argument):
        return f"transform {name!r} needs a {transform.argument.__name__} argument"
    if name == "nsi" and books.book(argument) is None:
        return f"НСИ book {argument} is not loaded (see mappings/nsi/)"
    if name == "date" and argument != "iso" and "%" not in argument:
        return f"date format {argument!r} is neither 'iso' nor a strptime format"
    return None
