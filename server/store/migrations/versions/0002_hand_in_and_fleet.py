"""Hand-in orders, the fleet's custody state and history, officers.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OUTSTANDING_HAND_IN = "status IN ('awaiting-authorisation', 'authorised')"


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("custody_state", sa.String(32)))
        batch.add_column(sa.Column("area_id", sa.Integer))
        batch.add_column(sa.Column("generation", sa.Integer))
    # Devices recorded by hand-out outcomes before this revision: in the area an applied hand-out sent them
    # to, else still on the generation that signed.
    op.execute(
        "UPDATE devices SET custody_state = 'area', area_id = (SELECT i.area_id FROM issuances i "
        "WHERE i.issuance_id = devices.last_issuance_id) WHERE EXISTS (SELECT 1 FROM issuances i "
        "WHERE i.issuance_id = devices.last_issuance_id AND i.status = 'applied')"
    )
    op.execute(
        "UPDATE devices SET custody_state = 'vanilla', generation = (SELECT i.generation FROM issuances i "
        "WHERE i.issuance_id = devices.last_issuance_id) WHERE custody_state IS NULL AND EXISTS "
        "(SELECT 1 FROM issuances i WHERE i.issuance_id = devices.last_issuance_id)"
    )
    op.create_index("ix_devices_custody", "devices", ["custody_state", "generation", "area_id"])
    op.create_table(
        "hand_in_orders",
        sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("bench_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("device_id", sa.LargeBinary(8), nullable=False),
        sa.Column("area_id", sa.Integer, nullable=False),
        sa.Column("area_entity_id", sa.LargeBinary(8), nullable=False),
        sa.Column("seq_number", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("device_certificate", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("authorised_at", TS),
        sa.Column("command", sa.LargeBinary),
        sa.Column("counter", sa.BigInteger),
        sa.Column("mac_present", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("outcome_at", TS),
        sa.Column("outcome_response", sa.LargeBinary),
        sa.UniqueConstraint("bench_id", "request_id", name="uq_hand_in_bench_request"),
    )
    op.create_index("ix_hand_in_area_status", "hand_in_orders", ["area_id", "status"])
    op.create_index("ix_hand_in_device", "hand_in_orders", ["device_id"])
    op.create_index(
        "uq_hand_in_outstanding_device",
        "hand_in_orders",
        ["device_id"],
        unique=True,
        sqlite_where=sa.text(OUTSTANDING_HAND_IN),
        postgresql_where=sa.text(OUTSTANDING_HAND_IN),
    )
    op.create_table(
        "device_history",
        sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.LargeBinary(8), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("area_id", sa.Integer),
        sa.Column("generation", sa.Integer),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index("ix_device_history_device", "device_history", ["device_id", "entry_id"])
    op.create_table(
        "officers",
        sa.Column("officer_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("officers")
    op.drop_table("device_history")
    op.drop_table("hand_in_orders")
    op.drop_index("ix_devices_custody", "devices")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("generation")
        batch.drop_column("area_id")
        batch.drop_column("custody_state")
