"""`vdno-admin`: what security officers do, over the custody API with their own certificate.

Exit codes (every command): 0 done; 1 the service refused (or, for import, any file was refused);
2 usage or configuration error; 3 the service could not be reached or was unavailable."""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from vdno.admin.audit_cli import audit_app
from vdno.admin.console import (
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    UNREACHABLE,
    Connection,
    custody_client,
    emit,
    fail,
    refused,
    table,
    use_json,
)
from vdno.client.settings import BenchSettings, SettingsError
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64
from vdno.tool_group import ToolGroup

IMPORTABLE = (".xml", ".hex", ".bin")

app = typer.Typer(
    cls=ToolGroup,
    name="vdno-admin",
    help=(
        "vdno security officers' client: hand-in orders (export for the area DNOs, import what DCC returns) "
        "and the fleet view. Settings: --config FILE, else the file VDNO_ADMIN_CONFIG names (an admin table "
        "with server, server_name, ca, cert, key; `vdno-server init` writes clients/<officer>.toml), "
        "VDNO_SERVER / VDNO_SERVER_NAME (over the file), flags (over both). "
        "Exit codes: 0 done; 1 refused by the service; 2 usage or configuration error; 3 service unreachable."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
hand_in_app = typer.Typer(name="hand-in", help="Hand-in orders: list, export, import.", no_args_is_help=True)
fleet_app = typer.Typer(name="fleet", help="What the records say of the meters.", no_args_is_help=True)
commands_app = typer.Typer(
    name="commands", help="Hand-out and rotation commands: cancel one.", no_args_is_help=True
)
app.add_typer(hand_in_app)
app.add_typer(fleet_app)
app.add_typer(commands_app)
app.add_typer(audit_app)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"vdno-admin {version('vdno')}")
        except PackageNotFoundError:
            typer.echo("vdno-admin (not installed)")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", metavar="TOML", help="settings file")] = None,
    server: Annotated[str | None, typer.Option("--server", metavar="HOST:PORT")] = None,
    ca: Annotated[Path | None, typer.Option("--ca", metavar="PEM", help="TLS CA certificate")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", metavar="PEM", help="officer certificate")] = None,
    key: Annotated[Path | None, typer.Option("--key", metavar="PEM", help="officer private key")] = None,
    server_name: Annotated[str | None, typer.Option("--server-name", help="TLS server name override")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    _: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    if ctx.resilient_parsing:
        return
    use_json(json_output)
    # gRPC core reads it once, when grpc is first imported (commands import it): no log lines of its own
    # (TLS handshake failures) on stderr unless asked for, e.g. GRPC_VERBOSITY=debug.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        settings = BenchSettings.load(
            config,
            {"server": server, "ca": ca, "cert": cert, "key": key, "server_name": server_name},
            section="admin",
        )
    except SettingsError as exc:  # reported when a command calls the service (offline ones need none)
        ctx.obj = Connection(None, json_output, str(exc))
        return
    ctx.obj = Connection(settings, json_output)


# --- hand-in ---------------------------------------------------------------------------------------


@hand_in_app.command("list", help="List hand-in orders (all, or of one area and/or status).")
def hand_in_list(
    ctx: typer.Context,
    area: Annotated[int, typer.Option("--area", help="area 10-23; 0 = every area")] = 0,
    status: Annotated[str, typer.Option("--status", help="e.g. awaiting-authorisation, authorised")] = "",
) -> None:
    from vdno.admin.api import CustodyCallFailed

    with custody_client(ctx) as api:
        try:
            orders = api.list_hand_in_orders(area, status)
        except CustodyCallFailed as exc:
            refused(exc)
    columns = ("order_id", "device_id", "area_id", "generation", "status", "seq_number", "bench_id")
    emit(ctx, orders, table("Hand-in orders", columns, orders))


@hand_in_app.command(
    "export",
    help=(
        "Write the DUIS 6.15.1 requests of every order awaiting authorisation, one folder per area: "
        "OUT/area-<id>/<device>-<order>.xml and OUT/area-<id>/manifest.jsonl (one JSON object per order). "
        "Each request's RequestID carries counter 0: the DNO's DCC adapter sets its own originator counter, "
        "which must exceed the meter's stored seq number (minimumSeqNumber in the manifest)."
    ),
)
def hand_in_export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="folder to write the areas' requests to")],
    area: Annotated[int, typer.Option("--area", help="area 10-23; 0 = every area")] = 0,
) -> None:
    from vdno.admin.api import CustodyCallFailed

    if out.exists() and not out.is_dir():
        fail(f"--out {out} is not a directory")
    with custody_client(ctx) as api:
        try:
            exported = api.export_hand_in_requests(area)
        except CustodyCallFailed as exc:
            refused(exc)
    by_area: dict[int, list[tuple[dict[str, Any], bytes]]] = {}
    for record, xml in exported:
        by_area.setdefault(record["area_id"], []).append((record, xml))
    written = []
    for area_id, items in sorted(by_area.items()):
        folder = out / f"area-{area_id}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for record, xml in items:
            manifest = json.loads(record["manifest_record"])
            path = folder / manifest["file"]
            path.write_bytes(xml)
            lines.append(json.dumps(manifest, sort_keys=True))
            written.append({"order_id": record["order_id"], "area_id": area_id, "file": str(path)})
        (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    emit(ctx, written, table(f"Exported to {out}", ("order_id", "area_id", "file"), written))
    if not written and not ctx.obj.json_output:
        typer.echo("no orders awaiting authorisation")


def _importable(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMPORTABLE)
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{path} is neither a file nor a folder")
    if not files:
        fail(f"no {', '.join(IMPORTABLE)} files in {', '.join(map(str, paths))}")
    return files


@hand_in_app.command(
    "import",
    help=(
        "Import commands returned by DCC (DUIS LocalCommand response XML, GBCS as hex text or binary): each "
        "is checked against its order before the order is authorised. Folders are searched for "
        f"{', '.join(IMPORTABLE)} files. Importing a command again changes nothing."
    ),
)
def hand_in_import(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="files or folders")],
) -> None:
    from vdno.admin.api import CustodyCallFailed

    results: list[dict[str, Any]] = []
    unreachable = False
    with custody_client(ctx) as api:
        for path in _importable(paths):
            try:
                order = api.import_hand_in_command(path.read_bytes())
            except OSError as exc:
                results.append(
                    {
                        "file": str(path),
                        "status": "unreadable",
                        "error_code": "FILE_UNREADABLE",
                        "reason": str(exc),
                    }
                )
                continue
            except CustodyCallFailed as exc:
                unreachable = unreachable or exc.code in UNREACHABLE
                results.append(
                    {"file": str(path), "status": "refused", "error_code": exc.error_code, "reason": str(exc)}
                )
                continue
            results.append(
                {
                    "file": str(path),
                    "status": order["status"],
                    "order_id": order["order_id"],
                    "device_id": order["device_id"],
                    "error_code": None,
                    "reason": "",
                }
            )
    columns = ("file", "order_id", "device_id", "status", "error_code", "reason")
    emit(ctx, results, table("Imported", columns, results))
    if any(r["status"] in ("refused", "unreadable") for r in results):
        raise typer.Exit(EXIT_UNAVAILABLE if unreachable else EXIT_REFUSED)


# --- fleet -----------------------------------------------------------------------------------------


@fleet_app.command("summary", help="How many meters are in each custody state, generation and area.")
def fleet_summary(ctx: typer.Context) -> None:
    from vdno.admin.api import CustodyCallFailed

    with custody_client(ctx) as api:
        try:
            summary = api.fleet_summary()
        except CustodyCallFailed as exc:
            refused(exc)
    rows = summary["counts"]
    rendered = table(
        f"Fleet: {summary['devices']} meters; {summary['hand_outs_outstanding']} hand-outs unreported",
        ("state", "generation", "area_id", "count"),
        rows,
    )
    emit(ctx, summary, rendered)


@fleet_app.command("history", help="One meter's custody state and history.")
def fleet_history(
    ctx: typer.Context, device: Annotated[str, typer.Argument(metavar="DEVICE", help="EUI-64")]
) -> None:
    from vdno.admin.api import CustodyCallFailed

    try:
        parse_eui64(device)
    except DecodeError as exc:
        fail(f"DEVICE: {exc}")
    with custody_client(ctx) as api:
        try:
            history = api.device_history(device)
        except CustodyCallFailed as exc:
            refused(exc)
    rendered = table(
        f"{history['device_id']}: {history['state']}",
        ("at", "event", "state", "area_id", "generation", "reference", "actor"),
        history["events"],
    )
    emit(ctx, history, rendered)


@fleet_app.command("holding", help="The meters the records show on a vanilla generation.")
def fleet_holding(
    ctx: typer.Context,
    generation: Annotated[int, typer.Option("--generation", min=1, help="vanilla generation")],
    tray_file: Annotated[
        Path | None,
        typer.Option(
            "--tray",
            metavar="FILE",
            help="also write a tray file: one device per line (vdno-bench rotate --tray)",
        ),
    ] = None,
) -> None:
    from vdno.admin.api import CustodyCallFailed

    with custody_client(ctx) as api:
        try:
            devices = api.devices_holding(generation)
        except CustodyCallFailed as exc:
            refused(exc)
    if tray_file is not None:
        lines = [f"# meters on vanilla generation {generation} (vdno-admin fleet holding)", *devices]
        tray_file.write_text("\n".join(lines) + "\n")
    rows = [{"device_id": d} for d in devices]
    emit(ctx, devices, table(f"Meters on generation {generation}: {len(devices)}", ("device_id",), rows))


# --- commands --------------------------------------------------------------------------------------


@commands_app.command(
    "cancel",
    help=(
        "Withdraw a hand-out or rotation command that has no outcome, e.g. one a lost bench left outstanding "
        "(a refusal names it: 'issuance N'). It is not handed out again and the meter is free for another "
        "request; audited. A meter that received it may still apply it: its outcome is still taken when a "
        "bench reports it, or reads the meter with another request. Exit codes: 0 cancelled; 1 refused; "
        "2 usage error; 3 the service is unreachable."
    ),
)
def commands_cancel(
    ctx: typer.Context,
    issuance: Annotated[int, typer.Option("--issuance", min=1, metavar="N", help="issuance id")],
    reason: Annotated[str, typer.Option("--reason", help="why (audited)")],
) -> None:
    from vdno.admin.api import CustodyCallFailed

    with custody_client(ctx) as api:
        try:
            cancelled = api.cancel_command(issuance, reason)
        except CustodyCallFailed as exc:
            refused(exc)
    columns = ("issuance_id", "device_id", "bench_id", "request_id", "status", "released", "cancelled_by")
    emit(ctx, cancelled, table("Cancelled", columns, [cancelled]))


from vdno.admin.custody_cli import approvals_app, areas_app, benches_app, generations_app  # noqa: E402

for _group in (generations_app, approvals_app, areas_app, benches_app):
    app.add_typer(_group)
