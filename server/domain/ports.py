"""Interfaces the domain needs from the layers below it (implemented in server/hsm and server/store)."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec


class DigestSigner(Protocol):
    """Signs SHA-256 digests with a private EC P-256 key held in the HSM (CKM_ECDSA).

    `key` is the RFC 7512 PKCS#11 URI from configuration naming the private key.
    Implementations serialise calls into the token (ARCHITECTURE §5.7) and are safe to call from
    many threads. Errors: HsmUnavailable (token down, login refused), KeyNotInCustody (no such key).
    """

    def sign_digest(self, key: str, digest: bytes) -> bytes:
        """Return the 64-byte raw r‖s signature of the 32-byte digest."""
        ...

    def public_key(self, key: str) -> ec.EllipticCurvePublicKey:
        """The public half of the key pair named by `key` (a private-key URI; its public object shares id/label)."""
        ...
