"""Which queued submissions may leave now, and the transaction Bundles they leave in (pure).

A submission is ready when
- no earlier submission of the same resource is still on its way (versions of a
  resource reach the upstream in order, one Bundle at a time), and
- each resource it depends on is approved upstream, or travels earlier in the
  same Bundle (a Practitioner and his roles go to ФРМР together).
Everything else waits, and says what it waits for.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

APPROVED = "approved"


@dataclass(frozen=True)
class Candidate:
    pk: int
    reference: str              # Type/id
    version: int
    method: str
    destination: str
    organization: str | None
    depends_on: tuple[str, ...]

    @property
    def group(self) -> tuple[str, str | None]:
        return self.destination, self.organization


@dataclass(frozen=True)
class Plan:
    bundles: list[list[Candidate]]           # each in sending order
    waiting: dict[int, dict]                 # pk → why it waits (None: no longer waits)


def plan(candidates: list[Candidate], first_pending: dict[str, int],
         dependency_status: dict[str, str | None], batch_size: int) -> Plan:
    """Split candidates (oldest first) into Bundles of ready ones and the waiting rest.

    `first_pending` maps a resource to its oldest submission not yet acknowledged by
    the upstream; `dependency_status` a dependency to "approved" when any of its
    submissions was approved, else its latest status (None: never received).
    """
    own_turn = [c for c in candidates if first_pending.get(c.reference) == c.pk]
    ready = _ready(own_turn, dependency_status)
    bundles: list[list[Candidate]] = []
    groups: dict[tuple, list[Candidate]] = {}
    for candidate in ready:
        groups.setdefault(candidate.group, []).append(candidate)
    deferred: set[int] = set()
    for members in groups.values():
        ordered = _dependency_order(members)
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            earlier = {c.reference for c in ordered[:start]}
            # A dependency that landed in an earlier Bundle must be approved first.
            kept = [c for c in chunk if not any(
                d in earlier and dependency_status.get(d) != APPROVED for d in c.depends_on)]
            deferred |= {c.pk for c in chunk} - {c.pk for c in kept}
            if kept:
                bundles.append(kept)
    waiting = {}
    for candidate in candidates:
        if candidate in ready and candidate.pk not in deferred:
            waiting[candidate.pk] = None
        elif first_pending.get(candidate.reference) != candidate.pk:
            waiting[candidate.pk] = _reason_previous(candidate)
        else:
            waiting[candidate.pk] = _reason_dependencies(candidate, dependency_status)
    return Plan(bundles, waiting)


def adopt_owners(candidates: list[Candidate]) -> list[Candidate]:
    """A Practitioner or Patient of no organization joins that of what depends on it.

    Pushed on its own, a Practitioner names no clinic; his role, queued beside him,
    does. Travelling in the role's Bundle, he is registered before it in one trip.
    """
    owners: dict[str, str] = {}
    for candidate in candidates:
        for dependency in candidate.depends_on:
            if candidate.organization:
                owners.setdefault(dependency, candidate.organization)
    return [dataclasses.replace(c, organization=owners[c.reference])
            if c.organization is None and c.reference in owners else c for c in candidates]


def _ready(candidates: list[Candidate], status: dict[str, str | None]) -> list[Candidate]:
    """Those whose dependencies are approved or ready in the same group, to a fixpoint."""
    ready: list[Candidate] = []
    chosen: dict[str, Candidate] = {}
    changed = True
    while changed:
        changed = False
        for candidate in candidates:
            if candidate.reference in chosen and chosen[candidate.reference] is candidate:
                continue
            if all(status.get(d) == APPROVED or (d in chosen and chosen[d].group ==
                                                 candidate.group)
                   for d in candidate.depends_on):
                chosen[candidate.reference] = candidate
                ready.append(candidate)
                changed = True
    return sorted(ready, key=lambda c: c.pk)


def _dependency_order(members: list[Candidate]) -> list[Candidate]:
    """Dependencies first, otherwise oldest first (depth-first, stable)."""
    by_reference = {c.reference: c for c in members}
    placed: list[Candidate] = []
    seen: set[str] = set()

    def place(candidate: Candidate, trail: frozenset) -> None:
        if candidate.reference in seen:
            return
        for dependency in candidate.depends_on:
            if dependency in by_reference and dependency not in trail:
                place(by_reference[dependency], trail | {candidate.reference})
        seen.add(candidate.reference)
        placed.append(candidate)

    for candidate in sorted(members, key=lambda c: c.pk):
        place(candidate, frozenset())
    return placed


def _reason_previous(candidate: Candidate) -> dict:
    return {"waiting_for": [candidate.reference],
            "reason_ru": "Ожидает, пока ЕГИСЗ примет предыдущую версию этого ресурса.",
            "reason_en": "Waiting for the upstream to acknowledge the previous version."}


def _reason_dependencies(candidate: Candidate, status: dict[str, str | None]) -> dict:
    blocking = [d for d in candidate.depends_on if status.get(d) != APPROVED]
    parts_ru, parts_en = [], []
    for reference in blocking:
        state = status.get(reference)
        if state is None:
            parts_ru.append(f"{reference} ещё не передан в шлюз")
            parts_en.append(f"{reference} has not been received by the gateway")
        elif state in ("rejected", "dead", "clarification_required"):
            parts_ru.append(f"{reference} не одобрен ЕГИСЗ ({state}): исправьте и отправьте "
                            "его заново")
            parts_en.append(f"{reference} was not approved upstream ({state}); correct and "
                            "resend it")
        else:
            parts_ru.append(f"{reference} ещё не одобрен ЕГИСЗ ({state})")
            parts_en.append(f"{reference} is not yet approved upstream ({state})")
    return {"waiting_for": blocking,
            "reason_ru": "Ожидает зависимость: " + "; ".join(parts_ru) + ".",
            "reason_en": "Waiting for a dependency: " + "; ".join(parts_en) + "."}


def transaction_bundle(identifier: str, members: list[tuple[Candidate, dict | None]]) -> dict:
    """The transaction Bundle of docs/upstream-protocol.md, before signing."""
    entries = []
    for candidate, content in members:
        request = {"method": candidate.method, "url": candidate.reference}
        entry: dict = {"fullUrl": candidate.reference, "request": request}
        if content is not None:
            entry = {"fullUrl": candidate.reference, "resource": content, "request": request}
        entries.append(entry)
    return {"resourceType": "Bundle", "identifier": {"system": "urn:ietf:rfc:3986",
                                                     "value": identifier},
            "type": "transaction", "entry": entries}


def candidate(row) -> Candidate:
    return Candidate(row.pk, f"{row.resource_type}/{row.resource_id}", row.version, row.method,
                     row.destination, row.organization, tuple(json.loads(row.depends_on)))
