"""Decode any CS02a/b/d/e message into header + typed payload (used by inspect and the bench)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand, ProvideSecurityCredentialsResponse
from vdno.gbcs.cs02b import (
    FutureDatedAlert,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import (
    DeviceCertificateResponse,
    ProvideDeviceCertificateCommand,
    UpdateDeviceCertificateCommand,
    UpdateDeviceCertificateResponse,
)
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.framing import Cra, GbcsMessage, MessageCode, decode_message

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
    header = message.apdu.header
    code = header.message_code
    cra = header.cra
    content = message.apdu.content
    table = _COMMANDS if cra == Cra.COMMAND else _RESPONSES if cra == Cra.RESPONSE else _ALERTS
    if MessageCode.CS02B_ROOT_BY_SUPPLIER <= code <= MessageCode.CS02B_ANY_BY_CONTINGENCY:
        key = int(MessageCode.CS02B_ROOT_BY_SUPPLIER)
    else:
        key = code
    decoder = table.get(key)
    if decoder is None:
        raise DecodeError(f"message code {code:#06x} with CRA {int(cra)} is not a CS02a/b/d/e message")
    return decoder(content)


def decode_any(data: bytes) -> DecodedMessage:
    """decode_message + decode_payload."""
    message = decode_message(data)
    return DecodedMessage(message, decode_payload(message))


_Decoder = Callable[[bytes], Payload]

_COMMANDS: dict[int, _Decoder] = {
    MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS: ProvideSecurityCredentialsCommand.decode,
    MessageCode.CS02B_ROOT_BY_SUPPLIER: UpdateSecurityCredentialsCommand.decode,
    MessageCode.CS02D_UPDATE_DEVICE_CERTIFICATE: UpdateDeviceCertificateCommand.decode,
    MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE: ProvideDeviceCertificateCommand.decode,
}
_RESPONSES: dict[int, _Decoder] = {
    MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS: ProvideSecurityCredentialsResponse.decode,
    MessageCode.CS02B_ROOT_BY_SUPPLIER: UpdateSecurityCredentialsResponse.decode,
    MessageCode.CS02D_UPDATE_DEVICE_CERTIFICATE: UpdateDeviceCertificateResponse.decode,
    MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE: DeviceCertificateResponse.decode,
}
_ALERTS: dict[int, _Decoder] = {
    MessageCode.CS02B_FUTURE_DATED_ALERT: FutureDatedAlert.decode,
}
