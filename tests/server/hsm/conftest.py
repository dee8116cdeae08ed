"""SoftHSM fixtures for the hsm tests.

libsofthsm2 reads SOFTHSM2_CONF once per process, at C_Initialize (python-pkcs11's `pkcs11.lib(...)`
caches the loaded module, so that happens once). A second token directory in the same process would be
silently ignored, so all tests share ONE session-scoped state dir and each test makes its own token in
it with a distinct label.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsm_testlib import LoginCounter

from vdno.server.hsm import _cki
from vdno.server.hsm.softhsm import SoftHsmToken, ensure_softhsm_token

USER_PIN = "user-pin-4711"
SO_PIN = "so-pin-0815"


@pytest.fixture(scope="session")
def softhsm_state_dir(softhsm_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("softhsm-state")
    with pytest.MonkeyPatch.context() as mp:
        # Restored at the end of the session; ensure_softhsm_token sets it for the process.
        mp.setenv("SOFTHSM2_CONF", str(state_dir / "softhsm2.conf"))
        yield state_dir


@pytest.fixture
def user_pin() -> str:
    return USER_PIN


@pytest.fixture
def so_pin() -> str:
    return SO_PIN


@pytest.fixture
def token_label() -> str:
    return "t-" + uuid.uuid4().hex[:20]


@pytest.fixture
def hsm_token(softhsm_state_dir: Path, softhsm_module: Path, token_label: str) -> SoftHsmToken:
    token = ensure_softhsm_token(softhsm_state_dir, token_label, USER_PIN, SO_PIN, module_path=softhsm_module)
    assert token.created
    return token


@pytest.fixture
def signing_key(hsm_token: SoftHsmToken) -> tuple[str, bytes, str]:
    """(label, id, private-key URI) of a fresh P-256 key pair in this test's token."""
    from vdno.server.hsm.keys import ensure_keypair
    from vdno.server.hsm.token import open_token_session
    from vdno.server.hsm.uri import Pkcs11Uri

    label, key_id = "no-dno-test-gen1", b"\x01\x02\x03\x04"
    with open_token_session(hsm_token.module_path, hsm_token.label, USER_PIN) as session:
        assert ensure_keypair(session, label, key_id).created
    uri = Pkcs11Uri(token=hsm_token.label, object=label, id=key_id, type="private")
    return label, key_id, str(uri)


@pytest.fixture
def count_logins(monkeypatch: pytest.MonkeyPatch) -> LoginCounter:
    """C_Login calls of this process from now on (each still reaches the token)."""
    counter = LoginCounter()
    monkeypatch.setattr(_cki, "login", counter(_cki.login))
    return counter
