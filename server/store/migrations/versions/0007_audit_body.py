"""The audit log's record: each entry's hashed bytes in a column of their own.

`body` holds exactly the bytes the entry's hash is SHA-256 of (the ASCII JSON array [prev_hash, seq, at,
event, actor, subject, details], server/domain/audit.py entry_body), so every existing hash stays valid;
verification reads (seq, body, hash) and every reader shows the body's content, the other columns being a
search index. Filled here from each row's own columns (its prev_hash column included, so an entry damaged
before this revision stays damaged in the same way), a batch of rows at a time in seq order: constant
memory whatever the log's length. A row whose columns cannot be encoded keeps a NULL body, which
verification reports as a malformed entry.

Revision ID: 0007
Revises: 0006
"""

from json.encoder import encode_basestring_ascii

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH_ROWS = 5000
READ = sa.text(
    "SELECT seq, at, event, actor, subject, details, prev_hash FROM audit_log "
    "WHERE seq > :after ORDER BY seq LIMIT :rows"
)
WRITE = sa.text("UPDATE audit_log SET body = :body WHERE seq = :seq")


def body_of(prev_hash: str, seq: int, at: str, event: str, actor: str, subject: str, details: str) -> bytes:
    """entry_body as this revision wrote it (a copy: a migration does not change when the code does)."""
    esc = encode_basestring_ascii
    body = f'["{prev_hash}",{seq:d},{esc(at)},{esc(event)},{esc(actor)},{esc(subject)},{esc(details)}]'
    return body.encode("ascii")


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("body", sa.LargeBinary, nullable=True))
    conn = op.get_bind()
    first = conn.execute(sa.text("SELECT min(seq) FROM audit_log")).scalar()
    if first is None:
        return
    after = first - 1  # seqs start at 1; a damaged log may hold lower ones
    while rows := conn.execute(READ, {"after": after, "rows": BATCH_ROWS}).all():
        updates = []
        for seq, at, event, actor, subject, details, prev_hash in rows:
            try:
                body = body_of(prev_hash, seq, at, event, actor, subject, details)
            except (TypeError, ValueError):
                continue  # left NULL: a malformed entry
            updates.append({"seq": seq, "body": body})
        if updates:
            conn.execute(WRITE, updates)
        after = rows[-1][0]


def downgrade() -> None:
    op.drop_column("audit_log", "body")
