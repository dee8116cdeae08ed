"""The audit chain's verification on rows built in memory: each kind of damage is found and the first bad
entry named; the fast hash is byte for byte the JSON encoding the log has always hashed; exports read back
as they were written. The same checks on real databases and a real server: tests/integration/test_audit*."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdno.server.domain.audit import (
    GENESIS_HASH,
    AuditRow,
    ChainHead,
    CheckpointClaim,
    CheckpointStatus,
    ProblemKind,
    entry_hash,
    export_header,
    export_line,
    read_export,
    verify_source,
)
from vdno.server.domain.errors import AuditDocumentInvalid

JSON_BODY = json.JSONEncoder(separators=(",", ":"))  # how the log hashed entries before entry_hash


def reference_hash(prev: str, seq: int, at: str, event: str, actor: str, subject: str, details: str) -> str:
    return hashlib.sha256(
        JSON_BODY.encode([prev, seq, at, event, actor, subject, details]).encode()
    ).hexdigest()


def chain(count: int, first_prev: str = GENESIS_HASH) -> list[AuditRow]:
    rows: list[AuditRow] = []
    prev = first_prev
    for seq in range(1, count + 1):
        at, event, actor = "2026-01-02T03:04:05.000006+00:00", "command.issued", "bench:bench-01"
        subject, details = f"issuance:{seq}", json.dumps({"counter": seq, "note": 'q"uote\\ é'})
        digest = reference_hash(prev, seq, at, event, actor, subject, details)
        rows.append((seq, at, event, actor, subject, details, prev, digest))
        prev = digest
    return rows


def rehash(rows: list[AuditRow], start: int) -> list[AuditRow]:
    """Recompute every hash from index `start` on, as someone rewriting the log would."""
    out = rows[:start]
    prev = out[-1][7] if out else GENESIS_HASH
    for seq, at, event, actor, subject, details, _, _ in rows[start:]:
        digest = entry_hash(prev, seq, at, event, actor, subject, details)
        out.append((seq, at, event, actor, subject, details, prev, digest))
        prev = digest
    return out


@dataclass
class Rows:
    """An AuditSource over a list, in pages of 3 (so that problems fall across page boundaries)."""

    rows: list[AuditRow]
    head_row: ChainHead | None

    @classmethod
    def intact(cls, rows: list[AuditRow]) -> Rows:
        return cls(rows, ChainHead(rows[-1][0], rows[-1][7]) if rows else ChainHead(0, GENESIS_HASH))

    @property
    def head(self) -> ChainHead | None:
        return self.head_row

    def pages(self) -> Iterator[Sequence[AuditRow]]:
        for start in range(0, len(self.rows), 3):
            yield self.rows[start : start + 3]


def replace(row: AuditRow, index: int, value: object) -> AuditRow:
    changed = list(row)
    changed[index] = value
    return tuple(changed)  # type: ignore[return-value]


@given(st.text(), st.text(), st.text(), st.text(), st.text(), st.integers(min_value=0, max_value=2**63))
def test_entry_hash_is_the_json_encoding_of_the_entry(
    at: str, event: str, actor: str, subject: str, details: str, seq: int
) -> None:
    prev = hashlib.sha256(at.encode("utf-8", "surrogatepass")).hexdigest()
    assert entry_hash(prev, seq, at, event, actor, subject, details) == reference_hash(
        prev, seq, at, event, actor, subject, details
    )


def test_an_intact_chain_verifies_to_its_head() -> None:
    rows = chain(10)
    report = verify_source(Rows.intact(rows))
    assert report.ok and report.entries == 10
    assert report.last == ChainHead(10, rows[-1][7]) == report.head
    assert verify_source(Rows.intact([])).ok


def test_an_edited_entry_is_named() -> None:
    rows = chain(10)
    rows[4] = replace(rows[4], 3, "bench:someone-else")
    report = verify_source(Rows.intact(rows))
    [problem] = report.problems
    assert (problem.kind, problem.seq, report.entries) == (ProblemKind.HASH_MISMATCH, 5, 4)
    assert problem.message == "entry 5: hash does not match its content"


def test_a_deleted_entry_is_a_sequence_gap_naming_it() -> None:
    rows = chain(10)
    del rows[6]
    [problem] = verify_source(Rows.intact(rows)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.SEQUENCE_GAP, 7)
    assert "entry 7: missing" in problem.message


def test_a_broken_link_is_named() -> None:
    rows = chain(10)
    rows[2] = replace(rows[2], 6, "ab" * 32)
    [problem] = verify_source(Rows.intact(rows)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.BROKEN_LINK, 3)


def test_swapped_entries_break_the_link_at_the_first() -> None:
    rows = chain(10)
    a, b = rows[3], rows[4]
    rows[3], rows[4] = replace(b, 0, 4), replace(a, 0, 5)  # contents exchanged, seqs kept
    [problem] = verify_source(Rows.intact(rows)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.BROKEN_LINK, 4)


def test_entries_out_of_order_in_an_export_are_named() -> None:
    rows = chain(6)
    rows.insert(3, rows[2])
    [problem] = verify_source(Rows.intact(rows)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.OUT_OF_ORDER, 4)


def test_a_field_of_the_wrong_type_is_malformed_not_a_crash() -> None:
    rows = chain(5)
    rows[1] = replace(rows[1], 1, 12345)
    [problem] = verify_source(Rows.intact(rows)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.MALFORMED_ENTRY, 2)


def test_head_missing_or_not_naming_the_last_entry() -> None:
    rows = chain(8)
    [missing] = verify_source(Rows(rows, None)).problems
    assert missing.kind is ProblemKind.HEAD_MISSING
    truncated = Rows(rows[:6], ChainHead(8, rows[7][7]))  # newest rows deleted, head left as it was
    [problem] = verify_source(truncated).problems
    assert (problem.kind, problem.seq) == (ProblemKind.HEAD_MISMATCH, 7)
    assert "truncated" in problem.message
    [behind] = verify_source(Rows(rows, ChainHead(6, rows[5][7]))).problems
    assert (behind.kind, behind.seq) == (ProblemKind.HEAD_MISMATCH, 7)


def test_tail_truncation_with_the_head_moved_is_found_only_against_a_checkpoint() -> None:
    rows = chain(12)
    checkpoint = CheckpointClaim("cp.json", ChainHead(11, rows[10][7]))
    truncated = Rows.intact(rows[:9])  # entries 10-12 deleted and the head updated to match
    assert verify_source(truncated).ok
    report = verify_source(truncated, [checkpoint])
    [problem] = report.problems
    assert (problem.kind, problem.seq, problem.checkpoint) == (ProblemKind.LOG_TRUNCATED, 10, "cp.json")
    assert "entries 10-11 removed" in problem.message
    assert report.checkpoints[0].status is CheckpointStatus.FAILED


def test_an_edit_with_the_chain_rehashed_is_found_against_an_earlier_checkpoint() -> None:
    rows = chain(12)
    checkpoint = CheckpointClaim("cp.json", ChainHead(9, rows[8][7]))
    rows[3] = replace(rows[3], 5, '{"counter":999}')
    rewritten = rehash(rows, 3)
    assert verify_source(Rows.intact(rewritten)).ok
    [problem] = verify_source(Rows.intact(rewritten), [checkpoint]).problems
    assert (problem.kind, problem.seq) == (ProblemKind.LOG_REWRITTEN, 9)


def test_checkpoints_reached_and_not_checked() -> None:
    rows = chain(12)
    claims = [
        CheckpointClaim(f"cp{n}", ChainHead(n, rows[n - 1][7] if n else GENESIS_HASH)) for n in (0, 3, 12)
    ]
    report = verify_source(Rows.intact(rows), claims)
    assert report.ok and [c.status for c in report.checkpoints] == [CheckpointStatus.REACHED] * 3
    rows[5] = replace(rows[5], 2, "edited")
    report = verify_source(Rows.intact(rows), claims)
    assert [c.status for c in report.checkpoints] == [
        CheckpointStatus.REACHED,
        CheckpointStatus.REACHED,
        CheckpointStatus.NOT_CHECKED,
    ]
    assert [p.seq for p in report.problems] == [6]


def test_an_export_reads_back_as_written_and_verifies_the_same() -> None:
    rows = chain(7)
    head = ChainHead(7, rows[-1][7])
    lines = [export_header(head, "2026-01-02T00:00:00+00:00")] + [export_line(r) for r in rows]
    source = read_export(lines, page_rows=2)
    assert source.head == head
    assert [r for page in source.pages() for r in page] == rows
    assert verify_source(read_export(lines)).ok
    edited = [*lines[:3], lines[3].replace("issuance:3", "issuance:4"), *lines[4:]]
    [problem] = verify_source(read_export(edited)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.HASH_MISMATCH, 3)


def test_a_broken_export_line_is_named_and_a_foreign_file_refused() -> None:
    rows = chain(4)
    lines = [export_header(ChainHead(4, rows[-1][7]), "t")] + [export_line(r) for r in rows]
    lines[3] = "{not json"
    [problem] = verify_source(read_export(lines)).problems
    assert (problem.kind, problem.seq) == (ProblemKind.MALFORMED_ENTRY, 3)
    assert "export line 4 is not JSON" in problem.message
    with pytest.raises(AuditDocumentInvalid, match="not a vdno audit export"):
        read_export(['{"seq": 1}'])
