from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.errors import HsmLoginRefused, KeyNotInCustody
from vdno.server.hsm.keys import (
    P256_PARAMS,
    ensure_keypair,
    find_key,
    generate_signing_keypair,
    public_key_of,
    read_private_key_attributes,
    sign_csr,
    sign_digest_with,
)
from vdno.server.hsm.softhsm import SoftHsmToken
from vdno.server.hsm.token import open_token_session


def test_generated_key_is_sensitive_and_never_extractable(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        generate_signing_keypair(session, "gen-key", b"\xaa\xbb")
        attrs = read_private_key_attributes(session, label="gen-key")
        assert attrs.sensitive is True
        assert attrs.extractable is False
        assert attrs.always_sensitive is True
        assert attrs.never_extractable is True
        assert attrs.token is True
        assert attrs.private is True
        assert attrs.sign is True
        assert attrs.key_type == "EC"
        assert attrs.label == "gen-key"
        assert attrs.id == b"\xaa\xbb"
        assert attrs.custody_problems() == []
        private = find_key(session, ObjectClass.PRIVATE_KEY, key_id=b"\xaa\xbb")
        with pytest.raises(p11e.AttributeSensitive):
            _ = private[Attribute.VALUE]  # the private scalar must not be readable
        public = find_key(session, ObjectClass.PUBLIC_KEY, label="gen-key")
        assert public[Attribute.TOKEN] is True
        assert public[Attribute.VERIFY] is True
        assert isinstance(public_key_of(session, "gen-key").curve, ec.SECP256R1)


def test_key_survives_a_new_session(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        made = ensure_keypair(session, "persist", b"\x07")
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin, rw=False) as session:
        assert read_private_key_attributes(session, "persist").id == b"\x07"
        assert public_key_of(session, "persist") == made.public_key


def test_ensure_keypair_is_idempotent(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        first = ensure_keypair(session, "idem", b"\x10")
        second = ensure_keypair(session, "idem", b"\x10")
        assert first.created and not second.created
        assert first.public_key == second.public_key
        assert second.id == b"\x10"
        assert len(list(session.get_objects({Attribute.LABEL: "idem"}))) == 2  # one private, one public


def test_ensure_keypair_refuses_a_key_that_fails_custody_checks(
    hsm_token: SoftHsmToken, user_pin: str
) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: P256_PARAMS}, local=True)
        params.generate_keypair(
            label="weak",
            id=b"\x66",
            store=True,
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
        with pytest.raises(KeyNotInCustody, match="not sensitive") as info:
            ensure_keypair(session, "weak", b"\x66")
        assert "extractable" in str(info.value)


def test_hsm_signature_verifies(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        made = ensure_keypair(session, "sig", b"\x20")
        private = find_key(session, ObjectClass.PRIVATE_KEY, "sig")
        for message in (b"", b"a", b"GBCS" * 100):
            digest = hashes.Hash(hashes.SHA256())
            digest.update(message)
            raw = sign_digest_with(private, digest.finalize())
            assert len(raw) == 64
            made.public_key.verify(raw_to_der(raw), message, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("form", ["pairs", "cryptography"])
def test_csr_signed_by_the_hsm_verifies(hsm_token: SoftHsmToken, user_pin: str, form: str) -> None:
    subject_pairs = [
        ("2.5.4.6", "GB"),
        ("organization_name", "Vanilla DNO"),
        (NameOID.COMMON_NAME, "no-dno-test-gen1"),
        ("1.3.6.1.4.1.99999.1", "free text"),  # an OID asn1crypto does not know
    ]
    subject = (
        subject_pairs
        if form == "pairs"
        else x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(NameOID.COMMON_NAME, "no-dno-test-gen1"),
            ]
        )
    )
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        made = ensure_keypair(session, "csr", b"\x30")
        der = sign_csr(session, subject, label="csr")
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert csr.public_key() == made.public_key
    assert csr.signature_hash_algorithm is not None and csr.signature_hash_algorithm.name == "sha256"
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "no-dno-test-gen1"
    assert csr.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "GB"


def test_unknown_key_is_not_in_custody(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        with pytest.raises(KeyNotInCustody, match="no private EC key labelled 'ghost'"):
            find_key(session, ObjectClass.PRIVATE_KEY, "ghost")
        with pytest.raises(KeyNotInCustody):
            sign_csr(session, [("common_name", "x")], label="ghost")


def test_open_session_with_wrong_pin(hsm_token: SoftHsmToken) -> None:
    with (
        pytest.raises(HsmLoginRefused, match="refused the configured PIN") as info,
        open_token_session(hsm_token.module_path, hsm_token.label, "wrong-pin-1234"),
    ):
        pass
    assert "wrong-pin-1234" not in str(info.value)
    assert "CKR" not in str(info.value)


def test_ec_point_raw_or_der_wrapped() -> None:
    from cryptography.hazmat.primitives import serialization

    from vdno.server.hsm.keys import public_key_from_ec_point

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert public_key_from_ec_point(raw) == key
    assert public_key_from_ec_point(b"\x04\x41" + raw) == key
    with pytest.raises(KeyNotInCustody, match="malformed EC point"):
        public_key_from_ec_point(b"\x04\x05abc")


def test_a_key_pair_needs_a_label(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        with pytest.raises(ValueError, match="key label is required"):
            generate_signing_keypair(session, "", b"\x01")
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []


def test_csr_subject_forms(hsm_token: SoftHsmToken, user_pin: str) -> None:
    """A subject given as an asn1crypto Name is used as is; in (oid, value) pairs an asn1crypto value is
    used as is and text takes the string type asn1crypto's table names (IA5String for an email address);
    an attribute whose value is not text must come as an asn1crypto value."""
    from asn1crypto import core as asn1_core
    from asn1crypto import x509 as asn1_x509

    from vdno.server.hsm.keys import build_name

    given = asn1_x509.Name.build({"common_name": "as built", "organizational_unit_name": "03"})
    assert build_name(given) is given
    pairs = build_name(
        [
            ("email_address", "ops@dno.example"),
            ("serial_number", asn1_core.PrintableString("0042")),
            ("unique_identifier", asn1_core.OctetBitString(b"\x01\x02")),
        ]
    )
    values = [rdn[0]["value"] for rdn in pairs.chosen]
    assert [type(v).__name__ for v in values] == ["EmailAddress", "DirectoryString", "OctetBitString"]
    assert values[1].name == "printable_string"  # the value given, not made a UTF8String
    assert values[0].native == "ops@dno.example" and values[0].tag == 22  # IA5String
    with pytest.raises(ValueError, match="subject attribute unique_identifier is not text"):
        build_name([("unique_identifier", "free text")])
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        ensure_keypair(session, "forms", b"\x40")
        csr = x509.load_der_x509_csr(sign_csr(session, given, label="forms"))
        assert csr.is_signature_valid
        assert csr.subject.public_bytes() == given.dump()  # as built, byte for byte
        csr = x509.load_der_x509_csr(sign_csr(session, pairs, key_id=b"\x40"))
        assert csr.is_signature_valid
        assert csr.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == "ops@dno.example"
