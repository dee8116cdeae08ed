"""The hash-chained audit log as values, and its offline verification.

An entry's record (its body) is the ASCII JSON array [prev_hash, seq, at, event, actor, subject, details]
with separators "," and ":" (Python json.dumps with ensure_ascii), `details` being the JSON text of the
event's details; its hash is SHA-256 over those bytes, and the first entry links to GENESIS_HASH. The body
is what the log stores and what every reader shows (docs/operations.md "Reading the audit log"); the
database's readable columns are a search index only. Verification reads (seq, body, hash) records in seq
order in pages (constant memory): the seq is the next one, the body starts with the previous entry's hash
and its own seq, and the hash is SHA-256 of the body. It stops at the first bad entry and names it, checks
the chain head, and checks that the log reaches every signed checkpoint given
(server/domain/checkpoint.py): the entry with the checkpoint's seq exists and has the hash the checkpoint
signed. A log can be walked in seq ranges (one per process) whose walks are then joined (`join_walks`).
No database or file access here: sources hand in pages of records."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from vdno.server.domain.errors import AuditDocumentInvalid

GENESIS_HASH = "0" * 64
EXPORT_FORMAT = "vdno-audit-export/1"
ENTRY_FIELDS = ("seq", "at", "event", "actor", "subject", "details", "prev_hash", "hash")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# One entry as readers show it: (seq, at, event, actor, subject, details, prev_hash, hash).
AuditRow = tuple[int, str, str, str, str, str, str, str]
# One entry as the log records it: (seq, body, hash); the body is entry_body's bytes.
AuditRecord = tuple[int, bytes, str]


def entry_body(
    prev_hash: str, seq: int, at: str, event: str, actor: str, subject: str, details: str
) -> bytes:
    """The entry's record: byte for byte the JSON the log has always hashed; built from the C string escaper
    instead of a JSON encoder (a third of the cost). `prev_hash` must be 64 hex digits (a hash)."""
    esc = encode_basestring_ascii
    body = f'["{prev_hash}",{seq:d},{esc(at)},{esc(event)},{esc(actor)},{esc(subject)},{esc(details)}]'
    return body.encode("ascii")


def entry_hash(prev_hash: str, seq: int, at: str, event: str, actor: str, subject: str, details: str) -> str:
    """The entry's chain hash: SHA-256 of its body."""
    return hashlib.sha256(entry_body(prev_hash, seq, at, event, actor, subject, details)).hexdigest()


def record_of(row: AuditRow) -> AuditRecord:
    """The record of an entry given field by field (an export line): its body built from the fields.
    TypeError or ValueError when a field has the wrong type."""
    seq, at, event, actor, subject, details, prev_hash, digest = row
    if type(seq) is not int or not all(
        type(v) is str for v in (at, event, actor, subject, details, prev_hash)
    ):
        raise TypeError("an entry's seq is a whole number and its other fields are text")
    return seq, entry_body(prev_hash, seq, at, event, actor, subject, details), digest


def row_of(record: AuditRecord) -> AuditRow:
    """An entry's fields read from its record's body (what readers show; the readable columns of the
    database are not consulted), its seq being its place in the log, which verification checks the body
    names. AuditDocumentInvalid when the body is not a record entry_body wrote."""
    seq, body, digest = record
    try:
        fields = _decode(body.decode("ascii")) if type(body) is bytes else None
    except ValueError:
        fields = None
    if (
        type(fields) is not list
        or len(fields) != 7
        or type(fields[1]) is not int
        or not all(type(v) is str for i, v in enumerate(fields) if i != 1)
        or not is_hash(fields[0])
        or entry_body(*fields) != body
    ):
        raise AuditDocumentInvalid(f"entry {seq}: its record is not an audit entry's JSON array")
    prev_hash, _, at, event, actor, subject, details = fields
    return seq, at, event, actor, subject, details, prev_hash, digest


def is_hash(value: object) -> bool:
    return isinstance(value, str) and _HEX64.match(value) is not None


@dataclass(frozen=True)
class ChainHead:
    """An entry's place in the chain: its seq and hash (seq 0 is the empty log, GENESIS_HASH)."""

    seq: int
    hash: str

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise AuditDocumentInvalid(f"seq must be a whole number from 0, not {self.seq!r:.40}")
        if not is_hash(self.hash):
            raise AuditDocumentInvalid(f"hash must be 64 lower-case hex digits, not {self.hash!r:.80}")

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


GENESIS = ChainHead(0, GENESIS_HASH)


@dataclass(frozen=True)
class AuditTip:
    """The chain head row as a writer sees it, with what the log holds at and after it (one snapshot)."""

    head: ChainHead
    entry_hash: str | None  # the hash of entry head.seq (None when there is no such entry)
    beyond: bool  # an entry with a seq after the head's exists


class ProblemKind(StrEnum):
    SEQUENCE_GAP = "sequence-gap"  # an entry is missing: the next one has a higher seq
    OUT_OF_ORDER = "out-of-order"  # an entry repeats or goes back in seq (exports)
    BROKEN_LINK = "broken-link"  # prev_hash is not the previous entry's hash
    HASH_MISMATCH = "hash-mismatch"  # the hash does not recompute from the entry's content
    MALFORMED_ENTRY = "malformed-entry"  # a field has the wrong type, or an export line is unreadable
    HEAD_MISSING = "head-missing"  # the database has no chain head row
    HEAD_MISMATCH = "head-mismatch"  # the chain head does not name the last entry
    CHECKPOINT_MALFORMED = "checkpoint-malformed"
    CHECKPOINT_WRONG_KEY = "checkpoint-wrong-key"  # signed by a key other than the audit key
    CHECKPOINT_BAD_SIGNATURE = "checkpoint-bad-signature"  # forged or altered
    LOG_TRUNCATED = "log-truncated"  # the log ends before a checkpoint's entry
    LOG_REWRITTEN = "log-rewritten"  # the checkpoint's entry has another hash than the one signed


@dataclass(frozen=True)
class AuditProblem:
    kind: ProblemKind
    message: str
    seq: int | None = None  # the first bad entry, where one can be named
    checkpoint: str | None = None  # where the checkpoint involved came from (a file name)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "seq": self.seq,
            "checkpoint": self.checkpoint,
            "message": self.message,
        }


class CheckpointStatus(StrEnum):
    REACHED = "reached"  # signature good, and the log holds the signed entry
    NOT_CHECKED = "not-checked"  # signature good, but the chain broke before its entry
    FAILED = "failed"  # see the report's problems


@dataclass(frozen=True)
class CheckpointClaim:
    """A checkpoint whose signature verified: the log must hold entry `head.seq` with `head.hash`."""

    source: str
    head: ChainHead


@dataclass(frozen=True)
class CheckpointResult:
    source: str
    seq: int | None
    status: CheckpointStatus

    def as_json(self) -> dict[str, Any]:
        return {"checkpoint": self.source, "seq": self.seq, "status": self.status.value}


@dataclass(frozen=True)
class AuditReport:
    entries: int  # entries verified from seq 1 (all of them when the chain is intact)
    last: ChainHead  # the last verified entry (GENESIS when none)
    head: ChainHead | None  # the chain head the source holds
    problems: tuple[AuditProblem, ...] = ()
    checkpoints: tuple[CheckpointResult, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "last": self.last.as_json(),
            "head": None if self.head is None else self.head.as_json(),
            "first_bad_seq": self.first_bad_seq,
            "problems": [p.as_json() for p in self.problems],
            "checkpoints": [c.as_json() for c in self.checkpoints],
        }


class AuditSource(Protocol):
    """Entries from one consistent view of the log (a database snapshot or an export file)."""

    @property
    def head(self) -> ChainHead | None:
        """The chain head the source holds (None: missing). AuditDocumentInvalid when it is malformed."""
        ...

    def walk(self, watch: set[int]) -> ChainWalk:
        """Every entry walked in seq order (walk_records over the source's pages, or ranges of them walked
        apart and joined with join_walks), keeping the hashes of the seqs in `watch`."""
        ...


@dataclass(frozen=True)
class ChainWalk:
    """Outcome of walking entries from `start`: the entries verified, the last good one, and the first
    problem found."""

    start: ChainHead  # the entry walked from (GENESIS for the whole log), not itself verified here
    count: int
    last: ChainHead
    problem: AuditProblem | None
    reached: dict[int, str]  # watched seq -> the hash of the entry found there


def walk_records(
    pages: Iterable[Sequence[AuditRecord]], watch: set[int], start: ChainHead = GENESIS
) -> ChainWalk:
    """Verify records in order after `start` until the first bad one; keeps the hash of every seq in
    `watch`. The loop is the whole cost of verification: locals only, one prefix comparison and one
    SHA-256 per entry (the body's layout is entry_body's: `["<prev_hash>",<seq>,...`)."""
    reached: dict[int, str] = {start.seq: start.hash} if start.seq in watch else {}
    prev, expected = start.hash, start.seq
    sha256 = hashlib.sha256
    problem: AuditProblem | None = None
    try:
        for page in pages:
            for seq, body, digest in page:
                expected += 1
                if seq != expected:
                    problem = _order_problem(seq, expected)
                    break
                try:
                    if (
                        body.startswith(b'["%s",%d,' % (prev.encode(), seq))
                        and sha256(body).hexdigest() == digest
                    ):
                        prev = digest
                        if seq in watch:
                            reached[seq] = digest
                        continue
                except (TypeError, AttributeError):
                    pass
                problem = _record_problem(seq, body, prev)
                break
            if problem is not None:
                expected -= 1  # the bad entry is not counted
                break
    except AuditDocumentInvalid as exc:
        problem = AuditProblem(ProblemKind.MALFORMED_ENTRY, f"entry {expected + 1}: {exc}", expected + 1)
    return ChainWalk(start, expected - start.seq, ChainHead(expected, prev), problem, reached)


def _record_problem(seq: int, body: object, prev: str) -> AuditProblem:
    """What is wrong with entry `seq`, whose record failed walk_records's checks."""
    if type(body) is not bytes:
        missing = "missing" if body is None else "not bytes"
        return AuditProblem(ProblemKind.MALFORMED_ENTRY, f"entry {seq}: its record is {missing}", seq)
    if body[:2] != b'["' or body[66:68] != b'",' or not is_hash(body[2:66].decode("ascii", "replace")):
        return AuditProblem(
            ProblemKind.MALFORMED_ENTRY, f"entry {seq}: its record does not start with a prev_hash", seq
        )
    if body[2:66] != prev.encode():
        genesis = " (the genesis hash)" if seq == 1 else ""
        return AuditProblem(
            ProblemKind.BROKEN_LINK,
            f"entry {seq}: prev_hash does not link to entry {seq - 1}'s hash{genesis}",
            seq,
        )
    if not body.startswith(b'["%s",%d,' % (prev.encode(), seq)):
        return AuditProblem(
            ProblemKind.MALFORMED_ENTRY, f"entry {seq}: its record names another seq than {seq}", seq
        )
    return AuditProblem(ProblemKind.HASH_MISMATCH, f"entry {seq}: hash does not match its content", seq)


def join_walks(walks: Sequence[ChainWalk]) -> ChainWalk | None:
    """The walk of the whole log from walks of consecutive seq ranges, each started from the entry before
    its range (read, not verified, by its walker). None when they do not join up as an intact chain
    (a range has a problem, ended early, or starts from another entry than the one before verified):
    then walk the log in one pass from the start (walk_records), which names the first bad entry."""
    last, count, reached = GENESIS, 0, {}
    for walk in walks:
        if walk.problem is not None or walk.start != last:
            return None
        last, count = walk.last, count + walk.count
        reached.update(walk.reached)
    return ChainWalk(GENESIS, count, last, None, reached)


def _order_problem(seq: object, expected: int) -> AuditProblem:
    if isinstance(seq, int) and not isinstance(seq, bool) and seq > expected:
        also = "" if seq == expected + 1 else f", and so are entries up to {seq - 1}"
        return AuditProblem(
            ProblemKind.SEQUENCE_GAP,
            f"entry {expected}: missing{also} (sequence gap: the next entry is seq {seq})",
            expected,
        )
    return AuditProblem(
        ProblemKind.OUT_OF_ORDER,
        f"entry {expected}: out of order (found seq {seq!r:.20} in its place)",
        expected,
    )


def verify_source(
    source: AuditSource,
    claims: Sequence[CheckpointClaim] = (),
    prior: Sequence[AuditProblem] = (),
    prior_results: Sequence[CheckpointResult] = (),
) -> AuditReport:
    """Walk `source` and check it against verified checkpoint claims. `prior`: problems already found in
    checkpoint documents (bad signature, wrong key, malformed), with their results."""
    try:
        head, head_error = source.head, None
    except AuditDocumentInvalid as exc:
        head, head_error = None, str(exc)
    walk = source.walk({claim.head.seq for claim in claims})
    problems = list(prior)
    if walk.problem is not None:
        problems.append(walk.problem)
    results = list(prior_results)
    for claim in claims:
        seq, signed = claim.head.seq, claim.head.hash
        found = walk.reached.get(seq)
        if found is None and walk.problem is not None:
            results.append(CheckpointResult(claim.source, seq, CheckpointStatus.NOT_CHECKED))
            continue
        if found is None:
            first = walk.last.seq + 1
            missing = f"entry {seq}" if first == seq else f"entries {first}-{seq}"
            problems.append(
                AuditProblem(
                    ProblemKind.LOG_TRUNCATED,
                    f"entry {first}: missing: checkpoint {claim.source} signed the log up to entry {seq}, "
                    f"but the log ends at entry {walk.last.seq} ({missing} removed: tail truncation)",
                    first,
                    claim.source,
                )
            )
        elif found != signed:
            problems.append(
                AuditProblem(
                    ProblemKind.LOG_REWRITTEN,
                    f"entry {seq}: hash differs from the one checkpoint {claim.source} signed (the log at or "
                    f"before entry {seq} was changed and the chain re-hashed)",
                    seq,
                    claim.source,
                )
            )
        else:
            results.append(CheckpointResult(claim.source, seq, CheckpointStatus.REACHED))
            continue
        results.append(CheckpointResult(claim.source, seq, CheckpointStatus.FAILED))
    if head_error is not None:
        problems.append(AuditProblem(ProblemKind.HEAD_MISMATCH, head_error))
    elif head is None:
        problems.append(
            AuditProblem(ProblemKind.HEAD_MISSING, "the chain head row (audit_head id 1) is missing")
        )
    elif walk.problem is None and head != walk.last:
        problems.append(_head_problem(head, walk.last))
    return AuditReport(walk.count, walk.last, head, tuple(problems), tuple(results))


def _head_problem(head: ChainHead, last: ChainHead) -> AuditProblem:
    if head.seq > last.seq:
        return AuditProblem(
            ProblemKind.HEAD_MISMATCH,
            f"entry {last.seq + 1}: missing: the chain head names entry {head.seq}, but the log ends "
            f"at entry {last.seq} (truncated log)",
            last.seq + 1,
        )
    if head.seq < last.seq:
        return AuditProblem(
            ProblemKind.HEAD_MISMATCH,
            f"entry {head.seq + 1}: beyond the chain head, which names entry {head.seq} (the log ends at "
            f"entry {last.seq})",
            head.seq + 1,
        )
    return AuditProblem(
        ProblemKind.HEAD_MISMATCH,
        f"entry {last.seq}: the chain head names it with another hash",
        last.seq,
    )


# -- export files: JSON lines, a header line with the chain head, then one line per entry in seq order

_EXPORT_LINE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_decode = json.JSONDecoder().decode
_FIELD_SET = frozenset(ENTRY_FIELDS)


def export_header(head: ChainHead | None, exported_at: str) -> str:
    document = {
        "format": EXPORT_FORMAT,
        "exported_at": exported_at,
        "head": None if head is None else head.as_json(),
    }
    return _EXPORT_LINE.encode(document)


def export_line(row: AuditRow) -> str:
    """One entry, its fields as its record holds them (row_of; details is the JSON text that was hashed)."""
    return _EXPORT_LINE.encode(dict(zip(ENTRY_FIELDS, row, strict=True)))


def _row_of(line: str, number: int) -> AuditRow:
    try:
        entry = _decode(line)
    except ValueError:
        raise AuditDocumentInvalid(f"export line {number} is not JSON") from None
    if type(entry) is not dict or entry.keys() != _FIELD_SET:
        fields = ", ".join(ENTRY_FIELDS)
        raise AuditDocumentInvalid(f"export line {number} does not hold exactly the fields {fields}")
    row = (
        entry["seq"],
        entry["at"],
        entry["event"],
        entry["actor"],
        entry["subject"],
        entry["details"],
        entry["prev_hash"],
        entry["hash"],
    )
    if type(row[0]) is not int:
        raise AuditDocumentInvalid(f"export line {number}: seq is not a whole number")
    for value in row[1:]:
        if type(value) is not str:
            raise AuditDocumentInvalid(f"export line {number}: a text field is not a string")
    return row


class ExportSource:
    """An export file read lazily: the header first (read_export), then entries a page at a time."""

    def __init__(self, head: ChainHead | None, lines: Iterator[str], page_rows: int) -> None:
        self._head = head
        self._lines = lines
        self._page_rows = page_rows

    @property
    def head(self) -> ChainHead | None:
        return self._head

    def walk(self, watch: set[int]) -> ChainWalk:
        return walk_records(self.pages(), watch)

    def pages(self) -> Iterator[Sequence[AuditRecord]]:
        """The entries' records, a page at a time: each body built from its line's fields."""
        page: list[AuditRecord] = []
        for number, line in enumerate(self._lines, start=2):
            if not line.strip():
                continue
            try:
                page.append(record_of(_row_of(line, number)))
            except AuditDocumentInvalid:
                if page:
                    yield page  # walked first, so that the bad line is named as the entry after them
                raise
            if len(page) >= self._page_rows:
                yield page
                page = []
        if page:
            yield page


def read_export(lines: Iterable[str], page_rows: int = 2000) -> ExportSource:
    """The export whose lines these are. AuditDocumentInvalid when the header is not an export header."""
    it = iter(lines)
    first = next(it, "")
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT or "head" not in header:
        raise AuditDocumentInvalid(f"not a vdno audit export: the first line is not a {EXPORT_FORMAT} header")
    raw_head = header["head"]
    head = None
    if raw_head is not None:
        if not isinstance(raw_head, dict) or set(raw_head) != {"seq", "hash"}:
            raise AuditDocumentInvalid("the export header's head must hold seq and hash")
        head = ChainHead(raw_head["seq"], raw_head["hash"])
    return ExportSource(head, it, page_rows)
