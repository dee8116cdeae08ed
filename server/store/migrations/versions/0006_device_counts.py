"""Meters per custody state, generation and area, kept as counts.

The fleet summary read every meter's row (a second on a million meters); device_counts holds one row a
(state, generation, area) group, changed in the transaction of every custody change
(server/store/fleet.py set_custody). Filled here from the meters recorded so far.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_counts",
        sa.Column("group_key", sa.String(80), primary_key=True),
        sa.Column("custody_state", sa.String(32)),
        sa.Column("generation", sa.Integer),
        sa.Column("area_id", sa.Integer),
        sa.Column("devices", sa.BigInteger, nullable=False),
    )
    op.execute(BACKFILL)


# group_key as server/store/fleet.py group_key writes it: "state|generation|area", empty text for a NULL.
BACKFILL = (
    "INSERT INTO device_counts (group_key, custody_state, generation, area_id, devices) "
    "SELECT coalesce(custody_state, '') || '|' || coalesce(CAST(generation AS VARCHAR(12)), '') || '|' || "
    "coalesce(CAST(area_id AS VARCHAR(12)), ''), custody_state, generation, area_id, count(*) "
    "FROM devices GROUP BY custody_state, generation, area_id"
)


def downgrade() -> None:
    op.drop_table("device_counts")
