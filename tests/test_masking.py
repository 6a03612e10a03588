"""Personal data masking (gateway/masking.py): a table of inputs and what must come out."""
from __future__ import annotations

import json

import pytest

from gateway.masking import mask_name, mask_text, mask_url


@pytest.mark.parametrize(("text", "expected"), [
    # СНИЛС: the last five digits stay
    ("112-233-445 95", "***-***-445 95"),
    ("11223344595", "***-***-445 95"),
    ("СНИЛС 112-233-445-95.", "СНИЛС ***-***-445 95."),
    ("urn:oid:1.2.643.100.3|11223344595", "urn:oid:1.2.643.100.3|***-***-445 95"),
    ("identifier=urn:oid:1.2.643.100.3%7C11223344595&_count=5",
     "identifier=urn:oid:1.2.643.100.3%7C***-***-445 95&_count=5"),
    ("value 112-233-445+95", "value ***-***-445 95"),
    # passport: series hidden, the last three digits of the number stay
    ("4509 123456", "**** ***456"),
    ("паспорт 45 09 123456 выдан", "паспорт **** ***456 выдан"),
    ("4509-123456", "**** ***456"),
    ("4509 № 123456", "**** ***456"),
    # ОМС / ЕНП: 16 digits, the last four stay
    ("1234567890123456", "************3456"),
    ("полис 1234 5678 9012 3456", "полис ************3456"),
    # names in query strings
    ("/fhir/Patient?name=Иванова", "/fhir/Patient?name=И***"),
    ("/fhir/Patient?family=Петров&given=Иван&_count=5",
     "/fhir/Patient?family=П***&given=И***&_count=5"),
    ("/fhir/Patient?family:exact=Петров", "/fhir/Patient?family:exact=П***"),
    ("/fhir/Observation?subject:Patient.name=Сидоров",
     "/fhir/Observation?subject:Patient.name=С***"),
    ("/fhir/Patient?name=%D0%98%D0%B2%D0%B0%D0%BD", "/fhir/Patient?name=%D0%98***"),
    ("/fhir/Patient?given=Anna+Maria", "/fhir/Patient?given=A***"),
    ("search family=Петров failed", "search family=П*** failed"),
    # names in JSON and Python reprs
    ('{"family": "Иванова", "given": ["Анна", "Петровна"]}',
     '{"family": "И***", "given": ["А***", "П***"]}'),
    ("{'name': 'Петров', 'active': True}", "{'name': 'П***', 'active': True}"),
    ('{"family":"\\u0418\\u0432"}', '{"family":"\\u0418***"}'),
    ('{"use": "official", "family": "Иванова", "text": "Иванова Мария"}',
     '{"use": "official", "family": "И***", "text": "И***"}'),
    ('{"code": {"text": "Терапевт"}}', '{"code": {"text": "Терапевт"}}'),
    # nothing to mask: OIDs, dates, instants, UUIDs, other keys, short numbers
    ("1.2.643.5.1.13.13.12.4.77.1", "1.2.643.5.1.13.13.12.4.77.1"),
    ("urn:oid:1.2.643.5.1.13.13.12.4.77.1.11223344595",
     "urn:oid:1.2.643.5.1.13.13.12.4.77.1.11223344595"),
    ("2024-05-17", "2024-05-17"),
    ("2026-11-23T10:00:00.000+03:00", "2026-11-23T10:00:00.000+03:00"),
    ("123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
    ("urn:uuid:00000000-0000-4000-8000-112233445595",
     "urn:uuid:00000000-0000-4000-8000-112233445595"),
    ("/fhir/Patient?_elements=name&_sort=family", "/fhir/Patient?_elements=name&_sort=family"),
    ("/fhir/Patient?name=", "/fhir/Patient?name="),
    ("took 1234 ms, 123456 rows", "took 1234 ms, 123456 rows"),
    ("ИНН 7701234567", "ИНН 7701234567"),
    ("+79161234567", "+79161234567"),
    ("", ""),
])
def test_mask_text(text, expected):
    assert mask_text(text) == expected


def test_masking_is_idempotent():
    text = 'СНИЛС 112-233-445 95, {"family": "Иванова"}, 4509 123456, 1234567890123456'
    once = mask_text(text)
    assert mask_text(once) == once


def test_mask_name():
    assert mask_name("Иванова") == "И***"
    assert mask_name("  Анна ") == "А***"
    assert mask_name("") == ""
    assert mask_name("***") == "***"


def test_a_url_is_masked_after_its_percent_escapes_are_decoded():
    masked = mask_url("/fhir/Patient?family=%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B0"
                      "&identifier=urn%3Aoid%3A1.2.643.100.3%7C112-233-445%2095")
    assert "Иванова" not in masked
    assert "112-233" not in masked
    assert "***-***-445 95" in masked
    assert masked.startswith("/fhir/Patient?family=И***")


def test_a_whole_resource_dumped_as_json_leaves_no_identifier_or_name():
    resource = {"resourceType": "Patient",
                "identifier": [{"system": "urn:oid:1.2.643.100.3", "value": "112-233-445 95"},
                               {"system": "urn:oid:1.2.643.100.5", "value": "4509 123456"},
                               {"system": "urn:oid:1.2.643.5.1.13.13.99.2.1",
                                "value": "1234567890123456"}],
                "name": [{"family": "Иванова", "given": ["Анна", "Петровна"],
                          "text": "Иванова Анна Петровна"}]}
    for dumped in (json.dumps(resource, ensure_ascii=False), json.dumps(resource), repr(resource)):
        masked = mask_text(dumped)
        for secret in ("112-233", "4509", "12345678901", "Иванова", "Анна", "Петровна",
                       "\\u0418\\u0432"):
            assert secret not in masked
        assert "1.2.643.100.3" in masked
        assert "1.2.643.5.1.13.13.99.2.1" in masked
