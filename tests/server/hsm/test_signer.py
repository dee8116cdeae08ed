from __future__ import annotations

import hashlib
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hsm_testlib import wait_for
from structlog.testing import capture_logs

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, KeyNotInCustody
from vdno.server.hsm.keys import ensure_keypair
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken
from vdno.server.hsm.token import open_token_session

PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


def _verify(public: ec.EllipticCurvePublicKey, digest: bytes, raw: bytes) -> None:
    assert len(raw) == 64
    public.verify(raw_to_der(raw), digest, PREHASHED)


@pytest.fixture
def signer(hsm_token: SoftHsmToken, user_pin: str):
    with Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as s:
        yield s


def test_sign_digest_verifies(signer: Pkcs11Signer, signing_key: tuple[str, bytes, str]) -> None:
    _, _, uri = signing_key
    public = signer.public_key(uri)
    for i in range(8):
        digest = hashlib.sha256(b"command %d" % i).digest()
        _verify(public, digest, signer.sign_digest(uri, digest))
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    for digest, raw in zip(digests, signer.sign_digests(uri, digests), strict=True):
        _verify(public, digest, raw)
    assert signer.sign_digests(uri, []) == []


def test_keys_named_by_label_or_id_or_both(
    signer: Pkcs11Signer, signing_key: tuple[str, bytes, str], hsm_token: SoftHsmToken
) -> None:
    label, _, uri = signing_key
    public = signer.public_key(uri)
    digest = hashlib.sha256(b"x").digest()
    for name in (f"pkcs11:object={label}", "pkcs11:id=%01%02%03%04;type=private", uri):
        _verify(public, digest, signer.sign_digest(name, digest))
        assert signer.public_key(name) == public


def test_public_key_matches_the_token(
    signer: Pkcs11Signer, signing_key: tuple[str, bytes, str], hsm_token: SoftHsmToken, user_pin: str
) -> None:
    label, key_id, uri = signing_key
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        expected = ensure_keypair(session, label, key_id).public_key
    assert signer.public_key(uri) == expected


def test_many_threads_share_one_signer(signer: Pkcs11Signer, signing_key: tuple[str, bytes, str]) -> None:
    _, _, uri = signing_key
    public = signer.public_key(uri)
    threads, per_thread = 16, 25
    start = threading.Barrier(threads)

    def work(t: int) -> list[tuple[bytes, bytes]]:
        start.wait()
        out = []
        for i in range(per_thread):
            digest = hashlib.sha256(f"{t}/{i}".encode()).digest()
            out.append((digest, signer.sign_digest(uri, digest)))
        return out

    with ThreadPoolExecutor(threads) as pool:
        results = [pair for chunk in pool.map(work, range(threads)) for pair in chunk]
    assert len(results) == threads * per_thread
    for digest, raw in results:
        _verify(public, digest, raw)


def test_wrong_pin_is_refused_and_leaks_nothing(hsm_token: SoftHsmToken, signing_key) -> None:
    _, _, uri = signing_key
    pin = "not-the-pin-9876"
    with Pkcs11Signer(hsm_token.module_path, hsm_token.label, pin) as bad:
        assert pin not in repr(bad)
        with pytest.raises(HsmLoginRefused) as info:
            bad.sign_digest(uri, bytes(32))
    text = str(info.value)
    assert "refused the configured PIN" in text
    assert pin not in text and "CKR" not in text
    rendered = "".join(traceback.format_exception(info.value))
    assert pin not in rendered and "CKR" not in rendered


def test_unknown_token_is_hsm_unavailable(hsm_token: SoftHsmToken, user_pin: str) -> None:
    with (
        Pkcs11Signer(hsm_token.module_path, "no-such-token", user_pin) as bad,
        pytest.raises(HsmUnavailable, match="not present"),
    ):
        bad.check()


def test_unknown_key_is_not_in_custody(signer: Pkcs11Signer, signing_key, hsm_token: SoftHsmToken) -> None:
    for uri, message in (
        (f"pkcs11:token={hsm_token.label};object=ghost;type=private", "no private EC key labelled 'ghost'"),
        ("pkcs11:id=%99", "no private EC key with id 99"),
        ("pkcs11:token=elsewhere;object=no-dno-test-gen1", "names token 'elsewhere'"),
        ("pkcs11:object=no-dno-test-gen1;type=public", "not a private key"),
        (f"pkcs11:token={hsm_token.label}", "names no object"),
        ("pkcs11:serial=0123;object=no-dno-test-gen1", "names serial"),
        (
            "pkcs11:object=no-dno-test-gen1?module-path=/elsewhere/libp11.so&pin-source=file:/pin",
            "names module-path, pin-source",
        ),
        ("not a uri", "not usable"),
    ):
        with pytest.raises(KeyNotInCustody, match=message) as info:
            signer.sign_digest(uri, bytes(32))
        assert "CKR" not in str(info.value)
    with pytest.raises(KeyNotInCustody):
        signer.public_key("pkcs11:object=ghost")


def test_bad_digest_length(signer: Pkcs11Signer, signing_key) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        signer.sign_digest(signing_key[2], b"short")


def test_a_lost_session_fails_the_call_at_once_and_is_reopened_in_the_background(
    signer: Pkcs11Signer, signing_key
) -> None:
    _, _, uri = signing_key
    public = signer.public_key(uri)
    digest = hashlib.sha256(b"before").digest()
    _verify(public, digest, signer.sign_digest(uri, digest))
    with capture_logs() as logs:
        # Close the session under the signer (through the signer's lock, as any job).
        signer.run(lambda session: session.close(), "closing the session")
        with pytest.raises(HsmUnavailable, match="unavailable"):
            signer.sign_digest(uri, digest)
        digest = hashlib.sha256(b"after").digest()
        _verify(public, digest, wait_for(lambda: signer.sign_digest(uri, digest), within=2.0))
    events = [e["event"] for e in logs]
    assert events.count("hsm.unavailable") == 1 and events.count("hsm.recovered") == 1


def test_signers_sharing_a_token_do_not_log_each_other_out(
    hsm_token: SoftHsmToken, user_pin: str, signing_key, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, uri = signing_key
    digest = hashlib.sha256(b"shared").digest()
    with Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as one:
        with (
            open_token_session(hsm_token.module_path, hsm_token.label, user_pin),
            Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin) as two,
        ):
            _verify(two.public_key(uri), digest, two.sign_digest(uri, digest))
            _verify(one.public_key(uri), digest, one.sign_digest(uri, digest))
        # the bootstrap session and signer `two` are closed; `one` still signs without reconnecting
        with caplog.at_level("WARNING", logger="vdno.server.hsm.signer"):
            _verify(one.public_key(uri), digest, one.sign_digest(uri, digest))
        assert "reconnecting" not in caplog.text


def test_closed_signer_refuses(hsm_token: SoftHsmToken, user_pin: str, signing_key) -> None:
    s = Pkcs11Signer(hsm_token.module_path, hsm_token.label, user_pin)
    s.sign_digest(signing_key[2], bytes(32))
    s.close()
    s.close()
    with pytest.raises(HsmUnavailable, match="closed"):
        s.sign_digest(signing_key[2], bytes(32))
