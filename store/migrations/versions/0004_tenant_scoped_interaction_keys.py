"""Interactions are identified by (tenant_id, interaction_id): ids are per tenant.

``audit_attempts`` becomes unique on (tenant_id, interaction_id, auditor, prompt_version); the
review items' dedup keys of the auditor and the teacher gain the tenant
(``<tenant>/<interaction>:...``, at most 300 characters: ``store.repo.bounded_key``; see
``store.audit.error_dedup_key`` and ``store.teaching.sample_dedup_key``), so two tenants'
interactions with the same id get an attempt row and a review item each; the interaction index
of ``review_items`` covers the tenant.

Revision ID: 0004
Revises: 0003
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

MAX_KEY = 300  # review_items.dedup_key is VARCHAR(300)


def _bounded(key: str) -> str:
    """The same rule as ``store.repo.bounded_key`` (copied: a migration must not change when the
    code does)."""
    if len(key) <= MAX_KEY:
        return key
    return f"{key[:MAX_KEY - 65]}#{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def upgrade() -> None:
    with op.batch_alter_table('audit_attempts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_attempt', type_='unique')
        batch_op.create_unique_constraint(
            'uq_audit_attempt', ['tenant_id', 'interaction_id', 'auditor', 'prompt_version'])
    # every existing key is in the old form (`<interaction>:...`): prefix its tenant
    bind = op.get_bind()
    items = sa.table('review_items', sa.column('id', sa.Integer),
                     sa.column('kind', sa.String), sa.column('tenant_id', sa.String),
                     sa.column('dedup_key', sa.String))
    rows = bind.execute(sa.select(items.c.id, items.c.tenant_id, items.c.dedup_key).where(
        items.c.kind.in_(('error', 'sample')))).all()
    for item_id, tenant, key in rows:
        bind.execute(items.update().where(items.c.id == item_id).values(
            dedup_key=_bounded(f"{tenant}/{key}")))
    op.drop_index('ix_review_items_interaction', table_name='review_items')
    op.create_index('ix_review_items_interaction', 'review_items',
                    ['tenant_id', 'interaction_id'])


def downgrade() -> None:
    op.drop_index('ix_review_items_interaction', table_name='review_items')
    op.create_index('ix_review_items_interaction', 'review_items', ['interaction_id'])
    op.execute("UPDATE review_items SET dedup_key = substr(dedup_key, length(tenant_id) + 2) "
               "WHERE kind IN ('error', 'sample') AND dedup_key LIKE tenant_id || '/%'")
    with op.batch_alter_table('audit_attempts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_attempt', type_='unique')
        batch_op.create_unique_constraint(
            'uq_audit_attempt', ['interaction_id', 'auditor', 'prompt_version'])
