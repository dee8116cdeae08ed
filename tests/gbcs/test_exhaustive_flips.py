"""Flips and truncations of the RTDS messages (a bit of every byte, every truncation) and of certificates
(every bit): the decoders and certificate checks answer with a GbcsError naming what is wrong, or with a
value, never with another exception (cryptography parses certificate fields lazily: load_certificate parses
them all). Random mutations: test_properties.py; the service end to end: tests/integration/test_fuzz.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from gbcs_testlib import Vector

from vdno.gbcs.errors import CertificateError, GbcsError
from vdno.gbcs.message import decode_any
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate, verify_certification_path
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_device_certificate, new_p256_key

# A flipped serial number may come out negative: cryptography warns that it will refuse those one day
# (load_certificate refuses them now).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)


def flips(data: bytes) -> Iterator[bytes]:
    for bit in range(len(data) * 8):
        out = bytearray(data)
        out[bit // 8] ^= 1 << (bit % 8)
        yield bytes(out)


def variants(data: bytes) -> Iterator[bytes]:
    """Every truncation, and every byte with one of its bits flipped (the bit turns with the position)."""
    for i in range(len(data)):
        out = bytearray(data)
        out[i] ^= 1 << (i % 8)
        yield bytes(out)
        yield data[:i]


def outcomes(check: Callable[[bytes], object], inputs: Iterator[bytes]) -> dict[str, int]:
    """How `check` answered each input: "ok" or the GbcsError subclass; any other exception fails."""
    seen: dict[str, int] = {}
    for data in inputs:
        try:
            check(data)
            kind = "ok"
        except GbcsError as exc:
            assert str(exc), f"{type(exc).__name__} without a message for {data.hex()}"
            kind = type(exc).__name__
        seen[kind] = seen.get(kind, 0) + 1
    return seen


def test_flips_and_truncations_of_every_rtds_message(vectors: list[Vector], keystore: Path) -> None:
    total = 0
    for vector in vectors:
        key = None if vector.sig_pem is None else load_certificate((keystore / vector.sig_pem).read_bytes())

        def decode_and_verify(data: bytes, key: SmkiCertificate | None = key) -> None:
            decoded = decode_any(data)
            if key is not None and decoded.message.apdu.signature:
                verify_message_signature(decoded.message, key.certificate)

        seen = outcomes(decode_and_verify, variants(vector.data))
        assert seen.get("DecodeError", 0) > len(vector.data), (vector.name, seen)
        total += sum(seen.values())
    assert total > 50_000


def _verified(cert: SmkiCertificate, issuer: SmkiCertificate) -> None:
    verify_certification_path(cert, (), issuer, cert.certificate.not_valid_before_utc, check_time=False)


@pytest.mark.parametrize("name", ["00db1234567890a0-ds.pem", "90b3d51f30020000-ds.pem", "Z1-issuing-ca.pem"])
def test_every_flip_of_a_keystore_certificate(keystore: Path, name: str) -> None:
    issuer = load_certificate((keystore / "Z1-issuing-ca.pem").read_bytes())
    der = load_certificate((keystore / name).read_bytes()).der

    def check(data: bytes) -> None:
        cert = load_certificate(data)
        cert.certificate.issuer.rfc4514_string()  # what refusals and descriptions read later
        if not cert.is_device:  # RTDS holds no device CA
            _verified(cert, issuer)

    seen = outcomes(check, flips(der))
    assert set(seen) <= {"ok", "CertificateError"}, seen
    assert seen["CertificateError"] > len(der) * 8 // 2


def test_every_flip_of_a_lab_device_certificate_is_refused_by_name() -> None:
    """The issue's case: a device certificate with one bit flipped gave INTERNAL for 13 of its 3,472 flips
    (a version cryptography rejects at load, an issuer it parses only when first read)."""
    lab = LabHierarchy.create()
    device_ca = load_certificate(lab.device_ca.certificate.public_bytes(Encoding.DER))
    cert = issue_device_certificate(lab.device_ca, new_p256_key().public_key(), bytes(range(8)), "ds")
    der = cert.public_bytes(Encoding.DER)
    refusals: list[str] = []

    def check(data: bytes) -> None:
        try:
            _verified(load_certificate(data), device_ca)
        except CertificateError as exc:
            refusals.append(str(exc))
            raise

    seen = outcomes(check, flips(der))
    assert seen.get("ok", 0) <= 4, seen  # e.g. a flip inside the outer signature's unused encoding
    named = ("version", "issuer", "subject", "extensions", "serialNumber", "signature", "validity")
    assert any("certificate version" in r for r in refusals)
    assert any(r.startswith("certificate issuer does not parse") for r in refusals)
    assert sum(any(f"certificate {n}" in r for n in named) for r in refusals) > 50
