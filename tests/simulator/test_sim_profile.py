"""Device profiles: JSON round trip, file references, errors, state snapshots."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sim_testlib import (
    LAB_DEVICE,
    NO_A,
    RTDS_CELL_FILES,
    World,
    assert_unchanged_outcomes,
    cs02b,
    lab_device,
    outcomes,
    rtds_profile,
)

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, StatusCode
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.errors import ProfileError
from vdno.simulator.lab import make_device_profile, write_tray
from vdno.simulator.profile import ROOT_CELL, DeviceProfile, load_profile, save_profile


def _same(a: DeviceProfile, b: DeviceProfile) -> None:
    assert a.device_id == b.device_id
    assert dict(a.cells) == dict(b.cells)
    assert dict(a.seq_numbers) == dict(b.seq_numbers)
    assert dict(a.originator_counters) == dict(b.originator_counters)
    assert (a.require_acb_mac, a.allow_local_reads, a.clock) == (
        b.require_acb_mac,
        b.allow_local_reads,
        b.clock,
    )
    for x, y in ((a.device_ds, b.device_ds), (a.device_ka, b.device_ka)):
        assert x.certificate == y.certificate
        assert (x.private_key is None) == (y.private_key is None)
        if x.private_key is not None and y.private_key is not None:
            assert x.private_key.private_numbers() == y.private_key.private_numbers()


def test_round_trip_lab_profile(world: World, tmp_path: Path) -> None:
    profile = make_device_profile(
        LAB_DEVICE,
        world.device_ca,
        {ROOT_CELL: world.root.certificate, NO_DS_CELL: world.no_a_ds.certificate},
        allow_local_reads=True,
        clock=datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC),
        now=world.now,
    )
    assert profile.seq_numbers == {3: 0}
    path = tmp_path / "d.json"
    save_profile(profile, path)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the device's private keys
    loaded = load_profile(path)
    _same(profile, loaded)
    data = json.loads(path.read_text())
    assert data["device_id"] == LAB_DEVICE.hex()
    assert {(c["role"], c["key_usage"]) for c in data["cells"]} == {(0, "root"), (3, "ds")}
    assert data["clock"].startswith("2030-05-06T07:08:09")


def test_round_trip_rtds_profile_and_file_references(vectors_dir: Path, tmp_path: Path) -> None:
    profile = rtds_profile(vectors_dir)
    save_profile(profile, tmp_path / "rtds.json")
    _same(profile, load_profile(tmp_path / "rtds.json"))

    # the hand-written form: certificate_file references relative to the profile
    keystore = tmp_path / "keystore"
    shutil.copytree(vectors_dir / "keystore", keystore)
    usage = {0: "ds", 4: "ka", 5: "root"}
    doc = {
        "device_id": "00DB1234567890A0",
        "cells": [
            {
                "role": int(cell.role),
                "key_usage": usage[int(cell.key_usage)],
                "cell_usage": int(cell.cell_usage),
                "certificate_file": f"keystore/{name}",
            }
            for cell, name in RTDS_CELL_FILES.items()
        ],
        "seq_numbers": {"2": 0, "3": 1},
        "device_ds": {"certificate_file": "keystore/00db1234567890a0-ds.pem"},
        "device_ka": {"certificate_file": "keystore/00db1234567890a0-ka.pem"},
        "require_acb_mac": False,
        "clock": "2020-01-01T00:00:00Z",
    }
    (tmp_path / "hand.json").write_text(json.dumps(doc))
    _same(profile, load_profile(tmp_path / "hand.json"))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"device_id": "xyz"}, "device_id"),
        ({"device_id": "00db"}, "device_id"),
        ({"cells": [{"role": 3, "key_usage": "dsx", "certificate_pem": "x"}]}, "key_usage"),
        ({"cells": [{"role": 3, "key_usage": "ds"}]}, "certificate_pem or certificate_file"),
        ({"cells": [{"role": 3, "key_usage": "ds", "certificate_file": "missing.pem"}]}, "cannot read"),
        ({"cells": [{"role": 3, "key_usage": "ds", "certificate_pem": "garbage"}]}, "not an X.509"),
        ({"seq_numbers": {"three": 1}}, "seq_numbers"),
        ({"seq_numbers": {"3": -1}}, "seq_numbers"),
        ({"require_acb_mac": "yes"}, "require_acb_mac"),
        ({"clock": "tomorrow"}, "clock"),
        ({"device_ds": {"private_key_pem": "nope"}}, "private key"),
        ({"format": "other/9"}, "format"),
    ],
)
def test_profile_errors(tmp_path: Path, patch: dict[str, object], message: str) -> None:
    doc: dict[str, object] = {"device_id": "00db000000000001", "cells": []}
    doc.update(patch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_not_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "x.json")
    with pytest.raises(ProfileError):
        load_profile(tmp_path / "absent.json")


def test_key_certificate_mismatch(world: World, tmp_path: Path) -> None:
    profile = make_device_profile(LAB_DEVICE, world.device_ca, {}, now=world.now)
    save_profile(profile, tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["device_ds"]["certificate_pem"] = doc["device_ka"]["certificate_pem"]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="does not match"):
        load_profile(tmp_path / "p.json")


def test_state_snapshot_survives_restart(world: World, tmp_path: Path) -> None:
    device = lab_device(world, require_acb_mac=False)
    command = cs02b(
        world.no_a_ds,
        NO_A,
        LAB_DEVICE,
        1000,
        [(world.no_b_ka, NO_KA_CELL)],  # A stays in the DS cell
        [world.issuing],
    ).encode()
    assert [o.status for o in outcomes(device.process(command), device)] == [0]
    save_profile(device.to_profile(), tmp_path / "after.json")

    restarted = SimulatedDevice(load_profile(tmp_path / "after.json"))
    assert restarted.cells == device.cells
    assert restarted.originator_counters == {NO_A: 1000}
    # the replay is still recognised after the restart
    assert_unchanged_outcomes(restarted.process(command), restarted, StatusCode.BAD_SEQUENCE_NUMBER)


def test_write_tray(world: World, tmp_path: Path) -> None:
    profiles = [
        make_device_profile(bytes.fromhex(f"00db0000000000{i:02x}"), world.device_ca, {}, now=world.now)
        for i in range(3)
    ]
    paths = write_tray(profiles, tmp_path / "tray")
    assert [p.name for p in paths] == [f"00db0000000000{i:02x}.json" for i in range(3)]
    assert load_profile(paths[1]).device_id == bytes.fromhex("00db000000000001")
