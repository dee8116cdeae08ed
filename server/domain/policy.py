"""Policy checks before anything is signed (docs/architecture.md §4 step 3, §5.2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from vdno.gbcs.cells import KeyUsage, RemotePartyRole
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import Cra, MessageCode, decode_message
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate, verify_certification_path
from vdno.server.domain.errors import (
    BenchNotEnrolled,
    CustodyConflict,
    DeviceAlreadyVanilla,
    DeviceCertificateUntrusted,
    DeviceNotVanilla,
    InvalidRequest,
    NoActiveGeneration,
    OfficerNotEnrolled,
    OperationNotAllowed,
    UnknownNetworkOperator,
)
from vdno.server.domain.values import (
    Area,
    Bench,
    BenchOperation,
    BenchStatus,
    CellState,
    GenerationStatus,
    Officer,
    OfficerStatus,
    VanillaGeneration,
)


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


def require_enrolled(
    bench_id: str,
    bench: Bench | None,
    operation: BenchOperation | None = None,
    certificate_sha256: str | None = None,
) -> None:
    """BenchNotEnrolled unless the bench is enrolled (and, when its enrolment pinned a certificate, presents
    that one); OperationNotAllowed unless it is enrolled for `operation`."""
    if bench is None or bench.status is not BenchStatus.ENROLLED:
        raise BenchNotEnrolled(f"bench {bench_id!r} is not enrolled or has been revoked")
    if (
        bench.certificate_sha256 is not None
        and certificate_sha256 is not None
        and bench.certificate_sha256 != certificate_sha256
    ):
        raise BenchNotEnrolled(
            f"bench {bench_id!r} presented a certificate other than the one it was enrolled with"
        )
    if operation is not None and operation not in bench.operations:
        raise OperationNotAllowed(f"bench {bench_id!r} is not enrolled for {operation.value}")


def require_enrolled_officer(officer_id: str, officer: Officer | None) -> None:
    if officer is None or officer.status is not OfficerStatus.ENROLLED:
        raise OfficerNotEnrolled(f"officer {officer_id!r} is not enrolled or has been revoked")


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


@dataclass(frozen=True)
class NetworkOperatorCells:
    """What a meter's signed CS02a response says of its network-operator role."""

    signing: CellState
    key_agreement: CellState | None
    seq_number: int | None  # stored NO seq number: a command's authorising seq number must exceed it


def _network_operator_role(
    device_id: bytes, credentials_response: bytes, device_certificate: SmkiCertificate
) -> ProvideSecurityCredentialsResponse:
    """The meter's CS02a response, authenticated, decoded for the network operator's entries only."""
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
        return ProvideSecurityCredentialsResponse.decode_roles_of(
            message.apdu.content, RemotePartyRole.NETWORK_OPERATOR
        )
    except GbcsError as exc:
        raise InvalidRequest(f"credentials_response is not a valid signed CS02a response: {exc}") from exc


def read_network_operator_signing_cell(
    device_id: bytes, credentials_response: bytes, device_certificate: SmkiCertificate
) -> CellState:
    """Authenticate the meter's CS02a response and return what its NO DS cell holds."""
    payload = _network_operator_role(device_id, credentials_response, device_certificate)
    for role in payload.roles:  # the network operator's entries only (decode_roles_of)
        for cell in role.cells or ():
            if cell.key_usage == KeyUsage.DIGITAL_SIGNATURE:
                return CellState(cell.subject_unique_id, cell.subject_key_identifier)
    raise DeviceNotVanilla(f"device {device_id.hex()} reported no network-operator signing cell")


def read_network_operator_cells(
    device_id: bytes, credentials_response: bytes, device_certificate: SmkiCertificate
) -> NetworkOperatorCells:
    """Authenticate the meter's CS02a response and return its NO cells and stored NO seq number."""
    payload = _network_operator_role(device_id, credentials_response, device_certificate)
    signing: CellState | None = None
    key_agreement: CellState | None = None
    seq_number: int | None = None
    for role in payload.roles:  # the network operator's entries only (decode_roles_of)
        seq_number = role.current_seq_number if seq_number is None else seq_number
        for cell in role.cells or ():
            state = CellState(cell.subject_unique_id, cell.subject_key_identifier)
            if cell.key_usage == KeyUsage.DIGITAL_SIGNATURE and signing is None:
                signing = state
            elif cell.key_usage == KeyUsage.KEY_AGREEMENT and key_agreement is None:
                key_agreement = state
    if signing is None:
        raise UnknownNetworkOperator(f"device {device_id.hex()} reported no network-operator signing cell")
    return NetworkOperatorCells(signing, key_agreement, seq_number)


def holder_of_network_operator_cell(
    device_id: bytes,
    no_ds: CellState,
    areas: list[Area],
    generations: list[VanillaGeneration],
    certificate: Callable[[bytes], SmkiCertificate],
) -> Area:
    """The registered area whose DS certificate sits in the device's NO DS cell. A vanilla generation there,
    or any other entity, is refused by name."""
    for generation in generations:
        if generation.entity_id == no_ds.entity_id:
            raise DeviceAlreadyVanilla(
                f"device {device_id.hex()} already holds vanilla generation {generation.generation} "
                f"({generation.status.value}) in its NO cells"
            )
    for area in areas:
        if area.entity_id != no_ds.entity_id:
            continue
        if certificate(area.ds_certificate).subject_key_identifier != no_ds.subject_key_identifier:
            raise UnknownNetworkOperator(
                f"device {device_id.hex()} holds a certificate of area {area.area_id} ({area.name}, entity "
                f"{area.entity_id.hex()}) with key id {no_ds.subject_key_identifier.hex()}, which is not the "
                "registered one"
            )
        return area
    raise UnknownNetworkOperator(
        f"device {device_id.hex()} holds entity {no_ds.entity_id.hex()} in its NO cells, which is neither a "
        "registered area DNO nor a vanilla generation"
    )


def hand_in_target(generations: list[VanillaGeneration]) -> VanillaGeneration:
    """The vanilla generation new hand-ins move meters onto: the active one (the newest, if several)."""
    active = [g for g in generations if g.status is GenerationStatus.ACTIVE and not g.compromised]
    if not active:
        raise NoActiveGeneration("no vanilla generation is active: a hand-in has nothing to move onto")
    return max(active, key=lambda g: g.generation)


def find_custodial_generation(
    device_id: bytes,
    no_ds: CellState,
    generations: list[VanillaGeneration],
    certificate: Callable[[bytes], SmkiCertificate],
    areas: Callable[[], Sequence[Area]] = tuple,
) -> VanillaGeneration:
    """The vanilla generation that may sign (active or signing-only, not compromised) whose DS certificate
    sits in the device's NO DS cell. Refused naming what the cell holds as people name it: an area by its
    number and name, a vanilla generation by its number (`areas` is read only then)."""
    for generation in generations:
        if not generation.signs or generation.entity_id != no_ds.entity_id:
            continue
        if certificate(generation.ds_certificate).subject_key_identifier == no_ds.subject_key_identifier:
            return generation
    raise DeviceNotVanilla(
        f"device {device_id.hex()} is not in vanilla custody: {_holder(no_ds, generations, areas())}"
    )


def _holder(no_ds: CellState, generations: list[VanillaGeneration], areas: Sequence[Area]) -> str:
    """What a meter's NO DS cell holds, named as people name it."""
    for area in areas:
        if area.entity_id == no_ds.entity_id:
            return f"already handed out to area {area.area_id} ({area.name})"
    for generation in generations:
        if generation.entity_id == no_ds.entity_id:
            state = "compromised" if generation.compromised else generation.status.value
            return f"it holds vanilla generation {generation.generation}, which is {state}"
    return f"its NO cells hold entity {no_ds.entity_id.hex().upper()}, which this custodian does not know"


def rotation_target(
    device_id: bytes, holding: VanillaGeneration, generations: list[VanillaGeneration]
) -> VanillaGeneration:
    """The active generation a meter holding `holding` rotates onto; refused when there is none or the meter
    already holds it."""
    target = hand_in_target(generations)
    if target.generation == holding.generation:
        raise CustodyConflict(
            f"device {device_id.hex()} already holds the active vanilla generation {target.generation}"
        )
    return target
