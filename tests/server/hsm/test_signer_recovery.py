"""Pkcs11Signer through real SoftHSM faults: the token taken away and put back, a key found earlier
deleted, the module finalised under the signer, a key never found, a refused PIN (server/hsm/faults.py
says which is which)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hsm_testlib import LoginCounter, token_taken_away, wait_for
from pkcs11 import ObjectClass
from structlog.testing import capture_logs

from vdno.gbcs.signature import raw_to_der
from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, KeyNotInCustody
from vdno.server.hsm.keys import ensure_keypair
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken
from vdno.server.hsm.token import open_token_session, reinitialise

FIRST, MOST = 0.05, 0.2  # reconnect delays of these tests (the service's defaults are 0.2 and 5 s)
DIGEST = hashlib.sha256(b"a command").digest()


def _verify(public: ec.EllipticCurvePublicKey, raw: bytes, digest: bytes = DIGEST) -> None:
    public.verify(raw_to_der(raw), digest, ec.ECDSA(Prehashed(hashes.SHA256())))


@pytest.fixture
def signer(hsm_token: SoftHsmToken, user_pin: str):
    with Pkcs11Signer(
        hsm_token.module_path,
        hsm_token.label,
        user_pin,
        reconnect_first=FIRST,
        reconnect_max=MOST,
    ) as s:
        yield s


def test_token_taken_away_fails_calls_at_once_and_they_sign_again_once_it_is_back(
    signer: Pkcs11Signer, signing_key, hsm_token: SoftHsmToken, count_logins: LoginCounter
) -> None:
    _, _, uri = signing_key
    public = signer.public_key(uri)
    _verify(public, signer.sign_digest(uri, DIGEST))
    assert count_logins.calls == 1
    changes: list[float] = []
    signer.add_listener(lambda: changes.append(time.monotonic()))
    with capture_logs() as logs:
        with token_taken_away(hsm_token):
            with pytest.raises(HsmUnavailable, match="is unavailable"):
                signer.sign_digest(uri, DIGEST)
            started = time.perf_counter()
            for _ in range(50):  # while reconnecting, calls never reach the token or wait for its lock
                with pytest.raises(HsmUnavailable):
                    signer.sign_digest(uri, DIGEST)
            assert time.perf_counter() - started < 0.05
            with pytest.raises(HsmUnavailable):
                signer.probe([uri])
            time.sleep(4 * MOST)  # several reconnection attempts fail: the token is not present
            assert count_logins.calls == 1  # an absent token gets no login
        back = time.monotonic()
        _verify(public, wait_for(lambda: signer.sign_digest(uri, DIGEST), within=MOST + 0.5))
        recovered_in = time.monotonic() - back
    signer.probe([uri])
    assert recovered_in < MOST + 0.5
    assert count_logins.calls == 2  # one new session, logged in once
    events = [e["event"] for e in logs]
    assert events.count("hsm.unavailable") == 1 and events.count("hsm.recovered") == 1
    assert events.count("hsm.reconnect_failed") >= 3
    [recovered] = [e for e in logs if e["event"] == "hsm.recovered"]
    assert recovered["outage_s"] >= 4 * MOST
    assert len(changes) == 2  # down, then up


def _delete_key_pair(hsm_token: SoftHsmToken, user_pin: str, label: str) -> None:
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in list(session.get_objects({pkcs11.Attribute.CLASS: object_class})):
                if obj[pkcs11.Attribute.LABEL] == label:
                    obj.destroy()


def test_a_key_found_before_and_then_missing_is_an_outage_until_it_is_back(
    signer: Pkcs11Signer, signing_key, hsm_token: SoftHsmToken, user_pin: str
) -> None:
    label, key_id, uri = signing_key
    _verify(signer.public_key(uri), signer.sign_digest(uri, DIGEST))
    _delete_key_pair(hsm_token, user_pin, label)
    with pytest.raises(HsmUnavailable, match="is unavailable"):  # its handle is no longer valid
        signer.sign_digest(uri, DIGEST)
    time.sleep(3 * MOST)
    with pytest.raises(HsmUnavailable):  # reconnected, but the key found before is not found
        signer.sign_digest(uri, DIGEST)
    with pytest.raises(HsmUnavailable):
        signer.probe()
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        assert ensure_keypair(session, label, key_id).created
    raw = wait_for(lambda: signer.sign_digest(uri, DIGEST), within=MOST + 0.5)
    _verify(signer.public_key(uri), raw)  # the new key's public half (the old one is forgotten)


def test_a_key_never_found_stays_not_in_custody_and_is_looked_up_on_every_call(
    signer: Pkcs11Signer, signing_key, hsm_token: SoftHsmToken, user_pin: str
) -> None:
    _, _, uri = signing_key
    ghost = f"pkcs11:token={hsm_token.label};object=later;type=private"
    for _ in range(3):
        with pytest.raises(KeyNotInCustody, match="no private EC key labelled 'later'"):
            signer.sign_digest(ghost, DIGEST)
        with pytest.raises(KeyNotInCustody):
            signer.probe([ghost])
    _verify(signer.public_key(uri), signer.sign_digest(uri, DIGEST))  # the signer is not down
    with open_token_session(hsm_token.module_path, hsm_token.label, user_pin) as session:
        ensure_keypair(session, "later", b"\x0f")
    _verify(signer.public_key(ghost), signer.sign_digest(ghost, DIGEST))  # found now, no restart
    signer.probe([ghost, uri])


def test_the_module_finalised_under_the_signer_is_initialised_again(
    signer: Pkcs11Signer, signing_key, softhsm_module: Path
) -> None:
    _, _, uri = signing_key
    public = signer.public_key(uri)
    _verify(public, signer.sign_digest(uri, DIGEST))
    pkcs11.lib(str(softhsm_module)).finalize()  # CKR_CRYPTOKI_NOT_INITIALIZED for the session from now on
    with pytest.raises(HsmUnavailable):
        signer.sign_digest(uri, DIGEST)
    _verify(public, wait_for(lambda: signer.sign_digest(uri, DIGEST), within=1.0))


def test_a_refused_pin_is_tried_once_and_refused_at_once_from_then_on(
    hsm_token: SoftHsmToken, signing_key, count_logins: LoginCounter
) -> None:
    _, _, uri = signing_key
    pin = "wrong-pin-5555"
    with (
        capture_logs() as logs,
        Pkcs11Signer(hsm_token.module_path, hsm_token.label, pin, reconnect_first=FIRST) as bad,
    ):
        with pytest.raises(HsmLoginRefused):
            bad.check()
        started = time.perf_counter()
        for _ in range(20):
            with pytest.raises(HsmLoginRefused) as info:
                bad.sign_digest(uri, DIGEST)
            with pytest.raises(HsmLoginRefused):
                bad.probe([uri])
        assert time.perf_counter() - started < 0.05
        time.sleep(3 * FIRST)  # nothing retries in the background either
    assert count_logins.calls == 1
    assert pin not in str(info.value) and "CKR" not in str(info.value)
    refusals = [e for e in logs if e["event"] == "hsm.pin_refused"]
    assert len(refusals) == 1 and refusals[0]["log_level"] == "error"
    assert "restart" in refusals[0]["action"]
    assert all(pin not in repr(e) for e in logs)


def test_a_pin_changed_under_the_signer_is_refused_at_reconnection_and_never_tried_again(
    signer: Pkcs11Signer, signing_key, user_pin: str, count_logins: LoginCounter
) -> None:
    _, _, uri = signing_key
    _verify(signer.public_key(uri), signer.sign_digest(uri, DIGEST))
    signer.run(lambda session: session.set_pin(user_pin, "a-new-pin-2468"), "changing the PIN")
    signer.run(lambda session: session.close(), "closing the session")  # the session is lost
    with capture_logs() as logs:
        with pytest.raises(HsmUnavailable):
            signer.sign_digest(uri, DIGEST)
        with pytest.raises(HsmLoginRefused, match="refused the configured PIN") as refused:
            wait_for(signer.check, within=5.0)
        time.sleep(3 * MOST)  # nothing retries in the background
        with pytest.raises(HsmLoginRefused):
            signer.sign_digest(uri, DIGEST)
    assert count_logins.calls == 2  # the first session's, and the reconnection's, refused
    assert user_pin not in str(refused.value) and "a-new-pin-2468" not in str(refused.value)
    assert [e["event"] for e in logs if e["event"].startswith("hsm.")].count("hsm.pin_refused") == 1


def test_a_pin_refused_inside_a_job_stops_the_signer(
    signer: Pkcs11Signer, signing_key, count_logins: LoginCounter
) -> None:
    """However the token comes to refuse a PIN, the signer stops using it (real HSMs lock a partition
    after a few refusals): here a job's C_SetPIN with a wrong old PIN."""
    _, _, uri = signing_key
    signer.sign_digest(uri, DIGEST)
    with pytest.raises(HsmLoginRefused, match="refused the configured PIN") as refused:
        signer.run(lambda session: session.set_pin("not-the-old-pin", "a-new-pin-2468"), "changing the PIN")
    assert "not-the-old-pin" not in str(refused.value) and "CKR" not in str(refused.value)
    with pytest.raises(HsmLoginRefused):
        signer.sign_digest(uri, DIGEST)
    assert count_logins.calls == 1


def test_closing_a_reconnecting_signer_does_not_wait_out_the_backoff(
    hsm_token: SoftHsmToken, user_pin: str, signing_key
) -> None:
    _, _, uri = signing_key
    signer = Pkcs11Signer(
        hsm_token.module_path,
        hsm_token.label,
        user_pin,
        reconnect_first=5.0,
        reconnect_max=5.0,
    )
    signer.sign_digest(uri, DIGEST)
    with capture_logs() as logs, token_taken_away(hsm_token):
        with pytest.raises(HsmUnavailable):
            signer.sign_digest(uri, DIGEST)
        deadline = time.monotonic() + 10
        while not any(e["event"] == "hsm.reconnect_failed" for e in logs):
            assert time.monotonic() < deadline, "no reconnection was tried"
            time.sleep(0.01)
        started = time.monotonic()
        signer.close()  # the reconnection now waits 5 s before its next try
        assert time.monotonic() - started < 2.0
        assert not [t for t in threading.enumerate() if t.name == f"pkcs11-reconnect[{hsm_token.label}]"]
    assert [e["event"] for e in logs].count("hsm.reconnect_failed") == 1
    # SoftHSM lists the token again only after C_Initialize (server/hsm/token.py, find_token); no signer
    # does that now, and the next tests list the slots.
    reinitialise(str(hsm_token.module_path))
