"""`vdno-labdcc`: the lab DNOs and DCC. `init` makes the lab parties, `answer` completes a folder of DUIS
6.15.1 requests into LocalCommand responses, `serve` runs the DUIS endpoint for signed pre-commands."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import typer

from labdcc.dcc import LabDcc
from labdcc.errors import LabDccError
from labdcc.parties import ensure_lab_parties
from labdcc.web import DuisHttpServer
from labpki.store import atomic_write, export_keystore

RESPONSE_SUFFIX = "-response.xml"
USAGE_ERROR = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lab stand-in for the area DNOs and DCC")

_STATE = typer.Option(..., "--state", help="state folder (shared with vdno-server init)")


@app.callback()
def main() -> None:
    """Lab stand-in for the 14 area DNOs and for DCC and its ACB (test material only)."""


def _open(state: Path) -> LabDcc:
    try:
        return LabDcc(state)
    except LabDccError as exc:
        typer.echo(f"vdno-labdcc: {exc}", err=True)
        raise typer.Exit(USAGE_ERROR) from exc


@app.command()
def init(state: Path = _STATE) -> None:
    """Make (or load) the lab SMKI hierarchy, the 14 area DNOs' and the ACB's credentials, the keystore."""
    try:
        parties = ensure_lab_parties(state)
    except LabDccError as exc:
        typer.echo(f"vdno-labdcc: {exc}", err=True)
        raise typer.Exit(1) from exc
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
) -> None:
    """Issue an SMKI organisation certificate from a request, as DCC's SMKI does (lab issuing CA in
    STATE/pki): the request's key, the given entity id and role, one key usage, the SMKI policy. The
    certificate joins the lab SMKI inventory (STATE/keystore), where the lab ACB looks originators up."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from gbcs.errors import DecodeError
    from gbcs.ids import parse_eui64
    from labpki.errors import LabPkiError
    from labpki.hierarchy import LabHierarchy
    from labpki.smki import issue_from_csr

    if usage not in ("ds", "ka"):
        typer.echo("vdno-labdcc: --usage must be ds or ka", err=True)
        raise typer.Exit(USAGE_ERROR)
    try:
        entity = parse_eui64(entity_id)
        hierarchy = LabHierarchy.load(state / "pki")
        certificate = issue_from_csr(hierarchy.issuing_ca, csr.read_bytes(), entity, role, usage)  # type: ignore[arg-type]
    except (DecodeError, LabPkiError, OSError) as exc:
        typer.echo(f"vdno-labdcc: {exc}", err=True)
        raise typer.Exit(1) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(certificate.public_bytes(Encoding.PEM))
    export_keystore(state / "keystore", [certificate], include_keys=False)  # the SMKI inventory
    typer.echo(
        f"issued {out} (entity {entity.hex()}, role {role:02X}, {usage}); added to {state / 'keystore'}"
    )


@app.command()
def answer(
    state: Path = _STATE,
    requests: Path = typer.Option(..., "--requests", help="folder of DUIS 6.15.1 request *.xml (recursive)"),
    out: Path = typer.Option(..., "--out", help="folder for the *-response.xml files (same layout)"),
) -> None:
    """Answer every request as its area DNO and the ACB would. Exit 1 when any request was refused."""
    if not requests.is_dir():
        typer.echo(f"vdno-labdcc: --requests {requests} is not a folder", err=True)
        raise typer.Exit(USAGE_ERROR)
    dcc = _open(state)
    files = sorted(
        path for path in requests.rglob("*.xml") if path.is_file() and not _earlier_answer(path, out)
    )
    if not files:
        typer.echo(f"no *.xml requests under {requests}")
        return
    refused = 0
    for path in files:
        relative = path.relative_to(requests)
        target = out / relative.parent / f"{relative.stem}{RESPONSE_SUFFIX}"
        try:
            response = dcc.answer_request(path.read_bytes())
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, response, 0o644)
        except (LabDccError, OSError) as exc:
            refused += 1
            typer.echo(f"refused {relative}: {exc}")
            continue
        typer.echo(f"answered {relative} -> {target}")
    typer.echo(f"{len(files) - refused} answered, {refused} refused")
    if refused:
        raise typer.Exit(1)


def _earlier_answer(path: Path, out: Path) -> bool:
    """A response written by an earlier run when --out lies inside (or is) --requests."""
    return path.name.endswith(RESPONSE_SUFFIX) and path.resolve().is_relative_to(out.resolve())


@app.command()
def serve(
    state: Path = _STATE,
    port: int = typer.Option(0, "--port", min=0, max=65535, help="TCP port on 127.0.0.1 (0 = any free port)"),
) -> None:
    """Serve POST /duis (SignedPreCommand, CV 6 -> LocalCommand response) on 127.0.0.1 until SIGTERM/SIGINT;
    prints `vdno-labdcc listening on 127.0.0.1:PORT` first."""
    dcc = _open(state)
    server = DuisHttpServer(dcc, port)
    try:
        bound = server.start()
    except OSError as exc:
        typer.echo(f"vdno-labdcc: cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    # Handlers before the 'listening' line: a caller may send SIGTERM as soon as it reads it.
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.stdout.write(f"vdno-labdcc listening on 127.0.0.1:{bound}\n")
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
