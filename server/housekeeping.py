"""Custody housekeeping in the background of each server process: generations whose destruction grace period
is over get their keys deleted (the officers' `destroy-due` does the same on demand), signing generations
whose certificates expire within the warning window are logged as a warning (once a day each), and
issuances an attempt abandoned (left RECORDED by a process that stopped) are marked FAILED. Every signing
generation's expiry is handed to `on_expiry` (metrics) at each run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from vdno.server.domain.custody import CustodyService, GenerationView
from vdno.server.domain.errors import VdnoError

log = structlog.get_logger("vdno.custody")
WARN_EVERY = 24 * 3600.0


class CustodyHousekeeping:
    """A daemon thread running `run_once` every `interval` seconds until `stop()`."""

    def __init__(
        self,
        custody: CustodyService,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        fail_abandoned: Callable[[], list[int]] | None = None,
        on_expiry: Callable[[Sequence[GenerationView]], None] | None = None,
    ) -> None:
        self._custody = custody
        self._fail_abandoned = fail_abandoned
        self._on_expiry = on_expiry
        self._interval = interval
        self._clock = clock
        self._warned: dict[int, float] = {}
        self.expiring: list[GenerationView] = []  # as of the last run, for health details and metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="custody-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self._interval):
                return

    def run_once(self) -> None:
        try:
            if self._fail_abandoned is not None and (abandoned := self._fail_abandoned()):
                log.warning("issuance.abandoned", issuances=abandoned)
            destroyed = self._custody.destroy_due("service")
            for generation in destroyed:
                log.warning("generation.destroyed", generation=generation)
            self.expiring = self._custody.expiring()
            if self._on_expiry is not None:
                self._on_expiry(self._custody.signing_expiry())
        except VdnoError as exc:  # the token or the database is away: health says so; try again later
            log.warning("custody.housekeeping_deferred", reason=str(exc))
            return
        now = self._clock()
        for view in self.expiring:
            last = self._warned.get(view.record.generation)
            if last is None or now - last >= WARN_EVERY:
                self._warned[view.record.generation] = now
                log.warning(
                    "generation.expiring",
                    generation=view.record.generation,
                    status=view.record.status.value,
                    days_to_expiry=view.days_to_expiry,
                    not_after=None if view.record.not_after is None else view.record.not_after.isoformat(),
                )
