"""Errors raised by the DUIS codec. Every failure on an untrusted document is a DuisError whose message names
the element or attribute that was wrong."""

from __future__ import annotations


class DuisError(Exception):
    """Root of every DUIS codec error: a document or value is malformed, unsupported or out of range."""


class ResponseCodeError(DuisError):
    """A DUIS response reports a ResponseCode other than success (I0); `response_code` is that code."""

    def __init__(self, response_code: str, message: str) -> None:
        super().__init__(message)
        self.response_code = response_code
