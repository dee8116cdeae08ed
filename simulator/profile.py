"""Device profiles: everything a simulated SMETS2 device starts from, loadable from a JSON file.

JSON format (one device per file; paths are relative to the file's folder):

    {
      "format": "vdno-sim-device/1",                  (optional)
      "device_id": "00db1234567890a0",                16 hex digits
      "cells": [
        {"role": 0, "key_usage": "root", "certificate_file": "Z1-issuing-ca.pem"},
        {"role": 3, "key_usage": "ds", "cell_usage": 0, "certificate_pem": "-----BEGIN CERTIFICATE-----..."},
        ...
      ],                                              key_usage: "ds" | "ka" | "root" (keyCertSign);
                                                      cell_usage: 0 management (default), 1 prepayment
      "seq_numbers": {"2": 0, "3": 1},                stored seq number per remote-party role
      "originator_counters": {"90b3d51f30020000": 1200},   anti-replay counter per KRP (optional)
      "device_ds": {"private_key_pem" | "private_key_file": ..., "certificate_pem" | "certificate_file": ...},
      "device_ka": {...same...},                      either may be omitted / have no private key
      "require_acb_mac": true,                        default true (as on a real meter)
      "allow_local_reads": false,                     default false; true = lab triage port
      "clock": "2015-01-01T00:00:00Z"                 optional; null/absent = real time
    }

`save_profile` writes the inline (`*_pem`) form. Build profiles programmatically with `DeviceProfile(...)`
directly or with `simulator.lab.make_device_profile` (fresh device keys and certificates from a lab PKI).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vdno.gbcs.cells import (
    NO_DS_CELL as NO_DS_CELL,  # re-exported beside the other cells; defined in gbcs.cells
)
from vdno.gbcs.cells import NO_KA_CELL as NO_KA_CELL
from vdno.gbcs.cells import CellUsage, KeyUsage, RemotePartyRole, TrustAnchorCellIdentifier
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64
from vdno.labpki.store import atomic_write, certificate_pem, private_key_pem
from vdno.simulator.errors import ProfileError

PROFILE_FORMAT = "vdno-sim-device/1"

# The trust-anchor cells of a SMETS2 device (gbcs/README.md §5, §9); the NO cells come from gbcs.cells.
ROOT_CELL = TrustAnchorCellIdentifier(RemotePartyRole.ROOT, KeyUsage.KEY_CERT_SIGN)
RECOVERY_CELL = TrustAnchorCellIdentifier(RemotePartyRole.RECOVERY, KeyUsage.DIGITAL_SIGNATURE)
SUPPLIER_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.SUPPLIER, KeyUsage.DIGITAL_SIGNATURE)
SUPPLIER_KA_CELL = TrustAnchorCellIdentifier(RemotePartyRole.SUPPLIER, KeyUsage.KEY_AGREEMENT)
SUPPLIER_PP_KA_CELL = TrustAnchorCellIdentifier(
    RemotePartyRole.SUPPLIER, KeyUsage.KEY_AGREEMENT, CellUsage.PREPAYMENT_TOP_UP
)
ACB_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.ACCESS_CONTROL_BROKER, KeyUsage.DIGITAL_SIGNATURE)
ACB_KA_CELL = TrustAnchorCellIdentifier(RemotePartyRole.ACCESS_CONTROL_BROKER, KeyUsage.KEY_AGREEMENT)
WAN_PROVIDER_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.WAN_PROVIDER, KeyUsage.DIGITAL_SIGNATURE)
TRANS_COS_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.TRANSITIONAL_COS, KeyUsage.DIGITAL_SIGNATURE)

_KEY_USAGE_NAMES = {
    "ds": KeyUsage.DIGITAL_SIGNATURE,
    "ka": KeyUsage.KEY_AGREEMENT,
    "root": KeyUsage.KEY_CERT_SIGN,
}
_KEY_USAGE_TEXT = {value: name for name, value in _KEY_USAGE_NAMES.items()}


@dataclass(frozen=True)
class DeviceKey:
    """The device's own DS or KA key pair: private key (None when unknown, e.g. RTDS) and certificate DER."""

    private_key: ec.EllipticCurvePrivateKey | None
    certificate: bytes | None


@dataclass(frozen=True)
class DeviceProfile:
    device_id: bytes
    cells: Mapping[TrustAnchorCellIdentifier, bytes]  # cell -> certificate DER
    seq_numbers: Mapping[int, int] = field(default_factory=dict)  # role -> stored seq number
    device_ds: DeviceKey = DeviceKey(None, None)
    device_ka: DeviceKey = DeviceKey(None, None)
    require_acb_mac: bool = True
    allow_local_reads: bool = False
    clock: datetime | None = None  # fixed device time (UTC); None = real time
    originator_counters: Mapping[bytes, int] = field(default_factory=dict)  # KRP id -> last counter

    def __post_init__(self) -> None:
        if len(self.device_id) != 8:
            raise ProfileError(f"device_id must be 8 bytes, got {len(self.device_id)}")
        if self.clock is not None and self.clock.tzinfo is None:
            object.__setattr__(self, "clock", self.clock.replace(tzinfo=UTC))


# --- JSON -----------------------------------------------------------------------------------------


def load_profile(path: Path | str) -> DeviceProfile:
    """Read a profile JSON file (see module docstring). ProfileError naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
    return profile_from_dict(data, path.parent, str(path))


def save_profile(profile: DeviceProfile, path: Path | str) -> None:
    """Write the profile as JSON with inline PEM (private keys unencrypted: test material only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile_to_dict(profile), indent=2) + "\n"
    atomic_write(path, text.encode("utf-8"), 0o600)  # holds private keys


def profile_to_dict(profile: DeviceProfile) -> dict[str, Any]:
    cells = []
    for cell, der in profile.cells.items():
        entry: dict[str, Any] = {
            "role": int(cell.role),
            "key_usage": _KEY_USAGE_TEXT[KeyUsage(cell.key_usage)],
            "cell_usage": int(cell.cell_usage),
            "certificate_pem": _cert_pem(der),
        }
        cells.append(entry)
    return {
        "format": PROFILE_FORMAT,
        "device_id": profile.device_id.hex(),
        "cells": cells,
        "seq_numbers": {str(role): int(seq) for role, seq in sorted(profile.seq_numbers.items())},
        "originator_counters": {
            krp.hex(): int(counter) for krp, counter in sorted(profile.originator_counters.items())
        },
        "device_ds": _device_key_to_dict(profile.device_ds),
        "device_ka": _device_key_to_dict(profile.device_ka),
        "require_acb_mac": profile.require_acb_mac,
        "allow_local_reads": profile.allow_local_reads,
        "clock": None if profile.clock is None else profile.clock.astimezone(UTC).isoformat(),
    }


def profile_from_dict(data: Any, base: Path, where: str = "profile") -> DeviceProfile:
    """Build a profile from parsed JSON; relative file names resolve against `base`."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a JSON object")
    fmt = data.get("format", PROFILE_FORMAT)
    if fmt != PROFILE_FORMAT:
        raise ProfileError(f"{where}: format {fmt!r} is not {PROFILE_FORMAT!r}")
    try:
        device_id = parse_eui64(_require(data, "device_id", str, where))
    except DecodeError as exc:
        raise ProfileError(f"{where}: device_id: {exc}") from exc

    cells: dict[TrustAnchorCellIdentifier, bytes] = {}
    raw_cells = data.get("cells", [])
    if not isinstance(raw_cells, list):
        raise ProfileError(f"{where}: cells must be a list")
    for i, entry in enumerate(raw_cells):
        what = f"{where}: cells[{i}]"
        if not isinstance(entry, dict):
            raise ProfileError(f"{what}: expected an object")
        role = _require(entry, "role", int, what)
        usage_name = _require(entry, "key_usage", str, what)
        if usage_name not in _KEY_USAGE_NAMES:
            raise ProfileError(f"{what}: key_usage {usage_name!r} is not one of ds, ka, root")
        cell_usage = entry.get("cell_usage", 0)
        if not isinstance(cell_usage, int) or isinstance(cell_usage, bool):
            raise ProfileError(f"{what}: cell_usage must be an integer")
        cell = TrustAnchorCellIdentifier(role, _KEY_USAGE_NAMES[usage_name], cell_usage)
        if cell in cells:
            raise ProfileError(f"{what}: duplicate cell role {role} {usage_name} usage {cell_usage}")
        der = _load_cert(entry, "certificate", base, what)
        if der is None:
            raise ProfileError(f"{what}: needs certificate_pem or certificate_file")
        cells[cell] = der

    seq_numbers: dict[int, int] = {}
    raw_seq = data.get("seq_numbers", {})
    if not isinstance(raw_seq, dict):
        raise ProfileError(f"{where}: seq_numbers must be an object of role -> integer")
    for key, value in raw_seq.items():
        try:
            role = int(key)
        except ValueError as exc:
            raise ProfileError(f"{where}: seq_numbers key {key!r} is not a role number") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProfileError(f"{where}: seq_numbers[{key}] must be a non-negative integer")
        seq_numbers[role] = value

    counters: dict[bytes, int] = {}
    raw_counters = data.get("originator_counters") or {}
    if not isinstance(raw_counters, dict):
        raise ProfileError(f"{where}: originator_counters must be an object of id -> integer")
    for key, value in raw_counters.items():
        try:
            krp = parse_eui64(key)
        except DecodeError as exc:
            raise ProfileError(f"{where}: originator_counters: {exc}") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProfileError(f"{where}: originator_counters[{key}] must be a non-negative integer")
        counters[krp] = value

    clock: datetime | None = None
    raw_clock = data.get("clock")
    if raw_clock is not None:
        if not isinstance(raw_clock, str):
            raise ProfileError(f"{where}: clock must be an ISO date-time string or null")
        try:
            clock = datetime.fromisoformat(raw_clock.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ProfileError(f"{where}: clock {raw_clock!r} is not an ISO date-time") from exc

    return DeviceProfile(
        device_id=device_id,
        cells=cells,
        seq_numbers=seq_numbers,
        device_ds=_device_key_from_dict(data.get("device_ds"), base, f"{where}: device_ds"),
        device_ka=_device_key_from_dict(data.get("device_ka"), base, f"{where}: device_ka"),
        require_acb_mac=_bool(data, "require_acb_mac", True, where),
        allow_local_reads=_bool(data, "allow_local_reads", False, where),
        clock=clock,
        originator_counters=counters,
    )


def _require(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ProfileError(f"{where}: missing {key}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProfileError(f"{where}: {key} must be {kind.__name__}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ProfileError(f"{where}: {key} must be true or false")
    return value


def _read_text(entry: dict[str, Any], stem: str, base: Path, what: str) -> bytes | None:
    pem = entry.get(f"{stem}_pem")
    file = entry.get(f"{stem}_file")
    if pem is not None and file is not None:
        raise ProfileError(f"{what}: give {stem}_pem or {stem}_file, not both")
    if pem is not None:
        if not isinstance(pem, str):
            raise ProfileError(f"{what}: {stem}_pem must be a string")
        return pem.encode("ascii", "replace")
    if file is not None:
        if not isinstance(file, str):
            raise ProfileError(f"{what}: {stem}_file must be a string")
        path = Path(file) if Path(file).is_absolute() else base / file
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"{what}: cannot read {path}: {exc}") from exc
    return None


def _load_cert(entry: dict[str, Any], stem: str, base: Path, what: str) -> bytes | None:
    data = _read_text(entry, stem, base, what)
    if data is None:
        return None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ProfileError(f"{what}: {stem} is not an X.509 certificate: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.DER)


def _device_key_from_dict(data: Any, base: Path, what: str) -> DeviceKey:
    if data is None:
        return DeviceKey(None, None)
    if not isinstance(data, dict):
        raise ProfileError(f"{what}: expected an object")
    raw_key = _read_text(data, "private_key", base, what)
    key: ec.EllipticCurvePrivateKey | None = None
    if raw_key is not None:
        try:
            loaded = serialization.load_pem_private_key(raw_key, password=None)
        except (ValueError, TypeError) as exc:
            raise ProfileError(f"{what}: private key does not load (PEM, unencrypted): {exc}") from exc
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
            raise ProfileError(f"{what}: private key is not EC P-256")
        key = loaded
    cert = _load_cert(data, "certificate", base, what)
    if key is not None and cert is not None:
        cert_key = x509.load_der_x509_certificate(cert).public_key()
        if cert_key != key.public_key():
            raise ProfileError(f"{what}: private key does not match the certificate")
    return DeviceKey(key, cert)


def _device_key_to_dict(key: DeviceKey) -> dict[str, Any] | None:
    if key.private_key is None and key.certificate is None:
        return None
    out: dict[str, Any] = {}
    if key.private_key is not None:
        out["private_key_pem"] = private_key_pem(key.private_key).decode("ascii")
    if key.certificate is not None:
        out["certificate_pem"] = _cert_pem(key.certificate)
    return out


def _cert_pem(der: bytes) -> str:
    return certificate_pem(x509.load_der_x509_certificate(der)).decode("ascii")
