"""Migration 0007 on a log written before it: each entry's record (body) filled from its columns, so the
chain verifies with the hashes it had, damage made before the upgrade is still named, and entries appended
after it continue the chain (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from test_migration_errors import database_at

from vdno.server.domain.audit import GENESIS_HASH, ProblemKind, entry_body, entry_hash
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import AuditAppender, verify_log
from vdno.server.store.engine import make_engine, migrate

ENTRIES = 12_007  # more than two of the migration's batches (5,000 rows)


@pytest.fixture(params=["sqlite", "postgres"])
def database_at_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_at(request, tmp_path, "0006") as url:
        yield url


def old_rows(count: int) -> Iterator[dict[str, object]]:
    """Entries as the appender wrote them before 0007: the readable columns and the hash, no body."""
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        row = {
            "seq": seq,
            "at": "2026-12-01T10:00:00.000001+00:00",
            "event": "bench.enrolled",
            "actor": "officer:o1",
            "subject": f"bench:b{seq}",
            "details": '{"note":"q\\"\\u00e9","seq":' + str(seq) + "}",
            "prev_hash": prev,
        }
        prev = row["hash"] = entry_hash(
            prev, seq, *(str(row[k]) for k in ("at", "event", "actor", "subject", "details"))
        )
        yield row


def test_the_upgrade_fills_every_record_and_the_chain_verifies_as_before(database_at_0006: str) -> None:
    engine = make_engine(database_at_0006)
    try:
        rows = list(old_rows(ENTRIES))
        insert = text(
            "INSERT INTO audit_log (seq, at, event, actor, subject, details, prev_hash, hash) "
            "VALUES (:seq, :at, :event, :actor, :subject, :details, :prev_hash, :hash)"
        )
        with engine.begin() as c:
            c.execute(insert, rows)
            c.execute(
                text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
                {"s": ENTRIES, "h": rows[-1]["hash"]},
            )
            c.execute(
                text("UPDATE audit_log SET actor = 'officer:mallory' WHERE seq = 9000")
            )  # damage before
        migrate(engine)
        with engine.connect() as c:
            stored = c.execute(
                text("SELECT seq, body, hash FROM audit_log WHERE seq IN (1, 5001, 12007)")
            ).all()
            assert c.execute(text("SELECT count(*) FROM audit_log WHERE body IS NULL")).scalar_one() == 0
        for seq, body, digest in stored:
            row = rows[seq - 1]
            fields = (str(row[k]) for k in ("at", "event", "actor", "subject", "details"))
            assert bytes(body) == entry_body(str(row["prev_hash"]), seq, *fields)
            assert hashlib.sha256(body).hexdigest() == digest == row["hash"]
        report = verify_log(engine, workers=1)
        assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.HASH_MISMATCH, 9000)]
        assert report.entries == 8999
        with engine.begin() as c:  # the damage undone: the whole chain verifies, and goes on
            c.execute(text("UPDATE audit_log SET actor = 'officer:o1', body = NULL WHERE seq = 9000"))
        [malformed] = verify_log(engine, workers=1).problems
        assert (malformed.kind, malformed.seq) == (ProblemKind.MALFORMED_ENTRY, 9000)
        assert malformed.message == "entry 9000: its record is missing"
        with engine.begin() as c:
            fields = (str(rows[8999][k]) for k in ("at", "event", "actor", "subject", "details"))
            body = entry_body(str(rows[8999]["prev_hash"]), 9000, *fields)
            c.execute(text("UPDATE audit_log SET body = :b WHERE seq = 9000"), {"b": body})
            AuditAppender(engine.dialect).append(
                c, [AuditEvent("bench.revoked", "officer:o1", "bench:b1", {})]
            )
        report = verify_log(engine, workers=2, parallel_from=1)
        assert report.ok and report.entries == ENTRIES + 1
    finally:
        engine.dispose()
