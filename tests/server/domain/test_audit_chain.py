"""The audit chain's verification on records built in memory: each kind of damage is found and the first bad
entry named; the record (body) is byte for byte the JSON encoding the log has always hashed, and reads back
as the entry's fields; walks of seq ranges join up to the walk of the whole log; exports read back as they
were written. The same checks on real databases and a real server: tests/server/store/test_audit_store.py,
tests/integration/test_audit*."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdno.server.domain.audit import (
    ENTRY_FIELDS,
    GENESIS,
    GENESIS_HASH,
    AuditProblem,
    AuditRecord,
    AuditRow,
    ChainHead,
    ChainWalk,
    CheckpointClaim,
    CheckpointResult,
    CheckpointStatus,
    ProblemKind,
    entry_hash,
    export_header,
    export_line,
    join_walks,
    read_export,
    record_of,
    row_of,
    verify_source,
    walk_records,
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


def pages_of(records: Sequence[AuditRecord]) -> Iterator[Sequence[AuditRecord]]:
    """Pages of 3, so that problems fall across page boundaries."""
    for start in range(0, len(records), 3):
        yield records[start : start + 3]


@dataclass
class Rows:
    """An AuditSource over records in a list (made from rows: bodies from the rows' fields)."""

    records: list[AuditRecord]
    head_row: ChainHead | None

    @classmethod
    def intact(cls, rows: list[AuditRow]) -> Rows:
        return cls.of(rows, ChainHead(rows[-1][0], rows[-1][7]) if rows else ChainHead(0, GENESIS_HASH))

    @classmethod
    def of(cls, rows: list[AuditRow], head: ChainHead | None) -> Rows:
        return cls([record_of(row) for row in rows], head)

    @property
    def head(self) -> ChainHead | None:
        return self.head_row

    def walk(self, watch: set[int]) -> ChainWalk:
        return walk_records(pages_of(self.records), watch)


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


@pytest.mark.parametrize("body", [None, "text, not bytes", b"[1,2]", b'["' + b"g" * 64 + b'",2,"x"]'])
def test_a_record_missing_or_not_an_entry_is_malformed_not_a_crash(body: object) -> None:
    source = Rows.intact(chain(5))
    seq, _, digest = source.records[1]
    source.records[1] = (seq, body, digest)  # type: ignore[assignment]
    report = verify_source(source)
    [problem] = report.problems
    assert (problem.kind, problem.seq, report.entries) == (ProblemKind.MALFORMED_ENTRY, 2, 1)


def test_a_record_naming_another_seq_is_malformed() -> None:
    source = Rows.intact(chain(3))
    body = source.records[2][1].replace(b'",3,', b'",4,', 1)  # entry 3's record claims to be entry 4
    source.records[2] = (3, body, hashlib.sha256(body).hexdigest())
    source.head_row = ChainHead(3, source.records[2][2])
    [problem] = verify_source(source).problems
    assert (problem.kind, problem.seq) == (ProblemKind.MALFORMED_ENTRY, 3)
    assert problem.message == "entry 3: its record names another seq than 3"


def test_a_record_reads_back_as_the_entry_it_was_made_of() -> None:
    rows = chain(4)
    assert [row_of(record_of(row)) for row in rows] == rows
    seq, body, digest = record_of(rows[0])
    assert body == JSON_BODY.encode([rows[0][6], *rows[0][:6]]).encode()
    assert hashlib.sha256(body).hexdigest() == digest == entry_hash(rows[0][6], *rows[0][:6])
    spaced = body.replace(b",", b", ", 1)  # the same JSON value, not the bytes entry_body writes
    for bad in (spaced, b"not json", b"[]", body.replace(rows[0][6].encode(), b"x" * 64)):
        with pytest.raises(AuditDocumentInvalid, match="entry 1: its record is not an audit entry"):
            row_of((seq, bad, digest))


def test_walks_of_seq_ranges_join_to_the_walk_of_the_whole_log() -> None:
    records = Rows.intact(chain(12)).records
    whole = walk_records(pages_of(records), {5, 12})

    def ranges(bounds: list[tuple[int, int]], records: list[AuditRecord]) -> list[ChainWalk]:
        walks = []
        for first, last in bounds:
            start = GENESIS if first == 1 else ChainHead(first - 1, records[first - 2][2])
            walks.append(walk_records(pages_of(records[first - 1 : last]), {5, 12}, start))
        return walks

    bounds = [(1, 4), (5, 9), (10, 12)]
    assert join_walks(ranges(bounds, records)) == whole
    assert whole.problem is None and whole.count == 12 and set(whole.reached) == {5, 12}
    damaged = list(records)
    damaged[6] = (7, damaged[6][1].replace(b"issuance:7", b"issuance:8"), damaged[6][2])
    assert join_walks(ranges(bounds, damaged)) is None  # a range with a problem: walk the whole log
    assert join_walks(ranges([(1, 3), (5, 9), (10, 12)], records)) is None  # entry 4 not walked
    short = ranges(bounds, records)
    assert join_walks([short[0], short[2]]) is None  # the second range's start is not the first's end


def test_head_missing_or_not_naming_the_last_entry() -> None:
    rows = chain(8)
    [missing] = verify_source(Rows.of(rows, None)).problems
    assert missing.kind is ProblemKind.HEAD_MISSING
    truncated = Rows.of(rows[:6], ChainHead(8, rows[7][7]))  # newest rows deleted, head left as it was
    [problem] = verify_source(truncated).problems
    assert (problem.kind, problem.seq) == (ProblemKind.HEAD_MISMATCH, 7)
    assert "truncated" in problem.message
    [behind] = verify_source(Rows.of(rows, ChainHead(6, rows[5][7]))).problems
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
    assert [r for page in source.pages() for r in page] == [record_of(r) for r in rows]
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


# -- exact reports: the kind, seq and message an officer reads in `vdno-admin audit verify` for each defect
# (docs/operations.md "Reading the audit log"), and the JSON documents it prints


def _deleted(*indexes: int) -> list[AuditRow]:
    rows = chain(10)
    return [row for i, row in enumerate(rows) if i not in indexes]


def _duplicated() -> list[AuditRow]:
    rows = chain(6)
    rows.insert(3, rows[2])
    return rows


def _linked(index: int) -> list[AuditRow]:
    rows = chain(10)
    rows[index] = replace(rows[index], 6, "ab" * 32)
    return rows


@pytest.mark.parametrize(
    ("rows", "kind", "seq", "entries", "message"),
    [
        (
            [*chain(10)[:4], replace(chain(10)[4], 3, "bench:someone-else"), *chain(10)[5:]],
            ProblemKind.HASH_MISMATCH, 5, 4, "entry 5: hash does not match its content",
        ),
        (
            _deleted(6),
            ProblemKind.SEQUENCE_GAP, 7, 6, "entry 7: missing (sequence gap: the next entry is seq 8)",
        ),
        (
            _deleted(6, 7, 8),
            ProblemKind.SEQUENCE_GAP, 7, 6,
            "entry 7: missing, and so are entries up to 9 (sequence gap: the next entry is seq 10)",
        ),
        (
            _duplicated(),
            ProblemKind.OUT_OF_ORDER, 4, 3, "entry 4: out of order (found seq 3 in its place)",
        ),
        (
            _linked(2),
            ProblemKind.BROKEN_LINK, 3, 2, "entry 3: prev_hash does not link to entry 2's hash",
        ),
        (
            _linked(0),
            ProblemKind.BROKEN_LINK, 1, 0,
            "entry 1: prev_hash does not link to entry 0's hash (the genesis hash)",
        ),
    ],
    ids=["edited", "one-deleted", "three-deleted", "repeated", "broken-link", "broken-link-at-1"],
)  # fmt: skip
def test_each_defect_is_reported_with_its_exact_message(
    rows: list[AuditRow], kind: ProblemKind, seq: int, entries: int, message: str
) -> None:
    report = verify_source(Rows.of(rows, ChainHead(rows[-1][0], rows[-1][7])))
    [problem] = report.problems
    assert (problem.kind, problem.seq, problem.message, problem.checkpoint) == (kind, seq, message, None)
    assert (report.entries, report.first_bad_seq) == (entries, seq)


H = "ab" * 32  # a well-formed hash that is nobody's


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "entry 2: its record is missing"),
        ("text, not bytes", "entry 2: its record is not bytes"),
        (b"[1,2]", "entry 2: its record does not start with a prev_hash"),
        (b'["' + H.encode() + b'"]', "entry 2: its record does not start with a prev_hash"),
        (b'["' + b"\xff" * 64 + b'",2,"x"]', "entry 2: its record does not start with a prev_hash"),
        (b'{"' + H.encode() + b'",2,"x"]', "entry 2: its record does not start with a prev_hash"),
    ],
    ids=["missing", "text", "not-an-entry", "no-comma-after-the-hash", "not-ascii", "not-an-array"],
)
def test_a_malformed_record_is_reported_with_its_exact_message(body: object, message: str) -> None:
    source = Rows.intact(chain(3))
    if isinstance(body, bytes) and H.encode() in body:  # the previous entry's hash, well placed or not
        body = body.replace(H.encode(), source.records[0][2].encode())
    source.records[1] = (2, body, source.records[1][2])  # type: ignore[assignment]
    report = verify_source(source)
    [problem] = report.problems
    assert (problem.kind, problem.seq, problem.message) == (ProblemKind.MALFORMED_ENTRY, 2, message)
    assert report.entries == 1


def test_the_head_row_is_reported_exactly_when_missing_unreadable_or_not_the_last_entry() -> None:
    rows = chain(8)

    @dataclass
    class UnreadableHead(Rows):
        @property
        def head(self) -> ChainHead | None:
            raise AuditDocumentInvalid("the chain head row is not a chain head")

    cases = {
        None: (ProblemKind.HEAD_MISSING, None, "the chain head row (audit_head id 1) is missing"),
        ChainHead(10, rows[7][7]): (
            ProblemKind.HEAD_MISMATCH, 9,
            "entry 9: missing: the chain head names entry 10, but the log ends at entry 8 (truncated log)",
        ),
        ChainHead(6, rows[5][7]): (
            ProblemKind.HEAD_MISMATCH, 7,
            "entry 7: beyond the chain head, which names entry 6 (the log ends at entry 8)",
        ),
        ChainHead(8, H): (
            ProblemKind.HEAD_MISMATCH, 8, "entry 8: the chain head names it with another hash"
        ),
    }  # fmt: skip
    for head, expected in cases.items():
        report = verify_source(Rows.of(rows, head))
        [problem] = report.problems
        assert (problem.kind, problem.seq, problem.message) == expected, head
        assert (report.entries, report.last, report.head) == (8, ChainHead(8, rows[7][7]), head)
    unreadable = UnreadableHead([record_of(row) for row in rows], None)
    report = verify_source(unreadable)
    assert report.problems == (
        AuditProblem(ProblemKind.HEAD_MISMATCH, "the chain head row is not a chain head"),
    )
    assert (report.entries, report.head) == (8, None)


def test_checkpoint_problems_and_results_are_reported_exactly() -> None:
    rows = chain(12)
    intact = Rows.intact(rows[:9])  # entries 10-12 deleted and the head updated to match

    def claim(name: str, seq: int, digest: str | None = None) -> CheckpointClaim:
        return CheckpointClaim(name, ChainHead(seq, digest or rows[seq - 1][7]))

    report = verify_source(
        intact, [claim("a.json", 3), claim("b.json", 10), claim("c.json", 12), claim("d.json", 5, H)]
    )
    assert report.problems == (
        AuditProblem(
            ProblemKind.LOG_TRUNCATED,
            "entry 10: missing: checkpoint b.json signed the log up to entry 10, but the log ends at entry 9 "
            "(entry 10 removed: tail truncation)",
            10,
            "b.json",
        ),
        AuditProblem(
            ProblemKind.LOG_TRUNCATED,
            "entry 10: missing: checkpoint c.json signed the log up to entry 12, but the log ends at entry 9 "
            "(entries 10-12 removed: tail truncation)",
            10,
            "c.json",
        ),
        AuditProblem(
            ProblemKind.LOG_REWRITTEN,
            "entry 5: hash differs from the one checkpoint d.json signed (the log at or before entry 5 was "
            "changed and the chain re-hashed)",
            5,
            "d.json",
        ),
    )
    assert report.checkpoints == (
        CheckpointResult("a.json", 3, CheckpointStatus.REACHED),
        CheckpointResult("b.json", 10, CheckpointStatus.FAILED),
        CheckpointResult("c.json", 12, CheckpointStatus.FAILED),
        CheckpointResult("d.json", 5, CheckpointStatus.FAILED),
    )
    assert report.first_bad_seq == 5
    edited = list(rows)
    edited[3] = replace(edited[3], 2, "edited")
    prior = AuditProblem(ProblemKind.CHECKPOINT_WRONG_KEY, "checkpoint x.json: another key", None, "x.json")
    prior_result = CheckpointResult("x.json", None, CheckpointStatus.FAILED)
    report = verify_source(
        Rows.intact(edited),
        [claim("a.json", 3), claim("b.json", 6), claim("c.json", 8)],
        [prior],
        [prior_result],
    )
    assert report.problems == (
        prior,
        AuditProblem(ProblemKind.HASH_MISMATCH, "entry 4: hash does not match its content", 4),
    )
    assert report.checkpoints == (
        prior_result,
        CheckpointResult("a.json", 3, CheckpointStatus.REACHED),
        CheckpointResult("b.json", 6, CheckpointStatus.NOT_CHECKED),
        CheckpointResult("c.json", 8, CheckpointStatus.NOT_CHECKED),
    )


def test_the_report_as_json_is_exact() -> None:
    rows = chain(12)
    intact = Rows.intact(rows[:9])
    report = verify_source(
        intact,
        [
            CheckpointClaim("a.json", ChainHead(3, rows[2][7])),
            CheckpointClaim("b.json", ChainHead(10, rows[9][7])),
        ],
    )
    assert report.as_json() == {
        "ok": False,
        "entries": 9,
        "last": {"seq": 9, "hash": rows[8][7]},
        "head": {"seq": 9, "hash": rows[8][7]},
        "first_bad_seq": 10,
        "problems": [
            {
                "kind": "log-truncated",
                "seq": 10,
                "checkpoint": "b.json",
                "message": "entry 10: missing: checkpoint b.json signed the log up to entry 10, but the log "
                "ends at entry 9 (entry 10 removed: tail truncation)",
            }
        ],
        "checkpoints": [
            {"checkpoint": "a.json", "seq": 3, "status": "reached"},
            {"checkpoint": "b.json", "seq": 10, "status": "failed"},
        ],
    }
    assert verify_source(Rows.of([], None)).as_json() == {
        "ok": False,
        "entries": 0,
        "last": {"seq": 0, "hash": GENESIS_HASH},
        "head": None,
        "first_bad_seq": None,
        "problems": [
            {
                "kind": "head-missing",
                "seq": None,
                "checkpoint": None,
                "message": "the chain head row (audit_head id 1) is missing",
            }
        ],
        "checkpoints": [],
    }


def test_a_chain_head_is_a_seq_from_0_and_a_lower_case_hash() -> None:
    assert ChainHead(0, GENESIS_HASH) == GENESIS and ChainHead(3, H).as_json() == {"seq": 3, "hash": H}
    refused = {
        (-1, H): "seq must be a whole number from 0, not -1",
        (True, H): "seq must be a whole number from 0, not True",
        ("3", H): "seq must be a whole number from 0, not '3'",
        (3, H.upper()): f"hash must be 64 lower-case hex digits, not {H.upper()!r}",
        (3, None): "hash must be 64 lower-case hex digits, not None",
    }
    for (seq, digest), message in refused.items():
        with pytest.raises(AuditDocumentInvalid) as caught:
            ChainHead(seq, digest)  # type: ignore[arg-type]
        assert str(caught.value) == message


def test_records_and_rows_refuse_the_wrong_types() -> None:
    row = chain(1)[0]
    for index, value in ((0, True), (0, "1"), (1, 5), (6, None)):
        with pytest.raises(TypeError) as caught:
            record_of(replace(row, index, value))
        assert str(caught.value) == "an entry's seq is a whole number and its other fields are text"
    seq, body, digest = record_of(row)
    quoted_seq = body.replace(b'",1,', b'","1",', 1)  # the seq as text: not a record entry_body writes
    for bad in ("text, not bytes", None, quoted_seq):
        with pytest.raises(AuditDocumentInvalid) as caught:
            row_of((seq, bad, digest))  # type: ignore[arg-type]
        assert str(caught.value) == "entry 1: its record is not an audit entry's JSON array"


def _export(rows: list[AuditRow]) -> list[str]:
    return [export_header(ChainHead(rows[-1][0], rows[-1][7]), "t")] + [export_line(r) for r in rows]


def test_export_lines_are_exact() -> None:
    row = chain(1)[0]
    assert export_header(None, "2026-12-05T00:00:00+00:00") == (
        '{"format":"vdno-audit-export/1","exported_at":"2026-12-05T00:00:00+00:00","head":null}'
    )
    assert export_header(ChainHead(1, row[7]), "t") == (
        '{"format":"vdno-audit-export/1","exported_at":"t","head":{"seq":1,"hash":"' + row[7] + '"}}'
    )
    assert json.loads(export_line(row)) == dict(zip(ENTRY_FIELDS, row, strict=True))
    assert export_line(row).startswith('{"seq":1,"at":"2026-01-02T03:04:05.000006+00:00","event":')
    with pytest.raises(ValueError):
        export_line(row[:7])  # type: ignore[arg-type]


def test_an_export_is_read_a_page_at_a_time_past_blank_lines() -> None:
    rows = chain(7)
    lines = _export(rows)
    lines.insert(4, "")
    lines.insert(6, "  \n")
    source = read_export(lines, page_rows=2)
    assert [len(page) for page in source.pages()] == [2, 2, 2, 1]
    report = verify_source(read_export(lines))
    assert report.ok and report.entries == 7
    empty = read_export([export_header(None, "t")])
    assert empty.head is None
    assert [p.kind for p in verify_source(empty).problems] == [ProblemKind.HEAD_MISSING]


def test_a_bad_export_line_is_named_exactly() -> None:
    rows = chain(4)
    entry = json.loads(export_line(rows[2]))
    fields = "seq, at, event, actor, subject, details, prev_hash, hash"
    bad_lines = {
        "{not json": "export line 4 is not JSON",
        "[1]": f"export line 4 does not hold exactly the fields {fields}",
        json.dumps({k: v for k, v in entry.items() if k != "at"}): (
            f"export line 4 does not hold exactly the fields {fields}"
        ),
        json.dumps(dict(entry, note="x")): f"export line 4 does not hold exactly the fields {fields}",
        json.dumps(dict(entry, seq="3")): "export line 4: seq is not a whole number",
        json.dumps(dict(entry, at=5)): "export line 4: a text field is not a string",
        json.dumps(dict(entry, hash=None)): "export line 4: a text field is not a string",
    }
    for line, message in bad_lines.items():
        lines = _export(rows)
        lines[3] = line
        report = verify_source(read_export(lines, page_rows=1))
        assert report.problems == (AuditProblem(ProblemKind.MALFORMED_ENTRY, f"entry 3: {message}", 3),), line
        assert report.entries == 2


def test_a_file_that_is_not_an_export_is_refused_exactly() -> None:
    head = json.loads(export_header(ChainHead(1, H), "t"))
    not_an_export = "not a vdno audit export: the first line is not a vdno-audit-export/1 header"
    bad_head = "the export header's head must hold seq and hash"
    refused = {
        "no lines": ([], not_an_export),
        "not JSON": (["{not json"], not_an_export),
        "a list": (["[]"], not_an_export),
        "another format": ([json.dumps(dict(head, format="vdno-audit-export/2"))], not_an_export),
        "no head": ([json.dumps({k: v for k, v in head.items() if k != "head"})], not_an_export),
        "a head with more": ([json.dumps(dict(head, head={"seq": 1, "hash": H, "at": "t"}))], bad_head),
        "a head not an object": ([json.dumps(dict(head, head=[1, H]))], bad_head),
    }
    for what, (lines, message) in refused.items():
        with pytest.raises(AuditDocumentInvalid) as caught:
            read_export(lines)
        assert str(caught.value) == message, what
