"""GBCS framing: length encoding (gbcs/README.md §2), MAC Header (§3), General Signing grouping header (§4).

Wire shapes (gbcs/README.md §1):
  GS only:    DF <grouping header> <content> [sig-len sig]
  MAC-framed: DD 00*6 <len> 11 <invocation counter 4> <GS APDU incl. sig-len and sig> <MAC 12>
A PRECOMMAND is a GS APDU with no sig-len byte (or a trailing 00 null-signature byte).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from vdno.gbcs import ber
from vdno.gbcs.errors import DecodeError, EncodeError

GENERAL_SIGNING_TAG = 0xDF
GENERAL_CIPHERING_TAG = 0xDD
SECURITY_CONTROL_AUTH_ONLY = 0x11
MAC_LEN = 12
SIGNATURE_LEN = 64
TRANSACTION_ID_LEN = 9
DATE_TIME_LEN = 12
SECURITY_HEADER_LEN = 5  # security control byte + 4-byte invocation counter


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
    """gbcs/README.md §2: 00-7F one byte; 81 nn; 82 nn nn. EncodeError if n < 0 or n > 0xFFFF."""
    if not isinstance(n, int) or n < 0 or n > 0xFFFF:
        raise EncodeError(f"length {n!r} outside 0..65535")
    return ber.der_length(n)


def read_length(data: bytes, offset: int) -> tuple[int, int]:
    """Decode a §2 length at offset -> (length, offset after the length). DecodeError on truncation."""
    if offset < 0 or offset >= len(data):
        raise DecodeError(f"length: truncated, expected a length byte at offset {offset}")
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    if first in (0x81, 0x82):
        n = first - 0x80
        if offset + 1 + n > len(data):
            raise DecodeError(f"length: truncated {n}-byte length at offset {offset}")
        return int.from_bytes(data[offset + 1 : offset + 1 + n], "big"), offset + 1 + n
    raise DecodeError(f"length: unsupported length form {first:#04x} at offset {offset}")


@dataclass(frozen=True)
class GroupingHeader:
    """gbcs/README.md §4. Ids are 8 bytes; date_time is the 12-byte DLMS date-time or None (encoded 00)."""

    cra: Cra
    originator_counter: int  # 64-bit unsigned, big-endian on the wire
    business_originator_id: bytes
    business_target_id: bytes
    message_code: int
    date_time: bytes | None = None
    supplementary: bytes = b""  # other-information bytes after the 2-byte message code

    @property
    def transaction_id(self) -> bytes:
        """The 9-byte Transaction ID: CRA flag ‖ 64-bit big-endian originator counter. EncodeError if either
        is out of range."""
        try:
            cra = Cra(self.cra)
        except ValueError as exc:
            raise EncodeError(f"CRA flag {self.cra!r} is not 1, 2 or 3") from exc
        if not 0 <= self.originator_counter <= 0xFFFFFFFFFFFFFFFF:
            raise EncodeError(f"originator counter {self.originator_counter} is not a 64-bit unsigned")
        return bytes([cra]) + self.originator_counter.to_bytes(8, "big")

    @property
    def business_ids(self) -> tuple[bytes, bytes]:
        """(business originator id, business target id) as bytes. EncodeError unless each is 8 bytes."""
        for what, value in (
            ("business originator id", self.business_originator_id),
            ("business target id", self.business_target_id),
        ):
            if len(value) != 8:
                raise EncodeError(f"{what} must be 8 bytes, got {len(value)}")
        return bytes(self.business_originator_id), bytes(self.business_target_id)

    def encode(self) -> bytes:
        """Bytes from the transaction-id length byte (09) through the other-information (no DF tag)."""
        transaction_id = self.transaction_id
        originator_id, target_id = self.business_ids
        if not 0 <= self.message_code <= 0xFFFF:
            raise EncodeError(f"message code {self.message_code} outside 0..0xFFFF")
        if self.date_time is None:
            date_time = b"\x00"
        elif len(self.date_time) == DATE_TIME_LEN:
            date_time = bytes([DATE_TIME_LEN]) + bytes(self.date_time)
        else:
            raise EncodeError(f"date-time must be {DATE_TIME_LEN} bytes, got {len(self.date_time)}")
        other = self.message_code.to_bytes(2, "big") + bytes(self.supplementary)
        return (
            bytes([TRANSACTION_ID_LEN])
            + transaction_id
            + b"\x08"
            + originator_id
            + b"\x08"
            + target_id
            + date_time
            + encode_length(len(other))
            + other
        )


@dataclass(frozen=True)
class GeneralSigningApdu:
    """DF ‖ header ‖ content length ‖ content ‖ [sig-len ‖ sig].

    signature: None = pre-command (no sig-len byte); b"" = sig-len 00; 64 bytes = r‖s.
    """

    header: GroupingHeader
    content: bytes
    signature: bytes | None = None

    def __post_init__(self) -> None:
        """EncodeError unless the signature is None, empty or 64 bytes (so every instance can be encoded)."""
        if self.signature is not None and len(self.signature) not in (0, SIGNATURE_LEN):
            raise EncodeError(f"signature must be 0 or {SIGNATURE_LEN} bytes, got {len(self.signature)}")

    def signed_bytes(self) -> bytes:
        """GBCS signed range (gbcs/README.md §6): from the byte after DF through the last content byte."""
        return self.header.encode() + encode_length(len(self.content)) + bytes(self.content)

    def encode(self) -> bytes:
        """The APDU from DF; with the sig-len byte and signature unless signature is None."""
        precommand = self.encode_precommand()
        if self.signature is None:
            return precommand
        return precommand + bytes([len(self.signature)]) + bytes(self.signature)

    def encode_precommand(self) -> bytes:
        """The APDU without sig-len byte and signature (the RTDS PRECOMMAND form)."""
        return bytes([GENERAL_SIGNING_TAG]) + self.signed_bytes()

    def with_signature(self, signature: bytes) -> GeneralSigningApdu:
        """This APDU with `signature` (empty or 64 bytes r‖s; EncodeError otherwise)."""
        return replace(self, signature=bytes(signature))


def encode_signed_apdu(signed_range: bytes, signature: bytes) -> bytes:
    """DF ‖ signed range ‖ sig-len 40 ‖ r‖s: what `apdu.with_signature(signature).encode()` gives for the
    APDU whose `signed_bytes()` is `signed_range`, without encoding its header again. EncodeError unless
    the signature is 64 bytes."""
    if len(signature) != SIGNATURE_LEN:
        raise EncodeError(f"signature must be {SIGNATURE_LEN} bytes, got {len(signature)}")
    return bytes([GENERAL_SIGNING_TAG]) + bytes(signed_range) + bytes([SIGNATURE_LEN]) + bytes(signature)


def decode_apdu(data: bytes) -> tuple[GeneralSigningApdu, bytes]:
    """Decode a GS APDU that must span all of `data` -> (apdu, the exact signed-range bytes from data).

    Accepts: pre-command (nothing after content), trailing 00 null signature, 40 ‖ 64 bytes.
    """
    return _decode_apdu(bytes(data), 0)


def _need(data: bytes, pos: int, n: int, field: str, base: int) -> None:
    if pos + n > len(data):
        raise DecodeError(
            f"{field}: truncated at offset {base + pos} (need {n} bytes, have {len(data) - pos})"
        )


def _decode_apdu(data: bytes, base: int) -> tuple[GeneralSigningApdu, bytes]:
    _need(data, 0, 1, "general-signing tag", base)
    if data[0] != GENERAL_SIGNING_TAG:
        raise DecodeError(f"general-signing tag: expected DF, got {data[0]:02X} at offset {base}")
    pos = 1
    _need(data, pos, 1 + TRANSACTION_ID_LEN, "transaction-id", base)
    if data[pos] != TRANSACTION_ID_LEN:
        raise DecodeError(f"transaction-id length: expected 09, got {data[pos]:02X} at offset {base + pos}")
    try:
        cra = Cra(data[pos + 1])
    except ValueError as exc:
        raise DecodeError(
            f"CRA flag: {data[pos + 1]:02X} is not 01/02/03 at offset {base + pos + 1}"
        ) from exc
    counter = int.from_bytes(data[pos + 2 : pos + 10], "big")
    pos += 1 + TRANSACTION_ID_LEN
    ids: list[bytes] = []
    for field in ("business originator id", "business target id"):
        _need(data, pos, 9, field, base)
        if data[pos] != 8:
            raise DecodeError(f"{field} length: expected 08, got {data[pos]:02X} at offset {base + pos}")
        ids.append(data[pos + 1 : pos + 9])
        pos += 9
    _need(data, pos, 1, "date-time length", base)
    dt_len = data[pos]
    date_time: bytes | None
    if dt_len == 0:
        date_time = None
    elif dt_len == DATE_TIME_LEN:
        _need(data, pos + 1, DATE_TIME_LEN, "date-time", base)
        date_time = data[pos + 1 : pos + 1 + DATE_TIME_LEN]
    else:
        raise DecodeError(f"date-time length: expected 00 or 0C, got {dt_len:02X} at offset {base + pos}")
    pos += 1 + dt_len
    other_len, pos_after = _read_length_at(data, pos, "other-information length", base)
    if other_len < 2:
        raise DecodeError(f"other-information length {other_len} < 2 at offset {base + pos}")
    pos = pos_after
    _need(data, pos, other_len, "other-information", base)
    message_code = int.from_bytes(data[pos : pos + 2], "big")
    supplementary = data[pos + 2 : pos + other_len]
    pos += other_len
    content_len, pos = _read_length_at(data, pos, "content length", base)
    _need(data, pos, content_len, "content", base)
    content = data[pos : pos + content_len]
    pos += content_len
    signed_range = data[1:pos]
    rest = data[pos:]
    signature: bytes | None
    if not rest:
        signature = None
    elif rest[0] == 0 and len(rest) == 1:
        signature = b""
    elif rest[0] == SIGNATURE_LEN and len(rest) == 1 + SIGNATURE_LEN:
        signature = rest[1:]
    elif rest[0] == SIGNATURE_LEN:
        raise DecodeError(
            f"signature: expected {SIGNATURE_LEN} bytes after 40 at offset {base + pos}, got {len(rest) - 1}"
        )
    else:
        raise DecodeError(
            f"signature length: {rest[0]:02X} at offset {base + pos} with {len(rest) - 1} bytes after it "
            "(expected end, 00, or 40 + 64 bytes)"
        )
    header = GroupingHeader(
        cra=cra,
        originator_counter=counter,
        business_originator_id=ids[0],
        business_target_id=ids[1],
        message_code=message_code,
        date_time=date_time,
        supplementary=supplementary,
    )
    return GeneralSigningApdu(header, content, signature), signed_range


def _read_length_at(data: bytes, pos: int, field: str, base: int) -> tuple[int, int]:
    try:
        return read_length(data, pos)
    except DecodeError as exc:
        raise DecodeError(f"{field}: {exc} (message offset {base + pos})") from exc


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
    data = bytes(data)
    if not data:
        raise DecodeError("message: empty")
    if data[0] == GENERAL_SIGNING_TAG:
        apdu, signed_range = _decode_apdu(data, 0)
        return GbcsMessage(apdu=apdu, signed_range=signed_range, apdu_bytes=data)
    if data[0] != GENERAL_CIPHERING_TAG:
        raise DecodeError(f"message: first byte {data[0]:02X} at offset 0 is neither DD nor DF")
    _need(data, 1, 6, "MAC header", 0)
    if data[1:7] != bytes(6):
        raise DecodeError("MAC header: bytes 1-6 must be 00 (zero-length fields, key-info absent)")
    length, pos = _read_length_at(data, 7, "MAC header ciphered-service length", 0)
    if length != len(data) - pos:
        raise DecodeError(
            f"MAC header ciphered-service length: {length} at offset 7 but {len(data) - pos} bytes follow"
        )
    _need(data, pos, SECURITY_HEADER_LEN + MAC_LEN + 1, "MAC-framed body", 0)
    if data[pos] != SECURITY_CONTROL_AUTH_ONLY:
        raise DecodeError(f"security control byte: expected 11, got {data[pos]:02X} at offset {pos}")
    invocation_counter = int.from_bytes(data[pos + 1 : pos + 5], "big")
    apdu_start = pos + SECURITY_HEADER_LEN
    apdu_bytes = data[apdu_start : len(data) - MAC_LEN]
    apdu, signed_range = _decode_apdu(apdu_bytes, apdu_start)
    if apdu.signature is None:
        raise DecodeError(f"MAC-framed APDU at offset {apdu_start} lacks the signature-length byte")
    return GbcsMessage(
        apdu=apdu,
        signed_range=signed_range,
        apdu_bytes=apdu_bytes,
        mac=data[len(data) - MAC_LEN :],
        invocation_counter=invocation_counter,
    )


def encode_invocation_counter(invocation_counter: int) -> bytes:
    """The 4-byte big-endian invocation counter of the MAC security header. EncodeError outside 32 bits."""
    if not 0 <= invocation_counter <= 0xFFFFFFFF:
        raise EncodeError(f"invocation counter {invocation_counter} is not a 32-bit unsigned")
    return invocation_counter.to_bytes(4, "big")


def encode_mac_framed(apdu_bytes: bytes, mac: bytes, invocation_counter: int = 0) -> bytes:
    """Wrap a complete GS APDU (with sig-len and signature) in the MAC Header with the 12-byte MAC."""
    if len(mac) != MAC_LEN:
        raise EncodeError(f"MAC must be {MAC_LEN} bytes, got {len(mac)}")
    if not apdu_bytes or apdu_bytes[0] != GENERAL_SIGNING_TAG:
        raise EncodeError("APDU to MAC-frame must start with DF")
    counter = encode_invocation_counter(invocation_counter)
    return (
        bytes([GENERAL_CIPHERING_TAG])
        + bytes(6)
        + encode_length(SECURITY_HEADER_LEN + len(apdu_bytes) + MAC_LEN)
        + bytes([SECURITY_CONTROL_AUTH_ONLY])
        + counter
        + bytes(apdu_bytes)
        + bytes(mac)
    )
