"""Tray runs a bench can rerun after a crash (client/tray.py), and a meter found already holding what its
command installs: reported with its CS02a answer, never sent the command again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench_testlib import (
    AREA_ID,
    DEVICE_ID,
    OTHER_DEVICE_ID,
    FakeCustodian,
    FakeMeter,
    LabWorld,
    _respond,
)

from vdno.client.handout import ALREADY_APPLIED, APPLIED, FAILED, hand_out
from vdno.client.tray import JournalError, TrayJournal, request_id, run_tray
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse, RoleCredentials, TrustAnchorCellDetails
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.gbcs.smki import load_certificate

# --- the journal and the request-id scheme --------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    status: str
    reason: str = ""


def test_a_run_is_journalled_and_a_rerun_reuses_its_request_ids(tmp_path: Path) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text("")
    first = TrayJournal.open(tray, "hand-out")
    assert not first.resumed and first.path == tmp_path / "tray.txt.hand-out.journal"
    assert first.run.startswith("hand-out-")
    assert first.request_id(DEVICE_ID) == f"{first.run}:{DEVICE_ID.hex()}"
    outcomes = {DEVICE_ID: Result(APPLIED), OTHER_DEVICE_ID: Result(FAILED, "custodian: UNAVAILABLE")}
    seen: list[str] = []

    def one(device_id: bytes, rid: str) -> Result:
        seen.append(rid)
        return outcomes[device_id]

    run_tray(first, [DEVICE_ID, OTHER_DEVICE_ID], one, APPLIED)
    lines = [json.loads(line) for line in first.path.read_text().splitlines()]
    assert lines[0]["run"] == first.run and lines[0]["tray"] == "tray.txt"
    assert [(entry["requestId"], entry["status"]) for entry in lines[1:]] == [
        (first.request_id(DEVICE_ID), APPLIED),
        (first.request_id(OTHER_DEVICE_ID), FAILED),
    ]

    # A meter failed: the run stays open, and the rerun (after a crash, too) repeats every request id.
    again = TrayJournal.open(tray, "hand-out")
    assert again.resumed and again.run == first.run
    outcomes[OTHER_DEVICE_ID] = Result(APPLIED)
    run_tray(again, [DEVICE_ID, OTHER_DEVICE_ID], one, APPLIED)
    assert seen[2:] == seen[:2]
    assert "finished" in json.loads(again.path.read_text().splitlines()[-1])

    # Every meter applied: the run is finished; the next run of the tray is a new one.
    third = TrayJournal.open(tray, "hand-out")
    assert not third.resumed and third.run != first.run
    # Other kinds of run keep journals of their own.
    assert TrayJournal.open(tray, "rotate").path.name == "tray.txt.rotate.journal"


def test_a_given_run_id_names_the_request_ids_and_new_run_starts_afresh(tmp_path: Path) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text("")
    given = TrayJournal.open(tray, "hand-out", run="dock-7.2026-12-05")
    assert given.request_id(DEVICE_ID) == f"dock-7.2026-12-05:{DEVICE_ID.hex()}"
    assert request_id("dock-7.2026-12-05", DEVICE_ID) == given.request_id(DEVICE_ID)
    assert TrayJournal.open(tray, "hand-out").run == "dock-7.2026-12-05"  # open: resumed without the flag
    assert TrayJournal.open(tray, "hand-out", run="dock-7.2026-12-05").resumed
    fresh = TrayJournal.open(tray, "hand-out", new_run=True)
    assert not fresh.resumed and fresh.run != "dock-7.2026-12-05"
    other = TrayJournal.open(tray, "hand-out", run="dock-8")  # another run id: a new run
    assert not other.resumed and other.run == "dock-8"
    for bad in ("", "a" * 48, "has:colon", "has space"):
        with pytest.raises(JournalError, match="run id"):
            TrayJournal.open(tray, "hand-out", run=bad)


def test_a_torn_last_line_is_ignored_and_an_unreadable_header_is_named(tmp_path: Path) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text("")
    journal = TrayJournal.open(tray, "hand-out")
    journal.record(DEVICE_ID, FAILED, "killed")
    with journal.path.open("a") as out:
        out.write('{"device": "00db')  # the bench was killed while writing this line
    assert TrayJournal.open(tray, "hand-out").run == journal.run
    journal.path.write_text("not json\n")
    with pytest.raises(JournalError, match="no readable header"):
        TrayJournal.open(tray, "hand-out")
    assert not TrayJournal.open(tray, "hand-out", new_run=True).resumed


# --- a meter that already holds what its command installs ---------------------------------------------


class AppliedMeter(FakeMeter):
    """A meter that applied its command before the bench crashed: its NO cells hold the area's certificates
    and its NO seq number is the command's floor (0), or `seq_number`."""

    def __init__(self, world: LabWorld, seq_number: int = 0) -> None:
        super().__init__(world)
        self.seq_number = seq_number

    def send(self, device_id: bytes, message: bytes) -> bytes:
        header = decode_message(message).apdu.header
        if header.message_code != MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
            return super().send(device_id, message)
        self.sent.append(message)
        area = self.world.areas[AREA_ID]
        ds, ka = load_certificate(area.ds_cert), load_certificate(area.ka_cert)
        cells = (
            TrustAnchorCellDetails(0, 0, ds.entity_id, ds.subject_key_identifier),
            TrustAnchorCellDetails(4, 0, ka.entity_id, ka.subject_key_identifier),
        )
        role = RoleCredentials(3, 0, self.seq_number, cells)
        return _respond(self.world, header, ProvideSecurityCredentialsResponse((role,)).encode())


def test_a_meter_holding_the_commands_certificates_is_reported_with_its_cs02a_answer(world: LabWorld) -> None:
    api, meter = FakeCustodian(world), AppliedMeter(world)
    result = hand_out(api, meter, world.bundle, DEVICE_ID, AREA_ID, request_id="run:1")
    assert result.status == APPLIED and result.reason == ALREADY_APPLIED
    codes = [decode_message(m).apdu.header.message_code for m in meter.sent]
    assert MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR not in codes  # not sent again
    [(rid, reported)] = api.reports
    assert rid == "run:1"
    assert decode_message(reported).apdu.header.message_code == MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS
    assert reported == api.requests[0][4]  # the meter's signed answer, read before asking


def test_a_meter_whose_seq_number_moved_on_is_sent_the_command(world: LabWorld) -> None:
    api, meter = FakeCustodian(world), AppliedMeter(world, seq_number=9)
    result = hand_out(api, meter, world.bundle, DEVICE_ID, AREA_ID, request_id="run:2")
    codes = [decode_message(m).apdu.header.message_code for m in meter.sent]
    assert MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR in codes
    assert result.reason != ALREADY_APPLIED
