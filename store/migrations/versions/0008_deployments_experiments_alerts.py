"""Deployment stage: every alias change in ``model_deployments`` (action, actor, figures), staged
A/B ``experiments`` with their policy and compare-and-set ``version``, the append-only
``experiment_decisions``, de-duplicated ``alerts`` with their notification state, and
``served_turns`` (replies of the serving API waiting for their feedback).

``model_deployments``, ``experiments`` and ``alerts`` were created by 0001 and written by nothing
before this revision.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_name', sa.String(length=256), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('stages', sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('stage', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('stage_started_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('subject_key', sa.String(length=16), nullable=False,
                                      server_default='user'))
        batch_op.add_column(sa.Column('policy', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('decision', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('started_by', sa.String(length=128), nullable=False,
                                      server_default='unknown'))
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False,
                                      server_default='1'))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_experiments_model_status', ['model_name', 'status'])
        batch_op.create_index('uq_experiments_one_running', ['model_name'], unique=True,
                              sqlite_where=sa.text("status = 'running'"),
                              postgresql_where=sa.text("status = 'running'"))
    with op.batch_alter_table('model_deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('action', sa.String(length=32), nullable=False,
                                      server_default='promote'))
        batch_op.add_column(sa.Column('actor', sa.String(length=128), nullable=False,
                                      server_default='unknown'))
        batch_op.add_column(sa.Column('previous_version', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('figures', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('experiment_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('dagster_run_id', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key('fk_model_deployments_experiment', 'experiments',
                                    ['experiment_id'], ['id'])
        batch_op.create_index('ix_model_deployments_alias', ['model_name', 'alias', 'status'])
    op.create_table(
        'experiment_decisions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('stage', sa.Integer(), nullable=False),
        sa.Column('traffic_split', sa.Float(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('figures', sa.JSON(), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('dagster_run_id', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_experiment_decisions_experiment', 'experiment_decisions',
                    ['experiment_id'])
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dedupe_key', sa.String(length=300), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('source', sa.String(length=128), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('status', sa.String(length=16), nullable=False,
                                      server_default='open'))
        batch_op.add_column(sa.Column('occurrences', sa.Integer(), nullable=False,
                                      server_default='1'))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('notified', sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('acknowledged_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('acknowledged_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index('ix_alerts_dedupe_key', ['dedupe_key'])
        batch_op.create_index('ix_alerts_status', ['status'])
    op.create_table(
        'served_turns',
        sa.Column('interaction_id', sa.String(length=256), nullable=False),
        sa.Column('tenant_id', sa.String(length=128), nullable=False),
        sa.Column('session_id', sa.String(length=256), nullable=False),
        sa.Column('subject', sa.String(length=256), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=True),
        sa.Column('arm', sa.String(length=16), nullable=True),
        sa.Column('record', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('flushed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('landing_file', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('interaction_id'),
    )
    op.create_index('ix_served_turns_session', 'served_turns', ['session_id'])
    op.create_index('ix_served_turns_pending', 'served_turns', ['flushed_at', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_served_turns_pending', table_name='served_turns')
    op.drop_index('ix_served_turns_session', table_name='served_turns')
    op.drop_table('served_turns')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_status')
        batch_op.drop_index('ix_alerts_dedupe_key')
        for col in ('acknowledged_at', 'acknowledged_by', 'notified_at', 'notified',
                    'last_seen_at', 'occurrences', 'status', 'source', 'dedupe_key'):
            batch_op.drop_column(col)
    op.drop_index('ix_experiment_decisions_experiment', table_name='experiment_decisions')
    op.drop_table('experiment_decisions')
    with op.batch_alter_table('model_deployments', schema=None) as batch_op:
        batch_op.drop_index('ix_model_deployments_alias')
        batch_op.drop_constraint('fk_model_deployments_experiment', type_='foreignkey')
        for col in ('dagster_run_id', 'experiment_id', 'figures', 'previous_version', 'actor',
                    'action'):
            batch_op.drop_column(col)
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_index('uq_experiments_one_running')
        batch_op.drop_index('ix_experiments_model_status')
        for col in ('updated_at', 'version', 'started_by', 'reason', 'decision', 'policy',
                    'subject_key', 'stage_started_at', 'stage', 'stages', 'model_name'):
            batch_op.drop_column(col)
