"""Hostile or malformed documents give a DuisError naming the problem."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from duis_testlib import LOCAL_COMMAND_RESPONSE, PRECOMMAND_RESPONSE, SAMPLE_REQUEST

from vdno.duis.document import MAX_DOCUMENT_BYTES
from vdno.duis.errors import DuisError, ResponseCodeError
from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    ServiceRequest,
    SignedPreCommand,
    decode_local_command_response,
    decode_request,
    encode_request,
)

SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
RID = RequestId(bytes.fromhex("4C41420000030014"), bytes.fromhex("00DB1234567890A0"), 7)


def _signed_pre_command() -> bytes:
    return encode_request(ServiceRequest(RID, 6, "6.15", "6.15.1", SignedPreCommand(b"\xdf\x09\x01")))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"
 schemaVersion="5.4">&lol3;</sr:Request>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" schemaVersion="5.4">&x;</sr:Request>
"""


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (EXTERNAL_ENTITY, "DOCTYPE"),
        (b'<!DOCTYPE sr:Request><sr:Request xmlns:sr="' + SR_NS.encode() + b'"/>', "DOCTYPE"),
        (b"<sr:Request", "not well-formed"),
        (b'<?xml version="1.0" encoding="UTN-8"?><sr:Request/>', "declares an unknown encoding"),
        (b"<Request/>", "root element is Request, expected sr:Request"),
        (
            b'<sr:Response xmlns:sr="' + SR_NS.encode() + b'" schemaVersion="5.4"/>',
            "root element is sr:Response",
        ),
        (b'<sr:Request xmlns:sr="' + SR_NS.encode() + b'"/>', "lacks the schemaVersion attribute"),
        (b'<sr:Request xmlns:sr="' + SR_NS.encode() + b'" schemaVersion="v5"/>', "schemaVersion 'v5'"),
        (b'<sr:Request xmlns:sr="' + SR_NS.encode() + b'" schemaVersion="5.4">&amp;</sr:Request>', "text"),
        (
            b'<sr:Request xmlns:sr="' + SR_NS.encode() + b'" schemaVersion="5.4"><x/></sr:Request>',
            "lacks sr:Header",
        ),
    ],
)
def test_refused_documents(document: bytes, message: str) -> None:
    with pytest.raises(DuisError, match=message):
        decode_request(document)


def test_oversize_document_is_refused_before_parsing() -> None:
    document = _signed_pre_command()
    padded = document + b" " * (MAX_DOCUMENT_BYTES + 1 - len(document))
    with pytest.raises(DuisError, match="over the 1048576-byte limit"):
        decode_request(padded)
    assert decode_request(document[:-1] + b" " * 1000).body == SignedPreCommand(b"\xdf\x09\x01")


def test_missing_and_unexpected_elements_are_named() -> None:
    document = _signed_pre_command()
    without_cv = document.replace(b"<sr:CommandVariant>6</sr:CommandVariant>", b"")
    with pytest.raises(DuisError, match=r"sr:Header lacks sr:CommandVariant \(found sr:ServiceReference\)"):
        decode_request(without_cv)
    extra = document.replace(b"</sr:Body>", b"<sr:Extra/></sr:Body>")
    with pytest.raises(DuisError, match="sr:Body: unexpected element sr:Extra"):
        decode_request(extra)
    sequenced = document.replace(
        b"<sr:CommandVariant>", b"<sr:FirstInSequence>true</sr:FirstInSequence><sr:CommandVariant>"
    )
    with pytest.raises(DuisError, match="sr:FirstInSequence is not supported"):
        decode_request(sequenced)
    with pytest.raises(DuisError, match=r"sr:CommandVariant 12 is outside 1\.\.9"):
        decode_request(document.replace(b">6</sr:CommandVariant>", b">12</sr:CommandVariant>"))


def test_other_bodies_are_refused(duis_dir: Path) -> None:
    other = (duis_dir / "samples" / "CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML").read_bytes()
    with pytest.raises(DuisError, match="sr:Body holds sr:ActivateFirmware; only"):
        decode_request(other)


def test_bad_base64_and_bad_certificates_are_named(duis_dir: Path) -> None:
    document = _signed_pre_command()
    payload = base64.b64encode(b"\xdf\x09\x01")
    with pytest.raises(DuisError, match="sr:SignedPreCommand/sr:GBCSPayload is not valid base64"):
        decode_request(document.replace(payload, b"3wk!"))
    with pytest.raises(DuisError, match="sr:SignedPreCommand/sr:GBCSPayload is empty"):
        decode_request(document.replace(payload, b" "))
    wrapped = document.replace(payload, payload[:2] + b"\n  " + payload[2:])
    assert decode_request(wrapped).body == SignedPreCommand(b"\xdf\x09\x01")  # xs:base64Binary whitespace

    sample = (duis_dir / SAMPLE_REQUEST).read_bytes()
    start = sample.index(b"<sr:KeyAgreementCertificate>") + len(b"<sr:KeyAgreementCertificate>")
    not_a_certificate = (
        sample[:start] + base64.b64encode(b"\x30\x03\x02\x01\x01") + sample[sample.index(b"<", start) :]
    )
    with pytest.raises(DuisError, match=r"sr:KeyAgreementCertificate is not an X\.509 DER certificate"):
        decode_request(not_a_certificate)
    encoded = sample[start : sample.index(b"<", start)]
    certificate = bytearray(base64.b64decode(encoded))
    certificate[certificate.index(b"\xa0\x03\x02\x01\x02") + 4] = 0x07  # version v8: refused as it loads
    bad_version = sample.replace(encoded, base64.b64encode(bytes(certificate)))
    with pytest.raises(DuisError, match=r"not an X\.509 DER certificate: 7 is not a valid X509 version"):
        decode_request(bad_version)
    with pytest.raises(DuisError, match="sr:ApplyTimeBasedCPVChecks 'yes'"):
        decode_request(
            sample.replace(b">true</sr:ApplyTimeBasedCPVChecks>", b">yes</sr:ApplyTimeBasedCPVChecks>")
        )
    with pytest.raises(DuisError, match="sr:RemotePartyRole 'DNO'"):
        decode_request(sample.replace(b">NetworkOperator<", b">DNO<"))
    with pytest.raises(DuisError, match="sr:RemotePartyFloorSeqNumber 9223372036854775808"):
        decode_request(
            sample.replace(
                b">0</sr:RemotePartyFloorSeqNumber>", b">9223372036854775808</sr:RemotePartyFloorSeqNumber>"
            )
        )


def test_responses_without_a_local_command(duis_dir: Path) -> None:
    with pytest.raises(DuisError, match="sr:ResponseMessage holds sr:PreCommand, not sr:LocalCommand"):
        decode_local_command_response((duis_dir / PRECOMMAND_RESPONSE).read_bytes())
    with pytest.raises(DuisError, match="root element is sr:Request, expected sr:Response"):
        decode_local_command_response((duis_dir / SAMPLE_REQUEST).read_bytes())
    with pytest.raises(ResponseCodeError, match="sr:ResponseCode E65") as caught:
        decode_local_command_response((duis_dir / "samples" / "acknowledgement-error.xml").read_bytes())
    assert caught.value.response_code == "E65"

    local = (duis_dir / LOCAL_COMMAND_RESPONSE).read_bytes()
    with pytest.raises(DuisError, match="sr:ResponseDateTime '2025-10-01 12:00:00'"):
        decode_local_command_response(local.replace(b"2025-10-01T12:00:00.000Z", b"2025-10-01 12:00:00"))
    with pytest.raises(DuisError, match="sr:ResponseDateTime '2025-02-30T12:00:00Z' is not a valid date"):
        decode_local_command_response(local.replace(b"2025-10-01T12:00:00.000Z", b"2025-02-30T12:00:00Z"))
