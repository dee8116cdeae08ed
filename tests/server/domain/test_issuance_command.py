"""The service's own command builder against DCC's RTDS 6.15.1 NO-by-NO vector."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from rtds_vectors import read_hex

from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import sign_apdu, verify_message_signature
from vdno.server.domain.commands import build_transfer_command
from vdno.server.domain.issuance import counter_floor
from vdno.server.domain.values import Area, GenerationStatus, VanillaGeneration

RTDS_NO = bytes.fromhex("90B3D51F30020000")
RTDS_ESME = bytes.fromhex("00DB1234567890A0")


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


@pytest.fixture
def rtds_parties(vectors_dir: Path) -> tuple[VanillaGeneration, Area, bytes]:
    after = vectors_dir / "keystore-after-replacement"
    # The authorising party of 6.15.1 plays the custodial generation; the replacement set plays the area.
    generation = VanillaGeneration(
        1, RTDS_NO, "pkcs11:object=unused", "pkcs11:object=unused",
        der(vectors_dir / "keystore" / "90b3d51f30020000-ds.pem"),
        der(vectors_dir / "keystore" / "90b3d51f30020000-ka.pem"),
        GenerationStatus.ACTIVE,
    )  # fmt: skip
    area = Area(
        12, "London", RTDS_NO,
        der(after / "90b3d51f30020000-ds-ski4238d306b6f725a2.pem"),
        der(after / "90b3d51f30020000-ka-ski483e0ad640c236c5.pem"),
    )  # fmt: skip
    return generation, area, der(vectors_dir / "keystore" / "Z1-issuing-ca.pem")


def test_hand_out_command_reproduces_the_rtds_no_by_no_precommand(
    vectors_dir: Path, rtds_parties: tuple[VanillaGeneration, Area, bytes]
) -> None:
    generation, area, issuing_ca = rtds_parties
    apdu = build_transfer_command(generation, area.credentials, RTDS_ESME, 1200, issuing_ca)
    expected = read_hex(vectors_dir / "6.15.1_CS02bNOByNO" / "CS02bNOByNO_6.15.1_SUCCESS_PRECOMMAND_GBCS.HEX")
    assert apdu.encode_precommand() == expected


def test_signed_hand_out_command_verifies_with_cryptography(
    vectors_dir: Path, rtds_parties: tuple[VanillaGeneration, Area, bytes]
) -> None:
    generation, area, issuing_ca = rtds_parties
    key = load_pem_private_key((vectors_dir / "keystore" / "90b3d51f30020000-ds.key").read_bytes(), None)
    signed = sign_apdu(build_transfer_command(generation, area.credentials, RTDS_ESME, 1201, issuing_ca), key)  # type: ignore[arg-type]
    message = decode_message(signed.encode())
    verify_message_signature(message, x509.load_der_x509_certificate(generation.ds_certificate))
    assert message.apdu.header.originator_counter == 1201


def test_counter_floor_is_microseconds_since_the_epoch() -> None:
    at = datetime(2026, 11, 23, 12, 0, 0, 250_000, tzinfo=UTC)
    assert counter_floor(at) == 1_795_435_200_250_000
    assert counter_floor(at.replace(microsecond=250_001)) == counter_floor(at) + 1
