"""Errors raised by the lab PKI."""

from __future__ import annotations


class LabPkiError(Exception):
    """A lab-PKI operation failed: a bad CSR, a bad argument, or an inconsistent folder on disk."""
