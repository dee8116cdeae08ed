"""Keys that must not serve as custodial signing keys (docs/architecture.md §5.1), made for real in a SoftHSM
token one flaw at a time, each refused with KeyNotInCustody naming exactly its flaws (server/hsm/keys.py,
PrivateKeyAttributes.custody_problems) and nothing of the token's internals: no CKR code, handle or PIN."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from vdno.server.domain.errors import HsmUnavailable, KeyNotInCustody, VdnoError
from vdno.server.hsm.keys import (
    P256_PARAMS,
    check_custody,
    ensure_keypair,
    find_key,
    sign_digest_with,
)
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken
from vdno.server.hsm.token import open_token_session
from vdno.server.hsm.uri import Pkcs11Uri

DIGEST = hashlib.sha256(b"a command").digest()
KEY_ID = b"\x5a\x5a"


def _generate(
    session: Any,
    label: str,
    curve: str = "secp256r1",
    store: bool = True,
    private: dict[Attribute, Any] | None = None,
) -> None:
    params = encode_named_curve_parameters(curve)
    domain = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: params}, local=True)
    domain.generate_keypair(label=label, id=KEY_ID, store=store, private_template=private or {})


def _import(session: Any, label: str) -> None:
    """A P-256 private key made outside the token and imported, sensitive and not extractable from now on."""
    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.EC_PARAMS: P256_PARAMS,
            Attribute.VALUE: scalar.to_bytes(32, "big"),
            Attribute.LABEL: label,
            Attribute.ID: KEY_ID,
        }
    )


# flaw -> (how the key is made, the problems it must be refused for, in the order they are reported)
FLAWED: dict[str, tuple[Callable[[Any, str], None], list[str]]] = {
    "on-p384": (lambda s, label: _generate(s, label, curve="secp384r1"), ["not on curve P-256"]),
    "may-not-sign": (
        lambda s, label: _generate(s, label, private={Attribute.SIGN: False}),
        ["not allowed to sign"],
    ),
    "imported": (
        _import,
        ["not always sensitive", "was extractable once", "not generated in the token"],
    ),
    "extractable": (
        lambda s, label: _generate(s, label, private={Attribute.EXTRACTABLE: True}),
        ["extractable", "was extractable once"],
    ),
    "not-sensitive": (
        lambda s, label: _generate(s, label, private={Attribute.SENSITIVE: False}),
        ["not sensitive", "not always sensitive"],
    ),
    "session-object": (lambda s, label: _generate(s, label, store=False), ["not a token object"]),
}


@pytest.fixture
def signer(hsm_token: SoftHsmToken, user_pin: str) -> Iterator[Pkcs11Signer]:
    with Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as s:
        yield s


def _assert_names_only_the_problems(error: KeyNotInCustody, what: str, problems: list[str]) -> None:
    assert isinstance(error, VdnoError)
    assert str(error) == f"key {what} fails its attribute checks: {', '.join(problems)}"
    assert not re.search(r"CKR|handle|0x[0-9a-f]|pin", str(error), re.IGNORECASE)


@pytest.mark.parametrize("flaw", FLAWED)
def test_the_signer_refuses_a_flawed_key_and_names_its_flaws(
    signer: Pkcs11Signer, hsm_token: SoftHsmToken, user_pin: str, flaw: str
) -> None:
    make, problems = FLAWED[flaw]
    # Made through the signer: its session is the one that sees a session object, and the token is entered
    # by one thread at a time (docs/architecture.md §5.7).
    signer.run(lambda session: make(session, flaw), "making a flawed key")
    uri = str(Pkcs11Uri(token=hsm_token.label, object=flaw, type="private"))
    with pytest.raises(KeyNotInCustody) as refused:
        signer.sign_digest(uri, DIGEST)
    _assert_names_only_the_problems(refused.value, uri, problems)
    assert user_pin not in str(refused.value)
    # Refused again on the next call (looked up again, never cached as usable), and by the health probe.
    with pytest.raises(KeyNotInCustody, match=re.escape(problems[-1])):
        signer.sign_digest(uri, DIGEST)
    with pytest.raises(KeyNotInCustody, match=re.escape(problems[0])):
        signer.probe([uri])


@pytest.mark.parametrize("flaw", [flaw for flaw in FLAWED if flaw != "session-object"])
def test_bootstrap_refuses_to_adopt_a_flawed_key(hsm_token: SoftHsmToken, user_pin: str, flaw: str) -> None:
    make, problems = FLAWED[flaw]
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        make(session, flaw)
        with pytest.raises(KeyNotInCustody) as refused:
            ensure_keypair(session, flaw, KEY_ID)
        _assert_names_only_the_problems(refused.value, repr(flaw), problems)
        # and nothing was generated in its place
        assert (
            len(list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: flaw})))
            == 1
        )


def test_a_key_that_is_not_ec_is_refused(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        session.generate_keypair(KeyType.RSA, 2048, label="rsa", id=KEY_ID, store=True)
        rsa = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label="rsa")
        with pytest.raises(KeyNotInCustody) as refused:
            check_custody(rsa, "'rsa'")
        _assert_names_only_the_problems(refused.value, "'rsa'", ["not an EC key", "not on curve P-256"])
        # Looked up as the EC key it is not, and never replaced by a new pair under its label.
        with pytest.raises(KeyNotInCustody, match="no private EC key labelled 'rsa'"):
            ensure_keypair(session, "rsa", KEY_ID)
        labelled = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "rsa"})
        )
        assert [key.key_type for key in labelled] == [KeyType.RSA]


def test_two_keys_under_one_label_are_refused(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        _generate(session, "twice")
        _generate(session, "twice")
        with pytest.raises(KeyNotInCustody, match="more than one private EC key labelled 'twice'"):
            ensure_keypair(session, "twice", KEY_ID)
        assert (
            len(
                list(
                    session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "twice"})
                )
            )
            == 2
        )


def test_a_key_must_be_named(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        with pytest.raises(KeyNotInCustody, match="named by label") as refused:
            find_key(session, ObjectClass.PRIVATE_KEY)
        assert isinstance(refused.value, VdnoError)


def test_a_signature_of_the_wrong_size_is_not_passed_on(hsm_token: SoftHsmToken, user_pin: str) -> None:
    """sign_digest_with returns only GBCS's 64-byte r||s: a P-384 key's 96 bytes are refused (the signer
    never gets there: the key fails its attribute checks first), and so is a digest that is not SHA-256."""
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        _generate(session, "p384", curve="secp384r1")
        private = find_key(session, ObjectClass.PRIVATE_KEY, "p384")
        with pytest.raises(HsmUnavailable, match="malformed ECDSA signature"):
            sign_digest_with(private, DIGEST)
        with pytest.raises(ValueError, match="SHA-256 digest is 32 bytes"):
            sign_digest_with(private, DIGEST[:20])


def test_a_key_uri_matching_two_keys_is_refused_and_the_signer_stays_up(
    signer: Pkcs11Signer, hsm_token: SoftHsmToken, signing_key: tuple[str, bytes, str]
) -> None:
    """The failed lookup leaves no search open on the session: the signer's next calls still work."""
    signer.run(lambda session: _generate(session, "twice"), "making a key")
    signer.run(lambda session: _generate(session, "twice"), "making a key")
    uri = str(Pkcs11Uri(token=hsm_token.label, object="twice", type="private"))
    refusals = []
    for _ in range(2):
        with pytest.raises(KeyNotInCustody, match="more than one private EC key labelled 'twice'") as refused:
            signer.sign_digest(uri, DIGEST)
        refusals.append(refused.value)  # kept alive, as a caller may keep an error
    assert len(signer.sign_digest(signing_key[2], DIGEST)) == 64
    signer.probe()
