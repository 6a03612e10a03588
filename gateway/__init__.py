"""HL7 FHIR gateway between Russian clinics' MIS and ЕГИСЗ (ФРМО, ФРМР, ЭЛМК).

The data's way through the package, stage by stage:
    api/ (HTTP) → fhir (formats) → validation/ → resources (write path) → store/
`gateway.create_app(settings)` builds the Flask app; `gateway.cli` is the command.
"""


def __getattr__(name: str):
    # create_app is imported lazily so the pure stages can be used without Flask.
    if name == "create_app":
        from gateway.app import create_app
        return create_app
    raise AttributeError(name)
