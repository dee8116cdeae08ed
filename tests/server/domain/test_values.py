"""How refusals name where the records put a meter: areas by number and name, never a raw id or None."""

from __future__ import annotations

import pytest

from vdno.server.domain.values import CustodyState, area_phrase, custody_phrase


def test_an_area_is_named_by_its_number_and_name() -> None:
    assert area_phrase(12) == "area 12 (London)"
    assert area_phrase(23) == "area 23 (Yorkshire)"
    assert area_phrase(9) == "area 9"  # not a GB DNO area: the number alone


@pytest.mark.parametrize(
    ("state", "area", "generation", "phrase"),
    [
        (CustodyState.AREA, 12, None, "already handed out to area 12 (London)"),
        (CustodyState.VANILLA, None, 2, "in stock on vanilla generation 2"),
        (CustodyState.HAND_IN_ORDERED, 14, None, "with a hand-in ordered from area 14 (West Midlands)"),
        (CustodyState.HAND_IN_AUTHORISED, 10, 1, "with a hand-in authorised from area 10 (Eastern England)"),
        (CustodyState.UNKNOWN, None, None, "holding certificates of an entity this custodian does not know"),
    ],
)
def test_each_custody_state_reads_as_people_say_it(
    state: CustodyState, area: int | None, generation: int | None, phrase: str
) -> None:
    assert custody_phrase(state, area, generation) == phrase
    assert "None" not in phrase
