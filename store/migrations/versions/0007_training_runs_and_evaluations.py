"""Training and evaluation stages: provider jobs and lineage on ``training_runs``; the
``model_evaluations`` table (candidate vs champion on the evaluation suite, and the quality gate's
verdict).

``training_runs`` gains the registered model's name, the dataset version (hash), the Dagster run
that started it, the provider's job and model ids (OpenAI / Gemini fine-tunes, followed by a
sensor), its cost, progress and an ``updated_at``. Nothing wrote ``training_runs`` before this
revision.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_name', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('dataset_version', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('dagster_run_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('provider', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('provider_job_id', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('provider_model_id', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('cost_usd', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_training_runs_status', ['status'])
        batch_op.create_unique_constraint('uq_training_provider_job',
                                          ['provider', 'provider_job_id'])
    op.create_table(
        'model_evaluations',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('model_name', sa.String(length=256), nullable=False),
        sa.Column('candidate_version', sa.String(length=64), nullable=False),
        sa.Column('champion_version', sa.String(length=64), nullable=True),
        sa.Column('eval_suite_version', sa.String(length=64), nullable=True),
        sa.Column('dataset_version', sa.String(length=64), nullable=True),
        sa.Column('training_run_id', sa.Integer(), nullable=True),
        sa.Column('candidate', sa.JSON(), nullable=False),
        sa.Column('champion', sa.JSON(), nullable=False),
        sa.Column('comparison', sa.JSON(), nullable=False),
        sa.Column('gate', sa.JSON(), nullable=False),
        sa.Column('passed', sa.Boolean(), nullable=False),
        sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
        sa.Column('dagster_run_id', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_model_evaluations_candidate', 'model_evaluations',
                    ['model_name', 'candidate_version'])


def downgrade() -> None:
    op.drop_index('ix_model_evaluations_candidate', table_name='model_evaluations')
    op.drop_table('model_evaluations')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_training_provider_job', type_='unique')
        batch_op.drop_index('ix_training_runs_status')
        for col in ('updated_at', 'progress', 'cost_usd', 'provider_model_id', 'provider_job_id',
                    'provider', 'dagster_run_id', 'dataset_version', 'model_name'):
            batch_op.drop_column(col)
