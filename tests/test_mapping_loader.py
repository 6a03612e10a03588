"""Mapping files are checked at start-up: a bad one is a clear error with file and line."""
from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.mapping.loader import MAPPINGS_DIR, MappingError, load_all, load_mapping
from gateway.validation.terminology import load_shipped

BOOKS = load_shipped()

GOOD = """\
name: tiny
resources:
  - name: person
    type: Practitioner
    key: identifier
    elements:
      - target: identifier[0]
        source: snils
        transform: [digits, {identifier: urn:oid:1.2.643.2.69.1.1.1.6.223}]
      - target: name[0].family
        source: lastName
        transform: [trim]
"""


def _write(tmp_path, text: str):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_shipped_mappings_all_load():
    mappings = load_all(BOOKS)
    assert {"frmo-organization", "frmr-person", "elmk-record",
            "frmr-person-csv"} <= set(mappings)


def test_a_good_mapping_loads(tmp_path):
    mapping = load_mapping(_write(tmp_path, GOOD), BOOKS)
    assert mapping.name == "tiny"
    assert mapping.resources[0].elements[0].steps[1] == (
        "identifier", "urn:oid:1.2.643.2.69.1.1.1.6.223")


@pytest.mark.parametrize(("change", "message", "line"), [
    ("transform: [trim]", "unknown transform 'shout'", 12),
    ("target: name[0].family", "has no such element", 10),
    ("        transform: [trim]", "НСИ book 1.2.3.4 is not loaded", 12),
    ("type: Practitioner", "cannot be written", 4),
], ids=["unknown-transform", "bad-target", "missing-book", "unknown-type"])
def test_a_bad_mapping_names_file_line_and_problem(tmp_path, change, message, line):
    replacement = {
        "transform: [trim]": "transform: [shout]",
        "target: name[0].family": "target: name[0].nickname",
        "        transform: [trim]": "        transform: [{nsi: 1.2.3.4}]",
        "type: Practitioner": "type: Encounter",
    }[change]
    path = _write(tmp_path, GOOD.replace(change, replacement, 1))
    with pytest.raises(MappingError) as error:
        load_mapping(path, BOOKS)
    assert f"{path}:{line}:" in str(error.value)
    assert message in str(error.value)


def test_a_reference_to_an_undefined_resource_is_refused(tmp_path):
    text = GOOD + "      - target: managingOrganization\n        reference: employer\n"
    text = text.replace("type: Practitioner", "type: Patient")
    with pytest.raises(MappingError, match="employer"):
        load_mapping(_write(tmp_path, text), BOOKS)


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = _write(tmp_path, "name: !!python/object/apply:os.system ['true']\nresources: []\n")
    with pytest.raises(MappingError, match="not valid YAML"):
        load_mapping(path, BOOKS)


def test_mappings_check_reports_every_shipped_mapping(monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["mappings", "check"])
    assert result.exit_code == 0, result.output
    for path in MAPPINGS_DIR.glob("*.yaml"):
        assert path.stem in result.output


def test_the_app_refuses_to_start_with_a_broken_mapping(tmp_path, monkeypatch):
    from gateway.app import create_app
    from gateway.mapping import loader
    broken = tmp_path / "mappings"
    broken.mkdir()
    (broken / "bad.yaml").write_text(GOOD.replace("[trim]", "[shout]"), encoding="utf-8")
    monkeypatch.setattr(loader, "MAPPINGS_DIR", broken)
    monkeypatch.setattr(loader.load_all, "__defaults__", (broken,))
    with pytest.raises(MappingError, match="bad.yaml:12"):
        create_app({"data_dir": str(tmp_path / "data")})
