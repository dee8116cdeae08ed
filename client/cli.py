"""`vdno-bench`: the bench client CLI (inspect messages; hand out vanilla meters to a DNO area)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.errors import BenchError
from client.handout import APPLIED, LAB_READER_ID, HandOutResult
from client.inspect import EXIT_CODES_HELP, EXIT_DECODE, InputError, inspect_bytes, load_input, render
from gbcs.errors import DecodeError
from gbcs.ids import parse_eui64

EXIT_USAGE = 2
AREA_MIN, AREA_MAX = 10, 23

app = typer.Typer(
    name="vdno-bench",
    help="vdno bench client: inspect GBCS CS02 messages and hand out vanilla meters to a DNO area.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"vdno-bench: {message}", err=True)
    raise typer.Exit(code)


def _eui(text: str, what: str) -> bytes:
    try:
        return parse_eui64(text)
    except DecodeError as exc:
        _fail(f"{what}: {exc}")


# --- inspect ---------------------------------------------------------------------------------------


@app.command(
    "inspect",
    short_help="Decode a CS02a/b/d/e message, name every field, verify signature and MAC.",
    help=(
        "Decode a CS02a/b/d/e message (command, pre-command, response, alert; with or without MAC header), "
        "name every field, verify its signature with the Business Originator ID's DS certificate from "
        "--keystore (<eui>-ds.pem) and, with --acb, the ACB-SMD MAC (<acb>-ka.key with <device>-ka.pem, or "
        "<device>-ka.key with <acb>-ka.pem). FILE_OR_HEX is a .HEX text file, a binary file or a hex string. "
        + EXIT_CODES_HELP
    ),
)
def inspect_command(
    file_or_hex: Annotated[str, typer.Argument(metavar="FILE_OR_HEX", help="path or hex string")],
    keystore: Annotated[Path, typer.Option("--keystore", help="folder of <eui>-ds.pem / -ka.pem / .key")],
    acb: Annotated[
        str | None, typer.Option("--acb", metavar="EUI", help="ACB entity id: check the MAC")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print a JSON document of all fields")] = False,
) -> None:
    acb_id = None if acb is None else _eui(acb, "--acb")
    if not keystore.is_dir():
        _fail(f"--keystore {keystore} is not a readable directory")
    try:
        data = load_input(file_or_hex)
    except InputError as exc:
        _fail(str(exc), EXIT_DECODE)
    report = inspect_bytes(data, keystore, acb_id)
    if json_output:
        typer.echo(json.dumps(report.document, indent=2))
    else:
        render(report, Console(), "" if len(file_or_hex) > 80 else file_or_hex)
        if report.exit_code == 0 and report.reason:
            Console().print(report.reason)
    if report.exit_code != 0:
        typer.echo(f"vdno-bench inspect: {report.reason}", err=True)
        raise typer.Exit(report.exit_code)


# --- hand-out --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrayEntry:
    device_id: bytes
    area_id: int


def _area(value: int | str, what: str) -> int:
    try:
        area = int(value)
    except (TypeError, ValueError):
        _fail(f"{what}: area {value!r} is not a number")
    if not AREA_MIN <= area <= AREA_MAX:
        _fail(f"{what}: area {area} is not a DNO area ({AREA_MIN}-{AREA_MAX})")
    return area


def parse_tray(path: Path) -> list[TrayEntry]:
    """`EUI AREA` per line or CSV `device,area` (optional header); '#' starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read tray file {path}: {exc}")
    entries: list[TrayEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        where = f"tray {path} line {number}"
        if len(fields) != 2:
            _fail(f"{where}: expected 'DEVICE AREA' or 'device,area', got {line!r}")
        if fields[0].lower() in ("device", "device_id", "eui") and not entries:
            continue  # CSV header
        entries.append(TrayEntry(_eui(fields[0], where), _area(fields[1], where)))
    if not entries:
        _fail(f"tray file {path} lists no meters")
    return entries


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"{what} {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror or exc}")


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            doc = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(f"cannot read --config {path}: {exc}")
    section = doc.get("bench", doc)
    if not isinstance(section, dict):
        _fail(f"--config {path}: [bench] is not a table")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def _setting(cli: Any, config: dict[str, Any], key: str, base: Path | None) -> Any:
    if cli is not None:
        return cli
    value = config.get(key)
    if value is not None and key in ("ca", "cert", "key", "save_commands") and base is not None:
        candidate = Path(str(value))
        return candidate if candidate.is_absolute() else base / candidate
    return value


def _summary_table(results: list[HandOutResult]) -> Table:
    table = Table(title="Hand-out summary")
    for column in ("device", "area", "counter", "status", "reason"):
        table.add_column(column)
    styles = {"applied": "green", "refused": "red", "failed": "red"}
    for r in results:
        style = styles.get(r.status, "")
        table.add_row(
            r.device_id,
            str(r.area_id),
            "" if r.counter is None else str(r.counter),
            f"[{style}]{r.status}[/{style}]",
            r.reason,
        )
    return table


@app.command(
    "hand-out",
    short_help="Hand out vanilla meters (one device or a tray) to a DNO area.",
    help=(
        "Hand out vanilla meters to a DNO area: read each meter (CS02e, CS02a) through the simulator/device "
        "transport, request a signed CS02b mode-3 command from the custodian, check it against the pinned "
        "trust bundle, apply it and report the meter's response. Give --device and --area, or --tray FILE "
        "('EUI AREA' per line, or CSV device,area; '#' comments). Settings may come from --config bench.toml "
        "(keys server, ca, cert, key, sim, server_name, save_commands; at top level or in a 'bench' table). "
        "Exit codes: 0 every meter applied; 1 any meter refused or failed; 2 usage or configuration error."
    ),
)
def hand_out_command(
    device: Annotated[str | None, typer.Option("--device", metavar="EUI", help="device id")] = None,
    area: Annotated[int | None, typer.Option("--area", metavar="ID", help="DNO area 10-23")] = None,
    tray: Annotated[Path | None, typer.Option("--tray", metavar="FILE", help="tray file")] = None,
    server: Annotated[str | None, typer.Option("--server", metavar="HOST:PORT")] = None,
    ca: Annotated[Path | None, typer.Option("--ca", metavar="PEM", help="TLS CA certificate")] = None,
    cert: Annotated[
        Path | None, typer.Option("--cert", metavar="PEM", help="bench client certificate")
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", metavar="PEM", help="bench client private key")] = None,
    sim: Annotated[str | None, typer.Option("--sim", metavar="HOST:PORT", help="device transport")] = None,
    server_name: Annotated[str | None, typer.Option("--server-name", help="TLS server name override")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print a JSON list of results")] = False,
    request_id: Annotated[
        str | None, typer.Option("--request-id", metavar="ID", help="request id (single device; to retry)")
    ] = None,
    save_commands: Annotated[
        Path | None, typer.Option("--save-commands", metavar="DIR", help="save <device>-<counter>.hex")
    ] = None,
    reader_id: Annotated[
        str, typer.Option("--reader-id", metavar="EUI", help="originator id of local reads")
    ] = LAB_READER_ID.hex(),
    config: Annotated[Path | None, typer.Option("--config", metavar="TOML", help="settings file")] = None,
) -> None:
    settings = _load_config(config)
    base = None if config is None else config.parent
    server = _setting(server, settings, "server", base)
    ca = _setting(ca, settings, "ca", base)
    cert = _setting(cert, settings, "cert", base)
    key = _setting(key, settings, "key", base)
    sim = _setting(sim, settings, "sim", base)
    server_name = _setting(server_name, settings, "server_name", base)
    save_commands = _setting(save_commands, settings, "save_commands", base)

    if tray is not None and (device is not None or area is not None):
        _fail("give either --device and --area, or --tray, not both")
    if tray is None and (device is None or area is None):
        _fail("give --device EUI and --area ID, or --tray FILE")
    if tray is not None and request_id is not None:
        _fail("--request-id applies to a single device (--device), not to a tray")
    if request_id is not None and not request_id.strip():
        _fail("--request-id must not be empty")
    entries = (
        parse_tray(tray)
        if tray is not None
        else [TrayEntry(_eui(str(device), "--device"), _area(int(area or 0), "--area"))]
    )
    missing = [
        name
        for name, value in (
            ("--server", server),
            ("--ca", ca),
            ("--cert", cert),
            ("--key", key),
            ("--sim", sim),
        )
        if not value
    ]
    if missing:
        _fail(f"missing {', '.join(missing)} (on the command line or in --config)")
    target_host, target_port = _host_port(str(server), "--server")
    sim_host, sim_port = _host_port(str(sim), "--sim")
    ca_pem = _read_file(Path(ca), "--ca")
    cert_pem = _read_file(Path(cert), "--cert")
    key_pem = _read_file(Path(key), "--key")
    reader = _eui(reader_id, "--reader-id")
    save_dir = None if save_commands is None else Path(save_commands)
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        _fail(f"--save-commands {save_dir} is not a directory")

    # imported here so `inspect` works without touching grpc
    from client.api import BenchClient
    from client.handout import hand_out
    from client.transport import SimulatorTransport

    results: list[HandOutResult] = []
    with (
        BenchClient(
            f"{target_host}:{target_port}", ca_pem, cert_pem, key_pem, server_name_override=server_name
        ) as api,
        SimulatorTransport(sim_host, sim_port) as transport,
    ):
        try:
            bundle = api.trust_bundle()
        except BenchError as exc:
            _fail(f"cannot fetch the trust bundle: {exc}", 1)

        def run(entry: TrayEntry) -> HandOutResult:
            return hand_out(
                api,
                transport,
                bundle,
                entry.device_id,
                entry.area_id,
                request_id=request_id,
                reader_id=reader,
                save_dir=save_dir,
            )

        if tray is not None and not json_output:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("handing out", total=len(entries))
                for entry in entries:
                    progress.update(task, description=f"meter {entry.device_id.hex()}")
                    results.append(run(entry))
                    progress.advance(task)
        else:
            results = [run(entry) for entry in entries]

    if json_output:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        Console().print(_summary_table(results))
    failed = [r for r in results if r.status != APPLIED]
    if failed:
        if len(entries) == 1:
            typer.echo(f"vdno-bench hand-out: {failed[0].status}: {failed[0].reason}", err=True)
        else:
            typer.echo(f"vdno-bench hand-out: {len(failed)} of {len(results)} meters not applied", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover - `python -m client.cli`
    app()
