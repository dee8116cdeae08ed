"""Prometheus metrics of a server process, served over plain HTTP at /metrics ([metrics] listen).

ServerMetrics owns a CollectorRegistry of its own (built by server/app.py's build_server, passed down):
the issuance pipeline tells it what it does (server.domain.ports.IssuanceObserver), the interceptor the
latency of answered hand-outs and each refused call, the health monitor whether the HSM and the database
are up, the database probe the audit log's head, the housekeeping the signing generations' expiry.
Every label takes few values (kind, outcome, generation number, error or reason class name, component);
never a device, bench or request id.

With [server] processes > 1 (prometheus-client's multiprocess mode), `serve` gives each process a
directory before any metric is made (`use_values`): every process writes its values to files of its own
there, and the parent serves them all, summed (counters, histograms) or combined as each gauge says
(`ProcessesCollector`). Only the parent sets `vdno_up` then, from the combined health of every worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from vdno.server.config import ConfigError, MetricsConfig
from vdno.server.domain.custody import GenerationView
from vdno.server.domain.ports import IssuanceOutcome
from vdno.server.domain.values import BenchOperation
from vdno.server.health import DATABASE, HSM, HealthReport

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus-client's multiprocess values are files
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HAND_OUT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STEP_REQUESTS = (1, 2, 4, 8, 16, 32, 48)  # at most MAX_DRAFTS_PER_STEP (server/domain/pipeline.py)
COMPONENT_LABELS = {HSM: "hsm", DATABASE: "database"}
# The methods whose answered calls are timed, and their `kind` label.
TIMED_METHODS = {
    "/vdno.v1.BenchService/RequestHandOut": BenchOperation.HAND_OUT.value,
    "/vdno.v1.BenchService/RequestRotation": BenchOperation.ROTATION.value,
}


def use_values(directory: Path | None) -> None:
    """Where this process keeps its metric values: in its memory (None), or in files of its own in
    `directory`, which the parent process of several server processes reads (prometheus-client's
    multiprocess mode). Call at start-up, before the first metric is made: prometheus-client chooses at
    import time from PROMETHEUS_MULTIPROC_DIR, so the choice is made again here, explicitly."""
    if directory is None:
        os.environ.pop(MULTIPROC_DIR, None)
        values.ValueClass = values.MutexValue
        return
    os.environ[MULTIPROC_DIR] = str(directory)  # the file values read it when they open their files
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class ServerMetrics:
    """The metrics of one process, in `registry`. Implements server.domain.ports.IssuanceObserver and
    server.rpc.interceptors.CallObserver. Cheap on the hot path: an increment or an observation of a
    labelled child looked up once."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.registry = registry
        self._clock = clock
        self._issuances = Counter(
            "vdno_issuances",
            "Hand-outs and rotations taken by the issuance pipeline, by kind, outcome and the generation "
            "whose key signs (none: refused before one was found)",
            ("kind", "outcome", "generation"),
            registry=registry,
        )
        self._hand_out_seconds = Histogram(
            "vdno_hand_out_seconds",
            "Seconds from a hand-out or rotation call's arrival to its answer, for calls answered OK",
            ("kind",),
            buckets=HAND_OUT_SECONDS,
            registry=registry,
        )
        self._hsm_sign_seconds = Histogram(
            "vdno_hsm_sign_seconds",
            "Seconds of one trip to the HSM signing a pipeline step's digests for one key",
            buckets=SECONDS,
            registry=registry,
        )
        self._hsm_sign_errors = Counter(
            "vdno_hsm_sign_errors",
            "HSM signing trips that failed, by error (SignatureCheckFailed: a signature that did not "
            "verify with the certificate's public key)",
            ("error",),
            registry=registry,
        )
        self._step_requests = Histogram(
            "vdno_pipeline_step_requests",
            "Requests taken into one issuance pipeline step (steps that took at least one)",
            buckets=STEP_REQUESTS,
            registry=registry,
        )
        self._write_seconds = Histogram(
            "vdno_database_write_seconds",
            "Seconds of the issuance pipeline's one durable write per step, by result (ok, error)",
            ("result",),
            buckets=SECONDS,
            registry=registry,
        )
        self._up = Gauge(
            "vdno_up",
            "1 while the component's health probe passes (in every server process), else 0",
            ("component",),
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._audit_head = Gauge(
            "vdno_audit_head_sequence",
            "Sequence number of the audit log's chain head, as the database probe last read it",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self._expiry_days = Gauge(
            "vdno_generation_expiry_days",
            "Days until the first of a signing generation's certificates expires, as of the last "
            "housekeeping run",
            ("generation",),
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self._refused = Counter(
            "vdno_refused_calls",
            "Calls answered with an error, by reason (the error's class; unexpected: INTERNAL) and status",
            ("reason", "code"),
            registry=registry,
        )
        self._issuance_children: dict[tuple[BenchOperation, IssuanceOutcome, int | None], Any] = {}
        self._refused_children: dict[tuple[str, str], Any] = {}
        self._ok_writes = self._write_seconds.labels("ok")
        self._failed_writes = self._write_seconds.labels("error")
        self._expiring: set[str] = set()

    # -- IssuanceObserver (the pipeline thread)
    def issuance(self, kind: BenchOperation, outcome: IssuanceOutcome, generation: int | None) -> None:
        key = (kind, outcome, generation)
        child = self._issuance_children.get(key)
        if child is None:
            label = "none" if generation is None else str(generation)
            child = self._issuance_children[key] = self._issuances.labels(kind.value, outcome.value, label)
        child.inc()

    def step(self, requests: int, write_seconds: float, written: bool) -> None:
        if requests:
            self._step_requests.observe(requests)
        (self._ok_writes if written else self._failed_writes).observe(write_seconds)

    def hsm_job(self, seconds: float, digests: int, error: str | None) -> None:
        self._hsm_sign_seconds.observe(seconds)
        if error is not None:
            self._hsm_sign_errors.labels(error).inc()

    def hsm_signature_rejected(self) -> None:
        self._hsm_sign_errors.labels("SignatureCheckFailed").inc()

    # -- CallObserver (the interceptor)
    def latency(self, method: str) -> Callable[[float], None] | None:
        kind = TIMED_METHODS.get(method)
        return None if kind is None else self._hand_out_seconds.labels(kind).observe

    def refused(self, reason: str, code: str) -> None:
        key = (reason, code)
        child = self._refused_children.get(key)
        if child is None:
            child = self._refused_children[key] = self._refused.labels(reason, code)
        child.inc()

    # -- health, the audit log, the generations (background threads)
    def health(self, report: HealthReport) -> None:
        for component, label in COMPONENT_LABELS.items():
            self._up.labels(label).set(0 if component in report.down else 1)

    def audit_head(self, seq: int) -> None:
        self._audit_head.set(seq)

    def generations_expiry(self, views: Sequence[GenerationView]) -> None:
        """The signing generations and their certificates' expiry; a generation no longer among them
        is dropped (with several processes, where a value cannot be deleted, it reads NaN)."""
        now = self._clock()
        seen = set()
        for view in views:
            if view.record.not_after is None:
                continue
            label = str(view.record.generation)
            seen.add(label)
            self._expiry_days.labels(label).set((view.record.not_after - now).total_seconds() / 86400)
        for label in self._expiring - seen:
            self._expiry_days.labels(label).set(math.nan)
            self._expiry_days.remove(label)
        self._expiring = seen


class ProcessesCollector:
    """The parent of several server processes: the metrics every process wrote into `directory`, summed
    or combined per gauge. The live gauges of processes that ended (`ended()` gives their pids) are
    dropped first."""

    def __init__(self, directory: Path, ended: Callable[[], Iterable[int]]) -> None:
        self._directory = str(directory)
        self._files = MultiProcessCollector(None, path=self._directory)  # type: ignore[no-untyped-call]
        self._ended = ended

    def collect(self) -> Iterable[Any]:
        for pid in self._ended():
            mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]
        collected: Iterable[Any] = self._files.collect()  # type: ignore[no-untyped-call]
        return collected


class MetricsListener:
    """/metrics over plain HTTP on [metrics] listen, from its own thread; `port` is the bound one."""

    def __init__(self, config: MetricsConfig, registry: CollectorRegistry) -> None:
        host, port = config.address
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"[metrics] listen: cannot listen on {config.listen}") from exc
        self.port: int = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
