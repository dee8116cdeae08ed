"""Hand-in at a triage bench: order it for a meter (read the meter, ask the custodian), and later apply the
command the area DNO returned through DCC (fetch it, check it, send it, check and report the response)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vdno.client import error_codes as codes
from vdno.client.bundle import TrustBundle
from vdno.client.checks import check_hand_in_command, check_response
from vdno.client.errors import (
    BenchError,
    CommandRefused,
    ReadError,
    ResponseRejected,
    ServiceError,
    TransportError,
)
from vdno.client.handout import (
    ALREADY_APPLIED,
    LAB_READER_ID,
    MeterReading,
    holds_cells,
    holds_installed,
    read_meter,
    save_command,
)
from vdno.client.messages import AuthorisedHandIn, HandInOrder, MeterStatus, OutcomeAck
from vdno.client.transport import DeviceTransport
from vdno.gbcs.cells import KeyUsage, RemotePartyRole
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import decode_message
from vdno.gbcs.ids import eui64_hex

ORDERED, PENDING = MeterStatus.ORDERED, MeterStatus.PENDING
APPLIED, REFUSED, FAILED = MeterStatus.APPLIED, MeterStatus.REFUSED, MeterStatus.FAILED


class HandInApi(Protocol):
    def request_hand_in(
        self, request_id: str, device_id: str, device_certificate: bytes, credentials_response: bytes
    ) -> HandInOrder: ...

    def fetch_hand_in_commands(self, device_ids: list[str]) -> list[AuthorisedHandIn]: ...

    def report_hand_in_outcome(
        self, order_id: int, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck: ...


@dataclass(frozen=True)
class HandInResult:
    device_id: str  # 16 hex digits
    status: MeterStatus  # ordered | pending | applied | refused | failed
    reason: str
    request_id: str | None = None
    order_id: int | None = None
    area_id: int | None = None  # the area whose DNO held (or holds) the meter's NO cells
    generation: int | None = None
    counter: int | None = None  # the DNO's originator counter in the applied command
    error_code: str | None = None  # client/error_codes.py; None when ordered or applied

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "status": self.status,
            "error_code": self.error_code,
            "reason": self.reason,
            "requestId": self.request_id,
            "orderId": self.order_id,
            "area": self.area_id,
            "generation": self.generation,
            "counter": self.counter,
        }


@dataclass(frozen=True)
class NetworkOperatorState:
    """What the meter's CS02a answer says of its NO role."""

    signing_entity: bytes | None
    seq_number: int


def network_operator_state(reading: MeterReading) -> NetworkOperatorState:
    for role in reading.credentials.roles:
        if role.role != RemotePartyRole.NETWORK_OPERATOR:
            continue
        entity = next(
            (c.subject_unique_id for c in role.cells or () if c.key_usage == KeyUsage.DIGITAL_SIGNATURE), None
        )
        return NetworkOperatorState(entity, role.current_seq_number or 0)
    return NetworkOperatorState(None, 0)


def order_hand_in(
    api: HandInApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    device_id: bytes,
    request_id: str | None = None,
    reader_id: bytes = LAB_READER_ID,
) -> HandInResult:
    """Read the meter and ask the custodian for a hand-in order. Never raises for meter or service
    failures."""
    request_id = request_id or uuid.uuid4().hex
    device_hex = eui64_hex(device_id)
    try:
        reading = read_meter(transport, device_id, bundle, reader_id)
    except (ReadError, TransportError) as exc:
        return HandInResult(
            device_hex, FAILED, f"read meter: {exc}", request_id, error_code=codes.METER_UNREADABLE
        )
    try:
        order = api.request_hand_in(
            request_id, device_hex, reading.device_certificate, reading.credentials_response
        )
    except ServiceError as exc:
        return HandInResult(device_hex, FAILED, f"custodian: {exc}", request_id, error_code=exc.error_code)
    return HandInResult(
        device_hex,
        ORDERED,
        f"order {order.order_id}: awaiting the command of {_area_name(bundle, order.area_id)}'s DNO",
        request_id,
        order.order_id,
        order.area_id,
        order.generation,
    )


def apply_hand_in(
    api: HandInApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    authorised: AuthorisedHandIn,
    reader_id: bytes = LAB_READER_ID,
    save_dir: Path | None = None,
) -> HandInResult:
    """Read the meter, check the authorised command against it and the bundle, send it, check and report the
    meter's response. Never raises for meter, service or check failures."""
    device_hex = eui64_hex(authorised.device_id)

    def result(status: MeterStatus, reason: str, error_code: str | None = None) -> HandInResult:
        return HandInResult(
            device_hex,
            status,
            reason,
            None,
            authorised.order_id,
            authorised.area_id,
            authorised.generation,
            authorised.counter,
            error_code,
        )

    try:
        reading = read_meter(transport, authorised.device_id, bundle, reader_id)
    except (ReadError, TransportError) as exc:
        return result(FAILED, f"read meter: {exc}", codes.METER_UNREADABLE)
    state = network_operator_state(reading)
    if state.signing_entity is None:
        return result(FAILED, "the meter reported no network-operator signing cell", codes.METER_UNREADABLE)
    generation = bundle.generation(authorised.generation)
    floor = _floor_seq_number(authorised.command)
    installs = (
        {}
        if generation is None
        else {
            KeyUsage.DIGITAL_SIGNATURE: generation.ds_certificate,
            KeyUsage.KEY_AGREEMENT: generation.ka_certificate,
        }
    )
    if floor is not None and holds_installed(reading, installs, floor):
        # Applied before (a run that crashed between applying and reporting): not sent again; the meter's
        # signed CS02a answer, read after the command was authorised, is the outcome.
        try:
            ack = api.report_hand_in_outcome(
                authorised.order_id, credentials_answer=reading.credentials_response
            )
        except ServiceError as exc:
            return result(
                FAILED,
                f"report outcome (the meter already held the vanilla generation): {exc}",
                codes.REPORT_FAILED,
            )
        if ack.status != APPLIED:
            return result(FAILED, _recorded_as(ack.status), codes.METER_REJECTED)
        return result(APPLIED, ALREADY_APPLIED)
    try:
        checked = check_hand_in_command(
            authorised.command,
            authorised.device_id,
            authorised.generation,
            bundle,
            state.signing_entity,
            state.seq_number,
        )
    except CommandRefused as exc:
        return result(REFUSED, str(exc), codes.COMMAND_REFUSED)
    if save_dir is not None:
        save_command(save_dir, authorised.device_id, checked.counter, authorised.command)
    try:
        response = transport.send(authorised.device_id, authorised.command)
    except TransportError as exc:
        return result(FAILED, f"apply: {exc}", codes.APPLY_FAILED)
    local_problem = ""
    try:
        check_response(response, checked.header, reading.device)
    except ResponseRejected as exc:
        local_problem = f"response: {exc}"
    try:
        ack = api.report_hand_in_outcome(authorised.order_id, response)
    except ServiceError as exc:
        problems = "; ".join(p for p in (local_problem, f"report outcome: {exc}") if p)
        return result(FAILED, problems, codes.RESPONSE_REJECTED if local_problem else codes.REPORT_FAILED)
    if local_problem:
        return result(FAILED, local_problem, codes.RESPONSE_REJECTED)
    if ack.status != APPLIED:
        return result(FAILED, _recorded_as(ack.status), codes.METER_REJECTED)
    return result(APPLIED, "")


def _area_name(bundle: TrustBundle, area_id: int) -> str:
    """'area 12 (London)', as people name it."""
    try:
        return f"area {area_id} ({bundle.area(area_id).name})"
    except BenchError:
        return f"area {area_id}"


def _floor_seq_number(command: bytes) -> int | None:
    """The command's newRemotePartyFloorSeqNumber (0 when absent); None when it does not decode."""
    try:
        payload = UpdateSecurityCredentialsCommand.decode(decode_message(command).apdu.content)
    except GbcsError:
        return None
    return payload.control.floor_seq_number or 0


def _recorded_as(status: str) -> str:
    """The reason when the custodian recorded an outcome other than applied."""
    if status == "rejected":
        return "the meter refused the command (recorded as rejected)"
    return f"the custodian recorded the outcome as {status or 'not applied'}"


def apply_hand_ins(
    api: HandInApi,
    transport: DeviceTransport,
    bundle: TrustBundle,
    device_ids: list[bytes],
    reader_id: bytes = LAB_READER_ID,
    save_dir: Path | None = None,
) -> list[HandInResult]:
    """Fetch the authorised commands for these meters and apply each; PENDING for a meter with none."""
    commands = api.fetch_hand_in_commands([eui64_hex(d) for d in device_ids])  # ServiceError: the run stops
    by_device = {c.device_id: c for c in commands}
    results = []
    for device_id in device_ids:
        authorised = by_device.get(device_id)
        if authorised is None:
            results.append(_without_command(transport, bundle, device_id, reader_id))
            continue
        results.append(apply_hand_in(api, transport, bundle, authorised, reader_id, save_dir))
    return results


def _without_command(
    transport: DeviceTransport, bundle: TrustBundle, device_id: bytes, reader_id: bytes
) -> HandInResult:
    """A meter with no authorised command: already applied when it is read holding a vanilla generation (a
    rerun after success), else pending."""
    device_hex = eui64_hex(device_id)
    try:
        reading = read_meter(transport, device_id, bundle, reader_id)
    except (ReadError, TransportError) as exc:
        return HandInResult(device_hex, FAILED, f"read meter: {exc}", error_code=codes.METER_UNREADABLE)
    for generation in bundle.generations:
        installs = {
            KeyUsage.DIGITAL_SIGNATURE: generation.ds_certificate,
            KeyUsage.KEY_AGREEMENT: generation.ka_certificate,
        }
        if holds_cells(reading, installs):
            return HandInResult(
                device_hex,
                APPLIED,
                f"already applied: the meter is on vanilla generation {generation.generation}",
                generation=generation.generation,
            )
    state = network_operator_state(reading)
    holder = None if state.signing_entity is None else bundle.area_of_entity(state.signing_entity)
    where = "" if holder is None else f" (the meter is in area {holder.area_id} ({holder.name}))"
    return HandInResult(
        device_hex,
        PENDING,
        f"no authorised hand-in command yet{where}",
        area_id=None if holder is None else holder.area_id,
        error_code=codes.NO_COMMAND_YET,
    )
