"""The bounded wait for the database's write lock: a write that cannot get it within `write_lock_wait`
answers StoreUnavailable and records nothing; writes go on once the lock is free. SQLite: another process
holds `<db>.writelock` (stopped, as a frozen replica would); PostgreSQL: another connection holds the
generation's counter row."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.domain.values import GenerationStatus, IssuanceDraft, VanillaGeneration
from vdno.server.store.engine import make_engine
from vdno.server.store.sql import SqlCustodyStore, open_store

WAIT = 0.5
GEN = VanillaGeneration(
    1, b"VDNO\x00\x00\x00\x01", "pkcs11:object=a", "pkcs11:object=b", b"ds", b"ka", GenerationStatus.ACTIVE
)
_HOLD = """
import fcntl, sys
lock = open(sys.argv[1], "a+b")
fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


def draft(request_id: str) -> tuple[IssuanceDraft, int]:
    """A hand-out draft for a meter of its own (one outstanding command per meter)."""
    device = hashlib.sha256(request_id.encode()).digest()[:8]
    return IssuanceDraft("bench-01", request_id, "fp", device, 12, 1, b"cert"), 1


def start_holder(lock_path: Path) -> subprocess.Popen[str]:
    """A process that takes the flock and holds it until its stdin is closed."""
    args = [sys.executable, "-c", _HOLD, str(lock_path)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@contextlib.contextmanager
def lock_held_by_a_stopped_process(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process takes the flock and is stopped (SIGSTOP) while holding it; killed at the end."""
    holder = start_holder(lock_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        yield holder
    finally:
        holder.kill()
        holder.wait()


def free_now(lock_path: Path) -> bool:
    with lock_path.open("a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[SqlCustodyStore, Path]]:
    store = open_store(f"sqlite:///{tmp_path / 'vdno.db'}", write_lock_wait=WAIT)
    store.add_generation(GEN, "t")
    for bench in ("bench-01",):  # an issuance needs an enrolled bench
        store.enroll_bench(bench, "t")
    yield store, tmp_path / "vdno.db.writelock"
    store.close()


def test_writes_answer_unavailable_within_the_wait_while_a_stopped_process_holds_the_lock(
    sqlite_store: tuple[SqlCustodyStore, Path],
) -> None:
    store, lock_path = sqlite_store
    store.check_writable()
    with lock_held_by_a_stopped_process(lock_path):
        started = time.monotonic()
        (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
        step_took = time.monotonic() - started
        assert isinstance(begun, StoreUnavailable)
        assert str(begun) == "the database's write lock was not free within 0.5 s; nothing was recorded"
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.enroll_bench("bench-02", "t")  # the threaded writer waits as long
        with pytest.raises(StoreUnavailable):
            store.check_writable()
        others_took = (time.monotonic() - started) / 2
    assert WAIT <= step_took < WAIT + 0.5 and WAIT <= others_took < WAIT + 0.5
    assert store.list_issuances() == [] and store.get_bench("bench-02") is None  # nothing recorded
    # The holder is gone: writes go on at once, nothing restarted.
    started = time.monotonic()
    store.check_writable()
    (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
    assert not isinstance(begun, Exception) and begun[1] is True
    assert store.enroll_bench("bench-02", "t") is True
    assert time.monotonic() - started < WAIT
    assert [r.request_id for r in store.list_issuances()] == ["r1"]


def test_the_lock_is_handed_over_as_soon_as_it_is_free_and_let_go_if_nobody_waits_any_more(
    sqlite_store: tuple[SqlCustodyStore, Path],
) -> None:
    store, lock_path = sqlite_store
    holder = start_holder(lock_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert holder.stdin is not None
        # Freed during the wait (the holder exits): the write gets it then.
        release = threading.Timer(0.2, holder.stdin.close)
        released_at = time.monotonic() + 0.2
        release.start()
        (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
        took = time.monotonic() - released_at
    finally:
        holder.kill()
        holder.wait()
    assert not isinstance(begun, Exception)
    assert -0.05 < took < 0.3
    assert free_now(lock_path)
    # Freed after the writer gave up: the helper gets it later and lets it go, nobody is kept out.
    with lock_held_by_a_stopped_process(lock_path) as stopped:
        (begun,) = store.write_issuance_step((), (), (draft("r2"),)).begun
        assert isinstance(begun, StoreUnavailable)
        stopped.kill()
        stopped.wait()
        deadline = time.monotonic() + 2
        while not free_now(lock_path):
            assert time.monotonic() < deadline, "the helper kept the lock nobody waits for"
            time.sleep(0.01)
    (begun,) = store.write_issuance_step((), (), (draft("r2"),)).begun
    assert not isinstance(begun, Exception)


def test_a_store_closed_while_its_lock_helper_still_waits_closes_at_once_and_keeps_nobody_out(
    tmp_path: Path,
) -> None:
    """The write gave up while a stopped process holds the lock, so the helper still blocks in flock on the
    writer's descriptor. close() does not wait for it; once the holder is gone, the helper's late lock is
    let go with the descriptor, and nothing of the closed store keeps another writer out."""
    store = open_store(f"sqlite:///{tmp_path / 'vdno.db'}", write_lock_wait=WAIT)
    lock_path = tmp_path / "vdno.db.writelock"
    store.add_generation(GEN, "t")
    store.enroll_bench("bench-01", "t")
    with lock_held_by_a_stopped_process(lock_path) as stopped:
        (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
        assert isinstance(begun, StoreUnavailable)
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < WAIT
        stopped.kill()
        stopped.wait()
        deadline = time.monotonic() + 2
        while not free_now(lock_path):
            assert time.monotonic() < deadline, "the closed store's helper kept the lock"
            time.sleep(0.01)
    again = open_store(f"sqlite:///{tmp_path / 'vdno.db'}", write_lock_wait=WAIT)
    try:
        (begun,) = again.write_issuance_step((), (), (draft("r1"),)).begun
        assert not isinstance(begun, Exception) and begun[1] is True
    finally:
        again.close()


def test_postgres_writes_answer_unavailable_while_another_connection_holds_the_counter(
    postgres_url: str,
) -> None:
    base = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base + f"?options=-csearch_path%3D{schema}"
    store = open_store(url, write_lock_wait=WAIT)
    other = make_engine(url)
    try:
        store.add_generation(GEN, "t")
        for bench in ("bench-01",):  # an issuance needs an enrolled bench
            store.enroll_bench(bench, "t")
        with other.connect() as holder:
            tx = holder.begin()
            holder.execute(text("SELECT last_value FROM counters WHERE generation = 1 FOR UPDATE"))
            started = time.monotonic()
            (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
            took = time.monotonic() - started
            tx.rollback()
        assert isinstance(begun, StoreUnavailable)
        assert WAIT <= took < WAIT + 1.0
        (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
        assert not isinstance(begun, Exception)
    finally:
        store.close()
        other.dispose()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
