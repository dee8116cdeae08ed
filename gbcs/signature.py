"""KRP / device signature (gbcs/README.md §6): ECDSA P-256 SHA-256 over the signed range, raw r‖s
(64 bytes)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from vdno.gbcs.errors import GbcsError, SignatureError
from vdno.gbcs.framing import SIGNATURE_LEN, GbcsMessage, GeneralSigningApdu

_COORD_LEN = SIGNATURE_LEN // 2
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())  # immutable: built once, not per signature


def signed_digest(signed_range: bytes) -> bytes:
    """SHA-256 of the signed range (what CKM_ECDSA signs in the HSM)."""
    return hashlib.sha256(bytes(signed_range)).digest()


def raw_to_der(signature: bytes) -> bytes:
    """64-byte r‖s -> DER ECDSA-Sig-Value. SignatureError if not 64 bytes."""
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"signature must be {SIGNATURE_LEN} bytes r||s, got {len(signature)}")
    r = int.from_bytes(signature[:_COORD_LEN], "big")
    s = int.from_bytes(signature[_COORD_LEN:], "big")
    return encode_dss_signature(r, s)


def der_to_raw(signature: bytes) -> bytes:
    """DER ECDSA-Sig-Value -> 64-byte r‖s."""
    try:
        r, s = decode_dss_signature(bytes(signature))
    except ValueError as exc:
        raise SignatureError(f"not a DER ECDSA-Sig-Value: {exc}") from exc
    if not (0 <= r < 1 << 256 and 0 <= s < 1 << 256):
        raise SignatureError("ECDSA r or s does not fit 32 bytes")
    return r.to_bytes(_COORD_LEN, "big") + s.to_bytes(_COORD_LEN, "big")


def p256_public_key(
    key: ec.EllipticCurvePublicKey | x509.Certificate, what: str, error: type[GbcsError]
) -> ec.EllipticCurvePublicKey:
    """The key itself or a certificate's subject key, if EC P-256; else `error` naming `what`."""
    public_key = key.public_key() if isinstance(key, x509.Certificate) else key
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise error(f"{what} is not an EC P-256 public key")
    return public_key


def sign_apdu(apdu: GeneralSigningApdu, private_key: ec.EllipticCurvePrivateKey) -> GeneralSigningApdu:
    """Software signing (simulator devices, test KRPs): the APDU with its 64-byte signature set."""
    der = private_key.sign(apdu.signed_bytes(), _ECDSA_SHA256)
    return apdu.with_signature(der_to_raw(der))


def verify_signature(
    signed_range: bytes, signature: bytes | None, key: ec.EllipticCurvePublicKey | x509.Certificate
) -> None:
    """Verify r‖s over signed_range with `cryptography`. SignatureError if absent, malformed or invalid."""
    if not signature:
        raise SignatureError("signature absent (no signature-length byte or length 00)")
    public_key = p256_public_key(key, "verification key", SignatureError)
    der = raw_to_der(signature)
    try:
        public_key.verify(der, bytes(signed_range), _ECDSA_SHA256)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify over the signed range") from exc


def verify_message_signature(message: GbcsMessage, key: ec.EllipticCurvePublicKey | x509.Certificate) -> None:
    """verify_signature over the message's signed range as received."""
    verify_signature(message.signed_range, message.apdu.signature, key)
