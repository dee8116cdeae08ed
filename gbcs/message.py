"""Decode any CS02a/b/d/e message into header + typed payload (used by inspect and the bench)."""

from __future__ import annotations

from dataclasses import dataclass

from gbcs.cs02a import ProvideSecurityCredentialsCommand, ProvideSecurityCredentialsResponse
from gbcs.cs02b import (
    FutureDatedAlert,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from gbcs.cs02e import (
    DeviceCertificateResponse,
    ProvideDeviceCertificateCommand,
    UpdateDeviceCertificateCommand,
    UpdateDeviceCertificateResponse,
)
from gbcs.framing import GbcsMessage

Payload = (
    ProvideSecurityCredentialsCommand
    | ProvideSecurityCredentialsResponse
    | UpdateSecurityCredentialsCommand
    | UpdateSecurityCredentialsResponse
    | FutureDatedAlert
    | ProvideDeviceCertificateCommand
    | DeviceCertificateResponse
    | UpdateDeviceCertificateCommand
    | UpdateDeviceCertificateResponse
)


@dataclass(frozen=True)
class DecodedMessage:
    message: GbcsMessage
    payload: Payload

    @property
    def is_precommand(self) -> bool:
        return self.message.apdu.signature is None


def decode_payload(message: GbcsMessage) -> Payload:
    """Pick the payload type by message code and CRA flag. DecodeError for unknown codes."""
    raise NotImplementedError


def decode_any(data: bytes) -> DecodedMessage:
    """decode_message + decode_payload."""
    raise NotImplementedError
