"""The group-commit writer. Writes run in batches, one transaction (one fsync) per batch, on a connection of
their own:
- the issuance pipeline's steps (write_issuance_step) run in the pipeline's thread, which gathers its
  own batches (a writer without a thread: run_group);
- every other write goes through a writer thread that groups concurrent callers' operations (group
  commit: submit, submit_group).
An operation that fails does not undo its neighbours (it is re-run under its own SAVEPOINT), and a write
returns only after its transaction committed and is durable. On SQLite a flock on `<db>.writelock` hands
the write lock between these writers and between processes (_WriteLock), and the writers make their
commits durable after releasing it (_WalSync; both in server/store/sqlite_durability.py). A writer waits at
most `write_lock_wait` seconds for the write lock (PostgreSQL: for a row or table lock): then its writes
answer StoreUnavailable, nothing of them recorded.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vdno.server.domain.errors import StoreUnavailable, VdnoError
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import AuditAppender
from vdno.server.store.fleet import COUNT_DELTAS, apply_device_counts
from vdno.server.store.sqlite_durability import _WalSync, _WriteLock

T = TypeVar("T")
# A write: runs inside the batch transaction and appends the security events it causes to the list.
WriteOp = Callable[[Connection, list[AuditEvent]], T]
MAX_BATCH = 128
WRITE_LOCK_WAIT = 5.0  # seconds a write waits for the database's write lock before it is refused


class _GroupCommitWriter:
    """Owns write transactions on one connection; see module docstring. Threaded (the default): a writer
    thread groups the ops of concurrent callers into one transaction. Not threaded: for a caller that
    gathers its own batches (the issuance pipeline), each group runs at once in the caller's thread,
    saving two thread hand-offs per transaction."""

    def __init__(
        self,
        engine: Engine,
        lock_path: Path | None = None,
        threaded: bool = True,
        wal: _WalSync | None = None,
        lock_wait: float = WRITE_LOCK_WAIT,
    ) -> None:
        """`lock_path` and `wal`: SQLite on a file, where the engine's connections commit with
        synchronous=NORMAL (make_engine(writer=True)) and `wal` makes each batch durable. `lock_wait`:
        seconds a batch waits for the lock at `lock_path`."""
        self._engine = engine
        self._wal = wal
        # The driver's own errors (hot-path statements run on its cursor, not through SQLAlchemy).
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # SQLite: the writer holds the database's write lock for the whole batch, so a batch is first run
        # without per-op SAVEPOINTs; if any op fails, the whole transaction is rolled back (nothing was
        # committed) and the batch is run again with a SAVEPOINT per op. PostgreSQL keeps them always.
        self._optimistic = engine.dialect.name == "sqlite"
        self._audit = AuditAppender(engine.dialect)
        self._lock = _WriteLock(lock_path, lock_wait) if lock_path is not None else None
        self._lock_wait = lock_wait
        self._queue: queue.Queue[list[tuple[WriteOp[Any], Future[Any]]] | None] = queue.Queue()
        self._conn: Connection | None = None  # used by one thread at a time, kept open between batches
        self._thread: threading.Thread | None = None
        self._here = threading.Lock()
        if threaded:
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def submit(self, op: WriteOp[T]) -> T:
        return cast(T, self.submit_group([op])[0].result())

    def submit_group(self, ops: Sequence[WriteOp[Any]]) -> list[Future[Any]]:
        """Queue ops so that the writer thread takes them together (one transaction unless MAX_BATCH splits
        them); each op still succeeds or fails on its own. Returns one Future per op, in order."""
        assert self._thread is not None, "submit_group needs the writer thread; use run_group"
        futures: list[Future[Any]] = [Future() for _ in ops]
        self._queue.put(list(zip(ops, futures, strict=True)))
        return futures

    def run_group(
        self, ops: Sequence[WriteOp[Any]], lock: Callable[[Connection], None] | None = None
    ) -> list[Any]:
        """Not threaded: run ops now, in the caller's thread, as one transaction; each op's result, or the
        VdnoError it failed with (StoreUnavailable for anything the database refused). `lock` runs first in
        the transaction, outside the ops' SAVEPOINTs, so that an op rolled back cannot release what it
        locks; if it fails, every op answers StoreUnavailable."""
        assert self._thread is None, "run_group is for a writer without a thread; use submit_group"
        if not ops:
            return []
        with self._here:
            return [result if error is None else error for result, error in self._run_batch(list(ops), lock)]

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
        else:
            with self._here:
                self._drop_connection()
        if self._lock is not None:
            self._lock.close()
        if self._wal is not None:
            self._wal.close()

    def _run(self) -> None:
        try:
            self._serve_queue()
        finally:
            self._drop_connection()

    def _serve_queue(self) -> None:
        while True:
            group = self._queue.get()
            if group is None:
                return
            batch = list(group)
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            outcomes: list[tuple[Any, BaseException | None]]
            try:
                outcomes = list(self._run_batch([op for op, _ in batch]))
            except Exception as exc:  # a defect: fail this batch's callers; the writer serves the next ones
                self._drop_connection()
                outcomes = [(None, exc)] * len(batch)
            for (_, fut), (result, error) in zip(batch, outcomes, strict=True):
                if error is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(error)
            if stop:
                return

    def _run_batch(
        self, ops: list[WriteOp[Any]], lock: Callable[[Connection], None] | None = None
    ) -> list[tuple[Any, VdnoError | None]]:
        if self._lock is None:
            return self._run_transaction(ops, lock)
        if not self._lock.acquire():
            busy = StoreUnavailable(
                f"the database's write lock was not free within {self._lock_wait:g} s; nothing was recorded"
            )
            return [(None, busy)] * len(ops)
        try:
            outcomes = self._run_transaction(ops, lock)
        finally:
            self._lock.release()
        if self._wal is not None:
            try:
                self._wal.sync()
            except OSError as exc:  # committed but perhaps not on disk: report nothing as done
                self._drop_connection()
                failure = StoreUnavailable("the database could not make the write durable")
                failure.__cause__ = exc
                return [(None, failure)] * len(ops)
        return outcomes

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
            if self._wal is not None:
                self._wal.reset()  # the WAL may have been removed and created again since the last one
        return self._conn

    def _run_transaction(
        self, ops: list[WriteOp[Any]], lock: Callable[[Connection], None] | None = None
    ) -> list[tuple[Any, VdnoError | None]]:
        """(result, None) or (None, the op's VdnoError) per op, in order; every error that is not a
        VdnoError becomes StoreUnavailable."""
        errors = (SQLAlchemyError, self._driver_error)
        try:
            outcomes = None
            if self._optimistic:
                outcomes = self._attempt(ops, savepoints=False, lock=lock)
            if outcomes is None:
                outcomes = self._attempt(ops, savepoints=True, lock=lock)
            assert outcomes is not None
        except errors as exc:
            self._drop_connection()
            failure = StoreUnavailable("the database could not commit; nothing was recorded")
            failure.__cause__ = exc
            return [(None, failure)] * len(ops)
        results: list[tuple[Any, VdnoError | None]] = []
        for result, error in outcomes:
            if error is None or isinstance(error, VdnoError):
                results.append((result, error))
            else:
                refused = StoreUnavailable("the database refused the write; nothing was recorded")
                refused.__cause__ = error
                results.append((None, refused))
        return results

    def _attempt(
        self, ops: list[WriteOp[Any]], savepoints: bool, lock: Callable[[Connection], None] | None = None
    ) -> list[tuple[Any, BaseException | None]] | None:
        """One transaction over the ops (after `lock`). Without savepoints: None (and nothing committed)
        as soon as an op fails, so that the caller runs them again with them."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        op_errors = (VdnoError, SQLAlchemyError, self._driver_error)
        conn = self._connection()
        counts: dict[Any, int] = {}  # device_counts changes of the ops kept (server/store/fleet.py)
        conn.info[COUNT_DELTAS] = counts
        try:
            with conn.begin() as tx:
                if lock is not None:
                    lock(conn)
                audit: list[AuditEvent] = []
                for op in ops:
                    events: list[AuditEvent] = []
                    if not savepoints:
                        try:
                            result = op(conn, events)
                        except op_errors:
                            tx.rollback()
                            return None
                        audit.extend(events)
                        outcomes.append((result, None))
                        continue
                    kept = dict(counts) if counts else None
                    conn.exec_driver_sql("SAVEPOINT vdno_op")
                    try:
                        result = op(conn, events)
                    except op_errors as exc:
                        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT vdno_op")
                        conn.exec_driver_sql("RELEASE SAVEPOINT vdno_op")
                        counts.clear()
                        counts.update(kept or {})
                        outcomes.append((None, exc))
                    else:
                        conn.exec_driver_sql("RELEASE SAVEPOINT vdno_op")
                        audit.extend(events)
                        outcomes.append((result, None))
                if audit:  # in the same transaction as the state the events describe
                    self._audit.append(conn, audit)
                if counts:  # under the chain head's lock: writers change device_counts one at a time
                    if not audit:
                        self._audit.lock_head(conn)
                    apply_device_counts(conn, counts)
        finally:
            conn.info.pop(COUNT_DELTAS, None)
        return outcomes
