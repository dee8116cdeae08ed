"""HttpDuisGateway against a real lab DCC endpoint (labdcc, in-process on 127.0.0.1:0)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The lab DCC state builders are shared with tests/labdcc.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "labdcc"))

from lab_testlib import org
from labdcc_testlib import LabSetup, make_lab

from vdno.client.dcc_gateway import GatewayError, HttpDuisGateway
from vdno.duis.ids import RequestId
from vdno.duis.messages import LocalCommandResponse, encode_local_command_response
from vdno.gbcs.cells import StatusCode
from vdno.gbcs.framing import decode_message
from vdno.gbcs.mac import verify_mac
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.web import DuisHttpServer

DEVICE = bytes.fromhex("00db0000000000d1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabSetup:
    return make_lab(tmp_path_factory.mktemp("dcc-gateway"))


@pytest.fixture(scope="module")
def dcc_url(lab: LabSetup) -> Iterator[str]:
    server = DuisHttpServer(LabDcc(lab.state), port=0)
    server.start()
    yield server.url
    server.stop()


def test_round_trip_returns_the_acb_maced_command(lab: LabSetup, dcc_url: str) -> None:
    device = lab.device(DEVICE, area_id=None)
    command = lab.hand_out(DEVICE, counter=31)
    framed = HttpDuisGateway(dcc_url).local_command(command, DEVICE)
    message = decode_message(framed)
    assert message.mac_framed and message.apdu_bytes == command
    assert device.device_ka.private_key is not None
    verify_mac(message, device.device_ka.private_key, lab.parties.acb.ka.certificate)
    device.process(framed)
    assert device.last_outcome is not None and device.last_outcome.status == StatusCode.SUCCESS


def test_unreachable_gateway(lab: LabSetup) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = HttpDuisGateway(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(GatewayError, match=f"cannot reach http://127.0.0.1:{port}/duis") as caught:
        gateway.local_command(lab.hand_out(DEVICE, counter=32), DEVICE)
    assert caught.value.reason == "unreachable"


def test_http_refusal_names_status_and_reason(lab: LabSetup, dcc_url: str) -> None:
    lab.device(DEVICE, area_id=None)
    forged = lab.hand_out(
        DEVICE, counter=33, signer=org(lab.parties.hierarchy.issuing_ca, lab.vanilla.entity_id, 3, "ds")
    )
    with pytest.raises(
        GatewayError, match="answered HTTP 400: refused: KRP signature does not verify"
    ) as caught:
        HttpDuisGateway(dcc_url).local_command(forged, DEVICE)
    assert caught.value.reason == "http-status"


def test_bad_command_and_bad_url_fail_before_sending(lab: LabSetup) -> None:
    command = lab.hand_out(DEVICE, counter=34)
    with pytest.raises(GatewayError, match="is for 00db0000000000d1, not device 00db0000000000d2") as caught:
        HttpDuisGateway("http://127.0.0.1:9").local_command(command, bytes.fromhex("00db0000000000d2"))
    assert caught.value.reason == "bad-command"
    with pytest.raises(GatewayError, match="is not an http"):
        HttpDuisGateway("file:///etc/passwd")


class _Canned(BaseHTTPRequestHandler):
    """A DCC that answers every POST with the same canned bytes (a misbehaving peer)."""

    answer = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("reason", "message"),
    [("mismatch", "GS APDU differs from the signed command sent"), ("undecodable", "is not a LocalCommand")],
)
def test_a_wrong_answer_is_refused(lab: LabSetup, reason: str, message: str) -> None:
    lab.device(DEVICE, area_id=None)
    sent = lab.hand_out(DEVICE, counter=35)
    other = LabDcc(lab.state).local_command(lab.hand_out(DEVICE, counter=36), DEVICE)
    canned_answer = b"<html/>"
    if reason == "mismatch":  # the lab DCC's genuine answer to another command, under the same RequestID
        canned_answer = encode_local_command_response(
            LocalCommandResponse(
                RequestId(lab.vanilla.entity_id, DEVICE, 35), "I0", datetime.now(UTC), "6.15", "6.15.1", other
            )
        )
    handler = type("Handler", (_Canned,), {"answer": canned_answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        with pytest.raises(GatewayError, match=message) as caught:
            HttpDuisGateway(f"http://127.0.0.1:{server.server_address[1]}").local_command(sent, DEVICE)
        assert caught.value.reason == reason
    finally:
        server.shutdown()
        server.server_close()
