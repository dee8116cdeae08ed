"""The hand-out workflow against stand-ins that misbehave (a custodian that returns a bad command or refuses
the outcome, a meter that answers for another device); CLI usage errors; API retries. The CLI's runs against
a real server and simulator are in tests/integration/test_cli_conventions.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from bench_testlib import (
    AREA_ID,
    DEVICE_ID,
    OTHER_DEVICE_ID,
    FakeCustodian,
    FakeMeter,
    LabWorld,
    der,
    with_status,
)
from typer.testing import CliRunner

from vdno.client.api import BenchClient
from vdno.client.cli import app, parse_tray
from vdno.client.errors import ServiceError
from vdno.client.handout import APPLIED, FAILED, LAB_READER_ID, REFUSED, hand_out
from vdno.client.messages import IssuedCommand, OutcomeAck
from vdno.gbcs.cells import NO_DS_CELL
from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.labpki.smki import issue_device_certificate, make_device_ca
from vdno.labpki.store import write_certificate, write_private_key
from vdno.labpki.tls import BENCH_ROLE, issue_client_certificate, make_tls_ca
from vdno.v1.custodian_pb2 import HandOutResponse


def test_hand_out_applied(world: LabWorld, tmp_path: Path) -> None:
    api, meter = FakeCustodian(world, counter=6001), FakeMeter(world)
    result = hand_out(api, meter, world.bundle, DEVICE_ID, AREA_ID, request_id="req-1", save_dir=tmp_path)
    assert result.status == APPLIED, result.reason
    assert (result.device_id, result.area_id, result.request_id, result.counter) == (
        DEVICE_ID.hex(),
        AREA_ID,
        "req-1",
        6001,
    )
    assert result.generation == 2
    # reads: CS02e then CS02a, unsigned GS-only from the lab reader id; then the command as issued
    e, a, _command = (decode_message(m) for m in meter.sent)
    assert e.apdu.header.message_code == MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE
    assert e.apdu.signature == b"" and e.mac is None
    assert e.apdu.header.business_originator_id == LAB_READER_ID
    assert e.apdu.header.business_target_id == DEVICE_ID
    cs02a = ProvideSecurityCredentialsCommand.decode(a.apdu.content)
    assert cs02a.ta_cell == NO_DS_CELL and cs02a.roles == (3,)
    assert meter.sent[2] == result.command
    # the custodian got the device certificate and the signed CS02a response; the outcome was reported
    request = api.requests[0]
    assert request[:3] == ("req-1", DEVICE_ID.hex(), AREA_ID)
    assert request[3] == world.device_cert
    assert api.reports[0][0] == "req-1"
    saved = tmp_path / f"{DEVICE_ID.hex()}-6001.hex"
    assert bytes.fromhex(saved.read_text().strip()) == result.command
    assert saved.read_text().strip() == saved.read_text().strip().lower()


def test_hand_out_generates_request_id(world: LabWorld) -> None:
    result = hand_out(FakeCustodian(world), FakeMeter(world), world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == APPLIED and len(result.request_id) == 32


def test_hand_out_refuses_bad_command(world: LabWorld) -> None:
    meter = FakeMeter(world)
    api = FakeCustodian(world, device_id=OTHER_DEVICE_ID)
    result = hand_out(api, meter, world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == REFUSED and result.reason.startswith("wrong-target")
    assert len(meter.sent) == 2  # never applied
    assert api.reports == []


def test_hand_out_refuses_when_generation_not_active(world: LabWorld) -> None:
    bundle = with_status(world.bundle, "retired")
    result = hand_out(FakeCustodian(world), FakeMeter(world), bundle, DEVICE_ID, AREA_ID)
    assert result.status == REFUSED and "unknown-originator" in result.reason


def test_hand_out_meter_rejects_cells(world: LabWorld) -> None:
    api = FakeCustodian(world)
    result = hand_out(api, FakeMeter(world, statuses=(0, 10)), world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == FAILED and "cell-status" in result.reason
    assert len(api.reports) == 1  # still reported: the custodian records the meter's state


def test_hand_out_service_error(world: LabWorld) -> None:
    class Down(FakeCustodian):
        def request_hand_out(self, *args: Any) -> Any:
            raise ServiceError("PERMISSION_DENIED", "bench revoked")

    result = hand_out(Down(world), FakeMeter(world), world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == FAILED and "PERMISSION_DENIED" in result.reason


def test_hand_out_custodian_rejects_outcome(world: LabWorld) -> None:
    api = FakeCustodian(world)
    api.ack = OutcomeAck(1, "rejected")
    result = hand_out(api, FakeMeter(world), world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == FAILED and "rejected" in result.reason


def test_hand_out_read_answered_for_another_device(world: LabWorld) -> None:
    class Liar(FakeMeter):
        def send(self, device_id: bytes, message: bytes) -> bytes:
            return super().send(device_id, message.replace(DEVICE_ID, OTHER_DEVICE_ID))

    result = hand_out(FakeCustodian(world), Liar(world), world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == FAILED and result.reason.startswith("read meter")


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("ka", "not the device's digital-signing certificate"),
        ("other-device", "not a device certificate for"),
        ("other-ca", "does not chain to the bundle's device CA"),
    ],
)
def test_hand_out_read_with_wrong_device_certificate(world: LabWorld, which: str, reason: str) -> None:
    key = world.device_key.public_key()
    if which == "ka":
        certificate = world.device_ka_cert
    elif which == "other-device":
        certificate = der(issue_device_certificate(world.device_ca, key, OTHER_DEVICE_ID, "ds"))
    else:
        certificate = der(issue_device_certificate(make_device_ca(world.root), key, DEVICE_ID, "ds"))
    meter = FakeMeter(world)
    meter.world = replace(world, device_cert=certificate)  # the meter answers CS02e with it

    result = hand_out(FakeCustodian(world), meter, world.bundle, DEVICE_ID, AREA_ID)
    assert result.status == FAILED and reason in result.reason, result.reason
    assert len(meter.sent) == 1  # nothing after the CS02e read


def test_hand_out_unknown_area(world: LabWorld) -> None:
    result = hand_out(FakeCustodian(world), FakeMeter(world), world.bundle, DEVICE_ID, 23)
    assert result.status == FAILED and "area 23" in result.reason


# --- tray files and CLI usage ----------------------------------------------------------------------


def test_parse_tray_both_formats(tmp_path: Path) -> None:
    plain = tmp_path / "tray.txt"
    plain.write_text("# tray 7\n00db1234567890a0 14\n\n00-db-12-34-56-78-90-a1   23  # last\n")
    csv = tmp_path / "tray.csv"
    csv.write_text("device,area\n00db1234567890a0,14\n00db1234567890a1, 10\n")
    assert [(e.device_id.hex(), e.area_id) for e in parse_tray(plain)] == [
        ("00db1234567890a0", 14),
        ("00db1234567890a1", 23),
    ]
    assert [(e.device_id.hex(), e.area_id) for e in parse_tray(csv)] == [
        ("00db1234567890a0", 14),
        ("00db1234567890a1", 10),
    ]


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["hand-out", *args])
    return result.exit_code, result.stderr


@pytest.fixture
def pems(tmp_path: Path) -> list[str]:
    """Real TLS files (the CLI checks them before any call); nothing listens at --server."""
    ca = make_tls_ca()
    write_certificate(tmp_path / "ca.pem", ca.certificate)
    bench = issue_client_certificate(ca, "bench-01", role=BENCH_ROLE)
    write_certificate(tmp_path / "cert.pem", bench.certificate)
    assert bench.private_key is not None
    write_private_key(tmp_path / "key.pem", bench.private_key)
    base = ["--server", "127.0.0.1:1", "--sim", "127.0.0.1:2"]
    return [
        *base,
        "--ca",
        str(tmp_path / "ca.pem"),
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device", "00db1234567890zz", "--area", "14"], "--device"),
        (["--device", "00db1234567890a0", "--area", "9"], "10-23"),
        (["--device", "00db1234567890a0", "--area", "24"], "10-23"),
        (["--device", "00db1234567890a0"], "--area"),
        (["--tray", "/nonexistent/tray.txt"], "tray"),
    ],
)
def test_cli_usage_errors_exit_2(pems: list[str], args: list[str], needle: str) -> None:
    code, err = _cli(*args, *pems)
    assert code == 2
    assert err.count("\n") == 1 and needle in err


def test_cli_bad_tray_line(pems: list[str], tmp_path: Path) -> None:
    tray = tmp_path / "bad.txt"
    tray.write_text("00db1234567890a0 14\n00db1234567890a1 99\n")
    code, err = _cli("--tray", str(tray), *pems)
    assert code == 2 and err.count("\n") == 2
    assert "1 bad line, nothing done" in err and "line 2: area 99 is not a DNO area (10-23)" in err


def test_cli_unreadable_pem(pems: list[str], tmp_path: Path) -> None:
    args = [a if not a.endswith("key.pem") else str(tmp_path / "missing.pem") for a in pems]
    code, err = _cli("--device", "00db1234567890a0", "--area", "14", *args)
    assert code == 2 and "--key" in err


def test_cli_missing_settings() -> None:
    code, err = _cli("--device", "00db1234567890a0", "--area", "14")
    assert code == 2 and "--server" in err


def test_cli_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(
        '[bench]\nserver = "127.0.0.1:1"\nsim = "nohostport"\nca = "ca.pem"\n'
        'cert = "cert.pem"\nkey = "key.pem"\n'
    )
    code, err = _cli("--device", "00db1234567890a0", "--area", "14", "--config", str(config))
    assert code == 2 and "--sim" in err


# --- API retries -----------------------------------------------------------------------------------


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_api_retries_unavailable_with_same_request(world: LabWorld) -> None:
    sleeps: list[float] = []
    client = BenchClient("127.0.0.1:1", b"ca", b"cert", b"key", attempts=4, backoff=0.1, sleep=sleeps.append)
    seen: list[Any] = []

    reply = HandOutResponse(
        issuance_id=7, device_id=DEVICE_ID.hex().upper(), area_id=AREA_ID, generation=1,
        originator_counter=5001, command=b"\xdd\x00", target_generation=0,
    )  # fmt: skip

    def flaky(request: Any, timeout: float) -> HandOutResponse:
        seen.append(request)
        if len(seen) < 3:
            raise _RpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return reply

    client._stub.RequestHandOut = flaky
    issued = client.request_hand_out("req-9", DEVICE_ID.hex(), AREA_ID, b"c", b"r")
    assert issued == IssuedCommand(7, DEVICE_ID, AREA_ID, 1, 5001, b"\xdd\x00", None)
    assert [r.request_id for r in seen] == ["req-9"] * 3
    assert sleeps == [0.1, 0.2]
    client.close()


def test_api_maps_errors(world: LabWorld) -> None:
    client = BenchClient("127.0.0.1:1", b"ca", b"cert", b"key", attempts=2, sleep=lambda _: None)

    def denied(request: Any, timeout: float) -> str:
        raise _RpcError(grpc.StatusCode.FAILED_PRECONDITION, "device NO cell is not vanilla")

    def down(request: Any, timeout: float) -> str:
        raise _RpcError(grpc.StatusCode.UNAVAILABLE, "down")

    client._stub.ReportOutcome = denied
    with pytest.raises(ServiceError) as info:
        client.report_outcome("req", b"x")
    assert info.value.code_name == "FAILED_PRECONDITION" and "vanilla" in info.value.message
    client._stub.GetTrustBundle = down
    with pytest.raises(ServiceError) as info:
        client.trust_bundle()
    assert info.value.code_name == "UNAVAILABLE"
    client.close()


def test_result_as_dict_is_json(world: LabWorld) -> None:
    result = hand_out(FakeCustodian(world), FakeMeter(world), world.bundle, DEVICE_ID, AREA_ID)
    doc = json.loads(json.dumps(result.as_dict()))
    assert doc["status"] == "applied" and doc["device"] == DEVICE_ID.hex()
