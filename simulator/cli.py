"""`vdno-sim serve`: a tray of simulated SMETS2 devices on loopback, speaking the frame protocol
(vdno/device_frames.py)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import typer
from cryptography.hazmat.primitives import serialization

from vdno import exit_codes
from vdno.exit_codes import fail_command
from vdno.gbcs.errors import GbcsError
from vdno.simulator.errors import ProfileError
from vdno.simulator.tray import Tray, TrayServer
from vdno.tool_group import ToolGroup

app = typer.Typer(
    cls=ToolGroup,
    add_completion=False,
    no_args_is_help=True,
    help=(
        "vdno SMETS2 device simulator. Exit codes: 0 done; 2 usage error or unusable input (profiles, "
        "device list, lab state folder, port)."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"vdno-sim {version('vdno')}")
        except PackageNotFoundError:
            typer.echo("vdno-sim (not installed)")
        raise typer.Exit(exit_codes.OK)


@app.callback()
def main(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """vdno SMETS2 device simulator."""


def _fail(message: str, json_output: bool, code: int = exit_codes.USAGE) -> NoReturn:
    fail_command("vdno-sim", message, code, json_output=json_output)


@app.command()
def serve(
    profiles: Path | None = typer.Option(None, "--profiles", help="folder of device profile *.json files"),
    devices_file: Path | None = typer.Option(
        None, "--devices", metavar="FILE", help='device list {"devices": [profile | "profile file", ...]}'
    ),
    port: int = typer.Option(0, "--port", help="TCP port on 127.0.0.1 (0 = any free port)"),
    idle_timeout: float = typer.Option(
        30.0, "--idle-timeout", help="seconds before an idle connection closes"
    ),
    json_output: bool = typer.Option(
        False, "--json", help='print {"listening": "127.0.0.1:PORT", "port", "devices"} as one JSON line'
    ),
) -> None:
    """Serve simulated devices on 127.0.0.1; prints `vdno-sim listening on 127.0.0.1:PORT` first (with
    --json, one JSON line instead)."""
    if (profiles is None) == (devices_file is None):
        _fail("give exactly one of --profiles DIR or --devices FILE", json_output)
    try:
        if profiles is not None:
            devices = Tray.from_directory(profiles)
        else:
            assert devices_file is not None
            devices = Tray.from_tray_file(devices_file)
    except ProfileError as exc:
        _fail(str(exc), json_output)
    if not len(devices):
        _fail("no device profiles found", json_output)
    server = TrayServer(devices, port=port, idle_timeout=idle_timeout)
    try:
        bound = server.start()
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {exc}", json_output)
    # Handlers before the 'listening' line: a caller may send SIGTERM as soon as it reads it.
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if json_output:
        listening = {"listening": f"127.0.0.1:{bound}", "port": bound, "devices": devices.device_ids()}
        sys.stdout.write(json.dumps(listening) + "\n")
    else:
        sys.stdout.write(f"vdno-sim listening on 127.0.0.1:{bound}\n")
        sys.stdout.write(f"devices: {', '.join(devices.device_ids())}\n")
    sys.stdout.flush()

    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()


AREA_IDS = range(10, 24)


def _area_range(text: str) -> list[int]:
    """'10-23', '12' or '10,12,14' -> area ids (each 10-23)."""
    areas: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            areas += range(int(low), int(high or low) + 1)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an area list such as 10-23 or 10,12") from None
    bad = [a for a in areas if a not in AREA_IDS]
    if bad or not areas:
        raise typer.BadParameter(f"areas must be DNO areas 10-23, got {text!r}")
    return areas


@app.command("make-tray")
def make_tray(
    state: Path = typer.Option(..., "--state", help="lab state folder (pki/, areas/, acb/, keystore/)"),
    out: Path = typer.Option(..., "--out", help="folder for the device profiles (*.json)"),
    count: int = typer.Option(20, "--count", min=1, max=100000, help="how many meters"),
    first: int = typer.Option(1, "--first", min=0, help="index of the first device id (00DB5EED + index)"),
    in_areas: str | None = typer.Option(
        None,
        "--commissioned-in",
        "--in-areas",
        metavar="AREAS",
        help="meters commissioned in these areas (in service there), in turn: e.g. 12,14 or 10-23",
    ),
    vanilla: int | None = typer.Option(
        None, "--vanilla", metavar="G", help="meters in stock on vanilla generation G instead"
    ),
    tray_file: Path | None = typer.Option(
        None,
        "--tray",
        metavar="FILE",
        help="also write the tray file for vdno-bench: 'DEVICE AREA' lines (AREA: a hand-out target)",
    ),
    mac: bool = typer.Option(True, "--mac/--no-mac", help="meters require DCC's ACB-SMD MAC (as real ones)"),
    json_output: bool = typer.Option(False, "--json", help="print what was made as JSON"),
) -> None:
    """Make a tray of lab meters from a lab state folder (`vdno-labdcc init` and `vdno-server init`):
    device keys and certificates from the lab device CA, root cell = the lab root, ACB KA cell = the lab
    ACB, NO cells = an area DNO's set (--commissioned-in) or a vanilla generation's (--vanilla). Device
    certificates and keys go to STATE/keystore/ too, where the lab ACB finds them; --tray FILE writes the
    tray file the bench reads (`vdno-bench hand-in order --tray FILE`, `hand-out --tray FILE`)."""
    from vdno.dno_areas import DNO_AREAS
    from vdno.gbcs.smki import load_certificate
    from vdno.labpki.errors import LabPkiError
    from vdno.labpki.hierarchy import LabHierarchy
    from vdno.labpki.store import read_certificate
    from vdno.simulator.lab import (
        COMMISSIONED_SEQ_NUMBER,
        LabCredentialSet,
        export_device_credentials,
        lab_meter_profile,
        tray_device_id,
        write_tray,
    )

    if (in_areas is None) == (vanilla is None):
        _fail("make-tray: give exactly one of --commissioned-in AREAS or --vanilla G", json_output)
    areas = None if in_areas is None else _area_range(in_areas)

    def credential_set(ds_path: Path, ka_path: Path) -> LabCredentialSet:
        ds = read_certificate(ds_path)
        entity = load_certificate(ds.public_bytes(serialization.Encoding.DER)).entity_id
        return LabCredentialSet(entity, ds, read_certificate(ka_path))

    holders: list[tuple[int | None, LabCredentialSet]]
    try:
        pki = LabHierarchy.load(state / "pki")
        acb_ka = read_certificate(state / "acb" / "acb-ka.pem") if mac else None
        if vanilla is not None:
            holders = [
                (None, credential_set(*(state / "pki" / f"vanilla-g{vanilla}-{u}.pem" for u in ("ds", "ka"))))
            ]
            seq_number = 0
        else:
            assert in_areas is not None
            holders = [
                (area, credential_set(*(state / "areas" / f"area-{area}-{u}.pem" for u in ("ds", "ka"))))
                for area in areas or ()
            ]
            seq_number = COMMISSIONED_SEQ_NUMBER
    except (OSError, LabPkiError, GbcsError) as exc:
        _fail(f"make-tray: {state} is not a usable lab state folder: {exc}", json_output)
    profiles = []
    meters: list[dict[str, Any]] = []
    lines = ["# device area  (vdno-sim make-tray; AREA: the hand-out target)"]
    for i in range(count):
        area, holder = holders[i % len(holders)]
        device = tray_device_id(first + i)
        profiles.append(
            lab_meter_profile(
                device, pki.device_ca, pki.root.certificate, holder, acb_ka, seq_number, require_acb_mac=mac
            )
        )
        target = (
            AREA_IDS[(i + 7) % len(AREA_IDS)] if area is None else AREA_IDS[(area - 10 + 7) % len(AREA_IDS)]
        )
        lines.append(f"{device.hex()} {target}")
        held = f"vanilla generation {vanilla}" if area is None else f"area {area} ({DNO_AREAS[area]})"
        meters.append({"device": device.hex(), "holds": held, "handOutArea": target})
    write_tray(profiles, out)
    exported = export_device_credentials(profiles, state / "keystore")
    if tray_file is not None:
        tray_file.parent.mkdir(parents=True, exist_ok=True)
        tray_file.write_text("\n".join(lines) + "\n")
    where = f"in areas {in_areas}" if in_areas is not None else f"on vanilla generation {vanilla}"
    if json_output:
        document = {
            "profiles": str(out),
            "keystore": str(state / "keystore"),
            "tray": None if tray_file is None else str(tray_file),
            "meters": meters,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(
        f"wrote {len(profiles)} meter profiles {where} to {out}; {exported} device certificates to "
        f"{state / 'keystore'}" + (f"; tray file {tray_file}" if tray_file else "")
    )
