"""The [audit] table of the server settings: optional (checkpoints are then unavailable), and checked when
present. These settings are loaded without reading the files they name (as the offline tools load them),
so that the audit key's own checks are reached; test_config.py has the start-up checks of every file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdno.server.audit_key import audit_key
from vdno.server.config import ConfigError, load_settings

BASE = """
[database]
url = "sqlite:///vdno.db"
[tls]
server_certificate = "tls/server.pem"
server_key = "tls/server.key"
client_ca = "pki/tls-ca.pem"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "vdno"
pin_file = "secrets/user.pin"
[trust]
root_ca = "pki/root-ca.pem"
issuing_ca = "pki/issuing-ca.pem"
device_ca = "pki/device-ca.pem"
"""
AUDIT = """
[audit]
key_uri = "pkcs11:token=vdno;object=vdno-audit;type=private"
public_key = "pki/audit-checkpoint-key.pem"
"""


def write(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def test_without_an_audit_table_there_is_no_audit_key(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), environ={}, check_files=False)
    assert settings.audit is None and audit_key(settings) is None


def test_the_audit_table_names_the_key_and_its_public_key_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE + AUDIT), environ={}, check_files=False)
    assert settings.audit is not None
    assert settings.audit.key_uri == "pkcs11:token=vdno;object=vdno-audit;type=private"
    assert settings.audit.public_key == tmp_path / "pki" / "audit-checkpoint-key.pem"
    with pytest.raises(ConfigError, match=r"audit public key .* cannot be read"):
        audit_key(settings)  # the file is not there
    (tmp_path / "pki").mkdir()
    settings.audit.public_key.write_text("not a key")
    with pytest.raises(ConfigError, match="is unusable: not a PEM public key"):
        audit_key(settings)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[audit]\npublic_key = "k.pem"\n', r"^\[audit\] key_uri: required$"),
        (
            '[audit]\nkey_uri = "vdno-audit"\npublic_key = "k.pem"\n',
            r"^\[audit\] key_uri: must be a PKCS#11 URI",
        ),
        ('[audit]\nkey_uri = "pkcs11:object=vdno-audit"\n', r"^\[audit\] public_key: required$"),
        ('audit = "yes"\n', r"^\[audit\]: must be a table — got 'yes'$"),
    ],
)
def test_a_broken_audit_table_is_named(tmp_path: Path, table: str, message: str) -> None:
    text = table + BASE if not table.startswith("[") else BASE + table
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={}, check_files=False)
