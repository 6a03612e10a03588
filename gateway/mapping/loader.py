"""Reading mapping files and refusing bad ones at start-up, with file and line.

A mapping that names an unknown transform, a target element FHIR does not have,
an НСИ book that is not loaded or a resource it does not define fails here —
when the app starts or under `gateway mappings check` — never at the first
request of a clinic. YAML is read with the safe loader; a mapping is data only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway import fhir
from gateway.mapping import transforms
from gateway.registry import RESOURCE_TYPES
from gateway.validation.terminology import Terminology

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"
LINE = "__line__"
KEY_LINES = "__key_lines__"


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class Source:
    """Where a value is read, and the transforms applied to it before sources are joined."""

    path: str
    steps: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Element:
    target: str
    line: int
    source: tuple[Source, ...] = ()
    value: object = None
    reference: str | None = None
    steps: tuple[tuple[str, object], ...] = ()
    when: dict | None = None
    each: str | None = None


@dataclass(frozen=True)
class ResourceMap:
    name: str
    type: str
    line: int
    elements: tuple[Element, ...]
    each: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Mapping:
    name: str
    path: Path
    format: str
    resources: tuple[ResourceMap, ...]
    description: str = ""
    require: tuple[str, ...] = ()
    consent: str | None = None
    csv_columns: dict = field(default_factory=dict)


class _LineLoader(yaml.SafeLoader):
    """The safe loader, remembering the line of every mapping node."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        mapping[LINE] = node.start_mark.line + 1
        mapping[KEY_LINES] = {key.value: key.start_mark.line + 1 for key, _ in node.value
                              if isinstance(key, yaml.ScalarNode)}
        return mapping


def load_mapping(path: Path, books: Terminology) -> Mapping:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{path}: a mapping file holds a YAML mapping at its top")
    where = _Where(path)
    _only(data, {"name", "description", "format", "csv", "require", "consent", "resources"},
          where)
    name = _required(data, "name", str, where)
    fmt = data.get("format", "json")
    if fmt not in ("json", "csv"):
        raise where.error(data, f"format must be json or csv, not {fmt!r}")
    resources = tuple(_resource(r, where, books) for r in _required(data, "resources", list,
                                                                    where))
    _check_references(resources, where)
    columns = _plain((data.get("csv") or {}).get("columns", {}))
    if fmt == "csv" and not columns:
        raise where.error(data, "a csv mapping needs csv.columns (header → field)")
    return Mapping(name, path, fmt, resources, data.get("description", ""),
                   tuple(data.get("require") or ()), data.get("consent"), columns)


def load_all(books: Terminology, directory: Path = MAPPINGS_DIR) -> dict[str, Mapping]:
    mappings: dict[str, Mapping] = {}
    for path in sorted(directory.glob("*.yaml")):
        mapping = load_mapping(path, books)
        if mapping.name in mappings:
            raise MappingError(f"{path}: mapping name {mapping.name!r} is also used by "
                               f"{mappings[mapping.name].path.name}")
        mappings[mapping.name] = mapping
    return mappings


# --- parts ---------------------------------------------------------------------------

def _plain(node: dict) -> dict:
    """A mapping without the line bookkeeping of the loader."""
    return {k: v for k, v in node.items() if k not in (LINE, KEY_LINES)}


@dataclass(frozen=True)
class _Where:
    path: Path

    def error(self, node, message: str, key: str | None = None) -> MappingError:
        """The error at the line of `key` in `node` (or of the node itself)."""
        line = "?"
        if isinstance(node, dict):
            line = node.get(KEY_LINES, {}).get(key, node.get(LINE, "?"))
        return MappingError(f"{self.path}:{line}: {message}")


def _only(node: dict, allowed: set[str], where: _Where) -> None:
    unknown = set(node) - allowed - {LINE, KEY_LINES}
    if unknown:
        raise where.error(node, f"unknown key(s) {', '.join(sorted(unknown))}; "
                                f"allowed: {', '.join(sorted(allowed))}")


def _required(node: dict, key: str, kind: type, where: _Where):
    value = node.get(key)
    if not isinstance(value, kind):
        raise where.error(node, f"{key!r} is required and must be a {kind.__name__}")
    return value


def _resource(node, where: _Where, books: Terminology) -> ResourceMap:
    if not isinstance(node, dict):
        raise MappingError(f"{where.path}: each item of resources must be a mapping")
    _only(node, {"name", "type", "each", "key", "elements"}, where)
    rtype = _required(node, "type", str, where)
    spec = RESOURCE_TYPES.get(rtype)
    if spec is None or "create" not in spec.interactions:
        raise where.error(node, f"resource type {rtype!r} cannot be written by the gateway",
                          "type")
    key = node.get("key")
    if key not in (None, "identifier"):
        raise where.error(node, "key must be 'identifier' (or left out)")
    elements = tuple(_element(e, rtype, where, books)
                     for e in _required(node, "elements", list, where))
    return ResourceMap(_required(node, "name", str, where), rtype, node[LINE], elements,
                       node.get("each"), key)


def _element(node, rtype: str, where: _Where, books: Terminology) -> Element:
    if not isinstance(node, dict):
        raise MappingError(f"{where.path}: each element must be a mapping")
    _only(node, {"target", "source", "value", "reference", "transform", "when", "each"}, where)
    target = _required(node, "target", str, where)
    givers = [k for k in ("source", "value", "reference") if k in node]
    if len(givers) != 1:
        raise where.error(node, "an element needs exactly one of source, value, reference")
    if ("[*]" in target) != ("each" in node):
        raise where.error(node, "an element with 'each' needs '[*]' in its target, and only "
                                "then")
    problem = _target_problem(rtype, target)
    if problem:
        raise where.error(node, f"target {target!r}: {problem}", "target")
    steps = _steps(node, node.get("transform"), where, books)
    source = node.get("source")
    sources = tuple(_source(item, node, where, books)
                    for item in (source if isinstance(source, list) else [source] if source
                                 else []))
    when = _plain(node["when"]) if node.get("when") else None
    if when is not None and not (len(when) == 1 and set(when) <= {"present", "absent",
                                                                    "equals"}):
        raise where.error(node, "when takes one of present, absent, equals")
    return Element(target, node[LINE], sources, node.get("value"), node.get("reference"),
                   steps, when, node.get("each"))


def _steps(node: dict, raw, where: _Where, books: Terminology) -> tuple:
    steps = []
    for step in raw or []:
        if isinstance(step, dict):
            step = _plain(step)
        try:
            name, argument = transforms.parse_step(step)
        except ValueError as exc:
            raise where.error(node, str(exc), "transform") from None
        if isinstance(argument, dict):
            argument = _plain(argument)
        problem = transforms.check_argument(name, argument, books)
        if problem:
            raise where.error(node, problem, "transform")
        steps.append((name, argument))
    return tuple(steps)


def _source(item, node: dict, where: _Where, books: Terminology) -> Source:
    """`field`, or `{source: field, transform: [...]}` inside a list of sources."""
    if isinstance(item, str):
        return Source(item)
    if isinstance(item, dict) and isinstance(item.get("source"), str):
        _only(item, {"source", "transform"}, where)
        return Source(item["source"], _steps(item, item.get("transform"), where, books))
    raise where.error(node, "a source is a path or {source: path, transform: [...]}", "source")


def _target_problem(rtype: str, target: str) -> str | None:
    """Whether FHIR R4 has the element: validated against the model with a probe value."""
    from gateway.mapping.paths import set_path
    probe: dict = {"resourceType": rtype}
    try:
        set_path(probe, target.replace("[*]", "[0]"), "probe")
    except (ValueError, TypeError) as exc:
        return str(exc)
    issues = fhir.check_structure(probe)
    unknown = [i for i in issues if i.code == "structure" and "Unknown element" in i.diagnostics]
    return f"FHIR R4 {rtype} has no such element ({unknown[0].expression})" if unknown else None


def _check_references(resources: tuple[ResourceMap, ...], where: _Where) -> None:
    names = [r.name for r in resources]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise MappingError(f"{where.path}: resource names used twice: {sorted(duplicates)}")
    for resource in resources:
        for element in resource.elements:
            if element.reference is not None and element.reference not in names:
                raise MappingError(f"{where.path}:{element.line}: reference to "
                                   f"{element.reference!r}, which this mapping does not "
                                   "define")
