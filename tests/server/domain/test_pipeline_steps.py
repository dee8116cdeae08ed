"""The issuance pipeline step by step (docs/architecture.md §4 "In detail"): what each caller of one step
gets, what the store holds after it, which HSM jobs it made, and what happens when the store write of
the next step fails. Real SQLite store and the software signer of test_pipeline.py; a first request is
held in the signer while the requests under test queue behind it, so the next step takes them together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_pipeline import (  # noqa: F401 (fixtures)
    RecordingObserver,
    SoftwareSigner,
    _prepared_store,
    _request,
    _StoreThatGoesDown,
    _validator,
    _verify,
    parties,
)

from vdno.gbcs.errors import GbcsError
from vdno.gbcs.signature import signed_digest
from vdno.gbcs.smki import load_certificate
from vdno.server.domain.commands import build_transfer_command
from vdno.server.domain.errors import (
    CommandCancelled,
    HsmUnavailable,
    SignatureCheckFailed,
    StoreUnavailable,
    Unavailable,
)
from vdno.server.domain.pipeline import IssuancePipeline, NewIssuance, Outcome, UnfinishedIssuance
from vdno.server.domain.values import (
    Cancellation,
    CredentialSet,
    HandOutRequest,
    IssuanceRecord,
    IssuanceStatus,
    IssuanceStep,
    SignedCommand,
)
from vdno.server.store.sql import SqlCustodyStore

T = TypeVar("T")
WAIT = 10.0  # seconds: a caller the pipeline never answers fails its test instead of hanging the run


class _StepSigner(SoftwareSigner):
    """Holds each job until `gate` is set; keeps each job's key and digests. What a job does is fixed
    when it starts: `error` is raised, `corrupt_first` spoils its first signature, `short` leaves off its
    last signature."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(key)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[str, list[bytes]]] = []
        self.error: BaseException | None = None
        self.failing_key: str | None = None  # with `error`: only this key's jobs raise it
        self.corrupt_first = False
        self.short = False

    def sign_digests(self, key: str, digests: Sequence[bytes]) -> list[bytes]:
        error, corrupt_first, short = self.error, self.corrupt_first, self.short
        self.calls.append((key, list(digests)))
        self.entered.set()
        assert self.gate.wait(WAIT)
        if error is not None and self.failing_key in (None, key):
            raise error
        signatures = super().sign_digests(key, digests)
        if corrupt_first:
            signatures[0] = bytes(64 - len(signatures[0])) + signatures[0][::-1]
        return signatures[:-1] if short else signatures


def _in_thread(call: Callable[[], T]) -> Future[T]:
    """`call` on a daemon thread: a caller left waiting does not keep the test process alive."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the test, which asserts on it
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


def _queued(pipeline: IssuancePipeline, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while pipeline._queue.qsize() < n:  # the pipeline's own queue: the order the next step takes
        assert time.monotonic() < deadline
        time.sleep(0.001)


def _in_one_step(
    pipeline: IssuancePipeline,
    signer: _StepSigner,
    calls: Sequence[Callable[[], Outcome]],
    meanwhile: Callable[[], object] = lambda: None,
    held_id: str = "held",
) -> tuple[Future[Outcome], list[Future[Outcome]]]:
    """Hold the pipeline signing request `held_id`, run `meanwhile`, queue `calls` behind it in this
    order, then let it go: the next step stores (or fails) `held_id` and takes all of `calls`."""
    signer.gate.clear()
    signer.entered.clear()
    held = _in_thread(lambda: pipeline.issue(_request(held_id)))
    assert signer.entered.wait(WAIT)
    meanwhile()
    futures = []
    for i, call in enumerate(calls, 1):
        futures.append(_in_thread(call))
        _queued(pipeline, i)
    signer.gate.set()
    return held, futures


def _failure(store: SqlCustodyStore, issuance_id: int) -> str | None:
    """The failure reason the store holds for an issuance."""
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT failure FROM issuances WHERE issuance_id = ?", (issuance_id,)
        ).first()
    assert row is not None
    return row[0]


def _by_request(store: SqlCustodyStore) -> dict[str, IssuanceRecord]:
    return {r.request_id: r for r in store.list_issuances()}


@pytest.fixture
def signer(parties) -> _StepSigner:  # noqa: F811 (the fixture imported above)
    return _StepSigner(parties[3])


@pytest.fixture
def seen() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def store(tmp_path: Path, parties) -> Iterator[_StoreThatGoesDown]:  # noqa: F811
    s = _prepared_store(_StoreThatGoesDown, tmp_path, parties)
    yield s
    s.close()


UNBUILDABLE = b"unbuildable"  # readings that make the validator target a certificate no command can hold


def _validate_with_unbuildable(parties) -> Callable[[HandOutRequest], NewIssuance]:  # noqa: F811
    valid = _validator(parties)

    def validate(request: HandOutRequest) -> NewIssuance:
        if request.credentials_response == b"defect":
            raise RuntimeError("validation defect")
        new = valid(request)
        if request.credentials_response == UNBUILDABLE:
            target = new.target
            return replace(
                new, target=CredentialSet(target.entity_id, b"\x30" * 70000, target.ka_certificate)
            )
        return new

    return validate


@pytest.fixture
def pipeline(store, signer, seen, parties) -> Iterator[IssuancePipeline]:  # noqa: F811
    p = IssuancePipeline(
        store, signer, parties[2], load_certificate, _validate_with_unbuildable(parties), seen
    )
    yield p
    p.close()


def test_one_step_signs_its_buildable_commands_in_one_hsm_job_and_fails_the_rest(
    pipeline: IssuancePipeline,
    store: SqlCustodyStore,
    signer: _StepSigner,
    seen: RecordingObserver,
    parties,  # noqa: F811
) -> None:
    generation, area, issuing_ca, _ = parties
    held, (bad, good) = _in_one_step(
        pipeline,
        signer,
        [lambda: pipeline.issue(_request("bad", UNBUILDABLE)), lambda: pipeline.issue(_request("good"))],
    )
    assert isinstance(held.result(WAIT), SignedCommand)
    with pytest.raises(GbcsError):  # the codec's refusal reaches the caller
        bad.result(WAIT)
    command = good.result(WAIT)
    assert isinstance(command, SignedCommand)
    _verify(command, parties)
    rows = _by_request(store)
    assert rows["bad"].status is IssuanceStatus.FAILED and rows["bad"].signed_command is None
    assert _failure(store, rows["bad"].issuance_id) == "command could not be built"
    assert rows["good"].status is IssuanceStatus.SIGNED and rows["good"].signed_command == command.command
    # one job per step, under the generation's key, over the digest of the command's signed range
    assert [key for key, _ in signer.calls] == [generation.ds_key_uri] * 2
    unsigned = build_transfer_command(
        generation, area.credentials, rows["good"].device_id, command.counter, issuing_ca
    )
    assert signer.calls[1][1] == [signed_digest(unsigned.signed_bytes())]
    assert [(d, e) for _, d, e in seen.hsm_jobs] == [(1, None), (1, None)]
    assert all(0 <= t < 60 for t, _, _ in seen.hsm_jobs)


def test_an_hsm_failure_fails_its_job_and_keeps_the_step_s_earlier_failures(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner, seen: RecordingObserver
) -> None:
    def unplug() -> None:
        signer.error = RuntimeError("the token driver crashed")  # no VdnoError: "unexpected"

    held, (bad, good) = _in_one_step(
        pipeline,
        signer,
        [lambda: pipeline.issue(_request("bad", UNBUILDABLE)), lambda: pipeline.issue(_request("good"))],
        meanwhile=unplug,
    )
    assert isinstance(held.result(WAIT), SignedCommand)
    with pytest.raises(GbcsError):
        bad.result(WAIT)
    with pytest.raises(RuntimeError, match="token driver crashed"):
        good.result(WAIT)
    rows = _by_request(store)
    assert {r: (rows[r].status, rows[r].signed_command) for r in ("bad", "good")} == {
        "bad": (IssuanceStatus.FAILED, None),
        "good": (IssuanceStatus.FAILED, None),
    }
    assert _failure(store, rows["bad"].issuance_id) == "command could not be built"
    assert _failure(store, rows["good"].issuance_id) == "RuntimeError"
    assert [(d, e) for _, d, e in seen.hsm_jobs] == [(1, None), (1, "unexpected")]
    assert all(0 <= t < 60 for t, _, _ in seen.hsm_jobs)


def test_a_signature_that_does_not_verify_fails_its_request_only(
    pipeline: IssuancePipeline,
    store: SqlCustodyStore,
    signer: _StepSigner,
    seen: RecordingObserver,
    parties,  # noqa: F811
) -> None:
    def spoil() -> None:
        signer.corrupt_first = True

    held, (bad, good) = _in_one_step(
        pipeline,
        signer,
        [lambda: pipeline.issue(_request("bad")), lambda: pipeline.issue(_request("good"))],
        meanwhile=spoil,
    )
    assert isinstance(held.result(WAIT), SignedCommand)
    with pytest.raises(SignatureCheckFailed) as rejected:
        bad.result(WAIT)
    assert str(rejected.value) == "the HSM signature did not verify; nothing was released"
    assert isinstance(rejected.value.__cause__, GbcsError)  # why: the check's own error
    command = good.result(WAIT)
    assert isinstance(command, SignedCommand)
    _verify(command, parties)
    rows = _by_request(store)
    assert rows["bad"].status is IssuanceStatus.FAILED and rows["bad"].signed_command is None
    assert _failure(store, rows["bad"].issuance_id) == "signature failed software verification"
    assert rows["good"].signed_command == command.command
    assert [len(digests) for _, digests in signer.calls] == [1, 2]  # both in one job
    assert seen.rejected == 1


def test_when_the_next_step_cannot_be_written_nothing_is_released_and_nothing_is_marked(
    pipeline: IssuancePipeline,
    store: _StoreThatGoesDown,
    signer: _StepSigner,
    seen: RecordingObserver,
    parties,  # noqa: F811
) -> None:
    generation, area, _, _ = parties

    def store_goes_down() -> None:
        store.down = True

    signed, _ = _in_one_step(pipeline, signer, [], meanwhile=store_goes_down, held_id="signed")
    with pytest.raises(StoreUnavailable):  # signed, but its bytes could not be stored
        signed.result(WAIT)
    store.down = False
    signer.error = HsmUnavailable("the test token is unplugged")
    failed, _ = _in_one_step(pipeline, signer, [], meanwhile=store_goes_down, held_id="failed")
    with pytest.raises(HsmUnavailable):  # the caller hears why its attempt failed
        failed.result(WAIT)
    rows = _by_request(store)
    store.down = True
    with pytest.raises(StoreUnavailable):  # a hand-out finished while the store is away
        pipeline.finish(UnfinishedIssuance(rows["failed"], generation, area.credentials))
    store.down = False
    rows = _by_request(store)
    for request_id in ("signed", "failed"):  # neither stored nor marked FAILED: still recorded
        assert rows[request_id].status is IssuanceStatus.RECORDED and rows[request_id].signed_command is None
    assert seen.issuances == [
        ("hand-out", "unavailable", 1),
        ("hand-out", "failed", 1),
        ("hand-out", "unavailable", 1),
    ]
    assert [written for _, _, written in seen.steps] == [True, False, True, False, False]
    assert all(0 <= t < 60 for _, t, _ in seen.steps)


def test_a_validation_defect_fails_its_caller_and_records_nothing(
    pipeline: IssuancePipeline, store: SqlCustodyStore, seen: RecordingObserver
) -> None:
    with pytest.raises(RuntimeError, match="validation defect"):
        pipeline.issue(_request("defect", b"defect"))
    assert store.list_issuances() == []
    assert seen.issuances == [("hand-out", "failed", None)]


def test_a_command_cancelled_while_it_was_signed_is_not_released(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner, seen: RecordingObserver
) -> None:
    def cancel() -> None:
        record = store.find_issuance("bench-01", "held")
        assert record is not None
        store.cancel_issuance(record.issuance_id, Cancellation.create("officer:1", "wrong meter"))

    held, _ = _in_one_step(pipeline, signer, [], meanwhile=cancel)
    with pytest.raises(CommandCancelled):
        held.result(WAIT)
    (row,) = store.list_issuances()
    assert row.status is IssuanceStatus.CANCELLED and row.signed_command is None
    assert seen.issuances == [("hand-out", "refused", 1)]  # the store's refusal, not an outage


def test_two_attempts_at_one_issuance_release_the_bytes_stored_first(
    pipeline: IssuancePipeline,
    store: SqlCustodyStore,
    signer: _StepSigner,
    parties,  # noqa: F811
) -> None:
    generation, area, _, _ = parties
    signer.gate.set()
    signer.error = HsmUnavailable("the test token is unplugged")
    with pytest.raises(HsmUnavailable):
        pipeline.issue(_request("twice"))
    signer.error = None
    work = UnfinishedIssuance(_by_request(store)["twice"], generation, area.credentials)
    _, (first, second) = _in_one_step(pipeline, signer, [lambda: pipeline.finish(work)] * 2)
    one, other = first.result(WAIT), second.result(WAIT)
    assert isinstance(one, SignedCommand) and isinstance(other, SignedCommand)
    stored = _by_request(store)["twice"].signed_command
    assert one.command == other.command == stored  # the second signature is dropped
    assert one.counter == other.counter == work.record.counter
    assert [len(digests) for _, digests in signer.calls][-1] == 2  # both were signed


def test_a_signer_that_answers_too_few_signatures_fails_the_step_and_releases_nothing(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner
) -> None:
    def short() -> None:
        signer.short = True

    held, (lost,) = _in_one_step(
        pipeline, signer, [lambda: pipeline.issue(_request("lost"))], meanwhile=short
    )
    assert isinstance(held.result(WAIT), SignedCommand)
    with pytest.raises(ValueError):
        lost.result(WAIT)
    row = _by_request(store)["lost"]
    assert row.status is IssuanceStatus.RECORDED and row.signed_command is None


class _StoreThatLosesOneStored(SqlCustodyStore):
    """The real store, except that one step answers without the items it stored (a defect)."""

    broken = True

    def write_issuance_step(self, signed, failed, drafts):  # type: ignore[no-untyped-def]
        step = super().write_issuance_step(signed, failed, drafts)
        if self.broken and signed:
            self.broken = False
            return IssuanceStep(stored=(), begun=step.begun)
        return step


def test_a_step_whose_store_answer_is_short_fails_its_callers(
    tmp_path: Path,
    signer: _StepSigner,
    parties,  # noqa: F811
) -> None:
    signer.gate.set()
    store = _prepared_store(_StoreThatLosesOneStored, tmp_path, parties)
    pipeline = IssuancePipeline(store, signer, parties[2], load_certificate, _validator(parties))
    try:
        with pytest.raises(ValueError):
            _in_thread(lambda: pipeline.issue(_request("lost"))).result(WAIT)
        assert isinstance(pipeline.issue(_request("after")), SignedCommand)
    finally:
        pipeline.close()
        store.close()


def test_close_returns_after_its_timeout_refuses_at_once_and_finishes_the_step(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner
) -> None:
    held = _in_thread(lambda: pipeline.issue(_request("held")))
    assert signer.entered.wait(WAIT)
    safety = threading.Timer(3.0, signer.gate.set)  # a pipeline that queued "late" fails below, not hangs
    safety.start()
    try:
        started = time.monotonic()
        pipeline.close(timeout=0.2)  # the step is still signing
        assert time.monotonic() - started < 2.0
        with pytest.raises(Unavailable) as refused:
            pipeline.issue(_request("late"))
        assert str(refused.value) == "the service is shutting down"
        assert not signer.gate.is_set()  # refused at once, not queued behind the step
    finally:
        signer.gate.set()
        safety.cancel()
    assert isinstance(held.result(WAIT), SignedCommand)  # what was submitted is finished
    assert list(_by_request(store)) == ["held"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the stop itself
def test_a_pipeline_thread_that_dies_refuses_what_is_queued_and_what_comes_after(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner
) -> None:
    signer.error = SystemExit("the pipeline thread stops")  # no Exception: nothing in the step catches it
    # "held" was taken by the step that died: its caller is refused too, not left waiting.
    held, queued = _in_one_step(
        pipeline, signer, [lambda: pipeline.issue(_request("q1")), lambda: pipeline.issue(_request("q2"))]
    )
    for future in [held, *queued]:
        with pytest.raises(Unavailable) as refused:
            future.result(WAIT)
        assert str(refused.value) == "the service is shutting down"
    with pytest.raises(Unavailable):
        pipeline.issue(_request("after"))
    assert list(_by_request(store)) == ["held"]


def test_each_key_is_one_hsm_job_and_one_key_failing_leaves_the_other_signed(
    store: SqlCustodyStore,
    signer: _StepSigner,
    seen: RecordingObserver,
    parties,  # noqa: F811
) -> None:
    generation, _, issuing_ca, _ = parties
    # a second generation, under its own key label (the same software key signs for both)
    second = replace(generation, generation=2, ds_key_uri="pkcs11:object=vanilla-ds-2")
    store.add_generation(second, "test")
    first_generation = _validate_with_unbuildable(parties)

    def validate(request: HandOutRequest) -> NewIssuance:
        new = first_generation(request)
        if request.credentials_response != b"second":
            return new
        return replace(new, draft=replace(new.draft, generation=2), generation=second)

    pipeline = IssuancePipeline(store, signer, issuing_ca, load_certificate, validate, seen)

    def unplug_the_first_key() -> None:
        signer.error = HsmUnavailable("the first key's token is unplugged")
        signer.failing_key = generation.ds_key_uri

    try:
        held, (one, other) = _in_one_step(
            pipeline,
            signer,
            [lambda: pipeline.issue(_request("one")), lambda: pipeline.issue(_request("other", b"second"))],
            meanwhile=unplug_the_first_key,
        )
        assert isinstance(held.result(WAIT), SignedCommand)
        with pytest.raises(HsmUnavailable):
            one.result(WAIT)
        command = other.result(WAIT)
        assert isinstance(command, SignedCommand)
    finally:
        pipeline.close()
    rows = _by_request(store)
    assert rows["one"].status is IssuanceStatus.FAILED
    assert _failure(store, rows["one"].issuance_id) == "HsmUnavailable"
    assert rows["other"].generation == 2 and rows["other"].signed_command == command.command
    assert [(key, len(digests)) for key, digests in signer.calls[1:]] == [
        (generation.ds_key_uri, 1),
        (second.ds_key_uri, 1),
    ]
    assert [e for _, _, e in seen.hsm_jobs] == [None, "HsmUnavailable", None]


def test_a_command_the_database_refuses_to_store_is_an_outage_for_its_caller(
    pipeline: IssuancePipeline, store: SqlCustodyStore, signer: _StepSigner, seen: RecordingObserver
) -> None:
    def break_storing() -> None:  # the database now fails every UPDATE of an issuance, nothing else
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER no_update BEFORE UPDATE ON issuances BEGIN SELECT * FROM gone; END"
            )

    held, _ = _in_one_step(pipeline, signer, [], meanwhile=break_storing)
    with pytest.raises(StoreUnavailable):
        held.result(WAIT)
    (row,) = [r for r in store.list_issuances() if r.request_id == "held"]
    assert row.status is IssuanceStatus.RECORDED and row.signed_command is None
    assert seen.issuances[0] == ("hand-out", "unavailable", 1)
    assert [written for _, _, written in seen.steps] == [True, True]  # the step itself was written
