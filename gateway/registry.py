"""What the FHIR API serves: resource types, their interactions and search parameters.

The REST layer routes requests by this registry and `GET /fhir/metadata` is
generated from it, so the CapabilityStatement cannot drift from what the server
does. The search-parameter table also drives the index the store extracts at
write time.

A search parameter's `paths` are element paths from the resource root; `[x]`
marks a choice element (`effective[x]` finds effectiveDateTime or
effectivePeriod). `targets` limits a reference parameter to some resource types.
`_id` and `_lastUpdated` have no paths: they are columns of the resource row, not
index rows. `gateway.search` implements exactly the parameters listed here, for
the types whose interactions include `search-type`; `_include`/`_revinclude`
accept every reference parameter, and `/fhir/metadata` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SearchParam:
    name: str
    kind: str                    # token | string | date | reference | quantity
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ResourceType:
    name: str
    interactions: tuple[str, ...]
    search: tuple[SearchParam, ...] = field(default=())
    conditional: bool = True

    def param(self, name: str) -> SearchParam | None:
        return next((p for p in self.search if p.name == name), None)


WRITE = ("read", "vread", "update", "delete", "history-instance", "history-type", "create",
         "search-type")
READ_ONLY = ("read", "vread", "history-instance", "history-type", "search-type")


def _p(name, kind, *paths, targets=(), description=""):
    return SearchParam(name, kind, tuple(paths), tuple(targets), description)


RESOURCE = (       # every type: columns of the resource row
    _p("_id", "token", description="Logical id of the resource"),
    _p("_lastUpdated", "date", description="When the resource version was stored"),
)
COMMON = RESOURCE + (
    _p("identifier", "token", "identifier", description="A business identifier"),
)

RESOURCE_TYPES: dict[str, ResourceType] = {rt.name: rt for rt in (
    ResourceType("Organization", WRITE, COMMON + (
        _p("name", "string", "name", "alias"),
        _p("partof", "reference", "partOf", targets=("Organization",)),
        _p("address-state", "string", "address.state"),
        _p("type", "token", "type"),
        _p("active", "token", "active"),
    )),
    ResourceType("Practitioner", WRITE, COMMON + (
        _p("name", "string", "name"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
        _p("active", "token", "active"),
    )),
    ResourceType("PractitionerRole", WRITE, COMMON + (
        _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
        _p("organization", "reference", "organization", targets=("Organization",)),
        _p("role", "token", "code"),
        _p("specialty", "token", "specialty"),
        _p("active", "token", "active"),
        _p("date", "date", "period"),
    )),
    ResourceType("Patient", WRITE, COMMON + (
        _p("name", "string", "name"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
    )),
    ResourceType("Immunization", WRITE, COMMON + (
        _p("patient", "reference", "patient", targets=("Patient",)),
        _p("date", "date", "occurrence[x]"),
        _p("vaccine-code", "token", "vaccineCode"),
        _p("status", "token", "status"),
        _p("performer", "reference", "performer.actor"),
    )),
    ResourceType("DiagnosticReport", WRITE, COMMON + (
        _p("patient", "reference", "subject", targets=("Patient",)),
        _p("subject", "reference", "subject"),
        _p("code", "token", "code"),
        _p("date", "date", "effective[x]"),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("performer", "reference", "performer"),
        _p("result", "reference", "result", targets=("Observation",)),
    )),
    ResourceType("Observation", WRITE, COMMON + (
        _p("patient", "reference", "subject", targets=("Patient",)),
        _p("subject", "reference", "subject"),
        _p("code", "token", "code"),
        _p("date", "date", "effective[x]"),
        _p("value-quantity", "quantity", "valueQuantity"),
    )),
    ResourceType("Provenance", READ_ONLY, RESOURCE + (   # R4 Provenance has no identifier
        _p("target", "reference", "target"),
    ), conditional=False),
)}

SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")


def resource_type(name: str) -> ResourceType | None:
    return RESOURCE_TYPES.get(name)


def searchable(name: str) -> ResourceType | None:
    """The type if it offers search (`search-type`), else None."""
    spec = RESOURCE_TYPES.get(name)
    return spec if spec is not None and "search-type" in spec.interactions else None


def includes(name: str) -> tuple[tuple[str, SearchParam], ...]:
    """(source type, reference parameter) pairs `_include` accepts on a search of `name`."""
    spec = searchable(name)
    return tuple((name, p) for p in spec.search if p.kind == "reference") if spec else ()


def revincludes(name: str) -> tuple[tuple[str, SearchParam], ...]:
    """(source type, reference parameter) pairs that can point at `name` (`_revinclude`)."""
    return tuple((source, p) for source in RESOURCE_TYPES if searchable(source)
                 for p in RESOURCE_TYPES[source].search
                 if p.kind == "reference" and (not p.targets or name in p.targets))
