"""One hand-out, end to end (docs/architecture.md §4): read the meter, ask the custodian, check, apply,
report."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from vdno.client import error_codes as codes
from vdno.client.bundle import TrustBundle
from vdno.client.checks import CheckedCommand, check_command, check_response, check_rotation_command
from vdno.client.dcc_gateway import DccGateway
from vdno.client.errors import (
    BenchError,
    CommandRefused,
    ReadError,
    ResponseRejected,
    ServiceError,
    TransportError,
)
from vdno.client.messages import IssuedCommand, MeterStatus, OutcomeAck
from vdno.client.transport import DeviceTransport
from vdno.gbcs.cells import NO_DS_CELL, KeyUsage, RemotePartyRole
from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand, ProvideSecurityCredentialsResponse
from vdno.gbcs.cs02e import DeviceCertificateResponse, ProvideDeviceCertificateCommand
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import (
    Cra,
    GbcsMessage,
    GeneralSigningApdu,
    GroupingHeader,
    MessageCode,
    decode_message,
)
from vdno.gbcs.ids import eui64_hex
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate, verify_certification_path

LAB_READER_ID = bytes(8)  # the lab reader's originator id (0000000000000000) for unsigned local reads

APPLIED, REFUSED, FAILED = MeterStatus.APPLIED, MeterStatus.REFUSED, MeterStatus.FAILED
# The reason given with APPLIED when the meter already held what the command installs (not sent again).
ALREADY_APPLIED = (
    "already applied: the meter held the command's certificates; reported its signed CS02a answer"
)


class CustodianApi(Protocol):
    def request_hand_out(
        self,
        request_id: str,
        device_id: str,
        area_id: int,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> IssuedCommand: ...

    def report_outcome(
        self, request_id: str, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck: ...


class RotationApi(Protocol):
    def request_rotation(
        self, request_id: str, device_id: str, device_certificate: bytes, credentials_response: bytes
    ) -> IssuedCommand: ...

    def report_outcome(
        self, request_id: str, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck: ...


@dataclass(frozen=True)
class HandOutResult:
    device_id: str  # 16 hex digits
    area_id: int | None  # the hand-out's area; None for a rotation
    request_id: str
    counter: int | None
    status: MeterStatus  # applied | refused | failed
    reason: str
    command: bytes | None = None  # as the custodian released it (KRP-signed GS APDU)
    generation: int | None = None
    applied_command: bytes | None = None  # as the meter received it (MAC-framed when DCC added the MAC)
    target_generation: int | None = None  # a rotation's target generation
    error_code: str | None = None  # client/error_codes.py; None when applied

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "area": self.area_id,
            "requestId": self.request_id,
            "counter": self.counter,
            "generation": self.generation,
            "status": self.status,
            "error_code": self.error_code,
            "reason": self.reason,
            "command": None if self.command is None else self.command.hex(),
            "appliedCommand": None if self.applied_command is None else self.applied_command.hex(),
            "targetGeneration": self.target_generation,
        }


@dataclass(frozen=True)
class MeterReading:
    """What read_meter established. `device` is the device DS certificate from CS02e: it verified both
    responses' signatures and, when the bundle has a device CA, chains to it."""

    device: SmkiCertificate
    credentials_response: bytes  # the signed CS02a response as received
    credentials: ProvideSecurityCredentialsResponse

    @property
    def device_certificate(self) -> bytes:
        """DER of the device DS certificate, as the hand-out request carries it."""
        return self.device.der


_counter_lock = threading.Lock()
_last_counter = 0


def next_reader_counter() -> int:
    """Strictly increasing originator counter for the bench's local reads (microseconds since the epoch)."""
    global _last_counter
    with _counter_lock:
        _last_counter = max(_last_counter + 1, time.time_ns() // 1000)
        return _last_counter


def build_read_command(device_id: bytes, message_code: int, content: bytes, reader_id: bytes) -> bytes:
    """GS-only APDU, CRA 1, originator = reader, target = device, signature length 00."""
    header = GroupingHeader(
        cra=Cra.COMMAND,
        originator_counter=next_reader_counter(),
        business_originator_id=reader_id,
        business_target_id=device_id,
        message_code=message_code,
    )
    return GeneralSigningApdu(header, content, signature=b"").encode()


def _check_read_response(response: bytes, command: bytes, device_id: bytes, what: str) -> GbcsMessage:
    try:
        message = decode_message(response)
        sent = decode_message(command).apdu.header
    except GbcsError as exc:
        raise ReadError(f"{what} response: {exc}") from exc
    header = message.apdu.header
    if header.cra != Cra.RESPONSE or header.message_code != sent.message_code:
        raise ReadError(
            f"{what} response: CRA {int(header.cra)} / message code 0x{header.message_code:04X} "
            f"is not a response to 0x{sent.message_code:04X}"
        )
    if header.business_originator_id != device_id or header.business_target_id != sent.business_originator_id:
        raise ReadError(
            f"{what} response: addressed {eui64_hex(header.business_originator_id)} -> "
            f"{eui64_hex(header.business_target_id)}, expected the device {eui64_hex(device_id)} -> "
            f"{eui64_hex(sent.business_originator_id)}"
        )
    if header.originator_counter != sent.originator_counter:
        raise ReadError(
            f"{what} response: counter {header.originator_counter} does not echo {sent.originator_counter}"
        )
    return message


def _verify_device_signature(message: GbcsMessage, device: SmkiCertificate, what: str) -> None:
    try:
        verify_message_signature(message, device.certificate)
    except GbcsError as exc:
        raise ReadError(f"{what} response: device signature: {exc}") from exc


def read_meter(
    transport: DeviceTransport,
    device_id: bytes,
    bundle: TrustBundle | None = None,
    reader_id: bytes = LAB_READER_ID,
) -> MeterReading:
    """CS02e (device DS certificate) then CS02a (NO role credentials). Both responses must carry a device
    signature that verifies with the device certificate; the certificate must be the device's DS
    certificate and, when the bundle has a device CA, chain to it. ReadError / TransportError otherwise."""
    cs02e = build_read_command(
        device_id,
        MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE,
        ProvideDeviceCertificateCommand(KeyUsage.DIGITAL_SIGNATURE).encode(),
        reader_id,
    )
    e_message = _check_read_response(transport.send(device_id, cs02e), cs02e, device_id, "CS02e")
    try:
        e_payload = DeviceCertificateResponse.decode(e_message.apdu.content)
    except GbcsError as exc:
        raise ReadError(f"CS02e response: {exc}") from exc
    if e_payload.certificate is None:
        raise ReadError(f"CS02e response: device returned response code {e_payload.response_code}")
    try:
        device = load_certificate(e_payload.certificate)
    except GbcsError as exc:
        raise ReadError(f"CS02e device certificate: {exc}") from exc
    if not device.is_device or device.entity_id != device_id:
        raise ReadError(f"CS02e certificate is not a device certificate for {eui64_hex(device_id)}")
    if device.key_usage != KeyUsage.DIGITAL_SIGNATURE:
        raise ReadError("CS02e certificate is not the device's digital-signing certificate")
    if bundle is not None and bundle.device_ca_certificate:
        try:
            device_ca = load_certificate(bundle.device_ca_certificate)
            verify_certification_path(device, (), device_ca, datetime.now(UTC))
        except GbcsError as exc:
            raise ReadError(f"device certificate does not chain to the bundle's device CA: {exc}") from exc
    _verify_device_signature(e_message, device, "CS02e")

    cs02a = build_read_command(
        device_id,
        MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS,
        ProvideSecurityCredentialsCommand(NO_DS_CELL, (int(RemotePartyRole.NETWORK_OPERATOR),)).encode(),
        reader_id,
    )
    a_response = transport.send(device_id, cs02a)
    a_message = _check_read_response(a_response, cs02a, device_id, "CS02a")
    _verify_device_signature(a_message, device, "CS02a")
    try:
        credentials = ProvideSecurityCredentialsResponse.decode(a_message.apdu.content)
    except GbcsError as exc:
        raise ReadError(f"CS02a response: {exc}") from exc
    return MeterReading(device, a_response, credentials)


def network_operator_cells(reading: MeterReading) -> tuple[dict[int, tuple[bytes, bytes]], int | None]:
    """The NO cells as read, {key usage bit: (entity id, key identifier)}, and the NO role's stored seq
    number."""
    for role in reading.credentials.roles:
        if role.role == RemotePartyRole.NETWORK_OPERATOR:
            cells = {
                int(c.key_usage): (c.subject_unique_id, c.subject_key_identifier) for c in role.cells or ()
            }
            return cells, role.current_seq_number
    return {}, None


def holds_installed(
    reading: MeterReading, installs: dict[KeyUsage, bytes], floor_seq_number: int | None
) -> bool:
    """Whether the meter, as read, already holds what a command installs: each NO cell it replaces holds
    exactly its certificate (entity id and key identifier), and the NO seq number is the command's
    newRemotePartyFloorSeqNumber, as applying it leaves it (GBCS 13.3.5). The custodian checks the same
    (server/domain/outcomes.py, the evidence rule) before it takes the CS02a answer as the outcome."""
    cells, seq_number = network_operator_cells(reading)
    if not installs or seq_number != (floor_seq_number or 0):
        return False
    for usage, certificate in installs.items():
        try:
            cert = load_certificate(certificate)
        except GbcsError:
            return False
        if cells.get(int(usage)) != (cert.entity_id, cert.subject_key_identifier):
            return False
    return True


def save_command(folder: Path, device_id: bytes, counter: int, command: bytes) -> Path:
    """`<device>-<counter>.hex`, lower-case hex text."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{eui64_hex(device_id)}-{counter}.hex"
    path.write_text(command.hex() + "\n")
    return path


def hand_out(
    api: CustodianApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    device_id: bytes,
    area_id: int,
    request_id: str | None = None,
    reader_id: bytes = LAB_READER_ID,
    save_dir: Path | None = None,
    gateway: DccGateway | None = None,
) -> HandOutResult:
    """Read the meter, request a signed command, check it, have `gateway` (DCC) add the ACB-SMD MAC, apply
    it, check and report the response. Without a gateway the signed command is applied as it is (a lab meter
    that does not require the MAC). Never raises for meter, service or check failures: they come back as
    status refused / failed. `save_dir` gets the command exactly as the meter received it."""
    try:
        area = bundle.area(area_id)
    except BenchError as exc:
        return HandOutResult(
            eui64_hex(device_id),
            area_id,
            request_id or "",
            counter=None,
            status=FAILED,
            reason=str(exc),
            error_code=codes.AREA_NOT_IN_BUNDLE,
        )

    def request(rid: str, reading: MeterReading) -> IssuedCommand:
        return api.request_hand_out(
            rid, eui64_hex(device_id), area_id, reading.device_certificate, reading.credentials_response
        )

    already = {KeyUsage.DIGITAL_SIGNATURE: area.ds_certificate, KeyUsage.KEY_AGREEMENT: area.ka_certificate}
    return _transfer(
        api, transport, bundle, device_id, area_id, request,
        lambda command: check_command(command, device_id, area_id, bundle),
        request_id, reader_id, save_dir, gateway,
        already=(already, f"already applied: the meter is in area {area_id} ({area.name})"),
    )  # fmt: skip


def rotate(
    api: RotationApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    device_id: bytes,
    request_id: str | None = None,
    reader_id: bytes = LAB_READER_ID,
    save_dir: Path | None = None,
    gateway: DccGateway | None = None,
) -> HandOutResult:
    """As hand_out, for a meter in stock: the command moves its NO cells from its vanilla generation onto the
    active one (area None in the result)."""

    def request(rid: str, reading: MeterReading) -> IssuedCommand:
        return api.request_rotation(
            rid, eui64_hex(device_id), reading.device_certificate, reading.credentials_response
        )

    active = bundle.active_generation()
    already = None
    if active is not None:
        installs = {
            KeyUsage.DIGITAL_SIGNATURE: active.ds_certificate,
            KeyUsage.KEY_AGREEMENT: active.ka_certificate,
        }
        already = (installs, f"already applied: the meter is on vanilla generation {active.generation}")
    return _transfer(
        api, transport, bundle, device_id, None, request,
        lambda command: check_rotation_command(command, device_id, bundle),
        request_id, reader_id, save_dir, gateway, already=already,
    )  # fmt: skip


def _transfer(
    api: CustodianApi | RotationApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    device_id: bytes,
    area_id: int | None,
    request: Callable[[str, MeterReading], IssuedCommand],
    check: Callable[[bytes], CheckedCommand],
    request_id: str | None,
    reader_id: bytes,
    save_dir: Path | None,
    gateway: DccGateway | None,
    already: tuple[dict[KeyUsage, bytes], str] | None = None,
) -> HandOutResult:
    """`already`: what the meter holds once the transfer is done, and the reason reported when the reading
    shows it already there (a rerun after success: applied, nothing requested)."""
    request_id = request_id or uuid.uuid4().hex
    device_hex = eui64_hex(device_id)

    def result(status: MeterStatus, reason: str, **kw: Any) -> HandOutResult:
        return HandOutResult(device_hex, area_id, request_id, status=status, reason=reason, **kw)

    try:
        reading = read_meter(transport, device_id, bundle, reader_id)
    except (ReadError, TransportError) as exc:
        return result(FAILED, f"read meter: {exc}", counter=None, error_code=codes.METER_UNREADABLE)

    try:
        issued = request(request_id, reading)
    except ServiceError as exc:
        # Refused because the meter has moved on (hand-out: it is in an area; rotation: already on the active
        # generation): when it holds exactly what this transfer installs, this is a rerun after success.
        moved_on = exc.error_code in ("DEVICE_NOT_VANILLA", "CUSTODY_CONFLICT")
        if moved_on and already is not None and holds_cells(reading, already[0]):
            return result(APPLIED, already[1], counter=None)
        return result(FAILED, f"custodian: {exc}", counter=None, error_code=exc.error_code)
    command = issued.command
    counter = issued.originator_counter
    generation = issued.generation
    target_generation = issued.target_generation

    try:
        checked = check(command)
    except CommandRefused as exc:
        if save_dir is not None and counter is not None:
            save_command(save_dir, device_id, counter, command)
        return result(
            REFUSED,
            str(exc),
            counter=counter,
            command=command,
            generation=generation,
            error_code=codes.COMMAND_REFUSED,
        )
    counter = checked.counter
    generation = checked.generation.generation

    to_meter: bytes | None = None

    def done(status: MeterStatus, reason: str, error_code: str | None = None) -> HandOutResult:
        return result(
            status,
            reason,
            counter=counter,
            command=command,
            generation=generation,
            applied_command=to_meter,
            target_generation=target_generation,
            error_code=error_code,
        )

    installs = {
        (KeyUsage.DIGITAL_SIGNATURE if r.target == NO_DS_CELL else KeyUsage.KEY_AGREEMENT): r.certificate
        for r in checked.payload.replacements
    }
    if holds_installed(reading, installs, checked.payload.control.floor_seq_number):
        # Applied before (a run that crashed between applying and reporting): not sent again; the meter's
        # signed CS02a answer, read after the command was issued, is the outcome.
        try:
            ack = api.report_outcome(request_id, credentials_answer=reading.credentials_response)
        except ServiceError as exc:
            return done(
                FAILED,
                f"report outcome (the meter already held the command's certificates): {exc}",
                codes.REPORT_FAILED,
            )
        if ack.status != APPLIED:
            return done(FAILED, _recorded_as(ack.status), codes.METER_REJECTED)
        return done(APPLIED, ALREADY_APPLIED)

    if gateway is None:
        to_meter = command
    else:
        try:
            to_meter = gateway.local_command(command, device_id)
        except BenchError as exc:
            return done(FAILED, f"dcc: {exc}", codes.DCC_FAILED)
    if save_dir is not None:
        save_command(save_dir, device_id, counter, to_meter)
    try:
        response = transport.send(device_id, to_meter)
    except TransportError as exc:
        return done(FAILED, f"apply: {exc}", codes.APPLY_FAILED)

    local_problem = ""
    try:
        check_response(response, checked.header, reading.device)
    except ResponseRejected as exc:
        local_problem = f"response: {exc}"
    try:
        ack = api.report_outcome(request_id, response)
    except ServiceError as exc:
        problems = "; ".join(p for p in (local_problem, f"report outcome: {exc}") if p)
        return done(FAILED, problems, codes.RESPONSE_REJECTED if local_problem else codes.REPORT_FAILED)
    if local_problem:
        return done(FAILED, local_problem, codes.RESPONSE_REJECTED)
    if ack.status != APPLIED:
        return done(FAILED, _recorded_as(ack.status), codes.METER_REJECTED)
    return done(APPLIED, "")


def _recorded_as(status: str) -> str:
    """The reason when the custodian recorded an outcome other than applied."""
    if status == "rejected":
        return "the meter refused the command (recorded as rejected)"
    return f"the custodian recorded the outcome as {status or 'not applied'}"


def holds_cells(reading: MeterReading, installs: dict[KeyUsage, bytes]) -> bool:
    """Whether both NO cells the reading shows hold exactly these certificates (entity id and key id)."""
    cells, _ = network_operator_cells(reading)
    for usage, certificate in installs.items():
        try:
            cert = load_certificate(certificate)
        except GbcsError:
            return False
        if cells.get(int(usage)) != (cert.entity_id, cert.subject_key_identifier):
            return False
    return bool(installs)
