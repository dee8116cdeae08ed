"""The issuance pipeline against a real SQLite store, signing with a software P-256 key (the DigestSigner
port; the PKCS#11 signer is tested in tests/server/hsm and end to end in tests/integration)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import load_certificate
from vdno.labpki.smki import (
    CertifiedKey,
    KeyUsageName,
    issue_organisation_certificate,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)
from vdno.server.domain.errors import (
    DeviceNotVanilla,
    HsmUnavailable,
    SignatureCheckFailed,
    StoreUnavailable,
    Unavailable,
)
from vdno.server.domain.pipeline import (
    MAX_DRAFTS_PER_STEP,
    IssuancePipeline,
    NewIssuance,
    Refused,
    UnfinishedIssuance,
)
from vdno.server.domain.values import (
    Area,
    GenerationStatus,
    HandOutRequest,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    IssuanceStep,
    RotationRequest,
    SignedCommand,
    VanillaGeneration,
)
from vdno.server.store.engine import make_engine, migrate
from vdno.server.store.sql import SqlCustodyStore

StoreT = TypeVar("StoreT", bound=SqlCustodyStore)

VANILLA = bytes.fromhex("564E4F0000000001")
AREA = bytes.fromhex("564E4F0000000010")
DEVICE = bytes.fromhex("00DB1234567890A0")


class SoftwareSigner:
    """DigestSigner over a software key; `fail` makes the next sign raise, `corrupt` return a bad r||s."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.fail = False
        self.corrupt = False
        self.jobs = 0

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        self.jobs += 1
        if self.fail:
            raise HsmUnavailable("the test token is unplugged")
        out = []
        for digest in digests:
            r, s = decode_dss_signature(self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
            raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            out.append(bytes(64 - len(raw)) + raw[::-1] if self.corrupt else raw)
        return out


def _der(cert: CertifiedKey) -> bytes:
    return cert.certificate.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def parties() -> tuple[VanillaGeneration, Area, bytes, ec.EllipticCurvePrivateKey]:
    root = make_root_ca()
    issuing = make_issuing_ca(root)
    vanilla_key = new_p256_key()

    def org(key: ec.EllipticCurvePrivateKey, entity: bytes, usage: KeyUsageName) -> bytes:
        cert = issue_organisation_certificate(issuing, key.public_key(), entity, 3, usage)
        return cert.public_bytes(Encoding.DER)

    generation = VanillaGeneration(
        1,
        VANILLA,
        "pkcs11:object=vanilla-ds",
        "pkcs11:object=vanilla-ka",
        org(vanilla_key, VANILLA, "ds"),
        org(new_p256_key(), VANILLA, "ka"),
        GenerationStatus.ACTIVE,
    )
    area = Area(
        10,
        "North Scotland",
        AREA,
        org(new_p256_key(), AREA, "ds"),
        org(new_p256_key(), AREA, "ka"),
    )
    return generation, area, _der(issuing), vanilla_key


def _prepared_store(kind: type[StoreT], tmp_path: Path, parties) -> StoreT:
    """A `kind` store (the real one or a subclass) on a migrated SQLite file, holding the generation, the
    area and bench-01 (an issuance needs an enrolled bench)."""
    generation, area, _, _ = parties
    engine = make_engine(f"sqlite:///{tmp_path / 'vdno.db'}")
    migrate(engine)
    s = kind(engine)
    s.add_generation(generation, "test")
    s.upsert_area(area, "test")
    s.enroll_bench("bench-01", "test")
    return s


@pytest.fixture
def store(tmp_path: Path, parties) -> Iterator[SqlCustodyStore]:
    s = _prepared_store(SqlCustodyStore, tmp_path, parties)
    yield s
    s.close()


@pytest.fixture
def signer(parties) -> SoftwareSigner:
    return SoftwareSigner(parties[3])


@pytest.fixture
def pipeline(store: SqlCustodyStore, signer: SoftwareSigner, parties) -> Iterator[IssuancePipeline]:
    _, _, issuing_ca, _ = parties
    p = IssuancePipeline(store, signer, issuing_ca, load_certificate, _validator(parties))
    yield p
    p.close()


def _request(request_id: str | None = None, readings: bytes = b"cs02a") -> HandOutRequest:
    """A request for a meter of its own (one outstanding command per meter): the device follows the id."""
    rid = request_id or uuid.uuid4().hex
    device = DEVICE[:2] + hashlib.sha256(rid.encode()).digest()[:6]
    return HandOutRequest("bench-01", rid, device, 10, b"cert", readings)


def _validator(parties) -> Callable[[HandOutRequest], NewIssuance]:
    """Stands in for HandOutService's checks of the readings (tested in tests/integration)."""
    generation, area, _, _ = parties

    def validate(request: HandOutRequest) -> NewIssuance:
        if request.credentials_response == b"not vanilla":
            raise DeviceNotVanilla("device 00db1234567890a0 does not hold an active vanilla generation")
        draft = IssuanceDraft(
            request.bench_id,
            request.request_id,
            request.fingerprint(),
            request.device_id,
            area.area_id,
            generation.generation,
            request.device_certificate,
        )
        return NewIssuance(draft, 1, generation, area.credentials)

    return validate


def _verify(command: SignedCommand, parties) -> None:
    generation = parties[0]
    message = decode_message(command.command)
    assert message.apdu.header.originator_counter == command.counter
    verify_message_signature(message, load_certificate(generation.ds_certificate).certificate)


def test_concurrent_issuance_is_recorded_signed_stored_and_verifiable(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: SoftwareSigner, parties
) -> None:
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: pipeline.issue(_request()), range(120)))
    assert all(isinstance(o, SignedCommand) for o in outcomes)
    commands = [o for o in outcomes if isinstance(o, SignedCommand)]
    assert len({c.counter for c in commands}) == 120
    for command in commands:
        _verify(command, parties)  # by `cryptography`, with the generation's certificate
    stored = {r.issuance_id: r for r in store.list_issuances()}
    for command in commands:
        record = stored[command.issuance_id]
        assert record.status is IssuanceStatus.SIGNED
        assert record.signed_command == command.command  # stored before it was released
    in_issuance_order = [stored[i].counter for i in sorted(stored)]
    assert in_issuance_order == sorted(in_issuance_order)
    assert signer.jobs < 120  # batched: one HSM job per step, not per issuance


def test_a_recorded_request_id_comes_back_as_its_record(pipeline: IssuancePipeline, parties) -> None:
    first = pipeline.issue(_request("r-1"))
    again = pipeline.issue(_request("r-1"))
    assert isinstance(first, SignedCommand)
    assert isinstance(again, IssuanceRecord)
    assert again.issuance_id == first.issuance_id and again.signed_command == first.command


def test_hsm_failure_is_marked_failed_before_the_caller_hears_and_a_retry_finishes_it(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: SoftwareSigner, parties
) -> None:
    signer.fail = True
    with pytest.raises(HsmUnavailable):
        pipeline.issue(_request("r-hsm"))
    (record,) = store.list_issuances()
    assert record.status is IssuanceStatus.FAILED and record.signed_command is None
    signer.fail = False
    generation, area, _, _ = parties
    done = pipeline.finish(UnfinishedIssuance(record, generation, area.credentials))
    assert done.counter == record.counter  # finished under its recorded counter
    _verify(done, parties)
    assert store.list_issuances()[0].signed_command == done.command


def test_a_refused_request_gets_its_error_and_nothing_is_recorded(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: SoftwareSigner
) -> None:
    refused = pipeline.issue(_request(readings=b"not vanilla"))
    assert isinstance(refused, Refused) and isinstance(refused.error, DeviceNotVanilla)
    good = pipeline.issue(_request())  # its neighbours are not affected
    assert isinstance(good, SignedCommand)
    assert [r.issuance_id for r in store.list_issuances()] == [good.issuance_id]


def test_a_signature_that_does_not_verify_is_never_released(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: SoftwareSigner, parties
) -> None:
    signer.corrupt = True
    with pytest.raises(SignatureCheckFailed, match="nothing was released"):
        pipeline.issue(_request("r-bad"))
    (record,) = store.list_issuances()
    assert record.status is IssuanceStatus.FAILED and record.signed_command is None


def test_store_down_means_no_signature(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: SoftwareSigner, parties, tmp_path: Path
) -> None:
    with store.engine.begin() as conn:  # the schema is gone: every write fails
        conn.exec_driver_sql("DROP TABLE counters")
    with pytest.raises(StoreUnavailable):
        pipeline.issue(_request())
    assert signer.jobs == 0


def test_close_finishes_what_was_submitted_then_refuses(
    store: SqlCustodyStore, signer: SoftwareSigner, parties
) -> None:
    pipeline = IssuancePipeline(store, signer, parties[2], load_certificate, _validator(parties))
    results: list[object] = []

    def bench() -> None:
        try:
            results.append(pipeline.issue(_request()))
        except Unavailable as exc:
            results.append(exc)

    threads = [threading.Thread(target=bench) for _ in range(16)]
    for t in threads:
        t.start()
    pipeline.close()  # while requests are in flight
    for t in threads:
        t.join()
    released = [r for r in results if isinstance(r, SignedCommand)]
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(released) + len(refused) == 16
    assert all("shutting down" in str(r) for r in refused)
    stored = {r.issuance_id: r for r in store.list_issuances()}
    assert all(stored[c.issuance_id].signed_command == c.command for c in released)
    assert all(r.status is IssuanceStatus.SIGNED for r in stored.values())  # nothing left half-done
    with pytest.raises(Unavailable, match="shutting down"):
        pipeline.issue(_request())


def test_a_verification_that_cannot_run_fails_that_request_only(
    store: SqlCustodyStore, signer: SoftwareSigner, parties
) -> None:
    def certificate(der: bytes):
        raise ValueError("certificate store unreadable")

    pipeline = IssuancePipeline(store, signer, parties[2], certificate, _validator(parties))
    try:
        with pytest.raises(SignatureCheckFailed):
            pipeline.issue(_request("r-unverifiable"))
        (record,) = store.list_issuances()
        assert record.status is IssuanceStatus.FAILED and record.signed_command is None
    finally:
        pipeline.close()


class _StoreWithOneBrokenStep(SqlCustodyStore):
    """The real store, except that one step answers with the wrong number of items (a defect)."""

    broken = True

    def write_issuance_step(self, signed, failed, drafts):  # type: ignore[no-untyped-def]
        step = super().write_issuance_step(signed, failed, drafts)
        if self.broken and drafts:
            self.broken = False
            return IssuanceStep(stored=step.stored, begun=())
        return step


def test_a_defect_in_a_step_fails_its_callers_and_the_pipeline_keeps_serving(
    tmp_path: Path, signer: SoftwareSigner, parties
) -> None:
    issuing_ca = parties[2]
    store = _prepared_store(_StoreWithOneBrokenStep, tmp_path, parties)
    pipeline = IssuancePipeline(store, signer, issuing_ca, load_certificate, _validator(parties))
    try:
        with pytest.raises(ValueError):
            pipeline.issue(_request("r-defect"))
        after = pipeline.issue(_request("r-after"))
        assert isinstance(after, SignedCommand)
        _verify(after, parties)
        by_request = {r.request_id: r for r in store.list_issuances()}
        assert by_request["r-defect"].signed_command is None  # recorded, never signed or released
    finally:
        pipeline.close()
        store.close()


def test_a_reply_hands_its_outcome_to_the_waiting_thread() -> None:
    import threading

    from vdno.server.domain.pipeline import Reply

    value: Reply[int] = Reply()
    failure: Reply[int] = Reply()
    assert value.done() is False
    threading.Timer(0.05, value.set_result, (7,)).start()
    assert value.result() == 7 and value.done()
    threading.Timer(0.05, failure.set_exception, (ValueError("no"),)).start()
    with pytest.raises(ValueError, match="no"):
        failure.result()
    assert failure.done()


class RecordingObserver:
    """An IssuanceObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.issuances: list[tuple[str, str, int | None]] = []
        self.steps: list[tuple[int, float, bool]] = []
        self.hsm_jobs: list[tuple[float, int, str | None]] = []
        self.rejected = 0

    def issuance(self, kind, outcome, generation) -> None:  # type: ignore[no-untyped-def]
        self.issuances.append((str(kind), str(outcome), generation))

    def step(self, requests: int, write_seconds: float, written: bool) -> None:
        self.steps.append((requests, write_seconds, written))

    def hsm_job(self, seconds: float, digests: int, error: str | None) -> None:
        self.hsm_jobs.append((seconds, digests, error))

    def hsm_signature_rejected(self) -> None:
        self.rejected += 1


class _StoreThatGoesDown(SqlCustodyStore):
    """The real store, except that every step write fails while `down` is set (the database is away)."""

    down = False

    def write_issuance_step(self, signed, failed, drafts):  # type: ignore[no-untyped-def]
        if self.down:
            raise StoreUnavailable("the test database is away")
        return super().write_issuance_step(signed, failed, drafts)


def test_the_observer_is_told_each_outcome_once_each_step_and_each_hsm_job(
    tmp_path: Path, signer: SoftwareSigner, parties
) -> None:
    generation, area, issuing_ca, _ = parties
    store = _prepared_store(_StoreThatGoesDown, tmp_path, parties)
    seen = RecordingObserver()
    pipeline = IssuancePipeline(store, signer, issuing_ca, load_certificate, _validator(parties), seen)
    try:
        with ThreadPoolExecutor(8) as pool:
            signed = list(pool.map(lambda i: pipeline.issue(_request(f"r-{i}")), range(20)))
        assert all(isinstance(s, SignedCommand) for s in signed)
        assert isinstance(pipeline.issue(_request("r-0")), IssuanceRecord)
        assert isinstance(pipeline.issue(_request(readings=b"not vanilla")), Refused)
        signer.fail = True
        with pytest.raises(HsmUnavailable):
            pipeline.issue(_request("r-hsm"))
        signer.fail, signer.corrupt = False, True
        with pytest.raises(SignatureCheckFailed):
            pipeline.issue(_request("r-bad"))
        signer.corrupt = False
        (failed,) = [r for r in store.list_issuances() if r.request_id == "r-hsm"]
        pipeline.finish(UnfinishedIssuance(failed, generation, area.credentials))
        store.down = True
        with pytest.raises(StoreUnavailable):
            pipeline.issue(_request("r-down"))
        store.down = False
        with store.engine.begin() as conn:  # the schema is gone: this draft's write fails on its own
            conn.exec_driver_sql("DROP TABLE counters")
        with pytest.raises(StoreUnavailable):
            pipeline.issue(_request("r-gone"))
    finally:
        pipeline.close()
        store.close()
    counts: dict[tuple[str, str, int | None], int] = {}
    for item in seen.issuances:
        counts[item] = counts.get(item, 0) + 1
    assert counts == {
        ("hand-out", "signed", 1): 21,  # 20, and the failed one finished by its retry
        ("hand-out", "retry", 1): 1,
        ("hand-out", "refused", None): 1,
        ("hand-out", "failed", 1): 2,  # the HSM unplugged; a signature that did not verify
        ("hand-out", "unavailable", 1): 2,
    }
    assert sum(n for n, _, _ in seen.steps) == 20 + 7  # every request taken in exactly one step
    assert [w for _, _, w in seen.steps].count(False) == 1 and all(t >= 0 for _, t, _ in seen.steps)
    errors = [e for _, _, e in seen.hsm_jobs]
    assert errors.count("HsmUnavailable") == 1 and errors.count(None) == len(errors) - 1
    assert sum(d for _, d, e in seen.hsm_jobs if e is None) == 20 + 1 + 1  # r-bad was signed, then rejected
    assert seen.rejected == 1


def _rotating_validator(parties) -> Callable[[HandOutRequest | RotationRequest], NewIssuance]:
    """Hand-outs as _validator; a rotation is recorded with a target generation (what the observer sees
    as a rotation); a rotation reading b"not vanilla" is refused."""
    generation, _, _, _ = parties
    hand_out = _validator(parties)

    def validate(request: HandOutRequest | RotationRequest) -> NewIssuance:
        if isinstance(request, HandOutRequest):
            return hand_out(request)
        if request.credentials_response == b"not vanilla":
            raise DeviceNotVanilla("device 00db1234567890a0 does not hold a vanilla generation")
        draft = IssuanceDraft(
            request.bench_id,
            request.request_id,
            request.fingerprint(),
            request.device_id,
            None,
            generation.generation,
            request.device_certificate,
            target_generation=generation.generation,
        )
        return NewIssuance(draft, 1, generation, generation.credentials)

    return validate


def test_the_observer_tells_rotations_from_hand_outs_and_a_store_refusal_from_an_outage(
    tmp_path: Path, signer: SoftwareSigner, parties
) -> None:
    generation, _, issuing_ca, _ = parties
    store = _prepared_store(_StoreThatGoesDown, tmp_path, parties)
    seen = RecordingObserver()
    pipeline = IssuancePipeline(
        store, signer, issuing_ca, load_certificate, _rotating_validator(parties), seen
    )
    rotation = RotationRequest("bench-01", "rot-1", DEVICE, b"cert", b"cs02a")
    try:
        assert isinstance(pipeline.issue(rotation), SignedCommand)
        assert isinstance(
            pipeline.issue(replace(rotation, request_id="rot-2", credentials_response=b"not vanilla")),
            Refused,
        )
        signer.fail = True
        with pytest.raises(HsmUnavailable):
            pipeline.issue(replace(rotation, request_id="rot-3", device_id=DEVICE[:7] + b"\x03"))
        signer.fail = False
        (failed,) = [r for r in store.list_issuances() if r.request_id == "rot-3"]
        store.down = True
        with pytest.raises(StoreUnavailable):  # finishing it while the store is away
            pipeline.finish(UnfinishedIssuance(failed, generation, generation.credentials))
        store.down = False
        store.revoke_bench("bench-01", "test")  # the store refuses to record: a refusal, not an outage
        with pytest.raises(Exception) as refused:
            pipeline.issue(_request("r-revoked"))
        assert not isinstance(refused.value, Unavailable)
    finally:
        pipeline.close()
        store.close()
    assert seen.issuances == [
        ("rotation", "signed", 1),
        ("rotation", "refused", None),
        ("rotation", "failed", 1),
        ("rotation", "unavailable", 1),
        ("hand-out", "refused", 1),
    ]


class _GatedSigner(SoftwareSigner):
    """Signs once `gate` is set: requests pile up in the queue behind the first step."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(key)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        self.entered.set()
        assert self.gate.wait(30)
        return super().sign_digests(key, digests)


def test_more_requests_than_a_step_takes_are_all_served_in_later_steps(
    store: SqlCustodyStore, parties
) -> None:
    signer = _GatedSigner(parties[3])
    seen = RecordingObserver()
    pipeline = IssuancePipeline(store, signer, parties[2], load_certificate, _validator(parties), seen)
    try:
        with ThreadPoolExecutor(100) as pool:
            first = pool.submit(pipeline.issue, _request("first"))
            assert signer.entered.wait(30)
            rest = [pool.submit(pipeline.issue, _request()) for _ in range(2 * MAX_DRAFTS_PER_STEP + 3)]
            time.sleep(0.5)  # all of them queued behind the first step
            signer.gate.set()
            outcomes = [first.result(60), *(f.result(60) for f in rest)]
    finally:
        pipeline.close()
    assert all(isinstance(o, SignedCommand) for o in outcomes)
    assert len({o.counter for o in outcomes if isinstance(o, SignedCommand)}) == len(outcomes)
    assert max(n for n, _, _ in seen.steps) == MAX_DRAFTS_PER_STEP  # a step takes at most that many


def test_the_pipeline_thread_is_named_and_does_not_hold_the_process_open(pipeline: IssuancePipeline) -> None:
    (thread,) = [t for t in threading.enumerate() if t.name == "issuance-pipeline"]
    assert thread.daemon
    pipeline.close()
    assert not thread.is_alive()  # close() waits for it
    pipeline.close()  # a second close does nothing
    with pytest.raises(Unavailable) as refused:
        pipeline.issue(_request())
    assert str(refused.value) == "the service is shutting down"
