"""Each mapping turns its valid fixtures into exactly the FHIR resources written next to them
(`<fixture>.expected.json`), one parametrized test over every input/expected pair."""
from __future__ import annotations

import json

import pytest

from fixtures.mappings.expected import cases, mapped_text
from gateway.mapping.loader import load_all
from gateway.validation.terminology import load_shipped

BOOKS = load_shipped()
MAPPINGS = load_all(BOOKS)


@pytest.mark.parametrize(("mapping", "path"), cases(), ids=lambda v: getattr(v, "name", v))
def test_fixture_maps_to_its_expected_resources(mapping, path):
    record = json.loads(path.read_text(encoding="utf-8"))
    expected = path.with_name(path.stem + ".expected.json").read_text(encoding="utf-8")
    assert json.loads(mapped_text(MAPPINGS[mapping], record, BOOKS)) == json.loads(expected)
