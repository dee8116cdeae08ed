"""AuditCheckpoints against a real SQLite store, with a software key standing in for the HSM (the HSM path
runs end to end in tests/integration/test_audit_checkpoints.py): what is refused before anything is signed
or recorded, and the checkpoint document's strictness."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text
from test_pipeline import SoftwareSigner

from vdno.server.domain.audit import ChainHead
from vdno.server.domain.checkpoint import AuditCheckpoint, AuditCheckpoints, AuditKey
from vdno.server.domain.errors import (
    AuditChainBroken,
    AuditDocumentInvalid,
    AuditKeyNotConfigured,
    OfficerNotEnrolled,
    SignatureCheckFailed,
)
from vdno.server.domain.values import OfficerStatus
from vdno.server.store.sql import SqlCustodyStore, open_store

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
URI = "pkcs11:token=vdno;object=vdno-audit;type=private"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlCustodyStore]:
    s = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    s.set_officer("officer-01", OfficerStatus.ENROLLED, "test")
    yield s
    s.close()


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def events(store: SqlCustodyStore, event: str) -> list[dict[str, object]]:
    with store.engine.connect() as c:
        rows = c.execute(
            text("SELECT actor, details FROM audit_log WHERE event = :e ORDER BY seq"), {"e": event}
        )
        return [{"actor": r.actor, **json.loads(r.details)} for r in rows]


def test_a_checkpoint_covers_the_head_verifies_and_is_audited(
    store: SqlCustodyStore, key: ec.EllipticCurvePrivateKey
) -> None:
    signer = SoftwareSigner(key)
    service = AuditCheckpoints(store, signer, AuditKey(URI, key.public_key()), lambda: NOW)
    checkpoint = service.create("officer-01")
    assert checkpoint.head.seq == 1 and checkpoint.at == NOW.isoformat()  # after the officer's enrolment
    assert checkpoint.signed_by(key.public_key()) and signer.jobs == 1
    assert events(store, "audit.checkpoint") == [
        {"actor": "officer:officer-01", "seq": 1, "hash": checkpoint.head.hash, "at": checkpoint.at,
         "key_id": checkpoint.key_id}
    ]  # fmt: skip
    assert service.create("officer-01").head.seq == 2  # the next one covers the first one's event


def test_refusals_come_before_anything_is_signed_or_recorded(
    store: SqlCustodyStore, key: ec.EllipticCurvePrivateKey
) -> None:
    signer = SoftwareSigner(key)
    with pytest.raises(OfficerNotEnrolled):
        AuditCheckpoints(store, signer, AuditKey(URI, key.public_key()), lambda: NOW).create("officer-99")
    with pytest.raises(AuditKeyNotConfigured, match=r"no \[audit\] table"):
        AuditCheckpoints(store, signer, None, lambda: NOW).create("officer-01")
    service = AuditCheckpoints(store, signer, AuditKey(URI, key.public_key()), lambda: NOW)
    with store.engine.begin() as c:  # the head moved back: entries lie beyond it
        c.execute(text("UPDATE audit_head SET seq = 0, hash = :h"), {"h": "0" * 64})
    with pytest.raises(AuditChainBroken, match="does not name the newest entry"):
        service.create("officer-01")
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    with pytest.raises(AuditChainBroken, match="no chain head row"):
        service.create("officer-01")
    assert signer.jobs == 0 and events(store, "audit.checkpoint") == []


def test_a_signature_the_configured_key_does_not_verify_is_not_released(
    store: SqlCustodyStore, key: ec.EllipticCurvePrivateKey
) -> None:
    configured = ec.generate_private_key(ec.SECP256R1()).public_key()  # not the key in the "token"
    service = AuditCheckpoints(store, SoftwareSigner(key), AuditKey(URI, configured), lambda: NOW)
    with pytest.raises(SignatureCheckFailed, match="no checkpoint was made"):
        service.create("officer-01")
    assert events(store, "audit.checkpoint") == []


def test_the_document_is_strict() -> None:
    checkpoint = AuditCheckpoint(ChainHead(7, "ab" * 32), NOW.isoformat(), "cd" * 32, bytes(range(64)))
    document = json.loads(checkpoint.to_document())
    assert AuditCheckpoint.from_document(json.dumps(document)) == checkpoint
    broken = {
        "an unknown field": dict(document, note="x"),
        "a missing field": {k: v for k, v in document.items() if k != "at"},
        "another format": dict(document, format="vdno-audit-checkpoint/2"),
        "a short signature": dict(document, signature="00" * 63),
        "a time without offset": dict(document, at="2026-11-30T12:00:00"),
        "a negative seq": dict(document, seq=-1),
        "an upper-case hash": dict(document, head_hash="AB" * 32),
    }
    for what, value in broken.items():
        with pytest.raises(AuditDocumentInvalid):
            AuditCheckpoint.from_document(json.dumps(value))
            pytest.fail(f"a document with {what} was accepted")
    with pytest.raises(AuditDocumentInvalid, match="not JSON"):
        AuditCheckpoint.from_document(b"\xff")
