"""Fleet queries by index on large stores.

The fleet summary counts the signed, unreported issuances: a partial index holds just those rows, so the
count reads them alone instead of every issuance (10 million in a large store).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SIGNED_ISSUANCE = "status = 'signed'"


def upgrade() -> None:
    op.create_index(
        "ix_issuance_signed",
        "issuances",
        ["issuance_id"],
        sqlite_where=sa.text(SIGNED_ISSUANCE),
        postgresql_where=sa.text(SIGNED_ISSUANCE),
    )


def downgrade() -> None:
    op.drop_index("ix_issuance_signed", "issuances")
