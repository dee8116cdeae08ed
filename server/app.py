"""Builds the running service from Settings: the one construction path used by production and tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from vdno.gbcs.errors import GbcsError
from vdno.gbcs.smki import load_certificate
from vdno.server.audit_key import audit_key
from vdno.server.config import ConfigError, Settings, TlsSettings
from vdno.server.domain.checkpoint import AuditCheckpoints
from vdno.server.domain.custody import CustodyService, CustodySettings
from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, VdnoError
from vdno.server.domain.fleet import FleetView
from vdno.server.domain.hand_in import HandInService
from vdno.server.domain.issuance import HandOutService
from vdno.server.domain.policy import TrustAnchors
from vdno.server.enrolment import CaFileBenchIssuer
from vdno.server.health import (
    DATABASE,
    HSM,
    HealthBoard,
    HealthMonitor,
    HealthReport,
    HealthSlots,
    serve_health,
)
from vdno.server.housekeeping import CustodyHousekeeping
from vdno.server.metrics import MetricsListener, ServerMetrics
from vdno.server.refusals import RefusalAudit
from vdno.server.rpc.audit_servicer import add_audit_service
from vdno.server.rpc.interceptors import ErrorMappingInterceptor
from vdno.server.rpc.servicers import BenchServicer, CustodyServicer
from vdno.server.store.sql import SqlCustodyStore, open_store
from vdno.v1 import custodian_pb2, custodian_pb2_grpc, custody_pb2, custody_pb2_grpc

if TYPE_CHECKING:
    from vdno.server.hsm.signer import Pkcs11Signer

SERVICE_NAME = custodian_pb2.DESCRIPTOR.services_by_name["BenchService"].full_name
CUSTODY_SERVICE_NAME = custody_pb2.DESCRIPTOR.services_by_name["CustodyService"].full_name


def _read_der(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read") from exc
    try:
        return load_certificate(data).der
    except GbcsError as exc:
        raise ConfigError(f"{what} {path} is not an SMKI CA certificate: {exc}") from exc


def _utc_now() -> datetime:
    return datetime.now(UTC)


def load_anchors(settings: Settings) -> TrustAnchors:
    return TrustAnchors(
        root_ca=_read_der(settings.trust.root_ca, "trust.root_ca"),
        issuing_ca=_read_der(settings.trust.issuing_ca, "trust.issuing_ca"),
        device_ca=_read_der(settings.trust.device_ca, "trust.device_ca"),
    )


def open_signer(settings: Settings) -> Pkcs11Signer:
    """The PKCS#11 signer (imported here so a bench install never needs python-pkcs11); the PIN is read
    from the file or the environment variable the settings name."""
    from vdno.server.hsm.signer import Pkcs11Signer
    from vdno.server.hsm.softhsm import activate_softhsm_conf

    if settings.hsm.softhsm_conf is not None:
        activate_softhsm_conf(settings.hsm.softhsm_conf, settings.hsm.module)
    return Pkcs11Signer(
        str(settings.hsm.module),
        settings.hsm.token_label,
        settings.hsm.read_pin(os.environ),
        reconnect_first=settings.hsm.reconnect_first,
        reconnect_max=settings.hsm.reconnect_max,
    )


def build_custody(
    settings: Settings, store: SqlCustodyStore, signer: Pkcs11Signer, anchors: TrustAnchors
) -> CustodyService:
    from vdno.server.hsm.ceremony import TokenKeyCeremony

    c = settings.custody
    rules = CustodySettings(
        approvals_required=c.approvals_required,
        approval_ttl=timedelta(hours=c.approval_ttl_hours),
        execution_window=timedelta(minutes=c.execution_window_minutes),
        destroy_grace=timedelta(days=c.destroy_grace_days),
        expiry_warning=timedelta(days=c.expiry_warning_days),
        token_label=settings.hsm.token_label,
    )
    issuer = (
        None
        if settings.enrolment.client_ca_key is None
        else CaFileBenchIssuer(settings.tls.client_ca, settings.enrolment.client_ca_key)
    )
    return CustodyService(
        store, TokenKeyCeremony(signer, settings.hsm.token_label), issuer, anchors, rules, _utc_now
    )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    store: SqlCustodyStore
    service: HandOutService
    close_signer: Callable[[], None]
    health_servicer: health.HealthServicer
    monitor: HealthMonitor
    health_server: grpc.Server | None = None
    health_port: int | None = None  # the plaintext health listener's, when this process serves it
    housekeeping: CustodyHousekeeping | None = None
    refusals: RefusalAudit | None = None
    metrics: ServerMetrics | None = None
    metrics_listener: MetricsListener | None = None  # when this process serves /metrics

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_listener is None else self.metrics_listener.port

    def stop(self, grace: float = 1.0) -> None:
        self.health_servicer.enter_graceful_shutdown()  # NOT_SERVING from now on
        self.monitor.close()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(None)
        if self.metrics_listener is not None:
            self.metrics_listener.stop()
        if self.housekeeping is not None:
            self.housekeeping.stop()
        if self.refusals is not None:
            self.refusals.close()  # the counts still open are recorded
        self.service.close()
        self.close_signer()
        self.store.close()


def mtls_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate from the configured bench CA."""
    try:
        return grpc.ssl_server_credentials(
            [(tls.server_key.read_bytes(), tls.server_certificate.read_bytes())],
            root_certificates=tls.client_ca.read_bytes(),
            require_client_auth=True,
        )
    except OSError as exc:
        raise ConfigError("tls certificate, key or client CA cannot be read") from exc


def build_server(
    settings: Settings, health_slots: HealthSlots | None = None, share_port: bool = False
) -> RunningServer:
    """Open store and HSM, wire the domain, bind with mandatory mTLS, start. Binds settings.listen
    (use port 0 for a free port; the bound port is returned): with share_port (one of a server's worker
    processes) with SO_REUSEPORT, else alone (see server/port_claim.py). The schema is migrated
    beforehand, once, by `vdno-server serve` (server.store.engine.migrate_database).

    Health (server/health.py) is probed in the background from the start. Without `health_slots` (one
    server process) this process also serves the plaintext health listener (settings.health_listen) and
    the metrics listener (settings.metrics); with them (one of several processes) it publishes its health
    there and its metrics into the files server.metrics.use_values named, and the parent process serves
    both."""
    anchors = load_anchors(settings)
    checkpoint_key = audit_key(settings)  # None without an [audit] table: checkpoints are refused
    store = open_store(settings.database_url, run_migrations=False, write_lock_wait=settings.write_lock_wait)
    # The issuance pipeline's thread is the one caller: it owns the session, no hand-off per batch.
    signer = open_signer(settings)
    try:
        signer.check()  # open and log in now, not on the first hand-out
    except HsmUnavailable as exc:  # the signer reconnects in the background
        structlog.get_logger("vdno.server").warning("hsm.not_ready", reason=str(exc))
    except HsmLoginRefused:  # the signer logged it; every call is refused until a restart
        pass
    metrics = ServerMetrics(CollectorRegistry())
    service = HandOutService(store, signer, anchors, _utc_now, observer=metrics)
    try:  # issuances an earlier process left RECORDED when it stopped: they no longer hold their meters
        abandoned = service.fail_abandoned()
        if abandoned:
            structlog.get_logger("vdno.server").warning("issuance.abandoned", issuances=abandoned)
    except VdnoError as exc:  # the database is away: health says so; the housekeeping tries again
        structlog.get_logger("vdno.server").warning("issuance.abandoned_deferred", reason=str(exc))
    hand_in = HandInService(store, anchors, _utc_now, settle=service.settle_from_reading)
    custody = build_custody(settings, store, signer, anchors)

    refusals = RefusalAudit(store.record_event)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rpc"),
        interceptors=[ErrorMappingInterceptor(on_refused_auth=refusals.refused, observer=metrics)],
        options=[("grpc.so_reuseport", 1 if share_port else 0)],
    )
    custodian_pb2_grpc.add_BenchServiceServicer_to_server(  # type: ignore[no-untyped-call]
        BenchServicer(service, hand_in), server
    )
    custody_pb2_grpc.add_CustodyServiceServicer_to_server(  # type: ignore[no-untyped-call]
        CustodyServicer(hand_in, FleetView(store), custody, service), server
    )
    audit_service = add_audit_service(server, AuditCheckpoints(store, signer, checkpoint_key, _utc_now))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            CUSTODY_SERVICE_NAME,
            audit_service,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    board = HealthBoard(health_servicer, (SERVICE_NAME,), source=f"pid {os.getpid()}")
    # One process: its own health is the service's (vdno_up). Several: the parent combines them.
    publishers = (
        [board.publish, metrics.health] if health_slots is None else [board.publish, health_slots.publish]
    )

    def publish(report: HealthReport) -> None:
        for publisher in publishers:
            publisher(report)

    def active_keys() -> list[str]:
        try:
            generations = store.list_generations()
        except VdnoError:  # the database probe reports that
            return []
        return [g.ds_key_uri for g in generations if g.signs]

    def probe_database() -> None:
        store.check_writable()
        with contextlib.suppress(VdnoError):  # a broken head is for the audit verification to report
            tip = store.audit_tip()
            if tip is not None:
                metrics.audit_head(tip.head.seq)

    monitor = HealthMonitor(
        {HSM: lambda: signer.probe(active_keys()), DATABASE: probe_database},
        publish,
        interval=settings.health_interval,
    )
    signer.add_listener(lambda: monitor.poke(HSM))
    monitor.check_now()  # the first answer is already the truth
    try:
        port = server.add_secure_port(settings.listen, mtls_credentials(settings.tls))
    except RuntimeError as exc:  # gRPC could not bind
        raise ConfigError(
            f"cannot listen on {settings.listen}: the port is in use, or the address is not this machine's"
        ) from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.listen}")
    health_server, health_port = None, None
    if health_slots is None and settings.health_listen:
        health_server, health_port = serve_health(settings.health_listen, health_servicer)
    metrics_listener = None
    if health_slots is None and settings.metrics.listen:
        metrics_listener = MetricsListener(settings.metrics, metrics.registry)
    server.start()
    monitor.start()
    housekeeping = CustodyHousekeeping(
        custody,
        settings.custody.housekeeping_seconds,
        fail_abandoned=service.fail_abandoned,
        on_expiry=metrics.generations_expiry,
    )
    housekeeping.start()
    return RunningServer(
        server,
        port,
        store,
        service,
        signer.close,
        health_servicer,
        monitor,
        health_server,
        health_port,
        housekeeping,
        refusals,
        metrics,
        metrics_listener,
    )
