"""tenancy, audit trail, OAuth client credentials, encryption key ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 10:00:00.000000

- clients gain their organizations (JSON list), read/write limit, scopes, public
  keys and revocation/rotation times; `access_tokens` and `oauth_assertions`
  serve OAuth 2.0 client credentials;
- `resource_owners` and `organization_regions` hold what the tenancy filter reads
  (existing resources are given owners by `gateway tenancy rebuild`);
- `audit_events` is the hash-chained audit trail;
- `resource_versions.key_id` names the key that encrypted a stored body.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('organizations', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('access', sa.String(length=16), nullable=False,
                                      server_default='read-write'))
        batch_op.add_column(sa.Column('scopes', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('jwks', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('rotated_at', sa.DateTime(), nullable=True))
    op.execute("UPDATE clients SET organizations = '[\"' || organization || '\"]' "
               "WHERE organization IS NOT NULL")
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_id', sa.String(length=64), nullable=True))

    op.create_table('access_tokens',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('client_pk', BigId, nullable=False),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('issued_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['client_pk'], ['clients.pk'], name=op.f('fk_access_tokens_client_pk_clients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_access_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_access_tokens_token_hash'))
    )
    op.create_index(op.f('ix_access_tokens_client_pk'), 'access_tokens', ['client_pk'])
    op.create_index(op.f('ix_access_tokens_expires_at'), 'access_tokens', ['expires_at'])

    op.create_table('oauth_assertions',
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('client_pk', BigId, nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_oauth_assertions'))
    )
    op.create_index(op.f('ix_oauth_assertions_expires_at'), 'oauth_assertions', ['expires_at'])

    op.create_table('resource_owners',
    sa.Column('resource_pk', BigId, nullable=False),
    sa.Column('organization', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['resources.pk'], name=op.f('fk_resource_owners_resource_pk_resources'), ondelete='CASCADE'),
    )
    op.create_index(op.f('ix_resource_owners_resource_pk'), 'resource_owners', ['resource_pk'])
    op.create_index(op.f('ix_resource_owners_organization_resource_pk'), 'resource_owners',
                    ['organization', 'resource_pk'])

    op.create_table('organization_regions',
    sa.Column('organization', sa.String(length=128), nullable=False),
    sa.Column('region', sa.String(length=8), nullable=False),
    sa.PrimaryKeyConstraint('organization', name=op.f('pk_organization_regions'))
    )
    op.create_index(op.f('ix_organization_regions_region'), 'organization_regions', ['region'])

    op.create_table('audit_events',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('client_pk', BigId, nullable=True),
    sa.Column('client_name', sa.String(length=200), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('organizations', sa.Text(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('operation', sa.String(length=64), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=True),
    sa.Column('resource_ids', sa.Text(), nullable=True),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('previous_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_audit_events'))
    )
    op.create_index(op.f('ix_audit_events_at'), 'audit_events', ['at'])
    op.create_index(op.f('ix_audit_events_request_id'), 'audit_events', ['request_id'])


def downgrade() -> None:
    op.drop_table('audit_events')
    op.drop_table('organization_regions')
    op.drop_table('resource_owners')
    op.drop_table('oauth_assertions')
    op.drop_table('access_tokens')
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.drop_column('key_id')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        for column in ('rotated_at', 'revoked_at', 'jwks', 'scopes', 'access', 'organizations'):
            batch_op.drop_column(column)
