"""Append-only guards in the database itself: review_events and config_history refuse UPDATE and
DELETE, review_items refuses DELETE (decisions change an item's status; nothing is deleted).

The repository never updates or deletes these rows; the triggers make that a property of the
store, so a hand-written SQL statement or another client cannot rewrite the audit trail either.
(PostgreSQL's TRUNCATE, an owner's bulk operation, does not fire row triggers.)

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# (table, operations refused)
GUARDS = [
    ("review_events", ("UPDATE", "DELETE")),
    ("config_history", ("UPDATE", "DELETE")),
    ("review_items", ("DELETE",)),
]


def _name(table: str, operation: str) -> str:
    return f"{table}_no_{operation.lower()}"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("""
            CREATE OR REPLACE FUNCTION learnloop_refuse_change() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'restrict_violation';
            END;
            $$ LANGUAGE plpgsql
        """)
        for table, operations in GUARDS:
            for operation in operations:
                op.execute(f"CREATE TRIGGER {_name(table, operation)} BEFORE {operation} "
                           f"ON {table} FOR EACH ROW EXECUTE FUNCTION learnloop_refuse_change()")
    elif dialect == "sqlite":
        for table, operations in GUARDS:
            for operation in operations:
                op.execute(f"CREATE TRIGGER {_name(table, operation)} BEFORE {operation} "
                           f"ON {table} BEGIN SELECT RAISE(ABORT, "
                           f"'{table} is append-only: {operation} refused'); END")
    else:
        raise NotImplementedError(f"append-only triggers for dialect {dialect!r}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, operations in GUARDS:
        for operation in operations:
            if dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS {_name(table, operation)} ON {table}")
            else:
                op.execute(f"DROP TRIGGER IF EXISTS {_name(table, operation)}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS learnloop_refuse_change()")
