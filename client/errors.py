"""Errors raised by the bench client. Each carries a short, named reason suitable for one stderr line."""

from __future__ import annotations


class BenchError(Exception):
    """Root of every bench-client error."""


class TransportError(BenchError):
    """The device transport failed (connection, framing, unexpected reply)."""


class DeviceRefusedError(TransportError):
    """The device (or simulator) answered with an error frame."""

    def __init__(self, status: int | None, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(
            f"device refused: {reason}" if status is None else f"device refused (status {status}): {reason}"
        )


class ServiceError(BenchError):
    """A custodian RPC failed; code_name is the gRPC status code name (e.g. UNAVAILABLE), error_code the
    custodian's name for the refusal (e.g. DEVICE_NOT_VANILLA; client/error_codes.py), else derived from
    the status code."""

    def __init__(self, code_name: str, message: str, error_code: str = "") -> None:
        self.code_name = code_name
        self.message = message
        if not error_code:
            unreachable = code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
            error_code = "SERVER_UNAVAILABLE" if unreachable else "CUSTODIAN_REFUSED"
        self.error_code = error_code
        super().__init__(f"{code_name}: {message}")

    @property
    def unreachable(self) -> bool:
        """The custodian could not be reached or could not answer (after the client's retries)."""
        return self.code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


class BundleError(BenchError):
    """The trust bundle is malformed or lacks something the bench needs (e.g. the area)."""


class ReadError(BenchError):
    """Reading the meter (CS02e / CS02a) failed or its answer did not verify."""


class CheckFailed(BenchError):
    """One of the bench's own checks (client/checks.py) failed; `reason` is a short name, `detail` the
    specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CommandRefused(CheckFailed):
    """check_command refused a signed command: it is not sent to the meter."""


class ResponseRejected(CheckFailed):
    """check_response rejected the meter's response."""
