"""Errors raised by the GBCS codec. Every failure on untrusted bytes is a GbcsError subclass."""

from __future__ import annotations


class GbcsError(Exception):
    """Root of every codec error."""


class DecodeError(GbcsError):
    """Bytes are not a well-formed GBCS message or payload; the message names the field and offset."""


class EncodeError(GbcsError):
    """A value cannot be encoded (out of range, wrong size)."""


class SignatureError(GbcsError):
    """A KRP or device signature is missing or does not verify."""


class MacError(GbcsError):
    """An ACB-SMD MAC is missing or does not verify."""


class CertificateError(GbcsError):
    """A certificate does not meet the SMKI profile, the target cell, or does not chain to the root."""

    def __init__(self, message: str, status_code: int = 5) -> None:
        # status_code: the GBCS/TAMP StatusCode a device would report (5 badCertificate, 10 noTrustAnchor)
        super().__init__(message)
        self.status_code = status_code
