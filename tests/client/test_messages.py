"""The custodian's replies as the bench sees them: frozen values built from the protobuf messages, a reply
that names no meter refused as INVALID_REPLY (client/messages.py)."""

from __future__ import annotations

import pytest

from vdno.client.errors import ServiceError
from vdno.client.messages import CancelledCommand, IssuedCommand, OutcomeAck
from vdno.v1 import custodian_pb2 as pb

DEVICE = "00DB5EED00000001"


def test_a_hand_out_reply_keeps_its_area_and_has_no_target_generation() -> None:
    reply = pb.HandOutResponse(
        issuance_id=12, device_id=DEVICE, area_id=14, generation=2, originator_counter=1_796_000_000_000_001,
        command=b"\xdd\x01\x02", target_generation=0,
    )  # fmt: skip
    issued = IssuedCommand.from_proto(reply)
    assert issued == IssuedCommand(
        12, bytes.fromhex(DEVICE), 14, 2, 1_796_000_000_000_001, b"\xdd\x01\x02", None
    )
    with pytest.raises(AttributeError):
        issued.command = b""  # type: ignore[misc]  # frozen


def test_a_rotation_reply_has_no_area_and_names_its_target_generation() -> None:
    reply = pb.HandOutResponse(
        issuance_id=3, device_id=DEVICE.lower(), generation=1, originator_counter=9, command=b"\xdd",
        target_generation=2,
    )  # fmt: skip
    issued = IssuedCommand.from_proto(reply)
    assert (issued.area_id, issued.generation, issued.target_generation) == (None, 1, 2)
    assert issued.device_id == bytes.fromhex(DEVICE)


def test_fields_the_reply_leaves_out_are_none_not_zero() -> None:
    issued = IssuedCommand.from_proto(pb.HandOutResponse(issuance_id=1, device_id=DEVICE))
    assert (issued.generation, issued.originator_counter, issued.command) == (None, None, b"")


@pytest.mark.parametrize("device", ["", "00DB5EED", "not hex at all!!"])
def test_a_reply_that_names_no_meter_is_an_invalid_reply(device: str) -> None:
    with pytest.raises(ServiceError) as issued:
        IssuedCommand.from_proto(pb.HandOutResponse(issuance_id=1, device_id=device))
    assert issued.value.error_code == "INVALID_REPLY"
    assert str(issued.value).startswith("INVALID_REPLY: issued command device_id: ")
    with pytest.raises(ServiceError) as cancelled:
        CancelledCommand.from_proto(pb.CancelledCommand(issuance_id=1, device_id=device))
    assert cancelled.value.error_code == "INVALID_REPLY"
    assert str(cancelled.value).startswith("INVALID_REPLY: cancelled command device_id: ")


def test_a_cancelled_command_says_whether_it_was_released() -> None:
    reply = pb.CancelledCommand(
        issuance_id=5, device_id=DEVICE, bench_id="bench-01", request_id="r-5", status="cancelled",
        released=True, cancelled_by="bench:bench-01", reason="meter dropped",
    )  # fmt: skip
    assert CancelledCommand.from_proto(reply) == CancelledCommand(
        5, bytes.fromhex(DEVICE), "r-5", "cancelled", True, "bench:bench-01", "meter dropped"
    )


def test_an_outcome_ack_names_its_issuance_and_status() -> None:
    assert OutcomeAck.from_proto(pb.OutcomeAck(issuance_id=8, status="rejected")) == OutcomeAck(8, "rejected")
