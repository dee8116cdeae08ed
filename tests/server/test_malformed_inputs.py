"""Where certificates, requests and values enter the service, every single-bit flip is answered by the
outcome the interceptor maps (INVALID_ARGUMENT, FAILED_PRECONDITION, UNAUTHENTICATED), naming the field,
never by another exception (INTERNAL). The issue's measure: a device certificate with one bit flipped gave
INTERNAL for 13 of 3,480 flips."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.client.enrolment import make_key_and_request
from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.smki import load_certificate
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_device_certificate, issue_organisation_certificate, new_p256_key
from vdno.labpki.tls import issue_client_certificate
from vdno.server.domain.certificates import check_organisation_certificate
from vdno.server.domain.errors import InvalidRequest, VdnoError
from vdno.server.domain.policy import check_device_certificate
from vdno.server.domain.values import MAX_RECORD_ID, check_free_text, parse_record_id
from vdno.server.rpc.converters import certificate_request_from_pb
from vdno.server.rpc.identity import caller_from_certificate

LAB = LabHierarchy.create()
NOW = datetime.now(UTC)
DEVICE_ID = bytes.fromhex("00DB5EED00000042")


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


def answers(check: Callable[[bytes], object], inputs: Iterator[bytes]) -> tuple[Counter[str], list[str]]:
    """The error classes `check` answered with ("ok" when it returned) and the messages; any exception
    that is not a VdnoError fails the test."""
    seen: Counter[str] = Counter()
    messages = []
    for data in inputs:
        try:
            check(data)
        except VdnoError as exc:
            seen[type(exc).__name__] += 1
            messages.append(str(exc))
        else:
            seen["ok"] += 1
    return seen, messages


def test_device_certificate_flips_are_invalid_argument_or_untrusted_naming_the_field() -> None:
    device_ca = load_certificate(LAB.device_ca.certificate.public_bytes(Encoding.DER))
    der = issue_device_certificate(LAB.device_ca, new_p256_key().public_key(), DEVICE_ID, "ds").public_bytes(
        Encoding.DER
    )
    seen, messages = answers(lambda d: check_device_certificate(DEVICE_ID, d, device_ca, NOW), flips(der))
    assert set(seen) <= {"InvalidRequest", "DeviceCertificateUntrusted", "ok"}, seen
    assert sum(seen.values()) == len(der) * 8 and seen["ok"] <= 4
    unusable = [m for m in messages if m.startswith("device_certificate is not a usable certificate")]
    assert len(unusable) > len(der) * 2
    for field in ("version", "issuer", "extensions"):  # a device certificate's subject is empty
        assert any(f"certificate {field} does not parse" in m for m in unusable), field


def test_organisation_certificate_flips_are_invalid_argument_or_refused() -> None:
    key = new_p256_key()
    cert = issue_organisation_certificate(LAB.issuing_ca, key.public_key(), bytes(8), 3, "ds")
    issuing_ca = load_certificate(LAB.issuing_ca.certificate.public_bytes(Encoding.DER))
    root = load_certificate(LAB.root.certificate.public_bytes(Encoding.DER))

    def check(der: bytes) -> None:
        check_organisation_certificate(
            der,
            what="DS certificate",
            usage=KeyUsage.DIGITAL_SIGNATURE,
            issuing_ca=issuing_ca,
            root=root,
            now=NOW,
        )

    seen, _ = answers(check, flips(cert.public_bytes(Encoding.DER)))
    assert set(seen) <= {"InvalidRequest", "CertificateRefused", "ok"}, seen
    assert seen["InvalidRequest"] > 0 and seen["CertificateRefused"] > 0


def test_csr_flips_are_invalid_argument_or_a_parsed_request() -> None:
    with tempfile.TemporaryDirectory() as folder:
        _, path = make_key_and_request("bench-77", Path(folder))
        der = x509.load_pem_x509_csr(path.read_bytes()).public_bytes(Encoding.DER)

    def check(data: bytes) -> None:
        parsed = x509.load_der_x509_csr(certificate_request_from_pb(data))
        parsed.subject.rfc4514_string()  # everything the custody service reads later parses
        assert isinstance(parsed.is_signature_valid, bool)

    seen, messages = answers(check, flips(der))
    assert set(seen) <= {"InvalidRequest", "ok"}, seen
    assert any(m.startswith("csr is not a PKCS#10 certificate request") for m in messages)


def test_client_certificate_flips_are_unauthenticated_or_a_caller() -> None:
    """What gRPC reports as the peer's certificate has passed TLS verification; the reading is hardened
    anyway."""
    pem = issue_client_certificate(LAB.tls_ca, "bench-01").certificate.public_bytes(Encoding.PEM)
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)

    def check(data: bytes) -> None:
        caller_from_certificate(x509_pem(data))

    seen, _ = answers(check, flips(der))
    assert set(seen) <= {"Unauthenticated", "ok"}, seen


def x509_pem(der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("value", [0, 2**31, 2**63, 2**64 - 1])
def test_record_ids_past_an_sql_integer_are_invalid_argument(value: int) -> None:
    """Found by the fuzz test: an approval request id of 2**64-1 reached SQLite (OverflowError, INTERNAL,
    and the store's writer thread died, so every later write hung); PostgreSQL refused ids past 2**31-1 as
    UNAVAILABLE."""
    with pytest.raises(InvalidRequest, match=f"request_id must be 1 to {MAX_RECORD_ID}, got {value}"):
        parse_record_id(value, "request_id")
    assert parse_record_id(MAX_RECORD_ID, "request_id") == 2**31 - 1


def test_free_text_with_a_control_character_is_invalid_argument() -> None:
    """PostgreSQL text holds no NUL: a reason with one was UNAVAILABLE ("the database refused the write")."""
    with pytest.raises(InvalidRequest, match=r"reason holds the control character U\+0000"):
        check_free_text("lost\x00key", "reason")
    assert check_free_text("stolen from bench 3\n\tsee ticket 12", "reason").startswith("stolen")
