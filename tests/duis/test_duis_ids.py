from __future__ import annotations

import pytest

from vdno.duis.errors import DuisError
from vdno.duis.ids import RequestId, format_eui, parse_eui

NO = bytes.fromhex("90B3D51F30020000")
ESME = bytes.fromhex("00DB1234567890A0")


def test_request_id_parses_and_prints_upper_case_hyphenated() -> None:
    rid = RequestId.parse("90-b3-d5-1f-30-02-00-00:00-db-12-34-56-78-90-a0:1200")
    assert rid == RequestId(NO, ESME, 1200)
    assert str(rid) == "90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:1200"
    assert RequestId.parse(str(rid)) == rid


def test_request_id_counter_bounds() -> None:
    top = RequestId.parse(f"{format_eui(NO)}:{format_eui(ESME)}:{2**64 - 1}")
    assert top.counter == 2**64 - 1
    assert RequestId(NO, ESME, 0).counter == 0
    with pytest.raises(DuisError, match="counter"):
        RequestId.parse(f"{format_eui(NO)}:{format_eui(ESME)}:{2**64}")
    with pytest.raises(DuisError, match="counter"):
        RequestId(NO, ESME, 2**64)
    with pytest.raises(DuisError, match="counter"):
        RequestId(NO, ESME, -1)
    with pytest.raises(DuisError, match="counter"):
        RequestId(NO, ESME, True)


@pytest.mark.parametrize(
    "text",
    [
        "90B3D51F30020000:00DB1234567890A0:1200",  # no hyphens
        "90-B3-D5-1F-30-02-00:00-DB-12-34-56-78-90-A0:1200",  # 7 octets
        "90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:01200",  # leading zero
        "90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:-1",
        "90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0",
        "90-B3-D5-1F-30-02-00-0G:00-DB-12-34-56-78-90-A0:1",
        " 90-B3-D5-1F-30-02-00-00:00-DB-12-34-56-78-90-A0:1",
        "",
    ],
)
def test_request_id_refuses_malformed_text(text: str) -> None:
    with pytest.raises(DuisError, match="RequestID"):
        RequestId.parse(text)


def test_request_id_refuses_wrong_sized_euis() -> None:
    with pytest.raises(DuisError, match="originator"):
        RequestId(NO[:7], ESME, 1)
    with pytest.raises(DuisError, match="target"):
        RequestId(NO, ESME + b"\x00", 1)


def test_eui_text_form() -> None:
    assert format_eui(NO) == "90-B3-D5-1F-30-02-00-00"
    assert parse_eui("90-b3-d5-1f-30-02-00-00") == NO
    with pytest.raises(DuisError, match="EUI"):
        parse_eui("90:B3:D5:1F:30:02:00:00")
    with pytest.raises(DuisError, match="EUI"):
        format_eui(b"\x00" * 7)
