"""Custody housekeeping: signing generations whose certificates expire within the warning window are found
and logged (once a day each); a destruction whose grace period is over is carried out without an officer.
Real SQLite store and lab SMKI certificates; the key ceremony records what it is asked to delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_organisation_certificate, new_p256_key
from vdno.server.domain.custody import CustodyService, CustodySettings, GeneratedKey
from vdno.server.domain.policy import TrustAnchors
from vdno.server.domain.values import GenerationRecord, GenerationStatus
from vdno.server.housekeeping import CustodyHousekeeping
from vdno.server.store.sql import open_store


class RecordingCeremony:
    """Stands in for the token in this test: remembers which key pairs custody deletes."""

    def __init__(self) -> None:
        self.destroyed: list[str] = []

    def generate_key_pair(self, label: str, key_id: bytes) -> GeneratedKey:
        raise AssertionError("not used here")

    def public_key(self, key_uri: str) -> bytes:
        raise AssertionError("not used here")

    def certificate_request(self, key_uri: str, subject: Any) -> bytes:
        raise AssertionError("not used here")

    def destroy_key_pair(self, key_uri: str) -> bool:
        self.destroyed.append(key_uri)
        return True


def test_expiring_generations_are_warned_and_due_destructions_carried_out(tmp_path: Path) -> None:
    pki = LabHierarchy.create()
    store = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    now = datetime.now(UTC)
    der = lambda c: c.public_bytes(Encoding.DER)  # noqa: E731

    def generation(entity: bytes, issued: datetime, years: int, status: GenerationStatus) -> int:
        record = GenerationRecord(
            0, entity, "pkcs11:object=g-ds", "pkcs11:object=g-ka", GenerationStatus.PENDING, False, now
        )
        number = store.create_generation(record, {}, "test")
        ds, ka = (
            der(
                issue_organisation_certificate(
                    pki.issuing_ca, new_p256_key().public_key(), entity, 3, u, now=issued, years=years
                )
            )
            for u in ("ds", "ka")
        )
        store.certify_generation(number, ds, ka, {}, "test")
        if status is not GenerationStatus.CERTIFIED:
            store.change_generation(number, (GenerationStatus.CERTIFIED,), status, "test", "test", {})
        return number

    expiring = generation(b"VDNO\x00\x00\x00\x01", now - timedelta(days=320), 1, GenerationStatus.ACTIVE)
    generation(
        b"VDNO\x00\x00\x00\x02", now - timedelta(days=1), 10, GenerationStatus.SIGNING_ONLY
    )  # years left
    doomed = generation(b"VDNO\x00\x00\x00\x03", now - timedelta(days=320), 1, GenerationStatus.DISABLED)
    store.change_generation(
        doomed, (GenerationStatus.DISABLED,), GenerationStatus.DESTROY_SCHEDULED, "test", "test", {},
        values={"destroy_after": now - timedelta(minutes=1)},
    )  # fmt: skip
    ceremony = RecordingCeremony()
    anchors = TrustAnchors(
        der(pki.root.certificate), der(pki.issuing_ca.certificate), der(pki.device_ca.certificate)
    )
    custody = CustodyService(store, ceremony, None, anchors, CustodySettings(), lambda: datetime.now(UTC))
    housekeeping = CustodyHousekeeping(custody, interval=3600)
    try:
        with structlog.testing.capture_logs() as logs:
            housekeeping.run_once()
            housekeeping.run_once()  # the same day: no second warning
        assert [v.record.generation for v in housekeeping.expiring] == [expiring]
        assert 40 <= (housekeeping.expiring[0].days_to_expiry or 0) <= 50
        warnings = [e for e in logs if e["event"] == "generation.expiring"]
        assert [w["generation"] for w in warnings] == [expiring]
        assert ceremony.destroyed == ["pkcs11:object=g-ds", "pkcs11:object=g-ka"]
        statuses = {r.generation: r.status for r in store.list_generation_records()}
        assert (
            statuses[doomed] is GenerationStatus.DESTROYED and statuses[expiring] is GenerationStatus.ACTIVE
        )
    finally:
        store.close()
