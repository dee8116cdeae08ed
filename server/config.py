"""Settings: built once at start-up from a TOML file plus environment overrides, then passed down."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.domain.errors import VdnoError


class ConfigError(VdnoError):
    """The configuration file or environment is wrong; the message names the key."""


@dataclass(frozen=True)
class TlsSettings:
    server_certificate: Path
    server_key: Path
    client_ca: Path  # CA that issues bench client certificates


@dataclass(frozen=True)
class HsmSettings:
    module: Path
    token_label: str
    pin_file: Path | None  # the user PIN comes from this file ...
    pin_env: str | None  # ... or from this environment variable; never from argv
    softhsm_conf: Path | None = None  # SoftHSM only: exported as SOFTHSM2_CONF before the module loads
    # After a transient fault the signer reconnects at once, then after reconnect_first seconds, doubling
    # up to reconnect_max.
    reconnect_first: float = 0.2
    reconnect_max: float = 5.0

    def read_pin(self, environ: Mapping[str, str]) -> str:
        if self.pin_env:
            pin = environ.get(self.pin_env)
            if pin:
                return pin
        if self.pin_file is not None:
            try:
                pin = self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"hsm.pin_file {self.pin_file} cannot be read") from exc
            if pin:
                return pin
        raise ConfigError("no HSM PIN: set hsm.pin_file or the environment variable named by hsm.pin_env")


@dataclass(frozen=True)
class TrustSettings:
    root_ca: Path
    issuing_ca: Path
    device_ca: Path


@dataclass(frozen=True)
class CustodyConfig:
    """[custody]: the officers' rules (server.domain.custody.CustodySettings)."""

    approvals_required: int = 1
    approval_ttl_hours: float = 24.0
    execution_window_minutes: float = 60.0
    destroy_grace_days: int = 7
    expiry_warning_days: int = 90
    housekeeping_seconds: float = 60.0  # how often due destructions are carried out and expiry checked


@dataclass(frozen=True)
class EnrolmentConfig:
    """[enrolment]: benches enrolled from a certificate request get a certificate from this CA (the one
    tls.client_ca names), whose key this file holds. Absent: no enrolment from requests."""

    client_ca_key: Path | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: Prometheus metrics over plain HTTP at /metrics ("" disables the listener). With
    [server] processes > 1 the parent process serves the metrics of every worker."""

    listen: str = "127.0.0.1:0"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of `listen` (checked by load_settings; "[::1]:9464" gives "::1")."""
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class AuditSettings:
    key_uri: str  # PKCS#11 URI of the audit checkpoint key's private half in the token
    public_key: Path  # its public key (PEM), which the server and offline verifiers check signatures with


@dataclass(frozen=True)
class Settings:
    listen: str
    database_url: str
    tls: TlsSettings
    hsm: HsmSettings
    trust: TrustSettings
    processes: int = 1
    threads: int = 16
    log_level: str = "info"
    write_lock_wait: float = 5.0  # seconds a write waits for the database's write lock (then UNAVAILABLE)
    # The plaintext grpc.health.v1 listener for load balancers ("" disables it); probes run every
    # health_interval seconds.
    health_listen: str = "127.0.0.1:0"
    health_interval: float = 1.0
    custody: CustodyConfig = CustodyConfig()
    enrolment: EnrolmentConfig = EnrolmentConfig()
    audit: AuditSettings | None = None  # None: no [audit] table, checkpoints are unavailable
    metrics: MetricsConfig = MetricsConfig()


def _path(base: Path, table: Mapping[str, Any], key: str, section: str) -> Path:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[{section}] {key} is required and must be a path")
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _seconds(table: Mapping[str, Any], key: str, section: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(f"[{section}] {key} must be a number of seconds, more than 0 and at most 3600")
    return float(value)


def _audit(base: Path, table: object) -> AuditSettings:
    if not isinstance(table, dict):
        raise ConfigError("[audit] must be a table")
    key_uri = table.get("key_uri")
    if not isinstance(key_uri, str) or not key_uri.startswith("pkcs11:"):
        raise ConfigError("[audit] key_uri is required and must be a PKCS#11 URI (pkcs11:...)")
    return AuditSettings(key_uri=key_uri, public_key=_path(base, table, "public_key", "audit"))


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (TOML); relative paths are relative to the file. Environment overrides:
    VDNO_LISTEN, VDNO_HEALTH_LISTEN, VDNO_DATABASE_URL, VDNO_PROCESSES, VDNO_METRICS_LISTEN."""
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    base = path.resolve().parent
    server = raw.get("server", {})
    tls, hsm, trust = raw.get("tls", {}), raw.get("hsm", {}), raw.get("trust", {})
    db = env.get("VDNO_DATABASE_URL") or raw.get("database", {}).get("url")
    if not isinstance(db, str) or not db:
        raise ConfigError("[database] url is required")
    if db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
        db = "sqlite:///" + str(base / db[len("sqlite:///") :])
    label = hsm.get("token_label")
    if not isinstance(label, str) or not label:
        raise ConfigError("[hsm] token_label is required")
    try:
        processes = int(env.get("VDNO_PROCESSES") or server.get("processes", 1))
        threads = int(server.get("threads", 16))
    except ValueError as exc:
        raise ConfigError("[server] processes and threads must be integers") from exc
    if processes < 1 or threads < 1:
        raise ConfigError("[server] processes and threads must be at least 1")
    health_listen = env.get("VDNO_HEALTH_LISTEN", server.get("health_listen", "127.0.0.1:0"))
    if not isinstance(health_listen, str):
        raise ConfigError('[server] health_listen must be "host:port" or "" (no health listener)')
    reconnect_first = _seconds(hsm, "reconnect_first", "hsm", 0.2)
    reconnect_max = _seconds(hsm, "reconnect_max", "hsm", 5.0)
    if reconnect_max < reconnect_first:
        raise ConfigError("[hsm] reconnect_max must not be less than reconnect_first")
    custody = _custody(raw.get("custody", {}))
    enrolment = raw.get("enrolment", {})
    return Settings(
        custody=custody,
        enrolment=EnrolmentConfig(
            _path(base, enrolment, "client_ca_key", "enrolment") if enrolment.get("client_ca_key") else None
        ),
        listen=env.get("VDNO_LISTEN") or server.get("listen", "127.0.0.1:50051"),
        database_url=db,
        tls=TlsSettings(
            server_certificate=_path(base, tls, "server_certificate", "tls"),
            server_key=_path(base, tls, "server_key", "tls"),
            client_ca=_path(base, tls, "client_ca", "tls"),
        ),
        hsm=HsmSettings(
            module=_path(base, hsm, "module", "hsm"),
            token_label=label,
            pin_file=_path(base, hsm, "pin_file", "hsm") if hsm.get("pin_file") else None,
            pin_env=hsm.get("pin_env"),
            softhsm_conf=_path(base, hsm, "softhsm_conf", "hsm") if hsm.get("softhsm_conf") else None,
            reconnect_first=reconnect_first,
            reconnect_max=reconnect_max,
        ),
        trust=TrustSettings(
            root_ca=_path(base, trust, "root_ca", "trust"),
            issuing_ca=_path(base, trust, "issuing_ca", "trust"),
            device_ca=_path(base, trust, "device_ca", "trust"),
        ),
        processes=processes,
        threads=threads,
        log_level=str(server.get("log_level", "info")),
        write_lock_wait=_seconds(raw.get("database", {}), "write_lock_wait", "database", 5.0),
        health_listen=health_listen,
        health_interval=_seconds(server, "health_interval", "server", 1.0),
        audit=_audit(base, raw["audit"]) if "audit" in raw else None,
        metrics=_metrics(raw.get("metrics", {}), env),
    )


def _metrics(table: object, env: Mapping[str, str]) -> MetricsConfig:
    if not isinstance(table, dict):
        raise ConfigError("[metrics] must be a table")
    unknown = sorted(set(table) - {"listen"})
    if unknown:
        raise ConfigError(f"[metrics] unknown keys: {', '.join(unknown)}")
    listen = env.get("VDNO_METRICS_LISTEN", table.get("listen", MetricsConfig.listen))
    host, _, port = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
    if listen != "" and (not host or not port.isdigit() or int(port) > 65535):
        raise ConfigError(f'[metrics] listen must be "host:port" or "" (no metrics listener), not {listen!r}')
    return MetricsConfig(listen)


def _custody(table: Mapping[str, Any]) -> CustodyConfig:
    defaults = CustodyConfig()
    values: dict[str, Any] = {}
    for key, kind in (
        ("approvals_required", int),
        ("approval_ttl_hours", float),
        ("execution_window_minutes", float),
        ("destroy_grace_days", int),
        ("expiry_warning_days", int),
        ("housekeeping_seconds", float),
    ):
        value = table.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[custody] {key} must be a positive number, got {value!r}")
        values[key] = kind(value)
    if not 7 <= values["destroy_grace_days"] <= 30:
        raise ConfigError("[custody] destroy_grace_days must be 7 to 30")
    unknown = sorted(set(table) - set(values))
    if unknown:
        raise ConfigError(f"[custody] unknown keys: {', '.join(unknown)}")
    return CustodyConfig(**values)
