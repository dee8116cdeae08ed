"""Pkcs11Signer when something happens while a call waits for the session: the signer is closed, goes down or
has its PIN refused between a call's fast check and its turn on the session; a call fails while the signer is
being closed. Against a real SoftHSM token."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hsm_testlib import LoginCounter, token_taken_away, wait_for
from structlog.testing import capture_logs

from vdno.server.domain.errors import HsmLoginRefused, HsmUnavailable, VdnoError
from vdno.server.hsm.signer import Pkcs11Signer
from vdno.server.hsm.softhsm import SoftHsmToken

DIGEST = hashlib.sha256(b"a command").digest()


class _SteppedSigner(Pkcs11Signer):
    """A signer that runs `between()` once, in the calling thread, right after a call has passed the fast
    refusal and before it takes its turn on the session: what another thread may do at that moment."""

    between: Callable[[], None] | None = None

    def _refuse_fast(self) -> None:
        super()._refuse_fast()
        step, self.between = self.between, None
        if step is not None:
            step()


@pytest.fixture
def make_signer(hsm_token: SoftHsmToken, user_pin: str) -> Iterator[Callable[..., _SteppedSigner]]:
    made: list[_SteppedSigner] = []

    def make(pin: str = user_pin) -> _SteppedSigner:
        made.append(
            _SteppedSigner(
                hsm_token.module_path,
                hsm_token.label,
                pin,
                reconnect_first=0.05,
                reconnect_max=0.2,
            )
        )
        return made[-1]

    yield make
    for signer in made:
        signer.close()


def test_reconnect_delays_are_checked(hsm_token: SoftHsmToken, user_pin: str) -> None:
    for first, most in ((0.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="0 < first <= max"):
            Pkcs11Signer(
                hsm_token.module_path, hsm_token.label, user_pin, reconnect_first=first, reconnect_max=most
            )


def test_a_call_waiting_while_the_signer_closes_is_refused(
    make_signer: Callable[..., _SteppedSigner], signing_key: tuple[str, bytes, str]
) -> None:
    signer = make_signer()
    uri = signing_key[2]
    assert len(signer.sign_digest(uri, DIGEST)) == 64
    signer.between = signer.close
    with pytest.raises(HsmUnavailable, match="signer is closed"):
        signer.sign_digest(uri, DIGEST)


def test_a_call_waiting_while_the_token_goes_away_fails_without_touching_it(
    make_signer: Callable[..., _SteppedSigner],
    signing_key: tuple[str, bytes, str],
    hsm_token: SoftHsmToken,
) -> None:
    signer = make_signer()
    uri = signing_key[2]
    assert len(signer.sign_digest(uri, DIGEST)) == 64
    failures: list[HsmUnavailable] = []

    def another_call_fails() -> None:
        with pytest.raises(HsmUnavailable) as failed:
            signer.sign_digest(uri, DIGEST)
        failures.append(failed.value)

    with token_taken_away(hsm_token):
        signer.between = another_call_fails
        with pytest.raises(HsmUnavailable) as waited:
            signer.sign_digest(uri, DIGEST)
    assert len(failures) == 1
    assert str(waited.value) == str(failures[0])  # the outage the other call met, not a second failure
    assert "is unavailable (signing failed)" in str(waited.value)
    assert len(wait_for(lambda: signer.sign_digest(uri, DIGEST), within=10.0)) == 64  # and it recovers


def test_a_call_waiting_while_the_pin_is_refused_never_logs_in(
    make_signer: Callable[..., _SteppedSigner],
    signing_key: tuple[str, bytes, str],
    count_logins: LoginCounter,
) -> None:
    pin = "not-the-pin-9876"
    signer = make_signer(pin=pin)
    uri = signing_key[2]

    def another_call_is_refused() -> None:
        with pytest.raises(HsmLoginRefused):
            signer.sign_digest(uri, DIGEST)

    signer.between = another_call_is_refused
    with pytest.raises(HsmLoginRefused, match="refused the configured PIN") as refused:
        signer.sign_digest(uri, DIGEST)
    assert count_logins.calls == 1  # the other call's; the waiting call did not try the PIN again
    assert isinstance(refused.value, VdnoError) and pin not in str(refused.value)


def test_a_call_failing_while_the_signer_closes_starts_no_reconnection(
    make_signer: Callable[..., _SteppedSigner], hsm_token: SoftHsmToken
) -> None:
    signer = make_signer()
    signer.check()
    running = threading.Event()
    outcome: list[BaseException] = []

    def lose_the_session_once_closing(session: Any) -> None:
        running.set()
        deadline = time.monotonic() + 10
        while not signer._closed and time.monotonic() < deadline:
            time.sleep(0.005)
        session.close()
        session.generate_random(128)  # on the closed session: fails

    def call() -> None:
        try:
            signer.run(lose_the_session_once_closing, "a job")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    with capture_logs() as logs:
        caller.start()
        assert running.wait(10)
        signer.close()
        caller.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], HsmUnavailable)
    assert signer._recovery is None
    assert not [t for t in threading.enumerate() if t.name == f"pkcs11-reconnect[{hsm_token.label}]"]
    events = [entry["event"] for entry in logs]
    assert "hsm.unavailable" in events and "hsm.reconnect_failed" not in events
    assert "hsm.recovered" not in events
