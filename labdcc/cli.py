"""`vdno-labdcc`: the lab DNOs and DCC. `init` makes the lab parties, `answer` completes a folder of DUIS
6.15.1 requests into LocalCommand responses, `serve` runs the DUIS endpoint for signed pre-commands."""

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

from vdno import exit_codes
from vdno.exit_codes import fail_command
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.errors import LabDccError
from vdno.labdcc.parties import ensure_lab_parties
from vdno.labdcc.web import DuisHttpServer
from vdno.labpki.store import atomic_write, export_keystore
from vdno.tool_group import ToolGroup

RESPONSE_SUFFIX = "-response.xml"
USAGE_ERROR = exit_codes.USAGE

app = typer.Typer(
    cls=ToolGroup,
    add_completion=False,
    no_args_is_help=True,
    help=(
        "lab stand-in for the area DNOs and DCC. Exit codes: 0 done; 1 a request was refused (answer); "
        "2 usage error or unusable input (state folder, request, CSR, port)."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = typer.Option(..., "--state", help="state folder (shared with vdno-server init)")
_JSON = typer.Option(False, "--json", help="print the result as JSON on stdout")


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"vdno-labdcc {version('vdno')}")
        except PackageNotFoundError:
            typer.echo("vdno-labdcc (not installed)")
        raise typer.Exit(exit_codes.OK)


@app.callback()
def main(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Lab stand-in for the 14 area DNOs and for DCC and its ACB (test material only)."""


def _fail(message: str, json_output: bool, code: int = USAGE_ERROR) -> NoReturn:
    fail_command("vdno-labdcc", message, code, json_output=json_output)


def _emit(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2))


def _open(state: Path, json_output: bool = False) -> LabDcc:
    try:
        return LabDcc(state)
    except LabDccError as exc:
        _fail(str(exc), json_output)


@app.command()
def init(state: Path = _STATE, json_output: bool = _JSON) -> None:
    """Make (or load) the lab SMKI hierarchy, the 14 area DNOs' and the ACB's credentials, the keystore."""
    try:
        parties = ensure_lab_parties(state)
    except LabDccError as exc:
        _fail(str(exc), json_output)
    if json_output:
        _emit({"state": str(state), "created": list(parties.created)})
        return
    if not parties.created:
        typer.echo(f"{state}: the lab parties are already there; nothing changed")
        return
    typer.echo(f"initialised {state}:")
    for change in parties.created:
        typer.echo(f"  - {change}")


@app.command("smki-issue")
def smki_issue(
    state: Path = _STATE,
    csr: Path = typer.Option(..., "--csr", help="PKCS#10 request (PEM or DER)"),
    entity_id: str = typer.Option(..., "--entity-id", help="the subject's EUI-64 (x500UniqueIdentifier)"),
    usage: str = typer.Option(..., "--usage", help="ds | ka"),
    out: Path = typer.Option(..., "--out", help="where to write the certificate (PEM)"),
    role: int = typer.Option(3, "--role", help="remote party role (OU): 3 = network operator"),
    json_output: bool = _JSON,
) -> None:
    """Issue an SMKI organisation certificate from a request, as DCC's SMKI does (lab issuing CA in
    STATE/pki): the request's key, the given entity id and role, one key usage, the SMKI policy. The
    certificate joins the lab SMKI inventory (STATE/keystore), where the lab ACB looks originators up."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from vdno.gbcs.errors import DecodeError
    from vdno.gbcs.ids import parse_eui64
    from vdno.labpki.errors import LabPkiError
    from vdno.labpki.hierarchy import LabHierarchy
    from vdno.labpki.smki import issue_from_csr

    if usage not in ("ds", "ka"):
        _fail("--usage must be ds or ka", json_output)
    try:
        entity = parse_eui64(entity_id)
        hierarchy = LabHierarchy.load(state / "pki")
        certificate = issue_from_csr(hierarchy.issuing_ca, csr.read_bytes(), entity, role, usage)  # type: ignore[arg-type]
    except (DecodeError, LabPkiError, OSError) as exc:
        _fail(str(exc), json_output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(certificate.public_bytes(Encoding.PEM))
    export_keystore(state / "keystore", [certificate], include_keys=False)  # the SMKI inventory
    if json_output:
        _emit({"certificate": str(out), "entity_id": entity.hex(), "role": role, "usage": usage})
        return
    typer.echo(
        f"issued {out} (entity {entity.hex()}, role {role:02X}, {usage}); added to {state / 'keystore'}"
    )


@app.command()
def answer(
    state: Path = _STATE,
    requests: Path = typer.Option(..., "--requests", help="folder of DUIS 6.15.1 request *.xml (recursive)"),
    out: Path = typer.Option(..., "--out", help="folder for the *-response.xml files (same layout)"),
    json_output: bool = _JSON,
) -> None:
    """Answer every request as its area DNO and the ACB would. Exit 1 when any request was refused. With
    --json: {summary: {total, answered, refused}, requests: [{request, status, response | reason}]}."""
    if not requests.is_dir():
        _fail(f"--requests {requests} is not a folder", json_output)
    dcc = _open(state, json_output)
    files = sorted(
        path for path in requests.rglob("*.xml") if path.is_file() and not _earlier_answer(path, out)
    )
    results: list[dict[str, Any]] = []
    for path in files:
        relative = path.relative_to(requests)
        target = out / relative.parent / f"{relative.stem}{RESPONSE_SUFFIX}"
        try:
            response = dcc.answer_request(path.read_bytes())
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, response, 0o644)
        except (LabDccError, OSError) as exc:
            results.append({"request": str(relative), "status": "refused", "reason": str(exc)})
            if not json_output:
                typer.echo(f"refused {relative}: {exc}")
            continue
        results.append({"request": str(relative), "status": "answered", "response": str(target)})
        if not json_output:
            typer.echo(f"answered {relative} -> {target}")
    refused = sum(1 for r in results if r["status"] == "refused")
    if json_output:
        summary = {"total": len(results), "answered": len(results) - refused, "refused": refused}
        _emit({"summary": summary, "requests": results})
    elif not files:
        typer.echo(f"no *.xml requests under {requests}")
    else:
        typer.echo(f"{len(files) - refused} answered, {refused} refused")
    if refused:
        raise typer.Exit(exit_codes.REFUSED)


def _earlier_answer(path: Path, out: Path) -> bool:
    """A response written by an earlier run when --out lies inside (or is) --requests."""
    return path.name.endswith(RESPONSE_SUFFIX) and path.resolve().is_relative_to(out.resolve())


@app.command()
def serve(
    state: Path = _STATE,
    port: int = typer.Option(0, "--port", min=0, max=65535, help="TCP port on 127.0.0.1 (0 = any free port)"),
    json_output: bool = typer.Option(
        False, "--json", help='print {"listening": "127.0.0.1:PORT", "port", "url"} as one JSON line'
    ),
) -> None:
    """Serve POST /duis (SignedPreCommand, CV 6 -> LocalCommand response) on 127.0.0.1 until SIGTERM/SIGINT;
    prints `vdno-labdcc listening on 127.0.0.1:PORT` first (with --json, one JSON line instead)."""
    dcc = _open(state, json_output)
    server = DuisHttpServer(dcc, port)
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
        url = f"http://127.0.0.1:{bound}/duis"
        sys.stdout.write(json.dumps({"listening": f"127.0.0.1:{bound}", "port": bound, "url": url}) + "\n")
    else:
        sys.stdout.write(f"vdno-labdcc listening on 127.0.0.1:{bound}\n")
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
