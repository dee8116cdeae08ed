"""Refused authentication, audited without letting a refused client flood the audit log: the first refusal
of an (identity, reason) is recorded at once; the ones that follow within the interval are counted and
recorded as one entry, with their count, when the interval ends (or when the service stops)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from vdno.server.domain.errors import VdnoError
from vdno.server.domain.values import AuditEvent

INTERVAL = 60.0  # seconds over which the repeated refusals of one identity become one entry
MAX_OPEN_WINDOWS = 10_000  # identities counted at once; past that, every count is recorded early


@dataclass
class _Window:
    opened: float  # monotonic seconds
    first_at: datetime
    last_at: datetime
    repeated: int = 0  # refusals after the one recorded at once, not yet recorded


class RefusalAudit:
    """`refused(actor, reason)` from any thread; `record` appends one audit event (raises VdnoError when the
    store cannot). A daemon thread closes the intervals; close() records every count still open."""

    def __init__(
        self,
        record: Callable[[AuditEvent], None],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._record = record
        self._interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log = structlog.get_logger("vdno.audit")
        self._thread = threading.Thread(target=self._run, name="refusal-audit", daemon=True)
        self._thread.start()

    def refused(self, actor: str, reason: str) -> None:
        """One refused call. Never raises: a refusal is answered whether or not it can be audited now."""
        key = (actor, reason)
        now, at = self._clock(), self._wall_clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.repeated += 1
                window.last_at = at
                return
            self._windows[key] = _Window(now, at, at)
            crowded = len(self._windows) > MAX_OPEN_WINDOWS
        if not self._write(actor, {"reason": reason, "count": 1}):
            with self._lock:  # counted with the rest of the interval instead
                self._windows[key].repeated += 1
        if crowded:
            self.flush(everything=True)

    def flush(self, everything: bool = False) -> None:
        """Record the counts of the intervals that have ended (every interval with `everything`)."""
        now = self._clock()
        with self._lock:
            due = [
                (key, window)
                for key, window in self._windows.items()
                if everything or now - window.opened >= self._interval
            ]
            for key, _ in due:
                del self._windows[key]
        for (actor, reason), window in due:
            if window.repeated == 0:
                continue
            details = {
                "reason": reason,
                "count": window.repeated,  # the refusals not recorded yet (after the one recorded at once)
                "since": window.first_at.isoformat(),  # the first refusal of the interval
                "last": window.last_at.isoformat(),
                "interval_seconds": self._interval,
            }
            if not self._write(actor, details):
                with self._lock:  # tried again at the next flush
                    kept = self._windows.setdefault(
                        (actor, reason), _Window(now, window.first_at, window.last_at)
                    )
                    kept.repeated += window.repeated

    def close(self) -> None:
        """Stop the thread and record every count still open."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush(everything=True)

    def _write(self, actor: str, details: dict[str, object]) -> bool:
        try:
            self._record(AuditEvent("auth.refused", actor, "rpc", details))
        except VdnoError as exc:
            self._log.warning("audit.refusal_not_recorded", actor=actor, reason=str(exc))
            return False
        return True

    def _run(self) -> None:
        tick = min(self._interval / 4, 1.0)
        while not self._stop.wait(tick):
            self.flush()
