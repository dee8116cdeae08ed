"""ACB-SMD MAC (README §7), for lab and test use: ECDH P-256 -> KDF -> AES-128-GMAC, 12-byte tag."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gbcs.framing import GbcsMessage, GroupingHeader

PeerKey = ec.EllipticCurvePublicKey | x509.Certificate


def derive_mac_key(
    private_key: ec.EllipticCurvePrivateKey, peer: PeerKey, header: GroupingHeader
) -> bytes:
    """16-byte AES key: first 16 bytes of SHA-256(00000001 ‖ Z ‖ OtherInfo), OtherInfo from the header."""
    raise NotImplementedError


def compute_mac(
    apdu_bytes: bytes,
    header: GroupingHeader,
    private_key: ec.EllipticCurvePrivateKey,
    peer: PeerKey,
    invocation_counter: int = 0,
) -> bytes:
    """12-byte tag over AAD = 11 ‖ invocation counter(4) ‖ the whole GS APDU (DF through signature)."""
    raise NotImplementedError


def add_mac(
    apdu_bytes: bytes,
    header: GroupingHeader,
    private_key: ec.EllipticCurvePrivateKey,
    peer: PeerKey,
) -> bytes:
    """MAC-frame a complete GS APDU: MAC Header ‖ APDU ‖ MAC (what an ACB does)."""
    raise NotImplementedError


def verify_mac(message: GbcsMessage, private_key: ec.EllipticCurvePrivateKey, peer: PeerKey) -> None:
    """MacError if the message has no MAC or the MAC does not match. Either side's KA private key works."""
    raise NotImplementedError
