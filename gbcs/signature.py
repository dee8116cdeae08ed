"""KRP / device signature (README §6): ECDSA P-256 SHA-256 over the signed range, raw r‖s (64 bytes)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gbcs.framing import GbcsMessage, GeneralSigningApdu


def signed_digest(signed_range: bytes) -> bytes:
    """SHA-256 of the signed range (what CKM_ECDSA signs in the HSM)."""
    raise NotImplementedError


def raw_to_der(signature: bytes) -> bytes:
    """64-byte r‖s -> DER ECDSA-Sig-Value. SignatureError if not 64 bytes."""
    raise NotImplementedError


def der_to_raw(signature: bytes) -> bytes:
    """DER ECDSA-Sig-Value -> 64-byte r‖s."""
    raise NotImplementedError


def sign_apdu(apdu: GeneralSigningApdu, private_key: ec.EllipticCurvePrivateKey) -> GeneralSigningApdu:
    """Software signing (simulator devices, test KRPs): the APDU with its 64-byte signature set."""
    raise NotImplementedError


def verify_signature(
    signed_range: bytes, signature: bytes | None, key: ec.EllipticCurvePublicKey | x509.Certificate
) -> None:
    """Verify r‖s over signed_range with `cryptography`. SignatureError if absent, malformed or invalid."""
    raise NotImplementedError


def verify_message_signature(
    message: GbcsMessage, key: ec.EllipticCurvePublicKey | x509.Certificate
) -> None:
    """verify_signature over the message's signed range as received."""
    raise NotImplementedError
