"""`vdno-admin generations | approvals | areas | benches`: the officers' custody of the vanilla keys, under
two-person control. Operations that need approval (activate, disable, re-enable, schedule or cancel a
destruction, replace an area's credential set, enrol a bench) print the request they made; other officers
`approvals approve` it, then one `approvals execute`s it within the window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vdno.admin.console import custody_client, emit, fail, refused, table

generations_app = typer.Typer(
    name="generations", help="Vanilla generations (key versions).", no_args_is_help=True
)
approvals_app = typer.Typer(name="approvals", help="Two-person control requests.", no_args_is_help=True)
areas_app = typer.Typer(name="areas", help="The area DNO credential sets.", no_args_is_help=True)
benches_app = typer.Typer(name="benches", help="Enrolled benches.", no_args_is_help=True)

ReasonOpt = Annotated[str, typer.Option("--reason", help="why: approvers and the audit log see it")]
APPROVAL_COLUMNS = ("request_id", "operation", "subject", "status", "requested_by", "approvals", "reason")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror or exc}")


def _call(ctx: typer.Context, method: str, *args: Any) -> Any:
    from vdno.admin.api import CustodyCallFailed

    with custody_client(ctx) as api:
        try:
            return getattr(api, method)(*args)
        except CustodyCallFailed as exc:
            refused(exc)


def _approval_row(request: dict[str, Any]) -> dict[str, Any]:
    approvals = request.get("approvals") or []
    return dict(
        request, approvals=f"{len(approvals)}/{request.get('approvals_required')} {', '.join(approvals)}"
    )


def _requested(ctx: typer.Context, request: dict[str, Any]) -> None:
    emit(ctx, request, table("Approval requested", APPROVAL_COLUMNS, [_approval_row(request)]))
    if not ctx.obj.json_output:
        typer.echo(
            f"request {request['request_id']}: other officers approve it (vdno-admin approvals approve "
            f"{request['request_id']}); then run vdno-admin approvals execute {request['request_id']}"
        )


# --- generations -----------------------------------------------------------------------------------

GENERATION_COLUMNS = (
    "generation",
    "entity_id",
    "status",
    "compromised",
    "not_after",
    "days_to_expiry",
    "destroy_after",
)


@generations_app.command("list", help="Every generation with its state and days left to expiry.")
def generations_list(ctx: typer.Context) -> None:
    generations = _call(ctx, "list_generations")
    rows = [dict(g, days_to_expiry=g["days_to_expiry"] if g["not_after"] else "") for g in generations]
    emit(ctx, generations, table("Vanilla generations", GENERATION_COLUMNS, rows))


@generations_app.command(
    "create", help="The key ceremony: a DS and a KA key pair generated in the HSM (pending until certified)."
)
def generations_create(
    ctx: typer.Context,
    entity_id: Annotated[str, typer.Option("--entity-id", metavar="EUI", help="the generation's own EUI-64")],
) -> None:
    generation = _call(ctx, "create_generation", entity_id)
    emit(ctx, generation, table("Generation created", GENERATION_COLUMNS, [generation]))


@generations_app.command("csr", help="A PKCS#10 request for a pending generation's key, signed in the HSM.")
def generations_csr(
    ctx: typer.Context,
    generation: Annotated[int, typer.Argument(min=1)],
    usage: Annotated[str, typer.Option("--usage", help="ds | ka")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="where to write the request (PEM)")],
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if usage not in ("ds", "ka"):
        fail("--usage must be ds or ka")
    der = _call(ctx, "certificate_request", generation, usage)
    out.write_bytes(x509.load_der_x509_csr(der).public_bytes(Encoding.PEM))
    emit(ctx, {"generation": generation, "usage": usage, "file": str(out)}, None)


@generations_app.command(
    "import",
    help="Import a pending generation's SMKI certificates; each is checked and refused with the reason.",
)
def generations_import(
    ctx: typer.Context,
    generation: Annotated[int, typer.Argument(min=1)],
    ds: Annotated[Path, typer.Option("--ds", metavar="FILE", help="DS certificate (PEM or DER)")],
    ka: Annotated[Path, typer.Option("--ka", metavar="FILE", help="KA certificate (PEM or DER)")],
) -> None:
    record = _call(ctx, "import_certificates", generation, _read(ds, "--ds"), _read(ka, "--ka"))
    emit(ctx, record, table("Generation certified", GENERATION_COLUMNS, [record]))


def _change(operation: str, help_text: str) -> None:
    def command(
        ctx: typer.Context, generation: Annotated[int, typer.Argument(min=1)], reason: ReasonOpt
    ) -> None:
        _requested(ctx, _call(ctx, "request_generation_change", generation, operation, reason))

    generations_app.command(
        operation.replace("-generation", "")
        .replace("schedule-destruction", "schedule-destroy")
        .replace("cancel-destruction", "cancel-destroy"),
        help=help_text,
    )(command)


_change(
    "activate-generation",
    "Request activation (needs approval): the previous active one becomes signing-only.",
)
_change("disable-generation", "Request that a generation sign nothing (needs approval; can be undone).")
_change(
    "reenable-generation", "Request that a disabled generation sign again, as signing-only (needs approval)."
)
_change(
    "schedule-destruction", "Request the destruction of a disabled generation's keys after the grace period."
)
_change("cancel-destruction", "Request that a scheduled destruction be cancelled (back to disabled).")


@generations_app.command(
    "compromised",
    help="Mark a generation compromised: disabled at once, no approval; lists the meters holding it.",
)
def generations_compromised(
    ctx: typer.Context, generation: Annotated[int, typer.Argument(min=1)], reason: ReasonOpt
) -> None:
    reply = _call(ctx, "mark_compromised", generation, reason)
    devices = reply.get("devices_holding", [])
    emit(
        ctx,
        reply,
        table(
            f"Meters still holding generation {generation}: {len(devices)}",
            ("device_id",),
            [{"device_id": d} for d in devices],
        ),
    )


@generations_app.command("destroy-due", help="Delete the keys of generations whose grace period is over.")
def generations_destroy_due(ctx: typer.Context) -> None:
    destroyed = _call(ctx, "destroy_due")
    emit(ctx, {"destroyed": destroyed}, None)


# --- approvals -------------------------------------------------------------------------------------


@approvals_app.command(
    "list", help="Requests pending or approved (all of them with --all), with what, why and who."
)
def approvals_list(
    ctx: typer.Context,
    everything: Annotated[
        bool, typer.Option("--all", help="include executed, rejected and expired ones")
    ] = False,
) -> None:
    requests = _call(ctx, "approval_requests", everything)
    emit(
        ctx,
        requests,
        table("Approval requests", (*APPROVAL_COLUMNS, "details_json"), [_approval_row(r) for r in requests]),
    )


@approvals_app.command("approve", help="Approve another officer's request (once; never your own).")
def approvals_approve(ctx: typer.Context, request_id: Annotated[int, typer.Argument(min=1)]) -> None:
    request = _call(ctx, "approve", request_id)
    emit(ctx, request, table("Approved", APPROVAL_COLUMNS, [_approval_row(request)]))


@approvals_app.command("reject", help="Reject a request; it changes nothing and cannot be revived.")
def approvals_reject(
    ctx: typer.Context, request_id: Annotated[int, typer.Argument(min=1)], reason: ReasonOpt
) -> None:
    request = _call(ctx, "reject", request_id, reason)
    emit(ctx, request, table("Rejected", APPROVAL_COLUMNS, [_approval_row(request)]))


@approvals_app.command(
    "execute",
    help="Carry out an approved request within its window (--out: an enrolled bench's certificate).",
)
def approvals_execute(
    ctx: typer.Context,
    request_id: Annotated[int, typer.Argument(min=1)],
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="write a bench certificate here")
    ] = None,
) -> None:
    result = _call(ctx, "execute", request_id)
    outcome = json.loads(result.get("outcome_json") or "{}")
    if out is not None:
        certificate = outcome.get("certificate_pem")
        if not certificate:
            fail("--out: this request produced no certificate")
        out.write_text(certificate)
    emit(
        ctx,
        {"request": result["request"], "outcome": outcome},
        table("Executed", APPROVAL_COLUMNS, [_approval_row(result["request"])]),
    )


# --- areas -----------------------------------------------------------------------------------------


@areas_app.command("list", help="The registered areas, with how many earlier sets each has.")
def areas_list(ctx: typer.Context) -> None:
    records = _call(ctx, "list_areas")
    rows = [
        dict(r["current"], history=len(r.get("history", [])), ds_certificate=None, ka_certificate=None)
        for r in records
    ]
    emit(ctx, records, table("Areas", ("area_id", "name", "entity_id", "history"), rows))


@areas_app.command(
    "replace", help="Request to register or replace an area's DNO credential set (needs approval)."
)
def areas_replace(
    ctx: typer.Context,
    area_id: Annotated[int, typer.Argument(min=10, max=23)],
    ds: Annotated[Path, typer.Option("--ds", metavar="FILE", help="DS certificate (PEM or DER)")],
    ka: Annotated[Path, typer.Option("--ka", metavar="FILE", help="KA certificate (PEM or DER)")],
    reason: ReasonOpt,
) -> None:
    request = _call(ctx, "request_area_replacement", area_id, _read(ds, "--ds"), _read(ka, "--ka"), reason)
    _requested(ctx, request)


# --- benches ---------------------------------------------------------------------------------------


@benches_app.command("list", help="Benches: status, facility, operations.")
def benches_list(ctx: typer.Context) -> None:
    benches = _call(ctx, "list_benches")
    rows = [dict(b, operations=",".join(b.get("operations", []))) for b in benches]
    emit(
        ctx,
        benches,
        table("Benches", ("bench_id", "status", "facility", "operations", "certificate_sha256"), rows),
    )


@benches_app.command(
    "enrol", help="Request a bench's enrolment from the CSR it made (vdno-bench keygen); needs approval."
)
def benches_enrol(
    ctx: typer.Context,
    csr: Annotated[Path, typer.Option("--csr", metavar="FILE", help="the bench's certificate request")],
    bench: Annotated[str, typer.Option("--bench", metavar="ID", help="the bench id")],
    facility: Annotated[str, typer.Option("--facility", help="where the bench is")],
    reason: ReasonOpt,
    operations: Annotated[
        str, typer.Option("--operations", help="comma-separated: hand-in, hand-out, rotation")
    ] = "hand-in,hand-out,rotation",
) -> None:
    names = [o.strip() for o in operations.split(",") if o.strip()]
    request = _call(ctx, "request_bench_enrolment", bench, _read(csr, "--csr"), facility, names, reason)
    _requested(ctx, request)


@benches_app.command("revoke", help="Revoke a bench at once (no approval): its next call is refused.")
def benches_revoke(ctx: typer.Context, bench: Annotated[str, typer.Argument()], reason: ReasonOpt) -> None:
    info = _call(ctx, "revoke_bench", bench, reason)
    emit(ctx, info, table("Bench revoked", ("bench_id", "status", "facility"), [info]))
