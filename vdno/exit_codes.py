"""The exit codes every vdno tool uses (README "Exit codes"), in one table, and the JSON error object a
tool prints on stdout under --json when it stops early. It sits at the namespace root, importing nothing of
vdno, so that the bench, the server, the officer console and the lab stand-ins share it without importing
one another (docs/architecture.md §3)."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

OK = 0  # done: every meter or item succeeded, the check passed
REFUSED = 1  # some meters or items were refused, failed or are pending; a check found a problem
USAGE = 2  # usage or configuration error: a flag, a settings, TLS, tray or input file; nothing was done
UNAVAILABLE = 3  # the custodian, its database or the device transport cannot be reached
UNVERIFIED = (
    4  # nothing could be verified: a key missing from the keystore, or a MAC-only message without --acb
)

EXIT_CODES: dict[str, int] = {
    "OK": OK,
    "REFUSED": REFUSED,
    "USAGE": USAGE,
    "UNAVAILABLE": UNAVAILABLE,
    "UNVERIFIED": UNVERIFIED,
}

# The error_code of a tool's JSON error object, by exit code, where the tool has no finer code of its own.
ERROR_CODES: dict[int, str] = {
    REFUSED: "REFUSED",
    USAGE: "USAGE_ERROR",
    UNAVAILABLE: "UNAVAILABLE",
    UNVERIFIED: "UNVERIFIED",
}


def error_document(
    message: str, exit_code: int, error_code: str = "", problems: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON error object of a command that stopped early: {error_code, error, exit_code[, problems]};
    `error_code` defaults to the exit code's name in ERROR_CODES."""
    if exit_code not in ERROR_CODES:
        raise ValueError(f"exit code {exit_code} is not an error in the table")
    document: dict[str, Any] = {
        "error_code": error_code or ERROR_CODES[exit_code],
        "error": message,
        "exit_code": exit_code,
    }
    if problems:
        document["problems"] = list(problems)
    return document


def fail_command(
    tool: str,
    message: str,
    exit_code: int,
    *,
    json_output: bool,
    error_code: str = "",
    problems: tuple[str, ...] = (),
) -> NoReturn:
    """Stop a command the way every vdno tool does: with --json, the error object on stdout; always one line
    on stderr, `tool: message`, then one indented line per problem; then exit with `exit_code`. No
    traceback."""
    document = error_document(message, exit_code, error_code, problems)
    if json_output:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"{tool}: {message}\n" + "".join(f"{tool}:   {p}\n" for p in problems))
    sys.stderr.flush()
    raise SystemExit(exit_code)
