"""What every vdno-admin command shares: its connection settings, the custody client, output as tables or
JSON, one-line errors with the documented exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from vdno import exit_codes
from vdno.client.settings import BenchSettings, SettingsError
from vdno.exit_codes import fail_command

EXIT_REFUSED = exit_codes.REFUSED
EXIT_USAGE = exit_codes.USAGE
EXIT_UNAVAILABLE = exit_codes.UNAVAILABLE
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def fail(message: str, code: int = EXIT_USAGE, error_code: str = "") -> NoReturn:
    """One line on stderr and, with --json, one JSON error object on stdout."""
    unreachable = code == EXIT_UNAVAILABLE and not error_code
    fail_command(
        "vdno-admin",
        message,
        code,
        json_output=json_wanted(),
        error_code="SERVER_UNAVAILABLE" if unreachable else error_code,
    )


# Whether the command being run was given --json (vdno-admin --json, or an audit command's own --json):
# fail() then prints its JSON error object on stdout.
_output = {"json": False}


def use_json(value: bool) -> None:
    """Set by vdno-admin's callback for each invocation (--json or not)."""
    _output["json"] = value


def json_wanted(flag: bool = False) -> bool:
    """Record a command's own --json flag (when given) and say whether JSON output is wanted."""
    if flag:
        _output["json"] = True
    return _output["json"]


@dataclass
class Connection:
    settings: BenchSettings | None  # None: unusable; commands that call the service report settings_error
    json_output: bool
    settings_error: str = ""


def custody_client(ctx: typer.Context) -> Any:
    """The custody API client, from the connection settings (failing here, with their error, when they are
    unusable: only commands that call the service need them)."""
    from vdno.admin.api import CustodyClient

    connection: Connection = ctx.obj
    settings = connection.settings
    if settings is None:
        fail(connection.settings_error)
    from vdno.client.tls import TlsSetupError, check_handshake

    try:
        tls = settings.load_tls()
        check_handshake(tls, *settings.server_address(), settings.server_name)
    except (SettingsError, TlsSetupError) as exc:  # a TLS mistake names the file or side at fault
        fail(str(exc))
    return CustodyClient(settings.server, tls.ca_pem, tls.cert_pem, tls.key_pem, settings.server_name)


def refused(exc: Exception) -> NoReturn:
    code = getattr(exc, "code", "UNKNOWN")
    fail(str(exc), EXIT_UNAVAILABLE if code in UNREACHABLE else EXIT_REFUSED, getattr(exc, "error_code", ""))


def emit(ctx: typer.Context, document: Any, rendered: Table | None) -> None:
    """`document` as JSON with --json (or when there is no table), else the table."""
    if ctx.obj.json_output or rendered is None:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console().print(rendered)


def table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> Table:
    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return out
