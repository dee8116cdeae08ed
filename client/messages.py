"""What the custodian answers a bench, as frozen values built from the protobuf messages (callers never see
generated types)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vdno.client import error_codes as codes
from vdno.client.errors import ServiceError
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64


class MeterStatus(StrEnum):
    """How a meter of a run ended, as the bench reports it (README "Errors")."""

    APPLIED = "applied"  # the meter holds what the command installs (now, or already)
    REFUSED = "refused"  # the bench's own checks refused the command: it was not sent
    FAILED = "failed"  # see the meter's error_code
    ORDERED = "ordered"  # hand-in: the custodian recorded the order; the area DNO's command is awaited
    PENDING = "pending"  # hand-in: no authorised command for this meter yet


def _device(value: str, what: str) -> bytes:
    try:
        return parse_eui64(value)
    except DecodeError as exc:
        raise ServiceError(codes.INVALID_REPLY, f"{what}: {exc}", codes.INVALID_REPLY) from exc


@dataclass(frozen=True)
class IssuedCommand:
    """A signed command the custodian released (RequestHandOut, RequestRotation): the KRP-signed GS APDU
    without a MAC header. The bench checks it (client/checks.py) before anything reaches the meter."""

    issuance_id: int
    device_id: bytes
    area_id: int | None  # a hand-out's area; None for a rotation
    generation: int | None  # the vanilla generation whose key signed; None when not given
    originator_counter: int | None  # None when not given (the check of the command then refuses it)
    command: bytes
    target_generation: int | None  # a rotation's target generation; None for a hand-out

    @classmethod
    def from_proto(cls, message: Any) -> IssuedCommand:
        return cls(
            issuance_id=int(message.issuance_id),
            device_id=_device(message.device_id, "issued command device_id"),
            area_id=int(message.area_id) or None,
            generation=int(message.generation) or None,
            originator_counter=int(message.originator_counter) or None,
            command=bytes(message.command),
            target_generation=int(message.target_generation) or None,
        )


@dataclass(frozen=True)
class CancelledCommand:
    """A command withdrawn at the bench's request (CancelRequest)."""

    issuance_id: int
    device_id: bytes
    request_id: str
    status: str  # cancelled
    released: bool  # its signed bytes had been handed out: the meter may still apply it
    cancelled_by: str  # officer:<id> | bench:<id>
    reason: str

    @classmethod
    def from_proto(cls, message: Any) -> CancelledCommand:
        return cls(
            issuance_id=int(message.issuance_id),
            device_id=_device(message.device_id, "cancelled command device_id"),
            request_id=str(message.request_id),
            status=str(message.status),
            released=bool(message.released),
            cancelled_by=str(message.cancelled_by),
            reason=str(message.reason),
        )


@dataclass(frozen=True)
class HandInOrder:
    """A recorded hand-in order (RequestHandIn)."""

    order_id: int
    device_id: bytes
    area_id: int  # the area whose DNO holds the meter's NO cells
    generation: int  # the vanilla generation the meter is to receive
    status: str
    seq_number: int

    @classmethod
    def from_proto(cls, message: Any) -> HandInOrder:
        return cls(
            order_id=int(message.order_id),
            device_id=_device(message.device_id, "hand-in order device_id"),
            area_id=int(message.area_id),
            generation=int(message.generation),
            status=str(message.status),
            seq_number=int(message.seq_number),
        )


@dataclass(frozen=True)
class AuthorisedHandIn:
    """A hand-in command authorised by the custodian: MAC-framed, as the meter receives it."""

    order_id: int
    device_id: bytes
    area_id: int
    generation: int
    counter: int
    command: bytes

    @classmethod
    def from_proto(cls, message: Any) -> AuthorisedHandIn:
        return cls(
            order_id=int(message.order_id),
            device_id=_device(message.device_id, "authorised hand-in device_id"),
            area_id=int(message.area_id),
            generation=int(message.generation),
            counter=int(message.originator_counter),
            command=bytes(message.command),
        )


@dataclass(frozen=True)
class OutcomeAck:
    """What the custodian recorded for a reported meter response."""

    reference: int  # issuance id (hand-out) or order id (hand-in)
    status: str  # applied | rejected

    @classmethod
    def from_proto(cls, message: Any) -> OutcomeAck:
        return cls(int(message.issuance_id), str(message.status))
