"""Builds the running service from Settings: the one construction path used by production and tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gbcs.errors import GbcsError
from gbcs.smki import load_certificate
from server.audit_key import audit_key
from server.config import ConfigError, Settings, TlsSettings
from server.domain.checkpoint import AuditCheckpoints
from server.domain.errors import HsmUnavailable
from server.domain.fleet import FleetView
from server.domain.hand_in import HandInService
from server.domain.issuance import HandOutService
from server.domain.policy import TrustAnchors
from server.domain.values import AuditEvent
from server.rpc.audit_servicer import add_audit_service
from server.rpc.interceptors import ErrorMappingInterceptor
from server.rpc.servicers import BenchServicer, CustodyServicer
from server.store.sql import SqlCustodyStore, open_store
from vdno.v1 import custodian_pb2, custodian_pb2_grpc, custody_pb2, custody_pb2_grpc

if TYPE_CHECKING:
    from server.hsm.signer import Pkcs11Signer

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


def open_signer(settings: Settings, worker_thread: bool = True) -> Pkcs11Signer:
    """The PKCS#11 signer (imported here so a bench install never needs python-pkcs11); the PIN is read
    from the file or the environment variable the settings name."""
    from server.hsm.signer import Pkcs11Signer
    from server.hsm.softhsm import activate_softhsm_conf

    if settings.hsm.softhsm_conf is not None:
        activate_softhsm_conf(settings.hsm.softhsm_conf, settings.hsm.module)
    return Pkcs11Signer(
        str(settings.hsm.module),
        settings.hsm.token_label,
        settings.hsm.read_pin(os.environ),
        worker_thread=worker_thread,
    )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    store: SqlCustodyStore
    service: HandOutService
    close_signer: Callable[[], None]

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()
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


def build_server(settings: Settings) -> RunningServer:
    """Open store and HSM, wire the domain, bind with mandatory mTLS, start. Binds settings.listen
    (use port 0 for a free port; the bound port is returned). The schema is migrated beforehand, once,
    by `vdno-server serve` (server.store.sql.migrate_database)."""
    anchors = load_anchors(settings)
    checkpoint_key = audit_key(settings)  # None without an [audit] table: checkpoints are refused
    store = open_store(settings.database_url, run_migrations=False)
    # The issuance pipeline's thread is the one caller: it owns the session, no hand-off per batch.
    signer = open_signer(settings, worker_thread=False)
    try:
        signer.check()  # open and log in now, not on the first hand-out
    except HsmUnavailable as exc:
        structlog.get_logger("vdno.server").warning("hsm.not_ready", reason=str(exc))
    service = HandOutService(store, signer, anchors, _utc_now)
    hand_in = HandInService(store, anchors, _utc_now)

    def audit_refusal(actor: str, reason: str) -> None:
        store.record_event(AuditEvent("auth.refused", actor, "rpc", {"reason": reason}))

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rpc"),
        interceptors=[ErrorMappingInterceptor(on_refused_auth=audit_refusal)],
        options=[("grpc.so_reuseport", 1)],
    )
    custodian_pb2_grpc.add_BenchServiceServicer_to_server(  # type: ignore[no-untyped-call]
        BenchServicer(service, hand_in), server
    )
    custody_pb2_grpc.add_CustodyServiceServicer_to_server(  # type: ignore[no-untyped-call]
        CustodyServicer(hand_in, FleetView(store)), server
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
    port = server.add_secure_port(settings.listen, mtls_credentials(settings.tls))
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.listen}")
    server.start()
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, store, service, signer.close)
