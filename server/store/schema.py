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
    Column("ds_certificate", LargeBinary),  # absent while pending
    Column("ka_certificate", LargeBinary),
    Column("status", String(32), nullable=False),  # server.domain.values.GenerationStatus
    Column("compromised", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True)),
    Column("destroy_after", DateTime(timezone=True)),
    Column("destroyed_at", DateTime(timezone=True)),
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
    Column("facility", String(128)),
    Column("operations", String(64), nullable=False, default="hand-in,hand-out,rotation"),
    Column("certificate_sha256", String(64)),  # of the certificate issued at enrolment from the bench's CSR
)

# Issuances that hold a meter: recorded (being signed) or signed and not yet reported. Queries that must use
# the partial indexes below repeat these predicates literally.
OUTSTANDING_ISSUANCE = "status IN ('recorded', 'signed')"
CANCELLED_ISSUANCE = "status = 'cancelled'"
# signed and not yet reported (the fleet summary counts them); a literal, so that SQLite matches the index
SIGNED_ISSUANCE = "status = 'signed'"

issuances = Table(
    "issuances",
    metadata,
    Column("issuance_id", Integer, primary_key=True, autoincrement=True),
    Column("bench_id", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("request_fingerprint", String(64), nullable=False),
    Column("device_id", LargeBinary(8), nullable=False),
    Column("area_id", Integer),  # hand-out: the area the meter goes to
    Column("generation", Integer, nullable=False),  # the generation whose key signs
    Column("counter", BigInteger, nullable=False),
    Column("device_certificate", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("signed_at", DateTime(timezone=True)),
    Column("signed_command", LargeBinary),
    Column("failure", Text),
    Column("outcome_at", DateTime(timezone=True)),
    Column("outcome_response", LargeBinary),
    Column("target_generation", Integer),  # rotation: the generation the meter moves onto
    Column("cancelled_at", DateTime(timezone=True)),
    Column("cancelled_by", String(128)),  # officer:<id> | bench:<id>
    Column("cancel_reason", Text),
    UniqueConstraint("bench_id", "request_id", name="uq_issuance_bench_request"),
    UniqueConstraint("generation", "counter", name="uq_issuance_generation_counter"),
    # one outstanding command per meter, whichever replica or bench asks: the INSERT that records an
    # issuance fails while the meter has another recorded or signed, unreported one
    Index(
        "uq_issuance_outstanding_device",
        "device_id",
        unique=True,
        sqlite_where=text(OUTSTANDING_ISSUANCE),
        postgresql_where=text(OUTSTANDING_ISSUANCE),
    ),
    # cancelled commands a meter may still apply (read when a report or a reading settles one)
    Index(
        "ix_issuance_cancelled_device",
        "device_id",
        sqlite_where=text(CANCELLED_ISSUANCE),
        postgresql_where=text(CANCELLED_ISSUANCE),
    ),
    # the fleet summary's count of signed, unreported commands, without reading every issuance (0005)
    Index(
        "ix_issuance_signed",
        "issuance_id",
        sqlite_where=text(SIGNED_ISSUANCE),
        postgresql_where=text(SIGNED_ISSUANCE),
    ),
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

# Meters per custody state, generation and area, kept by every custody change in the transaction that
# makes it (server/store/fleet.py set_custody): the fleet summary reads these rows, not every meter.
# group_key is "state|generation|area", empty for a NULL, so that one unique key covers NULLs too.
device_counts = Table(
    "device_counts",
    metadata,
    Column("group_key", String(80), primary_key=True),
    Column("custody_state", String(32)),
    Column("generation", Integer),
    Column("area_id", Integer),
    Column("devices", BigInteger, nullable=False),
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
    # The entry's record: the bytes its hash is SHA-256 of (server/domain/audit.py entry_body). Readers show
    # and verification checks this; the columns above are a search index (migration 0007).
    Column("body", LargeBinary),
)

# One row (id 1): the chain head, locked by every appender so the chain stays linear across replicas.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Earlier credential sets of an area, kept readable when an officer replaces one.
area_history = Table(
    "area_history",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("area_id", Integer, nullable=False),
    Column("name", String(80), nullable=False),
    Column("entity_id", LargeBinary(8), nullable=False),
    Column("ds_certificate", LargeBinary, nullable=False),
    Column("ka_certificate", LargeBinary, nullable=False),
    Column("replaced_at", DateTime(timezone=True), nullable=False),
    Column("replaced_by", String(128), nullable=False),
    Index("ix_area_history_area", "area_id", "entry_id"),
)

# Two-person control: an officer's request, what it asks for, and each other officer's approval.
approval_requests = Table(
    "approval_requests",
    metadata,
    Column("request_id", Integer, primary_key=True, autoincrement=True),
    Column("operation", String(40), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("parameters", Text, nullable=False),  # JSON
    Column("reason", Text, nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | executed | rejected
    Column("approved_at", DateTime(timezone=True)),
    Column("execute_by", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("closed_by", String(64)),
    Column("outcome", Text),  # JSON: what execution produced, or why it was rejected
    Index("ix_approval_requests_status", "status"),
)

approval_grants = Table(
    "approval_grants",
    metadata,
    Column("request_id", Integer, ForeignKey("approval_requests.request_id"), primary_key=True),
    Column("officer_id", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)
