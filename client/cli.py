"""`vdno-bench`: the bench client CLI (inspect messages; hand out vanilla meters to a DNO area)."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vdno import exit_codes
from vdno.client import error_codes as codes
from vdno.client.errors import BenchError, ServiceError
from vdno.client.handout import APPLIED, LAB_READER_ID, HandOutResult
from vdno.client.inspect import EXIT_CODES_HELP, EXIT_DECODE, InputError, inspect_bytes, load_input, render
from vdno.client.settings import BenchSettings, SettingsError
from vdno.exit_codes import fail_command
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64
from vdno.tool_group import ToolGroup

EXIT_USAGE = exit_codes.USAGE
AREA_MIN, AREA_MAX = 10, 23
EXIT_CODES_TEXT = (
    "Exit codes: 0 every meter succeeded; 1 any meter refused, failed or pending; 2 usage or "
    "configuration error (flags, settings, TLS files, tray file); 3 the custodian or the device transport "
    "cannot be reached."
)

app = typer.Typer(
    cls=ToolGroup,
    name="vdno-bench",
    help="vdno bench client: inspect GBCS CS02 messages and hand out vanilla meters to a DNO area.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"vdno-bench {version('vdno')}")
        except PackageNotFoundError:
            typer.echo("vdno-bench (not installed)")
        raise typer.Exit(exit_codes.OK)


@app.callback()
def main(
    _: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Before any command: gRPC core reads GRPC_VERBOSITY once, when grpc is first imported (each command
    imports it), and would otherwise write its own log lines (TLS handshake failures) to stderr. Set it
    to debug to see them."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


# With --json, stdout holds one JSON document whatever happens: a run that stops before any meter prints one
# JSON error object there (and its one line on stderr). Set by each command from its --json flag.
_output = {"json": False}


def _use_json(json_output: bool) -> None:
    _output["json"] = json_output


def _fail(
    message: str,
    code: int = EXIT_USAGE,
    error_code: str = codes.USAGE_ERROR,
    problems: list[str] | None = None,
) -> NoReturn:
    """One line on stderr (then one per problem) and, with --json, the JSON error object on stdout."""
    fail_command(
        "vdno-bench",
        message,
        code,
        json_output=_output["json"],
        error_code=error_code,
        problems=tuple(problems or ()),
    )


def _service_failed(what: str, exc: BenchError) -> NoReturn:
    """A call that the whole run needs failed: exit 3 when the custodian cannot be reached, else 1."""
    if isinstance(exc, ServiceError):
        code = exit_codes.UNAVAILABLE if exc.unreachable else exit_codes.REFUSED
        _fail(f"{what}: {exc}", code, exc.error_code)
    _fail(f"{what}: {exc}", exit_codes.REFUSED, codes.CUSTODIAN_REFUSED)


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
    _use_json(json_output)
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


# --- trays and settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrayEntry:
    device_id: bytes
    area_id: int | None  # the hand-out's target area; hand-in ignores it


def _area(value: int | str, what: str) -> int:
    area, problem = _area_problem(value)
    if problem:
        _fail(f"{what}: {problem}")
    assert area is not None
    return area


def _area_problem(value: int | str) -> tuple[int | None, str]:
    try:
        area = int(value)
    except (TypeError, ValueError):
        return None, f"area {value!r} is not a number"
    if not AREA_MIN <= area <= AREA_MAX:
        return None, f"area {area} is not a DNO area ({AREA_MIN}-{AREA_MAX})"
    return area, ""


def parse_tray(path: Path, need_area: bool = True) -> list[TrayEntry]:
    """`EUI AREA` per line or CSV `device,area` (optional header); '#' starts a comment. Without
    need_area a line may hold the device alone. Every bad line is reported at once (line number and why),
    and a device listed twice too: exit 2, error code TRAY_INVALID, nothing done."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read tray file {path}: {exc}", error_code=codes.TRAY_INVALID)
    entries: list[TrayEntry] = []
    problems: list[str] = []
    first_line: dict[bytes, int] = {}
    seen_any = False
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if fields[0].lower() in ("device", "device_id", "eui") and not seen_any:
            seen_any = True
            continue  # CSV header
        seen_any = True
        if len(fields) not in ((2,) if need_area else (1, 2)):
            wanted = "'DEVICE AREA' or 'device,area'" if need_area else "'DEVICE' or 'DEVICE AREA'"
            problems.append(f"line {number}: expected {wanted}, got {line!r}")
            continue
        why = []
        try:
            device_id = parse_eui64(fields[0])
        except DecodeError as exc:
            device_id = None
            why.append(f"device {fields[0]!r}: {exc}")
        area: int | None = None
        if len(fields) == 2:
            area, problem = _area_problem(fields[1])
            if problem:
                why.append(problem)
        if device_id is not None and device_id in first_line:
            why.append(f"device {device_id.hex()} is already on line {first_line[device_id]}")
        if why:
            problems.append(f"line {number}: " + "; ".join(why))
        if device_id is None:
            continue
        first_line.setdefault(device_id, number)
        if not why:
            entries.append(TrayEntry(device_id, area))
    if problems:
        _fail(
            f"tray file {path}: {len(problems)} bad line{'s' if len(problems) > 1 else ''}, nothing done",
            error_code=codes.TRAY_INVALID,
            problems=problems,
        )
    if not entries:
        _fail(f"tray file {path} lists no meters", error_code=codes.TRAY_INVALID)
    return entries


def _load_settings(config: Path | None, **flags: Any) -> BenchSettings:
    try:
        return BenchSettings.load(config, flags)
    except SettingsError as exc:
        _fail(str(exc))


def _tls(settings: BenchSettings) -> tuple[bytes, bytes, bytes]:
    """(CA, certificate, key) PEM, checked, after a handshake with the server: a TLS mistake names the file
    or the side at fault (exit 2) before any call."""
    from vdno.client.tls import TlsSetupError, check_handshake

    try:
        tls = settings.load_tls()
        check_handshake(tls, *settings.server_address(), settings.server_name)
    except (SettingsError, TlsSetupError) as exc:
        _fail(str(exc), error_code=codes.TLS_FAILED)
    return tls.ca_pem, tls.cert_pem, tls.key_pem


def _sim(settings: BenchSettings) -> tuple[str, int]:
    try:
        return settings.require_sim()
    except SettingsError as exc:
        _fail(str(exc))


def _reach_sim(host: str, port: int) -> None:
    """Exit 3 at once when the device transport does not take a connection (rather than every meter
    failing to be read)."""
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as exc:
        _fail(
            f"cannot reach the device transport --sim {host}:{port}: {exc.strerror or exc}",
            exit_codes.UNAVAILABLE,
            codes.TRANSPORT_UNAVAILABLE,
        )


def _run_document(
    command: str, results: list[Any], statuses: tuple[str, ...], run: str | None
) -> dict[str, Any]:
    """What --json prints for a run: the summary (meters per outcome) and one object per meter."""
    meters = [r.as_dict() for r in results]
    counted = Counter(str(m["status"]) for m in meters)
    summary: dict[str, int] = {"total": len(meters)} | {status: counted.get(status, 0) for status in statuses}
    summary |= {status: n for status, n in counted.items() if status not in summary}
    summary["already_applied"] = sum(
        1 for m in meters if str(m.get("reason", "")).startswith("already applied")
    )
    return {"command": command, "run": run, "summary": summary, "meters": meters}


def _finish(
    command: str,
    results: list[Any],
    statuses: tuple[str, ...],
    run: str | None,
    json_output: bool,
    title: str,
    columns: tuple[str, ...],
    verb: str,
) -> None:
    """Print the run (JSON document, or a table), the one stderr line when meters did not succeed, and exit
    1 then."""
    document = _run_document(command, results, statuses, run)
    if json_output:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console().print(_results_table(title, document["meters"], columns))
    good = statuses[0]
    failed = [r for r in results if r.status != good]
    if not failed:
        return
    if len(results) == 1:
        typer.echo(f"vdno-bench {command}: {failed[0].status}: {failed[0].reason}", err=True)
    else:
        counts = ", ".join(f"{n} {status}" for status, n in Counter(r.status for r in failed).items())
        typer.echo(
            f"vdno-bench {command}: {len(failed)} of {len(results)} meters not {verb} ({counts})", err=True
        )
    raise typer.Exit(exit_codes.REFUSED)


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True)


def _results_table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    styles = {"applied": "green", "ordered": "green", "pending": "yellow", "refused": "red", "failed": "red"}
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = "" if value is None else str(value)
            if column == "status" and text in styles:
                text = f"[{styles[text]}]{text}[/{styles[text]}]"
            cells.append(text)
        table.add_row(*cells)
    return table


SETTINGS_HELP = (
    "Settings may come from --config FILE, else the file VDNO_BENCH_CONFIG names (keys server, server_name, "
    "ca, cert, key, sim, dcc, save_commands, at top level or in a [bench] table; `vdno-server init` writes "
    "clients/<bench>.toml), and from the environment (VDNO_SERVER, VDNO_SERVER_NAME, VDNO_SIM, VDNO_DCC), "
    "which overrides the file; flags win."
)

ServerOpt = Annotated[str | None, typer.Option("--server", metavar="HOST:PORT")]
CaOpt = Annotated[Path | None, typer.Option("--ca", metavar="PEM", help="TLS CA certificate")]
CertOpt = Annotated[Path | None, typer.Option("--cert", metavar="PEM", help="bench client certificate")]
KeyOpt = Annotated[Path | None, typer.Option("--key", metavar="PEM", help="bench client private key")]
SimOpt = Annotated[str | None, typer.Option("--sim", metavar="HOST:PORT", help="device transport")]
ServerNameOpt = Annotated[str | None, typer.Option("--server-name", help="TLS server name override")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", metavar="TOML", help="settings file")]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="print one JSON document on stdout: {command, run, summary, meters: [{device, status, "
        "error_code, reason, ...}]}, or {error_code, error, exit_code} when the run stops early",
    ),
]
ReaderOpt = Annotated[str, typer.Option("--reader-id", metavar="EUI", help="originator id of local reads")]
SaveOpt = Annotated[
    Path | None, typer.Option("--save-commands", metavar="DIR", help="save <device>-<counter>.hex")
]
RequestIdOpt = Annotated[
    str | None,
    typer.Option(
        "--request-id",
        metavar="ID",
        help="request id (--device; reuse it to retry), or a tray's run id: its request ids are ID:DEVICE",
    ),
]
NewRunOpt = Annotated[
    bool,
    typer.Option("--new-run", help="start a new tray run even if the tray's journal holds an open one"),
]
TRAY_RUN_HELP = (
    "A tray run keeps a journal beside the tray file (<tray>.<command>.journal); its request ids are "
    "RUN:DEVICE (DEVICE as 16 lower-case hex digits), RUN being --request-id, else the journal's open run, "
    "else a new one. Rerunning a tray after a crash reuses every request id: commands already signed are "
    "returned as they were, and a meter found already holding its command's certificates is reported with "
    "its signed CS02a answer instead of being sent the command again. The run is finished once every meter "
    "succeeded; --new-run starts another at once."
)


def _journal(tray: Path, kind: str, run: str | None, new_run: bool) -> Any:
    from vdno.client.tray import JournalError, TrayJournal

    try:
        return TrayJournal.open(tray, kind, run, new_run)
    except JournalError as exc:
        _fail(str(exc), error_code=codes.JOURNAL_FAILED)


# --- hand-out --------------------------------------------------------------------------------------


@app.command(
    "hand-out",
    short_help="Hand out vanilla meters (one device or a tray) to a DNO area.",
    help=(
        "Hand out vanilla meters to a DNO area: read each meter (CS02e, CS02a) through the simulator/device "
        "transport, request a signed CS02b mode-3 command from the custodian, check it against the pinned "
        "trust bundle, have DCC add its ACB-SMD MAC (--dcc URL; without it the command goes as signed), "
        "apply it and report the meter's response. Give --device and --area, or --tray FILE "
        "('EUI AREA' per line, or CSV device,area; '#' comments). "
        + TRAY_RUN_HELP
        + " "
        + SETTINGS_HELP
        + " "
        + EXIT_CODES_TEXT
    ),
)
def hand_out_command(
    device: Annotated[str | None, typer.Option("--device", metavar="EUI", help="device id")] = None,
    area: Annotated[int | None, typer.Option("--area", metavar="ID", help="DNO area 10-23")] = None,
    tray: Annotated[Path | None, typer.Option("--tray", metavar="FILE", help="tray file")] = None,
    server: ServerOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    sim: SimOpt = None,
    dcc: Annotated[
        str | None, typer.Option("--dcc", metavar="URL", help="DCC gateway adding the ACB-SMD MAC")
    ] = None,
    server_name: ServerNameOpt = None,
    json_output: JsonOpt = False,
    request_id: RequestIdOpt = None,
    new_run: NewRunOpt = False,
    save_commands: SaveOpt = None,
    reader_id: ReaderOpt = LAB_READER_ID.hex(),
    config: ConfigOpt = None,
) -> None:
    _use_json(json_output)
    settings = _load_settings(
        config,
        server=server,
        ca=ca,
        cert=cert,
        key=key,
        sim=sim,
        dcc=dcc,
        server_name=server_name,
        save_commands=save_commands,
    )
    if tray is not None and (device is not None or area is not None):
        _fail("give either --device and --area, or --tray, not both")
    if tray is None and (device is None or area is None):
        _fail("give --device EUI and --area ID, or --tray FILE")
    if request_id is not None and not request_id.strip():
        _fail("--request-id must not be empty")
    entries = (
        parse_tray(tray)
        if tray is not None
        else [TrayEntry(_eui(str(device), "--device"), _area(int(area or 0), "--area"))]
    )
    sim_host, sim_port = _sim(settings)
    ca_pem, cert_pem, key_pem = _tls(settings)
    reader = _eui(reader_id, "--reader-id")
    save_dir = settings.save_commands
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        _fail(f"--save-commands {save_dir} is not a directory")
    journal = None if tray is None else _journal(tray, "hand-out", request_id, new_run)

    # imported here so `inspect` works without touching grpc
    from vdno.client.api import BenchClient
    from vdno.client.dcc_gateway import HttpDuisGateway
    from vdno.client.handout import hand_out
    from vdno.client.transport import SimulatorTransport
    from vdno.client.tray import run_tray

    gateway = None if settings.dcc is None else HttpDuisGateway(settings.dcc)
    results: list[HandOutResult] = []
    with (
        BenchClient(
            settings.server, ca_pem, cert_pem, key_pem, server_name_override=settings.server_name
        ) as api,
        SimulatorTransport(sim_host, sim_port) as transport,
    ):
        try:
            bundle = api.trust_bundle()
        except BenchError as exc:
            _service_failed("cannot fetch the trust bundle", exc)
        _reach_sim(sim_host, sim_port)

        areas = {entry.device_id: entry.area_id for entry in entries}

        def run(device_id: bytes, rid: str | None) -> HandOutResult:
            area_id = areas[device_id]
            assert area_id is not None  # parse_tray(need_area=True)
            return hand_out(
                api,
                transport,
                bundle,
                device_id,
                area_id,
                request_id=rid,
                reader_id=reader,
                save_dir=save_dir,
                gateway=gateway,
            )

        if journal is None:
            results = [run(entry.device_id, request_id) for entry in entries]
        elif json_output:
            results = run_tray(journal, [e.device_id for e in entries], run, APPLIED)
        else:
            with _progress() as progress:
                task = progress.add_task("handing out", total=len(entries))

                def shown(device_id: bytes, rid: str) -> HandOutResult:
                    progress.update(task, description=f"meter {device_id.hex()}")
                    result = run(device_id, rid)
                    progress.advance(task)
                    return result

                results = run_tray(journal, [e.device_id for e in entries], shown, APPLIED)

    _finish(
        "hand-out",
        results,
        (APPLIED, "refused", "failed"),
        None if journal is None else journal.run,
        json_output,
        "Hand-out summary",
        ("device", "area", "counter", "status", "reason"),
        "applied",
    )


# --- rotation --------------------------------------------------------------------------------------


@app.command(
    "rotate",
    short_help="Move meters in stock from their vanilla generation onto the active one.",
    help=(
        "Rotate meters in stock: read each meter, request a CS02b mode-3 command signed by the generation it "
        "holds that installs the active generation's certificates, check it against the pinned trust bundle, "
        "have DCC add its ACB-SMD MAC (--dcc URL), apply it and report the response. Give --device or "
        "--tray FILE (one device per line; `vdno-admin fleet holding --generation G --tray FILE` writes "
        "one). " + TRAY_RUN_HELP + " " + SETTINGS_HELP + " " + EXIT_CODES_TEXT
    ),
)
def rotate_command(
    device: Annotated[str | None, typer.Option("--device", metavar="EUI", help="device id")] = None,
    tray: Annotated[Path | None, typer.Option("--tray", metavar="FILE", help="tray file")] = None,
    server: ServerOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    sim: SimOpt = None,
    dcc: Annotated[
        str | None, typer.Option("--dcc", metavar="URL", help="DCC gateway adding the ACB-SMD MAC")
    ] = None,
    server_name: ServerNameOpt = None,
    json_output: JsonOpt = False,
    request_id: RequestIdOpt = None,
    new_run: NewRunOpt = False,
    save_commands: SaveOpt = None,
    reader_id: ReaderOpt = LAB_READER_ID.hex(),
    config: ConfigOpt = None,
) -> None:
    _use_json(json_output)
    settings = _load_settings(
        config,
        server=server,
        ca=ca,
        cert=cert,
        key=key,
        sim=sim,
        dcc=dcc,
        server_name=server_name,
        save_commands=save_commands,
    )
    devices = _devices(device, tray)
    sim_host, sim_port = _sim(settings)
    ca_pem, cert_pem, key_pem = _tls(settings)
    reader = _eui(reader_id, "--reader-id")
    journal = None if tray is None else _journal(tray, "rotate", request_id, new_run)

    from vdno.client.api import BenchClient
    from vdno.client.dcc_gateway import HttpDuisGateway
    from vdno.client.handout import rotate
    from vdno.client.transport import SimulatorTransport
    from vdno.client.tray import run_tray

    gateway = None if settings.dcc is None else HttpDuisGateway(settings.dcc)
    with (
        BenchClient(
            settings.server, ca_pem, cert_pem, key_pem, server_name_override=settings.server_name
        ) as api,
        SimulatorTransport(sim_host, sim_port) as transport,
    ):
        try:
            bundle = api.trust_bundle()
        except BenchError as exc:
            _service_failed("cannot fetch the trust bundle", exc)
        _reach_sim(sim_host, sim_port)

        def run(device_id: bytes, rid: str | None) -> HandOutResult:
            return rotate(api, transport, bundle, device_id, rid, reader, settings.save_commands, gateway)

        if journal is None:
            results = [run(d, request_id) for d in devices]
        else:
            results = run_tray(journal, devices, run, APPLIED)
    _finish(
        "rotate",
        results,
        (APPLIED, "refused", "failed"),
        None if journal is None else journal.run,
        json_output,
        "Rotation summary",
        ("device", "generation", "targetGeneration", "counter", "status", "reason"),
        "rotated",
    )


# --- cancellation ----------------------------------------------------------------------------------


@app.command(
    "cancel",
    short_help="Withdraw this bench's command for a request id.",
    help=(
        "Withdraw this bench's hand-out or rotation command for --request-id (for a tray run: RUN:DEVICE, as "
        "the run's journal lists them) when it has no outcome yet: the custodian no longer hands it out, and "
        "the meter is free for another request. Only for a command that will not be applied: a meter that "
        "received it may still apply it, and its outcome is still taken when reported. "
        + SETTINGS_HELP
        + " Exit codes: 0 cancelled; 1 refused by the custodian; 2 usage or configuration error; 3 the "
        "custodian cannot be reached."
    ),
)
def cancel_command(
    request_id: Annotated[str, typer.Option("--request-id", metavar="ID", help="the request to withdraw")],
    reason: Annotated[str, typer.Option("--reason", help="why (audited)")],
    server: ServerOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    server_name: ServerNameOpt = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    _use_json(json_output)
    settings = _load_settings(config, server=server, ca=ca, cert=cert, key=key, server_name=server_name)
    ca_pem, cert_pem, key_pem = _tls(settings)
    if not reason.strip():
        _fail("--reason must say why the command is withdrawn")

    from vdno.client.api import BenchClient

    with BenchClient(
        settings.server, ca_pem, cert_pem, key_pem, server_name_override=settings.server_name
    ) as api:
        try:
            cancelled = api.cancel_request(request_id, reason)
        except BenchError as exc:
            _service_failed("cancel", exc)
    row = {
        "issuanceId": cancelled.issuance_id,
        "device": cancelled.device_id.hex().upper(),
        "requestId": cancelled.request_id,
        "status": cancelled.status,
        "released": cancelled.released,
        "cancelledBy": cancelled.cancelled_by,
    }
    if json_output:
        typer.echo(json.dumps(row, indent=2))
    else:
        Console().print(_results_table("Cancelled", [row], tuple(row)))


# --- enrolment -------------------------------------------------------------------------------------


@app.command(
    "keygen",
    help=(
        "Make this bench's mTLS key (EC P-256) and a certificate request for it: OUT/<bench>.key (mode 0600; "
        "it never leaves the bench) and OUT/<bench>.csr (PEM, for a security officer: `vdno-admin benches "
        "enrol`). Refuses to overwrite an existing key. Exit codes: 0 written; 2 usage error."
    ),
)
def keygen_command(
    bench: Annotated[
        str, typer.Option("--bench", metavar="ID", help="this bench's id (the certificate's CN)")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="folder for the key and the request")],
    json_output: Annotated[bool, typer.Option("--json", help="print {bench, key, csr} as JSON")] = False,
) -> None:
    from vdno.client.enrolment import EnrolmentError, make_key_and_request

    _use_json(json_output)
    try:
        key_path, csr_path = make_key_and_request(bench, out)
    except EnrolmentError as exc:
        _fail(str(exc))
    if json_output:
        typer.echo(json.dumps({"bench": bench, "key": str(key_path), "csr": str(csr_path)}, indent=2))
    else:
        typer.echo(f"wrote {key_path} (keep it here) and {csr_path} (give it to a security officer)")


# --- hand-in ---------------------------------------------------------------------------------------

hand_in_app = typer.Typer(
    name="hand-in",
    help=(
        "Bring triaged meters into vanilla custody. `order` reads each meter and asks the custodian for a "
        "hand-in order (the area DNO must then sign the command, through DCC); `apply` fetches the commands "
        "the custodian has authorised for the meters, checks each against the meter and the pinned trust "
        "bundle, applies it and reports the meter's response."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(hand_in_app)


def _devices(device: str | None, tray: Path | None) -> list[bytes]:
    if (device is None) == (tray is None):
        _fail("give --device EUI or --tray FILE")
    if device is not None:
        return [_eui(device, "--device")]
    assert tray is not None
    return [entry.device_id for entry in parse_tray(tray, need_area=False)]


HAND_IN_COLUMNS = ("device", "orderId", "area", "generation", "status", "reason")


@hand_in_app.command(
    "order",
    help=(
        "Read each meter (CS02e, CS02a) and order its hand-in. "
        + TRAY_RUN_HELP
        + " "
        + SETTINGS_HELP
        + " "
        + EXIT_CODES_TEXT
    ),
)
def hand_in_order_command(
    device: Annotated[str | None, typer.Option("--device", metavar="EUI", help="device id")] = None,
    tray: Annotated[Path | None, typer.Option("--tray", metavar="FILE", help="tray file")] = None,
    server: ServerOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    sim: SimOpt = None,
    server_name: ServerNameOpt = None,
    json_output: JsonOpt = False,
    request_id: RequestIdOpt = None,
    new_run: NewRunOpt = False,
    reader_id: ReaderOpt = LAB_READER_ID.hex(),
    config: ConfigOpt = None,
) -> None:
    _use_json(json_output)
    settings = _load_settings(
        config, server=server, ca=ca, cert=cert, key=key, sim=sim, server_name=server_name
    )
    devices = _devices(device, tray)
    sim_host, sim_port = _sim(settings)
    ca_pem, cert_pem, key_pem = _tls(settings)
    reader = _eui(reader_id, "--reader-id")
    journal = None if tray is None else _journal(tray, "hand-in-order", request_id, new_run)

    from vdno.client.api import BenchClient
    from vdno.client.hand_in import ORDERED, HandInResult, order_hand_in
    from vdno.client.transport import SimulatorTransport
    from vdno.client.tray import run_tray

    with (
        BenchClient(
            settings.server, ca_pem, cert_pem, key_pem, server_name_override=settings.server_name
        ) as api,
        SimulatorTransport(sim_host, sim_port) as transport,
    ):
        try:
            bundle = api.trust_bundle()
        except BenchError as exc:
            _service_failed("cannot fetch the trust bundle", exc)
        _reach_sim(sim_host, sim_port)

        def run(device_id: bytes, rid: str | None) -> HandInResult:
            return order_hand_in(api, transport, bundle, device_id, rid, reader)

        if journal is None:
            results = [run(d, request_id) for d in devices]
        else:
            results = run_tray(journal, devices, run, ORDERED)
    _finish(
        "hand-in order",
        results,
        (ORDERED, "failed"),
        None if journal is None else journal.run,
        json_output,
        "Hand-in orders",
        HAND_IN_COLUMNS,
        "ordered",
    )


@hand_in_app.command(
    "apply",
    help=(
        "Fetch the authorised hand-in commands for the meters, check each against the meter and the pinned "
        "trust bundle, apply it and report the response. A meter found already on a vanilla generation is "
        "reported applied ('already applied'). " + SETTINGS_HELP + " " + EXIT_CODES_TEXT
    ),
)
def hand_in_apply_command(
    device: Annotated[str | None, typer.Option("--device", metavar="EUI", help="device id")] = None,
    tray: Annotated[Path | None, typer.Option("--tray", metavar="FILE", help="tray file")] = None,
    server: ServerOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    sim: SimOpt = None,
    server_name: ServerNameOpt = None,
    json_output: JsonOpt = False,
    save_commands: SaveOpt = None,
    reader_id: ReaderOpt = LAB_READER_ID.hex(),
    config: ConfigOpt = None,
) -> None:
    _use_json(json_output)
    settings = _load_settings(
        config,
        server=server,
        ca=ca,
        cert=cert,
        key=key,
        sim=sim,
        server_name=server_name,
        save_commands=save_commands,
    )
    devices = _devices(device, tray)
    sim_host, sim_port = _sim(settings)
    ca_pem, cert_pem, key_pem = _tls(settings)
    reader = _eui(reader_id, "--reader-id")

    from vdno.client.api import BenchClient
    from vdno.client.hand_in import APPLIED as HAND_IN_APPLIED
    from vdno.client.hand_in import apply_hand_ins
    from vdno.client.transport import SimulatorTransport

    with (
        BenchClient(
            settings.server, ca_pem, cert_pem, key_pem, server_name_override=settings.server_name
        ) as api,
        SimulatorTransport(sim_host, sim_port) as transport,
    ):
        try:
            bundle = api.trust_bundle()
        except BenchError as exc:
            _service_failed("cannot fetch the trust bundle", exc)
        _reach_sim(sim_host, sim_port)
        try:
            results = apply_hand_ins(api, transport, bundle, devices, reader, settings.save_commands)
        except BenchError as exc:
            _service_failed("cannot fetch the authorised hand-in commands", exc)
    _finish(
        "hand-in apply",
        results,
        (HAND_IN_APPLIED, "pending", "refused", "failed"),
        None,
        json_output,
        "Hand-in applied",
        HAND_IN_COLUMNS,
        "applied",
    )


if __name__ == "__main__":  # pragma: no cover - `python -m vdno.client.cli`
    app()
