"""Encoders' output validates against DUIS Schema V5.4.xsd and decodes to the same values."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import xmlschema
from duis_testlib import assert_valid_duis, validation_errors

from vdno.duis.errors import DuisError
from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    LocalCommandResponse,
    ServiceRequest,
    SignedPreCommand,
    UpdateSecurityCredentialsKrp,
    decode_local_command_response,
    decode_request,
    encode_local_command_response,
    encode_request,
)

RID = RequestId(bytes.fromhex("4C41420000030014"), bytes.fromhex("00DB1234567890A0"), 1_700_000_000_000_001)
WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _krp(certificates: tuple[bytes, bytes, bytes], **changes: object) -> UpdateSecurityCredentialsKrp:
    ds, ka, path = certificates
    values: dict[str, object] = {
        "floor_seq_number": 0,
        "digital_signing_certificate": ds,
        "key_agreement_certificate": ka,
        "certification_path": (path,),
    }
    values.update(changes)
    return UpdateSecurityCredentialsKrp(**values)  # type: ignore[arg-type]


def _requests(certificates: tuple[bytes, bytes, bytes]) -> list[ServiceRequest]:
    _, ka, path = certificates
    return [
        ServiceRequest(RID, 6, "6.15", "6.15.1", _krp(certificates)),
        ServiceRequest(
            RID,
            4,
            "6.15",
            "6.15.1",
            _krp(
                certificates,
                floor_seq_number=None,
                key_agreement_certificate=None,
                certification_path=(path, path, path),
                apply_time_based_cpv_checks=False,
                execution_date_time=datetime(
                    2026, 3, 1, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1))
                ),
            ),
        ),
        ServiceRequest(
            RID,
            4,
            "6.15",
            "6.15.1",
            _krp(
                certificates,
                remote_party_role="Supplier",
                prepayment_top_up_floor_seq_number=2**63 - 1,
                key_agreement_top_up_certificate=ka,
            ),
        ),
        ServiceRequest(RID, 6, "6.15", "6.15.1", SignedPreCommand(b"\xdf\x09\x01" + bytes(100))),
        ServiceRequest(RID, 5, "6.15", "6.15.1", SignedPreCommand(b"\xdf\x09\x01", execution_date_time=WHEN)),
    ]


def test_encoded_requests_validate_and_round_trip(
    duis_schema: xmlschema.XMLSchema, certificates: tuple[bytes, bytes, bytes]
) -> None:
    for request in _requests(certificates):
        document = encode_request(request)
        assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<sr:Request ")
        assert b'schemaVersion="5.4"' in document
        assert_valid_duis(duis_schema, document)
        assert decode_request(document) == request


def test_execution_date_time_comes_first_and_in_utc(certificates: tuple[bytes, bytes, bytes]) -> None:
    request = _requests(certificates)[1]
    text = encode_request(request).decode()
    body = text[text.index("<sr:UpdateSecurityCredentialsKRP>") :]
    first = re.search(r"<sr:(\w+)>", body[len("<sr:UpdateSecurityCredentialsKRP>") :])
    assert first is not None and first.group(1) == "ExecutionDateTime"
    assert "<sr:ExecutionDateTime>2026-03-01T09:30:00.123456Z</sr:ExecutionDateTime>" in text


def test_encoded_local_command_responses_validate_and_round_trip(duis_schema: xmlschema.XMLSchema) -> None:
    for response in (
        LocalCommandResponse(RID, "I0", WHEN, "6.15", "6.15.1", b"\xdd" + bytes(40)),
        LocalCommandResponse(None, "I0", WHEN + timedelta(microseconds=5000), "6.15", "6.15.1", b"\xdd"),
    ):
        document = encode_local_command_response(response)
        assert_valid_duis(duis_schema, document)
        assert decode_local_command_response(document) == response
    assert b"<sr:ResponseDateTime>2026-03-01T09:30:00.005Z<" in document


def test_schema_catches_a_broken_document(
    duis_schema: xmlschema.XMLSchema, certificates: tuple[bytes, bytes, bytes]
) -> None:
    document = encode_request(_requests(certificates)[0])
    no_role = re.sub(rb"\s*<sr:RemotePartyRole>[^<]*</sr:RemotePartyRole>", b"", document)
    assert no_role != document
    assert validation_errors(duis_schema, no_role)
    with pytest.raises(DuisError, match="lacks sr:RemotePartyRole"):
        decode_request(no_role)

    bad_id = document.replace(b"00-DB-12-34-56-78-90-A0:", b"00-DB-12-34-56-78-90:")
    assert bad_id != document
    assert validation_errors(duis_schema, bad_id)
    with pytest.raises(DuisError, match="RequestID"):
        decode_request(bad_id)

    with pytest.raises(AssertionError, match="not valid DUIS"):
        assert_valid_duis(duis_schema, bad_id)


def test_constructors_validate(certificates: tuple[bytes, bytes, bytes]) -> None:
    ds, _, path = certificates
    with pytest.raises(DuisError, match="sr:RemotePartyRole 'Bogus'"):
        _krp(certificates, remote_party_role="Bogus")
    with pytest.raises(DuisError, match="1 to 3 certificates, got 0"):
        _krp(certificates, certification_path=())
    with pytest.raises(DuisError, match="1 to 3 certificates, got 4"):
        _krp(certificates, certification_path=(path,) * 4)
    with pytest.raises(DuisError, match=r"sr:DigitalSigningCertificate is not an X\.509 DER certificate"):
        _krp(certificates, digital_signing_certificate=ds[:-3])
    with pytest.raises(DuisError, match=r"sr:CertificationPathCertificates/sr:Certificate\[2\]"):
        _krp(certificates, certification_path=(path, b"\x30\x00"))
    with pytest.raises(DuisError, match="sr:RemotePartyFloorSeqNumber -1"):
        _krp(certificates, floor_seq_number=-1)
    with pytest.raises(DuisError, match="timezone-aware"):
        _krp(certificates, execution_date_time=datetime(2026, 1, 1))
    with pytest.raises(DuisError, match="GBCSPayload"):
        SignedPreCommand(b"")
    with pytest.raises(DuisError, match="sr:CommandVariant 10"):
        ServiceRequest(RID, 10, "6.15", "6.15.1", SignedPreCommand(b"\xdf"))
    with pytest.raises(DuisError, match="sr:ServiceReferenceVariant"):
        ServiceRequest(RID, 6, "6.15", "6.15.1.x", SignedPreCommand(b"\xdf"))
    with pytest.raises(DuisError, match="sr:ResponseCode 'E65'"):
        LocalCommandResponse(RID, "E65", WHEN, "6.15", "6.15.1", b"\xdd")
    assert _krp(certificates, certification_path=[path]).certification_path == (path,)
