"""`vdno-server init`'s part for the audit log's checkpoints: the audit key pair made in the token with the
vanilla keys' custody attributes (sensitive, never extractable), its public key exported to the state
folder, and the [audit] table in config.toml naming both. Idempotent, and it completes a state folder made
before checkpoints existed."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vdno.labpki.store import atomic_write
from vdno.server.audit_key import AUDIT_KEY_LABEL, PUBLIC_KEY_FILE, read_public_key
from vdno.server.config import ConfigError
from vdno.server.domain.checkpoint import key_id_of
from vdno.server.domain.values import AuditEvent
from vdno.server.hsm.keys import ensure_keypair
from vdno.server.hsm.token import open_token_session
from vdno.server.hsm.uri import Pkcs11Uri

AUDIT_KEY_ID = b"vdno-audit"
AUDIT_TABLE = """
[audit]
# The audit checkpoint key (made in the token by `vdno-server init`): officers have it sign the audit
# log's chain head (`vdno-admin audit checkpoint`); `vdno-admin audit verify` checks checkpoints with
# the public key.
key_uri = "{uri}"
public_key = "{public_key}"
"""


def audit_key_uri(token_label: str) -> str:
    return str(Pkcs11Uri(token=token_label, object=AUDIT_KEY_LABEL, type="private"))


def ensure_audit_key(
    state: Path, module: Path, token_label: str, pin: str, actor: str, did: Callable[[str], None]
) -> AuditEvent | None:
    """The audit key pair in the token and its public key in the state folder; the audit event to record
    when the key was generated now (None when it existed). ConfigError when the exported public key is
    not the token's."""
    with open_token_session(module, token_label, pin) as session:
        pair = ensure_keypair(session, AUDIT_KEY_LABEL, AUDIT_KEY_ID)
    path = state / PUBLIC_KEY_FILE
    if path.exists():
        if read_public_key(path) != pair.public_key:
            raise ConfigError(
                f"{path} is not the public key of the token's {AUDIT_KEY_LABEL} key; the state folder is "
                "inconsistent"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path, pair.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), 0o644
        )
        did(f"exported the audit checkpoint public key to {PUBLIC_KEY_FILE}")
    if not pair.created:
        return None
    did(f"generated key {AUDIT_KEY_LABEL} in the token")
    details = {
        "key_id": key_id_of(pair.public_key),
        "uri": audit_key_uri(token_label),
        "public_key": PUBLIC_KEY_FILE,
    }
    return AuditEvent("audit.key-generated", actor, f"key:{AUDIT_KEY_LABEL}", details)


def ensure_audit_config(config: Path, token_label: str, did: Callable[[str], None]) -> None:
    """Append the [audit] table to `config` unless it has one."""
    text = config.read_text()
    try:
        if "audit" in tomllib.loads(text):
            return
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config} is not valid TOML: {exc}") from exc
    table = AUDIT_TABLE.format(uri=audit_key_uri(token_label), public_key=PUBLIC_KEY_FILE)
    atomic_write(config, (text.rstrip("\n") + "\n" + table).encode(), mode=0o644)
    did(f"added the [audit] table to {config.name}")
