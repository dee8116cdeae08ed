"""A complete, valid server configuration in a folder, with real files for everything it names: the lab
SMKI CAs, a TLS server certificate and key from a TLS CA (with that CA's key for enrolment), a PIN file,
the audit public key. The PKCS#11 module is a stand-in file: the settings only check that it can be read
(the signer loads it)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import new_p256_key
from vdno.labpki.store import write_certified_key
from vdno.labpki.tls import issue_server_certificate

CONFIG = """\
[server]
listen = "127.0.0.1:0"
{server}
[database]
url = "sqlite:///vdno.db"
{database}
[tls]
server_certificate = "tls/server.pem"
server_key = "tls/server.key"
client_ca = "pki/tls-ca.pem"
{tls}
[hsm]
module = "lib/pkcs11-module.so"
token_label = "vdno"
pin_file = "secrets/user.pin"
pin_env = "VDNO_TEST_HSM_PIN"
{hsm}
[trust]
root_ca = "pki/root-ca.pem"
issuing_ca = "pki/issuing-ca.pem"
device_ca = "pki/device-ca.pem"
{trust}
[enrolment]
client_ca_key = "pki/tls-ca.key"
[audit]
key_uri = "pkcs11:token=vdno;object=vdno-audit;type=private"
public_key = "pki/audit-checkpoint-key.pem"
{extra}"""


def write_lab_files(folder: Path) -> None:
    """Every file CONFIG names, under `folder`."""
    pki = LabHierarchy.create()
    pki.save(folder / "pki")
    write_certified_key(folder / "tls", "server", issue_server_certificate(pki.tls_ca))
    (folder / "secrets").mkdir()
    (folder / "secrets" / "user.pin").write_text("1234\n")
    (folder / "lib").mkdir()
    (folder / "lib" / "pkcs11-module.so").write_bytes(b"\x7fELF stand-in")
    audit_public = (
        new_p256_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (folder / "pki" / "audit-checkpoint-key.pem").write_bytes(audit_public)


def write_config(folder: Path, **tables: str) -> Path:
    """config.toml in `folder` (whose files write_lab_files made): CONFIG with the lines `tables` add to
    [server], [database], [tls], [hsm], [trust], and `extra` after everything."""
    fields = {name: tables.get(name, "") for name in ("server", "database", "tls", "hsm", "trust", "extra")}
    path = folder / "config.toml"
    path.write_text(CONFIG.format(**fields))
    return path


def replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
