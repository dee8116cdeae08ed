"""The exit codes every vdno tool uses (README "Exit codes"): one table. The server and the lab stand-ins
keep copies (server/exit_codes.py, simulator/exit_codes.py: the server never imports the client, labdcc
never imports client or server);
tests/client/test_tool_conventions.py asserts that they agree."""

from __future__ import annotations

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
