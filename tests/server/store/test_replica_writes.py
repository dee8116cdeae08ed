"""Replicas on one PostgreSQL database: two stores (as two server processes) write issuance steps at once.
The steps are lined up behind a third connection that holds the counter rows, so the interleaving that
used to deadlock happens on every run instead of now and then."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from vdno.server.domain.values import (
    GenerationStatus,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStep,
    VanillaGeneration,
)
from vdno.server.store.engine import make_engine
from vdno.server.store.sql import SqlCustodyStore, open_store

FLOOR = 1


def generation(number: int) -> VanillaGeneration:
    return VanillaGeneration(
        number,
        b"VDNO\x00\x00\x00" + bytes([number]),
        f"pkcs11:object=ds{number}",
        f"pkcs11:object=ka{number}",
        b"ds",
        b"ka",
        GenerationStatus.ACTIVE,
    )


def draft(request_id: str, gen: int = 1) -> IssuanceDraft:
    """A hand-out request of bench-01 for a meter of its own (one outstanding command per meter)."""
    device = b"\x00\xdb" + hashlib.sha256(request_id.encode()).digest()[:6]
    return IssuanceDraft("bench-01", request_id, "fp", device, 12, gen, b"cert")


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL whose search_path is a throwaway schema, the schema's name)."""
    base = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}", schema
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def replicas(schema_url: tuple[str, str]) -> Iterator[tuple[SqlCustodyStore, SqlCustodyStore]]:
    url, _ = schema_url
    a, b = open_store(url), open_store(url)
    a.add_generation(generation(1), "t")
    a.add_generation(generation(2), "t")
    a.enroll_bench("bench-01", "t")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class CounterGate:
    """A third connection holding the counter rows (FOR UPDATE), so that steps started meanwhile queue
    behind it in a chosen order; open() lets them all go at once."""

    def __init__(self, postgres_url: str, schema: str, generations: tuple[int, ...]) -> None:
        self._conn = psycopg.connect(postgres_url, options=f"-csearch_path={schema}")
        self._conn.execute(
            "SELECT generation FROM counters WHERE generation = ANY(%s) FOR UPDATE", (list(generations),)
        )
        self._pid = self._conn.info.backend_pid
        self._watch = psycopg.connect(postgres_url, autocommit=True)

    def waiting(self) -> int:
        """How many backends wait, directly or behind another waiter, on this gate's locks."""
        rows = self._watch.execute(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchall()
        behind = {self._pid}
        grew = True
        while grew:
            before = len(behind)
            behind |= {pid for pid, blockers in rows if behind.intersection(blockers)}
            grew = len(behind) > before
        return len(behind) - 1

    def queue(self, steps: list[Callable[[], IssuanceStep]]) -> list[Any]:
        """Start each step in its own thread once the previous one waits at the gate; open the gate; each
        step's IssuanceStep (or the exception it raised)."""
        results: list[Any] = [None] * len(steps)

        def run(i: int, step: Callable[[], IssuanceStep]) -> None:
            try:
                results[i] = step()
            except Exception as exc:  # reported as the result
                results[i] = exc

        threads = []
        for i, step in enumerate(steps):
            threads.append(threading.Thread(target=run, args=(i, step)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while self.waiting() < i + 1:
                assert time.monotonic() < deadline, f"step {i} never waited at the gate"
                time.sleep(0.01)
        self._conn.commit()
        for t in threads:
            t.join(timeout=30)
        self._conn.close()
        self._watch.close()
        return results


def new_records(step: Any) -> list[IssuanceRecord]:
    assert isinstance(step, IssuanceStep), step
    outcomes = [*step.stored, *step.begun]
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert not failures, [f"{f!r} caused by {f.__cause__!r}" for f in failures]
    return [b[0] for b in step.begun if isinstance(b, tuple) and b[1]]


def test_a_twin_meets_a_record_its_replica_is_completing_without_deadlock(
    postgres_url: str, schema_url: tuple[str, str], replicas: tuple[SqlCustodyStore, SqlCustodyStore]
) -> None:
    a, b = replicas
    (twin, _), *_ = a.write_issuance_step((), (), ((draft("twin"), FLOOR),)).begun  # type: ignore[misc]
    gate = CounterGate(postgres_url, schema_url[1], (1,))
    # B's step (queued first, so it gets the counter first) records a new request, then the twin's request
    # id; A's step stores the twin's signed bytes (a row lock on the twin's record) and records another.
    step_b, step_a = gate.queue(
        [
            lambda: b.write_issuance_step((), (), ((draft("b-new"), FLOOR), (draft("twin"), FLOOR))),
            lambda: a.write_issuance_step(((twin, b"signed"),), (), ((draft("a-new"), FLOOR),)),
        ]
    )

    assert [r.request_id for r in new_records(step_a)] == ["a-new"]
    assert [r.request_id for r in new_records(step_b)] == ["b-new"]
    found, new = step_b.begun[1]  # type: ignore[misc]
    assert (found.issuance_id, found.counter, new) == (twin.issuance_id, twin.counter, False)
    assert step_a.stored[0].signed_command == b"signed"  # type: ignore[union-attr]
    counters = [r.counter for r in a.list_issuances()]
    assert counters == sorted(set(counters))


def test_steps_drafting_for_several_generations_lock_the_counters_in_one_order(
    postgres_url: str, schema_url: tuple[str, str], replicas: tuple[SqlCustodyStore, SqlCustodyStore]
) -> None:
    a, b = replicas
    gate = CounterGate(postgres_url, schema_url[1], (1, 2))
    # Both are let go at once: A's drafts come generation 2 first, B's generation 1 first.
    step_a, step_b = gate.queue(
        [
            lambda: a.write_issuance_step((), (), ((draft("a2", 2), FLOOR), (draft("a1", 1), FLOOR))),
            lambda: b.write_issuance_step((), (), ((draft("b1", 1), FLOOR), (draft("b2", 2), FLOOR))),
        ]
    )

    assert len(new_records(step_a)) == 2
    assert len(new_records(step_b)) == 2
