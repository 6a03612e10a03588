"""Mapping: vendors' own JSON and CSV records → FHIR resources, by declarative YAML files.

loader (reads and checks `mappings/*.yaml` at start-up) → engine (applies one to a
record, keeping each value's source location) → transforms (the fixed set of named
value conversions). Pure apart from reading the mapping files.
"""
