"""The issuance pipeline: docs/architecture.md §5.3 and §5.6 at one durable write per step instead of two
per issuance.

One thread per process runs steps, and it also validates the requests it takes (the caller's checks of
the readings): one thread does a process's per-request Python work, so request threads do not compete
with it for the interpreter lock. A step is one store write (CustodyStore.write_issuance_step) that
stores the signed bytes of the commands signed in the previous step, marks the previous step's failed
attempts FAILED, and records the drafts that arrived since (counter allocated, issuance recorded). Once
it has committed, the previous step's commands are released (and its failures reported), and the newly
recorded issuances are built, signed in one HSM job per key and verified with the certificate's public
key; they wait for the next step. So:
- an issuance is durable before its signature exists, and its signed bytes are durable before release;
- a store that is down means no signature, or no release of one already made (UNAVAILABLE);
- a failed attempt is marked FAILED before its caller hears of it, so a retry may finish it.

An IssuanceObserver (server/domain/ports.py) is told each issuance's outcome when its caller is, each
step's size and store write, and each HSM job.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vdno.gbcs.framing import encode_signed_apdu
from vdno.gbcs.signature import signed_digest, verify_signature
from vdno.gbcs.smki import SmkiCertificate
from vdno.server.domain.commands import build_transfer_command
from vdno.server.domain.errors import SignatureCheckFailed, Unavailable, VdnoError
from vdno.server.domain.ports import (
    CustodyStore,
    DigestSigner,
    IssuanceObserver,
    IssuanceOutcome,
    NoIssuanceObserver,
)
from vdno.server.domain.values import (
    BenchOperation,
    CredentialSet,
    HandOutRequest,
    IssuanceDraft,
    IssuanceRecord,
    RotationRequest,
    SignedCommand,
    VanillaGeneration,
)

MAX_DRAFTS_PER_STEP = 48
T = TypeVar("T")


class Reply(Generic[T]):
    """One waiting caller's outcome, set once by the pipeline thread. A held lock is the whole signal:
    per hand-out it costs a fraction of a concurrent.futures.Future (no Condition, no callbacks)."""

    __slots__ = ("_error", "_ready", "_set", "_value")

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._set = False
        self._value: T | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._set

    def set_result(self, value: T) -> None:
        self._value, self._set = value, True
        self._ready.release()

    def set_exception(self, error: BaseException) -> None:
        self._error, self._set = error, True
        self._ready.release()

    def result(self) -> T:
        """Wait for the outcome (once: a Reply has one waiter); raise the error it was set with."""
        self._ready.acquire()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set_result ran


@dataclass(frozen=True)
class NewIssuance:
    """A validated hand-out or rotation: record it under a fresh counter, then sign it."""

    draft: IssuanceDraft
    counter_floor: int
    generation: VanillaGeneration  # whose key signs
    target: CredentialSet  # what the command installs


@dataclass(frozen=True)
class UnfinishedIssuance:
    """A recorded issuance whose attempt failed or was abandoned: sign it under its recorded counter."""

    record: IssuanceRecord
    generation: VanillaGeneration
    target: CredentialSet


@dataclass(frozen=True)
class Refused:
    """Validation refused the request; the caller decides (a retry may still be owed its stored bytes)."""

    error: VdnoError


Request = HandOutRequest | RotationRequest
Work = Request | UnfinishedIssuance
# What a caller gets: the released command, or for a new request the record its request id already had,
# or the refusal of its validation.
Outcome = SignedCommand | IssuanceRecord | Refused


def _kind(work: Work | IssuanceDraft | IssuanceRecord) -> BenchOperation:
    if isinstance(work, UnfinishedIssuance):
        work = work.record
    if isinstance(work, IssuanceDraft | IssuanceRecord):
        return BenchOperation.HAND_OUT if work.target_generation is None else BenchOperation.ROTATION
    return BenchOperation.HAND_OUT if isinstance(work, HandOutRequest) else BenchOperation.ROTATION


def _not_written(error: BaseException) -> IssuanceOutcome:
    """The outcome of an issuance the store refused or could not write."""
    return IssuanceOutcome.UNAVAILABLE if isinstance(error, Unavailable) else IssuanceOutcome.REFUSED


@dataclass(frozen=True)
class _Signed:
    reply: Reply[Outcome]
    record: IssuanceRecord
    command: bytes


@dataclass(frozen=True)
class _Failed:
    reply: Reply[Outcome]
    record: IssuanceRecord
    reason: str
    error: BaseException


class IssuancePipeline:
    """Thread-safe: any number of request threads submit; one pipeline thread runs the steps."""

    def __init__(
        self,
        store: CustodyStore,
        signer: DigestSigner,
        issuing_ca: bytes,
        certificate: Callable[[bytes], SmkiCertificate],
        validate: Callable[[Request], NewIssuance],
        observer: IssuanceObserver | None = None,
    ) -> None:
        self._store = store
        self._observer: IssuanceObserver = observer or NoIssuanceObserver()
        self._validate = validate
        self._signer = signer
        self._issuing_ca = issuing_ca
        self._certificate = certificate
        self._queue: queue.SimpleQueue[tuple[Work, Reply[Outcome]] | None] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="issuance-pipeline", daemon=True)
        self._thread.start()

    def issue(self, request: Request) -> Outcome:
        """Validate the request, record, sign, verify, store, release. A VdnoError from `validate` comes
        back as Refused (a retry may still be owed its stored bytes); a recorded request id comes back as
        its IssuanceRecord."""
        return self._submit(request)

    def finish(self, work: UnfinishedIssuance) -> SignedCommand:
        outcome = self._submit(work)
        assert isinstance(outcome, SignedCommand)  # only a draft can meet an existing record
        return outcome

    def close(self, timeout: float = 10.0) -> None:
        """Finish the work already submitted (its signed commands are stored and released), then stop."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _submit(self, work: Work) -> Outcome:
        reply: Reply[Outcome] = Reply()
        with self._state_lock:
            if self._closed or not self._thread.is_alive():
                raise Unavailable("the service is shutting down")
            self._queue.put((work, reply))
        return reply.result()

    # -- pipeline thread
    def _run(self) -> None:
        signed: list[_Signed] = []
        failed: list[_Failed] = []
        closing = False
        try:
            while not closing or signed or failed:
                incoming: list[tuple[Work, Reply[Outcome]]] = []
                if not closing:
                    closing = self._take(incoming, block=not (signed or failed))
                try:
                    signed, failed = self._step(signed, failed, incoming)
                # A defect fails this step's callers (nothing unstored is released); SystemExit and the
                # like end the thread after refusing them.
                except BaseException as exc:
                    stopping = not isinstance(exc, Exception)
                    error = Unavailable("the service is shutting down") if stopping else exc
                    waiting = [s.reply for s in signed] + [x.reply for x in failed] + [r for _, r in incoming]
                    for reply in waiting:
                        if not reply.done():
                            reply.set_exception(error)
                    signed, failed = [], []
                    if stopping:
                        raise
        finally:
            with self._state_lock:
                self._closed = True  # nothing new is queued; anything already queued is refused
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[1].set_exception(Unavailable("the service is shutting down"))

    def _take(self, into: list[tuple[Work, Reply[Outcome]]], block: bool) -> bool:
        """Move waiting work into `into`; True once close() was called."""
        while len(into) < MAX_DRAFTS_PER_STEP:
            try:
                item = self._queue.get() if block and not into else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            into.append(item)
        return False

    def _step(
        self, signed: list[_Signed], failed: list[_Failed], incoming: list[tuple[Work, Reply[Outcome]]]
    ) -> tuple[list[_Signed], list[_Failed]]:
        observe = self._observer.issuance
        drafts: list[tuple[NewIssuance, Reply[Outcome]]] = []
        for work, reply in incoming:
            if not isinstance(work, UnfinishedIssuance):
                try:
                    drafts.append((self._validate(work), reply))
                except VdnoError as exc:
                    reply.set_result(Refused(exc))
                    observe(_kind(work), IssuanceOutcome.REFUSED, None)
                except Exception as exc:
                    reply.set_exception(exc)
                    observe(_kind(work), IssuanceOutcome.FAILED, None)
        to_sign = [
            (f, w.record, w.generation, w.target) for w, f in incoming if isinstance(w, UnfinishedIssuance)
        ]
        started = time.perf_counter()
        try:
            step = self._store.write_issuance_step(
                [(s.record, s.command) for s in signed],
                [(x.record.issuance_id, x.reason) for x in failed],
                [(w.draft, w.counter_floor) for w, _ in drafts],
            )
        except Exception as exc:  # nothing of this step is durable: nothing is released or signed
            self._observer.step(len(incoming), time.perf_counter() - started, False)
            for s in signed:
                s.reply.set_exception(exc)
                observe(_kind(s.record), IssuanceOutcome.UNAVAILABLE, s.record.generation)
            for x in failed:
                x.reply.set_exception(x.error)
                observe(_kind(x.record), IssuanceOutcome.FAILED, x.record.generation)
            for w, f in drafts:
                f.set_exception(exc)
                observe(_kind(w.draft), IssuanceOutcome.UNAVAILABLE, w.draft.generation)
            for u, f in incoming:
                if isinstance(u, UnfinishedIssuance):
                    f.set_exception(exc)
                    observe(_kind(u), IssuanceOutcome.UNAVAILABLE, u.record.generation)
            return [], []
        self._observer.step(len(incoming), time.perf_counter() - started, True)
        for s, stored in zip(signed, step.stored, strict=True):
            if isinstance(stored, VdnoError):
                s.reply.set_exception(stored)
                observe(_kind(s.record), _not_written(stored), s.record.generation)
            else:  # another attempt may have stored its bytes first: the stored bytes are the ones released
                s.reply.set_result(SignedCommand.of(stored, stored.signed_command or s.command))
                observe(_kind(s.record), IssuanceOutcome.SIGNED, s.record.generation)
        for x in failed:
            x.reply.set_exception(x.error)
            observe(_kind(x.record), IssuanceOutcome.FAILED, x.record.generation)
        for (new, reply), begun in zip(drafts, step.begun, strict=True):
            if isinstance(begun, VdnoError):
                reply.set_exception(begun)
                observe(_kind(new.draft), _not_written(begun), new.draft.generation)
            elif not begun[1]:
                reply.set_result(begun[0])  # the request id is already recorded: the caller resumes it
                observe(_kind(new.draft), IssuanceOutcome.RETRY, new.draft.generation)
            else:
                to_sign.append((reply, begun[0], new.generation, new.target))
        return self._sign(to_sign)

    def _sign(
        self, work: list[tuple[Reply[Outcome], IssuanceRecord, VanillaGeneration, CredentialSet]]
    ) -> tuple[list[_Signed], list[_Failed]]:
        signed: list[_Signed] = []
        failed: list[_Failed] = []
        # signed range: what the HSM signs (as a SHA-256 digest) and what is verified
        by_key: dict[str, list[tuple[Reply[Outcome], IssuanceRecord, VanillaGeneration, bytes]]] = {}
        for reply, record, generation, target in work:
            try:
                apdu = build_transfer_command(
                    generation, target, record.device_id, record.counter, self._issuing_ca
                )
            except Exception as exc:  # e.g. a target certificate the codec cannot place
                failed.append(_Failed(reply, record, "command could not be built", exc))
                continue
            by_key.setdefault(generation.ds_key_uri, []).append(
                (reply, record, generation, apdu.signed_bytes())
            )
        for key, items in by_key.items():
            digests = [signed_digest(signed_range) for *_, signed_range in items]
            started = time.perf_counter()
            try:
                signatures = self._signer.sign_digests(key, digests)
            except Exception as exc:
                named = type(exc).__name__ if isinstance(exc, VdnoError) else "unexpected"
                self._observer.hsm_job(time.perf_counter() - started, len(digests), named)
                failed += [_Failed(f, r, type(exc).__name__, exc) for f, r, _, _ in items]
                continue
            self._observer.hsm_job(time.perf_counter() - started, len(digests), None)
            for (reply, record, generation, signed_range), signature in zip(items, signatures, strict=True):
                try:
                    # docs/architecture.md §5.6: verified with the certificate's public key before release.
                    verify_signature(
                        signed_range,
                        signature,
                        self._certificate(generation.ds_certificate).certificate,
                    )
                except Exception as exc:  # GbcsError: does not verify; anything else: cannot be checked
                    error = SignatureCheckFailed("the HSM signature did not verify; nothing was released")
                    error.__cause__ = exc
                    self._observer.hsm_signature_rejected()
                    failed.append(_Failed(reply, record, "signature failed software verification", error))
                    continue
                signed.append(_Signed(reply, record, encode_signed_apdu(signed_range, signature)))
        return signed, failed
