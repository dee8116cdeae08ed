"""What the custodian needs of a PKCS#11 module, checked against any module: SoftHSM by default, or a
real HSM partition named by the environment (docs/testing.md, "Against a real HSM"):

    VDNO_TEST_PKCS11_MODULE  path of the vendor's PKCS#11 library
    VDNO_TEST_PKCS11_TOKEN   token (partition) label
    VDNO_TEST_PKCS11_PIN     user PIN (from the environment only)

Every key these tests make is labelled `vdno-conformance-<random>` and deleted at the end, so a real
partition is left as it was found. Nothing here presents a wrong PIN: a real partition locks after a few.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from cryptography.x509.oid import NameOID
from hsm_testlib import wait_for
from pkcs11 import Attribute, KeyType

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.errors import HsmUnavailable, KeyNotInCustody
from vdno.server.hsm.ceremony import TokenKeyCeremony
from vdno.server.hsm.keys import P256_PARAMS
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken
from vdno.server.hsm.token import open_token_session
from vdno.server.hsm.uri import Pkcs11Uri

PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))
CUSTODY_FACTS = ("sensitive", "never_extractable", "local", "token", "private", "sign")


@dataclass(frozen=True)
class ModuleUnderTest:
    module_path: Path
    token_label: str
    pin: str
    real: bool  # a module named by the environment, not this test run's SoftHSM token


@pytest.fixture
def module_under_test(request: pytest.FixtureRequest) -> ModuleUnderTest:
    module = os.environ.get("VDNO_TEST_PKCS11_MODULE")
    if module:
        token, pin = os.environ.get("VDNO_TEST_PKCS11_TOKEN"), os.environ.get("VDNO_TEST_PKCS11_PIN")
        if not token or not pin:
            pytest.fail(
                "VDNO_TEST_PKCS11_MODULE needs VDNO_TEST_PKCS11_TOKEN and VDNO_TEST_PKCS11_PIN", False
            )
        return ModuleUnderTest(Path(module), token, pin, real=True)
    softhsm: SoftHsmToken = request.getfixturevalue("hsm_token")
    return ModuleUnderTest(softhsm.module_path, softhsm.label, request.getfixturevalue("user_pin"), False)


@pytest.fixture
def signer(module_under_test: ModuleUnderTest) -> Iterator[Pkcs11Signer]:
    m = module_under_test
    with Pkcs11Signer(m.module_path, m.token_label, m.pin) as s:
        yield s


@pytest.fixture
def ceremony(signer: Pkcs11Signer, module_under_test: ModuleUnderTest) -> TokenKeyCeremony:
    return TokenKeyCeremony(signer, module_under_test.token_label)


@pytest.fixture
def new_label(ceremony: TokenKeyCeremony, module_under_test: ModuleUnderTest) -> Iterator[Callable[[], str]]:
    """Labels for this test's keys; every key pair so labelled is deleted at the end."""
    labels: list[str] = []

    def make() -> str:
        labels.append(f"vdno-conformance-{uuid.uuid4().hex[:12]}")
        return labels[-1]

    yield make
    for label in labels:
        ceremony.destroy_key_pair(
            str(Pkcs11Uri(token=module_under_test.token_label, object=label, type="private"))
        )


def _sign_and_verify(signer: Pkcs11Signer, uri: str, public_der: bytes, message: bytes) -> None:
    digest = hashlib.sha256(message).digest()
    raw = signer.sign_digest(uri, digest)
    assert len(raw) == 64  # GBCS's raw r||s (gbcs/README.md §6)
    public = load_der_public_key(public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(raw_to_der(raw), digest, PREHASHED)


def test_a_generated_key_pair_stays_in_the_token_and_signs(
    new_label: Callable[[], str], ceremony: TokenKeyCeremony, signer: Pkcs11Signer
) -> None:
    key = ceremony.generate_key_pair(new_label(), uuid.uuid4().bytes[:8])
    assert all(key.attributes[fact] is True for fact in CUSTODY_FACTS), key.attributes
    assert key.attributes["extractable"] is False and key.attributes["created"] is True
    assert ceremony.public_key(key.uri) == key.public_key
    with ThreadPoolExecutor(4) as pool:  # calls from several threads, serialised by the signer
        list(pool.map(lambda i: _sign_and_verify(signer, key.uri, key.public_key, b"%d" % i), range(40)))


def test_a_certificate_request_is_signed_inside_the_token(
    new_label: Callable[[], str], ceremony: TokenKeyCeremony
) -> None:
    key = ceremony.generate_key_pair(new_label(), uuid.uuid4().bytes[:8])
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "03")])
    csr = x509.load_der_x509_csr(ceremony.certificate_request(key.uri, subject))
    assert csr.is_signature_valid
    assert csr.subject == subject
    assert csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == key.public_key


def test_a_destroyed_key_pair_is_gone(
    new_label: Callable[[], str], ceremony: TokenKeyCeremony, signer: Pkcs11Signer
) -> None:
    key = ceremony.generate_key_pair(new_label(), uuid.uuid4().bytes[:8])
    _sign_and_verify(signer, key.uri, key.public_key, b"before")
    assert ceremony.destroy_key_pair(key.uri) is True
    signer.forget(key.uri)
    with pytest.raises(KeyNotInCustody):
        signer.sign_digest(key.uri, hashlib.sha256(b"after").digest())
    assert ceremony.destroy_key_pair(key.uri) is False


def test_a_key_that_could_leave_the_token_is_refused(
    new_label: Callable[[], str],
    ceremony: TokenKeyCeremony,
    signer: Pkcs11Signer,
    module_under_test: ModuleUnderTest,
) -> None:
    label = new_label()
    m = module_under_test
    with open_token_session(m.module_path, m.token_label, m.pin, rw=True) as session:
        params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: P256_PARAMS}, local=True)
        try:
            params.generate_keypair(
                label=label,
                store=True,
                private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
        except Exception as exc:  # a partition whose policy forbids such keys has nothing to refuse
            if not m.real:
                raise
            pytest.skip(f"the partition's policy refuses an extractable key ({type(exc).__name__})")
    uri = str(Pkcs11Uri(token=m.token_label, object=label, type="private"))
    with pytest.raises(KeyNotInCustody, match="extractable") as refused:
        signer.sign_digest(uri, hashlib.sha256(b"x").digest())
    assert "CKR" not in str(refused.value)


def test_a_session_lost_under_the_signer_is_reopened(
    new_label: Callable[[], str], ceremony: TokenKeyCeremony, signer: Pkcs11Signer
) -> None:
    key = ceremony.generate_key_pair(new_label(), uuid.uuid4().bytes[:8])
    _sign_and_verify(signer, key.uri, key.public_key, b"before")
    signer.run(lambda session: session.close(), "closing the session")
    with pytest.raises(HsmUnavailable):
        signer.sign_digest(key.uri, hashlib.sha256(b"lost").digest())
    wait_for(lambda: _sign_and_verify(signer, key.uri, key.public_key, b"after"), within=10.0)


def test_a_key_that_is_not_there_is_not_in_custody(
    signer: Pkcs11Signer, module_under_test: ModuleUnderTest
) -> None:
    uri = Pkcs11Uri(
        token=module_under_test.token_label, object=f"vdno-absent-{uuid.uuid4().hex}", type="private"
    )
    with pytest.raises(KeyNotInCustody):
        signer.sign_digest(str(uri), hashlib.sha256(b"x").digest())
