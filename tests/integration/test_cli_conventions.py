"""The tools' conventions against a real server, through their entry points: `vdno-sim make-tray` makes trays
from the lab PKI (meters commissioned in given areas, or on vanilla) that `vdno-sim serve` holds and
`vdno-bench --tray` runs; a run's JSON is one document with a summary and a machine-readable error code per
meter; a rerun after success is "already applied"; refusals name areas as people do; a run that stops early
is one JSON error object with the exit code of the table; `vdno-server init`, `verify-audit` and
`vdno-admin` speak JSON too."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_testlib import BIN, Deployment

from vdno import exit_codes

# Device indexes of the meters make-tray makes here (00DB5EED + index): clear of Deployment.meters'.
COMMISSIONED_FIRST, VANILLA_FIRST = 91_000, 92_000


def tool(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def make_tray(deployment: Deployment, folder: Path, *how: str) -> tuple[Path, list[dict[str, Any]]]:
    """`vdno-sim make-tray ... --tray FILE --json`: (the tray file, the meters made)."""
    tray = folder / "tray.txt"
    done = tool(
        "vdno-sim", "make-tray", "--state", str(deployment.state), "--out", str(folder / "profiles"),
        "--tray", str(tray), "--json", *how,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["tray"] == str(tray) and made["profiles"] == str(folder / "profiles")
    return tray, made["meters"]


@contextlib.contextmanager
def served(profiles: Path) -> Iterator[str]:
    """`vdno-sim serve --profiles DIR --json`: yields HOST:PORT from its one JSON line."""
    proc = subprocess.Popen(
        [str(BIN / "vdno-sim"), "serve", "--profiles", str(profiles), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        listening = json.loads(proc.stdout.readline())
        yield listening["listening"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(deployment: Deployment, *args: str, sim: str = "127.0.0.1:9", dcc: str | None = None) -> Any:
    settings = [
        "--config",
        str(deployment.state / "clients" / "bench-01.toml"),
        "--server",
        deployment.target,
    ]
    settings += ["--sim", sim] + ([] if dcc is None else ["--dcc", dcc])
    return tool("vdno-bench", *args, *settings, "--json")


def test_make_tray_commissioned_in_areas_feeds_a_hand_in_order(
    deployment: Deployment, tmp_path: Path
) -> None:
    tray, meters = make_tray(
        deployment, tmp_path, "--commissioned-in", "12,14", "--count", "2", "--first", str(COMMISSIONED_FIRST)
    )
    assert [m["holds"] for m in meters] == ["area 12 (London)", "area 14 (West Midlands)"]
    lines = [line.split() for line in tray.read_text().splitlines() if not line.startswith("#")]
    assert [device for device, _ in lines] == [m["device"] for m in meters]

    with served(tmp_path / "profiles") as sim:
        done = bench(deployment, "hand-in", "order", "--tray", str(tray), sim=sim)
    assert done.returncode == exit_codes.OK, done.stdout + done.stderr
    run = json.loads(done.stdout)
    assert run["command"] == "hand-in order" and run["run"].startswith("hand-in-order-")
    assert run["summary"] == {"total": 2, "ordered": 2, "failed": 0, "already_applied": 0}
    assert [(m["device"], m["status"], m["error_code"], m["area"]) for m in run["meters"]] == [
        (meters[0]["device"], "ordered", None, 12),
        (meters[1]["device"], "ordered", None, 14),
    ]
    assert "area 12 (London)" in run["meters"][0]["reason"]


def test_a_hand_out_tray_then_its_rerun_then_a_meter_sent_elsewhere(
    deployment: Deployment, tmp_path: Path
) -> None:
    tray, meters = make_tray(
        deployment, tmp_path, "--vanilla", "1", "--count", "3", "--first", str(VANILLA_FIRST)
    )
    assert {m["holds"] for m in meters} == {"vanilla generation 1"}
    areas = {m["device"]: m["handOutArea"] for m in meters}
    with served(tmp_path / "profiles") as sim, deployment.dcc_server() as dcc:
        first = bench(deployment, "hand-out", "--tray", str(tray), sim=sim, dcc=dcc)
        rerun = bench(deployment, "hand-out", "--tray", str(tray), "--new-run", sim=sim, dcc=dcc)
        moved = tmp_path / "elsewhere.txt"
        device = meters[0]["device"]
        other_area = 10 if areas[device] != 10 else 11
        moved.write_text(f"{device} {other_area}\n")
        elsewhere = bench(deployment, "hand-out", "--tray", str(moved), sim=sim, dcc=dcc)

    assert first.returncode == exit_codes.OK, first.stdout + first.stderr
    done = json.loads(first.stdout)
    assert done["summary"] == {"total": 3, "applied": 3, "refused": 0, "failed": 0, "already_applied": 0}
    assert all(m["error_code"] is None and m["area"] == areas[m["device"]] for m in done["meters"])

    # A rerun after success (another run, so other request ids): every meter is already applied, not failed.
    assert rerun.returncode == exit_codes.OK, rerun.stdout + rerun.stderr
    again = json.loads(rerun.stdout)
    assert again["run"] != done["run"]
    assert again["summary"] == {"total": 3, "applied": 3, "refused": 0, "failed": 0, "already_applied": 3}
    for meter in again["meters"]:
        assert meter["error_code"] is None
        assert meter["reason"].startswith(f"already applied: the meter is in area {areas[meter['device']]} (")

    # The same meter asked for another area: refused, naming where it is as people do.
    assert elsewhere.returncode == exit_codes.REFUSED, elsewhere.stdout + elsewhere.stderr
    [refused] = json.loads(elsewhere.stdout)["meters"]
    assert refused["status"] == "failed" and refused["error_code"] == "DEVICE_NOT_VANILLA"
    names = {10: "Eastern England", 11: "East Midlands", 12: "London", 13: "Merseyside and North Wales"}
    names |= {14: "West Midlands", 15: "North Eastern England", 16: "North Western England"}
    names |= {17: "Northern Scotland", 18: "Southern Scotland", 19: "South Eastern England"}
    names |= {20: "Southern England", 21: "South Wales", 22: "South Western England", 23: "Yorkshire"}
    assert f"already handed out to area {areas[device]} ({names[areas[device]]})" in refused["reason"]
    assert "None" not in refused["reason"] and "4C4142" not in refused["reason"].upper()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_cannot_be_reached_is_one_json_error_exit_3(deployment: Deployment) -> None:
    settings = ["--config", str(deployment.state / "clients" / "bench-01.toml")]
    done = tool(
        "vdno-bench", "hand-out", "--device", "00db5eed00000001", "--area", "12", "--json", *settings,
        "--server", f"127.0.0.1:{free_port()}", "--sim", "127.0.0.1:9",
    )  # fmt: skip
    assert done.returncode == exit_codes.UNAVAILABLE, done.stderr
    error = json.loads(done.stdout)
    assert error["error_code"] == "SERVER_UNAVAILABLE" and error["exit_code"] == exit_codes.UNAVAILABLE
    assert error["error"].startswith("cannot fetch the trust bundle: UNAVAILABLE")
    assert len(done.stderr.splitlines()) == 1


def test_a_tls_mistake_is_one_json_error_exit_2(deployment: Deployment, tmp_path: Path) -> None:
    done = bench(
        deployment, "hand-out", "--device", "00db5eed00000001", "--area", "12",
        "--key", str(deployment.state / "tls" / "server.key"),
    )  # fmt: skip
    assert done.returncode == exit_codes.USAGE, done.stderr
    error = json.loads(done.stdout)
    assert error["error_code"] == "TLS_FAILED" and "is not the key of --cert" in error["error"]


def test_a_device_transport_that_cannot_be_reached_is_exit_3(deployment: Deployment) -> None:
    done = bench(
        deployment, "hand-out", "--device", "00db5eed00000001", "--area", "12", sim=f"127.0.0.1:{free_port()}"
    )
    assert done.returncode == exit_codes.UNAVAILABLE, done.stderr
    assert json.loads(done.stdout)["error_code"] == "TRANSPORT_UNAVAILABLE"


def test_server_init_and_verify_audit_speak_json(deployment: Deployment) -> None:
    again = tool("vdno-server", "init", "--state", str(deployment.state), "--json", timeout=300)
    assert again.returncode == exit_codes.OK, again.stderr
    assert json.loads(again.stdout) == {
        "state": str(deployment.state.resolve()),
        "changed": False,
        "changes": [],
    }

    reports = []
    for workers in ("1", "0", "2"):  # one pass, one a CPU, two (a log this short is walked in one pass)
        verified = tool(
            "vdno-server", "verify-audit", "--config", str(deployment.state / "config.toml"), "--json",
            "--workers", workers,
        )  # fmt: skip
        assert verified.returncode == exit_codes.OK, verified.stderr
        reports.append(json.loads(verified.stdout))
    assert reports[0]["intact"] is True and reports[0]["entries"] > 0 and reports[0]["problem"] is None
    assert reports[1:] == reports[:1] * 2

    negative = tool(
        "vdno-server", "verify-audit", "--config", str(deployment.state / "config.toml"), "--json",
        "--workers", "-1",
    )  # fmt: skip
    assert negative.returncode == exit_codes.USAGE
    assert json.loads(negative.stdout)["error"] == (
        "Invalid value for '--workers': Input should be greater than or equal to 0"
    )


def test_admin_refusals_carry_the_custodians_error_code(deployment: Deployment) -> None:
    done = tool(
        "vdno-admin", "--config", str(deployment.state / "clients" / "officer-01.toml"),
        "--server", deployment.target, "--json", "fleet", "history", "00db5eedffffffff",
    )  # fmt: skip
    assert done.returncode == exit_codes.REFUSED, done.stderr
    error = json.loads(done.stdout)
    assert error["error_code"] == "UNKNOWN_DEVICE" and error["exit_code"] == exit_codes.REFUSED


@pytest.mark.parametrize("command", [("hand-out",), ("hand-in", "order")], ids=" ".join)
def test_a_bad_tray_is_refused_before_any_call(
    deployment: Deployment, tmp_path: Path, command: tuple[str, ...]
) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text("00db5eed00000001 12\n00db5eed00000001 13\n")
    done = bench(deployment, *command, "--tray", str(tray))
    assert done.returncode == exit_codes.USAGE
    assert json.loads(done.stdout)["problems"] == ["line 2: device 00db5eed00000001 is already on line 1"]
    assert not list(tmp_path.glob("*.journal"))


def test_an_imported_file_refused_carries_the_custodians_error_code(
    deployment: Deployment, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.hex"
    junk.write_text("00\n")
    done = tool(
        "vdno-admin", "--config", str(deployment.state / "clients" / "officer-01.toml"),
        "--server", deployment.target, "--json", "hand-in", "import", str(junk),
    )  # fmt: skip
    assert done.returncode == exit_codes.REFUSED, done.stderr
    [result] = json.loads(done.stdout)
    assert result["status"] == "refused" and result["file"] == str(junk)
    assert re.fullmatch(r"[A-Z]+(_[A-Z]+)+", result["error_code"]), result
    assert result["error_code"] not in ("CUSTODIAN_REFUSED", "SERVER_UNAVAILABLE")
    as_table = tool(
        "vdno-admin", "--config", str(deployment.state / "clients" / "officer-01.toml"),
        "--server", deployment.target, "hand-in", "import", str(junk), env=dict(os.environ, COLUMNS="300"),
    )  # fmt: skip
    assert as_table.returncode == exit_codes.REFUSED
    assert "error_code" in as_table.stdout and result["error_code"] in as_table.stdout


def test_one_meter_by_its_device_with_a_request_id_saves_the_command_it_applied(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, [meter] = make_tray(
        deployment, tmp_path, "--vanilla", "1", "--count", "1", "--first", str(VANILLA_FIRST + 10)
    )
    saved = tmp_path / "commands"
    with served(tmp_path / "profiles") as sim, deployment.dcc_server() as dcc:
        done = bench(
            deployment, "hand-out", "--device", meter["device"], "--area", str(meter["handOutArea"]),
            "--request-id", "r-42", "--save-commands", str(saved), sim=sim, dcc=dcc,
        )  # fmt: skip

    assert done.returncode == exit_codes.OK, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["run"] is None
    assert document["summary"] == {"total": 1, "applied": 1, "refused": 0, "failed": 0, "already_applied": 0}
    [result] = document["meters"]
    assert result["error_code"] is None and result["status"] == "applied" and result["requestId"] == "r-42"
    [row] = deployment.issuance_rows("bench-01", "r-42")
    assert row.status == "applied" and bytes(row.device_id).hex() == meter["device"]
    assert row.counter == result["counter"]
    command_file = saved / f"{meter['device']}-{result['counter']}.hex"
    assert command_file.read_text().strip() == result["appliedCommand"]


def test_a_tray_with_a_meter_the_bench_cannot_read_is_exit_1_and_its_run_stays_open(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A meter the device transport does not hold fails (METER_UNREADABLE) and leaves the run open: reruns
    reuse its request ids until every meter has succeeded; --request-id and --new-run start other runs."""
    tray, [meter] = make_tray(
        deployment, tmp_path, "--vanilla", "1", "--count", "1", "--first", str(VANILLA_FIRST + 20)
    )
    unknown = "00db5eed0000ffff"
    tray.write_text(f"{meter['device']} {meter['handOutArea']}\n{unknown} {meter['handOutArea']}\n")
    settings = [
        "--config",
        str(deployment.state / "clients" / "bench-01.toml"),
        "--server",
        deployment.target,
    ]

    def run(*args: str) -> dict[str, Any]:
        done = bench(deployment, "hand-out", "--tray", str(tray), *args, sim=sim, dcc=dcc)
        assert done.returncode == exit_codes.REFUSED, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    with served(tmp_path / "profiles") as sim, deployment.dcc_server() as dcc:
        as_table = tool(
            "vdno-bench", "hand-out", "--tray", str(tray), *settings, "--sim", sim, "--dcc", dcc,
            env=dict(os.environ, COLUMNS="200"),
        )  # fmt: skip
        first = run()
        given = run("--request-id", "dock-3")
        fresh = run("--new-run")

    assert as_table.returncode == exit_codes.REFUSED, as_table.stdout + as_table.stderr
    assert "Hand-out summary" in as_table.stdout and "applied" in as_table.stdout
    assert "1 of 2 meters not applied" in as_table.stderr

    # The rerun (no flag) resumed the table run: same run, same request id, nothing issued twice.
    assert [m["status"] for m in first["meters"]] == ["applied", "failed"]
    assert first["meters"][1]["error_code"] == "METER_UNREADABLE" and unknown in first["meters"][1]["device"]
    assert first["summary"] == {"total": 2, "applied": 1, "refused": 0, "failed": 1, "already_applied": 1}
    [issued] = deployment.issuance_rows("bench-01", f"{first['run']}:{meter['device']}")
    assert issued.status == "applied"
    assert given["run"] == "dock-3" and given["meters"][0]["requestId"] == f"dock-3:{meter['device']}"
    assert fresh["run"] not in (first["run"], "dock-3") and fresh["run"].startswith("hand-out-")
    rows = [r for r in deployment.issuance_rows("bench-01") if bytes(r.device_id).hex() == meter["device"]]
    assert len(rows) == 1, [r.request_id for r in rows]
