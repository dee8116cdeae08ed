"""Saving and loading certificates and keys as PEM files.

`<stem>.pem` holds the certificate, `<stem>.key` the unencrypted PKCS#8 private key (mode 0600). Every file is
written atomically (temporary file in the same folder, then os.replace)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.errors import CertificateError
from vdno.gbcs.smki import load_certificate
from vdno.labpki.errors import LabPkiError
from vdno.labpki.smki import CertifiedKey, KeyUsageName

KEY_MODE = 0o600
CERT_MODE = 0o644


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write data to path via a temporary file in the same folder and os.replace; the file has `mode`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    atomic_write(Path(path), certificate_pem(certificate), CERT_MODE)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    atomic_write(Path(path), private_key_pem(key), KEY_MODE)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise LabPkiError(f"{path} is missing") from exc
    except ValueError as exc:
        raise LabPkiError(f"{path}: not a PEM certificate: {exc}") from exc


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise LabPkiError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LabPkiError(f"{path}: not an EC private key")
    return key


def write_certified_key(folder: Path, stem: str, ck: CertifiedKey) -> None:
    """Write `<stem>.pem` and, when the private key is held, `<stem>.key` (0600). Creates the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if ck.private_key is not None:
        write_private_key(folder / f"{stem}.key", ck.private_key)
    write_certificate(folder / f"{stem}.pem", ck.certificate)


def read_certified_key(folder: Path, stem: str, require_key: bool = True) -> CertifiedKey:
    """Read `<stem>.pem` and `<stem>.key`; the key may be missing only when require_key is False.
    LabPkiError when the key does not match the certificate."""
    folder = Path(folder)
    certificate = read_certificate(folder / f"{stem}.pem")
    key_path = folder / f"{stem}.key"
    if not key_path.exists():
        if require_key:
            raise LabPkiError(f"{key_path} is missing")
        return CertifiedKey(certificate, None)
    key = read_private_key(key_path)
    if key.public_key() != certificate.public_key():
        raise LabPkiError(f"{key_path} does not match {folder / f'{stem}.pem'}")
    return CertifiedKey(certificate, key)


_KEYSTORE_USAGE: dict[KeyUsage, KeyUsageName] = {
    KeyUsage.DIGITAL_SIGNATURE: "ds",
    KeyUsage.KEY_AGREEMENT: "ka",
}


def keystore_stem(certificate: x509.Certificate) -> str:
    """RTDS keystore naming `<eui>-ds` / `<eui>-ka` (eui: 16 lower-case hex digits of the organisation's
    x500UniqueIdentifier or the device's hwSerialNum). LabPkiError for a CA or a non-SMKI certificate."""
    try:
        parsed = load_certificate(certificate.public_bytes(serialization.Encoding.DER))
    except CertificateError as exc:
        raise LabPkiError(f"no keystore name for {certificate.subject.rfc4514_string()!r}: {exc}") from exc
    usage = _KEYSTORE_USAGE.get(parsed.key_usage) if parsed.key_usage is not None else None
    if usage is None or not parsed.entity_id:
        raise LabPkiError(f"no keystore name for CA certificate {certificate.subject.rfc4514_string()!r}")
    return f"{parsed.entity_id.hex()}-{usage}"


def export_keystore(
    folder: Path, certificates: Iterable[x509.Certificate | CertifiedKey], include_keys: bool = True
) -> list[Path]:
    """Write certificates as `<eui>-ds.pem` / `<eui>-ka.pem` (and `.key` when a CertifiedKey holds its key
    and include_keys), the layout of gbcs/vectors/keystore. Returns the written paths; LabPkiError when two
    certificates would take the same name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = [c if isinstance(c, CertifiedKey) else CertifiedKey(c, None) for c in certificates]
    stems: dict[str, CertifiedKey] = {}
    for item in items:
        stem = keystore_stem(item.certificate)
        if stem in stems:
            raise LabPkiError(f"two certificates would both be written as {stem}.pem")
        stems[stem] = item
    written: list[Path] = []
    for stem, item in stems.items():
        if include_keys and item.private_key is not None:
            write_private_key(folder / f"{stem}.key", item.private_key)
            written.append(folder / f"{stem}.key")
        write_certificate(folder / f"{stem}.pem", item.certificate)
        written.append(folder / f"{stem}.pem")
    return written
