"""HandOutService (server/domain/issuance.py) in process: a real SQLite store, signatures by the forge world's
generation keys (the DigestSigner port; the PKCS#11 signer is tested in tests/server/hsm), real signed CS02a
readings, and the meter's answers from the simulator (simulator/device.py) processing the released bytes.
Every command released is checked with the bench's own checks (client/checks.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from forge_testlib import (
    AREA_ENTITY,
    AREA_ID,
    OLD_VANILLA_ID,
    OTHER_AREA_ENTITY,
    OTHER_AREA_ID,
    VANILLA_ID,
    Device,
    ForgeWorld,
)
from test_pipeline import RecordingObserver

from vdno.client.checks import check_command, check_rotation_command
from vdno.gbcs.smki import SmkiCertificate
from vdno.labpki.smki import CertifiedKey, issue_device_certificate, new_p256_key
from vdno.server.domain import issuance
from vdno.server.domain.errors import (
    BenchNotEnrolled,
    CommandCancelled,
    CustodyConflict,
    DeviceNotVanilla,
    KeyNotInCustody,
    OperationNotAllowed,
    OutcomeRejected,
    OutstandingCommand,
    RequestIdConflict,
    StoreUnavailable,
    Unavailable,
    UnknownArea,
    UnknownIssuance,
)
from vdno.server.domain.issuance import STALE_ATTEMPT, HandOutService, counter_floor
from vdno.server.domain.policy import TrustAnchors, TrustBundle
from vdno.server.domain.values import (
    Area,
    Bench,
    BenchOperation,
    BenchStatus,
    CellState,
    CustodyState,
    GenerationStatus,
    HandOutRequest,
    IssuanceDraft,
    IssuanceStatus,
    OutcomeReport,
    RotationRequest,
    VanillaGeneration,
)
from vdno.server.store import sql
from vdno.server.store.sql import SqlCustodyStore, open_store


class KeySigner:
    """The DigestSigner port over the world's generation keys, by key URI; counts its jobs."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
        self._keys = keys
        self.digests = 0

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        out = []
        for digest in digests:
            self.digests += 1
            signature = self._keys[key].sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            r, s = decode_dss_signature(signature)
            out.append(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return out


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Fixture:
    def __init__(self, world: ForgeWorld, store: SqlCustodyStore, clock: Clock, signer: KeySigner) -> None:
        self.world, self.store, self.clock, self.signer = world, store, clock, signer
        self.t0 = clock.now
        self.anchors = TrustAnchors(world.root_der, world.issuing_der, world.device_ca_der)
        self.service = HandOutService(store, signer, self.anchors, clock)

    def hand_out(
        self, request_id: str = "r-1", holder: object = None, area_id: int = AREA_ID
    ) -> HandOutRequest:
        w = self.world
        return HandOutRequest(
            "bench-01",
            request_id,
            w.device.device_id,
            area_id,
            w.device.ds_der,
            w.reading(holder or w.vanilla),  # type: ignore[arg-type]
        )

    def rotation(self, request_id: str = "rot-1", holder: object = None) -> RotationRequest:
        w = self.world
        return RotationRequest(
            "bench-01",
            request_id,
            w.device.device_id,
            w.device.ds_der,
            w.reading(holder or w.old_vanilla),  # type: ignore[arg-type]
        )


@pytest.fixture
def fx(tmp_path: Path, forge_world: ForgeWorld) -> Iterator[Fixture]:
    w = forge_world
    store = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    store.add_generation(
        VanillaGeneration(
            1,
            OLD_VANILLA_ID,
            "uri:g1-ds",
            "uri:g1-ka",
            w.old_vanilla.ds_der,
            w.old_vanilla.ka_der,
            GenerationStatus.SIGNING_ONLY,
        ),
        "test",
    )
    store.add_generation(
        VanillaGeneration(
            2,
            VANILLA_ID,
            "uri:g2-ds",
            "uri:g2-ka",
            w.vanilla.ds_der,
            w.vanilla.ka_der,
            GenerationStatus.ACTIVE,
        ),
        "test",
    )
    store.upsert_area(Area(AREA_ID, "forge area", AREA_ENTITY, w.area.ds_der, w.area.ka_der), "test")
    store.enroll_bench("bench-01", "test")
    signer = KeySigner({"uri:g1-ds": w.old_vanilla.ds_key, "uri:g2-ds": w.vanilla.ds_key})
    fixture = Fixture(w, store, Clock(datetime.now(UTC)), signer)
    yield fixture
    fixture.service.close()
    store.close()


def test_a_hand_out_releases_a_command_the_bench_accepts_under_a_counter_from_the_clock(fx: Fixture) -> None:
    command = fx.service.hand_out(fx.hand_out())
    checked = check_command(command.command, fx.world.device.device_id, AREA_ID, fx.world.bench_bundle())
    assert checked.generation.generation == 2
    assert command.counter == checked.counter >= counter_floor(fx.t0)
    assert command.device_id == fx.world.device.device_id
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.SIGNED and record.counter == command.counter
    assert record.generation == 2 and record.area_id == AREA_ID and record.target_generation is None
    # a retry is given the same bytes, signed once
    assert fx.service.hand_out(fx.hand_out()).command == command.command
    assert fx.signer.digests == 1
    assert fx.service._in_flight == {}  # the per-request locks go with their calls (no leak)


def test_counters_follow_the_clock_in_microseconds() -> None:
    assert counter_floor(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_a_request_id_used_for_another_area_is_a_conflict(fx: Fixture) -> None:
    fx.store.upsert_area(
        Area(AREA_ID + 1, "other", AREA_ENTITY, fx.world.other_area.ds_der, fx.world.other_area.ka_der), "t"
    )
    fx.service.hand_out(fx.hand_out())
    with pytest.raises(RequestIdConflict) as refused:
        fx.service.hand_out(fx.hand_out(area_id=AREA_ID + 1))
    assert str(refused.value) == (
        "request id 'r-1' was already used for another device, area or kind of command"
    )


def test_an_unknown_area_or_a_meter_not_on_vanilla_is_refused(fx: Fixture) -> None:
    with pytest.raises(UnknownArea, match=f"area {AREA_ID + 7} is not registered"):
        fx.service.hand_out(fx.hand_out(area_id=AREA_ID + 7))
    with pytest.raises(DeviceNotVanilla) as refused:
        fx.service.hand_out(fx.hand_out("r-2", holder=fx.world.area))
    # named as people name it: the area by its number and name (the registered areas are read for it)
    assert str(refused.value) == (
        f"device {fx.world.device.device_id.hex()} is not in vanilla custody: already handed out to area "
        f"{AREA_ID} (forge area)"
    )
    assert fx.store.find_issuance("bench-01", "r-2") is None and fx.signer.digests == 0


def test_a_rotation_is_signed_by_the_generation_held_and_installs_the_active_one(fx: Fixture) -> None:
    command = fx.service.rotate(fx.rotation())
    checked = check_rotation_command(command.command, fx.world.device.device_id, fx.world.bench_bundle())
    assert checked.generation.generation == 1
    record = fx.store.find_issuance("bench-01", "rot-1")
    assert record is not None and record.generation == 1 and record.target_generation == 2
    assert record.area_id is None  # a rotation installs a generation, not an area
    with pytest.raises(CustodyConflict):
        fx.service.rotate(fx.rotation("rot-2", holder=fx.world.vanilla))


def test_a_second_request_for_a_meter_with_a_released_command_names_it(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    holder = fx.store.find_issuance("bench-01", "r-1")
    assert holder is not None
    with pytest.raises(OutstandingCommand) as refused:
        fx.service.hand_out(fx.hand_out("r-2"))
    assert str(refused.value) == _outstanding_message(fx, holder.describe())


def _outstanding_message(fx: Fixture, described: str) -> str:
    """What a bench is told when the meter is held by the command `described` (IssuanceRecord.describe)."""
    return (
        f"device {fx.world.device.device_id.hex()} has an outstanding command: {described}; its outcome "
        "must be reported (or the command cancelled) first"
    )


def _record(fx: Fixture, request: HandOutRequest) -> int:
    """A recorded attempt that died before signing (as a killed process leaves it); the clock is set to the
    moment it was recorded (the store stamps it with its own clock)."""
    draft = IssuanceDraft(
        "bench-01",
        request.request_id,
        request.fingerprint(),
        request.device_id,
        request.area_id,
        2,
        request.device_certificate,
    )
    (begun,) = fx.store.write_issuance_step((), (), ((draft, counter_floor(fx.clock.now)),)).begun
    assert not isinstance(begun, Exception) and begun[1]
    fx.t0 = begun[0].created_at
    return begun[0].counter


def test_an_attempt_in_flight_is_not_signed_twice_and_a_stale_one_is_finished_under_its_counter(
    fx: Fixture,
) -> None:
    request = fx.hand_out()
    counter = _record(fx, request)
    fx.clock.now = fx.t0 + STALE_ATTEMPT - timedelta(milliseconds=1)
    with pytest.raises(Unavailable) as in_flight:
        fx.service.hand_out(request)
    assert str(in_flight.value) == "this request is still being signed; retry with the same request id"
    recorded = fx.store.find_issuance("bench-01", "r-1")
    assert recorded is not None
    with pytest.raises(Unavailable) as other:
        fx.service.hand_out(fx.hand_out("r-2"))
    assert str(other.value) == (
        f"another request for device {request.device_id.hex()} ({recorded.describe()}) is being signed; "
        "retry with the same request id"
    )
    assert fx.signer.digests == 0
    fx.clock.now = fx.t0 + STALE_ATTEMPT  # not yet more than STALE_ATTEMPT old: the store would not fail it
    with pytest.raises(Unavailable, match="this request is still being signed"):
        fx.service.hand_out(request)
    with pytest.raises(Unavailable, match="is being signed"):
        fx.service.hand_out(fx.hand_out("r-2"))
    assert fx.service.fail_abandoned() == []
    fx.clock.now = fx.t0 + STALE_ATTEMPT + timedelta(microseconds=1)
    command = fx.service.hand_out(request)
    assert command.counter == counter and fx.signer.digests == 1
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.SIGNED


def test_a_stale_attempt_of_another_request_gives_way_to_a_new_one(fx: Fixture) -> None:
    _record(fx, fx.hand_out("old"))
    fx.clock.now = fx.t0 + STALE_ATTEMPT + timedelta(microseconds=1)  # the first instant it is stale
    command = fx.service.hand_out(fx.hand_out("new"))
    old = fx.store.find_issuance("bench-01", "old")
    assert old is not None and old.status is IssuanceStatus.FAILED
    assert command.counter > old.counter
    assert fx.service.fail_abandoned() == []


def test_fail_abandoned_fails_only_attempts_older_than_the_stale_age(fx: Fixture) -> None:
    _record(fx, fx.hand_out("old"))
    fx.clock.now = fx.t0 + STALE_ATTEMPT - timedelta(milliseconds=1)
    assert fx.service.fail_abandoned() == []
    fx.clock.now = fx.t0 + STALE_ATTEMPT + timedelta(milliseconds=1)
    (failed,) = fx.service.fail_abandoned()
    record = fx.store.find_issuance("bench-01", "old")
    assert record is not None and record.issuance_id == failed and record.status is IssuanceStatus.FAILED


def test_a_failed_attempt_is_not_finished_by_a_generation_that_may_no_longer_sign(fx: Fixture) -> None:
    """The retry's reading passes (the meter shows generation 1), but the attempt was recorded for
    generation 2, compromised since: it is not signed."""
    _record(fx, fx.hand_out())
    fx.clock.now = fx.t0 + STALE_ATTEMPT * 2
    fx.service.fail_abandoned()
    fx.store.mark_compromised(2, "test: key exposed", "officer:test")
    with pytest.raises(KeyNotInCustody, match="vanilla generation 2 may no longer sign"):
        fx.service.hand_out(fx.hand_out(holder=fx.world.old_vanilla))
    assert fx.signer.digests == 0


def test_the_meters_response_is_recorded_once_and_the_records_follow_it(fx: Fixture) -> None:
    command = fx.service.hand_out(fx.hand_out())
    meter = fx.world.meter(fx.world.vanilla, require_acb_mac=False)
    response = meter.process(command.command)
    report = OutcomeReport("bench-01", "r-1", response)
    outcome = fx.service.report_outcome(report)
    assert outcome.status is IssuanceStatus.APPLIED and outcome.evidence == "response"
    assert outcome.issuance_id == command.issuance_id
    assert outcome.custody is CustodyState.AREA and outcome.area_id == AREA_ID and outcome.generation is None
    assert outcome.no_ds == CellState(AREA_ENTITY, fx.world.area.ds_ski)
    assert outcome.no_ka == CellState(AREA_ENTITY, fx.world.area.ka_ski)
    again = fx.service.report_outcome(report)
    assert again.status is IssuanceStatus.APPLIED and again.custody is CustodyState.AREA
    with pytest.raises(UnknownIssuance, match="no signed command for request id 'r-9'"):
        fx.service.report_outcome(OutcomeReport("bench-01", "r-9", response))


def test_an_answer_with_another_status_than_the_recorded_one_is_refused(fx: Fixture) -> None:
    command = fx.service.hand_out(fx.hand_out())
    form = replace(fx.world.hand_out(command.counter))
    refused = fx.world.response(form, (0, 10)).encode()  # KA cell refused: the meter still holds vanilla's
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", "r-1", refused))
    assert outcome.status is IssuanceStatus.REJECTED
    applied = fx.world.response(form).encode()
    with pytest.raises(
        OutcomeRejected, match=r"an outcome \(rejected\) was already recorded .* says applied"
    ):
        fx.service.report_outcome(OutcomeReport("bench-01", "r-1", applied))


def test_a_refused_command_leaves_the_meter_with_whoever_the_answer_shows(fx: Fixture) -> None:
    command = fx.service.hand_out(fx.hand_out())
    form = fx.world.hand_out(command.counter)
    refused = fx.world.response(form, (10, 10)).encode()
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", "r-1", refused))
    assert outcome.status is IssuanceStatus.REJECTED
    assert (outcome.custody, outcome.area_id, outcome.generation) == (CustodyState.VANILLA, None, 2)


def test_a_reading_after_the_command_is_evidence_it_applied(fx: Fixture) -> None:
    command = fx.service.hand_out(fx.hand_out())
    answer = fx.world.reading(fx.world.area, seq_number=0, counter=command.counter + 1)
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", "r-1", b"", answer))
    assert outcome.status is IssuanceStatus.APPLIED and outcome.evidence == "credentials"
    again = fx.service.report_outcome(OutcomeReport("bench-01", "r-1", b"", answer))
    assert again.evidence == "credentials" and again.status is IssuanceStatus.APPLIED
    early = fx.world.reading(fx.world.area, seq_number=0, counter=command.counter)
    with pytest.raises(OutcomeRejected, match="before the command existed"):
        fx.service.report_outcome(OutcomeReport("bench-01", "r-1", b"", early))


def test_a_reading_that_proves_a_released_command_applied_settles_it_with_the_next_request(
    fx: Fixture,
) -> None:
    command = fx.service.hand_out(fx.hand_out())
    w = fx.world
    proof = w.reading(w.area, seq_number=0, counter=command.counter + 1)
    request = HandOutRequest("bench-01", "r-2", w.device.device_id, AREA_ID, w.device.ds_der, proof)
    with pytest.raises(DeviceNotVanilla):
        fx.service.hand_out(request)
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.APPLIED
    assert record.outcome_response == proof  # the reading is kept as the evidence


def test_a_cancelled_command_is_not_handed_out_again_and_frees_the_meter(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    cancelled = fx.service.cancel_request("bench-01", "r-1", "the meter was dropped")
    assert cancelled.status is IssuanceStatus.CANCELLED and cancelled.cancelled_by == "bench:bench-01"
    with pytest.raises(CommandCancelled) as refused:
        fx.service.hand_out(fx.hand_out())
    assert str(refused.value) == (
        "request 'r-1' was cancelled by bench:bench-01 (the meter was dropped): its command is not handed "
        "out again; ask anew with a new request id"
    )
    with pytest.raises(UnknownIssuance, match="no command for request id 'r-9'"):
        fx.service.cancel_request("bench-01", "r-9", "why")
    assert fx.service.hand_out(fx.hand_out("r-2")).counter > cancelled.counter
    by_officer = fx.service.cancel_issuance(
        "o-1", fx.store.find_issuance("bench-01", "r-2").issuance_id, "lost"
    )  # type: ignore[union-attr]
    assert by_officer.cancelled_by == "officer:o-1"


def test_a_device_certificate_is_verified_once_then_remembered(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its chain is verified on first sight only (HandOutService._device_certificate); a retry, which is
    validated again, reuses it."""
    verified: list[bytes] = []
    check = issuance.check_device_certificate

    def counted(
        device_id: bytes, certificate: bytes, device_ca: SmkiCertificate, at: datetime
    ) -> SmkiCertificate:
        verified.append(certificate)
        return check(device_id, certificate, device_ca, at)

    monkeypatch.setattr(issuance, "check_device_certificate", counted)
    first = fx.service.hand_out(fx.hand_out())
    assert fx.service.hand_out(fx.hand_out()).command == first.command
    assert verified == [fx.world.device.ds_der]


def test_a_device_certificate_is_checked_against_the_device_named_even_when_remembered(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    w = fx.world
    other = HandOutRequest(
        "bench-01", "r-2", w.other_device.device_id, AREA_ID, w.device.ds_der, w.reading(w.vanilla)
    )
    with pytest.raises(Exception, match="not the certificate of device"):
        fx.service.hand_out(other)


# -- what a bench pins, and which benches may ask


def test_the_trust_bundle_is_the_registered_generations_and_areas_and_the_configured_anchors(
    fx: Fixture,
) -> None:
    bundle = fx.service.trust_bundle()
    assert bundle == TrustBundle(tuple(fx.store.list_generations()), tuple(fx.store.list_areas()), fx.anchors)
    assert [(g.generation, g.ds_certificate) for g in bundle.generations] == [
        (1, fx.world.old_vanilla.ds_der),
        (2, fx.world.vanilla.ds_der),
    ]
    assert [(a.area_id, a.ds_certificate, a.ka_certificate) for a in bundle.areas] == [
        (AREA_ID, fx.world.area.ds_der, fx.world.area.ka_der)
    ]
    assert bundle.anchors.device_ca == fx.world.device_ca_der
    assert bundle.anchors.issuing_ca == fx.world.issuing_der


def test_a_bench_is_refused_an_operation_it_is_not_enrolled_for_or_with_another_certificate(
    fx: Fixture,
) -> None:
    pinned = "ab" * 32
    fx.store.enrol_bench(
        Bench("bench-02", BenchStatus.ENROLLED, frozenset({BenchOperation.HAND_IN}), "lab", pinned),
        "officer:o-1",
        None,
        {},
    )
    fx.service.require_bench("bench-02", BenchOperation.HAND_IN, pinned)
    with pytest.raises(OperationNotAllowed) as operation:
        fx.service.require_bench("bench-02", BenchOperation.HAND_OUT, pinned)
    assert str(operation.value) == "bench 'bench-02' is not enrolled for hand-out"
    with pytest.raises(BenchNotEnrolled) as certificate:
        fx.service.require_bench("bench-02", BenchOperation.HAND_IN, "cd" * 32)
    assert str(certificate.value) == (
        "bench 'bench-02' presented a certificate other than the one it was enrolled with"
    )
    with pytest.raises(BenchNotEnrolled) as unknown:
        fx.service.require_bench("bench-09")
    assert str(unknown.value) == "bench 'bench-09' is not enrolled or has been revoked"


def test_a_revocation_by_another_replica_is_felt_at_once_and_by_the_issuance_write(
    fx: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """require_bench reads afresh by default; fresh=False (the issuance path) may read the cached record,
    because the write that records an issuance checks enrolment again (docs/architecture.md §4)."""
    monkeypatch.setattr(sql, "REFERENCE_TTL", 3600.0)  # this replica's cache does not expire in the test
    fx.service.require_bench("bench-01", fresh=False)
    replica = open_store(f"sqlite:///{tmp_path / 'vdno.db'}", run_migrations=False)
    try:
        replica.revoke_bench_now("bench-01", "its certificate was stolen", "officer:o-1")
    finally:
        replica.close()
    fx.service.require_bench("bench-01", fresh=False)  # cached: still enrolled here
    with pytest.raises(BenchNotEnrolled, match=r"^bench 'bench-01' is not enrolled or has been revoked$"):
        fx.service.require_bench("bench-01")
    with pytest.raises(BenchNotEnrolled):
        fx.service.hand_out(fx.hand_out())
    assert fx.store.find_issuance("bench-01", "r-1") is None and fx.signer.digests == 0


# -- the service's own parts: observer, memos, in-flight requests


def test_the_observer_given_is_told_what_the_pipeline_did(fx: Fixture) -> None:
    seen = RecordingObserver()
    service = HandOutService(fx.store, fx.signer, fx.anchors, fx.clock, seen)
    try:
        service.hand_out(fx.hand_out())
    finally:
        service.close()
    assert seen.issuances == [("hand-out", "signed", 2)]
    assert [(digests, error) for _, digests, error in seen.hsm_jobs] == [(1, None)]


def _other_device_request(fx: Fixture, request_id: str) -> HandOutRequest:
    w = fx.world
    return HandOutRequest(
        "bench-01",
        request_id,
        w.other_device.device_id,
        AREA_ID,
        w.other_device.ds_der,
        w.reading(w.vanilla, device=w.other_device),
    )


def test_the_certificate_memos_keep_the_checked_certificates_and_are_bounded(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(issuance, "CERTIFICATE_MEMO", 1)
    service = HandOutService(fx.store, fx.signer, fx.anchors, fx.clock)
    w = fx.world
    try:
        service.hand_out(fx.hand_out())
        (remembered,) = service._trusted_devices.values()
        assert remembered.entity_id == w.device.device_id and remembered.der == w.device.ds_der
        service.hand_out(_other_device_request(fx, "r-2"))
        # full: emptied before the next certificate is kept
        assert list(service._trusted_devices) == [w.other_device.ds_der]
        assert service._certificate.cache_info().maxsize == 1  # type: ignore[attr-defined]
    finally:
        service.close()


class GatedSigner(KeySigner):
    """KeySigner that waits for `go` before it signs, and says when a job arrived (`entered`)."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
        super().__init__(keys)
        self.entered = threading.Event()
        self.go = threading.Event()

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        self.entered.set()
        assert self.go.wait(30)
        return super().sign_digests(key, digests)


def test_a_twin_in_this_process_waits_for_the_first_call_and_gets_the_same_bytes(fx: Fixture) -> None:
    gated = GatedSigner(fx.signer._keys)
    service = HandOutService(fx.store, gated, fx.anchors, fx.clock)
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(service.hand_out, fx.hand_out())
        assert gated.entered.wait(30)
        assert list(service._in_flight) == [("bench-01", "r-1")]  # one lock per (bench, request id)
        twin = pool.submit(service.hand_out, fx.hand_out())
        time.sleep(0.3)  # the twin reaches the request's lock and waits on it
        gated.go.set()
        a, b = first.result(30), twin.result(30)
    finally:
        gated.go.set()  # a failed check above must not leave the first call waiting on the signer
        pool.shutdown()
        service.close()
    assert a.command == b.command and a.issuance_id == b.issuance_id and gated.digests == 1
    assert service._in_flight == {}


class StoreWithFailingReads:
    """The real store, except that the reads named raise StoreUnavailable (the database is away for them)."""

    def __init__(self, inner: SqlCustodyStore, *failing: str) -> None:
        self._inner = inner
        self._failing = failing

    def __getattr__(self, name: str) -> object:
        if name in self._failing:

            def fail(*args: object, **kwargs: object) -> None:
                raise StoreUnavailable(f"test: {name} cannot be read")

            return fail
        return getattr(self._inner, name)


def test_a_refusal_is_what_the_bench_hears_even_when_the_look_ups_after_it_fail(fx: Fixture) -> None:
    """A refused request is looked up (a retry of a released one gets its bytes) and its reading tried as
    proof of an earlier command: when those reads fail, the bench still hears the refusal."""
    flaky = StoreWithFailingReads(fx.store, "find_issuance", "unreported_commands")
    service = HandOutService(flaky, fx.signer, fx.anchors, fx.clock)  # type: ignore[arg-type]
    try:
        with pytest.raises(UnknownArea, match=f"^area {AREA_ID + 7} is not registered"):
            service.hand_out(fx.hand_out(area_id=AREA_ID + 7))
        with pytest.raises(DeviceNotVanilla, match="already handed out to area"):
            service.hand_out(fx.hand_out("r-2", holder=fx.world.area))
    finally:
        service.close()
    assert fx.signer.digests == 0


# -- retries of attempts that failed


def _failed_attempt(fx: Fixture, request_id: str = "r-1") -> int:
    """A recorded attempt that died, marked FAILED by the housekeeping; its counter."""
    counter = _record(fx, fx.hand_out(request_id))
    fx.clock.now = fx.t0 + STALE_ATTEMPT * 2
    assert len(fx.service.fail_abandoned()) == 1
    return counter


def test_a_failed_attempt_is_not_finished_on_a_reading_that_no_longer_passes(fx: Fixture) -> None:
    _failed_attempt(fx)
    with pytest.raises(DeviceNotVanilla, match="already handed out to area"):
        fx.service.hand_out(fx.hand_out(holder=fx.world.area))
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.FAILED and fx.signer.digests == 0


def test_a_failed_attempt_is_not_finished_while_another_command_holds_the_meter(fx: Fixture) -> None:
    _failed_attempt(fx)
    fx.service.hand_out(fx.hand_out("r-2"))
    holder = fx.store.find_issuance("bench-01", "r-2")
    assert holder is not None and fx.signer.digests == 1
    with pytest.raises(OutstandingCommand) as refused:
        fx.service.hand_out(fx.hand_out())
    assert str(refused.value) == _outstanding_message(fx, holder.describe())
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.FAILED
    assert fx.signer.digests == 1  # no useless signature


def _report_refused(fx: Fixture, request_id: str, form_of: Callable[[int], object]) -> None:
    """The meter refused both cells of the command of `request_id` (built as `form_of(counter)`)."""
    record = fx.store.find_issuance("bench-01", request_id)
    assert record is not None
    refused = fx.world.response(form_of(record.counter), (10, 10)).encode()  # type: ignore[arg-type]
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", request_id, refused))
    assert outcome.status is IssuanceStatus.REJECTED


def test_a_failed_attempt_is_finished_under_its_counter_while_the_meter_stays_on_its_generation(
    fx: Fixture,
) -> None:
    """Another command was refused by the meter since: the records still show the meter on the generation the
    attempt was recorded for, so the retry finishes it."""
    counter = _failed_attempt(fx)
    fx.service.hand_out(fx.hand_out("r-2"))
    _report_refused(fx, "r-2", fx.world.hand_out)
    custody = fx.store.device_custody(fx.world.device.device_id)
    assert custody is not None and (custody.state, custody.generation) == (CustodyState.VANILLA, 2)
    command = fx.service.hand_out(fx.hand_out())
    assert command.counter == counter and fx.signer.digests == 2
    checked = check_command(command.command, fx.world.device.device_id, AREA_ID, fx.world.bench_bundle())
    assert checked.counter == counter


def test_a_failed_attempt_is_not_finished_once_the_records_show_the_meter_handed_out(fx: Fixture) -> None:
    _failed_attempt(fx)
    command = fx.service.hand_out(fx.hand_out("r-2"))
    response = fx.world.meter(fx.world.vanilla, require_acb_mac=False).process(command.command)
    assert fx.service.report_outcome(OutcomeReport("bench-01", "r-2", response)).custody is CustodyState.AREA
    with pytest.raises(DeviceNotVanilla) as refused:
        fx.service.hand_out(fx.hand_out())  # an old reading: the meter showed vanilla then
    assert str(refused.value) == (
        f"the custodian's records show device {fx.world.device.device_id.hex()} already handed out to area "
        f"{AREA_ID} (West Midlands) since this request was recorded"
    )
    assert fx.signer.digests == 1


def test_a_failed_attempt_is_not_finished_once_the_records_show_the_meter_on_another_generation(
    fx: Fixture,
) -> None:
    """A hand-out signed by generation 1 was refused by the meter, which the records then show on generation
    1: the attempt recorded for generation 2 is not finished."""
    w = fx.world
    _failed_attempt(fx)
    fx.service.hand_out(fx.hand_out("r-2", holder=w.old_vanilla))
    _report_refused(
        fx, "r-2", lambda c: replace(w.hand_out(c), originator=OLD_VANILLA_ID, signer=w.old_vanilla.ds_key)
    )
    with pytest.raises(DeviceNotVanilla) as refused:
        fx.service.hand_out(fx.hand_out())
    assert str(refused.value) == (
        f"the custodian's records show device {w.device.device_id.hex()} in stock on vanilla generation 1 "
        "since this request was recorded"
    )
    assert fx.signer.digests == 1


def test_a_stale_attempt_in_the_way_is_failed_and_no_younger_one(fx: Fixture) -> None:
    _record(fx, fx.hand_out("old"))
    old_at = fx.t0
    time.sleep(0.01)
    _record(fx, _other_device_request(fx, "young"))  # another meter's attempt, recorded 10 ms later
    fx.clock.now = fx.t0 + STALE_ATTEMPT - timedelta(milliseconds=1)
    assert fx.clock.now - old_at > STALE_ATTEMPT
    fx.service.hand_out(fx.hand_out("new"))
    old, young = fx.store.find_issuance("bench-01", "old"), fx.store.find_issuance("bench-01", "young")
    assert old is not None and old.status is IssuanceStatus.FAILED
    assert young is not None and young.status is IssuanceStatus.RECORDED


# -- outcomes


def test_a_rotation_reported_applied_leaves_the_meter_on_the_active_generation(fx: Fixture) -> None:
    command = fx.service.rotate(fx.rotation())
    response = fx.world.meter(fx.world.old_vanilla, require_acb_mac=False).process(command.command)
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", "rot-1", response))
    assert outcome.status is IssuanceStatus.APPLIED and outcome.issuance_id == command.issuance_id
    assert (outcome.custody, outcome.area_id, outcome.generation) == (CustodyState.VANILLA, None, 2)
    assert outcome.no_ds == CellState(VANILLA_ID, fx.world.vanilla.ds_ski)
    assert outcome.no_ka == CellState(VANILLA_ID, fx.world.vanilla.ka_ski)
    custody = fx.store.device_custody(fx.world.device.device_id)
    assert custody is not None and (custody.state, custody.generation) == (CustodyState.VANILLA, 2)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ds-replaced-ka-refused", (CustodyState.AREA, AREA_ID, None)),
        ("generation-entity-other-key", (CustodyState.UNKNOWN, None, None)),
        ("area-entity-other-key", (CustodyState.UNKNOWN, None, None)),
    ],
)
def test_a_refusal_leaves_the_meter_with_whoever_holds_its_no_ds_cell_by_entity_and_key(
    fx: Fixture, case: str, expected: tuple[CustodyState, int | None, int | None]
) -> None:
    """A holder is known by entity id AND key identifier: the same entity with another key is nobody known."""
    w = fx.world
    command = fx.service.hand_out(fx.hand_out())
    form = w.hand_out(command.counter)
    if case == "ds-replaced-ka-refused":
        answer = w.response(form, (0, 10))
    else:
        answer = w.response(form, (10, 10))
        entity, key = (
            (VANILLA_ID, w.area.ds_ski)
            if case == "generation-entity-other-key"
            else (AREA_ENTITY, w.vanilla.ds_ski)
        )
        assert answer.outcome is not None
        ds, ka = answer.outcome.replacement_outcomes
        ds = replace(ds, existing_subject_unique_id=entity, existing_subject_key_identifier=key)
        answer = replace(answer, outcome=replace(answer.outcome, replacement_outcomes=(ds, ka)))
    outcome = fx.service.report_outcome(OutcomeReport("bench-01", "r-1", answer.encode()))
    assert outcome.status is IssuanceStatus.REJECTED
    assert (outcome.custody, outcome.area_id, outcome.generation) == expected


def test_a_reading_settles_the_command_it_proves_among_several_unreported(fx: Fixture) -> None:
    """Newest first: a command issued under another device certificate is skipped, one the reading does not
    prove is skipped, and the older command it proves is settled."""
    w = fx.world
    fx.store.upsert_area(
        Area(OTHER_AREA_ID, "other", OTHER_AREA_ENTITY, w.other_area.ds_der, w.other_area.ka_der), "test"
    )
    proved = fx.service.hand_out(fx.hand_out("r-1"))
    fx.service.cancel_request("bench-01", "r-1", "sent to the wrong area")
    fx.service.hand_out(fx.hand_out("r-2", area_id=OTHER_AREA_ID))
    fx.service.cancel_request("bench-01", "r-2", "the bench dropped the meter")
    key = new_p256_key()
    renewed = Device(
        w.device.device_id,
        CertifiedKey(
            issue_device_certificate(w.device_ca, key.public_key(), w.device.device_id, "ds", now=w.now), key
        ),
        w.device.ka,
    )
    fx.service.hand_out(
        HandOutRequest(
            "bench-01",
            "r-3",
            w.device.device_id,
            AREA_ID,
            renewed.ds_der,
            w.reading(w.vanilla, device=renewed),
        )
    )
    proof = w.reading(w.area, seq_number=0, counter=proved.counter + 1)
    with pytest.raises(DeviceNotVanilla):
        fx.service.hand_out(
            HandOutRequest("bench-01", "r-4", w.device.device_id, AREA_ID, w.device.ds_der, proof)
        )
    statuses = [fx.store.find_issuance("bench-01", f"r-{i}") for i in (1, 2, 3)]
    assert [r.status if r else None for r in statuses] == [
        IssuanceStatus.APPLIED,
        IssuanceStatus.CANCELLED,
        IssuanceStatus.SIGNED,
    ]


def test_an_empty_answer_settles_nothing(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    w = fx.world
    assert fx.service.settle_from_reading(w.device.device_id, w.device.ds_der, b"", "bench:bench-01") is None
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.SIGNED and record.outcome_response is None
