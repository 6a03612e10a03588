"""The single import point of fhir.resources, and the FHIR wire formats.

fhir.resources ships R5 as its default package; our resources are R4-shaped, so
every model comes from `fhir.resources.R4B` through `model_class` here and nowhere
else, so releases never mix. This module also turns request bodies (JSON or XML)
into plain dictionaries and back, refusing the hostile shapes a public endpoint
receives: deep nesting, DOCTYPEs and entity declarations, non-object bodies.

Structure problems are reported as `Issue`s with the FHIRPath of the element,
all at once, never only the first.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from lxml import etree

from gateway.errors import MalformedBody, PayloadTooLarge, ValidationFailed
from gateway.issues import Issue

FHIR_NS = "http://hl7.org/fhir"


@cache
def model_class(resource_type: str):
    """The R4B model for a resource type name, or None if fhir.resources has none."""
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return None
    return cls if cls.has_resource_base() else None


@dataclass(frozen=True)
class Elements:
    """The top-level elements of a resource type, by their JSON names.

    `choice` maps each choice element's JSON name to its stem (`effectiveDateTime`
    -> `effective`); `required` holds mandatory elements and the stems of
    mandatory choices; `summary` the elements that `_summary=true` keeps.
    """

    names: tuple[str, ...]
    choice: dict[str, str]
    required: frozenset[str]
    summary: frozenset[str]


@cache
def elements(resource_type: str) -> Elements | None:
    cls = model_class(resource_type)
    if cls is None:
        return None
    names, choice, required = [], {}, set()
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        alias = info.alias or name
        names.append(alias)
        if extra.get("one_of_many"):
            choice[alias] = str(extra["one_of_many"])
        if extra.get("one_of_many_required"):
            required.add(str(extra["one_of_many"]))
        elif info.is_required() or extra.get("element_required"):
            required.add(alias)
    return Elements(tuple(names), choice, frozenset(required),
                    frozenset(cls.summary_elements_sequence()))


# --- reading bodies -------------------------------------------------------------

def parse_json(body: bytes, max_depth: int, max_elements: int = 0) -> dict:
    """A JSON object from a request body, or MalformedBody saying what is wrong."""
    value = parse_json_value(body, max_depth, max_elements)
    if not isinstance(value, dict):
        raise MalformedBody("Ожидался JSON-объект ресурса FHIR.",
                            "Expected a JSON object holding a FHIR resource.")
    return value


def parse_json_value(body: bytes, max_depth: int, max_elements: int = 0):
    """Any JSON value, refusing bad encodings, syntax, deep nesting and (with
    `max_elements` > 0) more values than that, with a clear message."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedBody("Тело запроса не в кодировке UTF-8.",
                            f"Body is not valid UTF-8: {exc.reason}") from None
    depth, count = _json_shape(text)
    if depth > max_depth:
        raise MalformedBody(
            f"Слишком глубокая вложенность JSON ({depth} уровней, допустимо {max_depth}).",
            f"JSON nesting too deep: {depth} levels, limit {max_depth}.")
    if 0 < max_elements < count:
        raise PayloadTooLarge(
            f"Слишком много элементов JSON ({count}, допустимо {max_elements}): разделите "
            "данные на несколько запросов.",
            f"Too many JSON values: {count}, limit {max_elements}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            f"Некорректный JSON: строка {exc.lineno}, позиция {exc.colno}: {exc.msg}.",
            f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


# A JSON string as json.loads reads one; an unterminated one is left for json.loads to refuse.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_NON_EMPTY_OPEN = re.compile(r"[\[{](?=\s*[^\s\]}])")


def _json_shape(text: str) -> tuple[int, int]:
    """Deepest bracket nesting and number of values, outside strings: checked before
    json.loads recurses or builds anything. Values are counted as the document itself,
    plus one per member or item (the first of each non-empty container, then one per
    comma), so `{"a": [1, 2]}` has 4."""
    skeleton = _JSON_STRING.sub('""', text)
    depth = deepest = 0
    for match in _BRACKET.finditer(skeleton):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    count = 1 + skeleton.count(",") + len(_NON_EMPTY_OPEN.findall(skeleton))
    return deepest, count


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings."""
    return _json_shape(text)[0]


def safe_xml_parser() -> etree.XMLParser:
    """An lxml parser that never resolves entities, loads DTDs or touches the network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True)


_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xml_tree(body: bytes, max_depth: int = 0) -> etree._Element:
    """The root element of an XML body; any DOCTYPE or entity declaration is refused.

    The raw bytes are searched first, so the parser never sees a declaration; the
    parsed tree is checked again for encodings the byte search cannot read. libxml2
    itself stops at 256 levels (`huge_tree=False`); `max_depth` > 0 is our tighter limit.
    """
    if _DECLARATION.search(body):
        raise _doctype_refused()
    try:
        tree = etree.fromstring(body, safe_xml_parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise MalformedBody(f"Некорректный XML: {exc.msg}.",
                            f"Malformed XML: {exc.msg}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _doctype_refused()
    if max_depth > 0:
        _check_xml_depth(tree.getroot(), max_depth)
    return tree.getroot()


def _check_xml_depth(root: etree._Element, max_depth: int) -> None:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > max_depth:
            raise MalformedBody(
                f"Слишком глубокая вложенность XML (больше {max_depth} уровней).",
                f"XML nesting too deep: more than {max_depth} levels.")


def _doctype_refused() -> MalformedBody:
    return MalformedBody("XML с объявлением DOCTYPE или сущностей не принимается: удалите "
                         "DOCTYPE, FHIR XML в нём не нуждается.",
                         "XML with a DOCTYPE or entity declarations is refused.")


def parse_xml(body: bytes, max_depth: int = 0) -> dict:
    """A FHIR XML resource as the same dictionary its JSON form would give."""
    root = parse_xml_tree(body, max_depth)
    resource_type = etree.QName(root).localname
    if etree.QName(root).namespace != FHIR_NS:
        raise MalformedBody("Корневой элемент XML должен быть в пространстве имён "
                            "http://hl7.org/fhir.",
                            "The XML root element must be in the http://hl7.org/fhir namespace.")
    cls = model_class(resource_type)
    if cls is None:
        raise MalformedBody(f"Неизвестный тип ресурса «{resource_type}».",
                            f"Unknown resource type {resource_type!r}.")
    try:
        model = cls.model_validate_xml(etree.tostring(root), xmlparser=safe_xml_parser())
    except pydantic.ValidationError as exc:
        raise ValidationFailed(pydantic_issues(resource_type, exc)) from None
    except (ValueError, TypeError, etree.XMLSyntaxError) as exc:
        raise MalformedBody("XML не соответствует структуре ресурса FHIR.",
                            f"XML does not follow the FHIR resource structure: {exc}") from None
    return json.loads(model.model_dump_json())


# --- writing bodies -------------------------------------------------------------

def to_json_bytes(resource: dict, pretty: bool = False) -> bytes:
    return json.dumps(resource, ensure_ascii=False, indent=2 if pretty else None,
                      separators=None if pretty else (",", ":")).encode("utf-8")


def to_xml_bytes(resource: dict, pretty: bool = False) -> bytes:
    """FHIR XML for a resource dictionary, in the element order the R4 schema wants."""
    cls = model_class(resource["resourceType"])
    model = cls.model_validate(resource)
    xml = model.model_dump_xml(pretty_print=pretty)
    return xml if isinstance(xml, bytes) else xml.encode("utf-8")


def bundle_chunks(bundle: dict, xml: bool) -> Iterator[bytes]:
    """A Bundle serialised entry by entry, so a large one is never one string in memory.

    The envelope (everything but the entries) and then each entry are rendered by
    the same code as a whole Bundle would be (`to_json_bytes`, `to_xml_bytes` on a
    one-entry Bundle, whose `<entry>` element is cut out), so the streamed body is
    byte for byte what rendering the Bundle at once would give.
    """
    entries = bundle.get("entry") or []
    envelope = {key: value for key, value in bundle.items() if key != "entry"}
    if "signature" in bundle:                   # it follows the entries: render at once
        yield to_xml_bytes(bundle) if xml else to_json_bytes(bundle)
        return
    if xml:
        head = to_xml_bytes(envelope)
        closing = head.rindex(b"</Bundle>")
        yield head[:closing]
        for entry in entries:
            one = to_xml_bytes({"resourceType": "Bundle", "type": bundle["type"],
                                "entry": [entry]})
            yield one[one.index(b"<entry>"):one.rindex(b"</entry>") + len(b"</entry>")]
        yield head[closing:]
        return
    head = to_json_bytes(envelope)
    if not entries:
        yield head
        return
    yield head[:-1] + b',"entry":['
    for number, entry in enumerate(entries):
        yield (b"," if number else b"") + to_json_bytes(entry)
    yield b"]}"


# --- structure ------------------------------------------------------------------

def check_structure(resource: dict) -> list[Issue]:
    """Every structural problem of a resource: unknown elements, types, cardinality."""
    resource_type = resource.get("resourceType")
    cls = model_class(resource_type) if isinstance(resource_type, str) else None
    if cls is None:
        return [Issue("not-supported", f"Неизвестный тип ресурса «{resource_type}».",
                      f"Unknown resource type {resource_type!r}.", "resourceType")]
    try:
        model = cls.model_validate(resource)
    except pydantic.ValidationError as exc:
        return pydantic_issues(resource_type, exc)
    return list(_json_type_issues(resource, model, resource_type))


_PYDANTIC_CODES = {
    "extra_forbidden": ("structure", "Неизвестный элемент: такого поля нет в ресурсе FHIR R4; "
                                     "удалите его или проверьте написание.",
                        "Unknown element"),
    "missing": ("required", "Обязательный элемент не заполнен.", "Required element missing"),
    "model_field_validation.missing": ("required", "Обязательный элемент не заполнен.",
                                       "Required element missing"),
    "list_type": ("structure", "Элемент должен быть массивом (повторяющийся элемент).",
                  "Element must be an array"),
    "model_type": ("structure", "Элемент должен быть объектом.", "Element must be an object"),
    "dict_type": ("structure", "Элемент должен быть объектом.", "Element must be an object"),
}


_RUSSIAN_DATE = re.compile(r"^\d{1,2}\.\d{1,2}\.\d{4}")


def pydantic_issues(resource_type: str, error: pydantic.ValidationError) -> list[Issue]:
    issues = []
    for err in error.errors():
        code, text_ru, text_en = _PYDANTIC_CODES.get(
            err["type"], ("value", "Недопустимое значение элемента.", "Invalid value"))
        if isinstance(err.get("input"), str) and _RUSSIAN_DATE.match(err["input"]):
            text_ru = ("Дата записана как ДД.ММ.ГГГГ; в FHIR даты пишутся в формате ГГГГ-ММ-ДД, "
                       "например 1985-03-14.")
            text_en = "Date written as DD.MM.YYYY; FHIR requires YYYY-MM-DD"
        issues.append(Issue(code, f"{text_ru} ({err['msg']})", f"{text_en}: {err['msg']}",
                            fhirpath(resource_type, err["loc"])))
    return issues


def fhirpath(resource_type: str, loc) -> str:
    """('identifier', 0, 'value') -> 'Practitioner.identifier[0].value'."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("", "__root__"):
            path += f".{part}"
    return path


def _json_type_issues(raw, model, path: str):
    """JSON primitives of the wrong kind that pydantic's lax parsing let through.

    FHIR JSON requires true/false for booleans and numbers for numbers; pydantic
    would quietly read "yes" as True.
    """
    if isinstance(raw, dict) and isinstance(model, pydantic.BaseModel):
        fields = type(model).model_fields
        by_alias = {(f.alias or name): name for name, f in fields.items()}
        for key, raw_value in raw.items():
            name = by_alias.get(key)
            if name is None:
                continue
            yield from _json_type_issues(raw_value, getattr(model, name, None), f"{path}.{key}")
    elif isinstance(raw, list) and isinstance(model, list):
        for index, (raw_item, item) in enumerate(zip(raw, model, strict=False)):
            yield from _json_type_issues(raw_item, item, f"{path}[{index}]")
    elif isinstance(model, bool) and not isinstance(raw, bool):
        yield Issue("value", "Логическое значение должно быть записано как true или false "
                             "без кавычек.",
                    "A boolean must be the JSON literal true or false.", path)
    elif isinstance(model, (int, float, Decimal)) and not isinstance(model, bool) \
            and (isinstance(raw, (str, bool))):
        yield Issue("value", "Число должно быть записано без кавычек.",
                    "A number must be a JSON number, not a string.", path)
