"""`vdno-admin audit`: signed checkpoints of the audit log (over the service), and offline verification and
export of the log (no server needed: the database the server's configuration names, or an export file).

Exit codes: checkpoint as every vdno-admin command; verify 0 intact (and every checkpoint reached),
1 a problem found (each named, with the first bad entry), 2 usage or configuration error, 3 the database
cannot be read; export 0 written, 1 the head row is malformed, 2 usage or configuration error, 3 the
database cannot be read."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer

from vdno import exit_codes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from sqlalchemy import Engine

    from vdno.server.config import Settings
    from vdno.server.domain.audit import AuditReport

EXIT_PROBLEM = exit_codes.REFUSED
EXIT_USAGE = exit_codes.USAGE
EXIT_UNAVAILABLE = exit_codes.UNAVAILABLE

audit_app = typer.Typer(
    name="audit",
    help=(
        "The audit log: signed checkpoints (over the service), offline verification and export (the database "
        "named by the server's configuration, VDNO_DATABASE_URL overriding it, with no server running)."
    ),
    no_args_is_help=True,
)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    from vdno.admin.console import fail

    fail(message, code, "AUDIT_LOG_BROKEN" if code == EXIT_PROBLEM else "")


def _json_wanted(ctx: typer.Context, flag: bool) -> bool:
    from vdno.admin.console import json_wanted

    return json_wanted(flag) or bool(getattr(ctx.obj, "json_output", False))


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """A text file that becomes `path` (renamed over it) only when the block completes: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@audit_app.command(
    "checkpoint",
    help=(
        "Have the audit key in the HSM sign the audit log's chain head (seq, hash, time) and write the "
        "checkpoint document to FILE (refused if FILE exists). The server audits it as audit.checkpoint."
    ),
)
def checkpoint(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="where to write the checkpoint (JSON)")],
    json_output: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    _json_wanted(ctx, json_output)
    from vdno.admin.api import CustodyCallFailed
    from vdno.admin.console import custody_client as _client
    from vdno.admin.console import refused as _refused
    from vdno.server.domain.checkpoint import AuditCheckpoint
    from vdno.server.domain.errors import AuditDocumentInvalid

    if out.exists():
        _fail(f"--out {out} exists: checkpoints are kept, name a new file")
    with _client(ctx) as api:
        try:
            reply = api.create_checkpoint()
        except CustodyCallFailed as exc:
            _refused(exc)
    try:
        AuditCheckpoint.from_document(reply["document"])
    except AuditDocumentInvalid as exc:
        _fail(f"the service returned an unusable checkpoint: {exc}", EXIT_PROBLEM)
    with _replacing(out) as handle:
        handle.write(reply["document"])
    summary = {k: reply[k] for k in ("seq", "head_hash", "at", "key_id")} | {"file": str(out)}
    if _json_wanted(ctx, json_output):
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"checkpoint of entry {reply['seq']} (hash {reply['head_hash'][:16]}...) signed at {reply['at']} "
            f"by key {reply['key_id'][:16]}...; written to {out}"
        )


def _settings(server_config: Path) -> Settings:
    """The server's settings, offline: only its database and audit key are used, so the TLS, HSM and CA
    files it names are not read (they may live on the server alone). One line per problem, exit 2."""
    from vdno.server.config import ConfigError, load_settings

    try:
        return load_settings(server_config, check_files=False)
    except ConfigError as exc:
        for problem in exc.problems[:-1]:
            typer.echo(f"vdno-admin: --server-config {server_config}: {problem}", err=True)
        _fail(f"--server-config {server_config}: {exc.problems[-1]}")


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    from vdno.server.store.engine import make_engine

    engine = make_engine(settings.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _public_key(audit_key: Path | None, settings: Settings | None) -> ec.EllipticCurvePublicKey:
    from vdno.server.audit_key import read_public_key
    from vdno.server.config import ConfigError

    if audit_key is None and (settings is None or settings.audit is None):
        _fail(
            "checking checkpoints needs the audit public key: give --audit-key PEM, or --server-config with "
            "an [audit] table (`vdno-server init` adds it)"
        )
    path = audit_key if audit_key is not None else settings.audit.public_key  # type: ignore[union-attr]
    try:
        return read_public_key(path)
    except ConfigError as exc:
        _fail(str(exc))


def _emit_report(report: AuditReport, source: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"source": source} | report.as_json(), indent=2))
    else:
        typer.echo(f"audit log ({source}): {report.entries} entries verified")
        for problem in report.problems:
            typer.echo(f"  problem: {problem.message}")
        for result in report.checkpoints:
            at = "" if result.seq is None else f" (entry {result.seq})"
            typer.echo(f"  checkpoint {result.source}{at}: {result.status.value}")
        if report.ok:
            typer.echo(f"audit log intact: {report.entries} entries, head entry {report.last.seq}")
        else:
            first = report.first_bad_seq
            typer.echo("audit log NOT intact" + ("" if first is None else f": first bad entry {first}"))
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command(
    "verify",
    help=(
        "Verify the audit log offline: seqs contiguous from 1, every prev_hash links, every hash recomputes, "
        "the chain head names the last entry, and for each --against checkpoint: signed by the audit key "
        "and reached by the log (its entry exists with the signed hash). Reads the database of "
        "--server-config (VDNO_DATABASE_URL overrides), or --export FILE (--server-config then only names "
        "the audit key). Names the first bad entry."
    ),
)
def verify(
    ctx: typer.Context,
    server_config: Annotated[
        Path | None, typer.Option("--server-config", metavar="TOML", help="the server's config.toml")
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", metavar="JSONL", help="verify this export instead of the database"),
    ] = None,
    against: Annotated[
        list[Path] | None, typer.Option("--against", metavar="FILE", help="checkpoint documents (repeatable)")
    ] = None,
    audit_key: Annotated[
        Path | None, typer.Option("--audit-key", metavar="PEM", help="audit public key (default: [audit])")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="with --server-config: processes walking a log of 1,000,000 entries or more in seq ranges; "
            "0: one a CPU; 1: one pass",
        ),
    ] = 1,
) -> None:
    _json_wanted(ctx, json_output)
    from vdno.server.domain.audit import read_export
    from vdno.server.domain.checkpoint import verify_against_checkpoints
    from vdno.server.domain.errors import AuditDocumentInvalid, StoreUnavailable
    from vdno.server.store.audit import audit_snapshot, worker_count

    if server_config is None and export is None:
        _fail("give --server-config TOML (verify the database) or --export JSONL (verify an export)")
    settings = _settings(server_config) if server_config is not None else None
    documents: list[tuple[str, bytes]] = []
    for path in against or []:
        try:
            documents.append((str(path), path.read_bytes()))
        except OSError as exc:
            _fail(f"--against {path} cannot be read: {exc.strerror or exc}")
    key = _public_key(audit_key, settings) if documents else None
    as_json = _json_wanted(ctx, json_output)
    if export is not None:
        try:
            lines = export.open(encoding="utf-8")
        except OSError as exc:
            _fail(f"--export {export} cannot be read: {exc.strerror or exc}")
        with lines:
            try:
                report = verify_against_checkpoints(read_export(lines), documents, key)
            except AuditDocumentInvalid as exc:
                _fail(f"--export {export}: {exc}", EXIT_PROBLEM)
            except UnicodeDecodeError:
                _fail(f"--export {export} is not UTF-8 text", EXIT_PROBLEM)
        _emit_report(report, f"export {export}", as_json)
        return
    assert settings is not None
    try:
        with (
            _engine(settings) as engine,
            audit_snapshot(engine, workers=worker_count(workers)) as snapshot,
        ):
            report = verify_against_checkpoints(snapshot, documents, key)
            source = f"database {engine.url.render_as_string(hide_password=True)}"
    except StoreUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    _emit_report(report, source, as_json)


@audit_app.command(
    "export",
    help=(
        "Write the audit log of the database --server-config names (VDNO_DATABASE_URL overrides) to a JSON "
        "lines file: a header with the chain head, then every entry as stored, from one snapshot. "
        "`audit verify --export FILE` checks it like the database."
    ),
)
def export(
    ctx: typer.Context,
    server_config: Annotated[
        Path, typer.Option("--server-config", metavar="TOML", help="the server's config.toml")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="the export to write (JSON lines)")],
    json_output: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    _json_wanted(ctx, json_output)
    from vdno.server.domain.errors import AuditDocumentInvalid, StoreUnavailable
    from vdno.server.store.audit import export_log

    settings = _settings(server_config)
    if out.is_dir():
        _fail(f"--out {out} is a directory")
    try:
        with _engine(settings) as engine, _replacing(out) as handle:
            count, head = export_log(engine, handle)
    except StoreUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except AuditDocumentInvalid as exc:
        _fail(f"{exc}; nothing exported (`audit verify --server-config` names the damage)", EXIT_PROBLEM)
    summary = {"file": str(out), "entries": count, "head": None if head is None else head.as_json()}
    if _json_wanted(ctx, json_output):
        typer.echo(json.dumps(summary, indent=2))
    else:
        at = "no chain head row" if head is None else f"chain head entry {head.seq}"
        typer.echo(f"exported {count} entries ({at}) to {out}")
