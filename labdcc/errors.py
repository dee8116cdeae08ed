"""Errors raised by the lab DNO/DCC stand-in."""

from __future__ import annotations


class LabDccError(Exception):
    """Root of every labdcc error: the state folder is missing or inconsistent, or a request was refused."""


class RequestRefused(LabDccError):
    """A DUIS request or submitted command was refused; the message names why (what DCC would answer)."""
