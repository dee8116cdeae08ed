"""Trust-anchor cell identifiers and the enums shared by CS02a and CS02b (README §5, §8)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
    """The one X.509 KeyUsage bit a cell holds; DER BIT STRING contents in README §5."""

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
    """CS02b per-cell StatusCode (README §5; numbers shared with RFC 5934)."""

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
        raise NotImplementedError

    @classmethod
    def decode_content(cls, content: bytes) -> TrustAnchorCellIdentifier:
        """Decode the contents of the SEQUENCE (lenient BER). DecodeError otherwise."""
        raise NotImplementedError


NO_DS_CELL = TrustAnchorCellIdentifier(RemotePartyRole.NETWORK_OPERATOR, KeyUsage.DIGITAL_SIGNATURE)
NO_KA_CELL = TrustAnchorCellIdentifier(RemotePartyRole.NETWORK_OPERATOR, KeyUsage.KEY_AGREEMENT)
