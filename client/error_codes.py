"""The machine-readable `error_code` of each meter in the bench's JSON (README "Errors"). Stable: scripts
match on them. A meter that succeeded has none (null). When the custodian refused a request, the code is the
custodian's own name for the refusal, sent with it (e.g. DEVICE_NOT_VANILLA, OUTSTANDING_COMMAND,
UNKNOWN_AREA, BENCH_NOT_ENROLLED, HSM_UNAVAILABLE: its error class in upper snake case); CUSTODIAN_REFUSED
when it named none. The bench's own codes are these."""

from __future__ import annotations

# -- per meter
METER_UNREADABLE = "METER_UNREADABLE"  # reading the meter (CS02e, CS02a) failed or did not verify
AREA_NOT_IN_BUNDLE = "AREA_NOT_IN_BUNDLE"  # the hand-out's area is not in the pinned trust bundle
SERVER_UNAVAILABLE = "SERVER_UNAVAILABLE"  # the custodian could not be reached (after the retries)
CUSTODIAN_REFUSED = "CUSTODIAN_REFUSED"  # the custodian refused and named no code
INVALID_REPLY = "INVALID_REPLY"  # the custodian's reply was malformed (e.g. names no meter): nothing applied
COMMAND_REFUSED = "COMMAND_REFUSED"  # the bench's checks refused the signed command: not sent to the meter
DCC_FAILED = "DCC_FAILED"  # the DCC gateway did not add its MAC
APPLY_FAILED = "APPLY_FAILED"  # sending the command to the meter failed
RESPONSE_REJECTED = "RESPONSE_REJECTED"  # the meter's response did not verify
METER_REJECTED = "METER_REJECTED"  # the meter refused the command (recorded by the custodian as rejected)
REPORT_FAILED = "REPORT_FAILED"  # the outcome could not be reported (rerun the tray: it is reported then)
NO_COMMAND_YET = "NO_COMMAND_YET"  # hand-in apply: the area DNO's command is not authorised yet

# -- a run that stops before any meter (the one JSON error object on stdout)
USAGE_ERROR = "USAGE_ERROR"  # a flag or setting is wrong
TRAY_INVALID = "TRAY_INVALID"  # the tray file has bad lines or duplicate devices
TLS_FAILED = "TLS_FAILED"  # a TLS file is unusable or the handshake failed
TRANSPORT_UNAVAILABLE = "TRANSPORT_UNAVAILABLE"  # the device transport (--sim) does not take a connection
JOURNAL_FAILED = "JOURNAL_FAILED"  # the tray's journal cannot be read or written

BENCH_CODES = (
    METER_UNREADABLE,
    AREA_NOT_IN_BUNDLE,
    SERVER_UNAVAILABLE,
    CUSTODIAN_REFUSED,
    COMMAND_REFUSED,
    DCC_FAILED,
    APPLY_FAILED,
    RESPONSE_REJECTED,
    METER_REJECTED,
    REPORT_FAILED,
    NO_COMMAND_YET,
    USAGE_ERROR,
    TRAY_INVALID,
    TLS_FAILED,
    TRANSPORT_UNAVAILABLE,
    JOURNAL_FAILED,
)
