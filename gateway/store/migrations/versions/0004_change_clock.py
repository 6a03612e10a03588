"""change clock: commit-ordered change times for history and incremental sync

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000

One row holding the time of the latest change. Every write transaction locks it
first (so writers commit in the order they stamp) and moves it forward by at
least a millisecond, so change times are unique per transaction and increase in
commit order (gateway.store.repository explains why). `resource_versions` gets
an index on `last_updated` for `_since` on history.
"""
from datetime import datetime

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    clock = op.create_table(
        'change_clock',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('last_updated', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_change_clock')),
    )
    latest = op.get_bind().execute(
        sa.text("SELECT max(last_updated) FROM resource_versions")).scalar()
    if isinstance(latest, str):                   # SQLite returns the text it stored
        latest = datetime.fromisoformat(latest)
    op.bulk_insert(clock, [{"id": 1, "last_updated": latest or datetime(1970, 1, 1)}])
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_versions_last_updated'),
                              ['last_updated'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_versions_last_updated'))
    op.drop_table('change_clock')
