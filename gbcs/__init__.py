"""GBCS codec for CS02a/b/d/e: pure Python, imports neither grpc nor pkcs11.

Public API (import from `gbcs`):
- framing: GroupingHeader, GeneralSigningApdu, GbcsMessage, decode_message, encode_length, read_length
- payloads: gbcs.cs02a, gbcs.cs02b, gbcs.cs02d, gbcs.cs02e
- crypto: gbcs.signature (KRP signature), gbcs.mac (ACB-SMD MAC), gbcs.smki (certificate profile/path)
"""

from gbcs.errors import (
    CertificateError,
    DecodeError,
    EncodeError,
    GbcsError,
    MacError,
    SignatureError,
)

__all__ = [
    "CertificateError",
    "DecodeError",
    "EncodeError",
    "GbcsError",
    "MacError",
    "SignatureError",
]
