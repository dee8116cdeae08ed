"""Hand-out issuance: validate here, then record -> build -> sign in the HSM -> verify in software ->
store the signed bytes -> release in the issuance pipeline (server/domain/pipeline.py); retries, twins,
outcomes and cancellations (docs/architecture.md §4, §5.2-5.6, §5.12).

Records stay true through crashes:
- one outstanding command per meter: the store refuses to record an issuance while the meter has another
  recorded or signed, unreported one (OutstandingCommand naming it, whichever bench asks), or while its
  records show the meter elsewhere than on the generation the reading names (DeviceNotVanilla);
- an attempt that died with its process leaves its issuance RECORDED (nothing released: signed bytes are
  stored before release). It is abandoned once more than STALE_ATTEMPT old: marked FAILED at start-up, by the
  housekeeping and whenever it stands in a request's way, and finished under its recorded counter by a
  retry of its request. STALE_ATTEMPT stays inside the bench's retry budget (client/api.py: UNAVAILABLE
  is retried for 7.75 s), so a crash never costs a bench its retry;
- an outcome is the meter's CS02b response, or its CS02a answer showing it already holds what the command
  installs (server/domain/outcomes.py, the evidence rule); a refusal by a meter that holds the new
  certificates is recorded as applied, never rejected;
- a command is cancelled by an officer or by the bench that asked: it is no longer handed out, the meter
  is free for another request, and since a meter that received it may still apply it, its outcome is
  still taken when reported, or when a reading that proves it comes with another request for the meter.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.server.domain.commands import HAND_OUT_FLOOR
from vdno.server.domain.errors import (
    CommandCancelled,
    DeviceNotVanilla,
    KeyNotInCustody,
    OutcomeRejected,
    OutstandingCommand,
    RequestIdConflict,
    Unavailable,
    UnknownArea,
    UnknownIssuance,
    VdnoError,
)
from vdno.server.domain.outcomes import (
    ExpectedCells,
    MeterOutcome,
    check_credentials_answer,
    check_meter_response,
)
from vdno.server.domain.pipeline import IssuancePipeline, NewIssuance, Request, UnfinishedIssuance
from vdno.server.domain.policy import (
    TrustAnchors,
    TrustBundle,
    check_device_certificate,
    find_custodial_generation,
    read_network_operator_signing_cell,
    require_enrolled,
    rotation_target,
    within_validity,
)
from vdno.server.domain.ports import CustodyStore, DigestSigner, IssuanceObserver
from vdno.server.domain.values import (
    BenchOperation,
    Cancellation,
    CellState,
    CredentialSet,
    CustodyState,
    HandOutRequest,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    OutcomeReport,
    RecordedOutcome,
    RotationRequest,
    SignedCommand,
    custody_phrase,
)

Clock = Callable[[], datetime]
# A RECORDED issuance untouched for this long belongs to an attempt that died: it is abandoned (FAILED) and a
# retry finishes it. A live attempt is signed within milliseconds, and an HSM outage fails it at once
# (server/hsm/signer.py), so 5 s is ample; it must stay below the bench's retry budget (7.75 s, client/api.py)
# so that the bench's own retries outlast it.
STALE_ATTEMPT = timedelta(seconds=5)
CERTIFICATE_MEMO = 4096


def counter_floor(now: datetime) -> int:
    """Microseconds since the epoch: counters never fall behind this, so a restore from an old backup
    cannot reuse a counter (docs/architecture.md §5.4)."""
    return int(now.timestamp() * 1_000_000)


class HandOutService:
    """The bench-facing workflows. Thread-safe; one instance per process."""

    def __init__(
        self,
        store: CustodyStore,
        signer: DigestSigner,
        anchors: TrustAnchors,
        clock: Clock,
        observer: IssuanceObserver | None = None,  # told what the issuance pipeline does (metrics)
    ) -> None:
        self._store = store
        self._anchors = anchors
        self._device_ca = load_certificate(anchors.device_ca)
        self._clock = clock
        self._in_flight: dict[tuple[str, str], threading.Lock] = {}
        self._in_flight_guard = threading.Lock()
        # Parsed certificates are immutable values: parse each DER once.
        self._certificate: Callable[[bytes], SmkiCertificate] = functools.lru_cache(CERTIFICATE_MEMO)(
            load_certificate
        )
        self._trusted_devices: dict[bytes, SmkiCertificate] = {}  # device certificates whose chain verified
        self._pipeline = IssuancePipeline(
            store, signer, anchors.issuing_ca, self._certificate, self._validate, observer
        )

    def close(self) -> None:
        """Finish the hand-outs in flight (stored and released), then stop issuing."""
        self._pipeline.close()

    def require_bench(
        self,
        bench_id: str,
        operation: BenchOperation | None = None,
        certificate_sha256: str | None = None,
        fresh: bool = True,
    ) -> None:
        """BenchNotEnrolled unless the bench is enrolled, not revoked and presents its enrolled certificate;
        OperationNotAllowed unless it is enrolled for `operation`. Callers check before reading any input.
        fresh=False reads the cached record (the issuance path: its write checks enrolment again, in the
        transaction that records the issuance, so a revocation is felt at once)."""
        bench = self._store.read_bench(bench_id) if fresh else self._store.get_bench(bench_id)
        require_enrolled(bench_id, bench, operation, certificate_sha256)

    def trust_bundle(self) -> TrustBundle:
        """What an enrolled bench pins before it checks any command (the caller checked the bench)."""
        return TrustBundle(
            tuple(self._store.list_generations()), tuple(self._store.list_areas()), self._anchors
        )

    # -- hand-out and rotation (the caller checked the bench: require_bench)
    def hand_out(self, request: HandOutRequest) -> SignedCommand:
        """The command moving a vanilla meter's NO cells to the request's area."""
        return self._issue(request)

    def rotate(self, request: RotationRequest) -> SignedCommand:
        """The command moving a meter in stock from its vanilla generation onto the active one."""
        return self._issue(request)

    def _issue(self, request: Request) -> SignedCommand:
        key = (request.bench_id, request.request_id)
        with self._in_flight_guard:
            lock = self._in_flight.setdefault(key, threading.Lock())
        try:
            with lock:  # a twin of this request in this process waits, then gets the same bytes
                return self._hand_out_once(request)
        finally:
            with self._in_flight_guard:
                self._in_flight.pop(key, None)

    def _hand_out_once(self, request: Request) -> SignedCommand:
        # A new request id is the common case: validate first; the pipeline's write step finds a retry.
        try:
            outcome = self._pipeline.issue(request)
        except OutstandingCommand:
            self._make_way(request.device_id)
            outcome = self._pipeline.issue(request)  # the attempt in the way is gone: try again, once
        if isinstance(outcome, SignedCommand):
            return outcome
        if isinstance(outcome, IssuanceRecord):
            return self._resume(outcome, request)
        # Refused. A retry of a request released earlier gets its bytes even if its inputs no longer pass
        # (e.g. the meter has applied the command since); an unfinished one is not finished on them.
        if isinstance(outcome.error, DeviceNotVanilla):
            self._settle_from_reading(request)  # the reading may prove an earlier command applied
        try:
            existing = self._store.find_issuance(request.bench_id, request.request_id)
        except Unavailable:
            existing = None
        if existing is not None and (
            existing.signed_command is not None or existing.status is IssuanceStatus.CANCELLED
        ):
            return self._resume(existing, request)
        raise outcome.error

    def _make_way(self, device_id: bytes) -> None:
        """A request for the meter met its outstanding issuance. Signed: OutstandingCommand naming it.
        Recorded at most STALE_ATTEMPT ago: Unavailable (it is being signed, or its attempt died: either
        way a retry within the bench's budget gets a definite answer). Older: its attempt died; it is failed
        and the caller tries again."""
        outstanding = self._store.outstanding_issuance(device_id)
        if outstanding is None:
            return
        if outstanding.status is not IssuanceStatus.RECORDED:
            raise OutstandingCommand(
                f"device {device_id.hex()} has an outstanding command: {outstanding.describe()}; its "
                "outcome must be reported (or the command cancelled) first"
            )
        now = self._clock()  # one reading: the attempt judged stale is the one the store fails
        if now - outstanding.created_at <= STALE_ATTEMPT:
            raise Unavailable(
                f"another request for device {device_id.hex()} ({outstanding.describe()}) is being signed; "
                "retry with the same request id"
            )
        self._store.fail_abandoned_issuances(now - STALE_ATTEMPT)

    def fail_abandoned(self) -> list[int]:
        """Mark FAILED every issuance RECORDED more than STALE_ATTEMPT ago (at start-up and by the
        housekeeping): its attempt died with its process, nothing of it was released, and it no longer holds
        its meter; a retry of its request finishes it under its recorded counter."""
        return self._store.fail_abandoned_issuances(self._clock() - STALE_ATTEMPT)

    def _validate(self, request: Request) -> NewIssuance:
        """Everything the command is built from comes from validated inputs and the allow-list (docs: rule
        2): a hand-out installs a registered area's set; a rotation the active generation's."""
        now = self._clock()
        target: CredentialSet
        area_id: int | None = None
        target_generation: int | None = None
        generations = self._store.list_generations()
        if isinstance(request, HandOutRequest):
            area = self._store.get_area(request.area_id)
            if area is None:
                raise UnknownArea(f"area {request.area_id} is not registered with this custodian")
            target, area_id = area.credentials, area.area_id
        device_cert = self._device_certificate(request.device_id, request.device_certificate, now)
        no_ds = read_network_operator_signing_cell(
            request.device_id, request.credentials_response, device_cert
        )
        generation = find_custodial_generation(
            request.device_id, no_ds, generations, self._certificate, self._store.list_areas
        )
        if isinstance(request, RotationRequest):
            active = rotation_target(request.device_id, generation, generations)
            target, target_generation = active.credentials, active.generation
        draft = IssuanceDraft(
            bench_id=request.bench_id,
            request_id=request.request_id,
            request_fingerprint=request.fingerprint(),
            device_id=request.device_id,
            area_id=area_id,
            generation=generation.generation,
            device_certificate=request.device_certificate,
            target_generation=target_generation,
        )
        return NewIssuance(draft, counter_floor(now), generation, target)

    def _target(self, record: IssuanceRecord) -> CredentialSet:
        """What a recorded issuance installs: its area's set, or its target generation's."""
        if record.target_generation is not None:
            target = next(
                (g for g in self._store.list_generations() if g.generation == record.target_generation), None
            )
            if target is None:
                raise KeyNotInCustody(
                    f"vanilla generation {record.target_generation} is no longer registered"
                )
            return target.credentials
        area = self._store.get_area(record.area_id or 0)
        if area is None:
            raise UnknownArea(f"area {record.area_id} is no longer registered")
        return area.credentials

    def _resume(self, record: IssuanceRecord, request: Request) -> SignedCommand:
        if record.request_fingerprint != request.fingerprint():
            raise RequestIdConflict(
                f"request id {request.request_id!r} was already used for another device, area or kind of "
                "command"
            )
        # A retry is answered from the records: the bench is checked afresh (a revocation is felt at once).
        self.require_bench(request.bench_id)
        if record.status is IssuanceStatus.CANCELLED:
            raise CommandCancelled(
                f"request {record.request_id!r} was cancelled by {record.cancelled_by} "
                f"({record.cancel_reason}): its command is not handed out again; ask anew with a new "
                "request id"
            )
        if record.signed_command is not None:
            self._store.ensure_durable()  # another process may have stored it and not yet synced it
            return SignedCommand.of(record, record.signed_command)
        if record.status is IssuanceStatus.RECORDED and self._clock() - record.created_at <= STALE_ATTEMPT:
            raise Unavailable("this request is still being signed; retry with the same request id")
        # A failed or abandoned attempt released nothing: finish it under its recorded counter, unless the
        # meter is held by another command or its records have moved on since (no useless signature).
        outstanding = self._store.outstanding_issuance(record.device_id)
        if outstanding is not None and outstanding.issuance_id != record.issuance_id:
            raise OutstandingCommand(
                f"device {record.device_id.hex()} has an outstanding command: {outstanding.describe()}; its "
                "outcome must be reported (or the command cancelled) first"
            )
        custody = self._store.device_custody(record.device_id)
        if custody is not None and (
            custody.state is not CustodyState.VANILLA or custody.generation != record.generation
        ):
            raise DeviceNotVanilla(
                f"the custodian's records show device {record.device_id.hex()} "
                f"{custody_phrase(custody.state, custody.area_id, custody.generation)} since this request "
                "was recorded"
            )
        target = self._target(record)
        generation = next(
            (g for g in self._store.list_generations() if g.generation == record.generation), None
        )
        if generation is None or not generation.signs:
            raise KeyNotInCustody(f"vanilla generation {record.generation} may no longer sign")
        return self._pipeline.finish(UnfinishedIssuance(record, generation, target))

    def _device_certificate(self, device_id: bytes, certificate: bytes, now: datetime) -> SmkiCertificate:
        """check_device_certificate, remembered per certificate; the validity of the certificate and of the
        device CA is checked against the clock on every call."""
        cert = self._trusted_devices.get(certificate)
        if (
            cert is not None
            and cert.entity_id == device_id
            and within_validity(cert, now)
            and within_validity(self._device_ca, now)
        ):
            return cert
        cert = check_device_certificate(device_id, certificate, self._device_ca, now)
        if len(self._trusted_devices) >= CERTIFICATE_MEMO:
            self._trusted_devices.clear()
        self._trusted_devices[certificate] = cert
        return cert

    # -- outcome
    def report_outcome(self, report: OutcomeReport) -> RecordedOutcome:
        """The meter's signed answer for a released hand-out or rotation (the caller checked the bench): its
        CS02b response to the command, or its CS02a answer read after the command was issued, showing it
        already holds what the command installs (the bench did not send it again). Also taken for a
        cancelled command (a meter that received it may have applied it). Recorded once; a later report that
        verifies to the same status answers the same."""
        record = self._store.find_issuance(report.bench_id, report.request_id)
        if record is None or record.signed_command is None:
            raise UnknownIssuance(f"no signed command for request id {report.request_id!r}")
        outcome = self._verify(record, report.response, report.credentials_answer)
        if record.outcome_response is None and self._store.record_outcome(
            record.issuance_id, outcome, report.evidence, f"bench:{report.bench_id}"
        ):
            return outcome
        recorded = self._store.find_issuance(report.bench_id, report.request_id)
        assert recorded is not None and recorded.outcome_response is not None  # recorded once, never undone
        if recorded.status is not outcome.status:
            raise OutcomeRejected(
                f"an outcome ({recorded.status.value}) was already recorded for this command; this answer "
                f"says {outcome.status.value}"
            )
        return self._verify_stored(recorded)

    def _verify_stored(self, record: IssuanceRecord) -> RecordedOutcome:
        """The recorded outcome, from the answer stored with it."""
        stored = record.outcome_response or b""
        try:
            code = decode_message(stored).apdu.header.message_code
        except GbcsError:
            code = None
        if code == MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
            return self._verify(record, b"", stored)
        return self._verify(record, stored, b"")

    def _verify(self, record: IssuanceRecord, response: bytes, credentials_answer: bytes) -> RecordedOutcome:
        """Check the meter's answer against the command (OutcomeRejected naming what does not hold) and say
        what the records then hold."""
        target = self._target(record)
        generation = next(
            (g for g in self._store.list_generations() if g.generation == record.generation), None
        )
        if generation is None:
            raise OutcomeRejected(f"vanilla generation {record.generation} is no longer registered")
        expected = ExpectedCells(
            target.entity_id,
            self._certificate(target.ds_certificate).subject_key_identifier,
            self._certificate(target.ka_certificate).subject_key_identifier,
        )
        device_certificate = self._certificate(record.device_certificate).certificate
        outcome: MeterOutcome
        if credentials_answer:
            outcome = check_credentials_answer(
                credentials_answer,
                device_id=record.device_id,
                device_certificate=device_certificate,
                expected=expected,
                floor_seq_number=HAND_OUT_FLOOR,
                read_after=record.counter,
                now=counter_floor(self._clock()),
            )
        else:
            outcome = check_meter_response(
                response,
                device_id=record.device_id,
                device_certificate=device_certificate,
                command_originator=generation.entity_id,
                counter=record.counter,
                expected=expected,
            )
        state, area_id, holding = self._custody_after(record, outcome)
        return RecordedOutcome(
            record.issuance_id,
            outcome.status,
            outcome.cell_statuses,
            outcome.no_ds,
            outcome.no_ka,
            custody=state,
            area_id=area_id,
            generation=holding,
            evidence="credentials" if credentials_answer else "response",
        )

    def _custody_after(
        self, record: IssuanceRecord, outcome: MeterOutcome
    ) -> tuple[CustodyState | None, int | None, int | None]:
        """What the records say the meter holds after this outcome: the command's target once applied;
        after a refusal, whoever the answer shows in the NO DS cell (normally the generation that signed)."""
        if outcome.status is IssuanceStatus.APPLIED:
            if record.target_generation is not None:
                return CustodyState.VANILLA, None, record.target_generation
            return CustodyState.AREA, record.area_id, None
        return self._holder(outcome.no_ds)

    def _holder(self, no_ds: CellState | None) -> tuple[CustodyState | None, int | None, int | None]:
        if no_ds is None:
            return None, None, None
        for generation in self._store.list_generations():
            if generation.entity_id == no_ds.entity_id and (
                self._certificate(generation.ds_certificate).subject_key_identifier
                == no_ds.subject_key_identifier
            ):
                return CustodyState.VANILLA, None, generation.generation
        for area in self._store.list_areas():
            if area.entity_id == no_ds.entity_id and (
                self._certificate(area.ds_certificate).subject_key_identifier == no_ds.subject_key_identifier
            ):
                return CustodyState.AREA, area.area_id, None
        return CustodyState.UNKNOWN, None, None

    def settle_from_reading(
        self, device_id: bytes, device_certificate: bytes, credentials_answer: bytes, actor: str
    ) -> IssuanceRecord | None:
        """A reading that came with another request for the meter (refused because the meter is not on
        vanilla, or is held by a command): when it proves one of the meter's released, unreported commands
        (the outstanding one, or a cancelled one) applied, by the evidence rule, record that outcome and
        return the command's issuance. The device certificate must be the one the command was issued for."""
        for record in self._store.unreported_commands(device_id):
            if record.device_certificate != device_certificate:
                continue
            try:
                outcome = self._verify(record, b"", credentials_answer)
            except VdnoError:
                continue
            self._store.record_outcome(record.issuance_id, outcome, credentials_answer, actor)
            return record
        return None

    def _settle_from_reading(self, request: Request) -> None:
        with contextlib.suppress(VdnoError):  # the refusal the caller is about to get says what matters
            self.settle_from_reading(
                request.device_id,
                request.device_certificate,
                request.credentials_response,
                f"bench:{request.bench_id}",
            )

    # -- cancellation
    def cancel_request(self, bench_id: str, request_id: str, reason: str) -> IssuanceRecord:
        """The bench that asked withdraws its command (the caller checked the bench)."""
        record = self._store.find_issuance(bench_id, request_id)
        if record is None:
            raise UnknownIssuance(f"no command for request id {request_id!r}")
        return self._store.cancel_issuance(
            record.issuance_id, Cancellation.create(f"bench:{bench_id}", reason), bench_id=bench_id
        )

    def cancel_issuance(self, officer_id: str, issuance_id: int, reason: str) -> IssuanceRecord:
        """An officer withdraws a command (the caller checked the officer), e.g. one a bench that no longer
        exists left outstanding."""
        return self._store.cancel_issuance(issuance_id, Cancellation.create(f"officer:{officer_id}", reason))
