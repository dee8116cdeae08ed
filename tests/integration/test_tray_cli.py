"""A tray of meters handed out with the real command-line tools: `vdno-sim serve` holds the meters,
`vdno-bench hand-out --tray` talks to it and to the running service, `vdno-bench inspect` checks a
saved command offline."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_testlib import BIN, Deployment, area_entity_id, ski_of

from scripts.lab_tray import vanilla_tray_profiles
from vdno.client.handout import read_meter
from vdno.client.transport import SimulatorTransport
from vdno.gbcs.cells import KeyUsage, RemotePartyRole
from vdno.gbcs.framing import decode_message
from vdno.labdcc.parties import ACB_ENTITY_ID
from vdno.simulator.lab import write_tray

AREAS = (10, 11, 12, 20, 21, 22)


@pytest.fixture(scope="module")
def simulator(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list]]:
    """`vdno-sim serve` over a tray of fresh vanilla meters: (port, device ids)."""
    folder = tmp_path_factory.mktemp("tray-profiles")
    profiles = vanilla_tray_profiles(deployment.state, len(AREAS), first=7001)
    write_tray(profiles, folder)
    proc = subprocess.Popen(
        [str(BIN / "vdno-sim"), "serve", "--profiles", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("vdno-sim listening on 127.0.0.1:"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield int(line.rsplit(":", 1)[1]), [p.device_id for p in profiles]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vdno-bench"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_tray_across_several_areas_is_handed_out_by_the_cli(
    deployment: Deployment, simulator: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    sim_port, device_ids = simulator
    tray = tmp_path / "tray.txt"
    tray.write_text(
        "# device area\n"
        + "".join(f"{d.hex().upper()} {a}\n" for d, a in zip(device_ids, AREAS, strict=True))
    )
    saved = tmp_path / "commands"

    with deployment.dcc_server() as dcc_url:
        done = bench_cli(
            "hand-out",
            "--tray", str(tray),
            "--json",
            "--server", deployment.target,
            "--ca", str(deployment.tls_ca),
            "--cert", str(deployment.bench_cert("bench-01")),
            "--key", str(deployment.bench_key("bench-01")),
            "--sim", f"127.0.0.1:{sim_port}",
            "--dcc", dcc_url,
            "--server-name", "localhost",
            "--save-commands", str(saved),
        )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)["meters"]
    assert [(r["device"], r["area"], r["status"]) for r in results] == [
        (d.hex(), a, "applied") for d, a in zip(device_ids, AREAS, strict=True)
    ]
    counters = [r["counter"] for r in results]
    assert all(a < b for a, b in itertools.pairwise(counters))

    # One saved command per meter, as the meter received it: the released bytes inside DCC's MAC frame.
    files = {f"{r['device']}-{r['counter']}.hex": r["appliedCommand"] for r in results}
    assert sorted(p.name for p in saved.iterdir()) == sorted(files)
    for result in results:
        applied = bytes.fromhex(result["appliedCommand"])
        assert (saved / f"{result['device']}-{result['counter']}.hex").read_text().strip() == applied.hex()
        assert decode_message(applied).mac_framed
        assert decode_message(applied).apdu_bytes == bytes.fromhex(result["command"])

    # Inspected offline with the lab keystore: the vanilla signature and the ACB's MAC verify.
    inspected = bench_cli(
        "inspect",
        str(saved / sorted(files)[0]),
        "--keystore", str(deployment.state / "keystore"),
        "--acb", ACB_ENTITY_ID.hex(),
        "--json",
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    verification = json.loads(inspected.stdout)["verification"]
    assert verification["signature"]["status"] == "valid"
    assert verification["mac"]["status"] == "valid", verification

    # The meters themselves (read back through the simulator) and the service's records agree.
    with SimulatorTransport("127.0.0.1", sim_port) as transport, deployment.store() as store:
        for device_id, area in zip(device_ids, AREAS, strict=True):
            area_ds, area_ka = deployment.area_certificates(area)
            expected = {
                KeyUsage.DIGITAL_SIGNATURE: (area_entity_id(area), ski_of(area_ds)),
                KeyUsage.KEY_AGREEMENT: (area_entity_id(area), ski_of(area_ka)),
            }
            reading = read_meter(transport, device_id)
            [no_role] = [r for r in reading.credentials.roles if r.role == RemotePartyRole.NETWORK_OPERATOR]
            assert no_role.cells is not None
            reported = {c.key_usage: (c.subject_unique_id, c.subject_key_identifier) for c in no_role.cells}
            assert reported == expected, f"meter {device_id.hex()}"
            ds_cell, ka_cell = store.device_cells(device_id)
            assert ds_cell is not None and ka_cell is not None
            assert (ds_cell.entity_id, ds_cell.subject_key_identifier) == expected[KeyUsage.DIGITAL_SIGNATURE]
            assert (ka_cell.entity_id, ka_cell.subject_key_identifier) == expected[KeyUsage.KEY_AGREEMENT]
    applied = [r for r in deployment.issuance_rows("bench-01") if r.status == "applied"]
    assert sorted(bytes(r.device_id) for r in applied) == sorted(device_ids)
