"""Health that tells the truth: background probes of the HSM and the database, and the grpc.health.v1
statuses they give.

HealthMonitor runs each component's probe in a thread of its own, every `interval` seconds, and at once
when poked (the signer pokes the HSM probe whenever it goes down, recovers or has its PIN refused). No
probe runs on a caller's path, and a slow one (a write waiting for the database's write lock) never
delays the other's verdict. A component is down while its last probe failed, or while a probe has been
running for more than `stall_after` seconds. Every change is published (`HealthBoard`): the service
("" and vdno.v1.BenchService) is SERVING while every component is up, NOT_SERVING otherwise; each
component also has a status under its own name (`vdno.hsm`, `vdno.database`), so that a probe can ask
which part is down; and the change is logged as `health.changed` with the reasons.

With several server processes (`[server] processes`), each publishes its components' states into shared
memory (`HealthSlots`) and the parent process answers the health listener for all of them
(`ProcessesHealth`): a component is up only while it is up in every process, and a process that is not
running counts as down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from vdno.server.config import ConfigError
from vdno.server.domain.errors import VdnoError

HSM = "vdno.hsm"
DATABASE = "vdno.database"
COMPONENTS = (HSM, DATABASE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class HealthReport:
    """Which components are down, and why (the reasons are the errors' safe messages)."""

    down: Mapping[str, str]

    @property
    def serving(self) -> bool:
        return not self.down


class _Probe:
    def __init__(self, name: str, check: Callable[[], None]) -> None:
        self.name = name
        self.check = check
        self.failure: str | None = "not checked yet"
        self.running_since: float | None = None
        self.wake = threading.Event()


class HealthMonitor:
    """Runs the probes in the background and publishes each change of the HealthReport."""

    def __init__(
        self,
        probes: Mapping[str, Callable[[], None]],
        publish: Callable[[HealthReport], None],
        interval: float = 1.0,
        stall_after: float | None = None,
    ) -> None:
        self._probes = {name: _Probe(name, check) for name, check in probes.items()}
        self._publish = publish
        self._interval = interval
        self._stall_after = 2 * interval if stall_after is None else stall_after
        self._lock = threading.Lock()
        self._published: HealthReport | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def check_now(self) -> HealthReport:
        """Run every probe once in this thread and publish (before the server starts answering)."""
        for probe in self._probes.values():
            self._run(probe)
        return self._report()

    def start(self) -> None:
        for probe in self._probes.values():
            self._threads.append(
                threading.Thread(target=self._loop, args=(probe,), name=f"health[{probe.name}]", daemon=True)
            )
        self._threads.append(threading.Thread(target=self._watch, name="health", daemon=True))
        for thread in self._threads:
            thread.start()

    def poke(self, name: str) -> None:
        """Probe `name` now (it must return at once: it only sets an Event)."""
        self._probes[name].wake.set()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for probe in self._probes.values():
            probe.wake.set()
        for thread in self._threads:
            thread.join(timeout)  # a probe blocked in a call is a daemon thread: not waited for long

    def _loop(self, probe: _Probe) -> None:
        while not self._stop.is_set():
            self._run(probe)
            self._report()
            probe.wake.wait(self._interval)
            probe.wake.clear()

    def _watch(self) -> None:
        """Publishes stalls: a probe that hangs cannot report itself."""
        while not self._stop.wait(self._interval / 4):
            self._report()

    def _run(self, probe: _Probe) -> None:
        probe.running_since = time.monotonic()
        try:
            probe.check()
        except VdnoError as exc:  # the reason: domain errors carry safe messages
            probe.failure = str(exc)
        except Exception as exc:
            probe.failure = f"the check failed ({type(exc).__name__})"
        else:
            probe.failure = None
        finally:
            probe.running_since = None

    def _report(self) -> HealthReport:
        now = time.monotonic()
        down: dict[str, str] = {}
        for name, probe in self._probes.items():
            since = probe.running_since
            if since is not None and now - since > self._stall_after:
                down[name] = f"the check has not answered for {now - since:.1f} s"
            elif probe.failure is not None:
                down[name] = probe.failure
        report = HealthReport(down)
        with self._lock:
            if self._published is None or report.down != self._published.down:
                self._published = report
                self._publish(report)
        return report


class HealthBoard:
    """Publishes HealthReports to a grpc.health.v1 servicer and the log."""

    def __init__(self, servicer: health.HealthServicer, service_names: Sequence[str], source: str) -> None:
        self._servicer = servicer
        self._service_names = ("", *service_names)
        self._log = structlog.get_logger("vdno.health").bind(source=source)
        for name in (*self._service_names, *COMPONENTS):
            servicer.set(name, NOT_SERVING)

    def publish(self, report: HealthReport) -> None:
        overall = SERVING if report.serving else NOT_SERVING
        for name in self._service_names:
            self._servicer.set(name, overall)
        for component in COMPONENTS:
            self._servicer.set(component, NOT_SERVING if component in report.down else SERVING)
        (self._log.info if report.serving else self._log.warning)(
            "health.changed",
            status="SERVING" if report.serving else "NOT_SERVING",
            down=dict(report.down),
        )


class HealthSlots:
    """One byte per (process, component) in memory shared with the parent process: 1 up, 0 down."""

    def __init__(self, shared: Any, process: int) -> None:
        self._shared = shared  # a multiprocessing RawArray("b", processes * len(COMPONENTS))
        self._first = process * len(COMPONENTS)

    def publish(self, report: HealthReport) -> None:
        for i, component in enumerate(COMPONENTS):
            self._shared[self._first + i] = 0 if component in report.down else 1


class ProcessesHealth:
    """The parent of several server processes: every `interval` seconds, reads their HealthSlots and
    whether they run, and publishes the combined report."""

    def __init__(
        self,
        shared: Any,
        running: Callable[[], Sequence[bool]],
        publish: Callable[[HealthReport], None],
        interval: float = 1.0,
    ) -> None:
        self._shared = shared
        self._running = running
        self._publish = publish
        self._interval = interval
        self._stop = threading.Event()
        self._published: HealthReport | None = None
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def report(self) -> HealthReport:
        running = self._running()
        down: dict[str, str] = {}
        for i, component in enumerate(COMPONENTS):
            bad = [
                str(p)
                for p, alive in enumerate(running)
                if not alive or self._shared[p * len(COMPONENTS) + i] != 1
            ]
            if bad:
                down[component] = f"not serving in server process {', '.join(bad)} of {len(running)}"
        return HealthReport(down)

    def _loop(self) -> None:
        while True:
            report = self.report()
            if self._published is None or report.down != self._published.down:
                self._published = report
                self._publish(report)
            if self._stop.wait(self._interval):
                return


def serve_health(listen: str, servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    """The health listener: plaintext, no client certificate, grpc.health.v1 and nothing else (no
    reflection). Started; returns the server and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"),
        options=[("grpc.so_reuseport", 0)],  # a fixed port already taken is an error, not a shared port
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ConfigError(f"[server] health_listen: cannot listen on {listen}") from exc
    if port == 0:
        raise ConfigError(f"[server] health_listen: cannot listen on {listen}")
    server.start()
    return server, port
