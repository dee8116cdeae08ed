"""GBCS framing: length encoding (README §2), MAC Header (§3), General Signing grouping header (§4).

Wire shapes (README §1):
  GS only:    DF <grouping header> <content> [sig-len sig]
  MAC-framed: DD 00*6 <len> 11 <invocation counter 4> <GS APDU incl. sig-len and sig> <MAC 12>
A PRECOMMAND is a GS APDU with no sig-len byte (or a trailing 00 null-signature byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

GENERAL_SIGNING_TAG = 0xDF
GENERAL_CIPHERING_TAG = 0xDD
SECURITY_CONTROL_AUTH_ONLY = 0x11
MAC_LEN = 12
SIGNATURE_LEN = 64


class Cra(IntEnum):
    COMMAND = 1
    RESPONSE = 2
    ALERT = 3


class MessageCode(IntEnum):
    CS02A_PROVIDE_SECURITY_CREDENTIALS = 0x0008
    CS02D_UPDATE_DEVICE_CERTIFICATE = 0x000B
    CS02E_PROVIDE_DEVICE_CERTIFICATE = 0x000C
    CS02B_FUTURE_DATED_ALERT = 0x00CB
    # CS02b: 0x0100 + credentialsReplacementMode (0..9)
    CS02B_ROOT_BY_SUPPLIER = 0x0100
    CS02B_ROOT_BY_WAN_PROVIDER = 0x0101
    CS02B_SUPPLIER_BY_SUPPLIER = 0x0102
    CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR = 0x0103
    CS02B_ACB_BY_ACB = 0x0104
    CS02B_WAN_PROVIDER_BY_WAN_PROVIDER = 0x0105
    CS02B_TRANS_COS_BY_TRANS_COS = 0x0106
    CS02B_SUPPLIER_BY_TRANS_COS = 0x0107
    CS02B_ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY = 0x0108
    CS02B_ANY_BY_CONTINGENCY = 0x0109


def encode_length(n: int) -> bytes:
    """README §2: 00-7F one byte; 81 nn; 82 nn nn. EncodeError if n < 0 or n > 0xFFFF."""
    raise NotImplementedError


def read_length(data: bytes, offset: int) -> tuple[int, int]:
    """Decode a §2 length at offset -> (length, offset after the length). DecodeError on truncation."""
    raise NotImplementedError


@dataclass(frozen=True)
class GroupingHeader:
    """README §4. Ids are 8 bytes; date_time is the 12-byte DLMS date-time or None (encoded 00)."""

    cra: Cra
    originator_counter: int  # 64-bit unsigned, big-endian on the wire
    business_originator_id: bytes
    business_target_id: bytes
    message_code: int
    date_time: bytes | None = None
    supplementary: bytes = b""  # other-information bytes after the 2-byte message code

    def encode(self) -> bytes:
        """Bytes from the transaction-id length byte (09) through the other-information (no DF tag)."""
        raise NotImplementedError


@dataclass(frozen=True)
class GeneralSigningApdu:
    """DF ‖ header ‖ content length ‖ content ‖ [sig-len ‖ sig].

    signature: None = pre-command (no sig-len byte); b"" = sig-len 00; 64 bytes = r‖s.
    """

    header: GroupingHeader
    content: bytes
    signature: bytes | None = None

    def signed_bytes(self) -> bytes:
        """GBCS signed range (README §6): from the byte after DF through the last content byte."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The APDU from DF; with the sig-len byte and signature unless signature is None."""
        raise NotImplementedError

    def encode_precommand(self) -> bytes:
        """The APDU without sig-len byte and signature (the RTDS PRECOMMAND form)."""
        raise NotImplementedError

    def with_signature(self, signature: bytes) -> GeneralSigningApdu:
        raise NotImplementedError


def decode_apdu(data: bytes) -> tuple[GeneralSigningApdu, bytes]:
    """Decode a GS APDU that must span all of `data` -> (apdu, the exact signed-range bytes from data).

    Accepts: pre-command (nothing after content), trailing 00 null signature, 40 ‖ 64 bytes.
    """
    raise NotImplementedError


@dataclass(frozen=True)
class GbcsMessage:
    """A decoded message: the GS APDU and, when MAC-framed, the MAC header values and MAC."""

    apdu: GeneralSigningApdu
    signed_range: bytes  # exact bytes covered by the KRP signature, as received
    apdu_bytes: bytes  # exact GS APDU bytes from DF through the signature, as received (MAC AAD)
    mac: bytes | None = None  # 12 bytes when MAC-framed
    invocation_counter: int = 0

    @property
    def mac_framed(self) -> bool:
        return self.mac is not None


def decode_message(data: bytes) -> GbcsMessage:
    """Decode DD-framed or DF-only bytes (command, pre-command, response, alert). DecodeError otherwise."""
    raise NotImplementedError


def encode_mac_framed(apdu_bytes: bytes, mac: bytes, invocation_counter: int = 0) -> bytes:
    """Wrap a complete GS APDU (with sig-len and signature) in the MAC Header with the 12-byte MAC."""
    raise NotImplementedError
