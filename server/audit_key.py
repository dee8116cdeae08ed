"""The audit checkpoint key as the server and offline verifiers use it: the [audit] table names the key's
PKCS#11 URI and its public key file (PEM), which `vdno-server init` exports from the token."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from vdno.server.config import ConfigError, Settings
from vdno.server.domain.checkpoint import AuditKey, load_public_key
from vdno.server.domain.errors import AuditDocumentInvalid

AUDIT_KEY_LABEL = "vdno-audit"
PUBLIC_KEY_FILE = "pki/audit-checkpoint-key.pem"  # in the state folder


def read_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in the PEM file `path`; ConfigError naming the file otherwise."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"the audit public key {path} cannot be read") from exc
    try:
        return load_public_key(pem)
    except AuditDocumentInvalid as exc:
        raise ConfigError(f"the audit public key {path} is unusable: {exc}") from exc


def audit_key(settings: Settings) -> AuditKey | None:
    """The configured audit key, or None when the settings have no [audit] table."""
    if settings.audit is None:
        return None
    return AuditKey(settings.audit.key_uri, read_public_key(settings.audit.public_key))
