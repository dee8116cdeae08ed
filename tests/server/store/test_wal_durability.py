"""SQLite durability (docs/architecture.md §5.3): the writers commit with synchronous=NORMAL and fdatasync the
WAL after releasing the write lock, before any write is reported done."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.domain.values import GenerationStatus, IssuanceDraft, VanillaGeneration
from vdno.server.store.sql import SqlCustodyStore, open_store

GEN = VanillaGeneration(
    1, b"VDNO\x00\x00\x00\x01", "pkcs11:object=a", "pkcs11:object=b", b"ds", b"ka", GenerationStatus.ACTIVE
)


def draft(request_id: str) -> tuple[IssuanceDraft, int]:
    """A hand-out draft for a meter of its own (one outstanding command per meter)."""
    device = hashlib.sha256(request_id.encode()).digest()[:8]
    return IssuanceDraft("bench-01", request_id, "fp", device, 12, 1, b"cert"), 1


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    s.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        s.enroll_bench(bench, "t")
    yield s
    s.close()


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_writer_commits_normal_readers_full(store: SqlCustodyStore) -> None:
    with store._write_engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_step_returns_after_the_wal_is_synced_outside_the_write_lock(
    store: SqlCustodyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_flock, real_fdatasync = fcntl.flock, os.fdatasync

    def flock(fd: int, op: int) -> None:
        calls.append("lock" if op & fcntl.LOCK_EX else "unlock")
        real_flock(fd, op)

    def fdatasync(fd: int) -> None:
        calls.append(f"sync {os.path.basename(fd_path(fd))}")
        real_fdatasync(fd)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
    assert not isinstance(begun, Exception) and begun[1] is True
    assert calls == ["lock", "unlock", "sync vdno.db-wal"]
    calls.clear()
    store.enroll_bench("bench-02", "t")  # the threaded writer does the same
    assert calls == ["lock", "unlock", "sync vdno.db-wal"]


def test_a_failed_sync_reports_every_item_unavailable_then_writes_recover(
    store: SqlCustodyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first,) = store.write_issuance_step((), (), (draft("r1"),)).begun
    assert not isinstance(first, Exception)
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    step = store.write_issuance_step(((first[0], b"signed"),), (), (draft("r2"),))
    for item in step.stored + step.begun:
        assert isinstance(item, StoreUnavailable)
        assert str(item) == "the database could not make the write durable"
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    (third,) = store.write_issuance_step((), (), (draft("r3"),)).begun
    assert not isinstance(third, Exception) and third[1] is True


def test_the_wal_sync_follows_sqlite_removing_and_creating_the_wal_again(
    store: SqlCustodyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    wal = tmp_path / "vdno.db-wal"
    (first,) = store.write_issuance_step((), (), (draft("r1"),)).begun
    assert not isinstance(first, Exception)
    assert synced == [os.stat(wal).st_ino]
    # Every connection closes: SQLite checkpoints into the database file and removes the WAL.
    store._step_writer._drop_connection()
    store._writer._drop_connection()
    store._write_engine.dispose()
    store.engine.dispose()
    assert not wal.exists()
    (second,) = store.write_issuance_step((), (), (draft("r2"),)).begun
    assert not isinstance(second, Exception)
    assert synced[-1] == os.stat(wal).st_ino  # the new WAL file, not the removed one
    assert [r.request_id for r in store.list_issuances()] == ["r1", "r2"]


def test_an_in_memory_store_has_no_wal_sync() -> None:
    s = open_store("sqlite://")
    try:
        assert s._step_writer._wal is None and s._writer._wal is None
        s.ensure_durable()  # nothing to sync, and no error
    finally:
        s.close()


def test_ensure_durable_syncs_a_commit_another_process_has_not_synced_yet(
    store: SqlCustodyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two stores on one file stand for two server processes. The first commits a signed command and,
    # here, stops before its own WAL sync: the second already sees the commit.
    other = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    try:
        (begun,) = store.write_issuance_step((), (), (draft("r1"),)).begun
        assert not isinstance(begun, Exception)
        assert store._step_writer._wal is not None
        monkeypatch.setattr(store._step_writer._wal, "sync", lambda: None)
        (stored,) = store.write_issuance_step(((begun[0], b"signed"),), (), ()).stored
        assert not isinstance(stored, Exception)
        synced: list[str] = []
        real_fdatasync = os.fdatasync

        def fdatasync(fd: int) -> None:
            synced.append(os.path.basename(fd_path(fd)))
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        found = other.find_issuance("bench-01", "r1")
        assert found is not None and found.signed_command == b"signed"
        assert synced == []  # a read alone syncs nothing
        other.ensure_durable()
        assert synced == ["vdno.db-wal"]
    finally:
        other.close()
