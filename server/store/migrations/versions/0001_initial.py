"""Initial schema: areas, generations, counters, benches, issuances, devices, audit log.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "areas",
        sa.Column("area_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("entity_id", sa.LargeBinary(8), nullable=False),
        sa.Column("ds_certificate", sa.LargeBinary, nullable=False),
        sa.Column("ka_certificate", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "generations",
        sa.Column("generation", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("entity_id", sa.LargeBinary(8), nullable=False),
        sa.Column("ds_key_uri", sa.String(400), nullable=False),
        sa.Column("ka_key_uri", sa.String(400), nullable=False),
        sa.Column("ds_certificate", sa.LargeBinary, nullable=False),
        sa.Column("ka_certificate", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column(
            "generation",
            sa.Integer,
            sa.ForeignKey("generations.generation"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("last_value", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "benches",
        sa.Column("bench_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
    )
    op.create_table(
        "issuances",
        sa.Column("issuance_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("bench_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("device_id", sa.LargeBinary(8), nullable=False),
        sa.Column("area_id", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("device_certificate", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("signed_at", TS),
        sa.Column("signed_command", sa.LargeBinary),
        sa.Column("failure", sa.Text),
        sa.Column("outcome_at", TS),
        sa.Column("outcome_response", sa.LargeBinary),
        sa.UniqueConstraint("bench_id", "request_id", name="uq_issuance_bench_request"),
        sa.UniqueConstraint("generation", "counter", name="uq_issuance_generation_counter"),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.LargeBinary(8), primary_key=True),
        sa.Column("no_ds_entity", sa.LargeBinary(8)),
        sa.Column("no_ds_ski", sa.LargeBinary(8)),
        sa.Column("no_ka_entity", sa.LargeBinary(8)),
        sa.Column("no_ka_ski", sa.LargeBinary(8)),
        sa.Column("last_issuance_id", sa.Integer),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')")


def downgrade() -> None:
    for table in (
        "audit_head",
        "audit_log",
        "devices",
        "issuances",
        "benches",
        "counters",
        "generations",
        "areas",
    ):
        op.drop_table(table)
