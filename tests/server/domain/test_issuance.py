"""HandOutService against a real SQLite store: what a retry is given (the readings' checks are tested end
to end in tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.hazmat.primitives.serialization import Encoding
from test_pipeline import SoftwareSigner, parties, signer, store  # noqa: F401 (fixtures)

from vdno.labpki.smki import make_device_ca, make_root_ca
from vdno.server.domain.issuance import HandOutService
from vdno.server.domain.policy import TrustAnchors
from vdno.server.domain.values import HandOutRequest, IssuanceDraft
from vdno.server.store.sql import SqlCustodyStore

DEVICE = bytes.fromhex("00DB1234567890A0")


class RecordingStore:
    """The real store, with its ensure_durable calls counted."""

    def __init__(self, inner: SqlCustodyStore) -> None:
        self._inner = inner
        self.durable_calls = 0

    def ensure_durable(self) -> None:
        self.durable_calls += 1
        self._inner.ensure_durable()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_retry_gets_the_stored_command_only_after_the_store_made_it_durable(
    store: SqlCustodyStore,  # noqa: F811 (the fixture imported above)
    signer: SoftwareSigner,  # noqa: F811
    parties,  # noqa: F811
) -> None:
    generation, area, issuing_ca, _ = parties
    root = make_root_ca()
    anchors = TrustAnchors(
        root.certificate.public_bytes(Encoding.DER),
        issuing_ca,
        make_device_ca(root).certificate.public_bytes(Encoding.DER),
    )
    store.enroll_bench("bench-01", "test")
    request = HandOutRequest("bench-01", "retry-1", DEVICE, area.area_id, b"cert", b"cs02a")
    draft = IssuanceDraft(
        "bench-01", "retry-1", request.fingerprint(), DEVICE, area.area_id, generation.generation, b"cert"
    )
    (begun,) = store.write_issuance_step((), (), ((draft, 1),)).begun
    assert not isinstance(begun, Exception)
    (stored,) = store.write_issuance_step(((begun[0], b"\xdf stored"),), (), ()).stored
    assert not isinstance(stored, Exception)
    recording = RecordingStore(store)
    service = HandOutService(recording, signer, anchors, lambda: datetime.now(UTC))  # type: ignore[arg-type]
    try:
        # The readings no longer pass (b"cert" is no device certificate), but the request id was released
        # before: the retry gets the stored bytes, made durable first.
        command = service.hand_out(request)
    finally:
        service.close()
    assert command.command == b"\xdf stored" and command.issuance_id == begun[0].issuance_id
    assert recording.durable_calls == 1
