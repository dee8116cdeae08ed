"""Policy checks before anything is signed (ARCHITECTURE §4 step 3, §5 rule 2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gbcs.cells import KeyUsage, RemotePartyRole
from gbcs.cs02a import ProvideSecurityCredentialsResponse
from gbcs.errors import GbcsError
from gbcs.framing import Cra, MessageCode, decode_message
from gbcs.signature import verify_message_signature
from gbcs.smki import SmkiCertificate, load_certificate, verify_certification_path
from server.domain.errors import (
    BenchNotEnrolled,
    DeviceCertificateUntrusted,
    DeviceNotVanilla,
    InvalidRequest,
)
from server.domain.values import Area, Bench, BenchStatus, CellState, GenerationStatus, VanillaGeneration


@dataclass(frozen=True)
class TrustAnchors:
    """The SMKI certificates the service trusts, loaded once at start-up (DER)."""

    root_ca: bytes
    issuing_ca: bytes
    device_ca: bytes


@dataclass(frozen=True)
class TrustBundle:
    """What a bench pins: the vanilla generations, the registered area sets and the SMKI anchors."""

    generations: tuple[VanillaGeneration, ...]
    areas: tuple[Area, ...]
    anchors: TrustAnchors


def require_enrolled(bench_id: str, bench: Bench | None) -> None:
    if bench is None or bench.status is not BenchStatus.ENROLLED:
        raise BenchNotEnrolled(f"bench {bench_id!r} is not enrolled or has been revoked")


def within_validity(cert: SmkiCertificate, at: datetime) -> bool:
    c = cert.certificate
    return c.not_valid_before_utc <= at <= c.not_valid_after_utc


def check_device_certificate(
    device_id: bytes, certificate_der: bytes, device_ca: SmkiCertificate, at: datetime
) -> SmkiCertificate:
    """The device DS certificate names this device and chains to the configured device CA."""
    try:
        cert = load_certificate(certificate_der)
    except GbcsError as exc:
        raise InvalidRequest(f"device_certificate is not a usable certificate: {exc}") from exc
    if not cert.is_device or cert.entity_id != device_id:
        raise DeviceCertificateUntrusted(
            f"device_certificate is not the certificate of device {device_id.hex()}"
        )
    if cert.key_usage is not KeyUsage.DIGITAL_SIGNATURE:
        raise DeviceCertificateUntrusted("device_certificate is not a digital-signing certificate")
    try:
        verify_certification_path(cert, (), device_ca, at)
    except GbcsError as exc:
        raise DeviceCertificateUntrusted(
            f"device_certificate of {device_id.hex()} does not chain to the configured device CA"
        ) from exc
    return cert


def read_network_operator_signing_cell(
    device_id: bytes, credentials_response: bytes, device_certificate: SmkiCertificate
) -> CellState:
    """Authenticate the meter's CS02a response and return what its NO DS cell holds."""
    try:
        message = decode_message(credentials_response)
        header = message.apdu.header
        if (
            header.cra is not Cra.RESPONSE
            or header.message_code != MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS
        ):
            raise InvalidRequest("credentials_response is not a CS02a response")
        if header.business_originator_id != device_id:
            raise InvalidRequest("credentials_response was not sent by the device named in device_id")
        verify_message_signature(message, device_certificate.certificate)
        payload = ProvideSecurityCredentialsResponse.decode_roles_of(
            message.apdu.content, RemotePartyRole.NETWORK_OPERATOR
        )
    except GbcsError as exc:
        raise InvalidRequest(f"credentials_response is not a valid signed CS02a response: {exc}") from exc
    for role in payload.roles:  # the network operator's entries only (decode_roles_of)
        for cell in role.cells or ():
            if cell.key_usage == KeyUsage.DIGITAL_SIGNATURE:
                return CellState(cell.subject_unique_id, cell.subject_key_identifier)
    raise DeviceNotVanilla(f"device {device_id.hex()} reported no network-operator signing cell")


def find_custodial_generation(
    device_id: bytes,
    no_ds: CellState,
    generations: list[VanillaGeneration],
    certificate: Callable[[bytes], SmkiCertificate],
) -> VanillaGeneration:
    """The active vanilla generation whose DS certificate sits in the device's NO DS cell."""
    for generation in generations:
        if generation.status is not GenerationStatus.ACTIVE or generation.entity_id != no_ds.entity_id:
            continue
        if certificate(generation.ds_certificate).subject_key_identifier == no_ds.subject_key_identifier:
            return generation
    raise DeviceNotVanilla(
        f"device {device_id.hex()} does not hold an active vanilla generation in its NO cell "
        f"(it holds entity {no_ds.entity_id.hex()})"
    )
