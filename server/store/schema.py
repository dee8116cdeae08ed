"""Tables of the custodian's durable state (SQLAlchemy Core). Changes go through an Alembic migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

areas = Table(
    "areas",
    metadata,
    Column("area_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(80), nullable=False),
    Column("entity_id", LargeBinary(8), nullable=False),
    Column("ds_certificate", LargeBinary, nullable=False),
    Column("ka_certificate", LargeBinary, nullable=False),
)

generations = Table(
    "generations",
    metadata,
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("entity_id", LargeBinary(8), nullable=False),
    Column("ds_key_uri", String(400), nullable=False),
    Column("ka_key_uri", String(400), nullable=False),
    Column("ds_certificate", LargeBinary, nullable=False),
    Column("ka_certificate", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
)

counters = Table(
    "counters",
    metadata,
    Column(
        "generation", Integer, ForeignKey("generations.generation"), primary_key=True, autoincrement=False
    ),
    Column("last_value", BigInteger, nullable=False),
)

benches = Table(
    "benches",
    metadata,
    Column("bench_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

issuances = Table(
    "issuances",
    metadata,
    Column("issuance_id", Integer, primary_key=True, autoincrement=True),
    Column("bench_id", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("request_fingerprint", String(64), nullable=False),
    Column("device_id", LargeBinary(8), nullable=False),
    Column("area_id", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("counter", BigInteger, nullable=False),
    Column("device_certificate", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("signed_at", DateTime(timezone=True)),
    Column("signed_command", LargeBinary),
    Column("failure", Text),
    Column("outcome_at", DateTime(timezone=True)),
    Column("outcome_response", LargeBinary),
    UniqueConstraint("bench_id", "request_id", name="uq_issuance_bench_request"),
    UniqueConstraint("generation", "counter", name="uq_issuance_generation_counter"),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", LargeBinary(8), primary_key=True),
    Column("no_ds_entity", LargeBinary(8)),
    Column("no_ds_ski", LargeBinary(8)),
    Column("no_ka_entity", LargeBinary(8)),
    Column("no_ka_ski", LargeBinary(8)),
    Column("last_issuance_id", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # what the records say the NO cells hold: server.domain.values.CustodyState, with its area or generation
    Column("custody_state", String(32)),
    Column("area_id", Integer),
    Column("generation", Integer),
    Index("ix_devices_custody", "custody_state", "generation", "area_id"),
)

OUTSTANDING_HAND_IN = "status IN ('awaiting-authorisation', 'authorised')"

hand_in_orders = Table(
    "hand_in_orders",
    metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=True),
    Column("bench_id", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("request_fingerprint", String(64), nullable=False),
    Column("device_id", LargeBinary(8), nullable=False),
    Column("area_id", Integer, nullable=False),
    Column("area_entity_id", LargeBinary(8), nullable=False),
    Column("seq_number", BigInteger, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("device_certificate", LargeBinary, nullable=False),
    Column("status", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("authorised_at", DateTime(timezone=True)),
    Column("command", LargeBinary),
    Column("counter", BigInteger),
    Column("mac_present", Boolean, nullable=False, default=False),
    Column("outcome_at", DateTime(timezone=True)),
    Column("outcome_response", LargeBinary),
    UniqueConstraint("bench_id", "request_id", name="uq_hand_in_bench_request"),
    Index("ix_hand_in_area_status", "area_id", "status"),
    Index("ix_hand_in_device", "device_id"),
    # one outstanding order per meter, whichever replica or bench asks
    Index(
        "uq_hand_in_outstanding_device",
        "device_id",
        unique=True,
        sqlite_where=text(OUTSTANDING_HAND_IN),
        postgresql_where=text(OUTSTANDING_HAND_IN),
    ),
)

device_history = Table(
    "device_history",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", LargeBinary(8), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(40), nullable=False),
    Column("state", String(32), nullable=False),
    Column("area_id", Integer),
    Column("generation", Integer),
    Column("reference", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Index("ix_device_history_device", "device_id", "entry_id"),
)

officers = Table(
    "officers",
    metadata,
    Column("officer_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("event", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row (id 1): the chain head, locked by every appender so the chain stays linear across replicas.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
