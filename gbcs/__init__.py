"""GBCS codec for CS02a/b/d/e: pure Python, imports neither grpc nor pkcs11.

`gbcs` itself exports only the error classes below; everything else is imported from its module:
- framing: gbcs.framing (GroupingHeader, GeneralSigningApdu, GbcsMessage, decode_message, encode_length,
  read_length)
- payloads: gbcs.cs02a, gbcs.cs02b, gbcs.cs02e (CS02e and CS02d); gbcs.message.decode_any picks one by
  message code; gbcs.cells holds the trust-anchor cell identifier and shared enums
- crypto: gbcs.signature (KRP signature), gbcs.mac (ACB-SMD MAC), gbcs.smki (certificate profile/path)
- gbcs.ber (TLV reader/writer), gbcs.ids (EUI-64 identifiers)
"""

from vdno.gbcs.errors import (
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
