"""ACB-SMD MAC (gbcs/README.md §7), for lab and test use: ECDH P-256 -> KDF -> AES-128-GMAC, 12-byte tag."""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from vdno.gbcs.errors import MacError
from vdno.gbcs.framing import (
    MAC_LEN,
    SECURITY_CONTROL_AUTH_ONLY,
    TRANSACTION_ID_LEN,
    GbcsMessage,
    GroupingHeader,
    encode_invocation_counter,
    encode_mac_framed,
)
from vdno.gbcs.signature import p256_public_key

KDF_ALGORITHM_ID = bytes.fromhex("60857406080300")

PeerKey = ec.EllipticCurvePublicKey | x509.Certificate


def derive_mac_key(private_key: ec.EllipticCurvePrivateKey, peer: PeerKey, header: GroupingHeader) -> bytes:
    """16-byte AES key: first 16 bytes of SHA-256(00000001 ‖ Z ‖ OtherInfo), OtherInfo from the header."""
    public_key = p256_public_key(peer, "MAC peer key", MacError)
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise MacError("MAC private key is not on P-256")
    try:
        z = private_key.exchange(ec.ECDH(), public_key)
    except ValueError as exc:
        raise MacError(f"ECDH failed: {exc}") from exc
    originator_id, target_id = header.business_ids
    other_info = (
        KDF_ALGORITHM_ID + originator_id + bytes([TRANSACTION_ID_LEN]) + header.transaction_id + target_id
    )
    # NIST SP 800-56A single-step KDF with SHA-256, one round (counter 00000001)
    return ConcatKDFHash(hashes.SHA256(), 16, other_info).derive(z)


def compute_mac(
    apdu_bytes: bytes,
    header: GroupingHeader,
    private_key: ec.EllipticCurvePrivateKey,
    peer: PeerKey,
    invocation_counter: int = 0,
) -> bytes:
    """12-byte tag over AAD = 11 ‖ invocation counter(4) ‖ 00 ‖ the whole GS APDU (DF through signature)."""
    counter = encode_invocation_counter(invocation_counter)
    originator_id, _ = header.business_ids
    key = derive_mac_key(private_key, peer, header)
    iv = originator_id + counter
    # gbcs/README.md §7 [verified]: AAD = 11 ‖ five zero bytes ‖ APDU. We place the invocation counter in
    # the first four of them (always 0 in RTDS, so which of the zero bytes it occupies is unconfirmed).
    aad = bytes([SECURITY_CONTROL_AUTH_ONLY]) + counter + b"\x00" + bytes(apdu_bytes)
    return AESGCM(key).encrypt(iv, b"", aad)[:MAC_LEN]


def add_mac(
    apdu_bytes: bytes,
    header: GroupingHeader,
    private_key: ec.EllipticCurvePrivateKey,
    peer: PeerKey,
) -> bytes:
    """MAC-frame a complete GS APDU: MAC Header ‖ APDU ‖ MAC (what an ACB does)."""
    return encode_mac_framed(apdu_bytes, compute_mac(apdu_bytes, header, private_key, peer))


def verify_mac(message: GbcsMessage, private_key: ec.EllipticCurvePrivateKey, peer: PeerKey) -> None:
    """MacError if the message has no MAC or the MAC does not match. Either side's KA private key works."""
    if message.mac is None:
        raise MacError("message is not MAC-framed (no ACB-SMD MAC)")
    expected = compute_mac(
        message.apdu_bytes, message.apdu.header, private_key, peer, message.invocation_counter
    )
    if not hmac.compare_digest(expected, message.mac):
        raise MacError("ACB-SMD MAC does not match")
