"""SQLite's write lock and the durability of its writers' commits: an exclusive flock on `<db>.writelock`
taken by the writers of every process, with a timeout (_WriteLock), and the WAL file synced after a commit
made with synchronous=NORMAL, once the write lock is released (_WalSync)."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class _WalSync:
    """Durability of a SQLite writer's commits (docs/architecture.md §5.3). The writer's connection commits
    with synchronous=NORMAL: the transaction is appended to `<db>-wal` without waiting for the disk. sync(),
    called after the commit and after the write lock is released, fdatasyncs the WAL file: the other writers
    commit while this one waits for the disk, and one sync covers every frame written before it. That
    is enough because SQLite reuses or removes a WAL file only after a checkpoint has copied its frames into
    the database file and synced that file (https://sqlite.org/pragma.html#pragma_synchronous). SQLite
    removes the WAL file only when the last connection to the database closes: while the writer's
    connection stays open, the file opened here stays the WAL; the writer calls reset() whenever it opens
    a connection."""

    def __init__(self, wal_path: Path) -> None:
        self._path = wal_path
        self._fd: int | None = None

    def sync(self) -> None:
        """Return once every frame committed to the WAL so far (through a connection open since the last
        reset()) is on disk; OSError if it cannot be."""
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
            directory = os.open(self._path.parent, os.O_RDONLY)  # a new WAL file's name must be durable too
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        os.fdatasync(self._fd)

    @staticmethod
    def sync_current(wal_path: Path) -> None:
        """fdatasync the WAL file at wal_path now, for a reader that did not write it. If there is none,
        SQLite removed it after checkpointing every frame into the database file and syncing that file.
        OSError if it cannot be synced."""
        try:
            fd = os.open(wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def reset(self) -> None:
        """Forget the WAL file: the next sync() opens the one there is then."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    close = reset


class _WriteLock:
    """The SQLite write lock between this process's writers and other processes: an exclusive flock on
    `<db>.writelock`, waited for at most `wait` seconds. A blocking flock hands the lock over the moment
    its holder lets go (SQLite's own busy handler sleeps up to 100 ms between retries), but it cannot time
    out: so when the lock is busy, a helper thread blocks in flock on the writer's descriptor while the
    writer waits for it with a timeout. A lock the helper gets after the writer gave up is let go at once.
    Used by one thread at a time (its writer's)."""

    def __init__(self, path: Path, wait: float) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115 (closed by close())
        self._fd = self._file.fileno()
        self._wait = wait
        self._cond = threading.Condition()
        self._blocking = False  # the helper is (about to be) blocked in flock for a writer
        self._wanted = False  # the writer is still waiting for the helper's flock
        self._granted = False  # the helper holds the flock for the writer
        self._closed = False
        self._helper: threading.Thread | None = None

    def acquire(self) -> bool:
        """True once this writer holds the lock; False after `wait` seconds without it."""
        with self._cond:
            if not self._blocking:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                self._blocking = True
                if self._helper is None:
                    self._helper = threading.Thread(target=self._help, name="store-write-lock", daemon=True)
                    self._helper.start()
                self._cond.notify_all()
            self._wanted = True
            granted = self._cond.wait_for(lambda: self._granted, timeout=self._wait)
            self._wanted = False
            self._granted = False
            return granted

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._blocking:  # the helper still waits in flock on the descriptor: it closes the file
                return
        self._file.close()

    def _help(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._blocking or self._closed)
                if self._closed and not self._blocking:
                    return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                locked = True
            except OSError:
                locked = False
            with self._cond:
                self._blocking = False
                if self._closed:
                    self._file.close()  # releases the flock too
                    return
                if locked and self._wanted:
                    self._granted = True
                elif locked:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._cond.notify_all()
