"""retention_events: the append-only record of landing-data archives and deletions (who, when,
why, the day, the files, what was removed); refuses UPDATE and DELETE like review_events.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

OPERATIONS = ("UPDATE", "DELETE")


def _name(operation: str) -> str:
    return f"retention_events_no_{operation.lower()}"


def upgrade() -> None:
    op.create_table(
        'retention_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('files', sa.JSON(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_retention_events_day', 'retention_events', ['day'])
    dialect = op.get_bind().dialect.name
    for operation in OPERATIONS:
        if dialect == "postgresql":  # learnloop_refuse_change() comes from 0003
            op.execute(f"CREATE TRIGGER {_name(operation)} BEFORE {operation} ON "
                       f"retention_events FOR EACH ROW EXECUTE FUNCTION "
                       f"learnloop_refuse_change()")
        elif dialect == "sqlite":
            op.execute(f"CREATE TRIGGER {_name(operation)} BEFORE {operation} ON "
                       f"retention_events BEGIN SELECT RAISE(ABORT, "
                       f"'retention_events is append-only: {operation} refused'); END")
        else:
            raise NotImplementedError(f"append-only triggers for dialect {dialect!r}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for operation in OPERATIONS:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {_name(operation)} ON retention_events")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {_name(operation)}")
    op.drop_index('ix_retention_events_day', table_name='retention_events')
    op.drop_table('retention_events')
