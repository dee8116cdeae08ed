"""Trust-anchor cell identifiers and the enums shared by CS02a and CS02b (gbcs/README.md §5, §8)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from vdno.gbcs import ber
from vdno.gbcs.errors import DecodeError, EncodeError


class RemotePartyRole(IntEnum):
    ROOT = 0
    RECOVERY = 1
    SUPPLIER = 2
    NETWORK_OPERATOR = 3
    ACCESS_CONTROL_BROKER = 4
    TRANSITIONAL_COS = 5
    WAN_PROVIDER = 6
    ISSUING_AUTHORITY = 7
    OTHER = 127


class KeyUsage(IntEnum):
    """The one X.509 KeyUsage bit a cell holds; DER BIT STRING contents in gbcs/README.md §5."""

    DIGITAL_SIGNATURE = 0  # 03 02 07 80
    KEY_AGREEMENT = 4  # 03 02 03 08
    KEY_CERT_SIGN = 5  # 03 02 02 04


class CellUsage(IntEnum):
    MANAGEMENT = 0  # DEFAULT, omitted on the wire
    PREPAYMENT_TOP_UP = 1


class CredentialsReplacementMode(IntEnum):
    ROOT_BY_SUPPLIER = 0
    ROOT_BY_WAN_PROVIDER = 1
    SUPPLIER_BY_SUPPLIER = 2
    NETWORK_OPERATOR_BY_NETWORK_OPERATOR = 3
    ACCESS_CONTROL_BROKER_BY_ACB = 4
    WAN_PROVIDER_BY_WAN_PROVIDER = 5
    TRANS_COS_BY_TRANS_COS = 6
    SUPPLIER_BY_TRANS_COS = 7
    ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY = 8
    ANY_BY_CONTINGENCY = 9


class StatusCode(IntEnum):
    """CS02b per-cell StatusCode (gbcs/README.md §5; numbers shared with RFC 5934)."""

    SUCCESS = 0
    DECODE_ERROR = 1
    BAD_CONTENT_TYPE = 2
    BAD_SIGNATURE = 3
    INSUFFICIENT_PERMISSION = 4
    BAD_CERTIFICATE = 5
    BAD_SEQUENCE_NUMBER = 8
    NO_TRUST_ANCHOR = 10
    INSUFFICIENT_MEMORY = 17
    TRUST_ANCHOR_NOT_FOUND = 25
    RESOURCES_BUSY = 30
    OTHER = 127


@dataclass(frozen=True)
class TrustAnchorCellIdentifier:
    """SEQUENCE { remotePartyRole INTEGER, keyUsage BIT STRING, cellUsage INTEGER DEFAULT 0 }."""

    role: int
    key_usage: KeyUsage
    cell_usage: int = CellUsage.MANAGEMENT

    def encode(self) -> bytes:
        """DER SEQUENCE (cellUsage omitted when 0)."""
        return ber.sequence(*self.encode_fields())

    def encode_fields(self) -> tuple[bytes, ...]:
        """The encoded SEQUENCE elements (also used for IMPLICIT [2])."""
        parts = [ber.der_int(self.role), encode_key_usage(self.key_usage)]
        if self.cell_usage != CellUsage.MANAGEMENT:
            parts.append(ber.der_int(self.cell_usage))
        return tuple(parts)

    @classmethod
    def decode_tlv(cls, item: ber.Tlv, what: str = "TrustAnchorCellIdentifier") -> TrustAnchorCellIdentifier:
        """Decode a constructed TLV (SEQUENCE or IMPLICIT [2]) holding a cell identifier."""
        reader = ber.SeqReader(item, what)
        role = ber.decode_int(reader.next(ber.TAG_INTEGER, "remotePartyRole"), f"{what}.remotePartyRole")
        key_usage = decode_key_usage(reader.next(ber.TAG_BIT_STRING, "keyUsage"), f"{what}.keyUsage")
        cell_usage_tlv = reader.optional(ber.TAG_INTEGER, "cellUsage")
        cell_usage = (
            CellUsage.MANAGEMENT
            if cell_usage_tlv is None
            else ber.decode_int(cell_usage_tlv, f"{what}.cellUsage")
        )
        reader.done()
        return cls(role, key_usage, cell_usage)


def encode_key_usage(key_usage: int) -> bytes:
    """KeyUsage bit -> DER BIT STRING (03 02 07 80 for digitalSignature); EncodeError for any bit that
    decode_key_usage would refuse."""
    try:
        bit = KeyUsage(key_usage)
    except ValueError as exc:
        raise EncodeError(f"key usage bit {key_usage!r} is not DS/KA/keyCertSign (0, 4 or 5)") from exc
    return ber.single_bit_string(bit)


def decode_key_usage(item: ber.Tlv, field: str) -> KeyUsage:
    bit = ber.decode_single_bit(item, field)
    try:
        return KeyUsage(bit)
    except ValueError as exc:
        raise DecodeError(
            f"{field}: key usage bit {bit} is not DS/KA/keyCertSign at offset {item.offset}"
        ) from exc


NO_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.NETWORK_OPERATOR, KeyUsage.DIGITAL_SIGNATURE)
NO_KA_CELL = TrustAnchorCellIdentifier(RemotePartyRole.NETWORK_OPERATOR, KeyUsage.KEY_AGREEMENT)
