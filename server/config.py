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
    audit: AuditSettings | None = None  # None: no [audit] table, checkpoints are unavailable


def _path(base: Path, table: Mapping[str, Any], key: str, section: str) -> Path:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[{section}] {key} is required and must be a path")
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _audit(base: Path, table: object) -> AuditSettings:
    if not isinstance(table, dict):
        raise ConfigError("[audit] must be a table")
    key_uri = table.get("key_uri")
    if not isinstance(key_uri, str) or not key_uri.startswith("pkcs11:"):
        raise ConfigError("[audit] key_uri is required and must be a PKCS#11 URI (pkcs11:...)")
    return AuditSettings(key_uri=key_uri, public_key=_path(base, table, "public_key", "audit"))


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (TOML); relative paths are relative to the file. Environment overrides:
    VDNO_LISTEN, VDNO_DATABASE_URL, VDNO_PROCESSES."""
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
    return Settings(
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
        ),
        trust=TrustSettings(
            root_ca=_path(base, trust, "root_ca", "trust"),
            issuing_ca=_path(base, trust, "issuing_ca", "trust"),
            device_ca=_path(base, trust, "device_ca", "trust"),
        ),
        processes=processes,
        threads=threads,
        log_level=str(server.get("log_level", "info")),
        audit=_audit(base, raw["audit"]) if "audit" in raw else None,
    )
