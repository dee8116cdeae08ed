"""HandOutService (server/domain/issuance.py) in process: a real SQLite store, signatures by the forge world's
generation keys (the DigestSigner port; the PKCS#11 signer is tested in tests/server/hsm), real signed CS02a
readings, and the meter's answers from the simulator (simulator/device.py) processing the released bytes.
Every command released is checked with the bench's own checks (client/checks.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from forge_testlib import AREA_ENTITY, AREA_ID, OLD_VANILLA_ID, VANILLA_ID, ForgeWorld

from vdno.client.checks import check_command, check_rotation_command
from vdno.server.domain.errors import (
    CommandCancelled,
    CustodyConflict,
    DeviceNotVanilla,
    KeyNotInCustody,
    OutcomeRejected,
    OutstandingCommand,
    RequestIdConflict,
    Unavailable,
    UnknownArea,
    UnknownIssuance,
)
from vdno.server.domain.issuance import STALE_ATTEMPT, HandOutService, counter_floor
from vdno.server.domain.policy import TrustAnchors
from vdno.server.domain.values import (
    Area,
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
        anchors = TrustAnchors(world.root_der, world.issuing_der, world.device_ca_der)
        self.service = HandOutService(store, signer, anchors, clock)

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
    with pytest.raises(RequestIdConflict, match="request id 'r-1' was already used for another device"):
        fx.service.hand_out(fx.hand_out(area_id=AREA_ID + 1))


def test_an_unknown_area_or_a_meter_not_on_vanilla_is_refused(fx: Fixture) -> None:
    with pytest.raises(UnknownArea, match=f"area {AREA_ID + 7} is not registered"):
        fx.service.hand_out(fx.hand_out(area_id=AREA_ID + 7))
    with pytest.raises(DeviceNotVanilla):
        fx.service.hand_out(fx.hand_out("r-2", holder=fx.world.area))
    assert fx.store.find_issuance("bench-01", "r-2") is None and fx.signer.digests == 0


def test_a_rotation_is_signed_by_the_generation_held_and_installs_the_active_one(fx: Fixture) -> None:
    command = fx.service.rotate(fx.rotation())
    checked = check_rotation_command(command.command, fx.world.device.device_id, fx.world.bench_bundle())
    assert checked.generation.generation == 1
    record = fx.store.find_issuance("bench-01", "rot-1")
    assert record is not None and record.generation == 1 and record.target_generation == 2
    with pytest.raises(CustodyConflict):
        fx.service.rotate(fx.rotation("rot-2", holder=fx.world.vanilla))


def test_a_second_request_for_a_meter_with_a_released_command_names_it(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    with pytest.raises(
        OutstandingCommand, match=f"device {fx.world.device.device_id.hex()} has an outstanding"
    ):
        fx.service.hand_out(fx.hand_out("r-2"))


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
    with pytest.raises(Unavailable, match="still being signed"):
        fx.service.hand_out(request)
    with pytest.raises(Unavailable, match=f"another request for device {request.device_id.hex()}"):
        fx.service.hand_out(fx.hand_out("r-2"))
    assert fx.signer.digests == 0
    fx.clock.now = fx.t0 + STALE_ATTEMPT
    command = fx.service.hand_out(request)
    assert command.counter == counter and fx.signer.digests == 1
    record = fx.store.find_issuance("bench-01", "r-1")
    assert record is not None and record.status is IssuanceStatus.SIGNED


def test_a_stale_attempt_of_another_request_gives_way_to_a_new_one(fx: Fixture) -> None:
    _record(fx, fx.hand_out("old"))
    fx.clock.now = fx.t0 + STALE_ATTEMPT + timedelta(seconds=1)
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
    assert outcome.custody is CustodyState.AREA and outcome.area_id == AREA_ID and outcome.generation is None
    assert outcome.no_ds == CellState(AREA_ENTITY, fx.world.area.ds_ski)
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


def test_a_cancelled_command_is_not_handed_out_again_and_frees_the_meter(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    cancelled = fx.service.cancel_request("bench-01", "r-1", "the meter was dropped")
    assert cancelled.status is IssuanceStatus.CANCELLED and cancelled.cancelled_by == "bench:bench-01"
    with pytest.raises(
        CommandCancelled, match="'r-1' was cancelled by bench:bench-01 \\(the meter was dropped\\)"
    ):
        fx.service.hand_out(fx.hand_out())
    with pytest.raises(UnknownIssuance, match="no command for request id 'r-9'"):
        fx.service.cancel_request("bench-01", "r-9", "why")
    assert fx.service.hand_out(fx.hand_out("r-2")).counter > cancelled.counter
    by_officer = fx.service.cancel_issuance(
        "o-1", fx.store.find_issuance("bench-01", "r-2").issuance_id, "lost"
    )  # type: ignore[union-attr]
    assert by_officer.cancelled_by == "officer:o-1"


def test_a_device_certificate_is_checked_against_the_device_named_even_when_remembered(fx: Fixture) -> None:
    fx.service.hand_out(fx.hand_out())
    w = fx.world
    other = HandOutRequest(
        "bench-01", "r-2", w.other_device.device_id, AREA_ID, w.device.ds_der, w.reading(w.vanilla)
    )
    with pytest.raises(Exception, match="not the certificate of device"):
        fx.service.hand_out(other)
