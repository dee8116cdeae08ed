"""Hand-out issuance: validate here, then record -> build -> sign in the HSM -> verify in software ->
store the signed bytes -> release in the issuance pipeline (server/domain/pipeline.py); retries, twins
and outcomes (docs/architecture.md §4, §5.2-5.6)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from gbcs.smki import SmkiCertificate, load_certificate
from server.domain.errors import (
    KeyNotInCustody,
    OutcomeRejected,
    RequestIdConflict,
    Unavailable,
    UnknownArea,
    UnknownIssuance,
)
from server.domain.outcomes import ExpectedCells, check_meter_response
from server.domain.pipeline import IssuancePipeline, NewIssuance, Request, UnfinishedIssuance
from server.domain.policy import (
    TrustAnchors,
    TrustBundle,
    check_device_certificate,
    find_custodial_generation,
    read_network_operator_signing_cell,
    require_enrolled,
    rotation_target,
    within_validity,
)
from server.domain.ports import CustodyStore, DigestSigner, IssuanceObserver
from server.domain.values import (
    BenchOperation,
    CredentialSet,
    HandOutRequest,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    OutcomeReport,
    RecordedOutcome,
    RotationRequest,
    SignedCommand,
)

Clock = Callable[[], datetime]
# A RECORDED issuance untouched for this long belongs to an attempt that died; a retry may finish it.
STALE_ATTEMPT = timedelta(seconds=30)
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
        outcome = self._pipeline.issue(request)
        if isinstance(outcome, SignedCommand):
            return outcome
        if isinstance(outcome, IssuanceRecord):
            return self._resume(outcome, request)
        # Refused. A retry of a request released earlier gets its bytes even if its inputs no longer pass.
        try:
            existing = self._store.find_issuance(request.bench_id, request.request_id)
        except Unavailable:
            existing = None
        if existing is None:
            raise outcome.error
        return self._resume(existing, request)

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
        generation = find_custodial_generation(request.device_id, no_ds, generations, self._certificate)
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
        if record.signed_command is not None:
            self._store.ensure_durable()  # another process may have stored it and not yet synced it
            return SignedCommand.of(record, record.signed_command)
        if record.status is IssuanceStatus.RECORDED and self._clock() - record.created_at < STALE_ATTEMPT:
            raise Unavailable("this request is still being signed; retry with the same request id")
        # A failed or abandoned attempt released nothing: finish it under its recorded counter.
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
        """The meter's response to a released hand-out or rotation (the caller checked the bench)."""
        record = self._store.find_issuance(report.bench_id, report.request_id)
        if record is None or record.signed_command is None:
            raise UnknownIssuance(f"no signed command for request id {report.request_id!r}")
        outcome = self._check_response(record, self._target(record), report.response)
        if record.outcome_response is not None:
            if record.outcome_response != report.response:
                raise OutcomeRejected("an outcome was already recorded for this hand-out")
            return outcome
        self._store.record_outcome(record.issuance_id, outcome, report.response, f"bench:{report.bench_id}")
        return outcome

    def _check_response(
        self, record: IssuanceRecord, target: CredentialSet, response: bytes
    ) -> RecordedOutcome:
        generation = next(
            (g for g in self._store.list_generations() if g.generation == record.generation), None
        )
        if generation is None:
            raise OutcomeRejected(f"vanilla generation {record.generation} is no longer registered")
        outcome = check_meter_response(
            response,
            device_id=record.device_id,
            device_certificate=self._certificate(record.device_certificate).certificate,
            command_originator=generation.entity_id,
            counter=record.counter,
            expected=ExpectedCells(
                target.entity_id,
                self._certificate(target.ds_certificate).subject_key_identifier,
                self._certificate(target.ka_certificate).subject_key_identifier,
            ),
        )
        return RecordedOutcome(
            record.issuance_id, outcome.status, outcome.cell_statuses, outcome.no_ds, outcome.no_ka
        )
