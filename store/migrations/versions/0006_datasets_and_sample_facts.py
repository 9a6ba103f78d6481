"""Datasets stage: versioned training datasets and evaluation suites with their items; the facts
of a sample's interaction (quality, intent, time) on ``review_items`` for tags, filters and
statistics.

``datasets`` gains kind (training | eval_suite), the content-hash version, parent version, spec,
counts, exports and split sizes; its ordinal ``version`` is unique per (kind, name).
``dataset_items`` lists every example of a version with its split, so evaluation items are held out
of every later training set. Nothing wrote ``datasets`` before this revision.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (no batch copy on SQLite: review_items keeps its triggers and the
    # append-only review_events keep their foreign key)
    op.add_column('review_items', sa.Column('quality', sa.Float(), nullable=True))
    op.add_column('review_items', sa.Column('intent', sa.String(length=64), nullable=True))
    op.add_column('review_items', sa.Column('interaction_at', sa.DateTime(timezone=True),
                                            nullable=True))
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_constraint('uq_dataset_version', type_='unique')
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                                      server_default='training'))
        batch_op.add_column(sa.Column('version_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('parent_version', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('n_validation', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('n_retention', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('spec', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('counts', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('exports', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('created_by', sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint('uq_dataset_version', ['kind', 'name', 'version'])
        batch_op.create_unique_constraint('uq_dataset_hash', ['kind', 'name', 'version_hash'])
    op.create_table(
        'dataset_items',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('item_key', sa.String(length=300), nullable=False),
        sa.Column('review_item_id', sa.Integer(), nullable=True),
        sa.Column('split', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=True),
        sa.Column('category', sa.String(length=64), nullable=True),
        sa.Column('tenant_id', sa.String(length=128), nullable=True),
        sa.Column('session_key', sa.String(length=300), nullable=True),
        sa.Column('prompt_hash', sa.String(length=64), nullable=False),
        sa.Column('example_hash', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dataset_id', 'item_key', name='uq_dataset_item'),
    )
    op.create_index('ix_dataset_items_key', 'dataset_items', ['item_key'])
    op.create_index('ix_dataset_items_prompt', 'dataset_items', ['prompt_hash'])


def downgrade() -> None:
    op.drop_index('ix_dataset_items_prompt', table_name='dataset_items')
    op.drop_index('ix_dataset_items_key', table_name='dataset_items')
    op.drop_table('dataset_items')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_constraint('uq_dataset_hash', type_='unique')
        batch_op.drop_constraint('uq_dataset_version', type_='unique')
        for col in ('created_by', 'exports', 'counts', 'spec', 'n_retention', 'n_validation',
                    'parent_version', 'version_hash', 'kind'):
            batch_op.drop_column(col)
        batch_op.create_unique_constraint('uq_dataset_version', ['name', 'version'])
    for col in ('interaction_at', 'intent', 'quality'):
        op.drop_column('review_items', col)
