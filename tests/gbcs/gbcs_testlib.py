"""Helpers shared by the gbcs tests: vector loading, keystore access, INDEX.md expectations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rtds_vectors import read_hex

from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand, ProvideSecurityCredentialsResponse
from vdno.gbcs.cs02b import (
    FutureDatedAlert,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import (
    DeviceCertificateResponse,
    ProvideDeviceCertificateCommand,
    UpdateDeviceCertificateCommand,
    UpdateDeviceCertificateResponse,
)

ACB_ID = "90b3d51f30000002"


@dataclass(frozen=True)
class Vector:
    path: Path
    name: str
    kind: str  # COMMAND / PRECOMMAND / RESPONSE / ALERT
    data: bytes
    sig_pem: str | None  # keystore file expected to verify the signature (from INDEX.md), None if unsigned
    sig_none_reason: str  # "precommand" / "length00" / "" when signed
    mac_ka_pem: str | None  # device KA pem for the MAC check, None if not MAC-framed


def load_vectors(vectors_dir: Path) -> list[Vector]:
    index = (vectors_dir / "INDEX.md").read_text()
    rows: dict[str, list[str]] = {}
    for line in index.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].endswith("_GBCS.HEX"):
            rows[cells[0]] = cells
    vectors = []
    for path in sorted(vectors_dir.glob("*/*.HEX")):
        row = rows[path.name]
        kind = row[1]
        sig_col, mac_col = row[9], row[10]
        m = re.search(r"`([0-9a-f]{16}-ds\.pem)` → OK", sig_col)
        sig_pem = m.group(1) if m else None
        reason = "" if m else ("length00" if "0x00" in sig_col else "precommand")
        mm = re.search(r"`([0-9a-f]{16}-ka\.pem)`\) → OK", mac_col)
        vectors.append(
            Vector(path, path.name, kind, read_hex(path), sig_pem, reason, mm.group(1) if mm else None)
        )
    return vectors


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def expected_payload_type(v: Vector) -> type:
    folder = v.path.parent.name
    command = v.kind in ("COMMAND", "PRECOMMAND")
    if "CS02b" in folder:
        if v.kind == "ALERT":
            return FutureDatedAlert
        return UpdateSecurityCredentialsCommand if command else UpdateSecurityCredentialsResponse
    if "CS02a" in folder:
        return ProvideSecurityCredentialsCommand if command else ProvideSecurityCredentialsResponse
    if "CS02d" in folder:
        return UpdateDeviceCertificateCommand if command else UpdateDeviceCertificateResponse
    if "CS02e" in folder:
        return ProvideDeviceCertificateCommand if command else DeviceCertificateResponse
    raise AssertionError(folder)
