"""Exports for consumers that pull whole registers.

- `bulk`: FHIR Bulk Data `$export` jobs: NDJSON files per type, written by the worker.
- `reader`: every live resource of a type as of one instant, in keyset batches.
- `files`: `gateway export` files per type: NDJSON, or a FHIR JSON/XML `collection`
  Bundle, written entry by entry.
- `legacy`: the legacy XML format of the registers (its own versioned XSD), signed
  with an enveloped XML signature (`xmldsig`).
"""
