"""The tables of the store, for SQLite and PostgreSQL alike.

- `resources`: one row per logical resource: its current version and whether it
  is deleted. The row is what concurrent writers lock.
- `resource_versions`: every version ever written, content included; `seq` is a
  global change sequence, so history and incremental sync read in commit order.
- `change_clock`: the time of the latest change, locked by every write
  transaction (see gateway.store.repository, "Change order").
- `search_*`: values extracted at write time from the current version (tokens,
  strings, dates, references, quantities), so search never parses JSON; each is
  read through its (resource_type, param, value...) index.
- `clients`: API clients, their role, organizations or region, read/write limit,
  OAuth scopes and public keys; only a hash of each bearer token is kept.
  `access_tokens` and `oauth_assertions` serve OAuth 2.0 client credentials.
- `resource_owners`, `organization_regions`: which organizations (ФРМО OIDs) a
  resource belongs to and the region of each organization; the tenancy filter
  (gateway.store.tenancy) reads only these.
- `audit_events`: one row per request that touched data, hash-chained.
- `submissions`: the durable outbox. Every accepted change of a resource adds one
  row in the same transaction as the change; it is also what the MIS follows
  (`status`), with every status change in `submission_events`.
- `outbox_bundles`: the signed transaction Bundles formed from submissions, with
  their stable identifier, attempts, back-off and the upstream's ticket.
- `webhooks`, `webhook_deliveries`: where an MIS wants status changes POSTed,
  and the notifications waiting to go out (an outbox of their own).
- `export_jobs`: FHIR Bulk Data `$export` requests, leased to one worker at a
  time while it writes their NDJSON files (gateway.export.bulk).

The schema is created and evolved only by the Alembic migrations next door;
this module describes it for queries (and the migrations must match it).
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

BigId = BigInteger().with_variant(Integer, "sqlite")

resources = Table(
    "resources", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    UniqueConstraint("resource_type", "id"),
    Index(None, "resource_type", "last_updated"),
)

resource_versions = Table(
    "resource_versions", metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("resource_pk", BigId, ForeignKey("resources.pk", ondelete="CASCADE"),
           nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    Column("key_id", String(64), nullable=True),   # the key that encrypted content, if any
    UniqueConstraint("resource_pk", "version"),
    Index(None, "resource_type", "seq"),
    Index(None, "last_updated"),
)

# One row: the time of the latest change. Write transactions lock it first, so they
# commit in the order of the (unique, increasing) times they take from it.
change_clock = Table(
    "change_clock", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_updated", DateTime, nullable=False),
)


def _index_table(name: str, *columns: Column, lookup: tuple[str, ...]) -> Table:
    return Table(
        name, metadata,
        Column("resource_pk", BigId, ForeignKey("resources.pk", ondelete="CASCADE"),
               nullable=False, index=True),
        Column("resource_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(None, "resource_type", "param", *lookup),
    )


search_token = _index_table(
    "search_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    lookup=("code", "system"),
)
search_string = _index_table(
    "search_string",
    Column("value", String(255), nullable=False),
    lookup=("value",),
)
search_date = _index_table(
    "search_date",
    Column("low", DateTime, nullable=True),
    Column("high", DateTime, nullable=True),
    lookup=("low", "high"),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(255), nullable=False),
    lookup=("target_id", "target_type"),
)
search_quantity = _index_table(
    "search_quantity",
    Column("value", Float, nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    lookup=("value",),
)

# String prefix search compares in binary order (gateway.search.query); on PostgreSQL
# this index serves it whatever the database collation (migration 0003).
Index("ix_search_string_binary", search_string.c.resource_type, search_string.c.param,
      search_string.c.value.collate("C")).ddl_if(dialect="postgresql")

INDEX_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "reference": search_reference,
    "quantity": search_quantity,
}

clients = Table(
    "clients", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("organization", String(128), nullable=True),
    Column("region", String(8), nullable=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("organizations", Text, nullable=True),          # JSON list of ФРМО OIDs (mis)
    Column("access", String(16), nullable=False, default="read-write"),  # read | write | ...
    Column("scopes", Text, nullable=True),                 # SMART scopes allowed, space-separated
    Column("jwks", Text, nullable=True),                   # public keys of JWT client assertions
    Column("revoked_at", DateTime, nullable=True),
    Column("rotated_at", DateTime, nullable=True),
)

# Access tokens issued by POST /auth/token (OAuth 2.0 client credentials); only hashes.
access_tokens = Table(
    "access_tokens", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("client_pk", BigId, ForeignKey("clients.pk", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("scopes", Text, nullable=False),
    Column("issued_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
)

# The `jti` of every client assertion accepted and not yet expired: a replayed assertion
# is refused.
oauth_assertions = Table(
    "oauth_assertions", metadata,
    Column("jti", String(255), primary_key=True),
    Column("client_pk", BigId, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
)

# Which organizations a resource belongs to. `source` says why: "content" (the resource
# names the organization, or is it), "writer" (an mis client of it wrote the resource),
# "role" (a Practitioner with a PractitionerRole there).
resource_owners = Table(
    "resource_owners", metadata,
    Column("resource_pk", BigId, ForeignKey("resources.pk", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("organization", String(128), nullable=False),
    Column("source", String(8), nullable=False),
    Index(None, "organization", "resource_pk"),
)

# The region (subject code) of each organization known by its ФРМО OID.
organization_regions = Table(
    "organization_regions", metadata,
    Column("organization", String(128), primary_key=True),
    Column("region", String(8), nullable=False, index=True),
)

# The audit trail: append-only, each row's hash covers its content and the previous hash.
audit_events = Table(
    "audit_events", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False, index=True),
    Column("client_pk", BigId, nullable=True),
    Column("client_name", String(200), nullable=True),
    Column("role", String(16), nullable=True),
    Column("organizations", Text, nullable=True),          # JSON list
    Column("action", String(16), nullable=False),          # C R U D E (AuditEvent.action)
    Column("operation", String(64), nullable=False),       # read, search, create, $export...
    Column("resource_type", String(64), nullable=True),
    Column("resource_ids", Text, nullable=True),           # JSON list of ids
    Column("outcome", Integer, nullable=False),            # HTTP status
    Column("address", String(64), nullable=True),
    Column("request_id", String(64), nullable=True, index=True),
    Column("method", String(8), nullable=False),
    Column("path", Text, nullable=False),                  # masked
    Column("detail", Text, nullable=True),                 # masked
    Column("previous_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

outbox_bundles = Table(
    "outbox_bundles", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("identifier", String(64), nullable=False, unique=True),
    Column("destination", String(8), nullable=False),
    Column("organization", String(64), nullable=True),
    Column("state", String(16), nullable=False),    # pending | sending | sent | done | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("lease_until", DateTime, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("ticket", String(200), nullable=True),
    Column("body", Text, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index(None, "state", "next_attempt_at"),
)

submissions = Table(
    "submissions", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("method", String(8), nullable=False),           # PUT | DELETE
    Column("destination", String(8), nullable=False),      # frmo | frmr | elmk
    Column("organization", String(64), nullable=True),
    Column("depends_on", Text, nullable=False),            # JSON list of "Type/id"
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=True),                 # JSON: reason, outcome, waiting_for
    Column("bundle_pk", BigId, ForeignKey("outbox_bundles.pk"), nullable=True, index=True),
    Column("client_pk", BigId, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("accepted_at", DateTime, nullable=True),
    Column("processing_due", Date, nullable=True),
    Column("answer_due", Date, nullable=True),
    Index(None, "status", "pk"),
    Index(None, "resource_type", "resource_id", "pk"),
    Index(None, "organization", "pk"),
    Index(None, "updated_at"),
)

submission_events = Table(
    "submission_events", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("submission_pk", BigId, ForeignKey("submissions.pk", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("status", String(32), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("detail", Text, nullable=True),
)

webhooks = Table(
    "webhooks", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("client_pk", BigId, ForeignKey("clients.pk", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("webhook_pk", BigId, ForeignKey("webhooks.pk", ondelete="CASCADE"), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),    # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("delivered_at", DateTime, nullable=True),
    Index(None, "state", "next_attempt_at"),
)

# FHIR Bulk Data `$export` jobs (gateway.export.bulk). `lease_owner`/`lease_until` keep
# one job on one worker; a lease that runs out (the worker died) makes it due again.
export_jobs = Table(
    "export_jobs", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("client_pk", BigId, nullable=True),
    Column("level", String(16), nullable=False),           # system | type
    Column("types", Text, nullable=False),                 # JSON list of resource types
    Column("since", DateTime, nullable=True),
    Column("output_format", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # accepted | in-progress | completed | ...
    Column("request_url", Text, nullable=False),
    Column("total", Integer, nullable=True),               # resources expected
    Column("exported", Integer, nullable=False, default=0),
    Column("output", Text, nullable=True),                 # JSON: [{type, file, count}]
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Column("transaction_time", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("completed_at", DateTime, nullable=True),
    Index(None, "state", "pk"),
)

# An export reads one type at a time in keyset batches (`pk > last` in pk order).
Index("ix_resources_resource_type_pk", resources.c.resource_type, resources.c.pk)
