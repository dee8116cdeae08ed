"""Key custody: generation lifecycle, two-person control, area history, bench enrolment details, rotation.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.alter_column("ds_certificate", existing_type=sa.LargeBinary, nullable=True)
        batch.alter_column("ka_certificate", existing_type=sa.LargeBinary, nullable=True)
        batch.alter_column("status", existing_type=sa.String(16), type_=sa.String(32))
        batch.add_column(sa.Column("compromised", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("created_at", TS))
        batch.add_column(sa.Column("destroy_after", TS))
        batch.add_column(sa.Column("destroyed_at", TS))
    # Earlier states: 'retired' signed nothing new but stayed on record; 'compromised' signs nothing.
    op.execute("UPDATE generations SET status = 'signing-only' WHERE status = 'retired'")
    op.execute("UPDATE generations SET status = 'disabled', compromised = TRUE WHERE status = 'compromised'")
    with op.batch_alter_table("benches") as batch:
        batch.add_column(sa.Column("facility", sa.String(128)))
        batch.add_column(
            sa.Column("operations", sa.String(64), nullable=False, server_default="hand-in,hand-out,rotation")
        )
        batch.add_column(sa.Column("certificate_sha256", sa.String(64)))
    with op.batch_alter_table("issuances") as batch:
        batch.alter_column("area_id", existing_type=sa.Integer, nullable=True)
        batch.add_column(sa.Column("target_generation", sa.Integer))
    op.create_table(
        "area_history",
        sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("area_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("entity_id", sa.LargeBinary(8), nullable=False),
        sa.Column("ds_certificate", sa.LargeBinary, nullable=False),
        sa.Column("ka_certificate", sa.LargeBinary, nullable=False),
        sa.Column("replaced_at", TS, nullable=False),
        sa.Column("replaced_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_area_history_area", "area_history", ["area_id", "entry_id"])
    op.create_table(
        "approval_requests",
        sa.Column("request_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("operation", sa.String(40), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("approved_at", TS),
        sa.Column("execute_by", TS),
        sa.Column("closed_at", TS),
        sa.Column("closed_by", sa.String(64)),
        sa.Column("outcome", sa.Text),
    )
    op.create_index("ix_approval_requests_status", "approval_requests", ["status"])
    op.create_table(
        "approval_grants",
        sa.Column(
            "request_id",
            sa.Integer,
            sa.ForeignKey("approval_requests.request_id"),
            primary_key=True,
        ),
        sa.Column("officer_id", sa.String(64), primary_key=True),
        sa.Column("at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_grants")
    op.drop_table("approval_requests")
    op.drop_index("ix_area_history_area", "area_history")
    op.drop_table("area_history")
    with op.batch_alter_table("issuances") as batch:
        batch.drop_column("target_generation")
    with op.batch_alter_table("benches") as batch:
        batch.drop_column("certificate_sha256")
        batch.drop_column("operations")
        batch.drop_column("facility")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("destroyed_at")
        batch.drop_column("destroy_after")
        batch.drop_column("created_at")
        batch.drop_column("compromised")
