"""Known answers: the DUIS 6.15.1 sample and the constructed examples against the RTDS NO-by-NO vector."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlschema
from duis_testlib import (
    LOCAL_COMMAND_RESPONSE,
    RTDS_COMMAND,
    SAMPLE_REQUEST,
    SIGNED_PRECOMMAND_REQUEST,
    SR,
    assert_valid_duis,
    tree_differences,
)
from rtds_vectors import read_hex

from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    SignedPreCommand,
    UpdateSecurityCredentialsKrp,
    decode_local_command_response,
    decode_request,
    encode_local_command_response,
    encode_request,
)
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.framing import decode_message

RID = RequestId(bytes.fromhex("90B3D51F30020000"), bytes.fromhex("00DB1234567890A0"), 1200)


@pytest.fixture(scope="module")
def rtds_command(vectors_dir: Path) -> bytes:
    return read_hex(vectors_dir / RTDS_COMMAND)


def test_sample_request_decodes_to_the_rtds_certificates(duis_dir: Path, rtds_command: bytes) -> None:
    request = decode_request((duis_dir / SAMPLE_REQUEST).read_bytes())
    assert request.request_id == RID
    assert request.command_variant == 4
    assert (request.service_reference, request.service_reference_variant) == ("6.15", "6.15.1")
    body = request.body
    assert isinstance(body, UpdateSecurityCredentialsKrp)
    assert body.remote_party_role == "NetworkOperator"
    assert body.floor_seq_number == 0
    assert body.apply_time_based_cpv_checks is True
    assert body.execution_date_time is None

    command = UpdateSecurityCredentialsCommand.decode(decode_message(rtds_command).apdu.content)
    by_cell = {r.target: r.certificate for r in command.replacements}
    assert body.digital_signing_certificate == by_cell[NO_DS_CELL]
    assert body.key_agreement_certificate == by_cell[NO_KA_CELL]
    assert body.certification_path == command.certification_path_certificates
    assert command.control.floor_seq_number == body.floor_seq_number


def test_sample_request_re_encodes_to_the_same_header_and_body(
    duis_dir: Path, duis_schema: xmlschema.XMLSchema
) -> None:
    sample = (duis_dir / SAMPLE_REQUEST).read_bytes()
    encoded = encode_request(decode_request(sample))
    assert_valid_duis(duis_schema, encoded)
    ours, theirs = ET.fromstring(encoded), ET.fromstring(sample)
    for part in ("Header", "Body"):
        mine, original = ours.find(f"{SR}{part}"), theirs.find(f"{SR}{part}")
        assert mine is not None and original is not None
        assert tree_differences(mine, original) == []


def test_constructed_local_command_response_is_the_rtds_command(
    duis_dir: Path, duis_schema: xmlschema.XMLSchema, rtds_command: bytes
) -> None:
    response = decode_local_command_response((duis_dir / LOCAL_COMMAND_RESPONSE).read_bytes())
    assert response.gbcs_payload == rtds_command
    assert response.request_id == RID
    assert response.response_code == "I0"
    assert response.response_date_time == datetime(2025, 10, 1, 12, tzinfo=UTC)
    assert_valid_duis(duis_schema, encode_local_command_response(response))


def test_constructed_signed_pre_command_is_the_rtds_command_without_its_mac(
    duis_dir: Path, rtds_command: bytes
) -> None:
    request = decode_request((duis_dir / SIGNED_PRECOMMAND_REQUEST).read_bytes())  # has a ds:Signature
    assert isinstance(request.body, SignedPreCommand)
    assert request.body.gbcs_payload == rtds_command[15:-12]
    assert request.body.gbcs_payload == decode_message(rtds_command).apdu_bytes
    assert request.request_id == RID
    assert request.command_variant == 5
