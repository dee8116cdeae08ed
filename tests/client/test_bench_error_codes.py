"""Each meter's machine-readable error code, and reruns after success reported as "already applied": a
hand-out the custodian refuses because the meter is already in the area asked for, and a hand-in apply for a
meter that has no command because it is already on vanilla."""

from __future__ import annotations

from typing import Any

from bench_testlib import AREA_ID, DEVICE_ID, FakeCustodian, FakeMeter, LabWorld, _respond

from vdno.client.errors import ServiceError
from vdno.client.hand_in import APPLIED as HAND_IN_APPLIED
from vdno.client.hand_in import PENDING, apply_hand_ins
from vdno.client.handout import APPLIED, FAILED, hand_out
from vdno.client.messages import AuthorisedHandIn, HandInOrder, OutcomeAck
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse, RoleCredentials, TrustAnchorCellDetails
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.gbcs.smki import load_certificate


class HoldingMeter(FakeMeter):
    """A meter whose NO cells hold the given DS and KA certificates (NO seq number 9: its holder has sent
    commands since)."""

    def __init__(self, world: LabWorld, ds_cert: bytes, ka_cert: bytes) -> None:
        super().__init__(world)
        self.ds, self.ka = load_certificate(ds_cert), load_certificate(ka_cert)

    def send(self, device_id: bytes, message: bytes) -> bytes:
        header = decode_message(message).apdu.header
        if header.message_code != MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
            return super().send(device_id, message)
        self.sent.append(message)
        cells = (
            TrustAnchorCellDetails(0, 0, self.ds.entity_id, self.ds.subject_key_identifier),
            TrustAnchorCellDetails(4, 0, self.ka.entity_id, self.ka.subject_key_identifier),
        )
        role = RoleCredentials(3, 0, 9, cells)
        return _respond(self.world, header, ProvideSecurityCredentialsResponse((role,)).encode())


class Refusing(FakeCustodian):
    def __init__(self, world: LabWorld, error_code: str) -> None:
        super().__init__(world)
        self.error_code = error_code

    def request_hand_out(self, *args: Any) -> Any:
        raise ServiceError("FAILED_PRECONDITION", "not in vanilla custody", self.error_code)


def in_area(world: LabWorld) -> HoldingMeter:
    area = world.areas[AREA_ID]
    return HoldingMeter(world, area.ds_cert, area.ka_cert)


def test_a_rerun_after_success_is_already_applied_not_failed(world: LabWorld) -> None:
    meter = in_area(world)
    result = hand_out(Refusing(world, "DEVICE_NOT_VANILLA"), meter, world.bundle, DEVICE_ID, AREA_ID)
    assert (result.status, result.error_code) == (APPLIED, None)
    assert result.reason == f"already applied: the meter is in area {AREA_ID} (area {AREA_ID})"
    codes = [decode_message(m).apdu.header.message_code for m in meter.sent]
    assert MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR not in codes


def test_a_refusal_carries_the_custodians_code(world: LabWorld) -> None:
    result = hand_out(
        Refusing(world, "OUTSTANDING_COMMAND"), in_area(world), world.bundle, DEVICE_ID, AREA_ID
    )
    assert (result.status, result.error_code) == (FAILED, "OUTSTANDING_COMMAND")
    assert result.as_dict()["error_code"] == "OUTSTANDING_COMMAND"
    # a meter in another area than the one asked for is not "already applied"
    other = next(a for a in world.areas if a != AREA_ID)
    moved = hand_out(Refusing(world, "DEVICE_NOT_VANILLA"), in_area(world), world.bundle, DEVICE_ID, other)
    assert (moved.status, moved.error_code) == (FAILED, "DEVICE_NOT_VANILLA")


def test_an_unreachable_custodian_is_server_unavailable(world: LabWorld) -> None:
    class Down(FakeCustodian):
        def request_hand_out(self, *args: Any) -> Any:
            raise ServiceError("UNAVAILABLE", "connection refused")

    result = hand_out(Down(world), FakeMeter(world), world.bundle, DEVICE_ID, AREA_ID)
    assert (result.status, result.error_code) == (FAILED, "SERVER_UNAVAILABLE")


class NoCommands:
    """HandInApi with no authorised command for any meter."""

    def request_hand_in(self, *args: Any) -> HandInOrder:
        raise AssertionError("unreachable: apply orders nothing")

    def fetch_hand_in_commands(self, device_ids: list[str]) -> list[AuthorisedHandIn]:
        return []

    def report_hand_in_outcome(self, *args: Any, **kwargs: Any) -> OutcomeAck:
        raise AssertionError("unreachable: nothing applied")


def test_hand_in_apply_for_a_meter_already_on_vanilla_is_already_applied(world: LabWorld) -> None:
    on_vanilla = HoldingMeter(world, world.vanilla.ds_cert, world.vanilla.ka_cert)
    [result] = apply_hand_ins(NoCommands(), on_vanilla, world.bundle, [DEVICE_ID])
    assert (result.status, result.error_code, result.generation) == (HAND_IN_APPLIED, None, 2)
    assert result.reason == "already applied: the meter is on vanilla generation 2"


def test_hand_in_apply_without_a_command_is_pending_naming_the_area(world: LabWorld) -> None:
    [result] = apply_hand_ins(NoCommands(), in_area(world), world.bundle, [DEVICE_ID])
    assert (result.status, result.error_code, result.area_id) == (PENDING, "NO_COMMAND_YET", AREA_ID)
    assert (
        result.reason
        == f"no authorised hand-in command yet (the meter is in area {AREA_ID} (area {AREA_ID}))"
    )
