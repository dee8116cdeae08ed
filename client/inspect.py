"""`vdno-bench inspect`: decode any CS02a/b/d/e message, name every field, verify signature and MAC.

Signatures are verified with the Business Originator ID's DS certificate from a keystore folder
(`<eui>-ds.pem`; commands: the originator KRP, responses/alerts: the device). The ACB-SMD MAC is checked
when an ACB entity id is given (ECDH between `<acb>-ka.key` and `<device>-ka.pem`, or `<device>-ka.key`
and `<acb>-ka.pem`). Certificate validity periods are NOT checked (the RTDS certificates are expired).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from vdno import exit_codes
from vdno.client.describe import message_document
from vdno.client.errors import BenchError
from vdno.gbcs.errors import GbcsError, MacError, SignatureError
from vdno.gbcs.framing import Cra
from vdno.gbcs.ids import eui64_hex
from vdno.gbcs.mac import verify_mac
from vdno.gbcs.message import DecodedMessage, decode_any
from vdno.gbcs.signature import verify_message_signature

# The shared exit-code table (vdno/exit_codes.py), as inspect uses it.
EXIT_OK = exit_codes.OK
EXIT_BAD_SIGNATURE = exit_codes.REFUSED  # signature or MAC does not verify
EXIT_DECODE = exit_codes.USAGE  # input unreadable or not a well-formed CS02a/b/d/e message
EXIT_MISSING_KEY = (
    exit_codes.UNVERIFIED
)  # a certificate or private key needed for a check is not in the keystore
EXIT_UNVERIFIED = (
    exit_codes.UNVERIFIED
)  # MAC-only message (signature length 00) without --acb: nothing verified

EXIT_CODES_HELP = (
    "Exit codes: 0 decoded and every signature (and the MAC, with --acb) verified, or an unsigned "
    "pre-command decoded; 1 a signature or MAC does not verify; 2 input unreadable or not a well-formed "
    "CS02a/b/d/e message; 4 nothing verified: a certificate or key needed for a check is missing from "
    "the keystore, or a MAC-only message (signature length 00) was given without --acb. "
    "Certificate validity periods are not checked (RTDS certificates are expired): inspect verifies "
    "signatures, not certificate validity."
)

_HEX_CHARS = frozenset(string.hexdigits)


class InputError(BenchError):
    """FILE_OR_HEX is neither a readable file nor a hex string."""


def load_input(file_or_hex: str) -> bytes:
    """A path to a .HEX text file or a binary file, or a hex string -> message bytes."""
    path = Path(file_or_hex)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {file_or_hex}: {exc.strerror or exc}") from exc
        text = _as_hex_text(raw)
        if text is not None:
            return bytes.fromhex(text)
        if not raw:
            raise InputError(f"{file_or_hex} is empty")
        return raw
    candidate = "".join(file_or_hex.split()).replace(":", "")
    if candidate[:2].lower() == "0x":
        candidate = candidate[2:]
    if candidate and len(candidate) % 2 == 0 and all(c in _HEX_CHARS for c in candidate):
        return bytes.fromhex(candidate)
    raise InputError(f"{file_or_hex!r} is neither a readable file nor an even-length hex string")


def _as_hex_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    compact = "".join(text.split())
    if compact and len(compact) % 2 == 0 and all(c in _HEX_CHARS for c in compact):
        return compact
    return None


class Keystore:
    """A folder of `<eui>-ds.pem`, `<eui>-ka.pem` certificates and `<eui>-...key` PKCS#8 private keys."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ds_certificates(self, eui: bytes) -> list[Path]:
        """`<eui>-ds.pem`, then any `<eui>-ds-*.pem` (e.g. keystore-after-replacement naming)."""
        stem = eui64_hex(eui)
        exact = self.folder / f"{stem}-ds.pem"
        found = [exact] if exact.is_file() else []
        found.extend(sorted(self.folder.glob(f"{stem}-ds-*.pem")))
        return found

    def ka_certificate(self, eui: bytes) -> Path | None:
        path = self.folder / f"{eui64_hex(eui)}-ka.pem"
        return path if path.is_file() else None

    def ka_private_key(self, eui: bytes) -> Path | None:
        path = self.folder / f"{eui64_hex(eui)}-ka.key"
        return path if path.is_file() else None


@dataclass
class Check:
    status: str  # valid | invalid | missing-key | absent | not-checked | not-applicable | unsigned
    detail: str = ""
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "detail": self.detail, "key": self.key}


@dataclass
class InspectReport:
    exit_code: int
    reason: str  # one line; "" when exit 0 and nothing to say
    document: dict[str, Any] = field(default_factory=dict)
    decoded: DecodedMessage | None = None


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path.name} is not an EC private key")
    return key


def check_signature(decoded: DecodedMessage, keystore: Keystore) -> Check:
    message = decoded.message
    signature = message.apdu.signature
    if signature is None:
        return Check("unsigned", "unsigned pre-command (no signature-length byte)")
    if len(signature) == 0:
        return Check("absent", "signature length 00: no KRP signature, authenticated only by the ACB-SMD MAC")
    signer = message.apdu.header.business_originator_id
    ds_candidates = keystore.ds_certificates(signer)
    if not ds_candidates:
        return Check(
            "missing-key",
            f"no DS certificate {eui64_hex(signer)}-ds.pem for the Business Originator ID "
            f"in {keystore.folder}",
        )
    problems = []
    for path in ds_candidates:
        try:
            cert = _load_cert(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        try:
            verify_message_signature(message, cert)
        except SignatureError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        return Check("valid", f"verified with {path.name}", path.name)
    if all("unreadable" in p for p in problems):
        return Check("missing-key", "; ".join(problems))
    return Check("invalid", "; ".join(problems), ds_candidates[0].name)


def check_mac(decoded: DecodedMessage, keystore: Keystore, acb: bytes | None) -> Check:
    message = decoded.message
    if message.mac is None:
        return Check("not-applicable", "no MAC header (GS-only message)")
    if acb is None:
        return Check("not-checked", "MAC header present; give --acb EUI to verify the ACB-SMD MAC")
    header = message.apdu.header
    device = header.business_target_id if header.cra == Cra.COMMAND else header.business_originator_id
    acb_key, device_cert = keystore.ka_private_key(acb), keystore.ka_certificate(device)
    device_key, acb_cert = keystore.ka_private_key(device), keystore.ka_certificate(acb)
    if acb_key is not None and device_cert is not None:
        key_path, peer_path = acb_key, device_cert
    elif device_key is not None and acb_cert is not None:
        key_path, peer_path = device_key, acb_cert
    else:
        return Check(
            "missing-key",
            f"need {eui64_hex(acb)}-ka.key with {eui64_hex(device)}-ka.pem "
            f"(or {eui64_hex(device)}-ka.key with {eui64_hex(acb)}-ka.pem) in {keystore.folder}",
        )
    try:
        private_key = _load_key(key_path)
        peer = _load_cert(peer_path)
    except (OSError, ValueError) as exc:
        return Check("missing-key", f"unreadable key material: {exc}")
    used = f"ECDH({key_path.name}, {peer_path.name})"
    try:
        verify_mac(message, private_key, peer)
    except MacError as exc:
        return Check("invalid", f"{exc} with {used}", used)
    return Check("valid", f"verified with {used}", used)


def inspect_bytes(data: bytes, keystore_dir: Path, acb: bytes | None = None) -> InspectReport:
    """Decode, describe and verify one message. Never raises for bad input: see exit_code/reason."""
    try:
        decoded = decode_any(data)
        document = message_document(decoded)
    except (GbcsError, ValueError) as exc:
        reason = f"decode error: {exc}"
        document = {"decoded": False, "error": reason, "exitCode": EXIT_DECODE}
        return InspectReport(EXIT_DECODE, reason, document)
    keystore = Keystore(keystore_dir)
    signature = check_signature(decoded, keystore)
    mac = check_mac(decoded, keystore, acb)
    checks = {"signature": signature, "mac": mac}
    exit_code, reason = EXIT_OK, ""
    invalid = [f"{name}: {c.detail}" for name, c in checks.items() if c.status == "invalid"]
    missing = [f"{name}: {c.detail}" for name, c in checks.items() if c.status == "missing-key"]
    if invalid:
        exit_code, reason = EXIT_BAD_SIGNATURE, "; ".join(invalid)
    elif missing:
        exit_code, reason = EXIT_MISSING_KEY, "missing key: " + "; ".join(missing)
    elif signature.status == "absent" and mac.status != "valid":
        exit_code, reason = EXIT_UNVERIFIED, f"not verified: {signature.detail}; {mac.detail}"
    elif signature.status == "unsigned":
        reason = "unsigned pre-command (nothing to verify)"
    document["decoded"] = True
    document["verification"] = {
        "signature": signature.as_dict(),
        "mac": mac.as_dict(),
        "certificateValidity": "not checked (inspect verifies signatures, not certificate validity)",
        "result": "ok" if exit_code == EXIT_OK else reason,
        "exitCode": exit_code,
    }
    return InspectReport(exit_code, reason, document, decoded)


# --- human rendering -------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "[dim]absent[/dim]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _is_enum(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"value", "name"}


def _add(tree: Tree, key: str, value: Any) -> None:
    if key == "der":
        return
    if _is_enum(value):
        tree.add(f"[bold]{key}[/bold]: {value['value']} ({value['name']})")
    elif isinstance(value, dict):
        branch = tree.add(f"[bold]{key}[/bold]")
        for k, v in value.items():
            _add(branch, k, v)
    elif isinstance(value, list):
        if not value:
            tree.add(f"[bold]{key}[/bold]: (empty)")
            return
        branch = tree.add(f"[bold]{key}[/bold] ({len(value)})")
        for i, item in enumerate(value):
            _add(branch, f"[{i}]", item)
    else:
        tree.add(f"[bold]{key}[/bold]: {_scalar(value)}")


def render(report: InspectReport, console: Console, source: str = "") -> None:
    doc = report.document
    if not doc.get("decoded"):
        return
    root = Tree(f"[bold]{doc['payloadType']}[/bold] {doc['kind']} {source}".rstrip())
    for section in ("frame", "groupingHeader", "payload"):
        _add(root, section, doc[section])
    console.print(root)
    table = Table(title="Verification")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    verification = doc["verification"]
    styles = {"valid": "green", "invalid": "red", "missing-key": "yellow"}
    for name in ("signature", "mac"):
        check = verification[name]
        style = styles.get(check["status"], "")
        status = f"[{style}]{check['status']}[/{style}]" if style else check["status"]
        table.add_row(name, status, check["detail"])
    table.add_row("certificate validity", "not checked", "inspect verifies signatures, not validity periods")
    console.print(table)
