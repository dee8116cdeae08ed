"""server.refusals.RefusalAudit: one audit entry at once per refused identity and reason, then one entry per
interval with the count of the refusals that followed; nothing lost when the store is down or the service
stops."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.domain.values import AuditEvent
from vdno.server.refusals import RefusalAudit


class Recorded:
    """The audit log: the events appended, or StoreUnavailable while `down`."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.down = False
        self._lock = threading.Lock()

    def __call__(self, event: AuditEvent) -> None:
        if self.down:
            raise StoreUnavailable("the database is down")
        with self._lock:
            self.events.append(event)

    def counts(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [(e.actor, str(e.details["reason"]), int(e.details["count"])) for e in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_refusals_are_one_entry_with_a_count_per_interval() -> None:
    recorded, clock = Recorded(), Clock()
    audit = RefusalAudit(recorded, interval=60.0, clock=clock)
    try:
        for _ in range(500):
            audit.refused("bench:bench-99", "BenchNotEnrolled")
        audit.refused("bench:bench-98", "BenchNotEnrolled")
        audit.refused("bench:bench-99", "WrongRole")
        assert recorded.counts() == [  # the first of each at once
            ("bench:bench-99", "BenchNotEnrolled", 1),
            ("bench:bench-98", "BenchNotEnrolled", 1),
            ("bench:bench-99", "WrongRole", 1),
        ]
        clock.now += 59
        audit.flush()
        assert len(recorded.events) == 3  # the interval has not ended
        clock.now += 1
        audit.flush()
        assert recorded.counts()[3:] == [("bench:bench-99", "BenchNotEnrolled", 499)]
        summary = recorded.events[3]
        assert summary.event == "auth.refused" and summary.subject == "rpc"
        assert summary.details["interval_seconds"] == 60.0
        assert datetime.fromisoformat(summary.details["since"]) <= datetime.fromisoformat(
            summary.details["last"]
        )
        audit.refused("bench:bench-99", "BenchNotEnrolled")  # a new interval: recorded at once again
        assert recorded.counts()[-1] == ("bench:bench-99", "BenchNotEnrolled", 1)
    finally:
        audit.close()


def test_close_records_the_counts_still_open() -> None:
    recorded = Recorded()
    audit = RefusalAudit(recorded, interval=3600.0)
    for _ in range(3):
        audit.refused("officer:officer-09", "OfficerNotEnrolled")
    audit.close()
    assert recorded.counts() == [
        ("officer:officer-09", "OfficerNotEnrolled", 1),
        ("officer:officer-09", "OfficerNotEnrolled", 2),
    ]


def test_refusals_while_the_store_is_down_are_counted_and_recorded_later() -> None:
    recorded = Recorded()
    recorded.down = True
    audit = RefusalAudit(recorded, interval=3600.0, wall_clock=lambda: datetime(2026, 12, 5, tzinfo=UTC))
    audit.refused("bench:bench-99", "BenchNotEnrolled")  # answered even though it cannot be audited now
    audit.refused("bench:bench-99", "BenchNotEnrolled")
    audit.flush(everything=True)
    assert recorded.events == []
    recorded.down = False
    audit.close()
    assert recorded.counts() == [("bench:bench-99", "BenchNotEnrolled", 2)]


def test_the_thread_closes_intervals_as_they_end() -> None:
    recorded = Recorded()
    audit = RefusalAudit(recorded, interval=0.2)
    try:
        for _ in range(10):
            audit.refused("bench:bench-99", "BenchNotEnrolled")
        deadline = time.monotonic() + 5
        while len(recorded.events) < 2:
            assert time.monotonic() < deadline, recorded.counts()
            time.sleep(0.02)
        assert recorded.counts() == [
            ("bench:bench-99", "BenchNotEnrolled", 1),
            ("bench:bench-99", "BenchNotEnrolled", 9),
        ]
    finally:
        audit.close()
    assert len(recorded.events) == 2
