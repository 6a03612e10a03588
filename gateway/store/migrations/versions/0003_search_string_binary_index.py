"""search: binary-order index for string prefix search on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000

String search compares `value COLLATE "C"` (binary order is exactly "starts with"
for the normalised values); this index serves that comparison whatever the
database's default collation is. SQLite compares in binary order already and
uses the existing (resource_type, param, value) index.
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX ix_search_string_binary ON search_string '
                   '(resource_type, param, (value COLLATE "C"))')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('DROP INDEX ix_search_string_binary')
