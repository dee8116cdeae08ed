"""Interfaces the domain needs from the layers below it (implemented in server/hsm and server/store)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from vdno.server.domain.audit import AuditTip
from vdno.server.domain.outcomes import MeterOutcome
from vdno.server.domain.values import (
    Area,
    AuditEvent,
    AuthorisedHandIn,
    Bench,
    BenchOperation,
    Cancellation,
    DeviceCustody,
    DeviceEvent,
    FleetSummary,
    HandInDraft,
    HandInOrder,
    HandInStatus,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStep,
    Officer,
    RecordedOutcome,
    VanillaGeneration,
)


class DigestSigner(Protocol):
    """Signs SHA-256 digests with a private EC P-256 key held in the HSM (CKM_ECDSA).

    `key` is the RFC 7512 PKCS#11 URI from configuration naming the private key.
    Implementations serialise calls into the token (docs/architecture.md §5.7) and are safe to call from
    many threads. Errors: HsmUnavailable (token down: retry), HsmLoginRefused (the PIN was refused:
    an operator must act), KeyNotInCustody (no such key, or it fails its attribute checks).
    """

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        """The 64-byte raw r‖s signature of each 32-byte digest, in order, in one trip to the token."""
        ...


class CustodyStore(Protocol):
    """What the domain reads and writes (bootstrap and officers' custody writes use the concrete store).
    Every write also appends its security event to the hash-chained audit log in the same
    transaction (docs/architecture.md §5.9). Errors: StoreUnavailable when nothing could be made durable."""

    # reference data
    def get_area(self, area_id: int) -> Area | None: ...
    def list_areas(self) -> list[Area]: ...
    def list_generations(self) -> list[VanillaGeneration]: ...
    def get_bench(self, bench_id: str) -> Bench | None:
        """The bench as read at most a second ago (the issuance path: its write checks again)."""
        ...

    def read_bench(self, bench_id: str) -> Bench | None:
        """The bench as the database says now: a revocation is felt at once."""
        ...

    # issuance (docs/architecture.md §5.3-5.5)
    def find_issuance(self, bench_id: str, request_id: str) -> IssuanceRecord | None: ...
    def ensure_durable(self) -> None:
        """Return once every commit this store can read is durable: call it before releasing what was
        read (docs/architecture.md §5.3). StoreUnavailable if that cannot be made sure."""
        ...

    def write_issuance_step(
        self,
        signed: Sequence[tuple[IssuanceRecord, bytes]],
        failed: Sequence[tuple[int, str]],
        drafts: Sequence[tuple[IssuanceDraft, int]],
    ) -> IssuanceStep:
        """One durable write for the issuance pipeline, returning only after it committed:
        - `signed`: store each verified signed command (status SIGNED) and return the record; when another
          attempt stored its bytes first, the record with those (the ones to release); CommandCancelled
          if it was cancelled, OutstandingCommand if another issuance holds the meter meanwhile,
          UnknownIssuance otherwise when the record is not awaiting a signature;
        - `failed`: mark each (issuance id, reason) FAILED if still RECORDED (best effort: an error leaves
          the record RECORDED, which a retry may finish once it is stale);
        - `drafts`: per (draft, counter floor), allocate the generation's next counter,
          max(last + 1, floor), and record the issuance; (existing record, False) when (bench, request id)
          is already recorded, and nothing is written for it. Refused (nothing written): OutstandingCommand
          naming the meter's outstanding issuance, DeviceNotVanilla when the device's records show it
          elsewhere than on the draft's generation (OutstandingCommand with a hand-in outstanding),
          BenchNotEnrolled, KeyNotInCustody.
        Writes that the caller hands in together commit together whenever the store can do so."""
        ...

    def record_outcome(self, issuance_id: int, outcome: RecordedOutcome, response: bytes, actor: str) -> bool:
        """Record the verified outcome (status, the answer, and the device's custody per `outcome.custody`
        while the records still show the device on the generation that signed); False, changing nothing,
        when the issuance already has one."""
        ...

    # one outstanding command per meter, abandoned attempts, cancellations (ARCHITECTURE §5.12)
    def get_issuance(self, issuance_id: int) -> IssuanceRecord | None: ...
    def outstanding_issuance(self, device_id: bytes) -> IssuanceRecord | None:
        """The meter's RECORDED or SIGNED, unreported issuance (at most one: the store enforces it)."""
        ...

    def unreported_commands(self, device_id: bytes) -> list[IssuanceRecord]:
        """The meter's released commands without an outcome (the outstanding one, cancelled ones), newest
        first."""
        ...

    def device_custody(self, device_id: bytes) -> DeviceCustody | None: ...
    def fail_abandoned_issuances(self, recorded_before: datetime) -> list[int]:
        """Mark FAILED (audited) every issuance still RECORDED that was recorded before `recorded_before`."""
        ...

    def cancel_issuance(
        self, issuance_id: int, cancellation: Cancellation, bench_id: str | None = None
    ) -> IssuanceRecord:
        """RECORDED, SIGNED or FAILED -> CANCELLED (audited); idempotent; CustodyConflict once an outcome is
        recorded; with `bench_id`, UnknownIssuance unless it is that bench's."""
        ...


class HandInStore(Protocol):
    """Hand-in orders and the fleet's custody records. Every write appends its security event to the audit log
    and the device's history in the same transaction. Errors: StoreUnavailable when nothing could be made
    durable."""

    def get_area(self, area_id: int) -> Area | None: ...
    def list_areas(self) -> list[Area]: ...
    def list_generations(self) -> list[VanillaGeneration]: ...
    def read_bench(self, bench_id: str) -> Bench | None: ...
    def get_officer(self, officer_id: str) -> Officer | None: ...

    def record_hand_in_order(self, draft: HandInDraft) -> tuple[HandInOrder, bool]:
        """Record the order (status AWAITING) and the device's new custody state, or return the order already
        recorded under (bench, request id) with False. OutstandingCommand, naming it, when the device already
        has an outstanding order (AWAITING or AUTHORISED) under another request id."""
        ...

    def find_hand_in_order(self, bench_id: str, request_id: str) -> HandInOrder | None: ...
    def get_hand_in_order(self, order_id: int) -> HandInOrder | None: ...
    def outstanding_issuance(self, device_id: bytes) -> IssuanceRecord | None:
        """The meter's RECORDED or SIGNED, unreported hand-out or rotation, if any."""
        ...

    def outstanding_hand_in(self, device_id: bytes) -> HandInOrder | None:
        """The device's order that is AWAITING or AUTHORISED, if any (at most one: the store enforces it)."""
        ...

    def list_hand_in_orders(self, area_id: int | None, status: HandInStatus | None) -> list[HandInOrder]: ...
    def authorise_hand_in(self, authorised: AuthorisedHandIn, actor: str) -> HandInOrder:
        """AWAITING -> AUTHORISED with the command; the order as it now is. HandInCommandRefused if the order
        is no longer awaiting (another command won)."""
        ...

    def authorised_hand_ins(self, device_ids: Sequence[bytes]) -> list[HandInOrder]: ...
    def hand_in_orders_of(self, device_id: bytes) -> list[HandInOrder]: ...
    def record_hand_in_outcome(
        self, order_id: int, outcome: MeterOutcome, response: bytes, actor: str
    ) -> None: ...
    def record_export(self, orders: Sequence[HandInOrder], actor: str) -> None:
        """Audit that these orders' DUIS requests were exported."""
        ...

    def fleet_summary(self) -> FleetSummary: ...
    def device_custody(self, device_id: bytes) -> DeviceCustody | None: ...
    def device_history(self, device_id: bytes) -> list[DeviceEvent]: ...
    def devices_holding(self, generation: int) -> list[bytes]: ...


class AuditLogStore(Protocol):
    """The audit log as the checkpoint service sees it. Errors: StoreUnavailable."""

    def get_officer(self, officer_id: str) -> Officer | None: ...
    def audit_tip(self) -> AuditTip | None:
        """The chain head row and the entries at and just after it, read in one statement (None: no head
        row). AuditChainBroken when the head row is malformed."""
        ...

    def ensure_durable(self) -> None: ...
    def record_event(self, event: AuditEvent) -> None:
        """Append one event to the log in a transaction of its own; returns once it is durable."""
        ...


class IssuanceOutcome(StrEnum):
    """What became of one hand-out or rotation the issuance pipeline took, told once, when its caller is."""

    SIGNED = "signed"  # signed, verified, stored and released
    RETRY = "retry"  # its request id was already recorded: the caller resumes that issuance
    REFUSED = "refused"  # validation or the store's checks refused it: nothing recorded
    FAILED = "failed"  # building, signing or verifying failed: nothing released (a retry may finish it)
    UNAVAILABLE = "unavailable"  # the store could not write: nothing signed, or nothing released


class IssuanceObserver(Protocol):
    """Told what the issuance pipeline does, for metrics. Called on the pipeline thread: each call must
    return at once and never raise. Every argument takes few values (no device or bench ids)."""

    def issuance(self, kind: BenchOperation, outcome: IssuanceOutcome, generation: int | None) -> None:
        """One issuance ended with `outcome`; `generation` is the one whose key signs (None when the
        request was refused before one was found)."""
        ...

    def step(self, requests: int, write_seconds: float, written: bool) -> None:
        """One step took `requests` new requests; its one store write took `write_seconds` and committed
        (written) or failed."""
        ...

    def hsm_job(self, seconds: float, digests: int, error: str | None) -> None:
        """One trip to the HSM with `digests` digests for one key took `seconds`; `error` is the name of
        the error it raised (None: it signed them all)."""
        ...

    def hsm_signature_rejected(self) -> None:
        """A signature the HSM returned did not verify with the certificate's public key."""
        ...


class NoIssuanceObserver:
    """The IssuanceObserver that does nothing (no metrics)."""

    def issuance(self, kind: BenchOperation, outcome: IssuanceOutcome, generation: int | None) -> None:
        pass

    def step(self, requests: int, write_seconds: float, written: bool) -> None:
        pass

    def hsm_job(self, seconds: float, digests: int, error: str | None) -> None:
        pass

    def hsm_signature_rejected(self) -> None:
        pass
