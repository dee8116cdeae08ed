"""How an officer's import payload is read: binary GBCS exactly as given (a MAC may end in bytes that look
like white space), GBCS as hex text, or a DUIS LocalCommand response; anything else named as such."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vdno.duis.ids import RequestId
from vdno.duis.messages import LocalCommandResponse, encode_local_command_response
from vdno.server.domain.errors import InvalidRequest
from vdno.server.domain.hand_in import read_returned_command

# A MAC-framed command shape whose last bytes (the MAC) are white space in ASCII.
COMMAND = bytes.fromhex("dd0000000000000a11000000") + b"\xdf\x09" + b"\x20\x0a\x0d\x09\x0b\x0c\x20\x0a"


def test_binary_gbcs_keeps_every_byte() -> None:
    assert read_returned_command(COMMAND) == COMMAND
    general_signing = b"\xdf\x09\x01\x20"
    assert read_returned_command(general_signing) == general_signing


def test_hex_text_with_white_space_around_it() -> None:
    assert read_returned_command(b"  " + COMMAND.hex().encode() + b"\n") == COMMAND


def test_a_duis_local_command_response_gives_its_payload() -> None:
    xml = encode_local_command_response(
        LocalCommandResponse(
            request_id=RequestId(bytes(range(8)), bytes(range(8, 16)), 5),
            response_code="I0",
            response_date_time=datetime(2026, 12, 5, tzinfo=UTC),
            service_reference="6.15",
            service_reference_variant="6.15.1",
            gbcs_payload=COMMAND,
        )
    )
    assert read_returned_command(b"\n" + xml) == COMMAND


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (b"", "payload is empty"),
        (b" \n ", "payload is empty"),
        (b"<sr:Response xmlns:sr='x'/>", "not a usable DUIS LocalCommand response"),
        (b"not hex at all", "neither DUIS XML"),
        (b"\xff\xfe", "neither DUIS XML"),
    ],
)
def test_anything_else_is_refused_by_name(payload: bytes, named: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_returned_command(payload)
    assert named in str(refused.value)
