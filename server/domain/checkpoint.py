"""Signed checkpoints of the audit log: the audit key in the HSM signs the chain head (seq and hash) at a
time, so that deleting the newest entries, or rewriting the log and re-hashing it, is found offline by
checking the log against a checkpoint taken before (server/domain/audit.py).

A checkpoint document is JSON:
    {"format": "vdno-audit-checkpoint/1", "seq": N, "head_hash": "<64 hex>", "at": "<RFC 3339>",
     "key_id": "<SHA-256 of the audit public key's DER SubjectPublicKeyInfo, hex>",
     "signature_algorithm": "ECDSA-P256-SHA256", "signature": "<r || s, 64 bytes, hex>"}
The signature is ECDSA P-256 over SHA-256 of the canonical payload: the JSON object with exactly the keys
at, format, head_hash and seq, sorted, without white space, ASCII, e.g.
    {"at":"2026-01-02T03:04:05.123456+00:00","format":"vdno-audit-checkpoint/1","head_hash":"...","seq":42}"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.audit import (
    GENESIS_HASH,
    AuditProblem,
    AuditReport,
    AuditSource,
    ChainHead,
    CheckpointClaim,
    CheckpointResult,
    CheckpointStatus,
    ProblemKind,
    is_hash,
    verify_source,
)
from vdno.server.domain.errors import (
    AuditChainBroken,
    AuditDocumentInvalid,
    AuditKeyNotConfigured,
    SignatureCheckFailed,
)
from vdno.server.domain.policy import require_enrolled_officer
from vdno.server.domain.ports import AuditLogStore, DigestSigner
from vdno.server.domain.values import AuditEvent

CHECKPOINT_FORMAT = "vdno-audit-checkpoint/1"
SIGNATURE_ALGORITHM = "ECDSA-P256-SHA256"
DOCUMENT_FIELDS = frozenset(
    {"format", "seq", "head_hash", "at", "key_id", "signature_algorithm", "signature"}
)
_PAYLOAD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))
_SIGNATURE_HEX = re.compile(r"^[0-9a-f]{128}$")


def key_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, hex."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM (SubjectPublicKeyInfo). AuditDocumentInvalid otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise AuditDocumentInvalid("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AuditDocumentInvalid("not an EC P-256 public key")
    return key


@dataclass(frozen=True)
class AuditKey:
    """The audit checkpoint key: the PKCS#11 URI of its private half in the HSM, and its public key."""

    uri: str
    public_key: ec.EllipticCurvePublicKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)


def _timestamp(value: object) -> str:
    if not isinstance(value, str):
        raise AuditDocumentInvalid("at must be an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise AuditDocumentInvalid(f"at is not an RFC 3339 time: {value!r:.40}") from None
    if parsed.tzinfo is None:
        raise AuditDocumentInvalid("at must name its UTC offset")
    return value


@dataclass(frozen=True)
class AuditCheckpoint:
    head: ChainHead  # the chain head signed: the log held entry head.seq with head.hash
    at: str  # when, RFC 3339 with offset
    key_id: str
    signature: bytes  # r || s

    def __post_init__(self) -> None:
        _timestamp(self.at)
        if not is_hash(self.key_id):
            raise AuditDocumentInvalid("key_id must be 64 lower-case hex digits")
        if len(self.signature) != 64:
            raise AuditDocumentInvalid("signature must be 64 bytes (r || s)")

    @staticmethod
    def payload_of(head: ChainHead, at: str) -> bytes:
        """The canonical bytes that are signed."""
        document = {
            "format": CHECKPOINT_FORMAT,
            "seq": head.seq,
            "head_hash": head.hash,
            "at": _timestamp(at),
        }
        return _PAYLOAD.encode(document).encode("utf-8")

    @staticmethod
    def digest_of(head: ChainHead, at: str) -> bytes:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(AuditCheckpoint.payload_of(head, at))
        return digest.finalize()

    def to_document(self) -> str:
        document = {
            "format": CHECKPOINT_FORMAT,
            "seq": self.head.seq,
            "head_hash": self.head.hash,
            "at": self.at,
            "key_id": self.key_id,
            "signature_algorithm": SIGNATURE_ALGORITHM,
            "signature": self.signature.hex(),
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_document(cls, text: str | bytes) -> AuditCheckpoint:
        """AuditDocumentInvalid, naming what is wrong, unless `text` is a checkpoint document."""
        try:
            document: Any = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise AuditDocumentInvalid("not JSON") from None
        if not isinstance(document, dict):
            raise AuditDocumentInvalid("not a JSON object")
        if document.get("format") != CHECKPOINT_FORMAT:
            raise AuditDocumentInvalid(f"format is not {CHECKPOINT_FORMAT}")
        if set(document) != DOCUMENT_FIELDS:
            missing, extra = sorted(DOCUMENT_FIELDS - set(document)), sorted(set(document) - DOCUMENT_FIELDS)
            raise AuditDocumentInvalid(
                f"fields missing: {missing or 'none'}; unknown fields: {extra or 'none'}"
            )
        if document["signature_algorithm"] != SIGNATURE_ALGORITHM:
            raise AuditDocumentInvalid(f"signature_algorithm is not {SIGNATURE_ALGORITHM}")
        signature = document["signature"]
        if not isinstance(signature, str) or not _SIGNATURE_HEX.match(signature):
            raise AuditDocumentInvalid("signature must be 128 lower-case hex digits (r || s)")
        return cls(
            ChainHead(document["seq"], document["head_hash"]),
            document["at"],
            document["key_id"],
            bytes.fromhex(signature),
        )

    def signed_by(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        """Whether the signature verifies with `public_key` (the key id is not looked at)."""
        try:
            public_key.verify(raw_to_der(self.signature), self.digest_of(self.head, self.at), _PREHASHED)
        except InvalidSignature:
            return False
        return True

    def check(self, source: str, public_key: ec.EllipticCurvePublicKey) -> AuditProblem | None:
        """None when the audit key signed this checkpoint; else the problem, naming `source`."""
        expected = key_id_of(public_key)
        if self.key_id != expected:
            return AuditProblem(
                ProblemKind.CHECKPOINT_WRONG_KEY,
                f"checkpoint {source}: signed by key {self.key_id[:16]}..., "
                f"not the audit key {expected[:16]}...",
                checkpoint=source,
            )
        if not self.signed_by(public_key):
            return AuditProblem(
                ProblemKind.CHECKPOINT_BAD_SIGNATURE,
                f"checkpoint {source}: the signature does not verify with the audit key (forged or altered)",
                checkpoint=source,
            )
        return None


def verify_against_checkpoints(
    source: AuditSource,
    documents: Sequence[tuple[str, str | bytes]],
    public_key: ec.EllipticCurvePublicKey | None,
) -> AuditReport:
    """Verify the log `source` holds, and that it reaches every checkpoint in `documents` ((name, text)
    pairs) that the audit key signed; a checkpoint that is malformed, signed by another key or forged is
    a problem of its own. `public_key` may be None only when there are no documents."""
    if documents and public_key is None:
        raise AuditKeyNotConfigured("checking checkpoints needs the audit public key")
    claims: list[CheckpointClaim] = []
    problems: list[AuditProblem] = []
    results: list[CheckpointResult] = []
    for name, text in documents:
        try:
            checkpoint = AuditCheckpoint.from_document(text)
        except AuditDocumentInvalid as exc:
            problems.append(
                AuditProblem(
                    ProblemKind.CHECKPOINT_MALFORMED,
                    f"checkpoint {name}: not a checkpoint document: {exc}",
                    checkpoint=name,
                )
            )
            results.append(CheckpointResult(name, None, CheckpointStatus.FAILED))
            continue
        assert public_key is not None
        problem = checkpoint.check(name, public_key)
        if problem is None:
            claims.append(CheckpointClaim(name, checkpoint.head))
        else:
            problems.append(problem)
            results.append(CheckpointResult(name, checkpoint.head.seq, CheckpointStatus.FAILED))
    return verify_source(source, claims, problems, results)


class AuditCheckpoints:
    """Officers have the audit key sign the chain head. The head is read, made durable, signed in the HSM,
    verified in software with the configured public key, and audited (naming the officer) before the
    checkpoint is returned."""

    def __init__(
        self,
        store: AuditLogStore,
        signer: DigestSigner,
        key: AuditKey | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._signer = signer
        self._key = key
        self._clock = clock

    def create(self, officer_id: str) -> AuditCheckpoint:
        require_enrolled_officer(officer_id, self._store.get_officer(officer_id))
        key = self._key
        if key is None:
            raise AuditKeyNotConfigured(
                "checkpoints are unavailable: the server configuration has no [audit] table naming the audit "
                "key (`vdno-server init` adds it)"
            )
        tip = self._store.audit_tip()
        if tip is None:
            raise AuditChainBroken(
                "the audit log has no chain head row; verify it offline before checkpointing"
            )
        head = tip.head
        named = GENESIS_HASH if head.seq == 0 else tip.entry_hash
        if named != head.hash or tip.beyond:
            raise AuditChainBroken(
                f"the audit chain head (entry {head.seq}) does not name the newest entry; "
                "verify the log offline"
            )
        self._store.ensure_durable()  # a checkpoint never covers entries a crash could still lose
        at = self._clock().isoformat()
        digest = AuditCheckpoint.digest_of(head, at)
        [signature] = self._signer.sign_digests(key.uri, [digest])
        checkpoint = AuditCheckpoint(head, at, key.key_id, signature)
        if not checkpoint.signed_by(key.public_key):
            raise SignatureCheckFailed(
                "the audit key's signature does not verify with the configured audit public key; "
                "no checkpoint was made"
            )
        self._store.record_event(
            AuditEvent(
                "audit.checkpoint",
                f"officer:{officer_id}",
                "audit-log",
                {"seq": head.seq, "hash": head.hash, "at": at, "key_id": key.key_id},
            )
        )
        return checkpoint
