"""`vdno-labdcc init | answer` in-process (typer's runner); `python -m vdno.labdcc serve` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from labdcc_testlib import VANILLA_ID, LabSetup, make_lab, signed_pre_command_request
from typer.testing import CliRunner

from vdno.duis.ids import RequestId
from vdno.duis.messages import decode_local_command_response
from vdno.gbcs.framing import decode_message
from vdno.labdcc.cli import app

DEVICE = bytes.fromhex("00db0000000000c1")
OTHER_DEVICE = bytes.fromhex("00db0000000000c2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabSetup:
    return make_lab(tmp_path_factory.mktemp("labdcc-cli"))


def test_init_reports_what_it_made_then_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["init", "--state", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "created the lab SMKI hierarchy" in first.output
    assert "issued LAB DNO YORKSHIRE KA credentials" in first.output
    second = runner.invoke(app, ["init", "--state", str(tmp_path)])
    assert second.exit_code == 0
    assert "nothing changed" in second.output


def test_answer_writes_responses_and_names_refusals(lab: LabSetup, tmp_path: Path) -> None:
    lab.device(DEVICE)
    lab.device(OTHER_DEVICE, 15)
    requests, out = tmp_path / "requests", tmp_path / "out"
    (requests / "area-14").mkdir(parents=True)
    (requests / "area-15").mkdir()
    (requests / "area-14" / f"{DEVICE.hex()}.xml").write_bytes(lab.krp_request(DEVICE))
    (requests / "area-15" / f"{OTHER_DEVICE.hex()}.xml").write_bytes(lab.krp_request(OTHER_DEVICE, 15))
    (requests / "area-15" / "unknown.xml").write_bytes(lab.krp_request(OTHER_DEVICE, originator=VANILLA_ID))

    result = CliRunner().invoke(
        app, ["answer", "--state", str(lab.state), "--requests", str(requests), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"answered area-14/{DEVICE.hex()}.xml -> ")
    assert lines[1].startswith(f"answered area-15/{OTHER_DEVICE.hex()}.xml -> ")
    assert lines[2].startswith("refused area-15/unknown.xml: ") and "not one of the lab area DNOs" in lines[2]
    assert lines[3] == "2 answered, 1 refused"
    answer = (out / "area-14" / f"{DEVICE.hex()}-response.xml").read_bytes()
    response = decode_local_command_response(answer)
    assert response.request_id is not None and response.request_id.originator == lab.dno(14).entity_id
    assert decode_message(response.gbcs_payload).mac_framed
    assert (out / "area-15" / f"{OTHER_DEVICE.hex()}-response.xml").is_file()
    assert not (out / "area-15" / "unknown-response.xml").exists()

    (requests / "area-15" / "unknown.xml").unlink()
    beside = CliRunner().invoke(
        app, ["answer", "--state", str(lab.state), "--requests", str(requests), "--out", str(requests)]
    )
    assert beside.exit_code == 0, beside.output
    assert (requests / "area-14" / f"{DEVICE.hex()}-response.xml").is_file()
    again = CliRunner().invoke(
        app, ["answer", "--state", str(lab.state), "--requests", str(requests), "--out", str(requests)]
    )
    assert again.exit_code == 0, again.output  # earlier responses are not taken for requests
    assert again.output.splitlines()[-1] == "2 answered, 0 refused"


def test_answer_usage_errors(lab: LabSetup, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        app, ["answer", "--state", str(lab.state), "--requests", str(tmp_path / "no"), "--out", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "is not a folder" in missing.output
    uninitialised = runner.invoke(
        app,
        ["answer", "--state", str(tmp_path / "empty"), "--requests", str(tmp_path), "--out", str(tmp_path)],
    )
    assert uninitialised.exit_code == 2 and "run `vdno-labdcc init" in uninitialised.output
    assert runner.invoke(app, ["answer", "--state", str(lab.state)]).exit_code == 2


def test_serve_subprocess_answers_and_stops_on_sigterm(lab: LabSetup) -> None:
    device = lab.device(bytes.fromhex("00db0000000000c3"), area_id=None)
    command = lab.hand_out(device.device_id, counter=4242)
    process = subprocess.Popen(
        [sys.executable, "-m", "vdno.labdcc", "serve", "--state", str(lab.state), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("vdno-labdcc listening on 127.0.0.1:"), line
        url = "http://" + line.rsplit(" ", 1)[1] + "/duis"
        body = signed_pre_command_request(command, RequestId(VANILLA_ID, device.device_id, 4242))
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, method="POST"), timeout=10
        ) as reply:
            assert reply.status == 200
            framed = decode_local_command_response(reply.read()).gbcs_payload
        assert decode_message(framed).apdu_bytes == command
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
