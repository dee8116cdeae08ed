"""The lab DCC's DUIS endpoint (in-process on 127.0.0.1:0) answers signed pre-commands (the hand-out path)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import xmlschema
from duis_testlib import assert_valid_duis
from lab_testlib import der, org
from labdcc_testlib import VANILLA_ID, LabSetup, make_lab, signed_pre_command_request

from vdno.duis.ids import RequestId
from vdno.duis.messages import decode_local_command_response
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, StatusCode
from vdno.gbcs.framing import decode_message
from vdno.gbcs.mac import verify_mac
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.errors import RequestRefused
from vdno.labdcc.web import DuisHttpServer

VANILLA_DEVICE = bytes.fromhex("00db0000000000b1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabSetup:
    return make_lab(tmp_path_factory.mktemp("labdcc-web"))


@pytest.fixture(scope="module")
def server(lab: LabSetup) -> Iterator[DuisHttpServer]:
    running = DuisHttpServer(LabDcc(lab.state), port=0)
    running.start()
    yield running
    running.stop()


def _post(url: str, body: bytes, path: str = "/duis") -> tuple[int, bytes]:
    request = urllib.request.Request(url + path, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_signed_pre_command_is_answered_and_the_device_accepts_it(
    lab: LabSetup, server: DuisHttpServer, duis_schema: xmlschema.XMLSchema
) -> None:
    device = lab.device(VANILLA_DEVICE, area_id=None)
    command = lab.hand_out(VANILLA_DEVICE, counter=7001)
    rid = RequestId(VANILLA_ID, VANILLA_DEVICE, 7001)
    status, answer = _post(server.url, signed_pre_command_request(command, rid))
    assert status == 200, answer
    assert_valid_duis(duis_schema, answer)
    response = decode_local_command_response(answer)
    assert response.request_id == rid
    framed = decode_message(response.gbcs_payload)
    assert framed.mac_framed and framed.apdu_bytes == command
    assert device.device_ka.private_key is not None
    verify_mac(framed, device.device_ka.private_key, lab.parties.acb.ka.certificate)
    device.process(response.gbcs_payload)
    assert device.last_outcome is not None and device.last_outcome.status == StatusCode.SUCCESS
    assert device.cells[NO_DS_CELL] == der(lab.dno().ds.certificate)
    assert device.cells[NO_KA_CELL] == der(lab.dno().ka.certificate)


def test_refusals_are_one_line_4xx(lab: LabSetup, server: DuisHttpServer) -> None:
    lab.device(VANILLA_DEVICE, area_id=None)
    rid = RequestId(VANILLA_ID, VANILLA_DEVICE, 7002)
    impostor = org(lab.parties.hierarchy.issuing_ca, VANILLA_ID, 3, "ds")
    forged = lab.hand_out(VANILLA_DEVICE, counter=7002, signer=impostor)
    status, text = _post(server.url, signed_pre_command_request(forged, rid))
    assert status == 400
    assert text.decode().startswith("refused: KRP signature does not verify with ")
    assert text.count(b"\n") == 1

    genuine = lab.hand_out(VANILLA_DEVICE, counter=7003)
    cases = [
        (
            RequestId(VANILLA_ID, bytes.fromhex("00db0000000000b2"), 7003),
            "Business Target ID 00db0000000000b1",
        ),
        (RequestId(lab.dno().entity_id, VANILLA_DEVICE, 7003), "Business Originator ID 56444e4f00000001"),
    ]
    for wrong_rid, message in cases:
        status, text = _post(server.url, signed_pre_command_request(genuine, wrong_rid))
        assert status == 400 and message in text.decode()
    status, text = _post(server.url, signed_pre_command_request(genuine, rid, command_variant=5))
    assert status == 400 and "sr:CommandVariant 5 is not 6" in text.decode()
    status, text = _post(server.url, b"<not-duis/>")
    assert status == 400 and "root element is not-duis" in text.decode()
    status, _ = _post(server.url, b"", path="/other")
    assert status == 404
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.url + "/duis", timeout=10)
    assert caught.value.code == 405


def test_local_command_in_process(lab: LabSetup) -> None:
    dcc = LabDcc(lab.state)
    device = lab.device(bytes.fromhex("00db0000000000b3"), area_id=None)
    command = lab.hand_out(device.device_id, counter=9001)
    framed = dcc.local_command(command, device.device_id)
    assert decode_message(framed).apdu_bytes == command
    device.process(framed)
    assert device.last_outcome is not None and device.last_outcome.status == StatusCode.SUCCESS
    with pytest.raises(RequestRefused, match="already MAC-framed"):
        dcc.local_command(framed, device.device_id)
    with pytest.raises(RequestRefused, match="carries no KRP signature"):
        dcc.local_command(decode_message(command).apdu.encode_precommand(), device.device_id)
