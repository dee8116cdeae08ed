"""Errors raised by the SMETS2 device simulator."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every simulator error."""


class DeviceRefused(SimulatorError):
    """The device cannot or will not produce a signed response (undecodable, addressed to another device,
    unsupported message, unauthorised read). `status` is a GBCS StatusCode when one fits, else None."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason if status is None else f"{reason} (status {status})")
        self.status = status
        self.reason = reason


class ProfileError(SimulatorError):
    """A device profile or tray file is missing, malformed or inconsistent; the message names the field."""
